/**
 * The client agent's end of the tunnel: keeps one WebSocket to the server agent open,
 * serves the streams the server opens on it, answers heartbeats, and reconnects with
 * backoff when the connection drops.
 */
import { EventEmitter, once } from 'node:events';
import pRetry, { AbortError } from 'p-retry';
import WebSocket from 'ws';
import { ExitCode, hasErrorCode, KelsingraError } from '../../shared/errors.js';
import {
  CLIENT_ID_HEADER,
  type ClientControl,
  ERROR_HEADER,
  HOLDER_HEADER,
  type ServerControl,
  ServerControlSchema,
  TUNNEL_PATH,
  VERSION_HEADER,
} from '../../shared/protocol.js';
import { TunnelMux, type TunnelStream } from '../../shared/tunnel-mux.js';
import { type OpenHead, TUNNEL_SUBPROTOCOL } from '../../shared/tunnel-wire.js';
import { VERSION } from '../../shared/version.js';
import { unreachable } from '../api/api-client.js';
import type { TunnelState } from '../intercept/events.js';

/** How long a tunnel moved away from keeps taking new requests, while the other replicas hear of the move. */
const RETIRE_GRACE_MS = 1_000;
/**
 * After a drop, attempts 50–100 ms apart for this long, then backoff. A server agent restarts in
 * a few seconds, and until this client is back its tenant goes to the base service (a server
 * without a database has forgotten the intercept), so it should find the server within 100 ms
 * of it listening; a server that stays away longer is not hammered.
 */
const QUICK_RECONNECT_MS = 5_000;
const QUICK_RETRY_MS = 50;
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5_000;

export interface TunnelClientOptions {
  server: string;
  token: string;
  clientId: string;
  holder: string;
  onStream: (stream: TunnelStream, head: OpenHead) => void;
}

interface TunnelEvents {
  state: [TunnelState, { retryInMs?: number; error?: string }];
  control: [ServerControl];
  /** After a reconnect: intercepts must be re-asserted. */
  reconnected: [];
  /** The last request in flight was answered (upgraded connections are not counted). */
  idle: [];
}

export type { TunnelState };

export class TunnelClient extends EventEmitter<TunnelEvents> {
  state: TunnelState = 'connecting';
  heartbeatMs = 10_000;
  leaseTtlMs = 30_000;
  private ws?: WebSocket;
  private readonly abort = new AbortController();
  private watchdog?: NodeJS.Timeout;
  /** The streams each WebSocket carries, to retire it once they are done after a move. */
  private readonly muxes = new WeakMap<WebSocket, TunnelMux>();
  /** Tunnels to a draining server, still serving the requests they carry while a new one opens. */
  private readonly retiring = new Set<WebSocket>();
  private reconnecting = false;
  /** Requests the server has sent over the tunnel that are not answered yet (not upgrades: those last). */
  private inFlight = 0;
  private readonly upgrades = new WeakSet<TunnelStream>();
  /** Retired tunnels that close as soon as their last stream does. */
  private readonly retireWhenIdle = new WeakSet<WebSocket>();

  constructor(private readonly opts: TunnelClientOptions) {
    super();
  }

  private mux(ws: WebSocket): TunnelMux {
    return new TunnelMux(
      ws,
      {
        onControl: (text) => this.onControl(ws, text),
        onOpen: (stream, head) => {
          if (head.upgrade) this.upgrades.add(stream);
          else this.inFlight++;
          this.opts.onStream(stream, head);
        },
        onStreamClosed: (stream) => {
          if (!this.upgrades.has(stream) && --this.inFlight === 0) this.emit('idle');
          const mux = this.muxes.get(ws);
          if (mux?.size === 0 && this.retiring.has(ws) && this.retireWhenIdle.has(ws))
            ws.close(1000, 'moved to another replica');
        },
        // The server only sends frames of the protocol it accepted; anything else is a broken link.
        onProtocolError: () => undefined,
      },
      true,
    );
  }

  /** Resolves once the first connection is up; fails fast on a wrong token or an unreachable server. */
  async start(): Promise<void> {
    await this.connectOnce();
  }

  send(message: ClientControl): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  /**
   * Closes once the requests already on the tunnel are answered, or after `graceMs`. For a
   * leave: the server sends new requests elsewhere as soon as the intercept is gone, and the
   * ones already on their way to this laptop should not be cut for it.
   */
  async closeWhenIdle(graceMs: number, beforeClose?: () => Promise<void>): Promise<void> {
    if (this.inFlight > 0 && this.state !== 'closed') {
      // Past the grace the requests still open are cut, as close() always did.
      await once(this, 'idle', { signal: AbortSignal.timeout(graceMs) }).catch((err: Error) => {
        if (err.name !== 'AbortError') throw err;
      });
    }
    // Upgraded connections (WebSockets) are closed by their owner, cleanly, before the tunnel goes.
    await beforeClose?.();
    this.close();
  }

  close(): void {
    this.setState('closed');
    this.abort.abort();
    clearTimeout(this.watchdog);
    const sockets = [this.ws, ...this.retiring];
    for (const ws of sockets) ws?.close(1000, 'client leaving');
    // Streams still open are the caller's in-flight requests; they end with the socket.
    setTimeout(() => {
      for (const ws of sockets) ws?.terminate();
    }, 1000).unref();
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
          [VERSION_HEADER]: VERSION,
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
          let hint: string | undefined;
          try {
            const body = JSON.parse(Buffer.concat(chunks).toString()) as { error?: unknown; hint?: unknown };
            message = String(body.error ?? message).replace(/^Kelsingra: /, '');
            if (typeof body.hint === 'string') hint = body.hint;
          } catch {
            // Not Kelsingra's JSON: the status line is all there is to say.
          }
          settled = true;
          ws.terminate();
          // Not a wrong server: this token's other clients hold every tunnel it may open there.
          if (res.headers[ERROR_HEADER] === 'tunnel-version') {
            reject(
              new KelsingraError(
                `the server agent cannot talk to this client: ${message}`,
                ExitCode.failure,
                hint ?? `upgrade the kelsingra CLI or the server agent so both are ${VERSION}`,
                { code: 'tunnel-version' },
              ),
            );
          } else if (res.headers[ERROR_HEADER] === 'too-many-tunnels') {
            reject(
              new KelsingraError(
                `the server refused the tunnel (HTTP ${res.statusCode}): ${message}`,
                ExitCode.failure,
                hint ?? 'stop kelsingra intercepts this token runs elsewhere, or ask for a token of your own',
                { code: 'too-many-tunnels' },
              ),
            );
          } else if (res.statusCode === 401) {
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
        if (settled) return;
        settled = true;
        // A server agent from before this protocol accepts the upgrade without choosing it.
        if (/no subprotocol/i.test(err.message))
          reject(
            new KelsingraError(
              `the server agent speaks an older tunnel protocol than this client (${TUNNEL_SUBPROTOCOL}, Kelsingra ${VERSION})`,
              ExitCode.failure,
              `upgrade the server agent to Kelsingra ${VERSION}, or use the kelsingra CLI of the server's version (kelsingra status shows it)`,
              { code: 'tunnel-version' },
            ),
          );
        else reject(unreachable(this.opts.server, err));
      });
      ws.on('open', () => {
        this.ws = ws;
        this.muxes.set(ws, this.mux(ws));
        this.armWatchdog();
      });
      // A retiring tunnel's pings say nothing about the current one.
      ws.on('ping', () => {
        if (this.ws === ws) this.armWatchdog();
      });
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
        // A tunnel retired by a move: the reconnect is under way already; only if that has not
        // landed yet does its loss show, as the tunnel being down.
        if (this.retiring.delete(ws) && this.reconnecting && !this.serving())
          this.setState('reconnecting', { retryInMs: 0 });
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

  private onControl(ws: WebSocket, text: string): void {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      // The server only sends JSON; anything else is noise on a broken link, which the heartbeat catches.
      return;
    }
    // A message this client does not know (from a newer server) is ignored.
    const parsed = ServerControlSchema.safeParse(value);
    if (!parsed.success) return;
    if (parsed.data.type === 'draining') this.move(ws);
    else this.emit('control', parsed.data);
  }

  /**
   * The server agent is stopping. A new tunnel is opened (through the load balancer: the
   * stopping replica refuses it, so it lands on another) while this one goes on serving the
   * requests it carries; once the new one is up, this one closes when they are done.
   */
  private move(ws: WebSocket): void {
    if (this.ws !== ws || this.state === 'closed') return;
    clearTimeout(this.watchdog);
    this.retiring.add(ws);
    this.ws = undefined;
    this.reconnect(() => this.retire(ws));
  }

  /** Closes a tunnel that was moved away from, after its requests are done. */
  private retire(ws: WebSocket): void {
    // The other replicas hear of the move through the database within milliseconds; until they
    // have, the old one may still route a request here, which this grace still serves.
    setTimeout(() => {
      if ((this.muxes.get(ws)?.size ?? 0) === 0) ws.close(1000, 'moved to another replica');
      // Closed by the last of its streams to close (see mux()); the draining server cuts the rest.
      else this.retireWhenIdle.add(ws);
    }, RETIRE_GRACE_MS).unref();
  }

  /** An older tunnel still carries traffic while the next one is being opened. */
  private serving(): boolean {
    return [...this.retiring].some((ws) => ws.readyState === WebSocket.OPEN);
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
    this.setState('reconnecting', { retryInMs: 0 });
    this.reconnect();
  }

  /** Connects again, quickly at first then with backoff, then `onUp` and 'reconnected'; one loop at a time. */
  private reconnect(onUp?: () => void): void {
    if (this.reconnecting) return;
    this.reconnecting = true;
    const attempt = () =>
      this.connectOnce().catch((err: KelsingraError) => {
        // A wrong token or a server of another protocol version does not get better by retrying.
        throw err.exitCode === ExitCode.auth || hasErrorCode(err, 'tunnel-version')
          ? new AbortError(err)
          : err;
      });
    /** `retryInMs` is undefined for a failure not worth a line of its own (a quick retry after the first). */
    const retrying = (retryInMs: (attemptNumber: number) => number | undefined) => ({
      retries: Number.POSITIVE_INFINITY,
      randomize: true,
      signal: this.abort.signal,
      onFailedAttempt: ({ error, attemptNumber }: { error: Error; attemptNumber: number }) => {
        const wait = retryInMs(attemptNumber);
        // Moving off a draining server: the old tunnel still serves, so nothing is down yet.
        if (wait !== undefined && !this.serving())
          this.setState('reconnecting', { retryInMs: wait, error: error.message });
      },
    });
    pRetry(attempt, {
      ...retrying((n) => (n === 1 ? QUICK_RETRY_MS : undefined)),
      minTimeout: QUICK_RETRY_MS,
      factor: 1,
      maxRetryTime: QUICK_RECONNECT_MS,
    })
      .catch((err: Error) => {
        if (
          this.abort.signal.aborted ||
          (err instanceof KelsingraError &&
            (err.exitCode === ExitCode.auth || hasErrorCode(err, 'tunnel-version')))
        )
          throw err;
        return pRetry(attempt, {
          // p-retry waits minTimeout × factor^(attempt − 1), times a random 1–2 with randomize.
          ...retrying((n) => Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (n - 1))),
          minTimeout: BACKOFF_MIN_MS,
          maxTimeout: BACKOFF_MAX_MS,
          factor: 2,
        });
      })
      .then(
        () => {
          this.reconnecting = false;
          onUp?.();
          this.emit('reconnected');
        },
        (err: Error) => {
          this.reconnecting = false;
          this.setState('closed', { error: err.message });
        },
      );
  }
}
