/**
 * The control port: health, status, the intercepts REST API and the tunnel endpoint.
 * Everything except /healthz needs a bearer token; a token limited to tenants only sees
 * and touches intercepts of those tenants.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { z } from 'zod';
import {
  CLIENT_ID_HEADER,
  GATEWAY_PATH,
  GATEWAY_TOKEN_HEADER,
  HOLDER_HEADER,
  type InterceptView,
  type ServerInfo,
  TUNNEL_PATH,
} from '../src/protocol.js';
import { VERSION } from '../src/version.js';
import { parseBody, sendJson, tenantId } from './api-body.js';
import type { Principal, TokenAuthority } from './auth.js';
import { topicName } from './config.js';
import { sendError, writeRawError } from './error-response.js';
import type { EventBus } from './event-bus.js';
import { type EventStreamSource, serveEvents } from './event-stream.js';
import {
  clientKeyOf,
  type Intercept,
  type InterceptStore,
  StoreUnavailableError,
} from './intercept-store.js';
import { ForwardRefused, type KafkaAgent } from './kafka-agent.js';
import type { PassThrough, UpstreamTarget } from './pass-through.js';
import { createRouteApi, sendUnknownService } from './route-api.js';
import type { Route } from './route-table.js';
import type { RouteTargetPolicy } from './route-targets.js';
import type { ServiceRouter } from './routing.js';
import { type TunnelHub, tunnelIdOf } from './tunnel-hub.js';

export interface ControlPlaneDeps {
  auth: TokenAuthority;
  store: InterceptStore;
  hub: TunnelHub;
  router: ServiceRouter;
  passThrough: PassThrough;
  serverId: string;
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
  log: Logger;
  /** The configured Kafka topics a service's tenants' messages can be intercepted on. */
  kafkaTopicsOf: (service: string) => string[];
  kafka?: KafkaAgent;
}

const createBody = z
  .object({
    service: z.string().min(1),
    tenant: tenantId,
    clientId: z.string().min(1),
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
  const { auth, store, hub, router, passThrough, bus, log } = deps;
  const { serverId } = deps;
  const routeApi = createRouteApi({ store, router, policy: deps.routeTargetPolicy, log });
  /** Connected here, or through a replica that is alive (it clears replicaId when the tunnel drops). */
  const connected = (i: Intercept) =>
    hub.get(i.clientKey) !== undefined ||
    (i.replicaId !== '' && i.replicaId !== serverId && store.peer(i.replicaId) !== undefined);
  const view = (i: Intercept): InterceptView => {
    const v = interceptView(i, connected(i));
    const previewUrl = router.preview.urlFor(i.service, i.tenant);
    return previewUrl ? { ...v, previewUrl } : v;
  };
  const visible = (p: Principal) => store.list().filter((i) => p.canUseTenant(i.tenant));
  /** The services' pools, and the pools of the routes this token may see. */
  const services = (p: Principal): UpstreamTarget[] => [
    ...router.names.map((n) => router.get(n)).filter((s) => s !== undefined),
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
  };

  /** Deliveries of intercepts this token may see, like the intercepts themselves. */
  const kafkaStatusFor = async (p: Principal) => {
    const status = await deps.kafka?.status();
    if (!status) return undefined;
    const visibleIds = new Set(visible(p).map((i) => i.id));
    return { ...status, deliveries: status.deliveries.filter((d) => visibleIds.has(d.intercept)) };
  };

  const routes = async (req: IncomingMessage, res: ServerResponse, principal: Principal, url: URL) => {
    const { pathname } = url;
    if (pathname === '/status' && req.method === 'GET') {
      sendJson(res, 200, {
        serverId,
        version: VERSION,
        store: store.health(),
        kafka: await kafkaStatusFor(principal),
        tenantHeader: deps.tenantHeader,
        services: router.names.map((name) => ({ name, upstream: router.get(name)?.upstream.href })),
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
        services: router.names,
      };
      sendJson(res, 200, info);
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
      const { service, tenant, clientId, localPort, kafka } = body;
      if (!router.get(service)) {
        sendUnknownService(res, router, service);
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
      if (!principal.canUseTenant(tenant)) {
        sendError(
          res,
          403,
          'tenant-forbidden',
          `token "${principal.name}" may not intercept tenant "${tenant}"`,
        );
        return;
      }
      const clientKey = clientKeyOf(clientId);
      const local = hub.get(clientKey);
      // Behind a load balancer the tunnel may be open on another replica: the database knows where.
      const tunnel = local
        ? { replicaId: serverId, holder: local.holder, tokenName: local.principal.name }
        : await store.findTunnel(clientKey);
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
        sendError(res, 403, 'tunnel-forbidden', 'that tunnel was opened with another token');
        return;
      }
      const result = await store.create({
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
        sendError(
          res,
          409,
          'conflict',
          `${service} for tenant ${tenant} is already intercepted by ${result.holder.holder} (intercept ${result.holder.id}, expires ${new Date(result.holder.expiresAt).toISOString()})`,
          {
            holder: result.holder.holder,
            intercept: result.holder.id,
          },
        );
        return;
      }
      if (!result.renewed) {
        log.info(
          { intercept: result.intercept.id, service, tenant, holder: tunnel.holder },
          'intercept created',
        );
      }
      sendJson(res, result.renewed ? 200 : 201, view(result.intercept));
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
      const removed = visible(principal).filter(
        (i) =>
          (!service || i.service === service) &&
          (!tenant || i.tenant === tenant) &&
          (!holder || i.holder === holder),
      );
      for (const i of removed) await store.delete(i.id);
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
        await store.delete(intercept.id);
        log.info({ intercept: intercept.id }, 'intercept removed');
        sendJson(res, 200, { removed: [interceptView(intercept, false)] });
      } else {
        sendJson(res, 200, view(intercept));
      }
      return;
    }
    sendError(res, 404, 'not-found', `no such endpoint: ${req.method} ${pathname}`);
  };

  const server = http.createServer({ headersTimeout: 10_000, requestTimeout: 30_000 }, (req, res) => {
    const url = new URL(req.url ?? '/', 'http://control');
    if (url.pathname === '/healthz') {
      // Degraded still answers 200: a replica without its database routes from memory, and a
      // load balancer that took it out would cut traffic that still works.
      sendJson(res, 200, { ok: true, version: VERSION, store: store.health().state });
      return;
    }
    const gateway = url.pathname === GATEWAY_PATH || url.pathname.startsWith(`${GATEWAY_PATH}/`);
    const gatewayToken = req.headers[GATEWAY_TOKEN_HEADER];
    let principal: Principal | undefined;
    if (!gateway) principal = auth.authenticate(req.headers);
    else if (typeof gatewayToken === 'string') principal = auth.verify(gatewayToken);
    if (!principal) {
      const what = gateway ? `missing or wrong ${GATEWAY_TOKEN_HEADER} header` : 'missing or wrong token';
      sendError(res, 401, 'unauthorized', what, { hint: UNAUTHORIZED_HINT });
      return;
    }
    if (gateway) {
      deps.serveGateway(req, res, principal);
      return;
    }
    routes(req, res, principal, url).catch((err: Error & { status?: number }) => {
      if (err.status) sendError(res, err.status, 'bad-request', err.message);
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
    const principal = auth.authenticate(req.headers);
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
    // The same check against tunnels open on other replicas.
    store.findTunnel(clientKey).then(
      (elsewhere) => {
        if (elsewhere && elsewhere.tokenName !== principal.name)
          reject(409, 'a tunnel with this client id is open under another token');
        else hub.accept(req, socket, head, principal, clientId, holder);
      },
      // Without the database the check cannot be made; the replica's own tunnels were checked above.
      (err: Error) => {
        if (!(err instanceof StoreUnavailableError)) log.error({ err }, 'looking up the tunnel failed');
        hub.accept(req, socket, head, principal, clientId, holder);
      },
    );
  });
  return server;
}
