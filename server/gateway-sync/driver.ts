/**
 * What every gateway driver does: put a whole set in place (at start, on taking over from
 * another replica, on the periodic repair) and apply a change. Each resolves only once the
 * gateway confirmed (the runtime API answered, the reload exited 0, the poll served it), and
 * rejects with a message that names the gateway when it did not.
 */
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
