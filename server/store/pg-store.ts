/**
 * The intercept store for several replicas: PostgreSQL decides every change (one holder
 * per service and tenant by a unique constraint), and each replica routes from its own
 * copy in memory, kept current by LISTEN/NOTIFY and repaired by a periodic full reload.
 * While the database is away the copy keeps routing and the store reports itself degraded.
 */
import { EventEmitter } from 'node:events';
import pg from 'pg';
import type { Logger } from 'pino';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';
import type { TokenRecord } from '../auth/auth.js';
import type { Route, RouteInput, SetRouteResult, UnrouteResult } from '../routing/route-table.js';
import {
  type CreateResult,
  type Intercept,
  type InterceptInput,
  type InterceptStore,
  type Peer,
  type StoreEvents,
  type StoreHealth,
  StoreUnavailableError,
  type TunnelRecord,
} from './intercept-store.js';
import { type Notification, PgChangeFeed } from './pg-change-feed.js';
import { PgIntercepts } from './pg-intercepts.js';
import { migrate } from './pg-migrations.js';
import { PgReplicas } from './pg-replicas.js';
import { PgRoutes } from './pg-routes.js';
import { isConnectionError, redactDatabaseUrl } from './pg-rows.js';
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

/** learnPeer reads the members at most this often (besides the heartbeat's own reads). */
const MEMBER_READ_MIN_MS = 250;

export class PgInterceptStore extends EventEmitter<StoreEvents> implements InterceptStore {
  private readonly pool: pg.Pool;
  private readonly feed: PgChangeFeed;
  private readonly intercepts: PgIntercepts;
  private readonly routes: PgRoutes;
  private reconciliations = 0;
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
  /** A read of the members asked for by learnPeer, shared by the requests waiting on it. */
  private memberRead?: Promise<void>;
  private memberReadAt = 0;
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
    this.intercepts = new PgIntercepts({
      query: (text, values) => this.query(text, values),
      events: this,
      ttlMs: opts.ttlMs,
      refusal: () => {
        if (this.caughtUp) return undefined;
        return this.degradedSince === undefined
          ? 'catching up with PostgreSQL after an outage'
          : `PostgreSQL is unreachable: ${this.degradedReason}`;
      },
    });
    this.replicas = new PgReplicas({
      replicaId: opts.replicaId,
      query: (text, values) => this.query(text, values),
      applyUpsert: (row) => this.intercepts.applyUpsert(row),
      degraded: () => this.degradedSince !== undefined,
    });
    this.routes = new PgRoutes({
      pool: this.pool,
      query: (text, values) => this.query(text, values),
      events: this,
      degrade: (err) => this.degrade(err),
      applied: (change) => this.intercepts.applied(change),
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
    return this.intercepts.find(service, tenant);
  }

  get(id: string): Intercept | undefined {
    return this.intercepts.get(id);
  }

  async lookup(id: string): Promise<Intercept | undefined> {
    return this.intercepts.lookup(id);
  }

  list(): Intercept[] {
    return this.intercepts.list();
  }

  async create(input: InterceptInput): Promise<CreateResult> {
    return this.intercepts.create(input);
  }

  async renew(
    clientKey: string,
    ids: string[],
    replicaId: string,
    tokenName: string,
  ): Promise<{ renewed: string[]; missing: string[] }> {
    return this.intercepts.renew(clientKey, ids, replicaId, tokenName);
  }

  async delete(id: string): Promise<Intercept | undefined> {
    return this.intercepts.delete(id);
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

  async learnPeer(replicaId: string): Promise<boolean> {
    if (this.replicas.known(replicaId)) return false;
    // A replica that is gone for good stays unknown: its requests must not each cost a query.
    if (!this.memberRead && Date.now() - this.memberReadAt < MEMBER_READ_MIN_MS) return false;
    this.memberRead ??= this.heartbeat().finally(() => {
      this.memberRead = undefined;
      this.memberReadAt = Date.now();
    });
    await this.memberRead;
    return this.replicas.known(replicaId);
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
      Number(counts[0]?.intercepts) !== this.intercepts.size ||
      Number(counts[0]?.routes) !== this.routes.table.size;
    if (missed || this.reconciliations % FULL_RELOAD_EVERY === 0) {
      await this.reload();
      return;
    }
    // Change numbers are taken when a row is written, not when its transaction commits: a
    // write that committed late can sit below the watermark. Looking back a window of changes
    // catches those (rows already applied are skipped by their change number).
    const since = Math.max(0, this.intercepts.watermark - RECONCILE_OVERLAP);
    await this.intercepts.reloadSince(since);
    await this.routes.reloadSince(since);
    this.lastSyncAt = Date.now();
  }

  /** The whole tables, compared with the copy: repairs whatever notifications were lost. */
  private async reload(): Promise<void> {
    const startedAt = Date.now();
    await this.intercepts.reload(startedAt);
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
    await this.intercepts.sweep();
    await this.replicas.sweepDead();
  }

  /**
   * After the database comes back: renew what this replica's tunnels hold (leases could not
   * be renewed while it was away), then reload everything, and only then sweep again.
   */
  private async resync(): Promise<void> {
    const listener = this.feed.connection;
    this.sweepAfter = Date.now() + this.ttlMs / 2;
    await this.intercepts.extendLeases();
    await this.replicas.rewriteTunnels();
    await this.reload();
    // A listener lost again meanwhile has its own catch-up to do.
    if (this.feed.connection === listener) this.caughtUp = true;
    await this.heartbeat();
    this.log.info({ intercepts: this.intercepts.size }, 'resynchronised with PostgreSQL');
  }

  private onNotification(message: Notification): void {
    if (message.op === 'upsert') this.intercepts.applyUpsert(message.row);
    else if (message.op === 'delete') this.intercepts.applyDelete(message.row, message.reason);
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
