/**
 * Who writes to the gateway, and what it confirmed. One server alone always writes. With
 * replicas, the writer is whoever holds a PostgreSQL advisory lock on a session of its own:
 * the lock goes with the session, so a replica that dies (or loses the database) lets another
 * take over at its next try. The writer records what the gateway confirmed in a table, so a
 * replica that created an intercept can tell its caller once the gateway has it.
 */
import pg from 'pg';
import type { Logger } from 'pino';
import { type Diff, type Entry, keyOf, targetName } from './entries.js';
import type { ServedVersions } from './traefik.js';

export interface Coordination {
  /** Tries to become the writer, or checks that this replica still is. */
  lead(): Promise<boolean>;
  readonly leading: boolean;
  recordAll(entries: Iterable<Entry>): Promise<void>;
  record(diff: Diff): Promise<void>;
  /** What the gateway was last confirmed to send (service, key) to: `kelsingra`, a route id, or undefined. */
  confirmedTarget(service: string, tenant: string): Promise<string | undefined>;
  readonly versions: ServedVersions;
  close(): Promise<void>;
}

/** Versions a Traefik poll was served, kept a few minutes (long enough for any wait). */
class RecentVersions {
  private readonly seen = new Map<string, number>();
  add(version: string): void {
    const now = Date.now();
    this.seen.set(version, now);
    for (const [v, at] of this.seen) if (now - at > 5 * 60_000) this.seen.delete(v);
  }
  has(version: string): boolean {
    return this.seen.has(version);
  }
}

export class LocalCoordination implements Coordination {
  readonly leading = true;
  private readonly confirmed = new Map<string, string>();
  private readonly recent = new RecentVersions();
  readonly versions: ServedVersions = {
    served: async (v) => this.recent.add(v),
    wasServed: async (v) => this.recent.has(v),
  };

  async lead(): Promise<boolean> {
    return true;
  }

  async recordAll(entries: Iterable<Entry>): Promise<void> {
    this.confirmed.clear();
    for (const e of entries) this.confirmed.set(keyOf(e.service, e.tenant), targetName(e.target));
  }

  async record(diff: Diff): Promise<void> {
    for (const e of diff.removed) this.confirmed.delete(keyOf(e.service, e.tenant));
    for (const e of diff.set) this.confirmed.set(keyOf(e.service, e.tenant), targetName(e.target));
  }

  async confirmedTarget(service: string, tenant: string): Promise<string | undefined> {
    return this.confirmed.get(keyOf(service, tenant));
  }

  async close(): Promise<void> {}
}

/** Any constant will do, as long as every replica uses the same one (pg-store uses 7_700_417_00x). */
export const GATEWAY_LOCK = 7_700_417_010;

export class PgCoordination implements Coordination {
  private readonly pool: pg.Pool;
  private session?: pg.Client;
  private held = false;
  private closed = false;
  readonly versions: ServedVersions;

  constructor(
    private readonly databaseUrl: string,
    private readonly log: Logger,
  ) {
    this.pool = new pg.Pool({
      connectionString: databaseUrl,
      max: 2,
      connectionTimeoutMillis: 2_000,
      query_timeout: 5_000,
    });
    this.pool.on('error', (err) => log.warn({ err: err.message }, 'gateway sync: database connection lost'));
    this.versions = {
      served: async (v) => {
        await this.pool.query(
          `WITH old AS (DELETE FROM kelsingra_gateway_polls WHERE polled_at < now() - interval '5 minutes')
           INSERT INTO kelsingra_gateway_polls (version) VALUES ($1)
           ON CONFLICT (version) DO UPDATE SET polled_at = now()`,
          [v],
        );
      },
      wasServed: async (v) =>
        (await this.pool.query('SELECT 1 FROM kelsingra_gateway_polls WHERE version = $1', [v])).rowCount ===
        1,
    };
  }

  get leading(): boolean {
    return this.held;
  }

  async lead(): Promise<boolean> {
    if (this.closed) return false;
    try {
      if (!this.session) {
        const client = new pg.Client({
          connectionString: this.databaseUrl,
          connectionTimeoutMillis: 2_000,
          keepAlive: true,
        });
        const lost = () => {
          if (this.session !== client) return;
          this.session = undefined;
          if (this.held) this.log.warn('gateway sync: lost the writer lock with its database session');
          this.held = false;
        };
        client.on('error', lost);
        client.on('end', lost);
        this.session = client;
        await client.connect();
      }
      if (this.held) {
        // The session still being there is what holds the lock; a query proves it is.
        await this.session.query('SELECT 1');
        return true;
      }
      const { rows } = await this.session.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [
        GATEWAY_LOCK,
      ]);
      this.held = rows[0]?.ok === true;
      return this.held;
    } catch (err) {
      this.held = false;
      const session = this.session;
      this.session = undefined;
      await session?.end().catch(() => {
        // Broken already: nothing to end.
      });
      throw err;
    }
  }

  async recordAll(entries: Iterable<Entry>): Promise<void> {
    const list = [...entries];
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query('DELETE FROM kelsingra_gateway_entries');
      await client.query(
        `INSERT INTO kelsingra_gateway_entries (service, tenant, target)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[])`,
        [list.map((e) => e.service), list.map((e) => e.tenant), list.map((e) => targetName(e.target))],
      );
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      client.release();
    }
  }

  async record(diff: Diff): Promise<void> {
    await this.pool.query(
      `WITH gone AS (
         DELETE FROM kelsingra_gateway_entries e USING unnest($1::text[], $2::text[]) AS r(service, tenant)
         WHERE e.service = r.service AND e.tenant = r.tenant)
       INSERT INTO kelsingra_gateway_entries (service, tenant, target)
       SELECT * FROM unnest($3::text[], $4::text[], $5::text[])
       ON CONFLICT (service, tenant) DO UPDATE SET target = EXCLUDED.target, applied_at = now()`,
      [
        diff.removed.map((e) => e.service),
        diff.removed.map((e) => e.tenant),
        diff.set.map((e) => e.service),
        diff.set.map((e) => e.tenant),
        diff.set.map((e) => targetName(e.target)),
      ],
    );
  }

  async confirmedTarget(service: string, tenant: string): Promise<string | undefined> {
    const { rows } = await this.pool.query<{ target: string }>(
      'SELECT target FROM kelsingra_gateway_entries WHERE service = $1 AND tenant = $2',
      [service, tenant],
    );
    return rows[0]?.target;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.held = false;
    const session = this.session;
    this.session = undefined;
    await session?.end().catch(() => {
      // Broken already: nothing to end.
    });
    await this.pool.end();
  }
}
