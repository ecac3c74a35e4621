/**
 * Replica membership in the PostgreSQL store: this replica's announcement and heartbeat,
 * the peers read back with it, and the tunnels open here, recorded so a peer can find
 * which replica holds a client's tunnel.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { VERSION } from '../../src/shared/version.js';
import type { Peer, StoreHealth, TunnelRecord } from './intercept-store.js';
import type { PgQuery, Row } from './pg-rows.js';

/** A peer that has not beaten for this long is taken for dead: requests for it fail fast. */
const PEER_STALE_MS = 5_000;

/** Whether a peer's last heartbeat (its age when read, and when it was read) is recent enough. */
function beating(p: { ageMs: number; fetchedAt: number }, now = Date.now()): boolean {
  return p.ageMs + (now - p.fetchedAt) <= PEER_STALE_MS;
}

export interface PgReplicasDeps {
  replicaId: string;
  query: PgQuery;
  /** An intercept row a tunnel change rewrote, for the store's copy. */
  applyUpsert(row: Row): void;
  /** Whether the database is away just now (nobody's heartbeat can be read then). */
  degraded(): boolean;
}

export class PgReplicas {
  private readonly peers = new Map<string, { peer: Peer; ageMs: number; fetchedAt: number }>();
  /** Tunnels open on this replica, kept here too so they can be written again after an outage. */
  private readonly localTunnels = new Map<string, TunnelRecord>();
  private announced?: { url: string; secret: string };

  constructor(private readonly deps: PgReplicasDeps) {}

  /** Takes this replica's data-port URL and makes up the secret peers relay with; heartbeat() tells the others. */
  announce(url: string): void {
    this.announced = { url, secret: randomBytes(24).toString('base64url') };
  }

  get isAnnounced(): boolean {
    return this.announced !== undefined;
  }

  get relaySecret(): string | undefined {
    return this.announced?.secret;
  }

  /** Beats and reads everyone's beats; false (and nothing done) before announce(). */
  async heartbeat(): Promise<boolean> {
    if (!this.announced) return false;
    const { replicaId } = this.deps;
    const { rows } = await this.deps.query<{ id: string; url: string; secret: string; age_ms: number }>(
      `WITH me AS (
         INSERT INTO kelsingra_replicas (id, url, secret, version) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), url = EXCLUDED.url, secret = EXCLUDED.secret)
       SELECT id, url, secret, (extract(epoch FROM now() - heartbeat_at) * 1000)::int AS age_ms
       FROM kelsingra_replicas`,
      [replicaId, this.announced.url, this.announced.secret, VERSION],
    );
    const fetchedAt = Date.now();
    this.peers.clear();
    // The CTE's write is not visible to its own SELECT: this replica is added as just beaten.
    this.peers.set(replicaId, {
      peer: {
        id: replicaId,
        url: this.announced.url,
        secret: this.announced.secret,
        heartbeatAt: fetchedAt,
      },
      ageMs: 0,
      fetchedAt,
    });
    for (const r of rows) {
      if (r.id === replicaId) continue;
      this.peers.set(r.id, {
        peer: { id: r.id, url: r.url, secret: r.secret, heartbeatAt: fetchedAt - r.age_ms },
        ageMs: r.age_ms,
        fetchedAt,
      });
    }
    return true;
  }

  /**
   * A live peer; undefined when it is unknown or has stopped beating. While the database is
   * away nobody's heartbeat can be read, so every known peer counts as alive: a dead one
   * still fails fast, on connect.
   */
  peer(replicaId: string): Peer | undefined {
    const found = this.peers.get(replicaId);
    if (!found) return undefined;
    if (!this.deps.degraded() && !beating(found)) return undefined;
    return found.peer;
  }

  /** Whether the last read of the members had this replica at all (beating or not). */
  known(replicaId: string): boolean {
    return this.peers.has(replicaId);
  }

  /** The replicas as last read, for the store's health. */
  health(now = Date.now()): StoreHealth['replicas'] {
    return [...this.peers.values()].map(({ peer, ageMs, fetchedAt }) => ({
      id: peer.id,
      url: peer.url,
      heartbeatAt: new Date(fetchedAt - ageMs).toISOString(),
      self: peer.id === this.deps.replicaId,
      alive: beating({ ageMs, fetchedAt }, now),
    }));
  }

  /** Replicas silent for a minute are removed, and the tunnels they (or no replica) held with them. */
  async sweepDead(): Promise<void> {
    await this.deps.query(
      `WITH dead AS (DELETE FROM kelsingra_replicas WHERE heartbeat_at < now() - interval '1 minute' RETURNING id)
       DELETE FROM kelsingra_tunnels t WHERE t.replica_id IN (SELECT id FROM dead)
         OR NOT EXISTS (SELECT 1 FROM kelsingra_replicas r WHERE r.id = t.replica_id)`,
    );
  }

  /** A clean stop tells the others at once; a crash is noticed by the missing heartbeat. */
  async leave(log: Logger): Promise<void> {
    if (!this.announced) return;
    await this.deps
      .query('DELETE FROM kelsingra_replicas WHERE id = $1', [this.deps.replicaId])
      .catch((err) =>
        log.warn({ err: (err as Error).message }, 'could not remove this replica from the database'),
      );
  }

  async tunnelOpened(tunnel: TunnelRecord): Promise<void> {
    this.localTunnels.set(tunnel.clientKey, tunnel);
    await this.writeTunnel(tunnel);
  }

  async tunnelClosed(clientKey: string, replicaId: string): Promise<void> {
    this.localTunnels.delete(clientKey);
    // Only if no other replica has taken the tunnel over in the meantime.
    const { rows } = await this.deps.query<Row>(
      `WITH gone AS (DELETE FROM kelsingra_tunnels WHERE client_key = $1 AND replica_id = $2)
       UPDATE kelsingra_intercepts SET replica_id = '' WHERE client_key = $1 AND replica_id = $2 RETURNING *`,
      [clientKey, replicaId],
    );
    for (const row of rows) this.deps.applyUpsert(row);
  }

  async findTunnel(clientKey: string): Promise<TunnelRecord | undefined> {
    const { rows } = await this.deps.query<{
      client_key: string;
      replica_id: string;
      holder: string;
      token_name: string;
    }>(
      `SELECT t.* FROM kelsingra_tunnels t JOIN kelsingra_replicas r ON r.id = t.replica_id
       WHERE t.client_key = $1 AND r.heartbeat_at > now() - $2 * interval '1 millisecond'`,
      [clientKey, PEER_STALE_MS],
    );
    const row = rows[0];
    return row
      ? {
          clientKey: row.client_key,
          replicaId: row.replica_id,
          holder: row.holder,
          tokenName: row.token_name,
        }
      : undefined;
  }

  /** This replica's tunnels written again (after an outage, or after a failed write). */
  async rewriteTunnels(): Promise<void> {
    for (const tunnel of this.localTunnels.values()) await this.writeTunnel(tunnel);
  }

  private async writeTunnel(tunnel: TunnelRecord): Promise<void> {
    const { rows } = await this.deps.query<Row>(
      `WITH t AS (
         INSERT INTO kelsingra_tunnels (client_key, replica_id, holder, token_name) VALUES ($1, $2, $3, $4)
         ON CONFLICT (client_key) DO UPDATE SET replica_id = EXCLUDED.replica_id, holder = EXCLUDED.holder,
           connected_at = now()
         WHERE kelsingra_tunnels.token_name = EXCLUDED.token_name)
       UPDATE kelsingra_intercepts SET replica_id = $2, epoch = epoch + 1
       WHERE client_key = $1 AND replica_id <> $2 AND token_name = $4 RETURNING *`,
      [tunnel.clientKey, tunnel.replicaId, tunnel.holder, tunnel.tokenName],
    );
    for (const row of rows) this.deps.applyUpsert(row);
  }
}
