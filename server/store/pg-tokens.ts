/**
 * The shared token set in the PostgreSQL store: what a replica configured with tokens
 * stores for all (sha256 digests only), and what every replica reads back.
 */
import type pg from 'pg';
import type { TokenRecord } from '../auth/auth.js';
import { lockedTransaction } from './pg-migrations.js';
import type { PgQuery } from './pg-rows.js';

/** Advisory lock taken while a replica replaces the shared token set. */
const TOKENS_LOCK = 7_700_417_002;

/** Makes the configured tokens the shared set. A replica started without tokens uses the set the others stored. */
export async function syncTokens(pool: pg.Pool, tokens: TokenRecord[]): Promise<void> {
  if (tokens.length === 0) return;
  // Replicas starting together would otherwise interleave their replacements.
  await lockedTransaction(pool, TOKENS_LOCK, async (client) => {
    await client.query('DELETE FROM kelsingra_tokens WHERE NOT (name = ANY($1))', [
      tokens.map((t) => t.name),
    ]);
    for (const t of tokens) {
      await client.query(
        `INSERT INTO kelsingra_tokens (name, digest, tenants, role) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET digest = EXCLUDED.digest, tenants = EXCLUDED.tenants,
           role = EXCLUDED.role, updated_at = now()`,
        [t.name, t.digest, t.tenants, t.role],
      );
    }
  });
}

export async function loadTokens(query: PgQuery): Promise<TokenRecord[]> {
  const { rows } = await query<{ name: string; digest: Buffer; tenants: string[]; role: string }>(
    'SELECT name, digest, tenants, role FROM kelsingra_tokens ORDER BY name',
  );
  // A role this version does not know (written by a newer replica) gets the least rights.
  return rows.map((r) => ({ ...r, role: r.role === 'admin' ? 'admin' : 'developer' }));
}
