/**
 * The control port: health, status, the intercepts REST API and the tunnel endpoint.
 * Everything except /healthz needs a bearer token; a token limited to tenants only sees
 * and touches intercepts of those tenants.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { z } from 'zod';
import { HttpError } from '../../src/shared/error-codes.js';
import { sendError, writeRawError } from '../../src/shared/http/error-response.js';
import {
  CLIENT_ID_HEADER,
  type CreatedIntercept,
  GATEWAY_PATH,
  GATEWAY_TOKEN_HEADER,
  HOLDER_HEADER,
  type InterceptView,
  type ServerInfo,
  TUNNEL_PATH,
} from '../../src/shared/protocol.js';
import { VERSION } from '../../src/shared/version.js';
import { type Actor, type AuditLog, actorOf, interceptField } from '../auth/audit-log.js';
import type { Principal, TokenAuthority } from '../auth/auth.js';
import type { AuthFailureLimiter } from '../auth/auth-limiter.js';
import { topicName } from '../config/config.js';
import type { ClientAddresses } from '../data-plane/client-address.js';
import type { PassThroughProxy, UpstreamTarget } from '../data-plane/pass-through.js';
import { GatewayError, type GatewaySync, type TraefikDriver } from '../gateway-sync/index.js';
import { ForwardRefused } from '../kafka/forward-refused.js';
import type { KafkaAgent } from '../kafka/kafka-agent.js';
import type { EventBus } from '../observability/event-bus.js';
import type { ServerMetrics } from '../observability/metrics.js';
import type { Route } from '../routing/route-table.js';
import type { RouteTargetPolicy } from '../routing/route-targets.js';
import type { ServiceResolver } from '../routing/service-resolver.js';
import {
  clientKeyOf,
  type Intercept,
  type InterceptStore,
  StoreUnavailableError,
} from '../store/intercept-store.js';
import type { LapsedLeases } from '../store/lapsed-leases.js';
import { type TunnelHub, tunnelIdOf, tunnelVersionProblem } from '../tunnel/tunnel-hub.js';
import { parseBody, sendJson, tenantId } from './api-body.js';
import { type EventStreamSource, serveEvents } from './event-stream.js';
import { endReason, endRefusal } from './intercept-access.js';
import { createRouteApi, sendUnknownService } from './route-api.js';

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

const createBody = z
  .object({
    service: z.string().min(1),
    tenant: tenantId,
    clientId: z.string().min(1),
    /**
     * The id this client held before its lease lapsed: kept when nobody has it now, so logs,
     * scripts and `leave <id>` keep working across a laptop's sleep.
     */
    previousId: z
      .string()
      .regex(/^icp_[0-9a-f]{12}$/)
      .optional(),
    localPort: z.number().int().min(1).max(65535),
    /** Present when the developer takes Kafka messages too; no topics means every topic of the service. */
    kafka: z
      .object({ topics: z.array(z.string().min(1)).optional() })
      .strict()
      .optional(),
  })
  .strict();

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

export function interceptView(i: Intercept, connected: boolean): InterceptView {
  return {
    id: i.id,
    service: i.service,
    tenant: i.tenant,
    holder: i.holder,
    tunnelId: tunnelIdOf(i.clientKey),
    localPort: i.localPort,
    createdAt: new Date(i.createdAt).toISOString(),
    expiresAt: new Date(i.expiresAt).toISOString(),
    connected,
    replica: i.replicaId,
    kafkaTopics: i.kafkaTopics,
  };
}

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
  /** Connected here, or through a replica that is alive (it clears replicaId when the tunnel drops). */
  const connected = (i: Intercept) =>
    hub.get(i.clientKey) !== undefined ||
    (i.replicaId !== '' && i.replicaId !== replicaId && store.peer(i.replicaId) !== undefined);
  const view = (i: Intercept): InterceptView => {
    const v = interceptView(i, connected(i));
    const previewUrl = resolver.preview.urlFor(i.service, i.tenant);
    return previewUrl ? { ...v, previewUrl } : v;
  };
  const visible = (p: Principal) => store.list().filter((i) => p.canUseTenant(i.tenant));
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

  const refusalOf = (p: Principal, i: Intercept) => endRefusal(p, i, auth.named(i.tokenName));
  const end = async (req: IncomingMessage, p: Principal, intercepts: Intercept[]) => {
    for (const i of intercepts) {
      const ended = await store.delete(i.id);
      // Gone already (it lapsed, or another call ended it): not this caller's doing.
      if (ended)
        audit.record({
          action: 'intercept.end',
          outcome: 'ended',
          reason: endReason(p, i),
          actor: actor(req, p),
          intercept: interceptField(ended),
        });
    }
  };
  const refuseEnd = (req: IncomingMessage, res: ServerResponse, p: Principal, refused: Intercept[]) => {
    const [first, ...more] = refused as [Intercept, ...Intercept[]];
    const refusal = refusalOf(p, first);
    for (const i of refused)
      audit.record({
        action: 'intercept.end',
        outcome: 'refused',
        reason: 'held-by-another-token',
        actor: actor(req, p),
        intercept: interceptField(i),
      });
    sendError(
      res,
      403,
      'intercept-forbidden',
      `${refusal?.message}${more.length ? ` (and ${more.length} more held with other tokens)` : ''}; nothing was ended`,
      { hint: refusal?.hint, holder: first.holder, intercept: first.id },
    );
  };

  /** The REST API, for a caller whose token checked out. */
  const serveApi = async (req: IncomingMessage, res: ServerResponse, principal: Principal, url: URL) => {
    const { pathname } = url;
    if (pathname === '/status' && req.method === 'GET') {
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
      return;
    }
    if (pathname === '/v1/info' && req.method === 'GET') {
      const info: ServerInfo = {
        tenantHeader: deps.tenantHeader,
        baggageKey: deps.baggageKey,
        previewUrl: deps.previewUrl,
        services: resolver.names,
      };
      sendJson(res, 200, info);
      return;
    }
    if (pathname === '/v1/traefik/dynamic' && req.method === 'GET') {
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
      return;
    }
    if (await routeApi.handle(req, res, principal, url)) return;
    if (pathname === '/v1/events' && req.method === 'GET') {
      serveEvents(req, res, url, principal, events);
      return;
    }
    if (pathname === '/v1/kafka/forward' && req.method === 'POST') {
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
      return;
    }
    if (pathname === '/v1/intercepts' && req.method === 'GET') {
      sendJson(res, 200, visible(principal).map(view));
      return;
    }
    if (pathname === '/v1/intercepts' && req.method === 'POST') {
      const body = await parseBody(req, res, createBody, 'intercept request');
      if (!body) return;
      const { service, tenant, clientId, previousId, localPort, kafka } = body;
      if (!resolver.get(service)) {
        sendUnknownService(res, resolver, service);
        return;
      }
      let kafkaTopics: string[] = [];
      if (kafka) {
        const offered = deps.kafkaTopicsOf(service);
        kafkaTopics = kafka.topics ?? offered;
        const unknown = kafkaTopics.filter((t) => !offered.includes(t));
        if (offered.length === 0 || unknown.length > 0) {
          sendError(
            res,
            400,
            'unknown-topic',
            offered.length === 0
              ? `no Kafka topics are configured for ${service} on this server agent`
              : `${unknown.join(', ')} ${unknown.length === 1 ? 'is' : 'are'} not configured for ${service}; its topics: ${offered.join(', ')}`,
            { topics: offered },
          );
          return;
        }
      }
      const what = { service, tenant, localPort };
      if (!principal.canUseTenant(tenant)) {
        audit.record({
          action: 'intercept.create',
          outcome: 'refused',
          reason: 'tenant-forbidden',
          actor: actor(req, principal),
          intercept: what,
        });
        sendError(
          res,
          403,
          'tenant-forbidden',
          `token "${principal.name}" may not intercept tenant "${tenant}"`,
          {
            hint: `its tenants: ${principal.tenants.join(', ')}; ask the platform team for a token that covers ${tenant}`,
          },
        );
        return;
      }
      const clientKey = clientKeyOf(clientId);
      const local = hub.get(clientKey);
      const here = local && { replicaId, holder: local.holder, tokenName: local.principal.name };
      // Behind a load balancer the tunnel may be open on another replica: the database knows where.
      // A draining replica asks it first: its own tunnels are moving away, and an intercept
      // re-asserted here must follow the client's new tunnel, not come back to the old one.
      const tunnel = here && !deps.draining?.() ? here : ((await store.findTunnel(clientKey)) ?? here);
      if (!tunnel) {
        sendError(
          res,
          409,
          'no-tunnel',
          'this client has no open tunnel; connect the tunnel before creating intercepts',
        );
        return;
      }
      if (tunnel.tokenName !== principal.name) {
        audit.record({
          action: 'intercept.create',
          outcome: 'refused',
          reason: 'tunnel-forbidden',
          actor: actor(req, principal),
          intercept: what,
        });
        sendError(res, 403, 'tunnel-forbidden', 'that tunnel was opened with another token');
        return;
      }
      // A lapsed lease someone else held is taken over; the trail says whose it was.
      const before = store.find(service, tenant);
      const result = await store.create({
        ...(previousId ? { id: previousId } : {}),
        service,
        tenant,
        clientKey,
        localPort,
        kafkaTopics,
        holder: tunnel.holder,
        tokenName: principal.name,
        replicaId: tunnel.replicaId,
      });
      if (!result.ok) {
        audit.record({
          action: 'intercept.create',
          outcome: 'conflict',
          actor: { ...actor(req, principal), holder: tunnel.holder },
          intercept: what,
          heldBy: interceptField(result.holder),
        });
        sendError(
          res,
          409,
          'conflict',
          `${service} for tenant ${tenant} is already intercepted by ${result.holder.holder} (intercept ${result.holder.id}, expires ${new Date(result.holder.expiresAt).toISOString()})`,
          {
            holder: result.holder.holder,
            intercept: result.holder.id,
            expiresAt: new Date(result.holder.expiresAt).toISOString(),
          },
        );
        return;
      }
      const replaced = before && before.id !== result.intercept.id ? interceptField(before) : undefined;
      audit.record({
        action: 'intercept.create',
        outcome: result.renewed ? 'renewed' : 'created',
        actor: { ...actor(req, principal), holder: tunnel.holder },
        intercept: interceptField(result.intercept),
        ...(replaced ? { replaced } : {}),
      });
      if (!result.renewed) {
        log.info(
          { intercept: result.intercept.id, service, tenant, holder: tunnel.holder },
          'intercept created',
        );
      }
      // Live means the gateway has it: answered only once the driver confirmed the rule. A
      // renewal (a client re-asserting what it holds) was confirmed when it was created.
      if (deps.gateway && !result.renewed) {
        try {
          await deps.gateway.confirmed(service, tenant);
        } catch (err) {
          if (!(err instanceof GatewayError)) throw err;
          const ended = await store.delete(result.intercept.id);
          if (ended)
            audit.record({
              action: 'intercept.end',
              outcome: 'ended',
              reason: 'gateway-unconfirmed',
              actor: { system: true },
              intercept: interceptField(ended),
            });
          log.warn(
            { intercept: result.intercept.id, service, tenant, err: err.message },
            'intercept ended: the gateway did not confirm it',
          );
          sendError(res, 503, 'gateway-unconfirmed', `${err.message}; the intercept was not made`, {
            hint: 'the platform team can see why in the server agent log and in /status (gateway); try again later',
          });
          return;
        }
      }
      const lapse = result.renewed ? undefined : deps.lapses.resumed(result.intercept);
      const answer: CreatedIntercept = { ...view(result.intercept), ...(lapse ? { lapse } : {}) };
      sendJson(res, result.renewed ? 200 : 201, answer);
      return;
    }
    if (pathname === '/v1/intercepts' && req.method === 'DELETE') {
      const service = url.searchParams.get('service');
      const tenant = url.searchParams.get('tenant');
      const holder = url.searchParams.get('holder');
      if (!service && !tenant && !holder) {
        sendError(res, 400, 'bad-request', 'say which intercepts to remove: ?service=&tenant=, or ?holder=');
        return;
      }
      const matched = visible(principal).filter(
        (i) =>
          (!service || i.service === service) &&
          (!tenant || i.tenant === tenant) &&
          (!holder || i.holder === holder),
      );
      const refused = matched.filter((i) => refusalOf(principal, i));
      // `?holder=` is how `leave --all` ends the caller's own: anyone may call themselves by
      // any holder name, so for a developer it means the ones its token made. Anything named
      // more precisely that it may not end is refused, whole.
      if (refused.length && !holder) {
        refuseEnd(req, res, principal, refused);
        return;
      }
      const removed = matched.filter((i) => !refused.includes(i));
      await end(req, principal, removed);
      if (removed.length) log.info({ intercepts: removed.map((i) => i.id) }, 'intercepts removed');
      sendJson(res, 200, { removed: removed.map((i) => interceptView(i, false)) });
      return;
    }
    const byId = /^\/v1\/intercepts\/([^/]+)$/.exec(pathname);
    if (byId && (req.method === 'DELETE' || req.method === 'GET')) {
      let id = byId[1] as string;
      try {
        id = decodeURIComponent(id);
      } catch {
        // A malformed escape cannot name an intercept; looked up as is, it finds none (404).
      }
      // Another replica may have made it a moment ago: ask the database before saying 404.
      const intercept = await store.lookup(id);
      if (!intercept || !principal.canUseTenant(intercept.tenant)) {
        sendError(res, 404, 'unknown-intercept', `no intercept ${byId[1]}`);
        return;
      }
      if (req.method === 'DELETE') {
        if (refusalOf(principal, intercept)) {
          refuseEnd(req, res, principal, [intercept]);
          return;
        }
        await end(req, principal, [intercept]);
        log.info({ intercept: intercept.id }, 'intercept removed');
        sendJson(res, 200, { removed: [interceptView(intercept, false)] });
      } else {
        sendJson(res, 200, view(intercept));
      }
      return;
    }
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
