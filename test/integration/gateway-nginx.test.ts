/**
 * Gateway sync with a real nginx running deploy/reverse-proxy/nginx-gateway-sync.conf (addresses,
 * include path and listen ports substituted), in front of a real `kelsingra server --gateway
 * nginx`: the include is rewritten and nginx reloaded on every change, and intercept answers
 * only once nginx's workers serve the new file.
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
  run,
  type ServerProcess,
  tempDir,
  waitFor,
} from '../support/helpers.js';

describe('gateway sync: nginx with a generated map include and a reload', () => {
  const cleanups: Cleanup[] = [];
  const agents: Cleanup[] = [];
  let ports: { control: number; data: number; nginx: number; version: number };
  let include: string;
  let base: Awaited<ReturnType<typeof recorder>>;
  let local: Awaited<ReturnType<typeof recorder>>;
  let v2: Awaited<ReturnType<typeof recorder>>;
  let config: string;
  let server: ServerProcess;

  const start = async () => {
    server = await kelsingra({ control: ports.control, data: ports.data }, config, cleanups);
    await synced(server.control);
  };
  const env = () => clientEnv(server, GATEWAY_TOKEN, { KELSINGRA_HOLDER: 'dev-bob' });
  const answer = async (tenant: string) => text(await viaGateway(ports.nginx, tenant));

  beforeAll(async () => {
    const bin = program('nginx');
    base = await recorder('base', cleanups);
    local = await recorder('local', cleanups);
    v2 = await recorder('v2', cleanups);
    ports = {
      control: await freePort(),
      data: await freePort(),
      nginx: await freePort(),
      version: await freePort(),
    };
    const dir = tempDir('kelsingra-nginx-gw-');
    include = join(dir, 'gateway.conf');
    writeFileSync(
      include,
      'map $kelsingra_service_key $kelsingra_target { default ""; }\nmap $host $kelsingra_gateway_version { default ""; }\n',
    );
    const site = recipe('nginx-gateway-sync.conf', [
      ['/etc/nginx/kelsingra/gateway.conf', include],
      ['kelsingra-data.kelsingra.svc.cluster.local:7701', `127.0.0.1:${ports.data}`],
      ['billing.dev.svc.cluster.local:8080', `127.0.0.1:${base.port}`],
      ['listen 80;', `listen 127.0.0.1:${ports.nginx};`],
      ['listen 127.0.0.1:8081;', `listen 127.0.0.1:${ports.version};`],
    ]);
    writeFileSync(join(dir, 'site.conf'), site);
    const conf = join(dir, 'nginx.conf');
    writeFileSync(
      conf,
      [
        process.getuid?.() === 0 ? 'user root;' : '',
        'worker_processes 1;',
        `pid ${join(dir, 'nginx.pid')};`,
        'error_log stderr warn;',
        'events { worker_connections 256; }',
        'http {',
        '  access_log off;',
        ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map(
          (t) => `  ${t}_temp_path ${join(dir, t)};`,
        ),
        `  include ${join(dir, 'site.conf')};`,
        '}',
        '',
      ].join('\n'),
    );
    const args = ['-p', dir, '-c', conf, '-e', 'stderr'];
    await runProgram(bin, [...args, '-g', 'daemon off;'], ports.nginx, cleanups);
    config = [
      `token: ${GATEWAY_TOKEN}`,
      'routeTargets: ["http://127.0.0.1:*"]',
      'services:',
      `  billing: { upstream: "http://127.0.0.1:${base.port}" }`,
      'gateway:',
      '  driver: nginx',
      `  file: ${include}`,
      `  reload: ${JSON.stringify(`${bin} ${args.join(' ')} -s reload`)}`,
      `  versionUrl: http://127.0.0.1:${ports.version}/kelsingra-gateway-version`,
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
    expect(readFileSync(include, 'utf8')).toContain('"billing/t1" kelsingra;');
    base.hits.length = 0;
    expect(await answer('t2')).toBe('base');
    expect(base.hits[0]?.headers['x-kelsingra-hop']).toBeUndefined();

    const left = await run(['leave', icp.id], env());
    expect(left.exitCode, left.stderr).toBe(0);
    const ms = await msUntil(async () => (await answer('t1')) === 'base', 1_000, 't1 back on the base');
    console.log(`gateway-nginx: leave -> base in ${ms.toFixed(0)} ms`);
    expect(ms).toBeLessThanOrEqual(1_000);
    expect(readFileSync(include, 'utf8')).not.toContain('billing/t1');
  });

  it('writes a tenant route as an upstream group nginx sends its tenants to directly', async () => {
    const set = await run(
      ['route', 'set', 'billing', '--tenants', 't3', '--to', `http://127.0.0.1:${v2.port}`],
      env(),
    );
    expect(set.exitCode, set.stderr).toBe(0);
    await waitFor(async () => (await answer('t3')) === 'v2', 3_000, 't3 on v2');
    expect(v2.hits.at(-1)?.headers['x-kelsingra-hop']).toBeUndefined();
    expect(readFileSync(include, 'utf8')).toMatch(
      new RegExp(`upstream kelsingra_rt_[0-9a-f]+ \\{\\n    server 127\\.0\\.0\\.1:${v2.port};`),
    );
    const del = await run(['route', 'delete', 'billing', '--tenants', 't3'], env());
    expect(del.exitCode, del.stderr).toBe(0);
    await waitFor(async () => (await answer('t3')) === 'base', 2_000, 't3 back on the base');
  });

  it('keeps an intercepted tenant on the base when the server agent is killed, and reconciles when it restarts', async () => {
    const icp = await interceptDetached(env(), 'billing', 't5', local.port, () => undefined);
    expect(await answer('t5')).toBe('local');
    killQuietly(icp.agentPid);
    const ms = await msToBaseAfterKill('nginx', server, answer, 't5', 1_000);
    expect(ms).toBeLessThanOrEqual(1_000);
    expect(readFileSync(include, 'utf8')).toContain('"billing/t5" kelsingra;');
    await start();
    expect(readFileSync(include, 'utf8')).not.toContain('billing/t5');
    base.hits.length = 0;
    expect(await answer('t5')).toBe('base');
    expect(base.hits[0]?.headers['x-kelsingra-hop']).toBeUndefined();
  });
});
