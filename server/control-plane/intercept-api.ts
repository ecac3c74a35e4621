/**
 * The intercepts API on the control port (`GET/POST/DELETE /v1/intercepts`, `GET/DELETE
 * /v1/intercepts/<id>`) and the rules for making one: the service and its Kafka topics must
 * exist, the token must cover the tenant and own the tunnel, one holder per (service, tenant),
 * and with gateway sync the answer waits until the gateway has the rule. A tenant-limited
 * token sees and ends only intercepts of its tenants.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { z } from 'zod';
import { sendError } from '../../src/shared/http/error-response.js';
import type { CreatedIntercept, InterceptView } from '../../src/shared/protocol.js';
import { type Actor, type AuditLog, interceptField } from '../auth/audit-log.js';
import type { Principal, TokenAuthority } from '../auth/auth.js';
import { GatewayError, type GatewaySync } from '../gateway-sync/index.js';
import type { ServiceResolver } from '../routing/service-resolver.js';
import { clientKeyOf, type Intercept, type InterceptStore } from '../store/intercept-store.js';
import type { LapsedLeases } from '../store/lapsed-leases.js';
import { type TunnelHub, tunnelIdOf } from '../tunnel/tunnel-hub.js';
import { type Endpoint, parseBody, sendJson, tenantId } from './api-body.js';
import { endReason, endRefusal } from './intercept-access.js';
import { sendUnknownService } from './route-api.js';

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

export interface InterceptApiDeps {
  auth: TokenAuthority;
  store: InterceptStore;
  hub: TunnelHub;
  resolver: ServiceResolver;
  replicaId: string;
  lapses: LapsedLeases;
  log: Logger;
  audit: AuditLog;
  /** The caller, for the audit trail. */
  actor: (req: IncomingMessage, p: Principal) => Actor;
  kafkaTopicsOf: (service: string) => string[];
  draining?: () => boolean;
  gateway?: GatewaySync;
}

export interface InterceptApi {
  /** Its endpoints of fixed path, for the control port's table. */
  endpoints: Record<string, Endpoint>;
  /** Answers `/v1/intercepts/<id>`; false leaves any other request to the next. */
  handle(req: IncomingMessage, res: ServerResponse, principal: Principal, url: URL): Promise<boolean>;
  /** An intercept as the API shows it: connected or not, with its preview URL. */
  view(i: Intercept): InterceptView;
  /** The intercepts this token may see. */
  visible(p: Principal): Intercept[];
}

export function createInterceptApi(deps: InterceptApiDeps): InterceptApi {
  const { auth, store, hub, resolver, replicaId, log, audit, actor } = deps;
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

  const create = async (req: IncomingMessage, res: ServerResponse, principal: Principal): Promise<void> => {
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
  };

  const endMatching = async (
    req: IncomingMessage,
    res: ServerResponse,
    principal: Principal,
    url: URL,
  ): Promise<void> => {
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
  };

  const byId = async (
    req: IncomingMessage,
    res: ServerResponse,
    principal: Principal,
    raw: string,
  ): Promise<void> => {
    let id = raw;
    try {
      id = decodeURIComponent(id);
    } catch {
      // A malformed escape cannot name an intercept; looked up as is, it finds none (404).
    }
    // Another replica may have made it a moment ago: ask the database before saying 404.
    const intercept = await store.lookup(id);
    if (!intercept || !principal.canUseTenant(intercept.tenant)) {
      sendError(res, 404, 'unknown-intercept', `no intercept ${raw}`);
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
  };

  return {
    view,
    visible,
    endpoints: {
      'GET /v1/intercepts': (_req, res, principal) => sendJson(res, 200, visible(principal).map(view)),
      'POST /v1/intercepts': create,
      'DELETE /v1/intercepts': endMatching,
    },
    async handle(req, res, principal, url) {
      const one = /^\/v1\/intercepts\/([^/]+)$/.exec(url.pathname);
      if (!one || (req.method !== 'DELETE' && req.method !== 'GET')) return false;
      await byId(req, res, principal, one[1] as string);
      return true;
    },
  };
}
