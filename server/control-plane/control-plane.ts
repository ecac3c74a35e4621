/**
 * The control port: health, status, the REST APIs (intercepts and routes in their own modules)
 * and the tunnel endpoint.
 * Everything except /healthz needs a bearer token; a token limited to tenants only sees
 * and touches intercepts of those tenants.
 *
 * Over 400 lines on purpose: the endpoint table, sign-in (token, limiter) and the tunnel's
 * WebSocket upgrade share the same checks; the intercepts and routes APIs are apart.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { z } from 'zod';
import { HttpError } from '../../src/shared/error-codes.js';
import { sendError, writeRawError } from '../../src/shared/http/error-response.js';
import {
  CLIENT_ID_HEADER,
  GATEWAY_PATH,
  GATEWAY_TOKEN_HEADER,
  HOLDER_HEADER,
  type ServerInfo,
  TUNNEL_PATH,
} from '../../src/shared/protocol.js';
import { VERSION } from '../../src/shared/version.js';
import { type Actor, type AuditLog, actorOf } from '../auth/audit-log.js';
import type { Principal, TokenAuthority } from '../auth/auth.js';
import type { AuthFailureLimiter } from '../auth/auth-limiter.js';
import { topicName } from '../config/config.js';
import type { ClientAddresses } from '../data-plane/client-address.js';
import type { PassThroughProxy, UpstreamTarget } from '../data-plane/pass-through.js';
import type { GatewaySync, TraefikDriver } from '../gateway-sync/index.js';
import { ForwardRefused } from '../kafka/forward-refused.js';
import type { KafkaAgent } from '../kafka/kafka-agent.js';
import type { EventBus } from '../observability/event-bus.js';
import type { ServerMetrics } from '../observability/metrics.js';
import type { Route } from '../routing/route-table.js';
import type { RouteTargetPolicy } from '../routing/route-targets.js';
import type { ServiceResolver } from '../routing/service-resolver.js';
import { clientKeyOf, type InterceptStore, StoreUnavailableError } from '../store/intercept-store.js';
import type { LapsedLeases } from '../store/lapsed-leases.js';
import { type TunnelHub, tunnelIdOf, tunnelVersionProblem } from '../tunnel/tunnel-hub.js';
import { type Endpoint, parseBody, sendJson } from './api-body.js';
import { type EventStreamSource, serveEvents } from './event-stream.js';
import { createInterceptApi } from './intercept-api.js';
import { createRouteApi } from './route-api.js';

export interface ControlPlaneDeps {
  auth: TokenAuthority;
  store: InterceptStore;
  hub: TunnelHub;
  resolver: ServiceResolver;
  passThrough: PassThroughProxy;
  replicaId: string;
  tenantHeader: string;
  baggageKey: string;
  previewUrl?: string;
  /** The pool a tenant route sends to (its backends are in /status with the services'). */
  routeTarget: (route: Route) => UpstreamTarget;
  /** Which URLs routes may send to. */
  routeTargetPolicy: RouteTargetPolicy;
  /** Outbound calls from client agents' gateways, routed by the data plane. */
  serveGateway: (req: IncomingMessage, res: ServerResponse, principal: Principal) => void;
  bus: EventBus;
  /** Intercepts whose lease lapsed: a client bringing one back under its id hears when and for how long. */
  lapses: LapsedLeases;
  log: Logger;
  /** Served at /metrics, with no token like /healthz: its labels carry no tenant or secret. */
  metrics: ServerMetrics;
  /** Intercept and route changes, who made them and how they ended. */
  audit: AuditLog;
  /** Turns away addresses that keep presenting wrong tokens. */
  authLimiter: AuthFailureLimiter;
  clientAddresses: ClientAddresses;
  /** The configured Kafka topics a service's tenants' messages can be intercepted on. */
  kafkaTopicsOf: (service: string) => string[];
  /** True once a graceful stop began: /healthz says so, and new tunnels go elsewhere. */
  draining?: () => boolean;
  kafka?: KafkaAgent;
  /** Keeps the dev gateway's rules in step: a new intercept is answered once the gateway has it. */
  gateway?: GatewaySync;
  /** With the Traefik driver: the dynamic configuration Traefik's HTTP provider polls. */
  traefik?: TraefikDriver;
}

const forwardBody = z
  .object({
    intercept: z.string().min(1),
    topic: topicName,
    messages: z
      .array(
        z
          .object({
            key: z.string().nullable(),
            value: z.string().nullable(),
            headers: z.record(z.string(), z.string()).default({}),
            // The local record's time; the dev topic stamps its own.
            timestamp: z.string().optional(),
          })
          .strict(),
      )
      .min(1)
      .max(500),
  })
  .strict();

/** Forwarded Kafka batches carry message values. */
const MAX_FORWARD_BODY = 8 * 1024 * 1024;
const UNAUTHORIZED_HINT =
  'check the token: kelsingra connect --server <url> --token <secret>, or set KELSINGRA_TOKEN';

export function createControlPlane(deps: ControlPlaneDeps): http.Server {
  const { auth, store, hub, resolver, passThrough, bus, log } = deps;
  const { replicaId } = deps;
  const { audit } = deps;
  /** The caller, for the audit trail; the holder is the client's own description of itself. */
  const actor = (req: IncomingMessage, p: Principal): Actor => {
    const holder = req.headers[HOLDER_HEADER];
    return actorOf(
      p,
      deps.clientAddresses.of(req),
      typeof holder === 'string' && holder ? holder.slice(0, 120) : undefined,
    );
  };
  const routeApi = createRouteApi({ store, resolver, policy: deps.routeTargetPolicy, log, audit, actor });
  const interceptApi = createInterceptApi({
    auth,
    store,
    hub,
    resolver,
    replicaId,
    lapses: deps.lapses,
    log,
    audit,
    actor,
    kafkaTopicsOf: deps.kafkaTopicsOf,
    draining: deps.draining,
    gateway: deps.gateway,
  });
  const { view, visible } = interceptApi;
  /** The services' pools, and the pools of the routes this token may see. */
  const services = (p: Principal): UpstreamTarget[] => [
    ...resolver.names.map((n) => resolver.get(n)).filter((s) => s !== undefined),
    ...store
      .listRoutes()
      .filter((r) => routeApi.routeFor(p, r) !== undefined)
      .map(deps.routeTarget),
  ];
  const events: EventStreamSource = {
    bus,
    snapshot: (p) => ({ intercepts: visible(p).map(view), upstreams: passThrough.upstreams(services(p)) }),
    upstreams: (p) => ({ type: 'upstreams', upstreams: passThrough.upstreams(services(p)), at: Date.now() }),
    upstreamsEveryMs: 5_000,
    successor: (p) => auth.successor(p),
  };

  /** Deliveries of intercepts this token may see, like the intercepts themselves. */
  const kafkaStatusFor = async (p: Principal) => {
    const status = await deps.kafka?.status();
    if (!status) return undefined;
    const visibleIds = new Set(visible(p).map((i) => i.id));
    return { ...status, deliveries: status.deliveries.filter((d) => visibleIds.has(d.intercept)) };
  };

  /** The endpoints of fixed path, by method and path; the routes API and `/v1/intercepts/<id>` answer the rest. */
  const endpoints: Record<string, Endpoint> = {
    ...interceptApi.endpoints,
    ...routeApi.endpoints,
    'GET /status': async (_req, res, principal) => {
      sendJson(res, 200, {
        // The public name of this replica's id (scripts read it): kept as it was.
        serverId: replicaId,
        version: VERSION,
        // Who the caller is to this server: which token, its role and tenants (never the secret).
        principal: { name: principal.name, role: principal.role, tenants: principal.tenants },
        store: store.health(),
        kafka: await kafkaStatusFor(principal),
        ...(deps.gateway ? { gateway: deps.gateway.status() } : {}),
        tenantHeader: deps.tenantHeader,
        services: resolver.names.map((name) => ({ name, upstream: resolver.get(name)?.upstream.href })),
        upstreams: passThrough.upstreams(services(principal)),
        intercepts: visible(principal).map(view),
        clients: hub
          .list()
          .filter((t) => principal.unrestricted || t.principal.name === principal.name)
          .map((t) => ({
            tunnelId: t.tunnelId,
            holder: t.holder,
            token: t.principal.name,
            connectedAt: new Date(t.connectedAt).toISOString(),
            intercepts: store
              .list()
              .filter((i) => i.clientKey === t.clientKey)
              .map((i) => i.id),
          })),
      });
    },
    'GET /v1/info': (_req, res) => {
      const info: ServerInfo = {
        tenantHeader: deps.tenantHeader,
        baggageKey: deps.baggageKey,
        previewUrl: deps.previewUrl,
        services: resolver.names,
      };
      sendJson(res, 200, info);
    },
    'GET /v1/traefik/dynamic': async (_req, res, principal) => {
      if (!deps.traefik || !deps.gateway) {
        sendError(
          res,
          404,
          'not-found',
          'this server agent has no gateway: { driver: traefik } in its config',
        );
        return;
      }
      // It names every routed tenant: only a token that may see them all reads it.
      if (!principal.unrestricted) {
        sendError(
          res,
          403,
          'provider-forbidden',
          `token "${principal.name}" is limited to tenants; Traefik needs an admin token`,
        );
        return;
      }
      sendJson(res, 200, await deps.traefik.serve(deps.gateway.desired()));
    },
    'GET /v1/events': (req, res, principal, url) => {
      serveEvents(req, res, url, principal, events);
    },
    'POST /v1/kafka/forward': async (req, res, principal) => {
      const body = await parseBody(req, res, forwardBody, 'forward', MAX_FORWARD_BODY);
      if (!body) return;
      if (!deps.kafka) {
        sendError(res, 404, 'kafka-disabled', 'this server agent has no kafka: section in its config');
        return;
      }
      const intercept = store.get(body.intercept);
      if (!intercept || !principal.canUseTenant(intercept.tenant)) {
        sendError(res, 404, 'unknown-intercept', `no intercept ${body.intercept}`);
        return;
      }
      let count: number;
      try {
        count = await deps.kafka.forward(intercept, body.topic, body.messages);
      } catch (err) {
        if (!(err instanceof ForwardRefused)) throw err;
        sendError(res, err.status, err.status === 403 ? 'topic-forbidden' : 'unknown-topic', err.message);
        return;
      }
      sendJson(res, 200, { produced: count });
    },
  };

  /** The REST API, for a caller whose token checked out. */
  const serveApi = async (req: IncomingMessage, res: ServerResponse, principal: Principal, url: URL) => {
    const { pathname } = url;
    const endpoint = endpoints[`${req.method} ${pathname}`];
    if (endpoint) return endpoint(req, res, principal, url);
    if (await routeApi.handle(req, res, principal, url)) return;
    if (await interceptApi.handle(req, res, principal, url)) return;
    sendError(res, 404, 'not-found', `no such endpoint: ${req.method} ${pathname}`);
  };

  /**
   * The caller's token, checked unless its address is being turned away for wrong ones. Only
   * a wrong token counts against the address: a request without one guesses nothing.
   */
  const signIn = (
    req: IncomingMessage,
    gateway: boolean,
  ): { principal: Principal | undefined } | { retryAfter: number; address: string } => {
    const address = deps.clientAddresses.of(req);
    const retryAfter = deps.authLimiter.retryAfter(address);
    if (retryAfter > 0) return { retryAfter, address };
    const presented = gateway ? req.headers[GATEWAY_TOKEN_HEADER] : req.headers.authorization;
    let principal: Principal | undefined;
    if (!gateway) principal = auth.authenticate(req.headers);
    else if (typeof presented === 'string') principal = auth.verify(presented);
    if (!principal && presented !== undefined) {
      const block = deps.authLimiter.failed(address);
      if (block)
        log.warn(
          { address, blocked: block.key, failures: block.failures, blockedForSeconds: block.seconds },
          'too many wrong tokens from one client address: its token checks are refused with 429 for a while',
        );
    }
    return { principal };
  };
  const turnedAway = ({ retryAfter, address }: { retryAfter: number; address: string }) => ({
    message: `too many wrong tokens from ${address}; try again in ${retryAfter} s`,
    extra: {
      retryAfter,
      hint: 'check the token (kelsingra connect --token <secret>, or KELSINGRA_TOKEN) before trying again',
    },
    headers: { 'retry-after': String(retryAfter) },
  });

  const server = http.createServer({ headersTimeout: 10_000, requestTimeout: 30_000 }, (req, res) => {
    const url = new URL(req.url ?? '/', 'http://control');
    if (url.pathname === '/healthz' && deps.draining?.()) {
      // Stopping: the load balancer takes this replica out while its requests finish.
      sendJson(res, 503, { ok: false, state: 'draining', version: VERSION, store: store.health().state });
      return;
    }
    if (url.pathname === '/healthz') {
      // Degraded still answers 200: a replica without its database routes from memory, and a
      // load balancer that took it out would cut traffic that still works.
      sendJson(res, 200, { ok: true, version: VERSION, store: store.health().state });
      return;
    }
    if (url.pathname === '/metrics') {
      deps.metrics.serve().then(
        ({ contentType, body }) => {
          res.writeHead(200, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) });
          res.end(body);
        },
        (err: Error) => {
          log.error({ err }, 'collecting metrics failed');
          sendError(res, 500, 'internal', `collecting metrics failed: ${err.message}`);
        },
      );
      return;
    }
    const gateway = url.pathname === GATEWAY_PATH || url.pathname.startsWith(`${GATEWAY_PATH}/`);
    const signed = signIn(req, gateway);
    if ('retryAfter' in signed) {
      const { message, extra, headers } = turnedAway(signed);
      sendError(res, 429, 'too-many-auth-failures', message, extra, headers);
      return;
    }
    const { principal } = signed;
    if (!principal) {
      const what = gateway ? `missing or wrong ${GATEWAY_TOKEN_HEADER} header` : 'missing or wrong token';
      sendError(res, 401, 'unauthorized', what, { hint: UNAUTHORIZED_HINT });
      return;
    }
    if (gateway) {
      deps.serveGateway(req, res, principal);
      return;
    }
    serveApi(req, res, principal, url).catch((err: Error) => {
      if (err instanceof HttpError) sendError(res, err.status, err.code, err.message, err.extra);
      else if (err instanceof StoreUnavailableError) {
        log.warn({ err: err.message, path: url.pathname }, 'change refused: the store is unavailable');
        sendError(
          res,
          503,
          'store-unavailable',
          `${err.message}; intercepts already in place keep routing, but none can be created or removed until it is back`,
          { hint: 'try again in a few seconds' },
        );
      } else {
        log.error({ err }, 'control request failed');
        sendError(res, 500, 'internal', err.message);
      }
    });
  });

  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const reject = (status: number, message: string) =>
      writeRawError(socket, status, 'tunnel-refused', message);
    const url = new URL(req.url ?? '/', 'http://control');
    if (url.pathname !== TUNNEL_PATH)
      return reject(404, `no WebSocket endpoint at ${url.pathname}; the tunnel is at ${TUNNEL_PATH}`);
    const version = tunnelVersionProblem(req);
    if (version) return writeRawError(socket, 426, 'tunnel-version', version.message, { hint: version.hint });
    if (deps.draining?.())
      return reject(503, 'this server agent is shutting down; connect again to reach another replica');
    const signed = signIn(req, false);
    if ('retryAfter' in signed) {
      const { message, extra, headers } = turnedAway(signed);
      return writeRawError(socket, 429, 'too-many-auth-failures', message, extra, headers);
    }
    const { principal } = signed;
    if (!principal) return reject(401, `missing or wrong token; ${UNAUTHORIZED_HINT}`);
    const clientId = req.headers[CLIENT_ID_HEADER];
    if (typeof clientId !== 'string' || !/^[A-Za-z0-9_-]{8,64}$/.test(clientId)) {
      return reject(400, `the tunnel needs a ${CLIENT_ID_HEADER} header of 8–64 letters, digits, _ or -`);
    }
    const holderHeader = req.headers[HOLDER_HEADER];
    const holder =
      typeof holderHeader === 'string' && holderHeader
        ? holderHeader.slice(0, 120)
        : tunnelIdOf(clientKeyOf(clientId));
    const clientKey = clientKeyOf(clientId);
    if (!hub.mayReplace(clientKey, principal)) {
      return reject(409, 'a tunnel with this client id is open under another token');
    }
    // Counted in the same turn as accept, whose handshake completes synchronously: tunnels
    // opened at once cannot all slip under the limit.
    const admit = () => {
      const overLimit = hub.overLimit(clientKey, principal);
      if (!overLimit) return hub.accept(req, socket, head, principal, clientId, holder);
      log.warn({ tokenName: principal.name, holder }, 'tunnel refused: the token holds its limit of tunnels');
      writeRawError(socket, 429, 'too-many-tunnels', overLimit, {
        hint: 'stop kelsingra intercepts this token runs elsewhere (each holds one tunnel), or have the operator raise maxTunnelsPerToken',
      });
    };
    // The same check against tunnels open on other replicas.
    store.findTunnel(clientKey).then(
      (elsewhere) => {
        if (elsewhere && elsewhere.tokenName !== principal.name)
          reject(409, 'a tunnel with this client id is open under another token');
        else admit();
      },
      // Without the database the check cannot be made; the replica's own tunnels were checked above.
      (err: Error) => {
        if (!(err instanceof StoreUnavailableError)) log.error({ err }, 'looking up the tunnel failed');
        admit();
      },
    );
  });
  return server;
}
