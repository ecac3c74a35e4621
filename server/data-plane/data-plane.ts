/**
 * The data port: every request the dev reverse proxy sends to Kelsingra. It finds the
 * service and the routing key (tenant), then relays the request through the intercepting
 * developer's tunnel, else to the tenant's route, else on to the service's upstream.
 * Developers' outbound calls (the client agent's gateway) enter the same way.
 *
 * Over 400 lines on purpose: decide() and send() share the Decision union and the request's
 * hot path; reading the request (inbound.ts) and the relay header (peer-relay.ts) are apart.
 */

import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { ErrorCode } from '../../src/shared/error-codes.js';
import { type DualProtocol, serveHttp2 } from '../../src/shared/http/dual-protocol.js';
import {
  answeredStatusOf,
  errorCodeOf,
  sendError,
  writeRawError,
} from '../../src/shared/http/error-response.js';
import {
  AMBIGUOUS_HEADER,
  ambiguityRefusal,
  HeaderGuard,
  HTTP_GUARDED,
} from '../../src/shared/http/header-twins.js';
import {
  appendForwarded,
  appendVia,
  forwardableRawHeaders,
  maskSecretQuery,
} from '../../src/shared/http/http-headers.js';
import {
  hasRequestBody,
  type InboundRequest,
  type OutboundResponse,
  responseComplete,
} from '../../src/shared/http/http-types.js';
import { REQUEST_ID_HEADER, tagResponse } from '../../src/shared/http/request-id.js';
import { baggageEntries, baggageEntry, baggageSetTo } from '../../src/shared/http/w3c-context.js';
import { HOP_HEADER, RELAY_HEADER } from '../../src/shared/protocol.js';
import type { Principal } from '../auth/auth.js';
import type { EventBus, RequestRecord } from '../observability/event-bus.js';
import type { DecisionLabel, ServerMetrics } from '../observability/metrics.js';
import type { Route } from '../routing/route-table.js';
import { type RoutingKeyOptions, routingKeyOf, routingKeyProblem } from '../routing/routing-keys.js';
import type { ServiceMatch, ServiceResolver } from '../routing/service-resolver.js';
import type { Intercept, InterceptStore, Peer } from '../store/intercept-store.js';
import { forwardThroughTunnel } from '../tunnel/tunnel-forward.js';
import type { ClientTunnel, TunnelHub } from '../tunnel/tunnel-hub.js';
import { upgradeThroughTunnel } from '../tunnel/tunnel-upgrade.js';
import { announcedTooLarge, refuseAnnouncedBody } from './body-limit.js';
import { closeAfter, type InFlight } from './drain.js';
import { gatewayInbound, type Inbound, inboundOf, setHeader } from './inbound.js';
import type { PassThroughProxy, UpstreamTarget } from './pass-through.js';
import { relayedIntercept, relayHeaderOf } from './peer-relay.js';
import { TenantShare } from './tenant-share.js';
import { relayUpgrade } from './upgrade-relay.js';

/**
 * Not forwarded as they came: this hop sets its own Forwarded/Via/loop guard and request id,
 * and Expect was already answered here (Node sends 100 Continue), so repeating it upstream
 * would only stall.
 */
const REWRITTEN = new Set(['forwarded', 'via', 'expect', HOP_HEADER, RELAY_HEADER, REQUEST_ID_HEADER]);

export interface DataPlaneDeps {
  resolver: ServiceResolver;
  store: InterceptStore;
  hub: TunnelHub;
  passThrough: PassThroughProxy;
  tenantHeader: string;
  /** Where routing keys come from, in order (the tenant header, baggage, subdomain). */
  keys: RoutingKeyOptions;
  /** The pool a tenant route sends to. */
  routeTarget: (route: Route) => UpstreamTarget;
  /** This replica's id (the one intercepts name in replicaId when their tunnel is here). */
  replicaId: string;
  timeoutMs: number;
  bus: EventBus;
  log: Logger;
  metrics: ServerMetrics;
  /** This replica's relay secret, when it runs with others (PostgreSQL store). */
  relaySecret?: () => string | undefined;
  /** Largest request body passed on, in bytes (0 or absent: no limit). */
  maxBodyBytes?: number;
  /** Whether this replica is draining (its tunnels are moving to another one). */
  draining?: () => boolean;
  /** Longest pause allowed between request body bytes, in ms (0 or absent: no limit). */
  bodyIdleMs?: number;
  /** Requests one routing key may have in flight to one service (0 or absent: no limit). */
  tenantConcurrency?: number;
}

type Decision =
  | {
      kind: 'error';
      status: number;
      code: ErrorCode;
      message: string;
      extra?: Record<string, unknown>;
      key?: string;
      /** Once routing found it: for metrics and logs. */
      service?: string;
    }
  | {
      kind: 'tunnel';
      match: ServiceMatch;
      headers: string[];
      intercept: Intercept;
      tunnel: ClientTunnel;
      key: string;
    }
  | { kind: 'relay'; match: ServiceMatch; headers: string[]; intercept: Intercept; peer: Peer; key: string }
  | { kind: 'route'; match: ServiceMatch; headers: string[]; tenantRoute: Route; key: string }
  | { kind: 'pass'; match: ServiceMatch; headers: string[]; key?: string };

export interface DataPlane {
  server: http.Server;
  /** The same port's HTTP/2 side (h2c, and ALPN h2 once serveTls runs it). */
  http2: DualProtocol;
  /** Requests not yet answered, for the drain. */
  inFlight: InFlight;
  /**
   * A developer's outbound call through their client agent's gateway (`/v1/gateway/…` on the
   * control port): routed like a data-port request for its routing key, which the token must
   * be allowed to use.
   */
  serveGateway(req: InboundRequest, res: OutboundResponse, principal: Principal): void;
}

export function createDataPlane(deps: DataPlaneDeps): DataPlane {
  const { resolver, store, hub, passThrough, tenantHeader, replicaId, timeoutMs, bus, log, metrics } = deps;
  const publish = (record: RequestRecord) => bus.publish(record);
  const maxBodyBytes = deps.maxBodyBytes ?? 0;
  const bodyLimits = { maxBytes: maxBodyBytes, idleMs: deps.bodyIdleMs ?? 0 };
  const share = new TenantShare(deps.tenantConcurrency ?? 0);
  const responses = new Set<OutboundResponse>();
  const inFlight: InFlight = { responses, closing: false };
  const guard = new HeaderGuard([...HTTP_GUARDED, tenantHeader]);

  /** Where a request goes, the same for plain requests, upgrades and gateway calls. */
  const decide = (req: Inbound): Decision => {
    if (req.badTarget !== undefined)
      return {
        kind: 'error',
        status: 400,
        code: 'bad-path',
        message: req.badTarget,
        extra: { hint: 'send a path such as /invoices/7, whose ".." segments stay below /' },
      };
    if (req.headers[HOP_HEADER] !== undefined) {
      return {
        kind: 'error',
        status: 508,
        code: 'loop-detected',
        message: `this request already passed through Kelsingra (${HOP_HEADER}: ${req.headers[HOP_HEADER]}); check that the reverse proxy rule skips requests carrying ${HOP_HEADER}`,
      };
    }
    // Before anything reads a header: the service behind may read a twin Kelsingra would not.
    const twin = guard.ambiguity(req.rawHeaders);
    if (twin) return { kind: 'error', status: 400, code: AMBIGUOUS_HEADER, ...ambiguityRefusal(twin) };
    const match = resolver.resolve(req.headers, req.url);
    if (!match) {
      return {
        kind: 'error',
        status: 404,
        code: 'unknown-service',
        message: `no service matches host "${req.headers.host ?? ''}" or path "${req.url}"; known services: ${resolver.names.join(', ')}`,
        extra: { services: resolver.names },
      };
    }
    const headers = forwardableRawHeaders(req.rawHeaders, REWRITTEN, guard);
    headers.push(
      'forwarded',
      appendForwarded(
        req.headers.forwarded as string | undefined,
        req.remoteAddress,
        req.headers.host as string | undefined,
      ),
      'via',
      appendVia(req.headers.via as string | undefined),
      REQUEST_ID_HEADER,
      req.requestId,
    );
    const routing = routingKeyOf(req.headers, match.hostKey, deps.keys);
    const key = routing?.key;
    const problem = key === undefined ? undefined : routingKeyProblem(key);
    if (problem) {
      return {
        kind: 'error',
        status: 400,
        code: 'bad-routing-key',
        service: match.service.name,
        message: `the routing key from the ${routing?.source === 'header' ? `${tenantHeader} header` : routing?.source === 'baggage' ? `${deps.keys.baggageKey} baggage entry` : 'host'} ${problem}`,
        extra: { hint: `send exactly one ${tenantHeader} header naming one tenant` },
      };
    }
    // The key becomes the one tenant header (and the baggage entry, when baggage is a source),
    // so the services down the chain (and their calls through Kelsingra) carry that key on. A
    // second key riding along would have them serve the request as another tenant than the
    // one it was routed — and, through the gateway, authorised — for. Set here rather than
    // kept as it came: whatever the caller's Connection line named, the target gets it.
    if (key !== undefined) setHeader(headers, tenantHeader, key);
    if (key !== undefined && deps.keys.order.includes('baggage')) {
      const carried = baggageEntry(req.headers.baggage, deps.keys.baggageKey);
      // A second member of that key rides along unseen: Kelsingra reads the first, others the last.
      if (
        carried !== undefined &&
        (carried !== key || baggageEntries(req.headers.baggage, deps.keys.baggageKey) > 1)
      )
        setHeader(headers, 'baggage', baggageSetTo(req.headers.baggage, deps.keys.baggageKey, key));
    }
    const intercept = key !== undefined ? store.find(match.service.name, key) : undefined;
    if (!intercept) {
      headers.push(HOP_HEADER, replicaId);
      const tenantRoute = key !== undefined ? store.findRoute(match.service.name, key) : undefined;
      if (tenantRoute) return { kind: 'route', match, headers, tenantRoute, key: key as string };
      return { kind: 'pass', match, headers, key };
    }
    const relayed = relayedIntercept(req.headers[RELAY_HEADER], deps.relaySecret?.());
    // Only the tunnel the intercept routes to, opened with the token that made it: a tunnel
    // left behind here after its client moved on (not yet noticed dead) takes nothing. Two
    // exceptions, both for a relayed request that was sent here by a copy that said "here":
    // while this replica drains, its tunnels are alive and still serve their clients until
    // they close; and a peer whose copy is newer than this one's knows the tunnel is here.
    const tunnel = hub.get(intercept.clientKey);
    const routesHere = intercept.replicaId === replicaId || intercept.replicaId === '';
    const meantHere =
      relayed !== undefined && (deps.draining?.() === true || relayed.epoch > intercept.epoch);
    if (tunnel && (routesHere || meantHere) && tunnel.principal.name === intercept.tokenName)
      return { kind: 'tunnel', match, headers, intercept, tunnel, key: intercept.tenant };
    const relayHeader = req.headers[RELAY_HEADER];
    if (relayHeader !== undefined && !relayed) {
      return {
        kind: 'error',
        key: intercept.tenant,
        service: match.service.name,
        status: 508,
        code: 'relay-misdirected',
        message: `a replica relayed this request here, but this is not the replica it meant (the secret does not match); check that each replica's --advertise-url reaches that replica and no other`,
      };
    }
    // A relayed request is relayed again only to where a newer copy than the sender's points:
    // each hop raises the epoch, which the database only ever raises, so no request bounces
    // between replicas. A tunnel that moved during the hop is found at its new replica.
    const passOn = relayed === undefined || intercept.epoch > relayed.epoch;
    if (passOn && intercept.replicaId && intercept.replicaId !== replicaId) {
      const peer = store.peer(intercept.replicaId);
      if (peer) return { kind: 'relay', match, headers, intercept, peer, key: intercept.tenant };
      return {
        kind: 'error',
        key: intercept.tenant,
        service: match.service.name,
        status: 502,
        code: 'replica-down',
        message: `intercept ${intercept.id} (${intercept.service}, tenant ${intercept.tenant}) is held through replica ${intercept.replicaId}, which has stopped answering; ${intercept.holder}'s client moves to another replica within seconds`,
        extra: { intercept: intercept.id, replica: intercept.replicaId },
      };
    }
    const seconds = Math.max(0, Math.ceil((intercept.expiresAt - Date.now()) / 1000));
    return {
      kind: 'error',
      key: intercept.tenant,
      service: match.service.name,
      status: 502,
      code: 'tunnel-disconnected',
      message: `intercept ${intercept.id} (${intercept.service}, tenant ${intercept.tenant}) is held by ${intercept.holder}, whose tunnel is disconnected; traffic falls back to the base service if it does not reconnect within ${seconds} s`,
      extra: { intercept: intercept.id },
    };
  };

  /** The tunnel is on another replica: one streaming hop to it, which delivers through the tunnel. */
  const relay = (
    req: InboundRequest,
    res: OutboundResponse,
    url: string,
    d: Extract<Decision, { kind: 'relay' }>,
  ) => {
    d.headers.push(RELAY_HEADER, relayHeaderOf(d));
    passThrough.forward(
      req,
      res,
      { name: `replica:${d.peer.id}`, upstreams: [new URL(d.peer.url)], healthCheck: false },
      url,
      d.headers,
      {
        what: `replica ${d.peer.id} (${d.peer.url}), which holds the tunnel of intercept ${d.intercept.id}`,
        code: 'replica',
        extra: { intercept: d.intercept.id, replica: d.peer.id },
      },
    );
  };

  const handle = (req: InboundRequest, res: OutboundResponse) => {
    const inbound = inboundOf(req);
    // A peer relays as soon as its own copy knows the intercept; this copy may not have heard
    // yet. Asking the database once beats sending the tenant's request to the base service.
    const relayedId = relayedIntercept(req.headers[RELAY_HEADER], deps.relaySecret?.())?.id;
    if (relayedId && !store.get(relayedId)) {
      store.lookup(relayedId).then(
        () => dispatch(req, res, inbound),
        (err: Error) =>
          send(req, res, inbound, {
            kind: 'error',
            status: 503,
            code: 'store-unavailable',
            message: `cannot look up relayed intercept ${relayedId}: ${err.message}`,
          }),
      );
      return;
    }
    dispatch(req, res, inbound);
  };

  /** Counts the request and logs Kelsingra's own failures once the response is over; the caller gets the id back. */
  const observe = (req: InboundRequest, res: OutboundResponse, inbound: Inbound, d: Decision) => {
    tagResponse(res, inbound.requestId);
    responses.add(res);
    if (inFlight.closing) closeAfter(res);
    res.once('close', () => {
      responses.delete(res);
      const decision: DecisionLabel = d.kind === 'pass' ? 'base' : d.kind;
      const service = d.kind === 'error' ? (d.service ?? '') : d.match.service.name;
      const status = res.headersSent ? answeredStatusOf(res) : undefined;
      const code = errorCodeOf(res);
      const durationMs = performance.now() - inbound.receivedAt;
      metrics.request(decision, service, status, code, durationMs / 1000);
      // An upstream's own 5xx is its service's news, and callers hang up on streams all the
      // time: only Kelsingra's own 5xx answers are warnings.
      const failed = code !== undefined && (status ?? 500) >= 500;
      if (!failed && !log.isLevelEnabled('debug')) return;
      const fields = {
        requestId: inbound.requestId,
        decision,
        service,
        key: d.key,
        intercept: d.kind === 'tunnel' || d.kind === 'relay' ? d.intercept.id : undefined,
        method: req.method,
        path: maskSecretQuery(inbound.url),
        status,
        code,
        durationMs: Math.round(durationMs * 10) / 10,
        cut: !responseComplete(res) || undefined,
      };
      if (failed) log.warn(fields, `request failed: ${code}`);
      else log.debug(fields, 'request');
    });
  };

  const send = (req: InboundRequest, res: OutboundResponse, inbound: Inbound, d: Decision) => {
    observe(req, res, inbound, d);
    if (d.kind !== 'error' && refuseAnnouncedBody(req, res, maxBodyBytes)) return;
    // The share guards what tenants have in common: the base upstream and a route's pool.
    // A tunnel (or a relay to one) carries a single (service, tenant) and has its own limit,
    // maxTunnelStreams. Requests without a routing key are the environment's own traffic.
    if ((d.kind === 'pass' || d.kind === 'route') && d.key !== undefined) {
      if (!share.admit(res, d.match.service.name, d.key, hasRequestBody(req))) return;
    }
    if (d.kind === 'error') sendError(res, d.status, d.code, d.message, d.extra);
    else if (d.kind === 'tunnel')
      forwardThroughTunnel(
        req,
        res,
        d.tunnel,
        d.intercept,
        d.match.path,
        d.headers,
        timeoutMs,
        publish,
        inbound.requestId,
        bodyLimits,
      );
    else if (d.kind === 'relay') relay(req, res, inbound.url, d);
    else if (d.kind === 'route') {
      const target = deps.routeTarget(d.tenantRoute);
      passThrough.forward(req, res, target, d.match.path, d.headers, {
        what: `route ${d.tenantRoute.id} of ${d.tenantRoute.service} (${d.tenantRoute.targets.join(', ')})`,
        code: 'route',
        extra: { service: d.tenantRoute.service, route: d.tenantRoute.id },
      });
    } else passThrough.forward(req, res, d.match.service, d.match.path, d.headers);
  };

  const dispatch = (req: InboundRequest, res: OutboundResponse, inbound: Inbound, learned = false) => {
    const d = decide(inbound);
    // The holder may be a replica that started after this one last read the members: read
    // them once more before telling the caller it is down (a heartbeat at most behind).
    const replica = d.kind === 'error' && d.code === 'replica-down' ? String(d.extra?.replica) : undefined;
    if (replica === undefined || learned) return send(req, res, inbound, d);
    store.learnPeer(replica).then(
      (known) => (known ? dispatch(req, res, inbound, true) : send(req, res, inbound, d)),
      (err: Error) => {
        log.warn({ replica, err: err.message }, 'could not read the replicas to find an unknown one');
        send(req, res, inbound, d);
      },
    );
  };

  const serveGateway = (req: InboundRequest, res: OutboundResponse, principal: Principal) => {
    const inbound = gatewayInbound(req);
    const d = decide(inbound);
    if (d.kind !== 'error' || d.key !== undefined) {
      const service = d.kind === 'error' ? d.service : d.match.service.name;
      if (d.key === undefined) {
        send(req, res, inbound, {
          kind: 'error',
          service,
          status: 400,
          code: 'no-routing-key',
          message: `this outbound call carries no routing key (no ${tenantHeader} header${deps.keys.order.includes('baggage') ? ` and no ${deps.keys.baggageKey} baggage entry` : ''})`,
          extra: {
            hint: 'call through the gateway of kelsingra intercept or kelsingra gateway, which add the tenant header',
          },
        });
        return;
      }
      if (!principal.canUseTenant(d.key)) {
        send(req, res, inbound, {
          kind: 'error',
          service,
          key: d.key,
          status: 403,
          code: 'tenant-forbidden',
          message: `token "${principal.name}" may not call dev as tenant "${d.key}"`,
        });
        return;
      }
    }
    send(req, res, inbound, d);
  };

  const server = http.createServer(
    {
      keepAliveTimeout: 65_000,
      // Headers are small: a caller that has not sent them in 30 s is only holding a socket.
      headersTimeout: 30_000,
      // The whole request, body included (Node's own default, set here so it is a decision):
      // a 100 MiB body (maxBodyBytes' default) at 1 MB/s fits. A caller that pauses mid-body
      // is cut sooner by bodyIdleTimeout, and what a slow one holds meanwhile is its tenant's
      // share only.
      requestTimeout: 300_000,
      maxHeaderSize: 32 * 1024,
    },
    handle,
  );
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const inbound = inboundOf(req);
    const d = decide(inbound);
    if (d.kind === 'error') writeRawError(socket, d.status, d.code, d.message, d.extra);
    else if (d.kind === 'tunnel')
      upgradeThroughTunnel(
        req,
        socket,
        head,
        d.tunnel,
        d.intercept,
        d.match.path,
        d.headers,
        timeoutMs,
        publish,
        inbound.requestId,
        log.child({ requestId: inbound.requestId }),
      );
    else if (d.kind === 'relay') {
      // The replica holding the tunnel takes the upgrade as it takes any relayed request.
      d.headers.push(RELAY_HEADER, relayHeaderOf(d));
      const peer = new URL(d.peer.url);
      const service = { ...d.match.service, name: `replica:${d.peer.id}`, upstream: peer, upstreams: [peer] };
      relayUpgrade(
        req,
        socket,
        head,
        { ...d.match, path: inbound.url, service },
        d.headers,
        timeoutMs,
        log.child({ requestId: inbound.requestId }),
      );
    } else {
      // Upgrades are long-lived and not retried: each goes to the backend round robin picks.
      const target: UpstreamTarget = d.kind === 'route' ? deps.routeTarget(d.tenantRoute) : d.match.service;
      const upstream = passThrough.pick(target);
      if (!upstream) {
        writeRawError(
          socket,
          503,
          'no-healthy-backend',
          `no backend of ${target.name} is healthy (${target.upstreams.map((u) => u.host).join(', ')}); try again when one is up`,
        );
        return;
      }
      const service = { ...d.match.service, upstream, upstreams: [upstream] };
      const upgradeLog = log.child({ requestId: inbound.requestId });
      relayUpgrade(req, socket, head, { ...d.match, service }, d.headers, timeoutMs, upgradeLog);
    }
  });
  // Node would send 100 Continue before routing; held back, a body announced too large is
  // refused without the client sending it.
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    if (announcedTooLarge(req, maxBodyBytes) === undefined) res.writeContinue();
    server.emit('request', req, res);
  });
  const dual = serveHttp2(server, handle, { maxHeaderSize: 32 * 1024 });
  dual.h2.on('checkContinue', (req: InboundRequest, res: OutboundResponse) => {
    if (announcedTooLarge(req, maxBodyBytes) === undefined) res.writeContinue();
    dual.h2.emit('request', req, res);
  });
  return { server, http2: dual, serveGateway, inFlight };
}
