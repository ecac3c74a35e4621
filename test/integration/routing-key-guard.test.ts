/**
 * One routing key per request, the one it was routed (and, through the gateway, authorised)
 * for: a real `kelsingra server` in front of real upstreams refuses requests whose key is
 * ambiguous or malformed, and makes the tenant header and the baggage entry that go on agree
 * with the key it routed by. Also the host forms the router must read as the same host, and a
 * developer's gateway call that reaches their intercept keeps the dev host it named.
 */
import { writeFileSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  bodyJson,
  CLOSED_PORT,
  type Cleanup,
  clientEnv,
  closeServer,
  interceptDetached,
  listen,
  type RawResponse,
  rawRequest,
  type ServerProcess,
  startServerProcess,
  tempDir,
  waitFor,
} from '../support/helpers.js';

const ADMIN = 'key-guard-admin-token-1';
const TEAM = 'key-guard-team-token-2';

/** An upstream that answers `<name> <url>` and keeps what each request looked like, by path. */
async function upstream(name: string, cleanups: Cleanup[]) {
  const seen = new Map<string, IncomingHttpHeaders>();
  const up = await listen((req, res) => {
    seen.set(req.url ?? '', req.headers);
    req.resume();
    req.on('end', () => res.end(`${name} ${req.url}`));
  });
  cleanups.push(() => closeServer(up));
  return { ...up, seen };
}

function expectRefused(res: RawResponse, status: number, code: string): string {
  expect(res.status, res.body.toString()).toBe(status);
  expect(res.headers['x-kelsingra-error']).toBe(code);
  return String(bodyJson(res).error);
}

describe('one routing key per request', () => {
  const cleanups: Cleanup[] = [];
  let server: ServerProcess;
  let base: Awaited<ReturnType<typeof upstream>>;
  let v2: Awaited<ReturnType<typeof upstream>>;
  const data = (path: string, headers: Record<string, string> | string[]) =>
    rawRequest(`${server.data}${path}`, { headers });
  // A header list sends only what it names: Host too.
  const gateway = (path: string, headers: string[]) =>
    rawRequest(`${server.control}/v1/gateway${path}`, { headers: ['host', 'localhost', ...headers] });

  beforeAll(async () => {
    base = await upstream('base', cleanups);
    v2 = await upstream('v2', cleanups);
    const dir = tempDir('kelsingra-key-guard-');
    const tokensFile = join(dir, 'tokens.yaml');
    writeFileSync(
      tokensFile,
      `tokens:\n  - { name: admin, token: ${ADMIN}, role: admin }\n  - { name: team-a, token: ${TEAM}, tenants: ['a-*'] }\n`,
    );
    const config = join(dir, 'kelsingra.yaml');
    writeFileSync(
      config,
      [
        'services:',
        '  billing:',
        `    upstream: ${base.url}`,
        '    hosts: [billing.dev.test, api.shop.test]',
        '  down:',
        '    upstream:',
        `      - http://127.0.0.1:${CLOSED_PORT}`,
        '    healthCheck: { interval: 1, unhealthyAfter: 1 }',
        '',
      ].join('\n'),
    );
    server = await startServerProcess(['--config', config, '--tokens-file', tokensFile]);
    cleanups.push(() => server.stop());
    const res = await fetch(`${server.control}/v1/routes`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ service: 'billing', tenants: ['a-1'], targets: [v2.url] }),
    });
    expect(res.status).toBe(201);
  });

  afterAll(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  it('two tenant headers, or two tenants in one, are refused with 400 and reach no service', async () => {
    const twice = await data('/twice', [
      'host',
      'billing.dev.test',
      'x-tenant-id',
      'a-1',
      'x-tenant-id',
      't9',
    ]);
    expect(expectRefused(twice, 400, 'bad-routing-key')).toContain('a comma');
    const joined = await data('/joined', { host: 'billing.dev.test', 'x-tenant-id': 'a-1,t9' });
    expectRefused(joined, 400, 'bad-routing-key');
    const spaced = await data('/spaced', { host: 'billing.dev.test', 'x-tenant-id': 'a-1 t9' });
    expect(bodyJson(spaced).hint).toContain('exactly one x-tenant-id header');
    expectRefused(spaced, 400, 'bad-routing-key');
    // A control character smuggled in percent-encoded baggage is named, not a misleading 502.
    const newline = await data('/newline', { host: 'billing.dev.test', baggage: 'tenant=a-1%0Ax-admin:1' });
    expect(expectRefused(newline, 400, 'bad-routing-key')).toContain('tenant baggage entry');
    for (const path of ['/twice', '/joined', '/spaced', '/newline']) {
      expect(base.seen.has(path), path).toBe(false);
      expect(v2.seen.has(path), path).toBe(false);
    }
    // One key is served as always.
    const one = await data('/one', { host: 'billing.dev.test', 'x-tenant-id': 'a-1' });
    expect(`${one.status} ${one.body}`).toBe('200 v2 /one');
  });

  it('the tenant header wins over a baggage entry that says otherwise, and the baggage that goes on says the same', async () => {
    const res = await data('/both', {
      host: 'billing.dev.test',
      'x-tenant-id': 'a-1',
      baggage: 'user=42, tenant=t9;p=1, region=eu',
    });
    expect(`${res.status} ${res.body}`).toBe('200 v2 /both');
    const seen = v2.seen.get('/both');
    expect(seen?.['x-tenant-id']).toBe('a-1');
    expect(seen?.baggage).toBe('user=42,region=eu,tenant=a-1');
  });

  it('through the gateway a team token cannot ride a second tenant along: not in baggage, not in a second header', async () => {
    const call = ['x-kelsingra-token', TEAM, 'x-kelsingra-service', 'billing'];
    const bag = await gateway('/bag', [...call, 'x-tenant-id', 'a-1', 'baggage', 'tenant=t9']);
    expect(`${bag.status} ${bag.body}`).toBe('200 v2 /bag');
    expect(v2.seen.get('/bag')?.baggage).toBe('tenant=a-1');
    const twice = await gateway('/gw-twice', [...call, 'x-tenant-id', 'a-1', 'x-tenant-id', 't9']);
    expectRefused(twice, 400, 'bad-routing-key');
    expect(base.seen.has('/gw-twice') || v2.seen.has('/gw-twice')).toBe(false);
  });

  it('the gateway sends on the path the control port matched, dot segments resolved', async () => {
    const res = await gateway('/a/../b?x=1', [
      'x-kelsingra-token',
      ADMIN,
      'x-kelsingra-service',
      'billing',
      'x-tenant-id',
      't2',
    ]);
    expect(`${res.status} ${res.body}`).toBe('200 base /b?x=1');
  });

  it('a fully qualified host (trailing dot) is the same host', async () => {
    // api.shop.test is billing only by configuration: no label of it names a service.
    const res = await data('/fqdn', { host: 'api.shop.test.', 'x-tenant-id': 'a-1' });
    expect(`${res.status} ${res.body}`).toBe('200 v2 /fqdn');
    const port = await data('/fqdn-port', { host: 'api.shop.test.:8080', 'x-tenant-id': 't2' });
    expect(`${port.status} ${port.body}`).toBe('200 base /fqdn-port');
  });

  it('an upgrade to a service with no healthy backend is a 503 that says so', async () => {
    await waitFor(
      async () => {
        const status = (await (
          await fetch(`${server.control}/status`, { headers: { authorization: `Bearer ${ADMIN}` } })
        ).json()) as {
          upstreams: { service: string; state: string }[];
        };
        return status.upstreams.some((u) => u.service === 'down' && u.state === 'unhealthy');
      },
      10_000,
      'the down service to be marked unhealthy',
    );
    const res = await data('/ws', {
      'x-kelsingra-service': 'down',
      connection: 'upgrade',
      upgrade: 'websocket',
      'sec-websocket-version': '13',
      'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
    });
    expect(expectRefused(res, 503, 'no-healthy-backend')).toContain('no backend of down is healthy');
  });
});

describe('a gateway call that reaches an intercept', () => {
  const cleanups: Cleanup[] = [];
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  it('reaches the laptop with the dev host it named, not the control port', async () => {
    const base = await upstream('base', cleanups);
    const local = await upstream('local', cleanups);
    const server = await startServerProcess(['--service', `billing=${base.url}`, '--token', ADMIN]);
    cleanups.push(() => server.stop());
    await interceptDetached(clientEnv(server, ADMIN), 'billing', 't1', local.port, cleanups);
    const res = await rawRequest(`${server.control}/v1/gateway/hosted`, {
      headers: [
        'host',
        'localhost',
        'x-kelsingra-token',
        ADMIN,
        'x-kelsingra-host',
        'billing.dev.test',
        'x-tenant-id',
        't1',
      ],
    });
    expect(`${res.status} ${res.body}`).toBe('200 local /hosted');
    expect(local.seen.get('/hosted')?.host).toBe('billing.dev.test');
    const named = await rawRequest(`${server.control}/v1/gateway/named`, {
      headers: [
        'host',
        'localhost',
        'x-kelsingra-token',
        ADMIN,
        'x-kelsingra-service',
        'billing',
        'x-tenant-id',
        't1',
      ],
    });
    expect(`${named.status} ${named.body}`).toBe('200 local /named');
    expect(local.seen.get('/named')?.host).toBe('billing');
  });
});
