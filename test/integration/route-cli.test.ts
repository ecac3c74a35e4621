/**
 * `kelsingra route set/list/delete` as users and scripts run them: the built CLI against a
 * real `kelsingra server` process, with real upstreams that answer their own name. Tenant
 * routes send some tenants of a service to another version (v2) without a tunnel; the
 * precedence is intercept > tenant route > base upstream.
 *
 * Over 400 lines on purpose: it is the list of the route commands's cases, each one self-contained; split,
 * one capability would be spread over several files.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseTarget, parseTenants, routeTable, shortTenants } from '../../src/cli/route-format.js';
import type { RemoveRoutesResult, RouteView, SetRouteResult } from '../../src/shared/protocol.js';
import {
  cleanupsAfterEach,
  cli,
  clientEnv,
  interceptDetached,
  type ServerProcess,
  startServerProcess,
  tempDir,
  textService,
  viaProxy,
} from '../support/helpers.js';

const TOKEN = 'route-test-secret-token-9c2d';
// Exit codes from src/shared/errors.ts (ExitCode), spelled out: scripts depend on the numbers.
const EXIT = { usage: 2, auth: 3, notFound: 4 } as const;
const ROUTE_ID = /^rt_[0-9a-f]{16}$/;

const cleanups = cleanupsAfterEach();

/** A server agent with billing and orders on the base upstream, and two other versions of billing. */
async function setup(extraArgs: string[] | ((v2Url: string) => string[]) = ['--token', TOKEN]) {
  const base = await textService('base', cleanups);
  const v2 = await textService('v2', cleanups);
  const v3 = await textService('v3', cleanups);
  const server = await startServerProcess([
    '--service',
    `billing=${base.url}`,
    '--service',
    `orders=${base.url}`,
    ...(typeof extraArgs === 'function' ? extraArgs(v2.url) : extraArgs),
  ]);
  cleanups.push(() => server.stop());
  // Targets as the server stores them: normalised URLs (`http://127.0.0.1:1234/`).
  const href = <T extends { url: string }>(s: T) => ({ ...s, href: new URL(s.url).href });
  return { server, base, v2: href(v2), v3: href(v3) };
}

/**
 * A tokens file with an admin token (platform), a developer token for every tenant
 * (everyone) and one limited to team-a-* tenants.
 */
function teamTokens(): string {
  const tokensFile = join(tempDir('kelsingra-tokens-'), 'tokens.yaml');
  writeFileSync(
    tokensFile,
    `tokens:
  - name: platform
    token: platform-admin-secret-1
    role: admin
  - name: everyone
    token: every-tenant-developer-3
  - name: team-a
    token: team-a-secret-token-2
    tenants: ['team-a-*']
`,
  );
  return tokensFile;
}

/** Which upstream answered a request for `tenant` on the data port (the first word of its body). */
async function who(server: ServerProcess, tenant: string, service = 'billing'): Promise<string> {
  const res = await viaProxy(server, service, tenant, '/invoices');
  const body = await res.text();
  expect(res.status, body).toBeLessThan(300);
  return body.split(' ')[0] as string;
}

async function whoAll(server: ServerProcess, tenants: string[], service = 'billing') {
  return Object.fromEntries(await Promise.all(tenants.map(async (t) => [t, await who(server, t, service)])));
}

/** The CLI, asserted to succeed. */
async function ok(args: string[], env: Record<string, string>) {
  const r = await cli(args, env);
  expect(r.exitCode, `kelsingra ${args.join(' ')}:\n${r.stderr}`).toBe(0);
  return { stdout: String(r.stdout), stderr: String(r.stderr) };
}

async function okJson<T>(args: string[], env: Record<string, string>): Promise<T> {
  const r = await ok([...args, '--json'], env);
  return JSON.parse(r.stdout) as T;
}

const setRoute = (env: Record<string, string>, service: string, tenants: string, ...targets: string[]) =>
  okJson<SetRouteResult>(
    ['route', 'set', service, '--tenants', tenants, ...targets.flatMap((t) => ['--to', t])],
    env,
  );

const listRoutes = (env: Record<string, string>, ...args: string[]) =>
  okJson<RouteView[]>(['route', 'list', ...args], env);

/** stderr of a failed `--json` run: one JSON object. */
function jsonError(stderr: unknown): { error: string; hint?: string; exitCode: number } {
  const text = String(stderr).trim();
  expect(text.split('\n')).toHaveLength(1);
  return JSON.parse(text);
}

describe('kelsingra route set', () => {
  it('sends the named tenants to the new version at once; other tenants and services keep the base', async () => {
    const { server, v2 } = await setup();
    const env = clientEnv(server, TOKEN);

    const r = await ok(['route', 'set', 'billing', '--tenants', 't1,t2', '--to', v2.url], env);
    expect(r.stdout).toMatch(
      new RegExp(
        `^route rt_[0-9a-f]{16}: billing for t1, t2 → ${v2.href.replaceAll('.', '\\.')} \\(created\\)$`,
      ),
    );
    // Live when the command returns: no polling.
    expect(await whoAll(server, ['t1', 't2', 't3'])).toEqual({ t1: 'v2', t2: 'v2', t3: 'base' });
    expect(await who(server, 't1', 'orders')).toBe('base');
    // (The server agent may also probe the target's health: count the callers' requests only.)
    expect(v2.hits.filter((h) => h.endsWith('/invoices'))).toEqual(['GET /invoices', 'GET /invoices']);

    const routes = await listRoutes(env);
    expect(routes).toHaveLength(1);
    expect(routes[0]).toMatchObject({ service: 'billing', tenants: ['t1', 't2'], targets: [v2.href] });
    expect(routes[0]?.id).toMatch(ROUTE_ID);
    expect(r.stdout).toContain(routes[0]?.id);
  });

  it('--json prints the server answer; setting it again adds tenants to the same route, --replace replaces them', async () => {
    const { server, v2 } = await setup();
    const env = clientEnv(server, TOKEN);

    const first = await setRoute(env, 'billing', 't1,t2', v2.url);
    expect(first).toMatchObject({ created: true, moved: [], removed: [] });
    expect(first.route).toMatchObject({ service: 'billing', tenants: ['t1', 't2'], targets: [v2.href] });
    expect(first.route.id).toMatch(ROUTE_ID);
    expect(first.route.createdBy).toBe('default');

    // Repeated and comma-separated tenants, duplicates dropped; the same targets: the same route.
    const second = await okJson<SetRouteResult>(
      ['route', 'set', 'billing', '-t', 't2,t3', '--tenants', 't4', '--tenant', 't3', '--to', v2.url],
      env,
    );
    expect(second.created).toBe(false);
    expect(second.route.id).toBe(first.route.id);
    expect([...second.route.tenants].sort()).toEqual(['t1', 't2', 't3', 't4']);
    expect(await whoAll(server, ['t1', 't2', 't3', 't4'])).toEqual({
      t1: 'v2',
      t2: 'v2',
      t3: 'v2',
      t4: 'v2',
    });

    const plain = await ok(
      ['route', 'set', 'billing', '--tenants', 't2,t3,t4', '--to', v2.url, '--replace'],
      env,
    );
    expect(plain.stdout).toMatch(/\(updated\)$/m);
    expect(await listRoutes(env)).toHaveLength(1);
    expect(await whoAll(server, ['t1', 't2', 't3', 't4'])).toEqual({
      t1: 'base',
      t2: 'v2',
      t3: 'v2',
      t4: 'v2',
    });
  });

  it('naming a tenant that another route has moves it, and a route left empty is removed', async () => {
    const { server, v2, v3 } = await setup();
    const env = clientEnv(server, TOKEN);
    const old = (await setRoute(env, 'billing', 't1,t2', v2.url)).route;

    const move = await ok(['route', 'set', 'billing', '--tenants', 't1', '--to', v3.url], env);
    expect(move.stdout).toMatch(/^route rt_[0-9a-f]{16}: billing for t1 → .* \(created\)$/m);
    expect(move.stdout).toMatch(new RegExp(`^t1 moved from ${old.id}$`, 'm'));
    expect(await whoAll(server, ['t1', 't2', 't3'])).toEqual({ t1: 'v3', t2: 'v2', t3: 'base' });

    const routes = await listRoutes(env);
    expect(routes.map((r) => [r.targets[0], r.tenants])).toEqual(
      expect.arrayContaining([
        [v2.href, ['t2']],
        [v3.href, ['t1']],
      ]),
    );
    expect(routes).toHaveLength(2);

    // Moving the last tenant of the v2 route deletes it.
    const last = await setRoute(env, 'billing', 't1,t2', v3.url);
    expect(last.moved).toEqual([{ tenant: 't2', from: old.id }]);
    expect(last.removed).toEqual([old.id]);
    const plain = await ok(['route', 'set', 'billing', '--tenants', 't1,t2', '--to', v3.url], env);
    expect(plain.stdout).not.toMatch(/moved/);
    expect((await listRoutes(env)).map((r) => r.id)).toEqual([last.route.id]);
    expect(await whoAll(server, ['t1', 't2', 't3'])).toEqual({ t1: 'v3', t2: 'v3', t3: 'base' });
  });

  it('many tenants in one route: one entry, shortened in the table, a tenant moved out on its own', async () => {
    const { server, v2, v3 } = await setup();
    const env = clientEnv(server, TOKEN);
    const tenants = Array.from({ length: 1000 }, (_, i) => `tenant-${i}`);

    const set = await setRoute(env, 'billing', tenants.join(','), v2.url);
    expect(set.route.tenants).toHaveLength(1000);
    const table = await ok(['route', 'list'], env);
    const lines = table.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^ID\s+SERVICE\s+TENANTS\s+TO$/);
    expect(lines[1]).toContain('tenant-0, tenant-1, tenant-2 … (+997 more)');
    expect(lines[1]).toContain(v2.href);

    // The common operation: one tenant moves from v2 to v3, the other 999 stay.
    const move = await ok(['route', 'set', 'billing', '--tenants', 'tenant-500', '--to', v3.url], env);
    expect(move.stdout).toMatch(new RegExp(`^tenant-500 moved from ${set.route.id}$`, 'm'));
    expect(await whoAll(server, ['tenant-499', 'tenant-500', 'tenant-999', 'tenant-1000'])).toEqual({
      'tenant-499': 'v2',
      'tenant-500': 'v3',
      'tenant-999': 'v2',
      'tenant-1000': 'base',
    });
    const routes = await listRoutes(env);
    expect(routes.find((r) => r.id === set.route.id)?.tenants).toHaveLength(999);
  });

  it('bad input: clear errors, exit codes, and nothing changes', async () => {
    const { server, v2 } = await setup();
    const env = clientEnv(server, TOKEN);

    const noTo = await cli(['route', 'set', 'billing', '--tenants', 't1'], env);
    expect(noTo.exitCode).toBe(EXIT.usage);
    expect(noTo.stderr).toMatch(/Missing required flag to/);
    expect(noTo.stderr).toMatch(/Hint: kelsingra route set --help/);

    const noTenants = await cli(['route', 'set', 'billing', '--to', v2.url], env);
    expect(noTenants.exitCode).toBe(EXIT.usage);
    expect(noTenants.stderr).toMatch(/Missing required flag tenants/);
    const emptyTenants = await cli(['route', 'set', 'billing', '--tenants', ' , ', '--to', v2.url], env);
    expect(emptyTenants.exitCode).toBe(EXIT.usage);
    expect(emptyTenants.stderr).toMatch(/--tenants names no tenant/);

    for (const bad of ['billing-v2:8080', 'ftp://billing-v2', 'not a url']) {
      const r = await cli(['route', 'set', 'billing', '--tenants', 't1', '--to', bad, '--json'], env);
      expect(r.exitCode, bad).toBe(EXIT.usage);
      expect(r.stdout).toBe('');
      const err = jsonError(r.stderr);
      expect(err.error).toBe(`--to ${JSON.stringify(bad)} is not an http(s) URL`);
      expect(err.hint).toMatch(/--to http:\/\/billing-v2:8080/);
    }

    const unknown = await cli(['route', 'set', 'shipping', '--tenants', 't1', '--to', v2.url], env);
    expect(unknown.exitCode).toBe(EXIT.notFound);
    expect(unknown.stderr).toMatch(/unknown service "shipping"; known services: billing, orders/);
    expect(unknown.stderr).toMatch(/Hint: pick one of the known services/);

    expect(await listRoutes(env)).toEqual([]);
    expect(await who(server, 't1')).toBe('base');
  });
});

describe('kelsingra route list', () => {
  it('an empty list says how to set a route; --json prints []', async () => {
    const { server } = await setup();
    const env = clientEnv(server, TOKEN);
    const plain = await ok(['route', 'list'], env);
    expect(plain.stdout).toMatch(/^No routes\. .*kelsingra route set billing --tenants t1,t2 --to http/);
    const json = await ok(['route', 'list', '--json'], env);
    expect(JSON.parse(json.stdout)).toEqual([]);
    expect(json.stderr).toBe('');
  });

  it('--service keeps one service; the table has one line per route', async () => {
    const { server, v2, v3 } = await setup();
    const env = clientEnv(server, TOKEN);
    const billing = (await setRoute(env, 'billing', 't1,t2', v2.url)).route;
    const orders = (await setRoute(env, 'orders', 't1', v3.url)).route;

    const all = await ok(['route', 'list'], env);
    const lines = all.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(3);
    expect(lines.find((l) => l.startsWith(billing.id))).toMatch(
      new RegExp(`^${billing.id}\\s+billing\\s+t1, t2\\s+${v2.href.replaceAll('.', '\\.')}$`),
    );
    expect(lines.find((l) => l.startsWith(orders.id))).toMatch(/\sorders\s+t1\s/);

    expect((await listRoutes(env, '--service', 'orders')).map((r) => r.id)).toEqual([orders.id]);
    const none = await ok(['route', 'list', '-s', 'nothing-routed'], env);
    expect(none.stdout).toMatch(/^No routes for nothing-routed\./);
  });
});

describe('kelsingra route delete', () => {
  it('by id: the tenants go back to the base upstream', async () => {
    const { server, v2 } = await setup();
    const env = clientEnv(server, TOKEN);
    const route = (await setRoute(env, 'billing', 't1,t2', v2.url)).route;

    const r = await ok(['route', 'delete', route.id], env);
    expect(r.stdout).toBe(`removed route ${route.id}: billing for t1, t2 → ${v2.href}`);
    expect(await whoAll(server, ['t1', 't2'])).toEqual({ t1: 'base', t2: 'base' });
    expect(await listRoutes(env)).toEqual([]);

    const again = await cli(['route', 'delete', route.id], env);
    expect(again.exitCode).toBe(EXIT.notFound);
    expect(again.stderr).toMatch(/Hint: kelsingra route list shows the routes/);
    const json = await cli(['route', 'delete', 'rt_0000000000', '--json'], env);
    expect(json.exitCode).toBe(EXIT.notFound);
    expect(json.stdout).toBe('');
    expect(jsonError(json.stderr)).toMatchObject({
      exitCode: EXIT.notFound,
      hint: expect.stringMatching(/route list/),
    });
  });

  it('by service, by service and target, and taking tenants out', async () => {
    const { server, v2, v3 } = await setup();
    const env = clientEnv(server, TOKEN);
    const toV2 = (await setRoute(env, 'billing', 't1,t2,t3', v2.url)).route;
    const toV3 = (await setRoute(env, 'billing', 't4', v3.url)).route;
    const orders = (await setRoute(env, 'orders', 't1', v2.url)).route;

    // Taking tenants out: the route stays for the others.
    const out = await okJson<RemoveRoutesResult>(['route', 'delete', 'billing', '--tenants', 't1,t4'], env);
    expect(out.removed.map((r) => r.id)).toEqual([toV3.id]);
    expect(out.updated).toHaveLength(1);
    expect(out.updated[0]).toMatchObject({ id: toV2.id, tenants: ['t2', 't3'] });
    expect(await whoAll(server, ['t1', 't2', 't3', 't4'])).toEqual({
      t1: 'base',
      t2: 'v2',
      t3: 'v2',
      t4: 'base',
    });
    expect(await who(server, 't1', 'orders')).toBe('v2');

    const plain = await ok(['route', 'delete', 'billing', '-t', 't3'], env);
    expect(plain.stdout).toBe(`updated route ${toV2.id}: now billing for t2 → ${v2.href}`);

    // By service and target: only that route.
    await setRoute(env, 'billing', 't4', v3.url);
    const byTarget = await okJson<RemoveRoutesResult>(['route', 'delete', 'billing', '--to', v3.url], env);
    expect(byTarget.removed.map((r) => r.targets)).toEqual([[v3.href]]);
    expect(await whoAll(server, ['t2', 't4'])).toEqual({ t2: 'v2', t4: 'base' });

    // By service: all of its routes, and no other service's.
    await setRoute(env, 'billing', 't4', v3.url);
    const all = await ok(['route', 'delete', 'billing'], env);
    expect(all.stdout.trimEnd().split('\n')).toHaveLength(2);
    expect((await listRoutes(env)).map((r) => r.id)).toEqual([orders.id]);
    expect(await whoAll(server, ['t2', 't4'])).toEqual({ t2: 'base', t4: 'base' });
  });

  it('nothing to delete: exit 4 with a hint; bad arguments: exit 2', async () => {
    const { server, v2 } = await setup();
    const env = clientEnv(server, TOKEN);
    await setRoute(env, 'billing', 't1', v2.url);

    const none = await cli(['route', 'delete', 'orders'], env);
    expect(none.exitCode).toBe(EXIT.notFound);
    expect(none.stderr).toMatch(/^Error: no route of orders$/m);
    expect(none.stderr).toMatch(/^Hint: kelsingra route list shows the routes$/m);
    const notNamed = await cli(['route', 'delete', 'billing', '--tenants', 't9', '--json'], env);
    expect(notNamed.exitCode).toBe(EXIT.notFound);
    expect(notNamed.stdout).toBe('');
    expect(jsonError(notNamed.stderr).error).toBe('no route of billing naming t9');

    const idWithFlags = await cli(['route', 'delete', 'rt_0123456789', '--tenants', 't1'], env);
    expect(idWithFlags.exitCode).toBe(EXIT.usage);
    expect(idWithFlags.stderr).toMatch(/is a route id: --to and --tenants go with a service name/);
    const badUrl = await cli(['route', 'delete', 'billing', '--to', 'billing-v2'], env);
    expect(badUrl.exitCode).toBe(EXIT.usage);
    const missing = await cli(['route', 'delete'], env);
    expect(missing.exitCode).toBe(EXIT.usage);
    expect(missing.stderr).toMatch(/Missing 1 required arg/);

    expect(await listRoutes(env)).toHaveLength(1);
    expect(await who(server, 't1')).toBe('v2');
  });
});

describe('precedence: intercept > tenant route > base', () => {
  it("an intercept beats the tenant's route, whichever came first; after leave the route serves again", async () => {
    const { server, v2 } = await setup();
    const local = await textService('local', cleanups);
    const env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice' });

    await setRoute(env, 'billing', 't1,t2', v2.url);
    await interceptDetached(env, 'billing', 't1', local.port, cleanups);
    expect(await whoAll(server, ['t1', 't2', 't3'])).toEqual({ t1: 'local', t2: 'v2', t3: 'base' });

    // A route set while the intercept holds the tenant does not take it over.
    await interceptDetached(env, 'billing', 't3', local.port, cleanups);
    await setRoute(env, 'billing', 't1,t2,t3', v2.url);
    expect(await whoAll(server, ['t1', 't2', 't3'])).toEqual({ t1: 'local', t2: 'v2', t3: 'local' });

    await ok(['leave', 'billing', '--tenant', 't1'], env);
    expect(await whoAll(server, ['t1', 't2', 't3'])).toEqual({ t1: 'v2', t2: 'v2', t3: 'local' });
    await ok(['leave', 'billing', '--tenant', 't3'], env);
    await ok(['route', 'delete', 'billing', '--tenants', 't3'], env);
    expect(await whoAll(server, ['t1', 't3'])).toEqual({ t1: 'v2', t3: 'base' });
  });
});

describe('tokens limited to tenants', () => {
  it('a team token routes only its tenants, and sees only its tenants in list', async () => {
    const tokensFile = teamTokens();
    // Tenant-limited tokens route only to targets the operator allows.
    const { server, v2, v3 } = await setup([
      '--tokens-file',
      tokensFile,
      '--route-target',
      'http://127.0.0.1:*',
    ]);
    const admin = clientEnv(server, 'platform-admin-secret-1');
    const team = clientEnv(server, 'team-a-secret-token-2');

    const mine = await setRoute(team, 'billing', 'team-a-1', v2.url);
    expect(mine.route.createdBy).toBe('team-a');
    expect(await who(server, 'team-a-1')).toBe('v2');

    const refused = await cli(['route', 'set', 'billing', '--tenants', 'team-a-2,t1', '--to', v3.url], team);
    expect(refused.exitCode).toBe(EXIT.auth);
    expect(refused.stderr).toMatch(/t1/);
    expect(refused.stderr).toMatch(/team-a/);
    expect(refused.stderr).toMatch(/Hint: ask the platform team for a token that covers this tenant/);
    expect(await whoAll(server, ['team-a-2', 't1'])).toEqual({ 'team-a-2': 'base', t1: 'base' });

    const theirs = await setRoute(admin, 'billing', 't1,t2,team-a-3', v3.url);
    // --replace would drop the admin's t1 and t2 from it: not the team's call.
    const drop = await cli(
      ['route', 'set', 'billing', '--tenants', 'team-a-3', '--to', v3.url, '--replace'],
      team,
    );
    expect(drop.exitCode).toBe(EXIT.auth);
    expect(drop.stderr).toContain(theirs.route.id);
    expect(await whoAll(server, ['t1', 'team-a-3'])).toEqual({ t1: 'v3', 'team-a-3': 'v3' });
    // Adding its own tenant to the same route is: the admin's stay, and the answer shows the
    // team only its own tenants; the route is still the admin's.
    const add = await setRoute(team, 'billing', 'team-a-4', v3.url);
    expect(add.route).toMatchObject({
      id: theirs.route.id,
      tenants: ['team-a-3', 'team-a-4'],
      createdBy: 'platform',
    });
    expect(await whoAll(server, ['t1', 'team-a-4'])).toEqual({ t1: 'v3', 'team-a-4': 'v3' });
    const seen = await listRoutes(team);
    expect(seen.map((r) => [r.id, r.tenants])).toEqual(
      expect.arrayContaining([
        [mine.route.id, ['team-a-1']],
        [theirs.route.id, ['team-a-3', 'team-a-4']],
      ]),
    );
    expect(seen).toHaveLength(2);
    const table = await ok(['route', 'list'], team);
    expect(table.stdout).not.toMatch(/\bt1\b|\bt2\b/);
    const all = await listRoutes(admin);
    expect(all.find((r) => r.id === theirs.route.id)?.tenants).toEqual(['t1', 't2', 'team-a-3', 'team-a-4']);

    await setRoute(admin, 'orders', 'other', v2.url);
    // Only routes naming its tenants: the admin's route for "other" alone is not seen.
    expect((await listRoutes(team)).map((r) => r.id).sort()).toEqual([mine.route.id, theirs.route.id].sort());
    // The team may take its own tenants out of a shared route, and sees no one else's in the answer.
    const out = await ok(['route', 'delete', 'billing', '--tenants', 'team-a-3', '--json'], team);
    expect(JSON.parse(out.stdout)).toEqual({
      removed: [],
      updated: [expect.objectContaining({ id: theirs.route.id })],
    });
    expect(out.stdout).not.toMatch(/"t1"|"t2"/);
    const everything = await cli(['route', 'delete', 'billing'], team);
    expect(everything.exitCode).toBe(EXIT.auth);
    expect(await whoAll(server, ['t1', 'team-a-1', 'team-a-3'])).toEqual({
      t1: 'v3',
      'team-a-1': 'v2',
      'team-a-3': 'base',
    });
    for (const out of [table.stdout, server.logs()]) {
      expect(out).not.toContain('team-a-secret-token-2');
      expect(out).not.toContain('platform-admin-secret-1');
    }
  });
});

describe('route targets the server allows', () => {
  it('without routeTargets only admin tokens set routes; a developer one, even for every tenant, is told why and routes nothing', async () => {
    const { server, v2 } = await setup(['--tokens-file', teamTokens()]);
    for (const token of ['team-a-secret-token-2', 'every-tenant-developer-3']) {
      const dev = clientEnv(server, token);
      const refused = await cli(['route', 'set', 'billing', '--tenants', 'team-a-1', '--to', v2.url], dev);
      expect(refused.exitCode, token).toBe(EXIT.auth);
      expect(refused.stderr).toContain('is a developer token');
      expect(refused.stderr).toContain('routeTargets');
    }
    expect(await who(server, 'team-a-1')).toBe('base');
    const admin = clientEnv(server, 'platform-admin-secret-1');
    await setRoute(admin, 'billing', 'team-a-1', v2.url);
    expect(await who(server, 'team-a-1')).toBe('v2');
  });

  it('with routeTargets every token is held to them, and targets with credentials are refused', async () => {
    const { server, v2, v3 } = await setup((v2Url) => [
      '--tokens-file',
      teamTokens(),
      '--route-target',
      `http://127.0.0.1:${new URL(v2Url).port}`,
    ]);
    const team = clientEnv(server, 'team-a-secret-token-2');
    const admin = clientEnv(server, 'platform-admin-secret-1');
    await setRoute(team, 'billing', 'team-a-1', v2.url);
    expect(await who(server, 'team-a-1')).toBe('v2');
    for (const env of [team, admin]) {
      const outside = await cli(['route', 'set', 'billing', '--tenants', 'team-a-2', '--to', v3.url], env);
      expect(outside.exitCode).toBe(EXIT.auth);
      expect(outside.stderr).toContain(`route target ${v3.href} is not among the allowed ones`);
      expect(outside.stderr).toContain('routeTargets');
    }
    // Another host on an allowed port is another host.
    const elsewhere = await cli(
      [
        'route',
        'set',
        'billing',
        '--tenants',
        'team-a-2',
        '--to',
        `http://localhost:${new URL(v2.url).port}`,
      ],
      admin,
    );
    expect(elsewhere.exitCode).toBe(EXIT.auth);
    const creds = await cli(
      [
        'route',
        'set',
        'billing',
        '--tenants',
        'team-a-2',
        '--to',
        `http://user:pw@127.0.0.1:${new URL(v2.url).port}/`,
      ],
      admin,
    );
    expect(creds.exitCode).toBe(EXIT.usage);
    expect(creds.stderr).toContain('cannot carry a user or password');
    expect(creds.stderr).not.toContain('pw@');
    expect(await who(server, 'team-a-2')).toBe('base');
  });
});

describe('help and did you mean (no server)', () => {
  const noServer = { KELSINGRA_CONFIG_DIR: tempDir('kelsingra-client-') };

  it('the route topic lists its commands, and each has examples', async () => {
    const root = await cli(['--help'], noServer);
    expect(root.stdout).toMatch(/^TOPICS\n {2}route +Route tenants/m);
    const topic = await cli(['route', '--help'], noServer);
    expect(topic.exitCode).toBe(0);
    for (const sub of ['set', 'list', 'delete']) {
      expect(topic.stdout).toMatch(new RegExp(`^ {2}route ${sub} +\\S`, 'm'));
      const r = await cli(['route', sub, '--help'], noServer);
      expect(r.exitCode, `route ${sub} --help: ${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^EXAMPLES\n {2}\\$ kelsingra route ${sub}\\b`, 'm'));
    }
    const help = await cli(['help', 'route', 'set'], noServer);
    expect(help.stdout).toMatch(/\$ kelsingra route set SERVICE/);
  });

  it('a mistyped route command suggests the right one and exits 2', async () => {
    const sub = await cli(['route', 'sett', 'billing'], noServer);
    expect(sub.exitCode).toBe(EXIT.usage);
    expect(sub.stderr).toMatch(/route sett is not a kelsingra command; did you mean route set\?/);
    const topic = await cli(['rotue', 'list', '--json'], noServer);
    expect(topic.exitCode).toBe(EXIT.usage);
    expect(jsonError(topic.stderr)).toMatchObject({ suggestion: 'route list' });
  });
});

describe('route formatting (no server)', () => {
  it('tenants: comma-separated and repeated, trimmed, deduplicated in order', () => {
    expect(parseTenants(['t1,t2', ' t3 ', 't2', ',,'])).toEqual(['t1', 't2', 't3']);
    expect(parseTenants(undefined)).toEqual([]);
  });

  it('targets: absolute http(s) URLs only', () => {
    expect(parseTarget(' http://billing-v2:8080 ', 'u')).toBe('http://billing-v2:8080/');
    expect(parseTarget('https://billing.internal/v2', 'u')).toBe('https://billing.internal/v2');
    for (const bad of ['billing-v2:8080', 'ftp://x', '', 'http://', '/v2'])
      expect(() => parseTarget(bad, 'u'), bad).toThrow(/is not an http\(s\) URL/);
  });

  it('long tenant lists are shortened, short ones are not', () => {
    expect(shortTenants(['a'])).toBe('a');
    expect(shortTenants(['a', 'b', 'c', 'd'])).toBe('a, b, c, d');
    expect(shortTenants(['a', 'b', 'c', 'd', 'e'])).toBe('a, b, c … (+2 more)');
    const view = {
      id: 'rt_0123456789',
      service: 'billing',
      tenants: ['t1'],
      targets: ['http://a:1', 'http://b:1'],
      createdBy: 'x',
      createdAt: '',
      updatedAt: '',
    };
    expect(routeTable([view])).toBe(
      'ID             SERVICE  TENANTS  TO\nrt_0123456789  billing  t1       http://a:1, http://b:1',
    );
  });
});
