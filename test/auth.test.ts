import { describe, expect, it } from 'vitest';
import { TokenAuthority, tenantPattern, tokenRecords } from '../server/auth.js';

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
