/**
 * Bearer-token authentication for the control plane. A token may be limited to tenant
 * patterns (`team-a-*`) and has a role; the raw secret is never kept after start-up (and need
 * never be written down: a tokens file may hold only its SHA-256), only its digest.
 */
import { timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { type TokenRole, tokenDigest } from '../../src/shared/token-hash.js';

export type { TokenRole } from '../../src/shared/token-hash.js';

export interface Principal {
  /** Name for logs and for `list`; never the secret. */
  name: string;
  /**
   * admin: every tenant, and may end anyone's intercepts; developer: its tenants, and ends
   * only the intercepts it made (on tenants it shares with other tokens).
   */
  role: TokenRole;
  /** The tenant patterns, to show the token's holder what it may use. */
  tenants: string[];
  canUseTenant(tenant: string): boolean;
  /** True when the token is not limited to particular tenants. */
  unrestricted: boolean;
}

/** A token as it is kept: its name, the sha256 of its secret, its tenants and role. */
export interface TokenRecord {
  name: string;
  digest: Buffer;
  tenants: string[];
  role: TokenRole;
}

interface Entry {
  digest: Buffer;
  principal: Principal;
}

/** A token as configured: the secret itself, or (better) only its SHA-256 in hex. */
export interface TokenEntry {
  name: string;
  token?: string;
  tokenSha256?: string;
  tenants: string[];
  role?: TokenRole;
}

/**
 * The tokens of a config, secrets replaced by digests. `--token` is `default`: an admin, so a
 * one-token setup can do everything, as it could before tokens had roles.
 */
export function tokenRecords(token: string | undefined, tokens: TokenEntry[]): TokenRecord[] {
  const all: TokenEntry[] = [...tokens];
  if (token) all.unshift({ name: 'default', token, tenants: ['*'], role: 'admin' });
  return all.map((t) => ({
    name: t.name,
    digest: t.tokenSha256 !== undefined ? Buffer.from(t.tokenSha256, 'hex') : tokenDigest(t.token ?? ''),
    tenants: t.tenants,
    role: t.role ?? 'developer',
  }));
}

/** `t1`, `team-a-*`, `*`: only `*` is special, and it matches any run of characters. */
export function tenantPattern(pattern: string): RegExp {
  const escaped = pattern.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*');
  return new RegExp(`^${escaped}$`);
}

export class TokenAuthority {
  private entries: Entry[] = [];
  private byName = new Map<string, Principal>();
  /** The secret's digest of every principal handed out (for successor). */
  private readonly digests = new WeakMap<Principal, Buffer>();

  constructor(records: TokenRecord[]) {
    this.replace(records);
  }

  get size(): number {
    return this.entries.length;
  }

  /**
   * Takes a new set of tokens (replicas share theirs through the database). A token that
   * comes back unchanged (name, secret, role and tenants) keeps its principal, so what was
   * authenticated with it before is still known to be good (see successor).
   */
  replace(records: TokenRecord[]): void {
    const previous = this.entries;
    this.entries = records.map((t) => {
      const same = previous.find(
        (e) =>
          e.principal.name === t.name &&
          e.principal.role === t.role &&
          e.digest.equals(t.digest) &&
          e.principal.tenants.join('\n') === t.tenants.join('\n'),
      );
      if (same) return same;
      const patterns = t.tenants.map(tenantPattern);
      const unrestricted = t.tenants.includes('*');
      const principal: Principal = {
        name: t.name,
        role: t.role,
        tenants: t.tenants,
        unrestricted,
        canUseTenant: (tenant: string) => unrestricted || patterns.some((p) => p.test(tenant)),
      };
      this.digests.set(principal, t.digest);
      return { digest: t.digest, principal };
    });
    this.byName = new Map(this.entries.toReversed().map((e) => [e.principal.name, e.principal]));
  }

  /**
   * What a connection authenticated as `principal` holds now: the same principal while its
   * token is unchanged, the token's new principal when only its role or tenants changed, and
   * nothing once the token was removed or given another secret (the connection's secret is
   * no longer good).
   */
  successor(principal: Principal): Principal | undefined {
    const now = this.byName.get(principal.name);
    const before = this.digests.get(principal);
    if (!now || !before) return undefined;
    return this.digests.get(now)?.equals(before) ? now : undefined;
  }

  /** The token of that name as configured now (intercepts and routes name the token that made them). */
  named(name: string): Principal | undefined {
    return this.byName.get(name);
  }

  /** Comparing fixed-length digests in constant time leaks neither the token nor its length. */
  authenticate(headers: IncomingHttpHeaders): Principal | undefined {
    const header = headers.authorization;
    // The auth scheme is case-insensitive (RFC 9110 §11.1): `bearer x` is as good as `Bearer x`.
    if (!header || !/^bearer /i.test(header)) return undefined;
    return this.verify(header.slice(7).trim());
  }

  /** The principal a bare token belongs to (the gateway carries it in its own header). */
  verify(token: string): Principal | undefined {
    const given = tokenDigest(token);
    let found: Principal | undefined;
    for (const entry of this.entries) {
      if (timingSafeEqual(entry.digest, given)) found ??= entry.principal;
    }
    return found;
  }
}
