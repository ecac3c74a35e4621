/**
 * The server end of client tunnels: one WebSocket per client agent, HTTP/2 running over
 * its binary frames (this side is the HTTP/2 client: it opens a stream per intercepted
 * request), JSON control messages in text frames, and ping/pong heartbeats.
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import http2, { type ClientHttp2Session } from 'node:http2';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { WebSocket, WebSocketServer } from 'ws';
import { type ClientControl, type ServerControl, TUNNEL_SUBPROTOCOL } from '../src/protocol.js';
import { H2_SETTINGS, SESSION_WINDOW } from '../src/tunnel-settings.js';
import { webSocketDuplex } from '../src/ws-duplex.js';
import type { Principal } from './auth.js';
import type { InterceptStore } from './intercept-store.js';

/**
 * The client id works like a bearer credential (a tunnel that presents it takes over the
 * lease's traffic), so only this digest of it is ever shown or logged.
 */
export function tunnelIdOf(clientId: string): string {
  return `t_${createHash('sha256').update(clientId).digest('hex').slice(0, 12)}`;
}

export class ClientTunnel {
  readonly connectedAt = Date.now();
  readonly tunnelId: string;
  alive = true;
  readonly session: ClientHttp2Session;

  constructor(
    readonly clientId: string,
    readonly holder: string,
    readonly principal: Principal,
    readonly ws: WebSocket,
    onControl: (tunnel: ClientTunnel, text: string) => void,
  ) {
    this.tunnelId = tunnelIdOf(clientId);
    const duplex = webSocketDuplex(ws, (text) => onControl(this, text));
    this.session = http2.connect('http://tunnel.kelsingra', {
      createConnection: () => duplex,
      settings: H2_SETTINGS,
      maxSessionMemory: 64,
      peerMaxConcurrentStreams: 10_000,
    });
    this.session.on('connect', () => this.session.setLocalWindowSize(SESSION_WINDOW));
    // A session error surfaces on every open stream; the session itself just closes.
    this.session.on('error', () => ws.terminate());
    this.session.unref?.();
  }

  send(message: ServerControl): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  get open(): boolean {
    return this.ws.readyState === WebSocket.OPEN && !this.session.closed && !this.session.destroyed;
  }
}

export class TunnelHub {
  private readonly tunnels = new Map<string, ClientTunnel>();
  private readonly wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    maxPayload: 8 * 1024 * 1024,
    handleProtocols: (protocols) => (protocols.has(TUNNEL_SUBPROTOCOL) ? TUNNEL_SUBPROTOCOL : false),
  });
  private readonly heartbeat: NodeJS.Timeout;

  constructor(
    private readonly store: InterceptStore,
    private readonly heartbeatMs: number,
    private readonly log: Logger,
  ) {
    this.heartbeat = setInterval(() => this.beat(), heartbeatMs);
    this.heartbeat.unref();
    store.on('ended', (intercept, reason) => {
      this.tunnels.get(intercept.clientId)?.send({ type: 'intercept-ended', id: intercept.id, reason });
    });
  }

  get(clientId: string): ClientTunnel | undefined {
    const tunnel = this.tunnels.get(clientId);
    return tunnel?.open ? tunnel : undefined;
  }

  list(): ClientTunnel[] {
    return [...this.tunnels.values()];
  }

  /** A reconnect may replace an open tunnel only with the token that opened it. */
  mayReplace(clientId: string, principal: Principal): boolean {
    const previous = this.get(clientId);
    return !previous || previous.principal === principal;
  }

  accept(
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    principal: Principal,
    clientId: string,
    holder: string,
  ): void {
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      const previous = this.tunnels.get(clientId);
      if (previous) {
        this.log.info({ tunnel: previous.tunnelId }, 'client reconnected; closing its previous tunnel');
        previous.ws.terminate();
      }
      const tunnel = new ClientTunnel(clientId, holder, principal, ws, (t, text) => this.onControl(t, text));
      this.tunnels.set(clientId, tunnel);
      ws.on('pong', () => {
        tunnel.alive = true;
      });
      ws.on('close', () => {
        if (this.tunnels.get(clientId) === tunnel) this.tunnels.delete(clientId);
        // With an error, open streams end with a reset code rather than NO_ERROR, so callers
        // mid-response get a cut connection instead of a body that looks complete.
        tunnel.session.destroy(new Error('tunnel closed'));
        this.log.info({ tunnel: tunnel.tunnelId, holder }, 'tunnel closed');
      });
      tunnel.send({ type: 'hello', clientId, heartbeatMs: this.heartbeatMs, leaseTtlMs: this.store.ttlMs });
      // `token` is a redacted log key; the token's name is no secret and tells operators who connected.
      this.log.info({ tunnel: tunnel.tunnelId, holder, tokenName: principal.name }, 'tunnel connected');
    });
  }

  close(): void {
    clearInterval(this.heartbeat);
    for (const tunnel of this.tunnels.values()) tunnel.ws.terminate();
    this.wss.close();
  }

  private onControl(tunnel: ClientTunnel, text: string): void {
    let message: ClientControl;
    try {
      message = JSON.parse(text) as ClientControl;
    } catch {
      this.log.warn({ tunnel: tunnel.tunnelId }, 'malformed control frame; closing tunnel');
      tunnel.ws.close(1007, 'malformed control frame');
      return;
    }
    if (message.type === 'renew' && Array.isArray(message.ids)) {
      const result = this.store.renew(
        tunnel.clientId,
        message.ids.filter((id) => typeof id === 'string'),
      );
      tunnel.send({ type: 'renewed', ids: result.renewed, missing: result.missing });
    } else {
      this.log.warn(
        { tunnel: tunnel.tunnelId, type: (message as { type?: unknown }).type },
        'unknown control message ignored',
      );
    }
  }

  /** A peer that missed the previous ping is gone: two intervals at most from its last sign of life. */
  private beat(): void {
    for (const tunnel of this.tunnels.values()) {
      if (!tunnel.alive) {
        this.log.warn(
          { tunnel: tunnel.tunnelId, holder: tunnel.holder },
          'tunnel missed a heartbeat; closing it',
        );
        tunnel.ws.terminate();
        continue;
      }
      tunnel.alive = false;
      tunnel.ws.ping();
    }
  }
}
