/**
 * Bearer-token authentication for the control plane. A token may be limited to tenant
 * patterns (`team-a-*`); the raw secret is never kept after start-up, only its hash.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type { TokenConfig } from './config.js';

export interface Principal {
  /** Name for logs and for `list`; never the secret. */
  name: string;
  canUseTenant(tenant: string): boolean;
  /** True when the token is not limited to particular tenants. */
  unrestricted: boolean;
}

/** A token as it is kept: its name, the sha256 of its secret, and the tenants it may use. */
export interface TokenRecord {
  name: string;
  digest: Buffer;
  tenants: string[];
}

interface Entry {
  digest: Buffer;
  principal: Principal;
}

const digest = (secret: string) => createHash('sha256').update(secret).digest();

/** The tokens of a config (`--token` is the unrestricted `default`), secrets replaced by digests. */
export function tokenRecords(token: string | undefined, tokens: TokenConfig[]): TokenRecord[] {
  const all: TokenConfig[] = [...tokens];
  if (token) all.unshift({ name: 'default', token, tenants: ['*'] });
  return all.map((t) => ({ name: t.name, digest: digest(t.token), tenants: t.tenants }));
}

/** `t1`, `team-a-*`, `*`: only `*` is special, and it matches any run of characters. */
export function tenantPattern(pattern: string): RegExp {
  const escaped = pattern.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*');
  return new RegExp(`^${escaped}$`);
}

export class TokenAuthority {
  private entries: Entry[] = [];

  constructor(records: TokenRecord[]) {
    this.replace(records);
  }

  get size(): number {
    return this.entries.length;
  }

  /** Takes a new set of tokens (replicas share theirs through the database). Principals are compared by name. */
  replace(records: TokenRecord[]): void {
    this.entries = records.map((t) => {
      const patterns = t.tenants.map(tenantPattern);
      const unrestricted = t.tenants.includes('*');
      return {
        digest: t.digest,
        principal: {
          name: t.name,
          unrestricted,
          canUseTenant: (tenant: string) => unrestricted || patterns.some((p) => p.test(tenant)),
        },
      };
    });
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
    const given = digest(token);
    let found: Principal | undefined;
    for (const entry of this.entries) {
      if (timingSafeEqual(entry.digest, given)) found ??= entry.principal;
    }
    return found;
  }
}
