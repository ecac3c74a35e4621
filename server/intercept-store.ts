/**
 * Intercepts as leases, held in memory. One (service, tenant) has at most one holder; a
 * lease that is not renewed lapses and traffic falls back to the base service.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';

export interface Intercept {
  id: string;
  service: string;
  tenant: string;
  /** Who holds it, as the client described itself (user@host), for conflict messages. */
  holder: string;
  /** Name of the token that created it. */
  tokenName: string;
  clientId: string;
  localPort: number;
  createdAt: number;
  expiresAt: number;
}

export type CreateResult =
  | { ok: true; intercept: Intercept; renewed: boolean }
  | { ok: false; holder: Intercept };

export type EndReason = 'left' | 'expired';

const key = (service: string, tenant: string) => `${service}\u0000${tenant}`;

export class InterceptStore extends EventEmitter<{ ended: [Intercept, EndReason] }> {
  private readonly byKey = new Map<string, Intercept>();
  private readonly byId = new Map<string, Intercept>();
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

  /** The hot-path lookup: checks expiry itself so a lapsed lease never routes, even between sweeps. */
  find(service: string, tenant: string): Intercept | undefined {
    const found = this.byKey.get(key(service, tenant));
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

  /** Re-asserting an intercept the same client already holds renews it (reconnects rely on this). */
  create(input: Omit<Intercept, 'id' | 'createdAt' | 'expiresAt'>): CreateResult {
    const existing = this.find(input.service, input.tenant);
    const now = this.now();
    if (existing) {
      if (existing.clientId !== input.clientId) return { ok: false, holder: existing };
      existing.expiresAt = now + this.leaseTtlMs;
      existing.localPort = input.localPort;
      return { ok: true, intercept: existing, renewed: true };
    }
    const intercept: Intercept = {
      ...input,
      id: `icp_${randomBytes(6).toString('hex')}`,
      createdAt: now,
      expiresAt: now + this.leaseTtlMs,
    };
    this.byKey.set(key(intercept.service, intercept.tenant), intercept);
    this.byId.set(intercept.id, intercept);
    return { ok: true, intercept, renewed: false };
  }

  renew(clientId: string, ids: string[]): { renewed: string[]; missing: string[] } {
    const renewed: string[] = [];
    const missing: string[] = [];
    const expiresAt = this.now() + this.leaseTtlMs;
    for (const id of ids) {
      const found = this.get(id);
      if (found && found.clientId === clientId) {
        found.expiresAt = expiresAt;
        renewed.push(id);
      } else {
        missing.push(id);
      }
    }
    return { renewed, missing };
  }

  delete(id: string): Intercept | undefined {
    const found = this.get(id);
    if (found) this.remove(found, 'left');
    return found;
  }

  list(): Intercept[] {
    this.sweep();
    return [...this.byId.values()];
  }

  close(): void {
    clearInterval(this.sweeper);
  }

  private sweep(): void {
    const now = this.now();
    for (const intercept of this.byId.values()) {
      if (intercept.expiresAt <= now) this.remove(intercept, 'expired');
    }
  }

  private remove(intercept: Intercept, reason: EndReason): void {
    this.byKey.delete(key(intercept.service, intercept.tenant));
    this.byId.delete(intercept.id);
    this.emit('ended', intercept, reason);
  }
}
