/**
 * Names shared by the server agent and the client agent. The wire protocol itself is
 * described in docs/protocol.md (frames: src/shared/tunnel-wire.ts); keep them in step.
 */
import { z } from 'zod';

/** WebSocket path of the tunnel on the control port. */
export const TUNNEL_PATH = '/v1/tunnel';

/** Set on every request Kelsingra forwards, so reverse-proxy rules can skip it and loops are caught. */
export const HOP_HEADER = 'x-kelsingra-hop';
/** Lets a caller name the service explicitly instead of relying on Host or path. */
export const SERVICE_HEADER = 'x-kelsingra-service';
/** Added to tunnelled requests so the local service (and the log) can tell which intercept served it. */
export const INTERCEPT_HEADER = 'x-kelsingra-intercept';
/** Marks responses that Kelsingra generated itself rather than relayed. */
export const ERROR_HEADER = 'x-kelsingra-error';

/**
 * On a request one replica relays to the replica holding the tunnel: the receiver's own
 * secret (from the replicas table), so outsiders cannot pose as a replica. Never forwarded further.
 */
export const RELAY_HEADER = 'x-kelsingra-relay';

/**
 * Outbound calls from a developer's machine enter the control port under this path (the
 * rest is the called path). They carry the token in their own header, so the application's
 * Authorization header passes through untouched, and the Host the local service addressed.
 */
export const GATEWAY_PATH = '/v1/gateway';
export const GATEWAY_TOKEN_HEADER = 'x-kelsingra-token';
export const GATEWAY_HOST_HEADER = 'x-kelsingra-host';

/** Sent by the client in the WebSocket upgrade. */
export const CLIENT_ID_HEADER = 'x-kelsingra-client';
export const HOLDER_HEADER = 'x-kelsingra-holder';
/** The client's Kelsingra version, so a server that cannot talk to it can say which to upgrade. */
export const VERSION_HEADER = 'x-kelsingra-version';

/**
 * Text frames on the tunnel WebSocket carry these JSON control messages (binary frames carry
 * the streams). Checked on arrival: a message of an unknown type, or one that does not fit its
 * schema, is ignored, so either side can add messages without breaking the other.
 */
const ids = z.array(z.string().max(200)).max(10_000);
export const ServerControlSchema = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('hello'),
    clientId: z.string(),
    heartbeatMs: z.number().positive(),
    leaseTtlMs: z.number().positive(),
  }),
  z.object({ type: z.literal('renewed'), ids, missing: ids }),
  z.object({ type: z.literal('intercept-ended'), id: z.string(), reason: z.string() }),
  /**
   * The server agent is stopping: open a tunnel again (through the load balancer, to another
   * replica), then close this one once its requests are done.
   */
  z.object({ type: z.literal('draining') }),
]);
export type ServerControl = z.infer<typeof ServerControlSchema>;

export const ClientControlSchema = z.object({ type: z.literal('renew'), ids });
export type ClientControl = z.infer<typeof ClientControlSchema>;

export const InterceptViewSchema = z.object({
  id: z.string(),
  service: z.string(),
  tenant: z.string(),
  holder: z.string(),
  /** Names the tunnel that holds it; derived from the client id, which stays secret. */
  tunnelId: z.string(),
  localPort: z.number(),
  createdAt: z.string(),
  expiresAt: z.string(),
  connected: z.boolean(),
  /** The server replica whose tunnel carries it ('' while disconnected). */
  replica: z.string(),
  /** Dev topics whose messages for the tenant reach the developer (empty: HTTP only). */
  kafkaTopics: z.array(z.string()),
  /** Where the intercepted key can be opened in a browser, when the server has a preview URL template. */
  previewUrl: z.string().optional(),
});
export type InterceptView = z.infer<typeof InterceptViewSchema>;

/** `GET /v1/info`: what a client agent needs to call dev as a tenant. */
export const ServerInfoSchema = z.looseObject({
  tenantHeader: z.string(),
  baggageKey: z.string(),
  /** Template with {key} and {service}, when preview URLs are configured. */
  previewUrl: z.string().optional(),
  services: z.array(z.string()),
});
export type ServerInfo = z.infer<typeof ServerInfoSchema>;

/** The server agent's intercept store, in `/status`: one process in memory, or replicas on PostgreSQL. */
export const StoreHealthSchema = z.looseObject({
  kind: z.enum(['memory', 'postgres']),
  state: z.enum(['ok', 'degraded']),
  /** Why it is degraded, and since when. */
  error: z.string().optional(),
  since: z.string().optional(),
  lastSyncAt: z.string().optional(),
  replicas: z
    .array(
      z.looseObject({
        id: z.string(),
        url: z.string(),
        heartbeatAt: z.string(),
        self: z.boolean(),
        alive: z.boolean(),
      }),
    )
    .optional(),
});
export type StoreHealth = z.infer<typeof StoreHealthSchema>;

/** One backend of a service's upstream, as the server agent sees it. */
export const UpstreamHealthSchema = z.object({
  service: z.string(),
  url: z.string(),
  /**
   * healthy: its health check passes; unhealthy: its checks fail; ejected: taken out of the
   * rotation after refused connections or a run of 5xx answers; unknown: not checked yet (it
   * takes traffic). Missing from servers before upstream pools.
   */
  state: z.enum(['healthy', 'unhealthy', 'ejected', 'unknown']).optional(),
  lastOkAt: z.string().optional(),
  lastError: z.string().optional(),
  lastErrorAt: z.string().optional(),
  lastCheckAt: z.string().optional(),
});
export type UpstreamHealth = z.infer<typeof UpstreamHealthSchema>;

/** One upgraded connection through the tunnel, as a whole (status 101 when it was upgraded). */
export const UpgradeInfoSchema = z.object({
  /** The Upgrade token: websocket, mostly. */
  protocol: z.string(),
  /** Bytes from the caller (bytesOut of the record: from the local service). */
  bytesIn: z.number(),
  /** Whose end went first: the caller's, the local service's, the tunnel's, or nobody answered in time. */
  closedBy: z.enum(['caller', 'local', 'tunnel', 'timeout']).optional(),
  /** WebSocket only: the first close frame, and which side sent it. */
  code: z.number().optional(),
  reason: z.string().optional(),
  closeFrom: z.enum(['caller', 'local']).optional(),
  /** WebSocket only: data messages each way. */
  messagesIn: z.number().optional(),
  messagesOut: z.number().optional(),
});
export type UpgradeInfo = z.infer<typeof UpgradeInfoSchema>;

/** A tunnelled request as the server agent saw it (for `logs` and `dashboard`). */
export const RequestRecordSchema = z.object({
  type: z.literal('request'),
  interceptId: z.string(),
  /** The data plane's `x-request-id` of the request (older servers send none). */
  requestId: z.string().optional(),
  service: z.string(),
  tenant: z.string(),
  holder: z.string(),
  method: z.string(),
  path: z.string(),
  status: z.number(),
  durationMs: z.number(),
  bytesOut: z.number(),
  at: z.number(),
  error: z.string().optional(),
  /** An upgraded connection (a WebSocket): the record is written when it closes. */
  upgrade: UpgradeInfoSchema.optional(),
});
export type RequestRecord = z.infer<typeof RequestRecordSchema>;

/**
 * An intercept came back under its own id after its lease had lapsed (its client was asleep,
 * stopped or cut off for longer than the lease): since `lapsedAt` the tenant's traffic went to
 * `fallback` (its tenant route, or the base service), for `fallbackMs`.
 */
const leaseLapse = {
  lapsedAt: z.number(),
  fallback: z.enum(['base', 'route']),
  fallbackMs: z.number(),
};
export const LeaseLapseSchema = z.object(leaseLapse);
export type LeaseLapse = z.infer<typeof LeaseLapseSchema>;

export const LeaseLapsedEventSchema = z.object({
  type: z.literal('intercept'),
  action: z.literal('lapsed'),
  intercept: InterceptViewSchema,
  at: z.number(),
  ...leaseLapse,
});
export type LeaseLapsedEvent = z.infer<typeof LeaseLapsedEventSchema>;

/** What `POST /v1/intercepts` answers: the intercept, and the lapse it resumed after, if any. */
export const CreatedInterceptSchema = InterceptViewSchema.extend({ lapse: LeaseLapseSchema.optional() });
export type CreatedIntercept = z.infer<typeof CreatedInterceptSchema>;

/** Events on `GET /v1/events` (server-sent events, one JSON object per `data:` line). */
const InterceptChangeSchema = z.object({
  type: z.literal('intercept'),
  action: z.enum(['created', 'ended']),
  reason: z.string().optional(),
  intercept: InterceptViewSchema,
  at: z.number(),
});
const UpstreamsEventSchema = z.object({
  type: z.literal('upstreams'),
  upstreams: z.array(UpstreamHealthSchema),
  at: z.number(),
});
export type ServerEvent =
  | RequestRecord
  | z.infer<typeof InterceptChangeSchema>
  | LeaseLapsedEvent
  | z.infer<typeof UpstreamsEventSchema>;

/** What a client reads off the stream, checked against this before anything uses it. */
export const StreamEventSchema = z.union([
  RequestRecordSchema,
  InterceptChangeSchema,
  LeaseLapsedEventSchema,
  UpstreamsEventSchema,
  z.object({
    type: z.literal('snapshot'),
    at: z.number(),
    intercepts: z.array(InterceptViewSchema),
    upstreams: z.array(UpstreamHealthSchema),
  }),
  /** Marks the end of replayed history (`?history=1`): what follows is live. */
  z.object({ type: z.literal('live'), at: z.number() }),
]);
export type StreamEvent = z.infer<typeof StreamEventSchema>;

/**
 * A tenant route (`kelsingra route set`): these tenants of the service go to these targets
 * instead of the base upstream, without a tunnel. One entry however many tenants it names;
 * a tenant is in at most one route per service. An intercept beats a route; a route beats
 * the base upstream.
 */
export const RouteViewSchema = z.looseObject({
  /** `rt_<16 hex>` (64 bits: no two routes of a big table share one), derived from the service and its targets. */
  id: z.string(),
  service: z.string(),
  tenants: z.array(z.string()),
  /** Base URLs; several make a pool. */
  targets: z.array(z.string()),
  /** Name of the token that set it. */
  createdBy: z.string(),
  createdAt: z.string(),
  updatedAt: z.string(),
});
export type RouteView = z.infer<typeof RouteViewSchema>;

/** What `PUT /v1/routes` answers. */
export const SetRouteResultSchema = z.looseObject({
  route: RouteViewSchema,
  created: z.boolean(),
  /** Tenants that were in another route of the service and now are in this one. */
  moved: z.array(z.object({ tenant: z.string(), from: z.string() })),
  /** Ids of routes the move left without tenants, deleted. */
  removed: z.array(z.string()),
});
export type SetRouteResult = z.infer<typeof SetRouteResultSchema>;

/** What `DELETE /v1/routes…` answers. */
export const RemoveRoutesResultSchema = z.looseObject({
  removed: z.array(RouteViewSchema),
  /** Routes left with fewer tenants. */
  updated: z.array(RouteViewSchema),
});
export type RemoveRoutesResult = z.infer<typeof RemoveRoutesResultSchema>;

/**
 * `GET /status`. Objects are loose: what a newer server adds passes through to `status
 * --json` instead of being dropped.
 */
export const ServerStatusSchema = z.looseObject({
  serverId: z.string(),
  version: z.string(),
  /** The caller's token (missing from servers before token roles). */
  principal: z
    .looseObject({ name: z.string(), role: z.enum(['admin', 'developer']), tenants: z.array(z.string()) })
    .optional(),
  store: StoreHealthSchema,
  /** Present when the server agent intercepts Kafka messages. */
  kafka: z
    .looseObject({
      topics: z.record(
        z.string(),
        z.looseObject({ mode: z.string(), diverted: z.number(), passed: z.number() }),
      ),
      deliveries: z.array(
        z.looseObject({ intercept: z.string(), topic: z.string(), delivered: z.number(), lag: z.number() }),
      ),
    })
    .optional(),
  tenantHeader: z.string(),
  services: z.array(z.looseObject({ name: z.string(), upstream: z.string().optional() })),
  upstreams: z.array(UpstreamHealthSchema),
  intercepts: z.array(InterceptViewSchema),
  clients: z.array(
    z.looseObject({
      tunnelId: z.string(),
      holder: z.string(),
      token: z.string(),
      connectedAt: z.string(),
      intercepts: z.array(z.string()),
    }),
  ),
});
export type ServerStatus = z.infer<typeof ServerStatusSchema>;
