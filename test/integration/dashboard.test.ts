/**
 * `kelsingra dashboard` end to end, without a TTY: a real server agent, real detached
 * intercepts held by two developers, requests through the data port, and the dashboard's
 * NDJSON and plain output read from a pipe.
 */
import { describe, expect, it } from 'vitest';
import type { DashboardSnapshot, InterceptStats } from '../../src/client/dashboard/dashboard-model.js';
import {
  background,
  CLOSED_PORT,
  cleanupsAfterEach,
  cli,
  clientEnv,
  interceptDetached,
  startServerProcess,
  textService,
  viaProxy,
  waitFor,
} from '../support/helpers.js';

const TOKEN = 'dashboard-test-secret-7c2d';

/** One NDJSON line of `dashboard --json`: the model's snapshot, and whose intercepts it shows. */
type Line = DashboardSnapshot & { scope: string };

const cleanups = cleanupsAfterEach();

async function setup() {
  const upstream = await textService('upstream', cleanups);
  const local = await textService('local', cleanups);
  const server = await startServerProcess([
    '--service',
    `billing=${upstream.url}`,
    '--service',
    `orders=${upstream.url}`,
    '--token',
    TOKEN,
  ]);
  cleanups.push(() => server.stop());
  const alice = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice' });
  const bob = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'bob' });
  // Whatever happens, each developer's intercepts end (before the server stops).
  cleanups.push(() => cli(['leave', '--all'], alice));
  cleanups.push(() => cli(['leave', '--all'], bob));
  return { server, local, alice, bob };
}

const detach = (env: Record<string, string>, svc: string, tenant: string, port: number) =>
  interceptDetached(env, svc, tenant, port, cleanups);

/** A dashboard running in the background, its stdout parsed line by line. */
function watch(args: string[], env: Record<string, string>) {
  const dash = background(['dashboard', ...args], env, cleanups);
  const lines = () =>
    dash
      .stdout()
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as Line);
  return { ...dash, lines };
}

describe('kelsingra dashboard (no TTY)', () => {
  it('--json streams NDJSON with live counts, errors and latency for your own intercepts', async () => {
    const { server, local, alice, bob } = await setup();
    const mine = await detach(alice, 'billing', 't1', local.port);
    const theirs = await detach(bob, 'orders', 't2', local.port);

    const dash = watch(['--json', '--interval', '1'], alice);
    const first = await waitFor(() => dash.lines()[0], 20_000, 'the first NDJSON line');
    expect(first.connection).toBe('live');
    expect(first.scope).toBe('mine');
    expect(first.intercepts.map((i) => i.id)).toEqual([mine.id]);
    expect(first.intercepts[0]).toMatchObject({
      service: 'billing',
      tenant: 't1',
      holder: 'alice',
      requests: 0,
      errors: 0,
    });
    expect(first.upstreams.map((u) => u.service).sort()).toEqual(['billing', 'orders']);

    for (const path of ['/a', '/b', '/c'])
      expect((await viaProxy(server, 'billing', 't1', path)).status).toBe(200);
    expect((await viaProxy(server, 'billing', 't1', '/fail')).status).toBe(503);
    // Bob's traffic is not in alice's view.
    expect((await viaProxy(server, 'orders', 't2', '/x')).status).toBe(200);

    const line = await waitFor(
      () => dash.lines().find((l) => (l.intercepts[0]?.requests ?? 0) >= 4),
      20_000,
      `a line with the four requests\n${dash.describe()}`,
    );
    const stats = line.intercepts[0] as InterceptStats;
    expect(line.intercepts.map((i) => i.id)).toEqual([mine.id]);
    expect(stats).toMatchObject({
      requests: 4,
      errors: 1,
      lastRequest: { method: 'GET', path: '/fail', status: 503 },
    });
    expect(stats.windowRequests).toBe(4);
    expect(stats.rate).toBeGreaterThan(0);
    expect(stats.errorRate).toBe(0.25);
    expect(stats.p50Ms).toBeGreaterThanOrEqual(0);
    expect(stats.p99Ms).toBeGreaterThanOrEqual(stats.p50Ms as number);
    expect(dash.lines().every((l) => !l.intercepts.some((i) => i.id === theirs.id))).toBe(true);

    // Ctrl-C ends it cleanly.
    dash.sub.kill('SIGINT');
    const r = await dash.sub;
    expect(r.exitCode, dash.describe()).toBe(0);
    expect(String(r.stderr)).toBe('');
  }, 120_000);

  it('--once --json shows requests made before it started (the server keeps the last 200)', async () => {
    const { server, local, alice } = await setup();
    const mine = await detach(alice, 'billing', 't1', local.port);
    for (const path of ['/a', '/b', '/fail/c']) {
      const res = await viaProxy(server, 'billing', 't1', path);
      await res.text();
    }
    // `logs` sees them: the dashboard must too.
    await waitFor(async () => {
      const logs = await cli(['logs', mine.id], alice);
      return String(logs.stdout).includes('/fail/c');
    });
    const once = await cli(['dashboard', '--json', '--once', '--interval', '1'], alice);
    expect(once.exitCode, String(once.stderr)).toBe(0);
    const doc = JSON.parse(String(once.stdout)) as Line;
    expect(doc.intercepts[0]).toMatchObject({ id: mine.id, requests: 3, errors: 1 });
    expect(doc.intercepts[0]?.lastRequest).toMatchObject({ path: '/fail/c', status: 503 });
  }, 120_000);

  it("--all shows every developer's intercepts; the default only your own", async () => {
    const { server, local, alice, bob } = await setup();
    const mine = await detach(alice, 'billing', 't1', local.port);
    const theirs = await detach(bob, 'orders', 't2', local.port);
    // Pass-through traffic makes the upstream healthy.
    expect((await viaProxy(server, 'orders', 't9', '/ok')).status).toBe(200);

    const all = await cli(['dashboard', '--all', '--json', '--once', '--interval', '1'], alice);
    expect(all.exitCode, String(all.stderr)).toBe(0);
    const lines = String(all.stdout).trim().split('\n');
    expect(lines).toHaveLength(1);
    const doc = JSON.parse(lines[0] as string) as Line;
    expect(doc.scope).toBe('all');
    expect(doc.intercepts.map((i) => [i.id, i.holder]).sort()).toEqual(
      [
        [mine.id, 'alice'],
        [theirs.id, 'bob'],
      ].sort(),
    );
    // Health-checked from the start, whether or not traffic went there.
    expect(doc.upstreams.find((u) => u.service === 'orders')?.state).toBe('healthy');
    expect(doc.upstreams.find((u) => u.service === 'billing')?.state).toBe('healthy');

    const own = await cli(['dashboard', '--json', '--once', '--interval', '1'], bob);
    expect(own.exitCode, String(own.stderr)).toBe(0);
    expect((JSON.parse(String(own.stdout)) as Line).intercepts.map((i) => i.id)).toEqual([theirs.id]);

    // Plain table in a pipe: no ANSI codes.
    const plain = await cli(['dashboard', '--all', '--once', '--interval', '1'], {
      ...alice,
      FORCE_COLOR: '1',
    });
    expect(plain.exitCode, String(plain.stderr)).toBe(0);
    expect(plain.stdout).toMatch(/SERVICE\s+TENANT\s+HOLDER\s+REQ\/S/);
    expect(plain.stdout).toMatch(/billing\s+t1\s+alice/);
    expect(plain.stdout).toMatch(/orders\s+t2\s+bob/);
    expect(plain.stdout).toMatch(/UPSTREAMS/);
  }, 120_000);

  it('a wrong token exits 3, an unreachable server 6', async () => {
    const { alice } = await setup();
    const bad = await cli(['dashboard', '--json'], { ...alice, KELSINGRA_TOKEN: 'wrong' });
    expect(bad.exitCode, String(bad.stderr)).toBe(3);
    expect(bad.stderr).toMatch(/token/);
    expect(bad.stdout).toBe('');

    const gone = await cli(['dashboard'], {
      ...alice,
      KELSINGRA_SERVER: `http://127.0.0.1:${CLOSED_PORT}`,
    });
    expect(gone.exitCode, String(gone.stderr)).toBe(6);
    expect(gone.stderr).toMatch(/cannot reach/);
  });
});
