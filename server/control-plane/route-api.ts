/**
 * The tenant-routes API on the control port (`GET/PUT/DELETE /v1/routes`, `DELETE
 * /v1/routes/<id>`): who may route which tenants where. A tenant-limited token sees and
 * changes only its own tenants in routes, and sends only to targets the server allows.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { z } from 'zod';
import { sendError } from '../../src/shared/http/error-response.js';
import type { RouteView } from '../../src/shared/protocol.js';
import { type Actor, type AuditLog, routeField, tenantsField } from '../auth/audit-log.js';
import type { Principal } from '../auth/auth.js';
import { type Route, RouteDropRefused, type SetRouteResult } from '../routing/route-table.js';
import { type RouteTargetPolicy, targetProblem } from '../routing/route-targets.js';
import type { ServiceResolver } from '../routing/service-resolver.js';
import type { InterceptStore } from '../store/intercept-store.js';
import { type Endpoint, parseBody, sendJson, tenantId } from './api-body.js';

const targetUrl = z
  .string()
  .superRefine((u, ctx) => {
    const problem = targetProblem(u);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  })
  .transform((u) => new URL(u).href);

const routeBody = z
  .object({
    service: z.string().min(1),
    tenants: z.array(tenantId).min(1, 'name at least one tenant').max(100_000),
    targets: z
      .array(targetUrl)
      .min(1, 'name at least one target URL')
      .max(16)
      .transform((t) => [...new Set(t)]),
    /** Replace the route's tenant list instead of adding to it. */
    replace: z.boolean().default(false),
  })
  .strict();

/** A route for a hundred thousand tenants is a few megabytes of JSON. */
const MAX_ROUTE_BODY = 8 * 1024 * 1024;

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

export interface RouteApiDeps {
  store: InterceptStore;
  resolver: ServiceResolver;
  policy: RouteTargetPolicy;
  log: Logger;
  audit: AuditLog;
  /** The caller as the audit trail names it. */
  actor: (req: IncomingMessage, principal: Principal) => Actor;
}

export interface RouteApi {
  /** The route as this token may see it: only its tenants; undefined when it names none of them. */
  routeFor(p: Principal, r: Route): RouteView | undefined;
  /** Its endpoints of fixed path, for the control port's table. */
  endpoints: Record<string, Endpoint>;
  /** Serves `DELETE /v1/routes/<id>`; false for any other request. */
  handle(req: IncomingMessage, res: ServerResponse, principal: Principal, url: URL): Promise<boolean>;
}

/** 404 for a service the server does not know, listing those it does. */
export function sendUnknownService(res: ServerResponse, resolver: ServiceResolver, service: string): void {
  sendError(
    res,
    404,
    'unknown-service',
    `unknown service "${service}"; known services: ${resolver.names.join(', ')}`,
    {
      services: resolver.names,
    },
  );
}

export function createRouteApi(deps: RouteApiDeps): RouteApi {
  const { store, resolver, log, audit } = deps;
  /** A tenant-limited token sees the routes naming its tenants, and only its tenants in them. */
  const routeFor = (p: Principal, r: Route): RouteView | undefined => {
    if (p.unrestricted) return routeView(r);
    const tenants = r.tenants.filter((t) => p.canUseTenant(t));
    return tenants.length ? routeView(r, tenants) : undefined;
  };
  const forbiddenTenants = (p: Principal, tenants: string[]) => tenants.filter((t) => !p.canUseTenant(t));
  const tenantsParam = (url: URL) =>
    url.searchParams
      .get('tenants')
      ?.split(',')
      .map((t) => t.trim())
      .filter(Boolean);

  /** Takes `tenants` (every tenant, when undefined) out of `matched`; routes left empty are deleted. */
  const removeRoutes = async (
    req: IncomingMessage,
    res: ServerResponse,
    principal: Principal,
    matched: Route[],
    tenants: string[] | undefined,
  ) => {
    const forbidden = forbiddenTenants(principal, tenants ?? matched.flatMap((r) => r.tenants));
    if (forbidden.length) {
      audit.record({
        action: 'route.delete',
        outcome: 'refused',
        reason: 'tenant-forbidden',
        actor: deps.actor(req, principal),
        routes: matched.map((r) => r.id),
        ...(tenants ? tenantsField(tenants) : {}),
        forbidden: forbidden.slice(0, 100),
      });
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
    const trail: { deleted: unknown[]; updated: unknown[] } = { deleted: [], updated: [] };
    for (const route of matched) {
      const result = await store.unroute(route.id, tenants);
      for (const r of result.removed) {
        removed.push(routeFor(principal, r) ?? routeView(r, []));
        trail.deleted.push(routeField(r));
      }
      for (const r of result.updated) {
        const v = routeFor(principal, r);
        if (v) updated.push(v);
        // What was taken out of it: the tenants named, as far as it had them.
        trail.updated.push(
          routeField(
            r,
            tenants?.filter((t) => route.tenants.includes(t)),
          ),
        );
      }
    }
    if (trail.deleted.length || trail.updated.length)
      audit.record({
        action: 'route.delete',
        outcome: trail.deleted.length ? 'deleted' : 'updated',
        actor: deps.actor(req, principal),
        deleted: trail.deleted,
        tenantsRemovedFrom: trail.updated,
      });
    if (removed.length || updated.length)
      log.info({ removed: removed.map((r) => r.id), updated: updated.map((r) => r.id) }, 'routes removed');
    sendJson(res, 200, { removed, updated });
  };

  const list: Endpoint = (_req, res, principal, url) => {
    const service = url.searchParams.get('service');
    const views = store
      .listRoutes()
      .filter((r) => !service || r.service === service)
      .map((r) => routeFor(principal, r))
      .filter((v) => v !== undefined)
      .sort((a, b) => a.service.localeCompare(b.service) || a.id.localeCompare(b.id));
    sendJson(res, 200, views);
  };

  const set: Endpoint = async (req, res, principal) => {
    const body = await parseBody(req, res, routeBody, 'route', MAX_ROUTE_BODY);
    if (!body) return;
    if (!resolver.get(body.service)) {
      sendUnknownService(res, resolver, body.service);
      return;
    }
    const asked = {
      service: body.service,
      targets: body.targets,
      replace: body.replace,
      ...tenantsField(body.tenants),
    };
    const refusal = deps.policy.refusal(principal, body.targets);
    if (refusal) {
      audit.record({
        action: 'route.set',
        outcome: 'refused',
        reason: 'route-target-forbidden',
        actor: deps.actor(req, principal),
        route: asked,
      });
      sendError(res, 403, 'route-target-forbidden', refusal, {
        hint: 'route to a target the server allows (routeTargets in its config)',
      });
      return;
    }
    const forbidden = forbiddenTenants(principal, body.tenants);
    const refuse = (tenants: string[], message: string) => {
      audit.record({
        action: 'route.set',
        outcome: 'refused',
        reason: 'tenant-forbidden',
        actor: deps.actor(req, principal),
        route: asked,
        forbidden: tenants.slice(0, 100),
      });
      sendError(res, 403, 'tenant-forbidden', message);
    };
    if (forbidden.length) {
      refuse(
        forbidden,
        `token "${principal.name}" may not route tenant${forbidden.length > 1 ? 's' : ''} ${forbidden.slice(0, 5).join(', ')}`,
      );
      return;
    }
    let result: SetRouteResult;
    try {
      // Replacing a route's tenant list drops tenants: dropping those this token cannot use is not its call.
      result = await store.setRoute({
        ...body,
        tokenName: principal.name,
        mayDrop: (tenant) => principal.canUseTenant(tenant),
      });
    } catch (err) {
      if (!(err instanceof RouteDropRefused)) throw err;
      refuse(
        err.tenants,
        `route ${err.routeId} also names tenants token "${principal.name}" may not change; keep them in --tenants`,
      );
      return;
    }
    audit.record({
      action: 'route.set',
      outcome: result.created ? 'created' : 'updated',
      actor: deps.actor(req, principal),
      // The route as the change left it, and what the caller named.
      route: routeField(result.route),
      requested: { ...tenantsField(body.tenants), replace: body.replace },
      ...(result.moved.length ? { moved: result.moved.slice(0, 1000), movedCount: result.moved.length } : {}),
      ...(result.removed.length ? { emptiedRoutes: result.removed.map((r) => r.id) } : {}),
    });
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
      route: routeFor(principal, result.route),
      created: result.created,
      moved: result.moved,
      removed: result.removed.map((r) => r.id),
    });
  };

  const removeWhere: Endpoint = async (req, res, principal, url) => {
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
    await removeRoutes(req, res, principal, matched, tenantsParam(url));
  };

  const handle = async (
    req: IncomingMessage,
    res: ServerResponse,
    principal: Principal,
    url: URL,
  ): Promise<boolean> => {
    const routeById = /^\/v1\/routes\/([^/]+)$/.exec(url.pathname);
    if (routeById && req.method === 'DELETE') {
      const route = store.getRoute(routeById[1] as string);
      if (!route || !routeFor(principal, route)) {
        sendError(res, 404, 'unknown-route', `no route ${routeById[1]}`, {
          hint: 'kelsingra route list shows the routes',
        });
        return true;
      }
      await removeRoutes(req, res, principal, [route], tenantsParam(url));
      return true;
    }
    return false;
  };
  return {
    routeFor,
    endpoints: { 'GET /v1/routes': list, 'PUT /v1/routes': set, 'DELETE /v1/routes': removeWhere },
    handle,
  };
}
