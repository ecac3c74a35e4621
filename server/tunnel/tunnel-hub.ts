/**
 * The server end of client tunnels: one WebSocket per client agent, carrying a stream per
 * intercepted request in binary frames (this side opens them), JSON control messages in
 * text frames, and ping/pong heartbeats.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { WebSocket, WebSocketServer } from 'ws';
import { ClientControlSchema, type ServerControl, VERSION_HEADER } from '../../src/shared/protocol.js';
import { TunnelMux, type TunnelStream } from '../../src/shared/tunnel-mux.js';
import { LEGACY_SUBPROTOCOL, type OpenHead, TUNNEL_SUBPROTOCOL } from '../../src/shared/tunnel-wire.js';
import { VERSION } from '../../src/shared/version.js';
import type { Principal } from '../auth/auth.js';
import { clientKeyOf, type Intercept, type InterceptStore } from '../store/intercept-store.js';

/**
 * The client id works like a bearer credential (a tunnel that presents it takes over the
 * lease's traffic), so only a digest of it is kept (the client key), and only a prefix of
 * that is ever shown or logged.
 */
export function tunnelIdOf(clientKey: string): string {
  return `t_${clientKey.slice(0, 12)}`;
}

/**
 * Why a client's tunnel cannot be accepted for its protocol version, if it cannot: a client
 * of another Kelsingra version hears which side to upgrade instead of a failed handshake.
 */
export function tunnelVersionProblem(req: IncomingMessage): { message: string; hint: string } | undefined {
  const offered = String(req.headers['sec-websocket-protocol'] ?? '')
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean);
  if (offered.includes(TUNNEL_SUBPROTOCOL)) return undefined;
  const clientVersion = req.headers[VERSION_HEADER];
  const client =
    typeof clientVersion === 'string' ? `Kelsingra ${clientVersion.slice(0, 40)}` : 'an older Kelsingra';
  const older = offered.includes(LEGACY_SUBPROTOCOL) || offered.length === 0;
  return {
    message: `this server agent (Kelsingra ${VERSION}) speaks tunnel protocol ${TUNNEL_SUBPROTOCOL}; the client (${client}) offered ${offered.join(', ') || 'none'}`,
    hint: older
      ? `upgrade the kelsingra CLI to ${VERSION} (npm install -g kelsingra@${VERSION})`
      : `this server agent is older than the client: upgrade the server agent, or use a kelsingra CLI of version ${VERSION}`,
  };
}

export class ClientTunnel {
  readonly connectedAt = Date.now();
  readonly tunnelId: string;
  alive = true;
  readonly mux: TunnelMux;
  /** How the client broke the tunnel protocol, if it did: for the log. */
  failure?: Error;
  /** Set when it was closed for not answering a ping: requests cut by that say so. */
  missedHeartbeat = false;
  private probeTimer?: NodeJS.Timeout;
  private lastPongAt = Date.now();

  constructor(
    readonly clientKey: string,
    readonly holder: string,
    /** The token it connected with, as the shared token set has it now (see tokensChanged). */
    public principal: Principal,
    readonly ws: WebSocket,
    onControl: (tunnel: ClientTunnel, text: string) => void,
    /** Requests the tunnel carries at once (the server's maxTunnelStreams). */
    readonly maxStreams: number,
    private readonly heartbeatMs: number,
    /** Told before the tunnel is cut, so the log says why before the requests on it fail. */
    private readonly onMissed: (tunnel: ClientTunnel) => void,
  ) {
    this.tunnelId = tunnelIdOf(clientKey);
    ws.on('pong', () => {
      this.alive = true;
      this.lastPongAt = Date.now();
      clearTimeout(this.probeTimer);
      this.probeTimer = undefined;
    });
    ws.on('close', () => clearTimeout(this.probeTimer));
    // ws closes the socket itself after an error (a text frame that is not UTF-8, a frame too
    // large); the first is kept for the log line that says why the tunnel closed.
    ws.on('error', (err) => {
      this.failure ??= err;
    });
    this.mux = new TunnelMux(
      ws,
      {
        onControl: (text) => onControl(this, text),
        // The first is kept, for the log line that says why the tunnel closed.
        onProtocolError: (err) => {
          this.failure ??= err;
        },
      },
      false,
    );
  }

  send(message: ServerControl): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  /** The limit on requests at once (maxTunnelStreams), if the tunnel is at it. */
  streamLimitReached(): number | undefined {
    return this.mux.size >= this.maxStreams ? this.maxStreams : undefined;
  }

  /** Opens a stream, counted until it closes. */
  request(head: OpenHead): TunnelStream {
    return this.mux.open(head);
  }

  /**
   * A request is going through: a client that does not answer a ping within one heartbeat
   * (a laptop asleep, a process stopped) is closed then, so the request fails within the
   * heartbeat rather than waiting for the next regular beat to notice.
   */
  probe(): void {
    if (this.probeTimer || !this.open) return;
    // Heard from just now: under load that is one ping a second at most, not one per request.
    if (Date.now() - this.lastPongAt < Math.min(1_000, this.heartbeatMs / 4)) return;
    this.ws.ping();
    this.probeTimer = setTimeout(() => this.missed(), this.heartbeatMs);
    this.probeTimer.unref();
  }

  /** No pong since the last ping: the peer is gone even if TCP has not noticed. */
  missed(): void {
    if (this.missedHeartbeat) return;
    this.missedHeartbeat = true;
    this.onMissed(this);
    this.ws.terminate();
  }

  get open(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }
}

export class TunnelHub {
  private readonly tunnels = new Map<string, ClientTunnel>();
  private readonly wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    maxPayload: 8 * 1024 * 1024,
    // The control port refused any other offer before the upgrade (tunnelVersionProblem).
    handleProtocols: () => TUNNEL_SUBPROTOCOL,
  });
  private readonly heartbeat: NodeJS.Timeout;

  constructor(
    private readonly store: InterceptStore,
    private readonly replicaId: string,
    private readonly heartbeatMs: number,
    private readonly log: Logger,
    private readonly maxStreams: number,
    /** Tunnels one token may hold open here (0: no limit). */
    private readonly maxPerToken = 0,
  ) {
    this.heartbeat = setInterval(() => this.beat(), heartbeatMs);
    this.heartbeat.unref();
    store.on('ended', (intercept, reason) => {
      this.tunnels.get(intercept.clientKey)?.send({ type: 'intercept-ended', id: intercept.id, reason });
    });
  }

  get(clientKey: string): ClientTunnel | undefined {
    const tunnel = this.tunnels.get(clientKey);
    return tunnel?.open ? tunnel : undefined;
  }

  list(): ClientTunnel[] {
    return [...this.tunnels.values()];
  }

  /** A reconnect may replace an open tunnel only with the token that opened it. */
  mayReplace(clientKey: string, principal: Principal): boolean {
    const previous = this.get(clientKey);
    return !previous || previous.principal.name === principal.name;
  }

  /**
   * Why `principal` may not open another tunnel here, if it may not. A reconnect that replaces
   * this client's own tunnel opens none more, so it is not counted against the limit.
   */
  overLimit(clientKey: string, principal: Principal): string | undefined {
    if (this.maxPerToken === 0) return undefined;
    let open = 0;
    for (const t of this.tunnels.values())
      if (t.principal.name === principal.name && t.clientKey !== clientKey) open++;
    if (open < this.maxPerToken) return undefined;
    return `token "${principal.name}" already holds ${open} tunnels open on this server agent, its limit (maxTunnelsPerToken)`;
  }

  accept(
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    principal: Principal,
    clientId: string,
    holder: string,
  ): void {
    const clientKey = clientKeyOf(clientId);
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      const previous = this.tunnels.get(clientKey);
      if (previous) {
        this.log.info({ tunnel: previous.tunnelId }, 'client reconnected; closing its previous tunnel');
        previous.ws.terminate();
      }
      const tunnel = new ClientTunnel(
        clientKey,
        holder,
        principal,
        ws,
        (t, text) => this.onControl(t, text),
        this.maxStreams,
        this.heartbeatMs,
        // Found by the regular beat or by a request's probe: either way, one line.
        (t) => this.log.warn({ tunnel: t.tunnelId, holder }, 'tunnel missed a heartbeat; closing it'),
      );
      this.tunnels.set(clientKey, tunnel);
      ws.on('close', () => {
        if (this.tunnels.get(clientKey) === tunnel) {
          this.tunnels.delete(clientKey);
          this.store
            .tunnelClosed(clientKey, this.replicaId)
            .catch((err: Error) =>
              this.log.warn(
                { tunnel: tunnel.tunnelId, err: err.message },
                'could not record the tunnel as closed',
              ),
            );
        }
        // Streams still open were reset by the mux: callers mid-response get a cut connection
        // instead of a body that looks complete.
        const failure = tunnel.failure;
        if (failure) {
          this.log.warn(
            {
              tunnel: tunnel.tunnelId,
              holder,
              err: failure.message,
              code: (failure as NodeJS.ErrnoException).code,
            },
            'tunnel protocol error (frames that are not Kelsingra tunnel frames or not WebSocket); closing it',
          );
        }
        this.log.info({ tunnel: tunnel.tunnelId, holder }, 'tunnel closed');
      });
      // `token` is a redacted log key; the token's name is no secret and tells operators who connected.
      this.log.info({ tunnel: tunnel.tunnelId, holder, tokenName: principal.name }, 'tunnel connected');
      // Hello waits for the record, so the client's next call (on any replica) finds this tunnel
      // and its intercepts already route here. Without the database it still opens, degraded.
      this.store
        .tunnelOpened({ clientKey, replicaId: this.replicaId, holder, tokenName: principal.name })
        .catch((err: Error) =>
          this.log.warn({ tunnel: tunnel.tunnelId, err: err.message }, 'could not record the tunnel'),
        )
        .finally(() =>
          tunnel.send({
            type: 'hello',
            clientId,
            heartbeatMs: this.heartbeatMs,
            leaseTtlMs: this.store.ttlMs,
          }),
        );
    });
  }

  /**
   * This replica is stopping: every client opens a tunnel to another replica, moves its
   * intercepts there, and closes this tunnel once the requests on it are done.
   */
  drain(): void {
    for (const tunnel of this.tunnels.values()) tunnel.send({ type: 'draining' });
  }

  /**
   * The shared token set changed. A tunnel whose token was removed or given another secret is
   * closed (its client's reconnect then fails with 401) and all its client's intercepts end; a
   * tunnel whose token only lost tenants keeps going, without the intercepts on those tenants.
   * Either way the client hears `intercept-ended` with reason `token-revoked` first. Returns
   * the intercepts it ended, for the audit log.
   */
  tokensChanged(successor: (was: Principal) => Principal | undefined): Intercept[] {
    const revoked: Intercept[] = [];
    for (const tunnel of this.tunnels.values()) {
      const now = successor(tunnel.principal);
      if (now === tunnel.principal) continue;
      const ended = this.store
        .list()
        .filter((i) => i.clientKey === tunnel.clientKey && !now?.canUseTenant(i.tenant));
      for (const intercept of ended) {
        tunnel.send({ type: 'intercept-ended', id: intercept.id, reason: 'token-revoked' });
        this.store
          .delete(intercept.id)
          .catch((err: Error) =>
            this.log.error(
              { intercept: intercept.id, err: err.message },
              'could not end an intercept whose token was revoked; it ends when its lease lapses',
            ),
          );
      }
      revoked.push(...ended);
      this.log.warn(
        {
          tunnel: tunnel.tunnelId,
          holder: tunnel.holder,
          tokenName: tunnel.principal.name,
          endedIntercepts: ended.map((i) => i.id),
        },
        now
          ? "the tunnel's token changed: intercepts on tenants it no longer covers ended"
          : "the tunnel's token was removed or its secret changed: closing the tunnel and ending its intercepts",
      );
      if (now) tunnel.principal = now;
      else tunnel.ws.close(1008, 'token revoked');
    }
    return revoked;
  }

  close(): void {
    clearInterval(this.heartbeat);
    for (const tunnel of this.tunnels.values()) tunnel.ws.terminate();
    this.wss.close();
  }

  private onControl(tunnel: ClientTunnel, text: string): void {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      this.log.warn({ tunnel: tunnel.tunnelId }, 'malformed control frame; closing tunnel');
      tunnel.ws.close(1007, 'malformed control frame');
      return;
    }
    const parsed = ClientControlSchema.safeParse(value);
    if (parsed.success) {
      const message = parsed.data;
      // An intercept on a tenant the token no longer covers (it changed while this client was
      // away) is not renewed: the client hears it is missing, and its lease lapses.
      const ids = message.ids;
      const refused = ids.filter((id) => {
        const intercept = this.store.get(id);
        return intercept !== undefined && !tunnel.principal.canUseTenant(intercept.tenant);
      });
      this.store
        .renew(
          tunnel.clientKey,
          ids.filter((id) => !refused.includes(id)),
          this.replicaId,
          tunnel.principal.name,
        )
        .then(
          (result) =>
            tunnel.send({ type: 'renewed', ids: result.renewed, missing: [...result.missing, ...refused] }),
          // Unanswered, the client renews again at its next interval; the lease outlives a few misses.
          (err: Error) =>
            this.log.error({ tunnel: tunnel.tunnelId, err: err.message }, 'renewing leases failed'),
        );
    } else {
      // Either side may add messages without breaking the other.
      this.log.warn(
        { tunnel: tunnel.tunnelId, type: (value as { type?: unknown } | null)?.type },
        'unknown or malformed control message ignored',
      );
    }
  }

  /** A peer that missed the previous ping is gone: two intervals at most from its last sign of life. */
  private beat(): void {
    for (const tunnel of this.tunnels.values()) {
      if (!tunnel.alive) {
        tunnel.missed();
        continue;
      }
      tunnel.alive = false;
      tunnel.ws.ping();
    }
  }
}
