/**
 * Gateway sync with a real Caddy running deploy/reverse-proxy/caddy.json (addresses and ports
 * substituted), in front of a real `kelsingra server --gateway caddy`: the service's map
 * handler is replaced through the admin API on every change.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
  ROOT,
  run,
  type ServerProcess,
  tempDir,
  waitFor,
} from '../support/helpers.js';

describe('gateway sync: Caddy through its admin API', () => {
  const cleanups: Cleanup[] = [];
  const agents: Cleanup[] = [];
  let ports: { control: number; data: number; caddy: number; admin: number };
  let base: Awaited<ReturnType<typeof recorder>>;
  let local: Awaited<ReturnType<typeof recorder>>;
  let v2: Awaited<ReturnType<typeof recorder>>;
  let config: string;
  let server: ServerProcess;

  const start = async () => {
    server = await kelsingra({ control: ports.control, data: ports.data }, config, cleanups);
    await synced(server.control);
  };
  const env = () => clientEnv(server, GATEWAY_TOKEN, { KELSINGRA_HOLDER: 'dev-carol' });
  const answer = async (tenant: string) => text(await viaGateway(ports.caddy, tenant));
  const mappings = async () => {
    const res = await fetch(`http://127.0.0.1:${ports.admin}/id/kelsingra_billing/mappings`);
    return res.ok ? (((await res.json()) as { input: string; outputs: string[] }[] | null) ?? []) : [];
  };

  beforeAll(async () => {
    const bin = program('caddy');
    base = await recorder('base', cleanups);
    local = await recorder('local', cleanups);
    v2 = await recorder('v2', cleanups);
    ports = {
      control: await freePort(),
      data: await freePort(),
      caddy: await freePort(),
      admin: await freePort(),
    };
    const dir = tempDir('kelsingra-caddy-');
    const shipped = JSON.parse(readFileSync(join(ROOT, 'deploy', 'reverse-proxy', 'caddy.json'), 'utf8'));
    expect(shipped['//']).toBeInstanceOf(Array);
    const json = recipe('caddy.json', [
      ['kelsingra-data.kelsingra.svc.cluster.local:7701', `127.0.0.1:${ports.data}`],
      ['billing.dev.svc.cluster.local:8080', `127.0.0.1:${base.port}`],
      ['":80"', `"127.0.0.1:${ports.caddy}"`],
      ['127.0.0.1:2019', `127.0.0.1:${ports.admin}`],
    ]);
    const loaded = JSON.parse(json);
    delete loaded['//'];
    writeFileSync(join(dir, 'caddy.json'), JSON.stringify(loaded));
    await runProgram(bin, ['run', '--config', join(dir, 'caddy.json')], ports.caddy, cleanups, {
      XDG_CONFIG_HOME: join(dir, 'config'),
      XDG_DATA_HOME: join(dir, 'data'),
      HOME: dir,
    });
    config = [
      `token: ${GATEWAY_TOKEN}`,
      'routeTargets: ["http://127.0.0.1:*"]',
      'services:',
      `  billing: { upstream: "http://127.0.0.1:${base.port}" }`,
      'gateway:',
      '  driver: caddy',
      `  adminUrl: http://127.0.0.1:${ports.admin}`,
      '',
    ].join('\n');
    await start();
  });

  afterAll(async () => {
    for (const c of [...agents, ...cleanups].reverse()) await Promise.resolve(c()).catch(() => undefined);
  });

  it('sends an intercepted tenant to Kelsingra once intercept returns, others straight to the base, and back within a second of leave', async () => {
    expect(await answer('t1')).toBe('base');
    const icp = await interceptDetached(env(), 'billing', 't1', local.port, agents);
    expect(await answer('t1')).toBe('local');
    expect(await mappings()).toEqual([{ input: 't1', outputs: ['kelsingra'] }]);
    base.hits.length = 0;
    expect(await answer('t2')).toBe('base');
    expect(base.hits[0]?.headers['x-kelsingra-hop']).toBeUndefined();

    const left = await run(['leave', icp.id], env());
    expect(left.exitCode, left.stderr).toBe(0);
    const ms = await msUntil(async () => (await answer('t1')) === 'base', 1_000, 't1 back on the base');
    console.log(`gateway-caddy: leave -> base in ${ms.toFixed(0)} ms`);
    expect(ms).toBeLessThanOrEqual(1_000);
    expect(await mappings()).toEqual([]);
  });

  it('sends a tenant route straight to its target', async () => {
    const set = await run(
      ['route', 'set', 'billing', '--tenants', 't3', '--to', `http://127.0.0.1:${v2.port}`],
      env(),
    );
    expect(set.exitCode, set.stderr).toBe(0);
    await waitFor(async () => (await answer('t3')) === 'v2', 3_000, 't3 on v2');
    expect(v2.hits.at(-1)?.headers['x-kelsingra-hop']).toBeUndefined();
    const del = await run(['route', 'delete', 'billing', '--tenants', 't3'], env());
    expect(del.exitCode, del.stderr).toBe(0);
    await waitFor(async () => (await answer('t3')) === 'base', 2_000, 't3 back on the base');
  });

  it('keeps an intercepted tenant on the base when the server agent is killed, and reconciles when it restarts', async () => {
    const icp = await interceptDetached(env(), 'billing', 't5', local.port, () => undefined);
    expect(await answer('t5')).toBe('local');
    killQuietly(icp.agentPid);
    const ms = await msToBaseAfterKill('caddy', server, answer, 't5', 1_000);
    expect(ms).toBeLessThanOrEqual(1_000);
    expect(await mappings()).toEqual([{ input: 't5', outputs: ['kelsingra'] }]);
    await start();
    expect(await mappings()).toEqual([]);
    expect(await answer('t5')).toBe('base');
  });
});
