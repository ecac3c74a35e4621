import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { type Principal, TokenAuthority, tenantPattern, tokenRecords } from '../../server/auth/auth.js';
import { AuthFailureLimiter, limitKey } from '../../server/auth/auth-limiter.js';
import { endReason, endRefusal } from '../../server/control-plane/intercept-access.js';
import { ClientAddresses, proxyProblem } from '../../server/data-plane/client-address.js';
import type { Intercept } from '../../server/store/intercept-store.js';

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const authorityOf = (...args: Parameters<typeof tokenRecords>) => new TokenAuthority(tokenRecords(...args));

describe('TokenAuthority.authenticate', () => {
  const authority = authorityOf('default-token-1', [
    { name: 'alice', token: 'alice-token-1', tenants: ['team-a-*'] },
    { name: 'bob', token: 'bob-token-123', tenants: ['t1', 't2'] },
  ]);

  it('accepts the single --token as an unrestricted "default" principal', () => {
    const p = authority.authenticate(bearer('default-token-1'));
    expect(p?.name).toBe('default');
    expect(p?.unrestricted).toBe(true);
    expect(p?.canUseTenant('anyone')).toBe(true);
  });

  it('finds the principal of a named token', () => {
    expect(authority.authenticate(bearer('alice-token-1'))?.name).toBe('alice');
    expect(authority.authenticate(bearer('bob-token-123'))?.name).toBe('bob');
    expect(authority.authenticate(bearer('bob-token-123'))?.unrestricted).toBe(false);
  });

  it('tolerates surrounding whitespace in the credentials', () => {
    expect(authority.authenticate({ authorization: 'Bearer   alice-token-1  ' })?.name).toBe('alice');
  });

  it('accepts the auth scheme in any case (RFC 9110 §11.1)', () => {
    expect(authority.authenticate({ authorization: 'bearer alice-token-1' })?.name).toBe('alice');
    expect(authority.authenticate({ authorization: 'BEARER alice-token-1' })?.name).toBe('alice');
  });

  it.each([
    ['no header', {}],
    ['wrong token', bearer('wrong-token-1')],
    ['prefix of a token', bearer('alice-token')],
    ['token plus extra', bearer('alice-token-12')],
    ['empty bearer', { authorization: 'Bearer ' }],
    ['other scheme', { authorization: 'Basic YWxpY2UtdG9rZW4tMQ==' }],
    ['token without scheme', { authorization: 'alice-token-1' }],
  ])('refuses %s', (_what, headers) => {
    expect(authority.authenticate(headers)).toBeUndefined();
  });

  it('works with a tokens list and no default token', () => {
    const a = authorityOf(undefined, [{ name: 'ci', token: 'ci-token-123', tenants: ['*'] }]);
    expect(a.authenticate(bearer('ci-token-123'))?.unrestricted).toBe(true);
    expect(a.authenticate(bearer('default-token-1'))).toBeUndefined();
  });

  it('refuses everything when there are no tokens at all', () => {
    expect(authorityOf(undefined, []).authenticate(bearer('anything-at-all'))).toBeUndefined();
  });

  it('when two entries share a secret, the first one configured wins', () => {
    const a = authorityOf('shared-token-1', [{ name: 'later', token: 'shared-token-1', tenants: ['x'] }]);
    expect(a.authenticate(bearer('shared-token-1'))?.name).toBe('default');
  });
});

describe('TokenAuthority.successor: what a connection holds after the shared set changes', () => {
  const records = (aliceTenants: string[], aliceToken = 'alice-token-1') =>
    tokenRecords(undefined, [
      { name: 'alice', token: aliceToken, tenants: aliceTenants },
      { name: 'bob', token: 'bob-token-123', tenants: ['t1'] },
    ]);

  it('keeps the principal of a token that came back unchanged', () => {
    const authority = new TokenAuthority(records(['team-a-*']));
    const alice = authority.verify('alice-token-1') as Principal;
    authority.replace(records(['team-a-*']));
    expect(authority.successor(alice)).toBe(alice);
  });

  it('gives the new principal when only the tenants changed, and nothing once the token is gone or has another secret', () => {
    const authority = new TokenAuthority(records(['team-a-*']));
    const alice = authority.verify('alice-token-1') as Principal;
    const bob = authority.verify('bob-token-123') as Principal;
    authority.replace(records(['team-a-1']));
    const narrowed = authority.successor(alice);
    expect(narrowed?.canUseTenant('team-a-1')).toBe(true);
    expect(narrowed?.canUseTenant('team-a-2')).toBe(false);
    expect(authority.successor(bob)).toBe(bob);
    // Each step is judged from what the connection held last.
    authority.replace(records(['team-a-1'], 'alice-rotated-2'));
    expect(authority.successor(narrowed as Principal)).toBeUndefined();
    authority.replace(tokenRecords(undefined, [{ name: 'alice', token: 'alice-rotated-2', tenants: ['*'] }]));
    expect(authority.successor(bob)).toBeUndefined();
  });
});

describe('tenant restrictions', () => {
  const authority = authorityOf(undefined, [
    { name: 'alice', token: 'alice-token-1', tenants: ['team-a-*'] },
    { name: 'bob', token: 'bob-token-123', tenants: ['t1', 'acme'] },
    { name: 'ops', token: 'ops-token-123', tenants: ['*'] },
  ]);
  const principal = (token: string) => {
    const p = authority.authenticate(bearer(token));
    if (!p) throw new Error(`no principal for ${token}`);
    return p;
  };

  it('a prefix pattern allows its tenants and no others', () => {
    const alice = principal('alice-token-1');
    expect(alice.unrestricted).toBe(false);
    expect(alice.canUseTenant('team-a-1')).toBe(true);
    expect(alice.canUseTenant('team-a-')).toBe(true);
    expect(alice.canUseTenant('team-a-eu-west')).toBe(true);
    expect(alice.canUseTenant('team-b-1')).toBe(false);
    expect(alice.canUseTenant('team-a')).toBe(false);
    expect(alice.canUseTenant('xteam-a-1')).toBe(false);
  });

  it('exact names match exactly, anchored at both ends', () => {
    const bob = principal('bob-token-123');
    expect(bob.canUseTenant('t1')).toBe(true);
    expect(bob.canUseTenant('acme')).toBe(true);
    expect(bob.canUseTenant('t10')).toBe(false);
    expect(bob.canUseTenant('xt1')).toBe(false);
    expect(bob.canUseTenant('acme2')).toBe(false);
    expect(bob.canUseTenant('')).toBe(false);
  });

  it('* allows every tenant', () => {
    const ops = principal('ops-token-123');
    expect(ops.unrestricted).toBe(true);
    expect(ops.canUseTenant('anything')).toBe(true);
    expect(ops.canUseTenant('')).toBe(true);
  });
});

describe('tenantPattern', () => {
  it('treats regex special characters as literal', () => {
    expect(tenantPattern('a.b').test('a.b')).toBe(true);
    expect(tenantPattern('a.b').test('axb')).toBe(false);
    expect(tenantPattern('a+').test('aa')).toBe(false);
    expect(tenantPattern('a+').test('a+')).toBe(true);
    expect(tenantPattern('(x|y)').test('x')).toBe(false);
    expect(tenantPattern('(x|y)').test('(x|y)')).toBe(true);
    expect(tenantPattern('[ab]').test('a')).toBe(false);
    expect(tenantPattern('[ab]').test('[ab]')).toBe(true);
    expect(tenantPattern('t?').test('t')).toBe(false);
    expect(tenantPattern('t?').test('t?')).toBe(true);
    expect(tenantPattern('^$').test('^$')).toBe(true);
    expect(tenantPattern('a{2}').test('aa')).toBe(false);
    expect(tenantPattern('a\\d').test('a\\d')).toBe(true);
    expect(tenantPattern('a\\d').test('a1')).toBe(false);
  });

  it('only * is a wildcard, matching any run of characters including none', () => {
    const p = tenantPattern('eu-*-prod');
    expect(p.test('eu--prod')).toBe(true);
    expect(p.test('eu-west.1-prod')).toBe(true);
    expect(p.test('eu-west-prod-2')).toBe(false);
    expect(tenantPattern('a.*').test('a.bc')).toBe(true);
    expect(tenantPattern('a.*').test('abc')).toBe(false);
  });

  it('builds a pattern that is safe to reuse', () => {
    const p = tenantPattern('t*');
    for (let i = 0; i < 3; i++) expect(p.test('t1')).toBe(true);
  });
});

describe('TokenAuthority.replace', () => {
  it('takes a new set of tokens at once: a removed token stops working, an added one starts', () => {
    const a = authorityOf('old-token-123', []);
    expect(a.authenticate(bearer('old-token-123'))?.name).toBe('default');
    a.replace(tokenRecords(undefined, [{ name: 'ci', token: 'new-token-123', tenants: ['t1'] }]));
    expect(a.authenticate(bearer('old-token-123'))).toBeUndefined();
    expect(a.authenticate(bearer('new-token-123'))?.canUseTenant('t1')).toBe(true);
    expect(a.size).toBe(1);
  });

  it('keeps only digests: no record holds the secret', () => {
    const records = tokenRecords('plain-secret-1', []);
    expect(JSON.stringify(records)).not.toContain('plain-secret-1');
    expect(records[0]?.digest).toHaveLength(32);
  });
});

describe('roles and hashed tokens', () => {
  const sha = (s: string) => createHash('sha256').update(s).digest('hex');

  it('a tokens-file entry is a developer unless it says admin; --token is the admin "default"', () => {
    const a = authorityOf('default-token-1', [
      { name: 'dev', token: 'dev-token-123', tenants: ['*'] },
      { name: 'ops', token: 'ops-token-123', tenants: ['*'], role: 'admin' },
    ]);
    expect(a.authenticate(bearer('default-token-1'))?.role).toBe('admin');
    expect(a.authenticate(bearer('dev-token-123'))?.role).toBe('developer');
    expect(a.authenticate(bearer('ops-token-123'))?.role).toBe('admin');
    expect(a.named('dev')?.tenants).toEqual(['*']);
    expect(a.named('nobody')).toBeUndefined();
  });

  it('accepts a token given only by its SHA-256 (either case of hex), and nothing else for it', () => {
    const a = authorityOf(undefined, [
      { name: 'hashed', tokenSha256: sha('hashed-secret-1'), tenants: ['t1'] },
      { name: 'upper', tokenSha256: sha('upper-secret-1').toUpperCase(), tenants: ['t1'] },
    ]);
    expect(a.authenticate(bearer('hashed-secret-1'))?.name).toBe('hashed');
    expect(a.authenticate(bearer('upper-secret-1'))?.name).toBe('upper');
    // The digest itself is not a password.
    expect(a.authenticate(bearer(sha('hashed-secret-1')))).toBeUndefined();
  });
});

describe('who may end an intercept', () => {
  const a = authorityOf(undefined, [
    { name: 'team-a', token: 'team-a-token-1', tenants: ['team-a-*', 'demo'] },
    { name: 'team-b', token: 'team-b-token-1', tenants: ['team-b-*', 'demo'] },
    { name: 'ops', token: 'ops-token-123', tenants: ['*'], role: 'admin' },
  ]);
  const p = (name: string) => a.named(name) as Principal;
  const held = (tenant: string, tokenName: string): Intercept => ({
    id: 'icp_1',
    service: 'billing',
    tenant,
    holder: `${tokenName}@host`,
    tokenName,
    clientKey: 'k',
    localPort: 3000,
    kafkaTopics: [],
    replicaId: 'r',
    epoch: 1,
    createdAt: 0,
    expiresAt: 1,
  });
  const refusal = (who: string, i: Intercept) => endRefusal(p(who), i, a.named(i.tokenName));

  it('a developer ends what its token made, not what another token made on a shared tenant', () => {
    expect(refusal('team-a', held('demo', 'team-a'))).toBeUndefined();
    const r = refusal('team-a', held('demo', 'team-b'));
    expect(r?.message).toContain('held by team-b@host with token "team-b"');
    expect(r?.hint).toContain('admin token');
  });

  it('an admin ends anyone’s', () => {
    expect(refusal('ops', held('demo', 'team-b'))).toBeUndefined();
    expect(endReason(p('ops'), held('demo', 'team-b'))).toBe('kicked');
    expect(endReason(p('team-b'), held('demo', 'team-b'))).toBe('left');
  });

  it('a developer may end an intercept of its tenant whose token no longer exists or no longer covers it', () => {
    expect(refusal('team-a', held('team-a-1', 'removed-token'))).toBeUndefined();
    // team-b's token does not cover team-a-1 (any more): nobody else could end it.
    expect(refusal('team-a', held('team-a-1', 'team-b'))).toBeUndefined();
    expect(refusal('team-a', held('demo', 'ops'))).toBeDefined();
  });
});

describe('AuthFailureLimiter', () => {
  let now = 0;
  const limiter = () => new AuthFailureLimiter({ failures: 3, windowMs: 10_000, maxTracked: 4 }, () => now);

  it('blocks an address at the limit for one window, saying so once, and lets it try again after', () => {
    now = 0;
    const l = limiter();
    expect(l.failed('10.0.0.1')).toBeUndefined();
    expect(l.failed('10.0.0.1')).toBeUndefined();
    expect(l.retryAfter('10.0.0.1')).toBe(0);
    expect(l.failed('10.0.0.1')).toEqual({ key: '10.0.0.1', failures: 3, seconds: 10 });
    expect(l.retryAfter('10.0.0.1')).toBe(10);
    expect(l.retryAfter('10.0.0.2')).toBe(0);
    now = 9_001;
    expect(l.retryAfter('10.0.0.1')).toBe(1);
    now = 10_000;
    expect(l.retryAfter('10.0.0.1')).toBe(0);
    // A fresh count after the block.
    expect(l.failed('10.0.0.1')).toBeUndefined();
  });

  it('forgets failures older than the window', () => {
    now = 0;
    const l = limiter();
    l.failed('10.0.0.1');
    l.failed('10.0.0.1');
    now = 10_000;
    expect(l.failed('10.0.0.1')).toBeUndefined();
    expect(l.retryAfter('10.0.0.1')).toBe(0);
  });

  it('counts an IPv6 /64 as one client, and keeps at most maxTracked addresses', () => {
    now = 0;
    const l = limiter();
    l.failed('2001:db8:1:2::1');
    l.failed('2001:db8:1:2:aaaa::7');
    expect(l.failed('2001:0db8:0001:0002:ffff:ffff:ffff:ffff')?.key).toBe('2001:db8:1:2::/64');
    expect(l.retryAfter('2001:db8:1:2::99')).toBeGreaterThan(0);
    expect(l.retryAfter('2001:db8:1:3::1')).toBe(0);
    for (let i = 0; i < 100; i++) l.failed(`10.1.0.${i}`);
    expect(l.size).toBe(4);
  });

  it('does nothing with a limit of 0', () => {
    const l = new AuthFailureLimiter({ failures: 0, windowMs: 1000 });
    for (let i = 0; i < 50; i++) expect(l.failed('10.0.0.1')).toBeUndefined();
    expect(l.retryAfter('10.0.0.1')).toBe(0);
    expect(limitKey('::1')).toBe('0:0:0:0::/64');
  });
});

describe('ClientAddresses', () => {
  const req = (remoteAddress: string, xff?: string) =>
    ({
      socket: { remoteAddress },
      headers: xff === undefined ? {} : { 'x-forwarded-for': xff },
    }) as unknown as IncomingMessage;

  it('without trusted proxies, the peer address (X-Forwarded-For is anyone’s to write)', () => {
    const c = new ClientAddresses();
    expect(c.of(req('10.0.0.5', '203.0.113.9'))).toBe('10.0.0.5');
    expect(c.of(req('::ffff:10.0.0.5'))).toBe('10.0.0.5');
  });

  it('from a trusted proxy, the rightmost hop that is not a trusted proxy', () => {
    const c = new ClientAddresses(['10.0.0.0/8', '192.168.1.1']);
    expect(c.of(req('10.1.2.3', '203.0.113.9'))).toBe('203.0.113.9');
    // The client wrote the left part itself; the proxies appended what they saw.
    expect(c.of(req('10.1.2.3', '1.1.1.1, 203.0.113.9, 192.168.1.1'))).toBe('203.0.113.9');
    expect(c.of(req('10.1.2.3'))).toBe('10.1.2.3');
    expect(c.of(req('10.1.2.3', 'garbage'))).toBe('10.1.2.3');
    expect(c.of(req('172.16.0.1', '203.0.113.9'))).toBe('172.16.0.1');
  });

  it('names what is wrong with a proxy entry', () => {
    expect(proxyProblem('10.0.0.0/8')).toBeUndefined();
    expect(proxyProblem('fd00::/8')).toBeUndefined();
    expect(proxyProblem('10.0.0.0/33')).toContain('0–32');
    expect(proxyProblem('ingress.local')).toContain('IP address');
  });
});
