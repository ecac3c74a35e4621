/**
 * The client agent's end of the tunnel: keeps one WebSocket to the server agent open,
 * serves HTTP/2 streams the server opens on it, answers heartbeats, and reconnects with
 * backoff when the connection drops.
 */
import { EventEmitter } from 'node:events';
import http2, { type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import pRetry, { AbortError } from 'p-retry';
import WebSocket from 'ws';
import { unreachable } from './api-client.js';
import { ExitCode, KelsingraError } from './errors.js';
import {
  CLIENT_ID_HEADER,
  type ClientControl,
  HOLDER_HEADER,
  type ServerControl,
  TUNNEL_PATH,
  TUNNEL_SUBPROTOCOL,
} from './protocol.js';
import { H2_SETTINGS, SESSION_WINDOW } from './tunnel-settings.js';
import { webSocketDuplex } from './ws-duplex.js';

export type TunnelState = 'connecting' | 'connected' | 'reconnecting' | 'closed';

export interface TunnelClientOptions {
  server: string;
  token: string;
  clientId: string;
  holder: string;
  onStream: (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => void;
}

interface TunnelEvents {
  state: [TunnelState, { retryInMs?: number; error?: string }];
  control: [ServerControl];
  /** After a reconnect: intercepts must be re-asserted. */
  reconnected: [];
}

export class TunnelClient extends EventEmitter<TunnelEvents> {
  state: TunnelState = 'connecting';
  heartbeatMs = 10_000;
  leaseTtlMs = 30_000;
  private ws?: WebSocket;
  private readonly h2 = http2.createServer({ settings: H2_SETTINGS, maxSessionMemory: 64 });
  private readonly abort = new AbortController();
  private watchdog?: NodeJS.Timeout;

  constructor(private readonly opts: TunnelClientOptions) {
    super();
    this.h2.on('stream', (stream, headers) => opts.onStream(stream, headers));
    this.h2.on('session', (session) => {
      session.setLocalWindowSize(SESSION_WINDOW);
      session.on('error', () => this.ws?.terminate());
    });
  }

  /** Resolves once the first connection is up; fails fast on a wrong token or an unreachable server. */
  async start(): Promise<void> {
    await this.connectOnce();
  }

  send(message: ClientControl): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  close(): void {
    this.setState('closed');
    this.abort.abort();
    clearTimeout(this.watchdog);
    this.ws?.close(1000, 'client leaving');
    // Streams still open are the caller's in-flight requests; they end with the socket.
    setTimeout(() => this.ws?.terminate(), 1000).unref();
  }

  private setState(state: TunnelState, extra: { retryInMs?: number; error?: string } = {}): void {
    if (this.state === 'closed') return;
    this.state = state;
    this.emit('state', state, extra);
  }

  private connectOnce(): Promise<void> {
    return new Promise((resolve, reject) => {
      const url = `${this.opts.server.replace(/^http/, 'ws')}${TUNNEL_PATH}`;
      const ws = new WebSocket(url, TUNNEL_SUBPROTOCOL, {
        headers: {
          authorization: `Bearer ${this.opts.token}`,
          [CLIENT_ID_HEADER]: this.opts.clientId,
          [HOLDER_HEADER]: this.opts.holder,
        },
        perMessageDeflate: false,
        // Masking only protects browsers' traffic from cache poisoning; this client is never a
        // browser, and a zero mask lets ws skip an XOR and a copy on every frame at both ends.
        generateMask: (mask: Buffer) => {
          mask.fill(0);
        },
        handshakeTimeout: 10_000,
        maxPayload: 8 * 1024 * 1024,
      });
      let settled = false;
      ws.on('unexpected-response', (_req, res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          let message = `HTTP ${res.statusCode}`;
          try {
            message = String(JSON.parse(Buffer.concat(chunks).toString()).error ?? message).replace(
              /^Kelsingra: /,
              '',
            );
          } catch {
            // Not Kelsingra's JSON: the status line is all there is to say.
          }
          settled = true;
          ws.terminate();
          if (res.statusCode === 401) {
            reject(
              new KelsingraError(
                `the server rejected the token (401): ${message}`,
                ExitCode.auth,
                'check KELSINGRA_TOKEN, or run kelsingra connect --token <secret>',
              ),
            );
          } else {
            reject(
              new KelsingraError(
                `the server refused the tunnel (HTTP ${res.statusCode}): ${message}`,
                ExitCode.unreachable,
                'is --server the Kelsingra control port?',
              ),
            );
          }
        });
      });
      ws.on('error', (err) => {
        if (!settled) {
          settled = true;
          reject(unreachable(this.opts.server, err));
        }
      });
      ws.on('open', () => {
        this.ws = ws;
        const duplex = webSocketDuplex(ws, (text) => this.onControl(text));
        this.h2.emit('connection', duplex);
        this.armWatchdog();
      });
      ws.on('ping', () => this.armWatchdog());
      const onHello = (message: ServerControl) => {
        if (message.type !== 'hello' || this.ws !== ws) return;
        this.off('control', onHello);
        this.heartbeatMs = message.heartbeatMs;
        this.leaseTtlMs = message.leaseTtlMs;
        this.armWatchdog();
        settled = true;
        this.setState('connected');
        resolve();
      };
      this.on('control', onHello);
      ws.on('close', () => {
        this.off('control', onHello);
        // Closed before hello: this attempt failed and its caller (start or the retry loop)
        // handles that; only a tunnel that was up starts a reconnect loop of its own.
        const wasUp = settled && this.ws === ws && this.state === 'connected';
        if (!settled) {
          settled = true;
          reject(
            new KelsingraError(
              'the tunnel closed during its handshake',
              ExitCode.unreachable,
              'is --server the Kelsingra control port? kelsingra status checks it',
            ),
          );
        }
        if (wasUp) this.onDisconnect();
        else if (this.ws === ws) this.ws = undefined;
      });
    });
  }

  private onControl(text: string): void {
    try {
      this.emit('control', JSON.parse(text) as ServerControl);
    } catch {
      // The server only sends JSON; anything else is noise on a broken link, which the heartbeat catches.
    }
  }

  /** No ping from the server for two intervals means the link is dead even if TCP has not noticed. */
  private armWatchdog(): void {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => this.ws?.terminate(), this.heartbeatMs * 2 + 1000);
    this.watchdog.unref();
  }

  private onDisconnect(): void {
    clearTimeout(this.watchdog);
    this.ws = undefined;
    if (this.state === 'closed') return;
    this.setState('reconnecting', { retryInMs: 250 });
    pRetry(
      () =>
        this.connectOnce().catch((err: KelsingraError) => {
          throw err.exitCode === ExitCode.auth ? new AbortError(err) : err;
        }),
      {
        retries: Number.POSITIVE_INFINITY,
        minTimeout: 250,
        maxTimeout: 5_000,
        factor: 2,
        randomize: true,
        signal: this.abort.signal,
        onFailedAttempt: ({ error, attemptNumber }) => {
          // p-retry waits minTimeout × factor^(attempt − 1), times a random 1–2 with randomize.
          const retryInMs = Math.min(5_000, 250 * 2 ** (attemptNumber - 1));
          this.setState('reconnecting', { retryInMs, error: error.message });
        },
      },
    ).then(
      () => this.emit('reconnected'),
      (err: Error) => this.setState('closed', { error: err.message }),
    );
  }
}
