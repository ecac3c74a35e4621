/**
 * Tenant routes in the PostgreSQL store: the route SQL, every change decided under one
 * advisory lock, and this replica's copy of the route table, with the change numbers that
 * keep an old notice from reviving or dropping a newer row.
 */
import type { EventEmitter } from 'node:events';
import type pg from 'pg';
import {
  mergedTenants,
  type Route,
  type RouteInput,
  RouteTable,
  routeIdOf,
  type SetRouteResult,
  type UnrouteResult,
} from '../routing/route-table.js';
import { type StoreEvents, StoreUnavailableError } from './intercept-store.js';
import { lockedTransaction } from './pg-migrations.js';
import { isConnectionError, type PgQuery, type RouteRow, TOMBSTONE_MS, toRoute } from './pg-rows.js';

/** Advisory lock every route change takes, so a tenant is never put in two routes of a service at once. */
const ROUTES_LOCK = 7_700_417_003;

export interface PgRoutesDeps {
  pool: pg.Pool;
  query: PgQuery;
  events: EventEmitter<StoreEvents>;
  degrade(err: unknown): void;
  /** Each change number applied, for the store's watermark. */
  applied(change: number): void;
}

export class PgRoutes {
  private readonly routes = new RouteTable();
  /** Change numbers of routes, kept for deleted ones too, so an old notice cannot revive or drop a newer row. */
  private readonly seen = new Map<string, { change: number; at: number }>();

  constructor(private readonly deps: PgRoutesDeps) {}

  /** The copy this replica routes from; only notices and reloads change it. */
  get table(): Pick<RouteTable, 'find' | 'get' | 'list' | 'size'> {
    return this.routes;
  }

  async set(input: RouteInput): Promise<SetRouteResult> {
    const id = routeIdOf(input.service, input.targets);
    const result = await this.transaction(async (client) => {
      const current = await client.query<RouteRow>('SELECT tenants FROM kelsingra_routes WHERE id = $1', [
        id,
      ]);
      const tenants = mergedTenants(id, current.rows[0]?.tenants, input);
      const moved: { tenant: string; from: string }[] = [];
      const removed: RouteRow[] = [];
      const updated: RouteRow[] = [];
      const others = await client.query<RouteRow>(
        'SELECT * FROM kelsingra_routes WHERE service = $1 AND id <> $2 AND tenants && $3::text[]',
        [input.service, id, input.tenants],
      );
      const taken = new Set(input.tenants);
      for (const other of others.rows) {
        for (const tenant of other.tenants) if (taken.has(tenant)) moved.push({ tenant, from: other.id });
        const left = other.tenants.filter((t) => !taken.has(t));
        if (left.length === 0) {
          await client.query('DELETE FROM kelsingra_routes WHERE id = $1', [other.id]);
          removed.push(other);
        } else {
          const { rows } = await client.query<RouteRow>(
            'UPDATE kelsingra_routes SET tenants = $2, updated_at = now() WHERE id = $1 RETURNING *',
            [other.id, left],
          );
          updated.push(...rows);
        }
      }
      const { rows } = await client.query<RouteRow & { inserted: boolean }>(
        `INSERT INTO kelsingra_routes (id, service, tenants, targets, token_name) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET tenants = EXCLUDED.tenants, updated_at = now()
         RETURNING *, (xmax = 0) AS inserted`,
        [id, input.service, tenants, input.targets, input.tokenName],
      );
      return { row: rows[0] as RouteRow & { inserted: boolean }, moved, removed, updated };
    });
    for (const row of result.removed) this.gone(row.id, Number(row.change));
    return {
      route: this.apply(result.row),
      created: result.row.inserted,
      moved: result.moved,
      removed: result.removed.map(toRoute),
      updated: result.updated.map((row) => this.apply(row)),
    };
  }

  async unroute(id: string, tenants?: string[]): Promise<UnrouteResult> {
    const result = await this.transaction(async (client) => {
      const { rows } = await client.query<RouteRow>('SELECT * FROM kelsingra_routes WHERE id = $1', [id]);
      const route = rows[0];
      if (!route) return { removed: [], updated: [] };
      const gone = new Set(tenants);
      const left = tenants ? route.tenants.filter((t) => !gone.has(t)) : [];
      if (left.length === route.tenants.length) return { removed: [], updated: [] };
      if (left.length === 0) {
        await client.query('DELETE FROM kelsingra_routes WHERE id = $1', [id]);
        return { removed: [route], updated: [] };
      }
      const changed = await client.query<RouteRow>(
        'UPDATE kelsingra_routes SET tenants = $2, updated_at = now() WHERE id = $1 RETURNING *',
        [id, left],
      );
      return { removed: [], updated: changed.rows };
    });
    for (const row of result.removed) this.gone(row.id, Number(row.change));
    return {
      removed: result.removed.map(toRoute),
      updated: result.updated.map((row) => this.apply(row)),
    };
  }

  /**
   * A route notice: a deletion is applied at once, a change newer than the copy's is read
   * from the table (a notice carries no row). The promise is the read, if one was needed.
   */
  notified(id: string, change: number, deleted: boolean): Promise<void> | undefined {
    if (deleted) this.gone(id, change);
    else if ((this.seen.get(id)?.change ?? -1) < change) return this.fetch(id);
    return undefined;
  }

  /** Routes changed above a change number, for the incremental repair. */
  async reloadSince(change: number): Promise<void> {
    const routes = await this.deps.query<RouteRow>('SELECT * FROM kelsingra_routes WHERE change > $1', [
      change,
    ]);
    for (const row of routes.rows) this.apply(row);
  }

  /** The whole table, compared with the copy; a route learnt of after startedAt is not the snapshot's to drop. */
  async reload(startedAt: number): Promise<void> {
    const { rows: routes } = await this.deps.query<RouteRow>('SELECT * FROM kelsingra_routes');
    const routed = new Set<string>();
    for (const row of routes) {
      routed.add(row.id);
      this.apply(row);
    }
    for (const route of this.routes.list()) {
      if (routed.has(route.id) || (this.seen.get(route.id)?.at ?? 0) >= startedAt) continue;
      this.gone(route.id, route.change);
    }
    for (const [id, seen] of this.seen)
      if (!this.routes.get(id) && startedAt - seen.at > TOMBSTONE_MS) this.seen.delete(id);
  }

  /** A route change, decided under the routes lock; an unreachable database is a StoreUnavailableError. */
  private async transaction<T>(fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    try {
      return await lockedTransaction(this.deps.pool, ROUTES_LOCK, fn);
    } catch (err) {
      if (!isConnectionError(err)) throw err;
      this.deps.degrade(err);
      throw new StoreUnavailableError(`PostgreSQL is unreachable: ${(err as Error).message}`);
    }
  }

  private apply(row: RouteRow): Route {
    const change = Number(row.change);
    const seen = this.seen.get(row.id);
    const known = this.routes.get(row.id);
    if (seen && seen.change >= change) return known ?? toRoute(row);
    const route = toRoute(row);
    this.seen.set(row.id, { change, at: Date.now() });
    this.deps.applied(change);
    this.routes.put(route);
    this.deps.events.emit('routeSet', route);
    return route;
  }

  private gone(id: string, change: number): void {
    const seen = this.seen.get(id);
    if (seen && seen.change > change) return;
    this.seen.set(id, { change, at: Date.now() });
    const route = this.routes.drop(id);
    if (route) this.deps.events.emit('routeRemoved', route);
  }

  private async fetch(id: string): Promise<void> {
    const { rows } = await this.deps.query<RouteRow>('SELECT * FROM kelsingra_routes WHERE id = $1', [id]);
    if (rows[0]) this.apply(rows[0]);
  }
}
