import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  configFromEnv,
  loadServerConfig,
  mergeLayers,
  parseServiceFlag,
  validateConfig,
} from '../../server/config/config.js';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'kelsingra-config-test-'));
let n = 0;
function file(name: string, text: string): string {
  const path = join(dir, `${n++}-${name}`);
  writeFileSync(path, text);
  return path;
}

afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Runs `fn`, expects a KelsingraError, and returns it. */
async function failure(fn: () => unknown): Promise<KelsingraError> {
  try {
    await fn();
  } catch (err) {
    expect(err).toBeInstanceOf(KelsingraError);
    return err as KelsingraError;
  }
  throw new Error('expected a KelsingraError, nothing was thrown');
}

const minimal = { token: 's3cret-token', services: { billing: { upstream: 'http://127.0.0.1:9001' } } };

describe('validateConfig', () => {
  it('fills in the defaults', () => {
    const c = validateConfig(minimal, 'test');
    expect(c).toMatchObject({
      port: 7700,
      proxyPort: 7701,
      host: '127.0.0.1',
      tenantHeader: 'x-tenant-id',
      leaseTtl: 30,
      heartbeatInterval: 10,
      upstreamTimeout: 30,
      tokens: [],
      logLevel: 'info',
    });
    expect(c.services.billing).toEqual({
      upstream: ['http://127.0.0.1:9001'],
      healthCheck: { path: '/', interval: 5, timeout: 2, unhealthyAfter: 2, healthyAfter: 1 },
      hosts: [],
      stripPrefix: false,
      upstreamHttp2: true,
    });
  });

  it('upstreamHttp2 is true or false, and anything else says what each means', async () => {
    const off = validateConfig(
      { services: { grpc: { upstream: 'http://h:1', upstreamHttp2: false } } },
      'test',
    );
    expect(off.services.grpc?.upstreamHttp2).toBe(false);
    const err = await failure(() =>
      validateConfig(
        { services: { grpc: { upstream: 'http://h:1', upstreamHttp2: 'http1' } } },
        'kelsingra.yaml',
      ),
    );
    expect(err.exitCode).toBe(ExitCode.config);
    expect(err.message).toContain('services.grpc.upstreamHttp2: must be true (calls that arrive over HTTP/2');
    expect(err.message).toContain('false (always HTTP/1.1 to this upstream)');
  });

  it('coerces numeric strings (as env gives them) and lowercases the tenant header', () => {
    const c = validateConfig({ ...minimal, port: '8000', leaseTtl: '2.5', tenantHeader: 'X-Org-ID' }, 'test');
    expect(c.port).toBe(8000);
    expect(c.leaseTtl).toBe(2.5);
    expect(c.tenantHeader).toBe('x-org-id');
  });

  it('names a bad service upstream by its full path', async () => {
    const err = await failure(() =>
      validateConfig({ services: { billing: { upstream: 'ftp://host/x' } } }, 'kelsingra.yaml'),
    );
    expect(err.exitCode).toBe(ExitCode.config);
    expect(err.message).toContain('kelsingra.yaml is not valid');
    expect(err.message).toContain('services.billing.upstream: must start with http:// or https://');
    expect(err.hint).toMatch(/fix the keys/);
  });

  it('names a non-URL upstream, with an example of a good one', async () => {
    const err = await failure(() =>
      validateConfig({ services: { billing: { upstream: 'not a url' } } }, 'test'),
    );
    expect(err.message).toContain('services.billing.upstream: must be a URL such as http://127.0.0.1:9001');
  });

  it('names every bad key, not just the first', async () => {
    const err = await failure(() =>
      validateConfig(
        { port: 70000, logLevel: 'loud', services: { orders: { upstream: 'http://x', pathPrefix: 'api' } } },
        'test',
      ),
    );
    expect(err.message).toMatch(/^ {2}port: /m);
    expect(err.message).toMatch(/^ {2}logLevel: /m);
    expect(err.message).toContain('services.orders.pathPrefix: must start with /');
  });

  it('names a bad service name and says what a good one looks like', async () => {
    const err = await failure(() =>
      validateConfig({ services: { Billing_Svc: { upstream: 'http://127.0.0.1:1' } } }, 'test'),
    );
    expect(err.message).toContain('services.Billing_Svc');
    expect(err.message).toContain('lowercase letters, digits and dashes');
  });

  it('refuses an unknown top-level key and names it', async () => {
    const err = await failure(() => validateConfig({ ...minimal, proxy_port: 7701 }, 'test'));
    expect(err.message).toContain('proxy_port');
    expect(err.message).toMatch(/unrecognized key/i);
  });

  it('refuses an unknown key inside a service and names both', async () => {
    const err = await failure(() =>
      validateConfig({ services: { billing: { upstream: 'http://127.0.0.1:1', upstreams: 'x' } } }, 'test'),
    );
    expect(err.message).toContain('services.billing');
    expect(err.message).toContain('upstreams');
  });

  it('names a short token inside the tokens list by index', async () => {
    const err = await failure(() =>
      validateConfig(
        {
          ...minimal,
          tokens: [
            { name: 'ok', token: 'long-enough' },
            { name: 'a', token: 'short' },
          ],
        },
        'test',
      ),
    );
    expect(err.message).toContain('tokens.1.token: tokens must be at least 8 characters');
    expect(err.message).not.toContain('tokens.0');
  });

  it('defaults a token to every tenant', () => {
    const c = validateConfig({ ...minimal, tokens: [{ name: 'ci', token: 'ci-token-123' }] }, 'test');
    expect(c.tokens).toEqual([{ name: 'ci', token: 'ci-token-123', tenants: ['*'], role: 'developer' }]);
  });
});

describe('token entries: hashes, roles, security settings', () => {
  const hash = 'AB'.repeat(32);

  it('takes a SHA-256 instead of the secret (lower-cased), and a role', () => {
    const c = validateConfig(
      { ...minimal, tokens: [{ name: 'ops', tokenSha256: hash, role: 'admin' }] },
      'test',
    );
    expect(c.tokens).toEqual([{ name: 'ops', tokenSha256: 'ab'.repeat(32), tenants: ['*'], role: 'admin' }]);
  });

  it.each([
    ['neither token nor hash', { name: 'x' }, 'tokens.0.tokenSha256: give the secret as tokenSha256'],
    ['both', { name: 'x', token: 'long-enough', tokenSha256: hash }, 'one of them'],
    ['a short hash', { name: 'x', tokenSha256: 'abc' }, 'must be 64 hex digits'],
    [
      'an unknown role',
      { name: 'x', token: 'long-enough', role: 'root' },
      'tokens.0.role: must be admin or developer',
    ],
    [
      'an admin limited to tenants',
      { name: 'x', token: 'long-enough', role: 'admin', tenants: ['t1'] },
      'tokens.0.tenants: an admin token uses every tenant',
    ],
  ])('refuses %s, naming the entry', async (_what, entry, message) => {
    const err = await failure(() => validateConfig({ ...minimal, tokens: [entry] }, 'test'));
    expect(err.exitCode).toBe(ExitCode.config);
    expect(err.message).toContain(message);
  });

  it('refuses two tokens of one name, --token being "default"', async () => {
    const tokens = file(
      'tokens.yaml',
      'tokens:\n  - { name: default, token: other-token-1 }\n  - { name: ci, token: ci-token-123 }\n',
    );
    const err = await failure(() => loadServerConfig({ env: {}, flags: { ...minimal, tokensFile: tokens } }));
    expect(err.exitCode).toBe(ExitCode.config);
    expect(err.message).toContain('token name default is used twice ("default" is the name of --token)');
  });

  it('takes the failure limit and window as numbers, with defaults', () => {
    const c = validateConfig({ ...minimal, authFailureLimit: '3', authFailureWindow: '5' }, 'test');
    expect(c).toMatchObject({ authFailureLimit: 3, authFailureWindow: 5 });
    expect(validateConfig(minimal, 'test')).toMatchObject({ authFailureLimit: 10, authFailureWindow: 60 });
  });

  it('names a trusted proxy that is not an address or block', async () => {
    const err = await failure(() => validateConfig({ ...minimal, trustedProxies: ['ingress'] }, 'test'));
    expect(err.message).toContain('trustedProxies.0: must be an IP address or a CIDR block');
  });
});

describe('parseServiceFlag', () => {
  it('splits NAME=URL at the first =', () => {
    expect(parseServiceFlag('billing=http://127.0.0.1:9001/?a=b')).toEqual([
      'billing',
      { upstream: 'http://127.0.0.1:9001/?a=b' },
    ]);
    expect(parseServiceFlag(' billing = http://h:1 ')).toEqual(['billing', { upstream: 'http://h:1' }]);
  });

  it.each(['billing', '=http://127.0.0.1:9001', ''])(
    'refuses %j with a usage error and an example',
    async (value) => {
      const err = await failure(() => parseServiceFlag(value));
      expect(err.exitCode).toBe(ExitCode.usage);
      expect(err.message).toContain('is not NAME=URL');
      expect(err.hint).toContain('--service billing=http://127.0.0.1:9001');
    },
  );
});

describe('configFromEnv / mergeLayers', () => {
  it('maps the list variables to settings, ignores empty ones, and leaves one-value variables to oclif', () => {
    expect(
      configFromEnv({
        // oclif reads these for their flags (commands/server.ts `env:`): not this layer's.
        KELSINGRA_PORT: '9000',
        KELSINGRA_TOKEN: 'env-token-1',
        KELSINGRA_ROUTE_TARGETS: '',
        KELSINGRA_TRUSTED_PROXIES: '10.0.0.0/8, 192.168.1.1',
        KELSINGRA_SERVICES: 'billing=http://127.0.0.1:1, orders=http://127.0.0.1:2,',
        UNRELATED: 'x',
      }),
    ).toEqual({
      trustedProxies: ['10.0.0.0/8', '192.168.1.1'],
      services: { billing: { upstream: 'http://127.0.0.1:1' }, orders: { upstream: 'http://127.0.0.1:2' } },
    });
  });

  it('a malformed KELSINGRA_SERVICES entry is a usage error', async () => {
    const err = await failure(() => configFromEnv({ KELSINGRA_SERVICES: 'billing' }));
    expect(err.message).toContain('"billing" is not NAME=URL');
  });

  it('later layers win; services merge per service and per key; undefined never overrides', () => {
    const merged = mergeLayers(
      {
        port: 1,
        host: 'file',
        services: {
          billing: { upstream: 'http://file:1', hosts: ['pay.test'] },
          orders: { upstream: 'http://file:2' },
        },
      },
      { port: 2, services: { billing: { upstream: 'http://env:1' } } },
      { port: 3, host: undefined, services: { search: { upstream: 'http://flag:3' } } },
    );
    expect(merged).toEqual({
      port: 3,
      host: 'file',
      services: {
        billing: { upstream: 'http://env:1', hosts: ['pay.test'] },
        orders: { upstream: 'http://file:2' },
        search: { upstream: 'http://flag:3' },
      },
    });
  });
});

describe('loadServerConfig', () => {
  it('works from flags alone, with defaults', async () => {
    const c = await loadServerConfig({
      env: {},
      flags: { token: 'flag-token-1', services: { billing: { upstream: 'http://127.0.0.1:9001' } } },
    });
    expect(c.port).toBe(7700);
    expect(c.token).toBe('flag-token-1');
    expect(Object.keys(c.services)).toEqual(['billing']);
  });

  it('flags override env, which overrides the file (YAML)', async () => {
    const path = file(
      'kelsingra.yaml',
      [
        'port: 1111',
        'proxyPort: 1112',
        'host: 0.0.0.0',
        'leaseTtl: 11',
        'token: file-token-1',
        'services:',
        '  billing:',
        '    upstream: http://file-billing:1',
        '    hosts: [pay.example.test]',
        '    pathPrefix: /billing',
        '  orders:',
        '    upstream: http://file-orders:2',
        '',
      ].join('\n'),
    );
    const c = await loadServerConfig({
      configPath: path,
      env: {
        KELSINGRA_SERVICES: 'billing=http://env-billing:1',
        KELSINGRA_TRUSTED_PROXIES: '10.0.0.1',
      },
      flags: { port: 3331, token: undefined, services: { orders: { upstream: 'http://flag-orders:2' } } },
    });
    expect(c.port).toBe(3331); // flag
    expect(c.proxyPort).toBe(1112); // file
    expect(c.host).toBe('0.0.0.0'); // file
    expect(c.leaseTtl).toBe(11); // file
    expect(c.trustedProxies).toEqual(['10.0.0.1']); // env
    expect(c.token).toBe('file-token-1'); // file, the undefined flag does not erase it
    expect(c.services.billing).toMatchObject({
      upstream: ['http://env-billing:1'],
      hosts: ['pay.example.test'],
      pathPrefix: '/billing',
      stripPrefix: false,
    });
    expect(c.services.orders?.upstream).toEqual(['http://flag-orders:2']);
  });

  it('reads a JSON file', async () => {
    const path = file(
      'kelsingra.json',
      JSON.stringify({
        ...minimal,
        proxyPort: 4444,
        services: { search: { upstream: 'https://search.internal', stripPrefix: true, pathPrefix: '/s' } },
      }),
    );
    const c = await loadServerConfig({ configPath: path, env: {} });
    expect(c.proxyPort).toBe(4444);
    expect(c.services.search).toMatchObject({
      upstream: ['https://search.internal'],
      hosts: [],
      pathPrefix: '/s',
      stripPrefix: true,
    });
  });

  it('names the file and the bad key, with its path', async () => {
    const path = file(
      'bad.yaml',
      'token: file-token-1\nservices:\n  billing:\n    upstream: localhost:9001\n',
    );
    const err = await failure(() => loadServerConfig({ configPath: path, env: {} }));
    expect(err.exitCode).toBe(ExitCode.config);
    expect(err.message).toContain(path);
    expect(err.message).toContain('services.billing.upstream');
  });

  it('refuses an unknown top-level key in a file', async () => {
    const path = file(
      'typo.yaml',
      'token: file-token-1\nservice:\n  billing:\n    upstream: http://127.0.0.1:1\n',
    );
    const err = await failure(() => loadServerConfig({ configPath: path, env: {} }));
    expect(err.message).toMatch(/"service"/);
  });

  it('reports unparsable YAML and JSON as such', async () => {
    const yaml = file('broken.yaml', 'services:\n  billing: [unclosed\n');
    const yerr = await failure(() => loadServerConfig({ configPath: yaml, env: {} }));
    expect(yerr.message).toContain('is not valid YAML');
    expect(yerr.exitCode).toBe(ExitCode.config);
    const json = file('broken.json', '{"token": ');
    const jerr = await failure(() => loadServerConfig({ configPath: json, env: {} }));
    expect(jerr.message).toContain('is not valid JSON');
  });

  it('refuses a file whose top level is not a mapping', async () => {
    const path = file('list.yaml', '- a\n- b\n');
    const err = await failure(() => loadServerConfig({ configPath: path, env: {} }));
    expect(err.message).toContain('must hold a mapping');
  });

  it('an empty file is an empty layer', async () => {
    const path = file('empty.yaml', '');
    const c = await loadServerConfig({
      configPath: path,
      env: { KELSINGRA_SERVICES: 'billing=http://127.0.0.1:1' },
      flags: { token: 'flag-token-1' },
    });
    expect(c.token).toBe('flag-token-1');
  });

  it('a missing file is named, with a hint', async () => {
    const err = await failure(() => loadServerConfig({ configPath: join(dir, 'nope.yaml'), env: {} }));
    expect(err.message).toContain('cannot read config file');
    expect(err.message).toContain('nope.yaml');
    expect(err.hint).toContain('--config');
  });

  it('merges a tokens file with tokens from the config', async () => {
    const tokens = file(
      'tokens.yaml',
      'tokens:\n  - name: alice\n    token: alice-token-1\n    tenants: [team-a-*]\n  - name: bob\n    token: bob-token-12\n',
    );
    const cfg = file(
      'with-tokens.json',
      JSON.stringify({ tokens: [{ name: 'ci', token: 'ci-token-123' }], services: minimal.services }),
    );
    const c = await loadServerConfig({ configPath: cfg, env: {}, flags: { tokensFile: tokens } });
    expect(c.token).toBeUndefined();
    expect(c.tokens).toEqual([
      { name: 'ci', token: 'ci-token-123', tenants: ['*'], role: 'developer' },
      { name: 'alice', token: 'alice-token-1', tenants: ['team-a-*'], role: 'developer' },
      { name: 'bob', token: 'bob-token-12', tenants: ['*'], role: 'developer' },
    ]);
  });

  it('names a bad entry in the tokens file', async () => {
    const tokens = file('bad-tokens.yaml', 'tokens:\n  - name: alice\n    token: short\n');
    const err = await failure(() =>
      loadServerConfig({ env: {}, flags: { tokensFile: tokens, services: minimal.services } }),
    );
    expect(err.message).toContain(`tokens file ${tokens}`);
    expect(err.message).toContain('tokens.0.token');
    expect(err.exitCode).toBe(ExitCode.config);
  });

  it('refuses an unknown key in the tokens file', async () => {
    const tokens = file('extra-tokens.yaml', 'tokens: []\nadmins: [x]\n');
    const err = await failure(() =>
      loadServerConfig({
        env: {},
        flags: { token: 'flag-token-1', tokensFile: tokens, services: minimal.services },
      }),
    );
    expect(err.message).toContain('admins');
  });

  it('without any token: says so and how to give one', async () => {
    const err = await failure(() => loadServerConfig({ env: {}, flags: { services: minimal.services } }));
    expect(err.exitCode).toBe(ExitCode.config);
    expect(err.message).toContain('needs a token');
    expect(err.hint).toContain('--token');
    expect(err.hint).toContain('KELSINGRA_TOKEN');
  });

  it('an empty tokens file is not a token', async () => {
    const tokens = file('no-tokens.yaml', 'tokens: []\n');
    const err = await failure(() =>
      loadServerConfig({ env: {}, flags: { tokensFile: tokens, services: minimal.services } }),
    );
    expect(err.message).toContain('needs a token');
  });

  it('without any service: says so and how to add one', async () => {
    const err = await failure(() => loadServerConfig({ env: {}, flags: { token: 'flag-token-1' } }));
    expect(err.exitCode).toBe(ExitCode.config);
    expect(err.message).toContain('no services configured');
    expect(err.hint).toContain('--service billing=');
  });
});
