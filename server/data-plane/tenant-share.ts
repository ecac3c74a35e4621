/**
 * The share of a service one routing key (tenant) may hold: at most `limit` of its requests
 * in flight at once on this replica. Without it, one tenant's held requests (slow uploads,
 * long polls, a runaway load test) take the connections and sockets every other tenant of the
 * service needs; with it, the one over its share is refused and the others go on.
 */

import { sendError } from '../../src/shared/http/error-response.js';
import type { OutboundResponse } from '../../src/shared/http/http-types.js';

/** Whole seconds a refused caller is asked to wait: a slot frees as soon as one of its requests ends. */
const RETRY_AFTER_SECONDS = 1;

export class TenantShare {
  private readonly inFlight = new Map<string, number>();

  /** `limit` 0: no limit. */
  constructor(readonly limit: number) {}

  /**
   * Counts one more request of `key` on `service` until `res` closes; when the key already
   * holds its share, answers 429 instead and returns false.
   */
  admit(res: OutboundResponse, service: string, key: string, hasBody: boolean): boolean {
    if (this.limit <= 0) return true;
    const slot = `${service}\n${key}`;
    const held = this.inFlight.get(slot) ?? 0;
    if (held >= this.limit) {
      this.refuse(res, service, key, hasBody);
      return false;
    }
    this.inFlight.set(slot, held + 1);
    res.once('close', () => {
      const now = (this.inFlight.get(slot) ?? 1) - 1;
      if (now === 0) this.inFlight.delete(slot);
      else this.inFlight.set(slot, now);
    });
    return true;
  }

  private refuse(res: OutboundResponse, service: string, key: string, hasBody: boolean): void {
    sendError(
      res,
      429,
      'tenant-concurrency',
      `routing key "${key}" already has ${this.limit} requests in flight to ${service}, the most one routing key may hold (tenantConcurrency); try again when one of them has ended`,
      {
        service,
        key,
        limit: this.limit,
        retryAfter: RETRY_AFTER_SECONDS,
        hint: 'the server agent lets each routing key of a service hold up to tenantConcurrency (--tenant-concurrency) requests at once, so no tenant can take a service away from the others; send fewer at once, or ask the platform team to raise it',
      },
      // The body was not read: the connection cannot carry a next request.
      { 'retry-after': String(RETRY_AFTER_SECONDS), ...(hasBody && { connection: 'close' }) },
    );
  }
}
