/**
 * What the parts of the PostgreSQL store share: the rows of its tables as queries and
 * notifications carry them, their conversion to the store's records, and how a failed query
 * is told apart from an absent database.
 */
import type pg from 'pg';
import { z } from 'zod';
import type { Route } from '../routing/route-table.js';
import type { Intercept } from './intercept-store.js';

/** A query through the store's pool; an unreachable database is a StoreUnavailableError and marks the store degraded. */
export type PgQuery = <R extends pg.QueryResultRow>(
  text: string,
  values?: unknown[],
) => Promise<pg.QueryResult<R>>;

/** An intercept row as row_to_json gives it: timestamps as strings, bigints as numbers. */
export const rowSchema = z.object({
  id: z.string(),
  service: z.string(),
  tenant: z.string(),
  holder: z.string(),
  token_name: z.string(),
  client_key: z.string(),
  local_port: z.number(),
  // toIntercept has always read a missing list as none; the schema keeps that leniency.
  kafka_topics: z
    .array(z.string())
    .nullish()
    .transform((topics) => topics ?? []),
  replica_id: z.string(),
  epoch: z.union([z.number(), z.string()]),
  created_at: z.string(),
  expires_at: z.string(),
  change: z.union([z.number(), z.string()]),
});

/**
 * A row as a query returns it (timestamps as Date, bigint as string) or as a notification
 * carries it (strings, numbers): the notice's shape, with the timestamps a query gives as Date.
 */
export type Row = Omit<z.infer<typeof rowSchema>, 'created_at' | 'expires_at'> & {
  created_at: Date | string;
  expires_at: Date | string;
};

export interface RouteRow {
  id: string;
  service: string;
  tenants: string[];
  targets: string[];
  token_name: string;
  created_at: Date | string;
  updated_at: Date | string;
  change: string | number;
}

/** Deleted ids are remembered this long, so a reload that started before the delete cannot revive them. */
export const TOMBSTONE_MS = 5 * 60_000;

export function toRoute(row: RouteRow): Route {
  return {
    id: row.id,
    service: row.service,
    tenants: row.tenants,
    targets: row.targets,
    tokenName: row.token_name,
    createdAt: new Date(row.created_at).getTime(),
    updatedAt: new Date(row.updated_at).getTime(),
    change: Number(row.change),
  };
}

export function toIntercept(row: Row): Intercept {
  return {
    id: row.id,
    service: row.service,
    tenant: row.tenant,
    holder: row.holder,
    tokenName: row.token_name,
    clientKey: row.client_key,
    localPort: row.local_port,
    kafkaTopics: row.kafka_topics ?? [],
    replicaId: row.replica_id,
    epoch: Number(row.epoch),
    createdAt: new Date(row.created_at).getTime(),
    expiresAt: new Date(row.expires_at).getTime(),
  };
}

/** Errors that mean "the database is not there right now", as opposed to a mistake in a query. */
export function isConnectionError(err: unknown): boolean {
  const e = err as { code?: string; message?: string };
  if (typeof e.code === 'string' && (/^(08|57P)/.test(e.code) || /^E[A-Z]+$/.test(e.code))) return true;
  return /timeout|terminated|not queryable|Connection/i.test(e.message ?? '');
}

/** The database URL without its password, for logs and error messages. */
export function redactDatabaseUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(a database URL that does not parse)';
  }
}
