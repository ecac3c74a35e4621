/**
 * Tenant routes in memory: one entry per (service, targets), a tenant in at most one route of
 * a service, moves between routes, taking tenants out, and the store's events.
 */
import { describe, expect, it } from 'vitest';
import { type Route, type RouteInput, RouteTable, routeIdOf } from '../../server/routing/route-table.js';
import { MemoryInterceptStore } from '../../server/store/memory-store.js';

const V2 = 'http://billing-v2:8080/';
const V3 = 'http://billing-v3:8080/';
const V4 = 'http://billing-v4:8080/';

const input = (tenants: string[], targets: string[] = [V2], service = 'billing'): RouteInput => ({
  service,
  tenants,
  targets,
  tokenName: 'default',
});

/** Where each tenant of `billing` goes: a target list, or "base" when no route names it. */
function targetsOf(table: RouteTable, tenants: string[], service = 'billing'): Record<string, string> {
  const out: Record<string, string> = {};
  for (const t of tenants) out[t] = table.find(service, t)?.targets.join(' ') ?? 'base';
  return out;
}

describe('RouteTable.set', () => {
  it('creates one route for the service and its targets, naming its tenants once each', () => {
    const table = new RouteTable();
    const r = table.set(input(['t1', 't2', 't1']), 1_000);
    expect(r.created).toBe(true);
    expect(r.route).toMatchObject({
      id: routeIdOf('billing', [V2]),
      service: 'billing',
      tenants: ['t1', 't2'],
      targets: [V2],
      tokenName: 'default',
      createdAt: 1_000,
      updatedAt: 1_000,
    });
    expect(r.route.id).toMatch(/^rt_[0-9a-f]{16}$/);
    expect(r.moved).toEqual([]);
    expect(r.removed).toEqual([]);
    expect(r.updated).toEqual([]);
    expect(targetsOf(table, ['t1', 't2', 't3'])).toEqual({ t1: V2, t2: V2, t3: 'base' });
    // Another service's tenant of the same name is not routed.
    expect(table.find('orders', 't1')).toBeUndefined();
    expect(table.get(r.route.id)).toBe(r.route);
    expect(table.size).toBe(1);
  });

  it('the same targets (in any order) update the same route: tenants added, or replaced with replace', () => {
    const table = new RouteTable();
    const first = table.set(input(['t1', 't2'], [V2, V3]), 1_000);
    const again = table.set(input(['t2', 't3'], [V3, V2]), 2_000);
    expect(again.created).toBe(false);
    expect(again.route.id).toBe(first.route.id);
    expect(again.route.tenants).toEqual(['t1', 't2', 't3']);
    expect(again.route.createdAt).toBe(1_000);
    expect(again.route.updatedAt).toBe(2_000);
    expect(again.route.change).toBeGreaterThan(first.route.change);
    // Not a move: the tenant was already in this route.
    expect(again.moved).toEqual([]);
    expect(table.list()).toHaveLength(1);

    const replaced = table.set({ ...input(['t2', 't3'], [V2, V3]), replace: true }, 3_000);
    expect(replaced.route.tenants).toEqual(['t2', 't3']);
    // t1, dropped from the list, goes back to base.
    expect(targetsOf(table, ['t1', 't2', 't3'])).toEqual({
      t1: 'base',
      t2: `${V2} ${V3}`,
      t3: `${V2} ${V3}`,
    });
  });

  it('other targets, or another service, are another route', () => {
    const table = new RouteTable();
    const v2 = table.set(input(['t1']), 1);
    const v3 = table.set(input(['t2'], [V3]), 2);
    const orders = table.set(input(['t1'], [V2], 'orders'), 3);
    expect(new Set([v2.route.id, v3.route.id, orders.route.id]).size).toBe(3);
    expect(table.list()).toHaveLength(3);
    // Same tenant in two services: two routes, no move.
    expect(orders.moved).toEqual([]);
    expect(table.find('billing', 't1')?.id).toBe(v2.route.id);
    expect(table.find('orders', 't1')?.id).toBe(orders.route.id);
  });

  it('moves tenants out of other routes of the service: the source shrinks', () => {
    const table = new RouteTable();
    const a = table.set(input(['t1', 't2', 't3']), 1);
    const b = table.set(input(['t2', 't3', 't9'], [V3]), 2);
    expect(b.created).toBe(true);
    expect(b.moved).toEqual([
      { tenant: 't2', from: a.route.id },
      { tenant: 't3', from: a.route.id },
    ]);
    expect(b.removed).toEqual([]);
    expect(b.updated).toHaveLength(1);
    expect(b.updated[0]).toMatchObject({ id: a.route.id, tenants: ['t1'], updatedAt: 2 });
    expect(table.get(a.route.id)?.tenants).toEqual(['t1']);
    expect(targetsOf(table, ['t1', 't2', 't3', 't9'])).toEqual({ t1: V2, t2: V3, t3: V3, t9: V3 });
  });

  it('a source route left without tenants is removed', () => {
    const table = new RouteTable();
    const a = table.set(input(['t1']), 1);
    const c = table.set(input(['t5', 't6'], [V4]), 1);
    const b = table.set(input(['t1', 't5'], [V3]), 2);
    expect(b.moved).toEqual([
      { tenant: 't1', from: a.route.id },
      { tenant: 't5', from: c.route.id },
    ]);
    expect(b.removed.map((r) => r.id)).toEqual([a.route.id]);
    expect(b.updated.map((r) => [r.id, r.tenants])).toEqual([[c.route.id, ['t6']]]);
    expect(table.get(a.route.id)).toBeUndefined();
    expect(
      table
        .list()
        .map((r) => r.id)
        .sort(),
    ).toEqual([b.route.id, c.route.id].sort());
    expect(targetsOf(table, ['t1', 't5', 't6'])).toEqual({ t1: V3, t5: V3, t6: V4 });
  });
});

describe('RouteTable.put (a replica applying rows as they arrive)', () => {
  const row = (id: string, tenants: string[], targets: string[], change: number): Route => ({
    id,
    service: 'billing',
    tenants,
    targets,
    tokenName: 'default',
    createdAt: 0,
    updatedAt: 0,
    change,
  });

  it('an older copy of a route, fetched before the move that took a tenant from it, does not take the tenant back', () => {
    const table = new RouteTable();
    // Change 5 made A = {t1, t2}; change 6 shrank A to {t2} and change 7 made B = {t1}. This
    // replica read B after the move but A before it, and applies them in that order.
    table.put(row('A', ['t1', 't2'], [V2], 5));
    table.put(row('B', ['t1'], [V3], 7));
    expect(targetsOf(table, ['t1', 't2'])).toEqual({ t1: V3, t2: V2 });
    const late = new RouteTable();
    late.put(row('B', ['t1'], [V3], 7));
    late.put(row('A', ['t1', 't2'], [V2], 5));
    expect(targetsOf(late, ['t1', 't2'])).toEqual({ t1: V3, t2: V2 });
    // The newer copy of A arrives: t1 stays with B, not lost to the base.
    late.put(row('A', ['t2'], [V2], 6));
    expect(targetsOf(late, ['t1', 't2'])).toEqual({ t1: V3, t2: V2 });
  });
});

describe('RouteTable.unroute', () => {
  const setup = () => {
    const table = new RouteTable();
    const { route } = table.set(input(['t1', 't2', 't3']), 1);
    return { table, route };
  };

  it('takes some tenants out; the others keep the route', () => {
    const { table, route } = setup();
    const r = table.unroute(route.id, ['t2', 'not-in-it'], 5);
    expect(r.removed).toEqual([]);
    expect(r.updated).toHaveLength(1);
    expect(r.updated[0]).toMatchObject({ id: route.id, tenants: ['t1', 't3'], updatedAt: 5 });
    expect(targetsOf(table, ['t1', 't2', 't3'])).toEqual({ t1: V2, t2: 'base', t3: V2 });
  });

  it('taking out every tenant, by name or all at once, removes the route', () => {
    const byName = setup();
    expect(byName.table.unroute(byName.route.id, ['t3', 't1', 't2'], 5)).toEqual({
      removed: [byName.route],
      updated: [],
    });
    expect(byName.table.list()).toEqual([]);
    expect(targetsOf(byName.table, ['t1', 't2', 't3'])).toEqual({ t1: 'base', t2: 'base', t3: 'base' });

    const all = setup();
    expect(all.table.unroute(all.route.id, undefined, 5)).toEqual({ removed: [all.route], updated: [] });
    expect(all.table.size).toBe(0);
    expect(all.table.find('billing', 't1')).toBeUndefined();
  });

  it('tenants the route does not name, or an unknown id, change nothing', () => {
    const { table, route } = setup();
    expect(table.unroute(route.id, ['t7'], 5)).toEqual({ removed: [], updated: [] });
    expect(table.unroute('rt_0000000000', undefined, 5)).toEqual({ removed: [], updated: [] });
    expect(table.get(route.id)).toBe(route);
    expect(table.get(route.id)?.updatedAt).toBe(1);
    expect(targetsOf(table, ['t1', 't2', 't3'])).toEqual({ t1: V2, t2: V2, t3: V2 });
  });
});

describe('RouteTable at scale', () => {
  it('10,000 tenants in one route are one entry, each tenant found; moving one out keeps one entry', () => {
    const table = new RouteTable();
    const tenants = Array.from({ length: 10_000 }, (_, i) => `tenant-${i}`);
    const { route } = table.set(input(tenants), 1);
    expect(table.list().length).toBe(1);
    expect(table.size).toBe(1);
    for (const t of tenants) expect(table.find('billing', t)).toBe(route);
    expect(table.find('billing', 'tenant-10000')).toBeUndefined();

    const moved = table.set(input(['tenant-4999'], [V3]), 2);
    expect(moved.moved).toEqual([{ tenant: 'tenant-4999', from: route.id }]);
    expect(table.list().length).toBe(2);
    expect(table.get(route.id)?.tenants).toHaveLength(9_999);
    expect(table.find('billing', 'tenant-4999')?.targets).toEqual([V3]);
    expect(table.find('billing', 'tenant-5000')?.targets).toEqual([V2]);
  });
});

describe('MemoryInterceptStore routes', () => {
  function recorded(store: MemoryInterceptStore) {
    const events: string[] = [];
    store.on('routeSet', (r: Route) => events.push(`set ${r.id} ${r.tenants.join(',')}`));
    store.on('routeRemoved', (r: Route) => events.push(`removed ${r.id}`));
    return events;
  }

  it('emits routeSet for a new or changed route and for a shrunk source, routeRemoved for an emptied one', async () => {
    let now = 1_000;
    const store = new MemoryInterceptStore(30_000, () => now);
    const events = recorded(store);
    const a = await store.setRoute(input(['t1', 't2']));
    const c = await store.setRoute(input(['t5'], [V4]));
    now = 2_000;
    const b = await store.setRoute(input(['t2', 't5'], [V3]));
    expect(events).toEqual([
      `set ${a.route.id} t1,t2`,
      `set ${c.route.id} t5`,
      `set ${a.route.id} t1`,
      `removed ${c.route.id}`,
      `set ${b.route.id} t2,t5`,
    ]);
    expect(store.findRoute('billing', 't2')?.id).toBe(b.route.id);
    expect(store.getRoute(a.route.id)?.updatedAt).toBe(2_000);
    expect(
      store
        .listRoutes()
        .map((r) => r.id)
        .sort(),
    ).toEqual([a.route.id, b.route.id].sort());

    events.length = 0;
    await store.unroute(b.route.id, ['t5']);
    await store.unroute(b.route.id, ['nobody']);
    await store.unroute(a.route.id);
    await store.unroute('rt_0000000000');
    expect(events).toEqual([`set ${b.route.id} t2`, `removed ${a.route.id}`]);
    expect(store.findRoute('billing', 't1')).toBeUndefined();
    expect(store.findRoute('billing', 't5')).toBeUndefined();
    expect(store.findRoute('billing', 't2')?.targets).toEqual([V3]);
    await store.close();
  });
});
