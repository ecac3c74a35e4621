/**
 * Tenant routes on real replicas sharing the real PostgreSQL: a route set on one replica
 * routes on the others within a second (however many tenants it names), moves, deletes and
 * hand edits in SQL propagate, a late replica loads them; on the data port an intercept beats
 * a route which beats the base, whether the key came as the tenant header, as baggage or in a
 * preview host; and the outbound gateway entry routes by the same rules.
 */
import { writeFileSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  bodyJson,
  type Cleanup,
  cleanupsAfterEach,
  clientEnv,
  closeServer,
  interceptDetached,
  listen,
  rawRequest,
  run,
  type ServerProcess,
  startServerProcess,
  tempDir,
  waitFor,
} from '../support/helpers.js';
import { freshDatabase, query } from '../support/postgres.js';

const TOKEN = 'routes-token-1';
const PREVIEW = 'http://{key}--{service}.dev.example.test';
const cleanups = cleanupsAfterEach();

/** An HTTP service that answers `<name> <METHOD> <url>` and keeps the headers of every request by path. */
async function service(name: string, c: Cleanup[]) {
  const seen = new Map<string, IncomingHttpHeaders>();
  const svc = await listen((req, res) => {
    seen.set(req.url ?? '', req.headers);
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`${name} ${req.method} ${req.url}`);
    });
  });
  c.push(() => closeServer(svc));
  return { ...svc, seen, url: `${svc.url}/` };
}

async function world(c: Cleanup[]) {
  const [base, v2, v3, db] = await Promise.all([
    service('base', c),
    service('v2', c),
    service('v3', c),
    freshDatabase(c),
  ]);
  return { base, v2, v3, db };
}

async function replica(db: string, base: string, extra: string[] = []): Promise<ServerProcess> {
  const server = await startServerProcess([
    '--service',
    `billing=${base}`,
    '--token',
    TOKEN,
    '--database-url',
    db,
    ...extra,
  ]);
  cleanups.push(() => server.stop());
  return server;
}

async function replicas(db: string, base: string, extra: string[] = []) {
  return (await Promise.all([replica(db, base, extra), replica(db, base, extra)])) as [
    ServerProcess,
    ServerProcess,
  ];
}

interface RouteAnswer {
  route: { id: string; service: string; tenants: string[]; targets: string[] };
  created: boolean;
  moved: { tenant: string; from: string }[];
  removed: string[];
}

async function putRoute(server: ServerProcess, tenants: string[], target: string) {
  const res = await fetch(`${server.control}/v1/routes`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ service: 'billing', tenants, targets: [target] }),
  });
  const body = (await res.json()) as RouteAnswer;
  expect([200, 201], JSON.stringify(body)).toContain(res.status);
  return body;
}

async function listRoutes(server: ServerProcess) {
  const res = await fetch(`${server.control}/v1/routes`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(res.status).toBe(200);
  return (await res.json()) as { id: string; tenants: string[]; targets: string[] }[];
}

/** A request on the data port as the reverse proxy sends it; answers "<status> <body>". */
async function ask(server: ServerProcess, headers: Record<string, string>, path = '/x'): Promise<string> {
  const res = await rawRequest(`${server.data}${path}`, { headers });
  return `${res.status} ${res.body.toString('utf8')}`;
}

/** Who serves `tenant` (by the tenant header) on `server`: the first word of the answer. */
async function who(server: ServerProcess, tenant: string): Promise<string> {
  const answer = await ask(server, { 'x-kelsingra-service': 'billing', 'x-tenant-id': tenant });
  return answer.startsWith('200 ') ? (answer.split(' ')[1] as string) : answer;
}

/** Waits (a second at most) until `server` sends `tenant` to `expected`. */
async function routesWithinASecond(server: ServerProcess, tenant: string, expected: string) {
  let last = '';
  const reached = async () => {
    last = await who(server, tenant);
    return last === expected;
  };
  await waitFor(
    reached,
    1_000,
    `tenant ${tenant} to reach ${expected} on ${server.data} within a second`,
  ).catch((err: Error) => {
    throw new Error(`${err.message} (last answer: ${last})`);
  });
}

describe('tenant routes across replicas', () => {
  it('a route set through one replica routes on the other within a second; a move and a delete reach it too', async () => {
    const { base, v2, v3, db } = await world(cleanups);
    const [a, b] = await replicas(db, base.url);

    const set = await putRoute(a, ['t1', 't2'], v2.url);
    expect(set.created).toBe(true);
    await routesWithinASecond(b, 't1', 'v2');
    expect(await who(b, 't2')).toBe('v2');
    expect(await who(b, 't3')).toBe('base');

    // Set through B: t2 moves to v3, t1 stays on v2, and A hears of both.
    const moved = await putRoute(b, ['t2'], v3.url);
    expect(moved.moved).toEqual([{ tenant: 't2', from: set.route.id }]);
    await routesWithinASecond(a, 't2', 'v3');
    expect(await who(a, 't1')).toBe('v2');
    expect(await who(b, 't1')).toBe('v2');
    const onA = await listRoutes(a);
    expect(onA.map((r) => [r.targets, r.tenants]).sort()).toEqual(
      [
        [[v2.url], ['t1']],
        [[v3.url], ['t2']],
      ].sort(),
    );

    // Deleted through A: B sends t1 back to the base; t2 keeps its route.
    const del = await fetch(`${a.control}/v1/routes/${set.route.id}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(del.status).toBe(200);
    await routesWithinASecond(b, 't1', 'base');
    expect(await who(b, 't2')).toBe('v3');
    expect((await listRoutes(b)).map((r) => r.id)).toEqual([moved.route.id]);
    const { rows } = await query<{ id: string; tenants: string[] }>(
      db,
      'SELECT id, tenants FROM kelsingra_routes',
    );
    expect(rows).toEqual([{ id: moved.route.id, tenants: ['t2'] }]);
  });

  it('a route naming 5,000 tenants (far over a notification’s 8000 bytes) reaches the other replica and a late one', async () => {
    const { base, v2, v3, db } = await world(cleanups);
    const [a, b] = await replicas(db, base.url);
    const tenants = Array.from({ length: 5_000 }, (_, i) => `tenant-${i}`);
    expect(JSON.stringify(tenants).length).toBeGreaterThan(8_000);

    const set = await putRoute(a, tenants, v2.url);
    expect(set.route.tenants).toHaveLength(5_000);
    await routesWithinASecond(b, 'tenant-4999', 'v2');
    expect(await who(b, 'tenant-0')).toBe('v2');
    expect(await who(b, 'tenant-5000')).toBe('base');

    // One tenant moved out of the big route, through B: A hears of the shrunk route too.
    await putRoute(b, ['tenant-2500'], v3.url);
    await routesWithinASecond(a, 'tenant-2500', 'v3');
    expect(await who(a, 'tenant-2499')).toBe('v2');

    // Started after the routes exist: its very first requests route by them, no waiting.
    const late = await replica(db, base.url);
    expect(await who(late, 'tenant-4999')).toBe('v2');
    expect(await who(late, 'tenant-2500')).toBe('v3');
    expect(await who(late, 'tenant-5000')).toBe('base');
    const listed = await listRoutes(late);
    expect(listed.map((r) => r.tenants.length).sort()).toEqual([1, 4_999]);
  });

  it('a route row inserted, changed or deleted by hand in SQL reaches every replica', async () => {
    const { base, v2, v3, db } = await world(cleanups);
    const [a, b] = await replicas(db, base.url);
    const set = await putRoute(a, ['t1'], v2.url);
    await routesWithinASecond(b, 't1', 'v2');

    await query(db, `UPDATE kelsingra_routes SET tenants = ARRAY['t7', 't8'] WHERE id = $1`, [set.route.id]);
    for (const r of [a, b]) {
      await routesWithinASecond(r, 't7', 'v2');
      expect(await who(r, 't8')).toBe('v2');
      expect(await who(r, 't1')).toBe('base');
    }

    await query(
      db,
      `INSERT INTO kelsingra_routes (id, service, tenants, targets, token_name)
       VALUES ('rt_by_hand', 'billing', ARRAY['t9'], ARRAY[$1], 'psql')`,
      [v3.url],
    );
    for (const r of [a, b]) await routesWithinASecond(r, 't9', 'v3');

    await query(db, 'DELETE FROM kelsingra_routes WHERE id = $1', [set.route.id]);
    for (const r of [a, b]) {
      await routesWithinASecond(r, 't7', 'base');
      expect(await who(r, 't9')).toBe('v3');
    }
  });
});

describe('precedence on the data port: intercept > route > base, whatever carries the key', () => {
  /** The same tenant t1 (or t2), as the tenant header, as W3C baggage, and as a preview host. */
  const forms = (tenant: string): [string, Record<string, string>][] => [
    ['header', { 'x-kelsingra-service': 'billing', 'x-tenant-id': tenant }],
    ['baggage', { 'x-kelsingra-service': 'billing', baggage: `trace=abc, tenant=${tenant};ttl=5` }],
    ['preview', { host: `${tenant}--billing.dev.example.test` }],
  ];

  /** What each form of `tenant`'s request reaches on `server`, by form. */
  async function reached(server: ServerProcess, tenant: string): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const [form, headers] of forms(tenant)) out[form] = await ask(server, headers, `/${form}`);
    return out;
  }
  const all = (who: string) => ({
    header: `200 ${who} GET /header`,
    baggage: `200 ${who} GET /baggage`,
    preview: `200 ${who} GET /preview`,
  });

  it('header, baggage and preview host reach the same target on every replica; the tunnel beats the route', async () => {
    const { base, v2, db } = await world(cleanups);
    const local = await service('local', cleanups);
    const [a, b] = await replicas(db, base.url, ['--preview-url', PREVIEW]);

    await putRoute(a, ['t1'], v2.url);
    await routesWithinASecond(b, 't1', 'v2');
    for (const r of [a, b]) {
      expect(await reached(r, 't1')).toEqual(all('v2'));
      expect(await reached(r, 't2')).toEqual(all('base'));
    }
    // The route target is told the tenant even when it came as baggage or in the host, and
    // the request is marked so the reverse proxy does not send it back to Kelsingra.
    for (const form of ['header', 'baggage', 'preview']) {
      expect(v2.seen.get(`/${form}`)?.['x-tenant-id'], form).toBe('t1');
      expect(v2.seen.get(`/${form}`)?.['x-kelsingra-hop'], form).toBeTruthy();
    }
    expect(v2.seen.get('/baggage')?.baggage).toBe('trace=abc, tenant=t1;ttl=5');
    expect(v2.seen.get('/preview')?.host).toBe('t1--billing.dev.example.test');
    expect(base.seen.get('/baggage')?.['x-tenant-id']).toBe('t2');
    expect(base.seen.get('/preview')?.['x-tenant-id']).toBe('t2');

    // An intercept through A's tunnel takes t1 from the route, on both replicas (B relays).
    const env = clientEnv(a, TOKEN);
    await interceptDetached(env, 'billing', 't1', local.port, cleanups);
    for (const r of [a, b]) {
      await waitFor(async () => (await who(r, 't1')) === 'local', 2_000, 'the intercept to route everywhere');
      expect(await reached(r, 't1')).toEqual(all('local'));
      expect(await reached(r, 't2')).toEqual(all('base'));
    }
    for (const form of ['header', 'baggage', 'preview'])
      expect(local.seen.get(`/${form}`)?.['x-tenant-id'], form).toBe('t1');
    // The developer is told the preview URL of the intercept.
    const listed = await run(['list', '--json'], env);
    expect(JSON.parse(listed.stdout)).toMatchObject([
      { tenant: 't1', previewUrl: 'http://t1--billing.dev.example.test' },
    ]);

    // After leave the route serves t1 again, however the key comes.
    const left = await run(['leave', 'billing', '--tenant', 't1'], env);
    expect(left.exitCode, left.stderr).toBe(0);
    for (const r of [a, b]) {
      await waitFor(async () => (await who(r, 't1')) === 'v2', 2_000, 'the route to serve t1 again');
      expect(await reached(r, 't1')).toEqual(all('v2'));
    }
  });

  it('with --routing-keys subdomain,header a preview host beats a conflicting tenant header; baggage is not read', async () => {
    const { base, v2, v3, db } = await world(cleanups);
    // Billing also answers at billing.example.test: a label in front of it is a key too.
    const config = join(tempDir('kelsingra-config-'), 'kelsingra.yaml');
    writeFileSync(config, 'services:\n  billing:\n    hosts: [billing.example.test]\n');
    const [subFirst, byDefault] = await Promise.all([
      replica(db, base.url, [
        '--preview-url',
        PREVIEW,
        '--routing-keys',
        'subdomain,header',
        '--config',
        config,
      ]),
      replica(db, base.url, ['--preview-url', PREVIEW]),
    ]);
    await putRoute(byDefault, ['t1'], v2.url);
    await putRoute(byDefault, ['t2'], v3.url);
    await routesWithinASecond(subFirst, 't2', 'v3');
    expect(await who(subFirst, 't1')).toBe('v2');

    const conflicting = { host: 't1--billing.dev.example.test', 'x-tenant-id': 't2' };
    expect(await ask(subFirst, conflicting, '/conflict')).toBe('200 v2 GET /conflict');
    expect(await ask(byDefault, conflicting, '/conflict')).toBe('200 v3 GET /conflict');
    // The target serves the request as the tenant it was routed for, not the header's.
    expect(v2.seen.get('/conflict')?.['x-tenant-id']).toBe('t1');
    expect(v3.seen.get('/conflict')?.['x-tenant-id']).toBe('t2');

    const baggage = { 'x-kelsingra-service': 'billing', baggage: 'tenant=t1' };
    expect(await ask(subFirst, baggage, '/bag')).toBe('200 base GET /bag');
    expect(base.seen.get('/bag')?.['x-tenant-id']).toBeUndefined();
    expect(await ask(byDefault, baggage, '/bag')).toBe('200 v2 GET /bag');

    expect(await ask(subFirst, { host: 't1--billing.dev.example.test' }, '/sub')).toBe('200 v2 GET /sub');
    expect(v2.seen.get('/sub')?.['x-tenant-id']).toBe('t1');

    // The same with a label in front of the service's configured host.
    const label = { host: 't2.billing.example.test', 'x-tenant-id': 't1' };
    expect(await ask(subFirst, label, '/label')).toBe('200 v3 GET /label');
    expect(await ask(subFirst, { host: 't2.billing.example.test' }, '/label-only')).toBe(
      '200 v3 GET /label-only',
    );
    expect(v3.seen.get('/label-only')?.['x-tenant-id']).toBe('t2');
    // The configured host itself names no key.
    expect(await ask(subFirst, { host: 'billing.example.test', 'x-tenant-id': 't1' }, '/plain')).toBe(
      '200 v2 GET /plain',
    );
  });
});

describe('the outbound gateway entry on the control port', () => {
  const TEAM = 'team-a-token-1';

  async function setup() {
    const { base, v2, db } = await world(cleanups);
    const dir = tempDir('kelsingra-tokens-');
    const tokensFile = join(dir, 'tokens.yaml');
    writeFileSync(tokensFile, `tokens:\n  - { name: team-a, token: ${TEAM}, tenants: ['a-*'] }\n`);
    const [a, b] = await replicas(db, base.url, ['--preview-url', PREVIEW, '--tokens-file', tokensFile]);
    await putRoute(a, ['t1', 'a-1'], v2.url);
    await routesWithinASecond(b, 't1', 'v2');
    // Only what the gateway sends counts from here.
    v2.seen.clear();
    base.seen.clear();
    const gateway = (headers: Record<string, string>, path = '/x') =>
      rawRequest(`${b.control}/v1/gateway${path}`, { headers });
    return { base, v2, gateway };
  }

  it('routes a call by its tenant to the route target, without Kelsingra’s token and with the app’s own authorization', async () => {
    const { base, v2, gateway } = await setup();
    const res = await gateway(
      {
        'x-kelsingra-token': TOKEN,
        'x-kelsingra-service': 'billing',
        'x-tenant-id': 't1',
        authorization: 'Bearer the-apps-own-token',
      },
      '/invoices?page=2',
    );
    expect(`${res.status} ${res.body}`).toBe('200 v2 GET /invoices?page=2');
    const seen = v2.seen.get('/invoices?page=2');
    expect(seen?.['x-kelsingra-token']).toBeUndefined();
    expect(seen?.authorization).toBe('Bearer the-apps-own-token');
    expect(seen?.['x-tenant-id']).toBe('t1');
    expect(JSON.stringify(seen)).not.toContain(TOKEN);

    // Another tenant goes to the base; a preview host in x-kelsingra-host carries the key itself.
    const other = await gateway({
      'x-kelsingra-token': TOKEN,
      'x-kelsingra-service': 'billing',
      'x-tenant-id': 't2',
    });
    expect(`${other.status} ${other.body}`).toBe('200 base GET /x');
    const byHost = await gateway(
      { 'x-kelsingra-token': TOKEN, 'x-kelsingra-host': 't1--billing.dev.example.test' },
      '/by-host',
    );
    expect(`${byHost.status} ${byHost.body}`).toBe('200 v2 GET /by-host');
    expect(v2.seen.get('/by-host')?.['x-tenant-id']).toBe('t1');
    expect(v2.seen.get('/by-host')?.host).toBe('t1--billing.dev.example.test');
    expect(base.seen.get('/x')?.['x-kelsingra-token']).toBeUndefined();
  });

  it('a call through one replica reaches an intercept whose tunnel is on the other, with the dev host it named', async () => {
    const { base, db } = await world(cleanups);
    const local = await service('local', cleanups);
    const [a, b] = await replicas(db, base.url);
    await interceptDetached(clientEnv(a, TOKEN), 'billing', 't1', local.port, cleanups);
    await waitFor(async () => (await who(b, 't1')) === 'local', 2_000, 'the intercept to route on B');
    const res = await rawRequest(`${b.control}/v1/gateway/relayed`, {
      headers: { 'x-kelsingra-token': TOKEN, 'x-kelsingra-host': 'billing.dev.test', 'x-tenant-id': 't1' },
    });
    expect(`${res.status} ${res.body}`).toBe('200 local GET /relayed');
    const seen = local.seen.get('/relayed');
    expect(seen?.host).toBe('billing.dev.test');
    expect(seen?.['x-tenant-id']).toBe('t1');
    expect(JSON.stringify(seen)).not.toContain(TOKEN);
    expect(base.seen.has('/relayed')).toBe(false);
  });

  it('refuses a wrong token (401), another tenant than the token’s (403) and a call without a key (400)', async () => {
    const { base, v2, gateway } = await setup();
    const call = { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't1' };

    const wrong = await gateway({ ...call, 'x-kelsingra-token': 'not-the-token' });
    expect(wrong.status).toBe(401);
    expect(wrong.headers['x-kelsingra-error']).toBe('unauthorized');
    expect(bodyJson(wrong).error).toContain('x-kelsingra-token');
    // The app's own bearer token is not Kelsingra's: it does not open the gateway.
    const appAuth = await gateway({ ...call, authorization: `Bearer ${TOKEN}` });
    expect(appAuth.status).toBe(401);

    const forbidden = await gateway({ ...call, 'x-kelsingra-token': TEAM });
    expect(forbidden.status).toBe(403);
    expect(forbidden.headers['x-kelsingra-error']).toBe('tenant-forbidden');
    expect(bodyJson(forbidden).error).toContain('token "team-a" may not call dev as tenant "t1"');
    // Nor through baggage or a preview host.
    const sneakyCalls: Record<string, string>[] = [
      { 'x-kelsingra-service': 'billing', baggage: 'tenant=t1' },
      { 'x-kelsingra-host': 't1--billing.dev.example.test' },
    ];
    for (const headers of sneakyCalls) {
      const sneaky = await gateway({ ...headers, 'x-kelsingra-token': TEAM });
      expect(sneaky.status, JSON.stringify(headers)).toBe(403);
    }
    const own = await gateway(
      { 'x-kelsingra-service': 'billing', 'x-tenant-id': 'a-1', 'x-kelsingra-token': TEAM },
      '/own',
    );
    expect(`${own.status} ${own.body}`).toBe('200 v2 GET /own');

    const keyless = await gateway({ 'x-kelsingra-service': 'billing', 'x-kelsingra-token': TOKEN });
    expect(keyless.status).toBe(400);
    expect(keyless.headers['x-kelsingra-error']).toBe('no-routing-key');
    expect(bodyJson(keyless).error).toContain('no x-tenant-id header and no tenant baggage entry');

    // None of the refused calls reached a service.
    expect([...v2.seen.keys()]).toEqual(['/own']);
    expect(base.seen.size).toBe(0);
  });

  it('a --replace is judged against the route as the database has it, not a copy that is behind', async () => {
    const { base, v2, db } = await world(cleanups);
    const tokens = join(tempDir('kelsingra-tokens-'), 'tokens.yaml');
    writeFileSync(
      tokens,
      `tokens:\n  - name: platform\n    token: ${TOKEN}\n    role: admin\n  - name: team-a\n    token: team-a-secret-9\n    tenants: ['team-a-*']\n`,
    );
    const server = await startServerProcess([
      '--service',
      `billing=${base.url}`,
      '--tokens-file',
      tokens,
      '--database-url',
      db,
      '--route-target',
      new URL(v2.url).origin,
    ]);
    cleanups.push(() => server.stop());
    const put = (tenants: string[], replace: boolean) =>
      fetch(`${server.control}/v1/routes`, {
        method: 'PUT',
        headers: { authorization: 'Bearer team-a-secret-9', 'content-type': 'application/json' },
        body: JSON.stringify({ service: 'billing', tenants, targets: [v2.url], replace }),
      });
    const created = await put(['team-a-1', 'team-a-2'], false);
    expect(created.status).toBe(201);
    const { id } = ((await created.json()) as RouteAnswer).route;
    // Another replica's admin has just added t1 to the route; this replica has not heard yet
    // (no trigger, no notification: as if the notification were still on its way).
    await query(
      db,
      `SET session_replication_role = replica; UPDATE kelsingra_routes SET tenants = array_append(tenants, 't1') WHERE id = '${id}'`,
    );
    const replaced = await put(['team-a-1'], true);
    const answer = (await replaced.json()) as { error: string; code: string };
    expect(replaced.status, JSON.stringify(answer)).toBe(403);
    expect(answer.error).toContain(`route ${id} also names tenants token "team-a" may not change`);
    const { rows } = await query<{ tenants: string[] }>(
      db,
      'SELECT tenants FROM kelsingra_routes WHERE id = $1',
      [id],
    );
    expect(rows[0]?.tenants.sort()).toEqual(['t1', 'team-a-1', 'team-a-2']);
    // Its own tenants it may still drop.
    const own = await put(['team-a-1', 't1'], true);
    expect(own.status).toBe(403);
    expect(((await own.json()) as { error: string }).error).toContain('may not route tenant t1');
  });
});
