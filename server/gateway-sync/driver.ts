/**
 * What every gateway driver does: put a whole set in place (at start, on taking over from
 * another replica, on the periodic repair) and apply a change. Each resolves only once the
 * gateway confirmed (the runtime API answered, the reload exited 0, the poll served it), and
 * rejects with a message that names the gateway when it did not.
 */
import pRetry from 'p-retry';
import type { Diff, Entry } from './entries.js';

export interface GatewayDriver {
  /** haproxy, nginx, caddy, traefik or kong. */
  readonly name: string;
  replaceAll(entries: Entry[]): Promise<void>;
  /** `all` is the whole set after the change, for drivers that can only write it whole. */
  apply(diff: Diff, all: Entry[]): Promise<void>;
  close(): Promise<void>;
}

/** A gateway answered, but not with success: the message carries its own words. */
export class GatewayError extends Error {
  override readonly name = 'GatewayError';
}

/**
 * Asks `check` every `everyMs` until it says the gateway has it; past `timeoutMs` rejects with
 * `timedOut()` (given check's last word). The one poll of the drivers that confirm by looking.
 */
export async function confirmByPolling(
  check: () => Promise<{ ok: boolean; last?: string }>,
  opts: { timeoutMs: number; everyMs: number; timedOut: (last: string) => string },
): Promise<void> {
  let last = '';
  await pRetry(
    async () => {
      const r = await check();
      last = r.last ?? last;
      if (!r.ok) throw new Error('not yet');
    },
    { retries: Number.POSITIVE_INFINITY, factor: 1, minTimeout: opts.everyMs, maxRetryTime: opts.timeoutMs },
  ).catch(() => {
    throw new GatewayError(opts.timedOut(last));
  });
}
