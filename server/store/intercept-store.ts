/**
 * What every intercept store offers the server agent. Routing reads (`find`, `get`,
 * `list`) are synchronous and served from memory on every replica; changes are
 * asynchronous because with PostgreSQL they are decided by the database.
 */
import { createHash } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import type { StoreHealth } from '../../src/shared/protocol.js';
import type { TokenRecord } from '../auth/auth.js';
import type { Route, RouteInput, SetRouteResult, UnrouteResult } from '../routing/route-table.js';

export type { StoreHealth } from '../../src/shared/protocol.js';

export interface Intercept {
  id: string;
  service: string;
  tenant: string;
  /** Who holds it, as the client described itself (user@host), for conflict messages. */
  holder: string;
  /** Name of the token that created it. */
  tokenName: string;
  /** sha256 of the client id: the client id is a credential, so stores never keep it. */
  clientKey: string;
  localPort: number;
  /** Dev topics whose messages for this tenant go to the developer (empty: HTTP only). */
  kafkaTopics: string[];
  /** The replica whose tunnel carries this intercept's traffic. */
  replicaId: string;
  /** Bumped whenever the intercept moves to another replica: how often its tunnel changed hands. */
  epoch: number;
  createdAt: number;
  expiresAt: number;
}

export type InterceptInput = Pick<
  Intercept,
  'service' | 'tenant' | 'holder' | 'tokenName' | 'clientKey' | 'localPort' | 'kafkaTopics' | 'replicaId'
> & {
  /** The id to create it under, if no intercept has it now (a client back after its lease lapsed). */
  id?: string;
};

export type CreateResult =
  | { ok: true; intercept: Intercept; renewed: boolean }
  | { ok: false; holder: Intercept };

export type EndReason = 'left' | 'expired';

/** Where an open tunnel is, for a replica that is asked to create an intercept on it. */
export interface TunnelRecord {
  clientKey: string;
  replicaId: string;
  holder: string;
  tokenName: string;
}

/** Another replica, as this one reaches it for cross-replica delivery. */
export interface Peer {
  id: string;
  /** Base URL of the peer's data port. */
  url: string;
  /** Proves to the peer that a relayed request comes from a replica. */
  secret: string;
  heartbeatAt: number;
}

export interface StoreEvents {
  created: [Intercept];
  ended: [Intercept, EndReason];
  /**
   * A lapsed lease this process ended: emitted once per intercept, by the replica whose sweep
   * removed it (every replica emits `ended`), so the expiry is recorded once.
   */
  expired: [Intercept];
  /** A tenant route was created or changed (on any replica). */
  routeSet: [Route];
  routeRemoved: [Route];
  /** The shared set of tokens changed (only stores that share tokens between replicas emit it). */
  tokens: [TokenRecord[]];
}

export interface InterceptStore extends EventEmitter<StoreEvents> {
  readonly ttlMs: number;
  /** The hot-path lookup, from memory. */
  find(service: string, tenant: string): Intercept | undefined;
  get(id: string): Intercept | undefined;
  /** Like get, but asks the shared state when this copy does not know the id (yet). */
  lookup(id: string): Promise<Intercept | undefined>;
  list(): Intercept[];
  /** Re-asserting an intercept the same client already holds renews it (reconnects rely on this). */
  create(input: InterceptInput): Promise<CreateResult>;
  /** Extends the leases `ids` that this client holds under this token. */
  renew(
    clientKey: string,
    ids: string[],
    replicaId: string,
    tokenName: string,
  ): Promise<{ renewed: string[]; missing: string[] }>;
  delete(id: string): Promise<Intercept | undefined>;
  /** A tunnel opened here: its intercepts now route to this replica. */
  tunnelOpened(tunnel: TunnelRecord): Promise<void>;
  tunnelClosed(clientKey: string, replicaId: string): Promise<void>;
  /** A tunnel open on any replica (this one's are found in the hub first). */
  findTunnel(clientKey: string): Promise<TunnelRecord | undefined>;
  peer(replicaId: string): Peer | undefined;
  /**
   * A replica this copy has never heard of (it started after the last read of the members):
   * read the members again, once for every caller waiting meanwhile. Whether it is known now.
   */
  learnPeer(replicaId: string): Promise<boolean>;
  /** The tenant route for (service, tenant), from memory: consulted when no intercept matches. */
  findRoute(service: string, tenant: string): Route | undefined;
  getRoute(id: string): Route | undefined;
  listRoutes(): Route[];
  /** The route to these targets names exactly these tenants; any of them routed elsewhere in the service moves. */
  setRoute(input: RouteInput): Promise<SetRouteResult>;
  /** Takes `tenants` (every one, when undefined) out of route `id`; a route left empty is deleted. */
  unroute(id: string, tenants?: string[]): Promise<UnrouteResult>;
  health(): StoreHealth;
  close(): Promise<void>;
}

/** Raised when the store cannot decide a change now (the database is unreachable). */
export class StoreUnavailableError extends Error {
  override readonly name = 'StoreUnavailableError';
}

export function clientKeyOf(clientId: string): string {
  return createHash('sha256').update(clientId).digest('hex');
}

/**
 * Intercepts by service, then tenant: the data plane's per-request lookup is two reads of
 * small maps, with no key string built per request (measured: about half the time of one
 * read keyed by a joined string, which must be built and hashed every time).
 */
export class InterceptIndex {
  private readonly byService = new Map<string, Map<string, Intercept>>();

  get(service: string, tenant: string): Intercept | undefined {
    return this.byService.get(service)?.get(tenant);
  }

  set(intercept: Intercept): void {
    let tenants = this.byService.get(intercept.service);
    if (!tenants) {
      tenants = new Map();
      this.byService.set(intercept.service, tenants);
    }
    tenants.set(intercept.tenant, intercept);
  }

  /** Removes this intercept, if it is the one indexed for its (service, tenant). */
  delete(intercept: Intercept): void {
    const tenants = this.byService.get(intercept.service);
    if (tenants?.get(intercept.tenant) !== intercept) return;
    tenants.delete(intercept.tenant);
    if (tenants.size === 0) this.byService.delete(intercept.service);
  }
}
