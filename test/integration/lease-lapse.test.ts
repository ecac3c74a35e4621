/**
 * A laptop that slept: the client agent is stopped (SIGSTOP) for longer than its lease, then
 * continued. A request in flight to the frozen tunnel fails within the heartbeat, the tenant
 * falls back once the lease lapses, and the intercept comes back under its own id, with the
 * lapse told in the agent's log and in `logs`.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  cleanupsAfterEach,
  clientEnv,
  type DetachedIntercept,
  interceptDetached,
  killQuietly,
  run,
  type ServerProcess,
  sleep,
  startServerProcess,
  textService,
  viaProxy,
  waitFor,
} from '../support/helpers.js';
import { freshDatabase } from '../support/postgres.js';

const TOKEN = 'lease-lapse-token-1';
const HEARTBEAT_S = 1;
const LEASE_S = 3;
const cleanups = cleanupsAfterEach();

/** A server agent with this heartbeat and lease, and a detached intercept of billing for t1. */
async function intercepted(heartbeatS: number, leaseS: number, extra: string[] = []) {
  const base = await textService('base', cleanups);
  const local = await textService('local', cleanups);
  const server = await startServerProcess([
    '--service',
    `billing=${base.url}`,
    '--token',
    TOKEN,
    '--heartbeat-interval',
    String(heartbeatS),
    '--lease-ttl',
    String(leaseS),
    ...extra,
  ]);
  cleanups.push(() => server.stop());
  const env = clientEnv(server, TOKEN);
  const icp = await interceptDetached(env, 'billing', 't1', local.port, cleanups);
  // Registered after the kill in interceptDetached, so it runs first: a stopped agent ignores SIGTERM.
  cleanups.push(() => killQuietly(icp.agentPid, 'SIGCONT'));
  return { server, env, icp };
}

/** After SIGCONT: t1 is served locally again, by the intercept of the same id and no other. */
async function backUnderSameId(
  server: ServerProcess,
  env: Record<string, string>,
  icp: DetachedIntercept,
): Promise<void> {
  await waitFor(
    async () => (await (await viaProxy(server, 'billing', 't1', '/x')).text()) === 'local GET /x',
    20_000,
    'the intercept to serve again after the agent continued',
  ).catch((err: Error) => {
    throw new Error(`${err.message}\nagent log:\n${readFileSync(icp.logFile, 'utf8').slice(-3_000)}`);
  });
  const list = JSON.parse((await run(['list', '--json'], env)).stdout) as { id: string; tenant: string }[];
  expect(list.filter((i) => i.tenant === 't1').map((i) => i.id)).toEqual([icp.id]);
}

/** The detached agent's log, once it has reported the lapse. */
function lapseInAgentLog(icp: DetachedIntercept): Promise<string> {
  return waitFor(() => {
    const text = readFileSync(icp.logFile, 'utf8');
    return text.includes('lease lapsed at') ? text : undefined;
  }, 5_000);
}

describe.each([
  { store: 'memory', database: false },
  { store: 'PostgreSQL', database: true },
])('a client stopped for longer than its lease ($store store)', ({ database }) => {
  it('fails in-flight requests within the heartbeat, falls back, and comes back under the same id, saying so', async () => {
    const databaseArgs = database ? ['--database-url', await freshDatabase(cleanups)] : [];
    const { server, env, icp } = await intercepted(HEARTBEAT_S, LEASE_S, databaseArgs);
    expect(await (await viaProxy(server, 'billing', 't1', '/x')).text()).toBe('local GET /x');

    process.kill(icp.agentPid, 'SIGSTOP');
    const sentAt = Date.now();
    const res = await viaProxy(server, 'billing', 't1', '/in-flight', {
      signal: AbortSignal.timeout(20_000),
    });
    const failedAfter = Date.now() - sentAt;
    expect(res.status).toBe(502);
    expect(res.headers.get('x-kelsingra-error')).toBe('tunnel-disconnected');
    const body = (await res.json()) as { error: string; intercept: string };
    expect(body.intercept).toBe(icp.id);
    expect(body.error).toMatch(/^Kelsingra: intercept icp_\w+ .*stopped answering heartbeats/);
    // One heartbeat, plus headroom for a loaded machine; the regular beat alone takes up to two.
    expect(failedAfter).toBeLessThan(HEARTBEAT_S * 1000 + 1_500);

    await waitFor(
      async () => (await (await viaProxy(server, 'billing', 't1', '/x')).text()) === 'base GET /x',
      (LEASE_S + 10) * 1000,
      'the tenant to fall back to base once the lease lapsed',
    );
    await sleep(1_500);
    process.kill(icp.agentPid, 'SIGCONT');

    await backUnderSameId(server, env, icp);
    const servedAgainAt = Date.now();

    const logs = await run(['logs', icp.id, '--json'], env);
    expect(logs.exitCode, logs.stderr).toBe(0);
    const lapse = logs.stdout
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as Record<string, unknown>)
      .find((e) => e.type === 'intercept' && e.action === 'lapsed');
    expect(lapse).toMatchObject({ fallback: 'base', intercept: { id: icp.id } });
    // From the lapse to the re-create: at least the time it was left stopped after the fallback.
    expect(lapse?.fallbackMs as number).toBeGreaterThanOrEqual(1_500);
    expect(lapse?.fallbackMs as number).toBeLessThanOrEqual(servedAgainAt - sentAt);

    const agentLog = await lapseInAgentLog(icp);
    expect(agentLog).toMatch(
      new RegExp(
        `lease lapsed at [\\d:.]+: the tenant's traffic went to the base service for [\\d.]+ s; the intercept is back as ${icp.id} \\(same id\\)`,
      ),
    );
  });
});

describe('a client stopped for longer than its lease but not long enough to lose its tunnel', () => {
  it('takes the intercept back under the same id instead of exiting on "lease expired"', async () => {
    // A heartbeat longer than the lease: the lease lapses while the tunnel is still up.
    const { server, env, icp } = await intercepted(20, 2);

    process.kill(icp.agentPid, 'SIGSTOP');
    // No requests meanwhile: one would probe the tunnel and cut it.
    await waitFor(
      () => server.logs().includes('intercept lease expired'),
      15_000,
      'the lease to lapse while the agent is stopped',
    );
    expect(await (await viaProxy(server, 'billing', 't1', '/x')).text()).toBe('base GET /x');
    await sleep(500);
    process.kill(icp.agentPid, 'SIGCONT');

    await backUnderSameId(server, env, icp);
    const agentLog = await lapseInAgentLog(icp);
    expect(agentLog).toContain(`the intercept is back as ${icp.id} (same id)`);
    expect(agentLog).not.toContain('intercept ended');
  });
});
