/**
 * Gateway sync with a real HAProxy running deploy/reverse-proxy/haproxy.cfg (addresses, socket,
 * map path and listen port substituted), in front of a real `kelsingra server --gateway haproxy`:
 * only intercepted tenants reach Kelsingra, the rule goes within a second of leave or lease
 * expiry, a killed server agent leaves its tenants on the base, and a restart reconciles.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HaproxyDriver } from '../../server/gateway-sync/haproxy.js';
import {
  GATEWAY_TOKEN,
  kelsingra,
  msToBaseAfterKill,
  msUntil,
  program,
  recipe,
  recorder,
  runProgram,
  synced,
  text,
  viaGateway,
} from '../support/gateways.js';
import {
  type Cleanup,
  clientEnv,
  freePort,
  interceptDetached,
  killQuietly,
  run,
  type ServerProcess,
  tempDir,
  waitFor,
} from '../support/helpers.js';

describe('gateway sync: HAProxy over its Runtime API', () => {
  const cleanups: Cleanup[] = [];
  const agents: Cleanup[] = [];
  let ports: { control: number; data: number; haproxy: number };
  let mapFile: string;
  let driver: HaproxyDriver;
  let base: Awaited<ReturnType<typeof recorder>>;
  let local: Awaited<ReturnType<typeof recorder>>;
  let v2: Awaited<ReturnType<typeof recorder>>;
  let config: string;
  let server: ServerProcess;

  const start = async (extra: string[] = []) => {
    server = await kelsingra({ control: ports.control, data: ports.data }, config, cleanups, extra);
    await synced(server.control);
    // HAProxy takes Kelsingra back only after two good health checks (rise 2, 500 ms apart):
    // until then intercepted tenants go to the base, as the fail-safe means them to.
    await waitFor(
      async () =>
        /^billing_via_kelsingra,kelsingra,(?:[^,]*,){15}UP/m.test(await driver.command('show stat')),
      10_000,
      'HAProxy to see Kelsingra up',
    );
    return server;
  };
  const env = () => clientEnv(server, GATEWAY_TOKEN, { KELSINGRA_HOLDER: 'dev-alice' });
  const answer = async (tenant: string) => text(await viaGateway(ports.haproxy, tenant));

  beforeAll(async () => {
    const bin = program('haproxy');
    base = await recorder('base', cleanups);
    local = await recorder('local', cleanups);
    v2 = await recorder('v2', cleanups);
    ports = { control: await freePort(), data: await freePort(), haproxy: await freePort() };
    const dir = tempDir('kelsingra-haproxy-');
    mapFile = join(dir, 'kelsingra.map');
    const socket = join(dir, 'admin.sock');
    writeFileSync(mapFile, '');
    const cfg = recipe('haproxy.cfg', [
      ['stats socket /run/haproxy/admin.sock mode 660', `stats socket ${socket} mode 600`],
      ['/etc/haproxy/kelsingra.map', mapFile],
      ['bind :80', `bind 127.0.0.1:${ports.haproxy}`],
      [
        'kelsingra-data.kelsingra.svc.cluster.local:7701 check addr kelsingra-control.kelsingra.svc.cluster.local port 7700',
        `127.0.0.1:${ports.data} check addr 127.0.0.1 port ${ports.control}`,
      ],
      ['billing.dev.svc.cluster.local:8080', `127.0.0.1:${base.port}`],
      ['kelsingra-control.kelsingra.svc.cluster.local:7700', `127.0.0.1:${ports.control}`],
    ]);
    writeFileSync(join(dir, 'haproxy.cfg'), cfg);
    await runProgram(bin, ['-db', '-f', join(dir, 'haproxy.cfg')], ports.haproxy, cleanups);
    driver = new HaproxyDriver({ socket, map: mapFile });
    config = [
      'token: gateway-sync-test-token-7f2e',
      'leaseTtl: 2',
      'heartbeatInterval: 1',
      'routeTargets: ["http://127.0.0.1:*"]',
      'services:',
      `  billing: { upstream: "http://127.0.0.1:${base.port}" }`,
      'gateway:',
      '  driver: haproxy',
      `  socket: ${socket}`,
      `  map: ${mapFile}`,
      '',
    ].join('\n');
    await start();
  });

  afterAll(async () => {
    for (const c of [...agents, ...cleanups].reverse()) await Promise.resolve(c()).catch(() => undefined);
  });

  it('sends an intercepted tenant to Kelsingra once intercept returns, every other tenant straight to the base', async () => {
    expect(await answer('t1')).toBe('base');
    const icp = await interceptDetached(env(), 'billing', 't1', local.port, agents);
    // No waiting: intercept returned, so the gateway has it.
    expect(await answer('t1')).toBe('local');
    expect((await driver.show()).get('billing/t1')).toBe('kelsingra');
    expect(readFileSync(mapFile, 'utf8')).toContain('billing/t1 kelsingra\n');
    // t2 went straight from HAProxy to the base: Kelsingra would have marked it.
    base.hits.length = 0;
    expect(await answer('t2')).toBe('base');
    expect(base.hits[0]?.headers['x-kelsingra-hop']).toBeUndefined();
    expect((await driver.show()).has('billing/t2')).toBe(false);

    const left = await run(['leave', icp.id], env());
    expect(left.exitCode, left.stderr).toBe(0);
    const ms = await msUntil(async () => (await answer('t1')) === 'base', 1_000, 't1 back on the base');
    console.log(`gateway-haproxy: leave -> base in ${ms.toFixed(0)} ms`);
    expect(ms).toBeLessThanOrEqual(1_000);
    expect((await driver.show()).has('billing/t1')).toBe(false);
  });

  it('sends a tenant route straight to its target, not through Kelsingra', async () => {
    const set = await run(
      ['route', 'set', 'billing', '--tenants', 't3', '--to', `http://127.0.0.1:${v2.port}`, '--json'],
      env(),
    );
    expect(set.exitCode, set.stderr).toBe(0);
    await waitFor(
      async () => (await driver.show()).get('billing/t3') === `127.0.0.1:${v2.port}`,
      2_000,
      'the route in the map',
    );
    expect(await answer('t3')).toBe('v2');
    expect(v2.hits.at(-1)?.headers['x-kelsingra-hop']).toBeUndefined();
    const del = await run(['route', 'delete', 'billing', '--tenants', 't3'], env());
    expect(del.exitCode, del.stderr).toBe(0);
    await waitFor(async () => !(await driver.show()).has('billing/t3'), 1_000, 'the route out of the map');
    expect(await answer('t3')).toBe('base');
  });

  it('takes the rule out within a second of the lease lapsing', async () => {
    const icp = await interceptDetached(env(), 'billing', 't4', local.port, () => undefined);
    expect(await answer('t4')).toBe('local');
    const killedAt = performance.now();
    killQuietly(icp.agentPid);
    // The lease (2 s) lapses at most 2 s after the last renewal before the kill.
    await waitFor(async () => !(await driver.show()).has('billing/t4'), 6_000, 't4 out of the map');
    const ms = performance.now() - killedAt;
    console.log(`gateway-haproxy: agent killed -> rule gone in ${ms.toFixed(0)} ms (lease 2 s)`);
    expect(ms).toBeLessThanOrEqual(2_000 + 1_000);
    expect(await answer('t4')).toBe('base');
  });

  it('keeps an intercepted tenant on the base when the server agent is killed, and reconciles when it restarts', async () => {
    const icp = await interceptDetached(env(), 'billing', 't5', local.port, () => undefined);
    expect(await answer('t5')).toBe('local');
    // The developer's agent goes too, so nobody re-creates the intercept after the restart.
    killQuietly(icp.agentPid);
    const ms = await msToBaseAfterKill('haproxy', server, answer, 't5', 2_000);
    expect(ms).toBeLessThanOrEqual(2_000);
    // The map still says kelsingra (nobody removed it); the restart must.
    expect((await driver.show()).get('billing/t5')).toBe('kelsingra');
    const restartedAt = performance.now();
    await start();
    const reconciled = performance.now() - restartedAt;
    console.log(
      `gateway-haproxy: restart -> map reconciled in ${reconciled.toFixed(0)} ms (process start included)`,
    );
    expect((await driver.show()).has('billing/t5')).toBe(false);
    expect(readFileSync(mapFile, 'utf8')).not.toContain('billing/t5');
    base.hits.length = 0;
    expect(await answer('t5')).toBe('base');
    expect(base.hits[0]?.headers['x-kelsingra-hop']).toBeUndefined();
  });
});
