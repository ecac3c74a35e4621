/**
 * The intercept store for several replicas: PostgreSQL decides every change (one holder
 * per service and tenant by a unique constraint), and each replica routes from its own
 * copy in memory, kept current by LISTEN/NOTIFY and repaired by a periodic full reload.
 * While the database is away the copy keeps routing and the store reports itself degraded.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import pg from 'pg';
import type { Logger } from 'pino';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';
import type { TokenRecord } from '../auth/auth.js';
import type { Route, RouteInput, SetRouteResult, UnrouteResult } from '../routing/route-table.js';
import {
  type CreateResult,
  type EndReason,
  type Intercept,
  InterceptIndex,
  type InterceptInput,
  type InterceptStore,
  type Peer,
  type StoreEvents,
  type StoreHealth,
  StoreUnavailableError,
  type TunnelRecord,
} from './intercept-store.js';
import { type Notification, PgChangeFeed } from './pg-change-feed.js';
import { migrate } from './pg-migrations.js';
import { PgReplicas } from './pg-replicas.js';
import { PgRoutes } from './pg-routes.js';
import { isConnectionError, type Row, redactDatabaseUrl, TOMBSTONE_MS, toIntercept } from './pg-rows.js';
import { loadTokens, syncTokens } from './pg-tokens.js';

export { isConnectionError, redactDatabaseUrl } from './pg-rows.js';

export interface PgStoreOptions {
  databaseUrl: string;
  replicaId: string;
  ttlMs: number;
  log: Logger;
  /** How often this replica proves it is alive and refreshes its list of peers. */
  heartbeatMs?: number;
  /** How often the whole table is reloaded, to repair anything a lost notification missed. */
  reconcileMs?: number;
}

/** Every this many reconciliations, the whole intercepts table is compared, not just what changed. */
const FULL_RELOAD_EVERY = 12;

/** How many change numbers below the watermark each incremental repair reads again. */
const RECONCILE_OVERLAP = 200;

export class PgInterceptStore extends EventEmitter<StoreEvents> implements InterceptStore {
  private readonly pool: pg.Pool;
  private readonly feed: PgChangeFeed;
  private readonly byKey = new InterceptIndex();
  private readonly byId = new Map<string, Intercept>();
  private readonly routes: PgRoutes;
  /** The highest change number applied: incremental reloads read only rows above it. */
  private watermark = 0;
  private reconciliations = 0;
  /** Per id: the row's change number (newest wins) and when this copy learnt of it. */
  private readonly seen = new Map<string, { change: number; at: number }>();
  /**
   * Ids ended here, with the change number they ended at: a late notice of the old row must
   * not revive it, while the same id created again (a client back after its lease lapsed)
   * comes with a newer change number and must.
   */
  private readonly tombstones = new Map<string, { change: number; at: number }>();
  private readonly replicas: PgReplicas;
  private readonly timers: NodeJS.Timeout[] = [];
  /** How often this replica beats and reads everyone's beats: a peer started since is unseen for that long. */
  readonly heartbeatMs: number;
  private readonly reconcileMs: number;
  private readonly log: Logger;
  private degradedSince?: number;
  private degradedReason?: string;
  /** False from losing the notification connection until the reload after it is back. */
  private caughtUp = true;
  private lastSyncAt?: number;
  /** No sweeping of lapsed leases until clients had a chance to renew after a (re)connection. */
  private sweepAfter = 0;
  private closed = false;

  private constructor(private readonly opts: PgStoreOptions) {
    super();
    this.log = opts.log;
    this.heartbeatMs = opts.heartbeatMs ?? 1_000;
    this.reconcileMs = opts.reconcileMs ?? 5_000;
    this.pool = new pg.Pool({
      connectionString: opts.databaseUrl,
      max: 4,
      connectionTimeoutMillis: 2_000,
      query_timeout: 5_000,
      idleTimeoutMillis: 30_000,
      keepAlive: true,
    });
    // An idle connection dropped by a database restart is reported here; the next query reconnects.
    this.pool.on('error', (err) => this.degrade(err));
    this.feed = new PgChangeFeed({
      databaseUrl: opts.databaseUrl,
      log: opts.log,
      notified: (message) => this.onNotification(message),
      lost: () => {
        this.caughtUp = false;
      },
      closed: () => this.closed,
      degrade: (err) => this.degrade(err),
      catchUp: () => this.resync(),
    });
    this.replicas = new PgReplicas({
      replicaId: opts.replicaId,
      query: (text, values) => this.query(text, values),
      applyUpsert: (row) => this.applyUpsert(row),
      degraded: () => this.degradedSince !== undefined,
    });
    this.routes = new PgRoutes({
      pool: this.pool,
      query: (text, values) => this.query(text, values),
      events: this,
      degrade: (err) => this.degrade(err),
      applied: (change) => {
        this.watermark = Math.max(this.watermark, change);
      },
    });
  }

  /** Connects, migrates, loads the table and starts listening. Fails with exit 7 if the database is unreachable. */
  static async open(opts: PgStoreOptions): Promise<PgInterceptStore> {
    const store = new PgInterceptStore(opts);
    try {
      await migrate(store.pool, opts.log);
      await store.feed.connect();
      await store.reload();
    } catch (err) {
      await store.close();
      throw new KelsingraError(
        `cannot use the PostgreSQL database at ${redactDatabaseUrl(opts.databaseUrl)}: ${(err as Error).message}`,
        ExitCode.config,
        'check --database-url (KELSINGRA_DATABASE_URL), that PostgreSQL is running, and that this user may create tables',
      );
    }
    return store;
  }

  get ttlMs(): number {
    return this.opts.ttlMs;
  }

  /**
   * Makes this replica known to the others (its data-port URL and the secret they relay
   * with) and starts its heartbeats, lease sweeping and reconciliation.
   */
  async announce(url: string): Promise<void> {
    this.replicas.announce(url);
    await this.heartbeat();
    this.sweepAfter = Date.now() + this.ttlMs / 2;
    const every = (ms: number, fn: () => Promise<void>) => {
      const timer = setInterval(() => {
        fn().catch((err) => this.failed(err));
      }, ms);
      timer.unref();
      this.timers.push(timer);
    };
    every(this.heartbeatMs, () => this.heartbeat());
    every(Math.min(1_000, this.ttlMs / 4), () => this.sweep());
    every(this.reconcileMs, () => this.reconcile());
  }

  /** The secret peers must present when they relay a request to this replica. */
  get relaySecret(): string | undefined {
    return this.replicas.relaySecret;
  }

  find(service: string, tenant: string): Intercept | undefined {
    return this.byKey.get(service, tenant);
  }

  get(id: string): Intercept | undefined {
    return this.byId.get(id);
  }

  async lookup(id: string): Promise<Intercept | undefined> {
    const known = this.byId.get(id);
    if (known) return known;
    const { rows } = await this.query<Row>('SELECT * FROM kelsingra_intercepts WHERE id = $1', [id]);
    return rows[0] ? this.applyUpsert(rows[0]) : undefined;
  }

  list(): Intercept[] {
    return [...this.byId.values()];
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
    if (!this.caughtUp)
      throw new StoreUnavailableError(
        this.degradedSince === undefined
          ? 'catching up with PostgreSQL after an outage'
          : `PostgreSQL is unreachable: ${this.degradedReason}`,
      );
    const fresh = `icp_${randomBytes(6).toString('hex')}`;
    // A client back after its lease lapsed asks for its old id; another intercept holding that
    // id (it was never its to ask for, then) makes the insert fail on the primary key.
    const id = input.id ?? fresh;
    // One statement decides: a new (service, tenant) is inserted; the same client re-asserting
    // keeps its id (and its created_at, which is how `renewed` is told apart below); another
    // client's lapsed lease is taken over under a new id; a live lease held by someone else is
    // left alone and no row comes back.
    const result = await this.query<Row & { renewed: boolean }>(
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
        this.ttlMs,
        input.kafkaTopics,
      ],
    ).catch((err: { code?: string; constraint?: string }) => {
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
    const holder = await this.query<Row>(
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
      const { rows } = await this.query<Row>(
        `UPDATE kelsingra_intercepts SET
           expires_at = now() + $3 * interval '1 millisecond',
           epoch = epoch + CASE WHEN replica_id = $4 THEN 0 ELSE 1 END,
           replica_id = $4
         WHERE id = ANY($1) AND client_key = $2 AND token_name = $5
         RETURNING *`,
        [ids, clientKey, this.ttlMs, replicaId, tokenName],
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
      const expiresAt = Date.now() + this.ttlMs;
      for (const id of renewedIds) (this.byId.get(id) as Intercept).expiresAt = expiresAt;
    }
    const renewed = new Set(renewedIds);
    return { renewed: [...renewed], missing: ids.filter((id) => !renewed.has(id)) };
  }

  async delete(id: string): Promise<Intercept | undefined> {
    const { rows } = await this.query<Row>('DELETE FROM kelsingra_intercepts WHERE id = $1 RETURNING *', [
      id,
    ]);
    const row = rows[0];
    return row ? this.applyDelete(row, 'left') : undefined;
  }

  async tunnelOpened(tunnel: TunnelRecord): Promise<void> {
    await this.replicas.tunnelOpened(tunnel);
  }

  async tunnelClosed(clientKey: string, replicaId: string): Promise<void> {
    await this.replicas.tunnelClosed(clientKey, replicaId);
  }

  async findTunnel(clientKey: string): Promise<TunnelRecord | undefined> {
    return this.replicas.findTunnel(clientKey);
  }

  /**
   * A live peer; undefined when it is unknown or has stopped beating. While the database is
   * away nobody's heartbeat can be read, so every known peer counts as alive: a dead one
   * still fails fast, on connect.
   */
  peer(replicaId: string): Peer | undefined {
    return this.replicas.peer(replicaId);
  }

  findRoute(service: string, tenant: string): Route | undefined {
    return this.routes.table.find(service, tenant);
  }

  getRoute(id: string): Route | undefined {
    return this.routes.table.get(id);
  }

  listRoutes(): Route[] {
    return this.routes.table.list();
  }

  async setRoute(input: RouteInput): Promise<SetRouteResult> {
    return this.routes.set(input);
  }

  async unroute(id: string, tenants?: string[]): Promise<UnrouteResult> {
    return this.routes.unroute(id, tenants);
  }

  health(): StoreHealth {
    const now = Date.now();
    return {
      kind: 'postgres',
      state: this.degradedSince === undefined ? 'ok' : 'degraded',
      error: this.degradedReason,
      since: this.degradedSince === undefined ? undefined : new Date(this.degradedSince).toISOString(),
      lastSyncAt: this.lastSyncAt === undefined ? undefined : new Date(this.lastSyncAt).toISOString(),
      replicas: this.replicas.health(now),
    };
  }

  /**
   * Makes the configured tokens the shared set (stored as sha256 digests only). A replica
   * started without tokens uses the set the others stored.
   */
  async syncTokens(tokens: TokenRecord[]): Promise<void> {
    await syncTokens(this.pool, tokens);
  }

  async loadTokens(): Promise<TokenRecord[]> {
    return loadTokens((text, values) => this.query(text, values));
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const timer of this.timers) clearInterval(timer);
    await this.replicas.leave(this.log);
    await this.feed.close();
    await this.pool.end();
  }

  private async query<R extends pg.QueryResultRow>(text: string, values: unknown[] = []) {
    try {
      return await this.pool.query<R>(text, values);
    } catch (err) {
      if (!isConnectionError(err)) throw err;
      this.degrade(err);
      throw new StoreUnavailableError(`PostgreSQL is unreachable: ${(err as Error).message}`);
    }
  }

  private applyUpsert(row: Row): Intercept {
    const change = Number(row.change);
    this.watermark = Math.max(this.watermark, change);
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
    this.emit('created', incoming);
    return incoming;
  }

  private applyDelete(row: Row, reason: EndReason): Intercept {
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
    this.emit('ended', intercept, reason);
  }

  /**
   * The periodic repair, in case a notification was lost: rows changed since the highest
   * change applied, every time; the whole table (ids and change numbers, then the rows that
   * differ) when the row counts disagree with the copy, and every FULL_RELOAD_EVERY times. Notifications are not lost while the listening
   * connection stays up, and losing it triggers a full reload, so this is a safety net that
   * must stay cheap with a hundred thousand intercepts.
   */
  private async reconcile(): Promise<void> {
    this.reconciliations += 1;
    // A row deleted without a notice shows as a count that differs from the copy's: counting
    // is cheap for the database and costs this process nothing, unlike reading every id.
    const { rows: counts } = await this.query<{ intercepts: string; routes: string }>(
      `SELECT (SELECT count(*) FROM kelsingra_intercepts) AS intercepts,
              (SELECT count(*) FROM kelsingra_routes) AS routes`,
    );
    const missed =
      Number(counts[0]?.intercepts) !== this.byId.size ||
      Number(counts[0]?.routes) !== this.routes.table.size;
    if (missed || this.reconciliations % FULL_RELOAD_EVERY === 0) {
      await this.reload();
      return;
    }
    // Change numbers are taken when a row is written, not when its transaction commits: a
    // write that committed late can sit below the watermark. Looking back a window of changes
    // catches those (rows already applied are skipped by their change number).
    const since = Math.max(0, this.watermark - RECONCILE_OVERLAP);
    const { rows } = await this.query<Row>('SELECT * FROM kelsingra_intercepts WHERE change > $1', [since]);
    for (const row of rows) this.applyUpsert(row);
    await this.routes.reloadSince(since);
    this.lastSyncAt = Date.now();
  }

  /** The whole tables, compared with the copy: repairs whatever notifications were lost. */
  private async reload(): Promise<void> {
    const startedAt = Date.now();
    const { rows: versions } = await this.query<{ id: string; change: string }>(
      'SELECT id, change FROM kelsingra_intercepts',
    );
    const present = new Set<string>();
    const stale: string[] = [];
    for (const v of versions) {
      present.add(v.id);
      if ((this.seen.get(v.id)?.change ?? -1) < Number(v.change)) stale.push(v.id);
    }
    for (let i = 0; i < stale.length; i += 5_000) {
      const { rows } = await this.query<Row>('SELECT * FROM kelsingra_intercepts WHERE id = ANY($1)', [
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
    await this.routes.reload(startedAt);
    this.emit('tokens', await this.loadTokens());
    this.lastSyncAt = Date.now();
  }

  private async heartbeat(): Promise<void> {
    if (!(await this.replicas.heartbeat())) return;
    if (this.feed.listening && this.caughtUp) this.recover();
  }

  private async sweep(): Promise<void> {
    if (this.degradedSince !== undefined || Date.now() < this.sweepAfter) return;
    const { rows } = await this.query<Row>(
      'DELETE FROM kelsingra_intercepts WHERE expires_at < now() RETURNING *',
    );
    for (const row of rows) this.emit('expired', this.applyDelete(row, 'expired'));
    await this.replicas.sweepDead();
  }

  /**
   * After the database comes back: renew what this replica's tunnels hold (leases could not
   * be renewed while it was away), then reload everything, and only then sweep again.
   */
  private async resync(): Promise<void> {
    const listener = this.feed.connection;
    this.sweepAfter = Date.now() + this.ttlMs / 2;
    // Nobody could renew while the database was away: every lease gets one more term, so
    // no client loses its intercept (to the sweep, or to another client's create) for an
    // outage it did not cause. A client that vanished meanwhile lapses one lease later.
    await this.query(
      `UPDATE kelsingra_intercepts SET expires_at = greatest(expires_at, now() + $1 * interval '1 millisecond')`,
      [this.ttlMs],
    );
    await this.replicas.rewriteTunnels();
    await this.reload();
    // A listener lost again meanwhile has its own catch-up to do.
    if (this.feed.connection === listener) this.caughtUp = true;
    await this.heartbeat();
    this.log.info({ intercepts: this.byId.size }, 'resynchronised with PostgreSQL');
  }

  private onNotification(message: Notification): void {
    if (message.op === 'upsert') this.applyUpsert(message.row);
    else if (message.op === 'delete') this.applyDelete(message.row, message.reason);
    else if (message.op === 'route')
      this.routes.notified(message.id, message.change, message.deleted)?.catch((err) => this.failed(err));
    else if (message.op === 'tokens') {
      this.loadTokens().then(
        (tokens) => this.emit('tokens', tokens),
        (err) => this.failed(err),
      );
    }
  }

  /** A background step failed: an outage is already marked degraded; anything else is a bug to log each time. */
  private failed(err: unknown): void {
    if (err instanceof StoreUnavailableError) return;
    this.log.error({ err }, 'intercept store background step failed');
  }

  private degrade(err: unknown): void {
    const reason = (err as Error).message ?? String(err);
    if (this.degradedSince === undefined) {
      this.degradedSince = Date.now();
      this.log.warn({ err: reason }, 'PostgreSQL unreachable; routing from memory until it is back');
    }
    this.degradedReason = reason;
  }

  private recover(): void {
    if (this.degradedSince === undefined) return;
    this.log.info({ degradedForMs: Date.now() - this.degradedSince }, 'PostgreSQL reachable again');
    this.degradedSince = undefined;
    this.degradedReason = undefined;
    // A tunnel opened or closed during the outage was not recorded; the listener may never have dropped.
    this.replicas.rewriteTunnels().catch((err) => this.failed(err));
  }
}
