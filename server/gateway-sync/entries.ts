/**
 * The set the gateway must hold: every (service, routing key) that needs something other than
 * the base service. An intercept sends its key to Kelsingra's data port; a tenant route sends
 * its tenants straight to the route's targets. Everything not in the set goes to the base and
 * never reaches Kelsingra.
 */
import type { InterceptStore } from '../store/intercept-store.js';

/** Where one (service, key) goes: Kelsingra, or a tenant route's pool. */
export type Target = { kind: 'kelsingra' } | { kind: 'route'; routeId: string; targets: string[] };

export interface Entry {
  service: string;
  tenant: string;
  target: Target;
}

/** The map key of a (service, key) pair; `/` cannot be in a service name (a DNS label). */
export function keyOf(service: string, tenant: string): string {
  return `${service}/${tenant}`;
}

/** A target as one comparable word: `kelsingra`, or the route's id. */
export function targetName(target: Target): string {
  return target.kind === 'kelsingra' ? 'kelsingra' : target.routeId;
}

/**
 * The desired set from the store's copy. An intercept wins over a route for the same pair,
 * as it does in the data plane.
 */
export function desiredEntries(store: InterceptStore): Map<string, Entry> {
  const out = new Map<string, Entry>();
  for (const route of store.listRoutes()) {
    const target: Target = { kind: 'route', routeId: route.id, targets: route.targets };
    for (const tenant of route.tenants) {
      // A tenant indexed to a newer route (a move seen before the old copy) follows the index.
      if (store.findRoute(route.service, tenant)?.id !== route.id) continue;
      out.set(keyOf(route.service, tenant), { service: route.service, tenant, target });
    }
  }
  for (const intercept of store.list()) {
    if (intercept.expiresAt <= Date.now()) continue;
    out.set(keyOf(intercept.service, intercept.tenant), {
      service: intercept.service,
      tenant: intercept.tenant,
      target: { kind: 'kelsingra' },
    });
  }
  return out;
}

export interface Diff {
  /** Added, or pointing somewhere else now. */
  set: Entry[];
  removed: Entry[];
  /** What the changed entries of `set` pointed at before. */
  replaced: Entry[];
}

export function diffEntries(applied: ReadonlyMap<string, Entry>, desired: ReadonlyMap<string, Entry>): Diff {
  const set: Entry[] = [];
  const removed: Entry[] = [];
  const replaced: Entry[] = [];
  for (const [key, entry] of desired) {
    const had = applied.get(key);
    if (had && targetName(had.target) === targetName(entry.target)) continue;
    set.push(entry);
    if (had) replaced.push(had);
  }
  for (const [key, entry] of applied) if (!desired.has(key)) removed.push(entry);
  return { set, removed, replaced };
}

/** `http://10.0.0.5:8080/` → `10.0.0.5:8080` (the port the scheme implies when none is written). */
export function hostPort(url: string): string {
  const u = new URL(url);
  const port = u.port || (u.protocol === 'https:' ? '443' : '80');
  return `${u.hostname}:${port}`;
}

/** Entries in one stable order, so generated files and documents are byte-identical for one set. */
export function sorted(entries: Iterable<Entry>): Entry[] {
  return [...entries].sort((a, b) =>
    a.service === b.service
      ? a.tenant < b.tenant
        ? -1
        : a.tenant > b.tenant
          ? 1
          : 0
      : a.service < b.service
        ? -1
        : 1,
  );
}
