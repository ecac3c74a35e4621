/**
 * The embedded store for a single server agent: intercepts as leases held in memory.
 * One (service, tenant) has at most one holder; a lease that is not renewed lapses and
 * traffic falls back to the base service.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import {
  type Route,
  type RouteInput,
  RouteTable,
  type SetRouteResult,
  type UnrouteResult,
} from '../routing/route-table.js';
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
  type TunnelRecord,
} from './intercept-store.js';

export class MemoryInterceptStore extends EventEmitter<StoreEvents> implements InterceptStore {
  private readonly byKey = new InterceptIndex();
  private readonly byId = new Map<string, Intercept>();
  private readonly routes = new RouteTable();
  private readonly sweeper: NodeJS.Timeout;

  constructor(
    private readonly leaseTtlMs: number,
    private readonly now: () => number = Date.now,
  ) {
    super();
    this.sweeper = setInterval(() => this.sweep(), Math.min(1000, leaseTtlMs / 4));
    this.sweeper.unref();
  }

  get ttlMs(): number {
    return this.leaseTtlMs;
  }

  /** Checks expiry itself so a lapsed lease never routes, even between sweeps. */
  find(service: string, tenant: string): Intercept | undefined {
    const found = this.byKey.get(service, tenant);
    if (found && found.expiresAt <= this.now()) {
      this.remove(found, 'expired');
      return undefined;
    }
    return found;
  }

  get(id: string): Intercept | undefined {
    const found = this.byId.get(id);
    return found && found.expiresAt > this.now() ? found : undefined;
  }

  async lookup(id: string): Promise<Intercept | undefined> {
    return this.get(id);
  }

  async create(input: InterceptInput): Promise<CreateResult> {
    const existing = this.find(input.service, input.tenant);
    const now = this.now();
    if (existing) {
      if (existing.clientKey !== input.clientKey) return { ok: false, holder: existing };
      existing.expiresAt = now + this.leaseTtlMs;
      existing.localPort = input.localPort;
      existing.kafkaTopics = input.kafkaTopics;
      if (existing.replicaId !== input.replicaId) {
        existing.replicaId = input.replicaId;
        existing.epoch += 1;
      }
      return { ok: true, intercept: existing, renewed: true };
    }
    const intercept: Intercept = {
      ...input,
      id: input.id && !this.byId.has(input.id) ? input.id : `icp_${randomBytes(6).toString('hex')}`,
      epoch: 1,
      createdAt: now,
      expiresAt: now + this.leaseTtlMs,
    };
    this.byKey.set(intercept);
    this.byId.set(intercept.id, intercept);
    this.emit('created', intercept);
    return { ok: true, intercept, renewed: false };
  }

  async renew(
    clientKey: string,
    ids: string[],
    _replicaId?: string,
    tokenName?: string,
  ): Promise<{ renewed: string[]; missing: string[] }> {
    const renewed: string[] = [];
    const missing: string[] = [];
    const expiresAt = this.now() + this.leaseTtlMs;
    for (const id of ids) {
      const found = this.get(id);
      if (
        found &&
        found.clientKey === clientKey &&
        (tokenName === undefined || found.tokenName === tokenName)
      ) {
        found.expiresAt = expiresAt;
        renewed.push(id);
      } else {
        missing.push(id);
      }
    }
    return { renewed, missing };
  }

  async delete(id: string): Promise<Intercept | undefined> {
    const found = this.get(id);
    if (found) this.remove(found, 'left');
    return found;
  }

  list(): Intercept[] {
    this.sweep();
    return [...this.byId.values()];
  }

  // One process holds every tunnel: there is nothing to record or to find elsewhere.
  async tunnelOpened(_tunnel: TunnelRecord): Promise<void> {}
  async tunnelClosed(_clientKey: string): Promise<void> {}
  async findTunnel(_clientKey: string): Promise<TunnelRecord | undefined> {
    return undefined;
  }
  peer(_replicaId: string): Peer | undefined {
    return undefined;
  }
  async learnPeer(_replicaId: string): Promise<boolean> {
    return false;
  }

  findRoute(service: string, tenant: string): Route | undefined {
    return this.routes.find(service, tenant);
  }

  getRoute(id: string): Route | undefined {
    return this.routes.get(id);
  }

  listRoutes(): Route[] {
    return this.routes.list();
  }

  async setRoute(input: RouteInput): Promise<SetRouteResult> {
    const result = this.routes.set(input, this.now());
    this.announce(result);
    this.emit('routeSet', result.route);
    return result;
  }

  async unroute(id: string, tenants?: string[]): Promise<UnrouteResult> {
    const result = this.routes.unroute(id, tenants, this.now());
    this.announce(result);
    return result;
  }

  private announce(result: UnrouteResult): void {
    for (const route of result.updated) this.emit('routeSet', route);
    for (const route of result.removed) this.emit('routeRemoved', route);
  }

  health(): StoreHealth {
    return { kind: 'memory', state: 'ok' };
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
  }

  private sweep(): void {
    const now = this.now();
    for (const intercept of this.byId.values()) {
      if (intercept.expiresAt <= now) this.remove(intercept, 'expired');
    }
  }

  private remove(intercept: Intercept, reason: EndReason): void {
    this.byKey.delete(intercept);
    this.byId.delete(intercept.id);
    this.emit('ended', intercept, reason);
    if (reason === 'expired') this.emit('expired', intercept);
  }
}
