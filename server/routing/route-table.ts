/**
 * Tenant routes in memory: one entry per (service, targets) naming a set of tenants, and an
 * index from (service, tenant) to its route for the data plane's per-request lookup. A tenant
 * is in at most one route per service, so a request has exactly one target.
 */
import { createHash } from 'node:crypto';

export interface Route {
  /** Derived from the service and its targets: setting the same targets again updates it. */
  id: string;
  service: string;
  tenants: string[];
  /** Base URLs; several make a pool. */
  targets: string[];
  /** Name of the token that created it (later sets by other tokens keep it). */
  tokenName: string;
  createdAt: number;
  updatedAt: number;
  /** The store's change number (PostgreSQL), so a copy can tell newer from older. */
  change: number;
}

export interface RouteInput {
  service: string;
  tenants: string[];
  targets: string[];
  tokenName: string;
  /** Replace the route's tenant list rather than add to it. */
  replace?: boolean;
  /**
   * With replace: whether the caller may take `tenant` out of the route. Asked where the
   * change is decided (inside the database's transaction), not of a copy that may be behind.
   */
  mayDrop?: (tenant: string) => boolean;
}

/** A replace would take tenants out of a route that the caller may not change. */
export class RouteDropRefused extends Error {
  override readonly name = 'RouteDropRefused';
  constructor(
    readonly routeId: string,
    readonly tenants: string[],
  ) {
    super(`route ${routeId} also names tenants this token may not change: ${tenants.slice(0, 5).join(', ')}`);
  }
}

/**
 * The tenant list a set leaves route `id` with: added to what it had, or replaced. Throws
 * RouteDropRefused when the replace would drop tenants `mayDrop` refuses.
 */
export function mergedTenants(id: string, previous: string[] | undefined, input: RouteInput): string[] {
  if (input.replace && previous && input.mayDrop) {
    const wanted = new Set(input.tenants);
    const refused = previous.filter((t) => !wanted.has(t) && !input.mayDrop?.(t));
    if (refused.length) throw new RouteDropRefused(id, refused);
  }
  return [...new Set(input.replace || !previous ? input.tenants : [...previous, ...input.tenants])];
}

export interface SetRouteResult {
  route: Route;
  created: boolean;
  /** Tenants that were in another route of the service and now are in this one. */
  moved: { tenant: string; from: string }[];
  /** Routes the move left without tenants, deleted. */
  removed: Route[];
  /** Routes the move left with fewer tenants. */
  updated: Route[];
}

/** What taking tenants out of routes did. */
export interface UnrouteResult {
  removed: Route[];
  updated: Route[];
}

export function routeIdOf(service: string, targets: string[]): string {
  const digest = createHash('sha256')
    .update([service, ...[...targets].sort()].join('\n'))
    .digest('hex');
  return `rt_${digest.slice(0, 16)}`;
}

export class RouteTable {
  private readonly byId = new Map<string, Route>();
  private readonly byService = new Map<string, Map<string, Route>>();

  /** The hot-path lookup: two map reads, no allocation. */
  find(service: string, tenant: string): Route | undefined {
    return this.byService.get(service)?.get(tenant);
  }

  get(id: string): Route | undefined {
    return this.byId.get(id);
  }

  list(): Route[] {
    return [...this.byId.values()];
  }

  get size(): number {
    return this.byId.size;
  }

  /**
   * Puts a route in (or replaces the one with its id), indexing each of its tenants. A tenant
   * indexed to another route with a newer change keeps that route: a replica can fetch an
   * older copy of a route after the newer route that took the tenant from it (PostgreSQL
   * change numbers are global, so newer is comparable across routes).
   */
  put(route: Route): void {
    this.drop(route.id);
    this.byId.set(route.id, route);
    let tenants = this.byService.get(route.service);
    if (!tenants) {
      tenants = new Map();
      this.byService.set(route.service, tenants);
    }
    for (const tenant of route.tenants) {
      const held = tenants.get(tenant);
      if (!held || held.change <= route.change) tenants.set(tenant, route);
    }
  }

  /** Takes a route out; returns it if it was here. */
  drop(id: string): Route | undefined {
    const route = this.byId.get(id);
    if (!route) return undefined;
    this.byId.delete(id);
    const tenants = this.byService.get(route.service);
    if (tenants) {
      for (const tenant of route.tenants) if (tenants.get(tenant) === route) tenants.delete(tenant);
      if (tenants.size === 0) this.byService.delete(route.service);
    }
    return route;
  }

  /**
   * Sets a route here (the single-process store decides alone): these tenants now go to these
   * targets (added to the route's tenants, or replacing them), and any of them in another
   * route of the service moves.
   */
  set(input: RouteInput, now: number): SetRouteResult {
    const id = routeIdOf(input.service, input.targets);
    const previous = this.byId.get(id);
    const result: SetRouteResult = {
      route: {
        id,
        service: input.service,
        tenants: mergedTenants(id, previous?.tenants, input),
        targets: input.targets,
        tokenName: previous?.tokenName ?? input.tokenName,
        createdAt: previous?.createdAt ?? now,
        updatedAt: now,
        change: (previous?.change ?? 0) + 1,
      },
      created: !previous,
      moved: [],
      removed: [],
      updated: [],
    };
    const others = new Map<string, Route>();
    for (const tenant of result.route.tenants) {
      const other = this.find(input.service, tenant);
      if (!other || other.id === id) continue;
      result.moved.push({ tenant, from: other.id });
      others.set(other.id, other);
    }
    const taken = new Set(result.route.tenants);
    for (const other of others.values()) {
      const shrunk = this.without(other, taken, now);
      if (shrunk) result.updated.push(shrunk);
      else result.removed.push(other);
    }
    this.put(result.route);
    return result;
  }

  /** Takes `tenants` (all, when undefined) out of route `id`; a route left with none is deleted. */
  unroute(id: string, tenants: string[] | undefined, now: number): UnrouteResult {
    const route = this.byId.get(id);
    if (!route) return { removed: [], updated: [] };
    if (!tenants) {
      this.drop(id);
      return { removed: [route], updated: [] };
    }
    const shrunk = this.without(route, new Set(tenants), now);
    return shrunk
      ? { removed: [], updated: shrunk === route ? [] : [shrunk] }
      : { removed: [route], updated: [] };
  }

  /** The route minus `tenants`, put in its place; undefined (and dropped) when none are left. */
  private without(route: Route, tenants: Set<string>, now: number): Route | undefined {
    const left = route.tenants.filter((t) => !tenants.has(t));
    if (left.length === route.tenants.length) return route;
    if (left.length === 0) {
      this.drop(route.id);
      return undefined;
    }
    const next = { ...route, tenants: left, updatedAt: now, change: route.change + 1 };
    this.put(next);
    return next;
  }
}
