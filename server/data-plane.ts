/**
 * The data port: every request the dev reverse proxy sends to Kelsingra. It finds the
 * service and tenant, then relays the request either through the intercepting
 * developer's tunnel or on to the service's upstream.
 */
import { timingSafeEqual } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { appendForwarded, appendVia, forwardableRawHeaders } from '../src/http-headers.js';
import { HOP_HEADER, RELAY_HEADER } from '../src/protocol.js';
import { sendError, writeRawError } from './error-response.js';
import type { EventBus, RequestRecord } from './event-bus.js';
import type { Intercept, InterceptStore, Peer } from './intercept-store.js';
import type { PassThrough } from './pass-through.js';
import type { RouteResult, ServiceRouter } from './routing.js';
import { forwardThroughTunnel } from './tunnel-forward.js';
import type { ClientTunnel, TunnelHub } from './tunnel-hub.js';
import { relayUpgrade } from './upgrade-relay.js';

/**
 * Not forwarded as they came: this hop sets its own Forwarded/Via/loop guard, and Expect was
 * already answered here (Node sends 100 Continue), so repeating it upstream would only stall.
 */
const REWRITTEN = new Set(['forwarded', 'via', 'expect', HOP_HEADER, RELAY_HEADER]);

export interface DataPlaneDeps {
  router: ServiceRouter;
  store: InterceptStore;
  hub: TunnelHub;
  passThrough: PassThrough;
  tenantHeader: string;
  serverId: string;
  timeoutMs: number;
  bus: EventBus;
  log: Logger;
  /** This replica's relay secret, when it runs with others (PostgreSQL store). */
  relaySecret?: () => string | undefined;
}

type Decision =
  | { kind: 'error'; status: number; code: string; message: string; extra?: Record<string, unknown> }
  | { kind: 'tunnel'; route: RouteResult; headers: string[]; intercept: Intercept; tunnel: ClientTunnel }
  | { kind: 'relay'; route: RouteResult; headers: string[]; intercept: Intercept; peer: Peer }
  | { kind: 'pass'; route: RouteResult; headers: string[] };

/**
 * The intercept a peer relayed this request for (`<secret> <intercept id>`), if the secret is
 * this replica's own; anything else is an outsider's header and means nothing.
 */
export function relayedIntercept(
  header: string | string[] | undefined,
  secret: string | undefined,
): string | undefined {
  if (typeof header !== 'string' || !secret) return undefined;
  const space = header.indexOf(' ');
  if (space < 0) return undefined;
  const given = Buffer.from(header.slice(0, space));
  const expected = Buffer.from(secret);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return undefined;
  return header.slice(space + 1) || undefined;
}

export function createDataPlane(deps: DataPlaneDeps): http.Server {
  const { router, store, hub, passThrough, tenantHeader, serverId, timeoutMs, bus, log } = deps;
  const publish = (record: RequestRecord) => bus.publish(record);

  /** Where a request goes, the same for plain requests and upgrades. */
  const decide = (req: IncomingMessage): Decision => {
    if (req.headers[HOP_HEADER] !== undefined) {
      return {
        kind: 'error',
        status: 508,
        code: 'loop-detected',
        message: `this request already passed through Kelsingra (${HOP_HEADER}: ${req.headers[HOP_HEADER]}); check that the reverse proxy rule skips requests carrying ${HOP_HEADER}`,
      };
    }
    const route = router.route(req.headers, req.url ?? '/');
    if (!route) {
      return {
        kind: 'error',
        status: 404,
        code: 'unknown-service',
        message: `no service matches host "${req.headers.host ?? ''}" or path "${req.url}"; known services: ${router.names.join(', ')}`,
        extra: { services: router.names },
      };
    }
    const headers = forwardableRawHeaders(req.rawHeaders, REWRITTEN);
    headers.push(
      'forwarded',
      appendForwarded(req.headers.forwarded, req.socket.remoteAddress, req.headers.host),
      'via',
      appendVia(req.headers.via),
    );
    const tenant = req.headers[tenantHeader];
    const intercept =
      typeof tenant === 'string' && tenant !== '' ? store.find(route.service.name, tenant) : undefined;
    if (!intercept) {
      headers.push(HOP_HEADER, serverId);
      return { kind: 'pass', route, headers };
    }
    // Only the tunnel the intercept routes to, opened with the token that made it: a tunnel
    // left behind here after its client moved on (not yet noticed dead) takes nothing.
    const tunnel = hub.get(intercept.clientKey);
    const routesHere = intercept.replicaId === serverId || intercept.replicaId === '';
    if (tunnel && routesHere && tunnel.principal.name === intercept.tokenName)
      return { kind: 'tunnel', route, headers, intercept, tunnel };
    // A request another replica relayed here is never relayed again: if the tunnel moved on,
    // the answer is an error, not a ping-pong between replicas.
    const relayHeader = req.headers[RELAY_HEADER];
    const relayed = relayedIntercept(relayHeader, deps.relaySecret?.()) !== undefined;
    if (relayHeader !== undefined && !relayed) {
      return {
        kind: 'error',
        status: 508,
        code: 'relay-misdirected',
        message: `a replica relayed this request here, but this is not the replica it meant (the secret does not match); check that each replica's --advertise-url reaches that replica and no other`,
      };
    }
    if (!relayed && intercept.replicaId && intercept.replicaId !== serverId) {
      const peer = store.peer(intercept.replicaId);
      if (peer) return { kind: 'relay', route, headers, intercept, peer };
      return {
        kind: 'error',
        status: 502,
        code: 'replica-down',
        message: `intercept ${intercept.id} (${intercept.service}, tenant ${intercept.tenant}) is held through replica ${intercept.replicaId}, which has stopped answering; ${intercept.holder}'s client moves to another replica within seconds`,
        extra: { intercept: intercept.id, replica: intercept.replicaId },
      };
    }
    const seconds = Math.max(0, Math.ceil((intercept.expiresAt - Date.now()) / 1000));
    return {
      kind: 'error',
      status: 502,
      code: 'tunnel-disconnected',
      message: `intercept ${intercept.id} (${intercept.service}, tenant ${intercept.tenant}) is held by ${intercept.holder}, whose tunnel is disconnected; traffic falls back to the base service if it does not reconnect within ${seconds} s`,
      extra: { intercept: intercept.id },
    };
  };

  /** The tunnel is on another replica: one streaming hop to it, which delivers through the tunnel. */
  const relay = (req: IncomingMessage, res: ServerResponse, d: Extract<Decision, { kind: 'relay' }>) => {
    d.headers.push(RELAY_HEADER, `${d.peer.secret} ${d.intercept.id}`);
    passThrough.forward(
      req,
      res,
      { name: `replica:${d.peer.id}`, upstream: new URL(d.peer.url), stripPrefix: false },
      req.url ?? '/',
      d.headers,
      {
        what: `replica ${d.peer.id} (${d.peer.url}), which holds the tunnel of intercept ${d.intercept.id}`,
        code: 'replica',
        extra: { intercept: d.intercept.id, replica: d.peer.id },
      },
    );
  };

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    // A peer relays as soon as its own copy knows the intercept; this copy may not have heard
    // yet. Asking the database once beats sending the tenant's request to the base service.
    const relayedId = relayedIntercept(req.headers[RELAY_HEADER], deps.relaySecret?.());
    if (relayedId && !store.get(relayedId)) {
      store.lookup(relayedId).then(
        () => dispatch(req, res),
        (err: Error) =>
          sendError(
            res,
            503,
            'store-unavailable',
            `cannot look up relayed intercept ${relayedId}: ${err.message}`,
          ),
      );
      return;
    }
    dispatch(req, res);
  };

  const dispatch = (req: IncomingMessage, res: ServerResponse) => {
    const d = decide(req);
    if (d.kind === 'error') sendError(res, d.status, d.code, d.message, d.extra);
    else if (d.kind === 'tunnel')
      forwardThroughTunnel(req, res, d.tunnel, d.intercept, d.route.path, d.headers, timeoutMs, publish);
    else if (d.kind === 'relay') relay(req, res, d);
    else passThrough.forward(req, res, d.route.service, d.route.path, d.headers);
  };

  const server = http.createServer(
    { keepAliveTimeout: 65_000, headersTimeout: 30_000, maxHeaderSize: 32 * 1024 },
    handle,
  );
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const d = decide(req);
    if (d.kind === 'error') writeRawError(socket, d.status, d.code, d.message, d.extra);
    else if (d.kind === 'tunnel' || d.kind === 'relay') {
      writeRawError(
        socket,
        501,
        'upgrade-not-tunnelled',
        `intercept ${d.intercept.id} (${d.intercept.service}, tenant ${d.intercept.tenant}) cannot carry WebSocket or other upgrades yet; only plain HTTP requests reach the local service`,
        { intercept: d.intercept.id },
      );
    } else relayUpgrade(req, socket, head, d.route, d.headers, timeoutMs, log);
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
    writeRawError(
      socket,
      status,
      status === 431 ? 'headers-too-large' : 'malformed-request',
      `${status === 431 ? 'request headers too large' : 'malformed request'} (${err.code})`,
    );
  });
  return server;
}
