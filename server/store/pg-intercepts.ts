/**
 * Intercepts in the PostgreSQL store: the create, renew and delete SQL, and this replica's
 * copy of the intercepts table, with the change numbers and tombstones that keep an old
 * notice from reviving or overwriting a newer row.
 */
import { randomBytes } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import {
  type CreateResult,
  type EndReason,
  type Intercept,
  InterceptIndex,
  type InterceptInput,
  type StoreEvents,
  StoreUnavailableError,
} from './intercept-store.js';
import { type PgQuery, type Row, TOMBSTONE_MS, toIntercept } from './pg-rows.js';

export interface PgInterceptsDeps {
  query: PgQuery;
  events: EventEmitter<StoreEvents>;
  ttlMs: number;
  /** Why no lease may be decided just now (the store is catching up after an outage); undefined when it may. */
  refusal(): string | undefined;
}

export class PgIntercepts {
  private readonly byKey = new InterceptIndex();
  private readonly byId = new Map<string, Intercept>();
  /** The highest change number applied: incremental reloads read only rows above it. */
  private highest = 0;
  /** Per id: the row's change number (newest wins) and when this copy learnt of it. */
  private readonly seen = new Map<string, { change: number; at: number }>();
  /**
   * Ids ended here, with the change number they ended at: a late notice of the old row must
   * not revive it, while the same id created again (a client back after its lease lapsed)
   * comes with a newer change number and must.
   */
  private readonly tombstones = new Map<string, { change: number; at: number }>();

  constructor(private readonly deps: PgInterceptsDeps) {}

  /** The highest change number applied, of intercepts and routes alike (both tables share one sequence). */
  get watermark(): number {
    return this.highest;
  }

  /** A change number applied elsewhere (a route), for the watermark. */
  applied(change: number): void {
    this.highest = Math.max(this.highest, change);
  }

  get size(): number {
    return this.byId.size;
  }

  find(service: string, tenant: string): Intercept | undefined {
    return this.byKey.get(service, tenant);
  }

  get(id: string): Intercept | undefined {
    return this.byId.get(id);
  }

  list(): Intercept[] {
    return [...this.byId.values()];
  }

  async lookup(id: string): Promise<Intercept | undefined> {
    const known = this.byId.get(id);
    if (known) return known;
    const { rows } = await this.deps.query<Row>('SELECT * FROM kelsingra_intercepts WHERE id = $1', [id]);
    return rows[0] ? this.applyUpsert(rows[0]) : undefined;
  }

  async create(input: InterceptInput): Promise<CreateResult> {
    try {
      return await this.decideCreate(input);
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err;
      // A client re-asserting what this copy knows it holds (it reconnected during an outage)
      // is confirmed from memory, as renewals are; the database hears of it when it is back.
      const held = this.find(input.service, input.tenant);
      if (held && held.clientKey === input.clientKey && held.tokenName === input.tokenName) {
        held.replicaId = input.replicaId;
        held.localPort = input.localPort;
        return { ok: true, intercept: held, renewed: true };
      }
      throw err;
    }
  }

  private async decideCreate(input: InterceptInput): Promise<CreateResult> {
    // Just back from an outage, leases in the database may look lapsed until the catch-up
    // has given them their extra term: no lease is handed to someone else before that.
    const refusal = this.deps.refusal();
    if (refusal !== undefined) throw new StoreUnavailableError(refusal);
    const fresh = `icp_${randomBytes(6).toString('hex')}`;
    // A client back after its lease lapsed asks for its old id; another intercept holding that
    // id (it was never its to ask for, then) makes the insert fail on the primary key.
    const id = input.id ?? fresh;
    // One statement decides: a new (service, tenant) is inserted; the same client re-asserting
    // keeps its id (and its created_at, which is how `renewed` is told apart below); another
    // client's lapsed lease is taken over under a new id; a live lease held by someone else is
    // left alone and no row comes back.
    const result = await this.deps
      .query<Row & { renewed: boolean }>(
        `INSERT INTO kelsingra_intercepts AS i
         (id, service, tenant, holder, token_name, client_key, local_port, replica_id, expires_at, kafka_topics)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + $9 * interval '1 millisecond', $10)
       ON CONFLICT (service, tenant) DO UPDATE SET
         id = CASE WHEN i.client_key = EXCLUDED.client_key THEN i.id ELSE EXCLUDED.id END,
         created_at = CASE WHEN i.client_key = EXCLUDED.client_key THEN i.created_at ELSE now() END,
         epoch = i.epoch + CASE WHEN i.replica_id = EXCLUDED.replica_id THEN 0 ELSE 1 END,
         holder = EXCLUDED.holder, token_name = EXCLUDED.token_name, client_key = EXCLUDED.client_key,
         local_port = EXCLUDED.local_port, replica_id = EXCLUDED.replica_id, expires_at = EXCLUDED.expires_at,
         kafka_topics = EXCLUDED.kafka_topics
       WHERE i.client_key = EXCLUDED.client_key OR i.expires_at <= now()
       RETURNING *, created_at < now() AS renewed`,
        [
          id,
          input.service,
          input.tenant,
          input.holder,
          input.tokenName,
          input.clientKey,
          input.localPort,
          input.replicaId,
          this.deps.ttlMs,
          input.kafkaTopics,
        ],
      )
      .catch((err: { code?: string; constraint?: string }) => {
        if (input.id && err.code === '23505' && err.constraint === 'kelsingra_intercepts_pkey')
          return undefined;
        throw err;
      });
    if (!result) return this.decideCreate({ ...input, id: undefined });
    const row = result.rows[0];
    if (row) {
      const { renewed, ...fields } = row;
      const intercept = this.applyUpsert(fields);
      return { ok: true, intercept, renewed };
    }
    const holder = await this.deps.query<Row>(
      'SELECT * FROM kelsingra_intercepts WHERE service = $1 AND tenant = $2',
      [input.service, input.tenant],
    );
    const held = holder.rows[0];
    // Gone between the two statements (left or swept): the way is free now.
    if (!held) return this.decideCreate(input);
    return { ok: false, holder: toIntercept(held) };
  }

  async renew(
    clientKey: string,
    ids: string[],
    replicaId: string,
    tokenName: string,
  ): Promise<{ renewed: string[]; missing: string[] }> {
    let renewedIds: string[];
    try {
      const { rows } = await this.deps.query<Row>(
        `UPDATE kelsingra_intercepts SET
           expires_at = now() + $3 * interval '1 millisecond',
           epoch = epoch + CASE WHEN replica_id = $4 THEN 0 ELSE 1 END,
           replica_id = $4
         WHERE id = ANY($1) AND client_key = $2 AND token_name = $5
         RETURNING *`,
        [ids, clientKey, this.deps.ttlMs, replicaId, tokenName],
      );
      renewedIds = rows.map((r) => this.applyUpsert(r).id);
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err;
      // Without the database nothing can expire either: what this copy holds stays held, and
      // the client is not told its lease is lost because of an outage it did not cause.
      renewedIds = ids.filter((id) => {
        const i = this.byId.get(id);
        return i?.clientKey === clientKey && i.tokenName === tokenName;
      });
      const expiresAt = Date.now() + this.deps.ttlMs;
      for (const id of renewedIds) (this.byId.get(id) as Intercept).expiresAt = expiresAt;
    }
    const renewed = new Set(renewedIds);
    return { renewed: [...renewed], missing: ids.filter((id) => !renewed.has(id)) };
  }

  async delete(id: string): Promise<Intercept | undefined> {
    const { rows } = await this.deps.query<Row>(
      'DELETE FROM kelsingra_intercepts WHERE id = $1 RETURNING *',
      [id],
    );
    const row = rows[0];
    return row ? this.applyDelete(row, 'left') : undefined;
  }

  /** Deletes the lapsed leases; each one ends here and is announced as expired. */
  async sweep(): Promise<void> {
    const { rows } = await this.deps.query<Row>(
      'DELETE FROM kelsingra_intercepts WHERE expires_at < now() RETURNING *',
    );
    for (const row of rows) this.deps.events.emit('expired', this.applyDelete(row, 'expired'));
  }

  /**
   * Nobody could renew while the database was away: every lease gets one more term, so
   * no client loses its intercept (to the sweep, or to another client's create) for an
   * outage it did not cause. A client that vanished meanwhile lapses one lease later.
   */
  async extendLeases(): Promise<void> {
    await this.deps.query(
      `UPDATE kelsingra_intercepts SET expires_at = greatest(expires_at, now() + $1 * interval '1 millisecond')`,
      [this.deps.ttlMs],
    );
  }

  /** Intercepts changed above a change number, for the incremental repair. */
  async reloadSince(change: number): Promise<void> {
    const { rows } = await this.deps.query<Row>('SELECT * FROM kelsingra_intercepts WHERE change > $1', [
      change,
    ]);
    for (const row of rows) this.applyUpsert(row);
  }

  /**
   * The whole table (ids and change numbers, then the rows that differ), compared with the
   * copy; an intercept learnt of after startedAt is not the snapshot's to drop.
   */
  async reload(startedAt: number): Promise<void> {
    const { rows: versions } = await this.deps.query<{ id: string; change: string }>(
      'SELECT id, change FROM kelsingra_intercepts',
    );
    const present = new Set<string>();
    const stale: string[] = [];
    for (const v of versions) {
      present.add(v.id);
      if ((this.seen.get(v.id)?.change ?? -1) < Number(v.change)) stale.push(v.id);
    }
    for (let i = 0; i < stale.length; i += 5_000) {
      const { rows } = await this.deps.query<Row>('SELECT * FROM kelsingra_intercepts WHERE id = ANY($1)', [
        stale.slice(i, i + 5_000),
      ]);
      for (const row of rows) this.applyUpsert(row);
    }
    for (const intercept of [...this.byId.values()]) {
      // Learnt of after the snapshot was taken: the snapshot cannot speak for it.
      if (present.has(intercept.id) || (this.seen.get(intercept.id)?.at ?? 0) >= startedAt) continue;
      this.removeLocal(intercept, intercept.expiresAt <= Date.now() ? 'expired' : 'left');
    }
    for (const [id, { at }] of this.tombstones) if (startedAt - at > TOMBSTONE_MS) this.tombstones.delete(id);
  }

  /** A row as a query or an upsert notice carries it, applied to the copy unless the copy knows a newer one. */
  applyUpsert(row: Row): Intercept {
    const change = Number(row.change);
    this.applied(change);
    const incoming = toIntercept(row);
    const current = this.byId.get(row.id);
    if (current) {
      const seen = this.seen.get(row.id);
      if (!seen || seen.change < change) {
        Object.assign(current, incoming);
        this.seen.set(row.id, { change, at: seen?.at ?? Date.now() });
      }
      return current;
    }
    const tombstone = this.tombstones.get(row.id);
    if (tombstone && tombstone.change >= change) return incoming;
    this.tombstones.delete(row.id);
    const previous = this.byKey.get(incoming.service, incoming.tenant);
    if (previous) {
      // Another id for the same (service, tenant): the newer row wins, the older lease lapsed.
      if ((this.seen.get(previous.id)?.change ?? 0) > change) return incoming;
      this.removeLocal(previous, 'expired');
    }
    this.byKey.set(incoming);
    this.byId.set(incoming.id, incoming);
    this.seen.set(incoming.id, { change, at: Date.now() });
    this.deps.events.emit('created', incoming);
    return incoming;
  }

  /** A deleted row; one this copy does not hold is tombstoned, so a late upsert notice cannot revive it. */
  applyDelete(row: Row, reason: EndReason): Intercept {
    const current = this.byId.get(row.id);
    if (current) {
      this.removeLocal(current, reason);
      return current;
    }
    this.tombstones.set(row.id, { change: Number(row.change), at: Date.now() });
    return toIntercept(row);
  }

  private removeLocal(intercept: Intercept, reason: EndReason): void {
    this.byKey.delete(intercept);
    this.byId.delete(intercept.id);
    this.tombstones.set(intercept.id, { change: this.seen.get(intercept.id)?.change ?? 0, at: Date.now() });
    this.seen.delete(intercept.id);
    this.deps.events.emit('ended', intercept, reason);
  }
}
