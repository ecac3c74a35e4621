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
  type RouteView,
  type ServerInfo,
  TUNNEL_PATH,
} from '../src/protocol.js';
import { VERSION } from '../src/version.js';
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
import type { Route } from './route-table.js';
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
    tenant: z.string().min(1).max(200),
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

const targetUrl = z
  .string()
  .url('must be a URL such as http://billing-v2:8080')
  .refine((u) => /^https?:\/\//.test(u), 'must start with http:// or https://')
  .transform((u) => new URL(u).href);

const routeBody = z
  .object({
    service: z.string().min(1),
    tenants: z.array(z.string().min(1).max(200)).min(1, 'name at least one tenant').max(100_000),
    targets: z
      .array(targetUrl)
      .min(1, 'name at least one target URL')
      .max(16)
      .transform((t) => [...new Set(t)]),
    /** Replace the route's tenant list instead of adding to it. */
    replace: z.boolean().default(false),
  })
  .strict();

const MAX_BODY = 64 * 1024;
/** A route for a hundred thousand tenants is a few megabytes of JSON. */
const MAX_ROUTE_BODY = 8 * 1024 * 1024;
/** Forwarded Kafka batches carry message values. */
const MAX_FORWARD_BODY = 8 * 1024 * 1024;
const UNAUTHORIZED_HINT =
  'check the token: kelsingra connect --server <url> --token <secret>, or set KELSINGRA_TOKEN';

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

async function readJson(req: IncomingMessage, max = MAX_BODY): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > max) throw Object.assign(new Error(`request body over ${max} bytes`), { status: 413 });
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
  } catch {
    throw Object.assign(new Error('request body is not valid JSON'), { status: 400 });
  }
}

/** The request's JSON body checked against `schema`, or undefined once a 400 naming the bad field is sent. */
async function parseBody<T>(
  req: IncomingMessage,
  res: ServerResponse,
  schema: z.ZodType<T>,
  what: string,
  max = MAX_BODY,
): Promise<T | undefined> {
  const parsed = schema.safeParse(await readJson(req, max));
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  sendError(
    res,
    400,
    'bad-request',
    `invalid ${what}: ${issue?.path.join('.') || 'body'}: ${issue?.message}`,
  );
  return undefined;
}

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

export function routeView(r: Route, tenants: string[] = r.tenants): RouteView {
  return {
    id: r.id,
    service: r.service,
    tenants,
    targets: r.targets,
    createdBy: r.tokenName,
    createdAt: new Date(r.createdAt).toISOString(),
    updatedAt: new Date(r.updatedAt).toISOString(),
  };
}

export function createControlPlane(deps: ControlPlaneDeps): http.Server {
  const { auth, store, hub, router, passThrough, bus, log } = deps;
  const { serverId } = deps;
  /** Connected here, or through a replica that is alive (it clears replicaId when the tunnel drops). */
  const connected = (i: Intercept) =>
    hub.get(i.clientKey) !== undefined ||
    (i.replicaId !== '' && i.replicaId !== serverId && store.peer(i.replicaId) !== undefined);
  const view = (i: Intercept): InterceptView => {
    const v = interceptView(i, connected(i));
    const previewUrl = router.preview.urlFor(i.service, i.tenant);
    return previewUrl ? { ...v, previewUrl } : v;
  };
  /** A tenant-limited token sees the routes naming its tenants, and only its tenants in them. */
  const routeFor = (p: Principal, r: Route): RouteView | undefined => {
    if (p.unrestricted) return routeView(r);
    const tenants = r.tenants.filter((t) => p.canUseTenant(t));
    return tenants.length ? routeView(r, tenants) : undefined;
  };
  const forbiddenTenants = (p: Principal, tenants: string[]) => tenants.filter((t) => !p.canUseTenant(t));
  const unknownService = (res: ServerResponse, service: string) =>
    sendError(
      res,
      404,
      'unknown-service',
      `unknown service "${service}"; known services: ${router.names.join(', ')}`,
      {
        services: router.names,
      },
    );
  const tenantsParam = (url: URL) =>
    url.searchParams
      .get('tenants')
      ?.split(',')
      .map((t) => t.trim())
      .filter(Boolean);

  /** Takes `tenants` (every tenant, when undefined) out of `matched`; routes left empty are deleted. */
  const removeRoutes = async (
    res: ServerResponse,
    principal: Principal,
    matched: Route[],
    tenants: string[] | undefined,
  ) => {
    const forbidden = forbiddenTenants(principal, tenants ?? matched.flatMap((r) => r.tenants));
    if (forbidden.length) {
      sendError(
        res,
        403,
        'tenant-forbidden',
        `token "${principal.name}" may not change the routes of tenant${forbidden.length > 1 ? 's' : ''} ${forbidden.slice(0, 5).join(', ')}`,
        { hint: 'name your own tenants with --tenants' },
      );
      return;
    }
    const removed: RouteView[] = [];
    const updated: RouteView[] = [];
    for (const route of matched) {
      const result = await store.unroute(route.id, tenants);
      for (const r of result.removed) removed.push(routeFor(principal, r) ?? routeView(r, []));
      for (const r of result.updated) {
        const v = routeFor(principal, r);
        if (v) updated.push(v);
      }
    }
    if (removed.length || updated.length)
      log.info({ removed: removed.map((r) => r.id), updated: updated.map((r) => r.id) }, 'routes removed');
    sendJson(res, 200, { removed, updated });
  };
  const visible = (p: Principal) => store.list().filter((i) => p.canUseTenant(i.tenant));
  const services = (): UpstreamTarget[] => [
    ...router.names.map((n) => router.get(n)).filter((s) => s !== undefined),
    ...store.listRoutes().map(deps.routeTarget),
  ];
  const events: EventStreamSource = {
    bus,
    snapshot: (p) => ({ intercepts: visible(p).map(view), upstreams: passThrough.upstreams(services()) }),
    upstreams: () => ({ type: 'upstreams', upstreams: passThrough.upstreams(services()), at: Date.now() }),
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
        upstreams: passThrough.upstreams(services()),
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
    if (pathname === '/v1/routes' && req.method === 'GET') {
      const service = url.searchParams.get('service');
      const views = store
        .listRoutes()
        .filter((r) => !service || r.service === service)
        .map((r) => routeFor(principal, r))
        .filter((v) => v !== undefined)
        .sort((a, b) => a.service.localeCompare(b.service) || a.id.localeCompare(b.id));
      sendJson(res, 200, views);
      return;
    }
    if (pathname === '/v1/routes' && req.method === 'PUT') {
      const body = await parseBody(req, res, routeBody, 'route', MAX_ROUTE_BODY);
      if (!body) return;
      if (!router.get(body.service)) return unknownService(res, body.service);
      const forbidden = forbiddenTenants(principal, body.tenants);
      const sameTargets = [...body.targets].sort().join(' ');
      const existing = store
        .listRoutes()
        .find((r) => r.service === body.service && [...r.targets].sort().join(' ') === sameTargets);
      const wanted = new Set(body.tenants);
      // Replacing a route's tenant list drops tenants: dropping those this token cannot use is not its call.
      const dropped =
        existing && body.replace
          ? forbiddenTenants(
              principal,
              existing.tenants.filter((t) => !wanted.has(t)),
            )
          : [];
      if (forbidden.length || dropped.length) {
        sendError(
          res,
          403,
          'tenant-forbidden',
          forbidden.length
            ? `token "${principal.name}" may not route tenant${forbidden.length > 1 ? 's' : ''} ${forbidden.slice(0, 5).join(', ')}`
            : `route ${existing?.id} also names tenants token "${principal.name}" may not change; keep them in --tenants`,
        );
        return;
      }
      const result = await store.setRoute({ ...body, tokenName: principal.name });
      log.info(
        {
          route: result.route.id,
          service: body.service,
          tenants: body.tenants.length,
          targets: body.targets,
          moved: result.moved.length,
        },
        result.created ? 'route created' : 'route updated',
      );
      sendJson(res, result.created ? 201 : 200, {
        route: routeView(result.route),
        created: result.created,
        moved: result.moved,
        removed: result.removed.map((r) => r.id),
      });
      return;
    }
    if (pathname === '/v1/routes' && req.method === 'DELETE') {
      const service = url.searchParams.get('service');
      if (!service) {
        sendError(
          res,
          400,
          'bad-request',
          'say which routes to remove: /v1/routes/<id>, or ?service=[&target=][&tenants=]',
        );
        return;
      }
      const target = url.searchParams.get('target');
      let targetHref: string | undefined;
      if (target) {
        const parsed = targetUrl.safeParse(target);
        if (!parsed.success) {
          sendError(res, 400, 'bad-request', `target ${target}: ${parsed.error.issues[0]?.message}`);
          return;
        }
        targetHref = parsed.data;
      }
      const matched = store
        .listRoutes()
        .filter((r) => r.service === service && (!targetHref || r.targets.includes(targetHref)))
        .filter((r) => routeFor(principal, r) !== undefined);
      await removeRoutes(res, principal, matched, tenantsParam(url));
      return;
    }
    const routeById = /^\/v1\/routes\/([^/]+)$/.exec(pathname);
    if (routeById && req.method === 'DELETE') {
      const route = store.getRoute(routeById[1] as string);
      if (!route || !routeFor(principal, route)) {
        sendError(res, 404, 'unknown-route', `no route ${routeById[1]}`, {
          hint: 'kelsingra route list shows the routes',
        });
        return;
      }
      await removeRoutes(res, principal, [route], tenantsParam(url));
      return;
    }
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
        sendError(
          res,
          404,
          'unknown-service',
          `unknown service "${service}"; known services: ${router.names.join(', ')}`,
          {
            services: router.names,
          },
        );
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
