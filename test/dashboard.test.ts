/**
 * `kelsingra dashboard` end to end, without a TTY: a real server agent, real detached
 * intercepts held by two developers, requests through the data port, and the dashboard's
 * NDJSON and plain output read from a pipe.
 */
import { readFileSync } from 'node:fs';
import type http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { cli, clientEnv, freePort, listen, startServerProcess, viaProxy, waitFor } from './helpers.js';

const TOKEN = 'dashboard-test-secret-7c2d';

interface Stats {
  id: string;
  service: string;
  tenant: string;
  holder: string;
  requests: number;
  errors: number;
  windowRequests: number;
  rate: number;
  errorRate: number | null;
  p50Ms: number | null;
  p99Ms: number | null;
  lastRequest: { method: string; path: string; status: number } | null;
}

interface Line {
  at: number;
  connection: string;
  scope: string;
  intercepts: Stats[];
  upstreams: { service: string; url: string; state: string }[];
}

type Cleanup = () => unknown | Promise<unknown>;
const cleanups: Cleanup[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) {
    try {
      await cleanup();
    } catch {
      // Best effort: one failed cleanup must not hide the others.
    }
  }
});

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function killPid(pid: number): Promise<void> {
  if (!isAlive(pid)) return;
  try {
    process.kill(pid, 'SIGTERM');
    await waitFor(() => !isAlive(pid), 5_000, `pid ${pid} to exit`);
  } catch {
    if (isAlive(pid)) process.kill(pid, 'SIGKILL');
  }
}

function closeServer(server: http.Server): Promise<void> {
  server.closeAllConnections();
  return new Promise((resolve) => server.close(() => resolve()));
}

/** An HTTP service that answers 503 on /fail and 200 otherwise. */
async function service(name: string) {
  const svc = await listen((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(req.url?.startsWith('/fail') ? 503 : 200, { 'content-type': 'text/plain' });
      res.end(`${name} ${req.method} ${req.url}`);
    });
  });
  cleanups.push(() => closeServer(svc.server));
  return svc;
}

async function setup() {
  const upstream = await service('upstream');
  const local = await service('local');
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

async function detach(
  env: Record<string, string>,
  svc: string,
  tenant: string,
  port: number,
): Promise<{ id: string; agentPid: number }> {
  const r = await cli(
    ['intercept', svc, '--tenant', tenant, '--port', String(port), '--detach', '--json'],
    env,
  );
  expect(r.exitCode, `intercept --detach failed:\n${r.stderr}`).toBe(0);
  const doc = JSON.parse(String(r.stdout)) as { id: string; agentPid: number };
  if (typeof doc.agentPid === 'number') cleanups.push(() => killPid(doc.agentPid));
  return doc;
}

/** A dashboard running in the background, its stdout parsed line by line. */
function watch(args: string[], env: Record<string, string>) {
  const sub = cli(['dashboard', ...args], env);
  let stdout = '';
  let stderr = '';
  sub.stdout?.on('data', (c: Buffer) => (stdout += c.toString()));
  sub.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  cleanups.push(async () => {
    if (sub.exitCode === null && sub.signalCode === null) {
      sub.kill('SIGKILL');
      await sub.catch(() => undefined);
    }
  });
  const lines = () =>
    stdout
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as Line);
  return { sub, lines, describe: () => `stdout:\n${stdout}\nstderr:\n${stderr}` };
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
    const stats = line.intercepts[0] as Stats;
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
    expect(doc.upstreams.find((u) => u.service === 'orders')?.state).toBe('ok');
    expect(doc.upstreams.find((u) => u.service === 'billing')?.state).toBe('idle');

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
      KELSINGRA_SERVER: `http://127.0.0.1:${await freePort()}`,
    });
    expect(gone.exitCode, String(gone.stderr)).toBe(6);
    expect(gone.stderr).toMatch(/cannot reach/);
  });
});
