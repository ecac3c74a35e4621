/**
 * Remembers intercepts whose lease lapsed, so that when the same client brings one back under
 * its old id the server can say when it lapsed and for how long the tenant's traffic went
 * elsewhere. Bounded: only the most recent lapses are kept.
 */
import type { LeaseLapse } from '../../src/shared/protocol.js';
import type { EndReason, Intercept } from './intercept-store.js';

const KEPT = 1_000;

export class LapsedLeases {
  /** Intercept id → when its lease lapsed, oldest first. */
  private readonly lapsed = new Map<string, { clientKey: string; at: number }>();

  constructor(
    /** Where the tenant's traffic goes without the intercept. */
    private readonly fallbackOf: (intercept: Intercept) => LeaseLapse['fallback'],
    private readonly now: () => number = Date.now,
  ) {}

  /** Every end passes here, so an entry always describes the id's latest end. */
  ended(intercept: Intercept, reason: EndReason): void {
    this.lapsed.delete(intercept.id);
    if (reason !== 'expired') return;
    // Found lapsed by a sweep or a lookup after the fact: it stopped routing at its expiry.
    this.lapsed.set(intercept.id, {
      clientKey: intercept.clientKey,
      at: Math.min(this.now(), intercept.expiresAt),
    });
    if (this.lapsed.size > KEPT) this.lapsed.delete(this.lapsed.keys().next().value as string);
  }

  /** The lapse a newly created intercept resumes after: its client's, under the same id. */
  resumed(intercept: Intercept): LeaseLapse | undefined {
    const lapse = this.lapsed.get(intercept.id);
    if (!lapse || lapse.clientKey !== intercept.clientKey) return undefined;
    return {
      lapsedAt: lapse.at,
      fallback: this.fallbackOf(intercept),
      fallbackMs: Math.max(0, this.now() - lapse.at),
    };
  }
}
