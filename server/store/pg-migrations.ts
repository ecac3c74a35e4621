/**
 * The PostgreSQL schema, as numbered migrations applied in order at start-up. Replicas
 * starting together serialise on an advisory lock, so each migration runs once.
 */
import type pg from 'pg';
import type { Logger } from 'pino';

interface Migration {
  version: number;
  name: string;
  sql: string;
}

/** Append only: a migration that has shipped is never edited, only followed by another. */
export const MIGRATIONS: Migration[] = [
  {
    version: 1,
    name: 'intercepts, replicas, tunnels, tokens',
    sql: `
      CREATE SEQUENCE kelsingra_change_seq;

      CREATE TABLE kelsingra_intercepts (
        id text PRIMARY KEY,
        service text NOT NULL,
        tenant text NOT NULL,
        holder text NOT NULL,
        token_name text NOT NULL,
        client_key text NOT NULL,
        local_port integer NOT NULL,
        -- '' while the holder's tunnel is disconnected
        replica_id text NOT NULL,
        epoch bigint NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL,
        change bigint NOT NULL DEFAULT nextval('kelsingra_change_seq'),
        CONSTRAINT kelsingra_one_holder UNIQUE (service, tenant)
      );
      CREATE INDEX kelsingra_intercepts_client ON kelsingra_intercepts (client_key);
      CREATE INDEX kelsingra_intercepts_expiry ON kelsingra_intercepts (expires_at);

      CREATE TABLE kelsingra_replicas (
        id text PRIMARY KEY,
        url text NOT NULL,
        secret text NOT NULL,
        version text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz NOT NULL DEFAULT now()
      );

      CREATE TABLE kelsingra_tunnels (
        client_key text PRIMARY KEY,
        replica_id text NOT NULL,
        holder text NOT NULL,
        token_name text NOT NULL,
        connected_at timestamptz NOT NULL DEFAULT now()
      );

      CREATE TABLE kelsingra_tokens (
        name text PRIMARY KEY,
        digest bytea NOT NULL,
        tenants text[] NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
      );

      -- Every change to an intercept gets a new change number (so a copy can tell newer from
      -- older) and reaches every replica, whoever made it (even psql). The notice is sent
      -- AFTER the row is written: a BEFORE INSERT trigger also fires for an INSERT … ON
      -- CONFLICT that ends up updating, with a row that is never stored.
      CREATE FUNCTION kelsingra_intercept_numbered() RETURNS trigger AS $$
      BEGIN
        NEW.change := nextval('kelsingra_change_seq');
        RETURN NEW;
      END $$ LANGUAGE plpgsql;
      CREATE TRIGGER kelsingra_intercept_numbered
        BEFORE INSERT OR UPDATE ON kelsingra_intercepts
        FOR EACH ROW EXECUTE FUNCTION kelsingra_intercept_numbered();

      CREATE FUNCTION kelsingra_intercept_changed() RETURNS trigger AS $$
      BEGIN
        IF TG_OP = 'DELETE' THEN
          PERFORM pg_notify('kelsingra', json_build_object(
            'op', 'delete',
            'reason', CASE WHEN OLD.expires_at <= now() THEN 'expired' ELSE 'left' END,
            'row', row_to_json(OLD))::text);
        ELSE
          PERFORM pg_notify('kelsingra', json_build_object('op', 'upsert', 'row', row_to_json(NEW))::text);
        END IF;
        RETURN NULL;
      END $$ LANGUAGE plpgsql;
      CREATE TRIGGER kelsingra_intercept_changed
        AFTER INSERT OR UPDATE OR DELETE ON kelsingra_intercepts
        FOR EACH ROW EXECUTE FUNCTION kelsingra_intercept_changed();

      CREATE FUNCTION kelsingra_tokens_changed() RETURNS trigger AS $$
      BEGIN
        PERFORM pg_notify('kelsingra', '{"op":"tokens"}');
        RETURN NULL;
      END $$ LANGUAGE plpgsql;
      CREATE TRIGGER kelsingra_tokens_changed
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON kelsingra_tokens
        FOR EACH STATEMENT EXECUTE FUNCTION kelsingra_tokens_changed();
    `,
  },
  {
    version: 2,
    name: 'Kafka topics per intercept',
    sql: `ALTER TABLE kelsingra_intercepts ADD COLUMN kafka_topics text[] NOT NULL DEFAULT '{}'`,
  },
  {
    version: 3,
    name: 'tenant routes',
    sql: `
      CREATE TABLE kelsingra_routes (
        id text PRIMARY KEY,
        service text NOT NULL,
        tenants text[] NOT NULL,
        targets text[] NOT NULL,
        token_name text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        change bigint NOT NULL DEFAULT nextval('kelsingra_change_seq')
      );
      CREATE INDEX kelsingra_routes_service ON kelsingra_routes (service);
      CREATE TRIGGER kelsingra_route_numbered
        BEFORE INSERT OR UPDATE ON kelsingra_routes
        FOR EACH ROW EXECUTE FUNCTION kelsingra_intercept_numbered();

      -- A route can name thousands of tenants, more than a notification may carry (8000
      -- bytes): the notice names the row and its change, and replicas read the row.
      CREATE FUNCTION kelsingra_route_changed() RETURNS trigger AS $$
      BEGIN
        IF TG_OP = 'DELETE' THEN
          PERFORM pg_notify('kelsingra', json_build_object(
            'op', 'route', 'id', OLD.id, 'change', OLD.change, 'deleted', true)::text);
        ELSE
          PERFORM pg_notify('kelsingra', json_build_object(
            'op', 'route', 'id', NEW.id, 'change', NEW.change, 'deleted', false)::text);
        END IF;
        RETURN NULL;
      END $$ LANGUAGE plpgsql;
      CREATE TRIGGER kelsingra_route_changed
        AFTER INSERT OR UPDATE OR DELETE ON kelsingra_routes
        FOR EACH ROW EXECUTE FUNCTION kelsingra_route_changed();
    `,
  },
  {
    version: 4,
    name: 'change indexes',
    // The periodic repair reads rows by change number; without these it scans both tables.
    sql: `
      CREATE INDEX kelsingra_intercepts_change ON kelsingra_intercepts (change);
      CREATE INDEX kelsingra_routes_change ON kelsingra_routes (change);
    `,
  },
  {
    version: 5,
    name: 'token roles',
    // Rows written before roles existed (or by an older replica) get the lesser role; every
    // replica with tokens configured writes the real ones when it starts.
    sql: `ALTER TABLE kelsingra_tokens ADD COLUMN role text NOT NULL DEFAULT 'developer'`,
  },
  {
    version: 6,
    name: 'gateway sync',
    // What the dev gateway confirmed, written by the replica holding the gateway lock, so
    // another replica can tell a developer when their intercept is in the gateway; and the
    // versions of Traefik's dynamic configuration a poll was served.
    sql: `
      CREATE TABLE kelsingra_gateway_entries (
        service text NOT NULL,
        tenant text NOT NULL,
        target text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (service, tenant)
      );
      CREATE TABLE kelsingra_gateway_polls (
        version text PRIMARY KEY,
        polled_at timestamptz NOT NULL DEFAULT now()
      );
    `,
  },
];

/** Any constant will do, as long as every replica uses the same one. */
const MIGRATION_LOCK = 7_700_417_001;

/**
 * Runs `fn` in one transaction holding the advisory lock `lock`, so replicas doing the same
 * thing at the same moment take turns. Rolled back if `fn` throws.
 */
export async function lockedTransaction<T>(
  pool: pg.Pool,
  lock: number,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query('SELECT pg_advisory_xact_lock($1)', [lock]);
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    // The original error says what went wrong; a failed rollback would add nothing to it.
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  } finally {
    client.release();
  }
}

export async function migrate(pool: pg.Pool, log: Logger): Promise<number> {
  const applied = await lockedTransaction(pool, MIGRATION_LOCK, async (client) => {
    await client.query(`CREATE TABLE IF NOT EXISTS kelsingra_migrations (
      version integer PRIMARY KEY,
      name text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now()
    )`);
    const { rows } = await client.query<{ version: number }>('SELECT version FROM kelsingra_migrations');
    const done = new Set(rows.map((r) => r.version));
    for (const m of MIGRATIONS) {
      if (done.has(m.version)) continue;
      await client.query(m.sql);
      await client.query('INSERT INTO kelsingra_migrations (version, name) VALUES ($1, $2)', [
        m.version,
        m.name,
      ]);
      log.info({ version: m.version, migration: m.name }, 'database migration applied');
    }
    return done;
  });
  const latest = Math.max(0, ...applied, ...MIGRATIONS.map((m) => m.version));
  const known = Math.max(...MIGRATIONS.map((m) => m.version));
  // During a rolling upgrade an older replica meets a newer schema; migrations only add, so it carries on.
  if (latest > known)
    log.warn({ schema: latest, known }, 'the database schema is newer than this server agent');
  return latest;
}
