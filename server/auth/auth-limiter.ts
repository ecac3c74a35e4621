/**
 * Failed token checks per client address. Tokens are long random secrets, so guessing one
 * takes more tries than anyone gets once an address that keeps presenting wrong tokens is
 * turned away for a while (429). Memory stays bounded however many addresses try: the
 * least recently seen are forgotten first.
 */
import { isIPv6 } from 'node:net';

export interface AuthLimits {
  /** Failures within `windowMs` that block an address; 0 turns the limit off. */
  failures: number;
  /** The counting window, and how long a block lasts. */
  windowMs: number;
  /** Addresses tracked at most. */
  maxTracked?: number;
}

interface Tally {
  count: number;
  windowStart: number;
  blockedUntil: number;
}

export interface Block {
  /** What is blocked: the address, or for IPv6 its /64. */
  key: string;
  failures: number;
  seconds: number;
}

const DEFAULT_MAX_TRACKED = 10_000;

/**
 * An IPv6 client usually owns a whole /64, and could otherwise try from a new address every
 * time: its addresses count together. IPv4 addresses count one by one.
 */
export function limitKey(address: string): string {
  if (!isIPv6(address)) return address;
  const [head = '', tail] = address.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups =
    tail === undefined ? left : [...left, ...Array(8 - left.length - right.length).fill('0'), ...right];
  return `${groups
    .slice(0, 4)
    .map((g) => g.replace(/^0+(?=.)/, '').toLowerCase())
    .join(':')}::/64`;
}

export class AuthFailureLimiter {
  private readonly tallies = new Map<string, Tally>();
  private readonly maxTracked: number;

  constructor(
    private readonly limits: AuthLimits,
    private readonly now: () => number = Date.now,
  ) {
    this.maxTracked = limits.maxTracked ?? DEFAULT_MAX_TRACKED;
  }

  get size(): number {
    return this.tallies.size;
  }

  /** Seconds until `address` may present a token again; 0 when it may now. */
  retryAfter(address: string): number {
    if (this.limits.failures <= 0) return 0;
    const tally = this.tallies.get(limitKey(address));
    const left = (tally?.blockedUntil ?? 0) - this.now();
    return left > 0 ? Math.ceil(left / 1000) : 0;
  }

  /**
   * Counts a wrong token from `address`. The failure that reaches the limit starts a block and
   * says so (once per block, so the caller can log it once).
   */
  failed(address: string): Block | undefined {
    if (this.limits.failures <= 0) return undefined;
    const key = limitKey(address);
    const now = this.now();
    let tally = this.tallies.get(key);
    if (!tally || (now - tally.windowStart >= this.limits.windowMs && tally.blockedUntil <= now))
      tally = { count: 0, windowStart: now, blockedUntil: 0 };
    tally.count += 1;
    // Re-inserted, so the Map's order is least recently seen first: what to forget first.
    this.tallies.delete(key);
    this.tallies.set(key, tally);
    let block: Block | undefined;
    if (tally.count >= this.limits.failures && tally.blockedUntil <= now) {
      tally.blockedUntil = now + this.limits.windowMs;
      block = { key, failures: tally.count, seconds: Math.ceil(this.limits.windowMs / 1000) };
      // The next window starts when the block ends: it counts afresh.
      tally.count = 0;
      tally.windowStart = tally.blockedUntil;
    }
    while (this.tallies.size > this.maxTracked) {
      const oldest = this.tallies.keys().next().value as string;
      this.tallies.delete(oldest);
    }
    return block;
  }
}
