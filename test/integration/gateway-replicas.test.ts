/**
 * Gateway sync with two replicas on one PostgreSQL database, in front of a real HAProxy:
 * exactly one replica writes to the gateway (an advisory lock), an intercept made on the other
 * is answered once the writer confirmed it, and killing the writer hands the writing over.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HaproxyDriver } from '../../server/gateway-sync/haproxy.js';
import {
  GATEWAY_TOKEN,
  kelsingra,
  msUntil,
  program,
  recipe,
  recorder,
  runProgram,
  status,
  synced,
  text,
  viaGateway,
} from '../support/gateways.js';
import {
  type Cleanup,
  clientEnv,
  freePort,
  interceptDetached,
  run,
  type ServerProcess,
  sleep,
  tempDir,
  waitFor,
} from '../support/helpers.js';
import { freshDatabase } from '../support/postgres.js';

describe('gateway sync with two replicas on PostgreSQL', () => {
  const cleanups: Cleanup[] = [];
  let driver: HaproxyDriver;
  let local: Awaited<ReturnType<typeof recorder>>;
  let haproxyPort: number;
  let a: ServerProcess;
  let b: ServerProcess;

  beforeAll(async () => {
    const bin = program('haproxy');
    const db = await freshDatabase(cleanups);
    const base = await recorder('base', cleanups);
    local = await recorder('local', cleanups);
    const pa = { control: await freePort(), data: await freePort() };
    const pb = { control: await freePort(), data: await freePort() };
    haproxyPort = await freePort();
    const dir = tempDir('kelsingra-haproxy-replicas-');
    const mapFile = join(dir, 'kelsingra.map');
    const socket = join(dir, 'admin.sock');
    writeFileSync(mapFile, '');
    const check = (p: { control: number; data: number }, name: string) =>
      `server ${name} 127.0.0.1:${p.data} check addr 127.0.0.1 port ${p.control} inter 500ms fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down`;
    const cfg = recipe('haproxy.cfg', [
      ['stats socket /run/haproxy/admin.sock mode 660', `stats socket ${socket} mode 600`],
      ['/etc/haproxy/kelsingra.map', mapFile],
      ['bind :80', `bind 127.0.0.1:${haproxyPort}`],
      [
        'server kelsingra kelsingra-data.kelsingra.svc.cluster.local:7701 check addr kelsingra-control.kelsingra.svc.cluster.local port 7700 inter 500ms fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down',
        `${check(pa, 'a')}\n    ${check(pb, 'b')}`,
      ],
      ['billing.dev.svc.cluster.local:8080', `127.0.0.1:${base.port}`],
      ['kelsingra-control.kelsingra.svc.cluster.local:7700', `127.0.0.1:${pa.control}`],
    ]);
    writeFileSync(join(dir, 'haproxy.cfg'), cfg);
    await runProgram(bin, ['-db', '-f', join(dir, 'haproxy.cfg')], haproxyPort, cleanups);
    driver = new HaproxyDriver({ socket, map: mapFile });
    const config = [
      `token: ${GATEWAY_TOKEN}`,
      'services:',
      `  billing: { upstream: "http://127.0.0.1:${base.port}" }`,
      'gateway:',
      '  driver: haproxy',
      `  socket: ${socket}`,
      `  map: ${mapFile}`,
      '',
    ].join('\n');
    // A first, so it is the writer; then B, which must not write while A lives.
    a = await kelsingra(pa, config, cleanups, ['--database-url', db]);
    await synced(a.control);
    b = await kelsingra(pb, config, cleanups, ['--database-url', db]);
  });

  afterAll(async () => {
    for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined);
  });

  it('has exactly one writer; an intercept made on the other replica is in the gateway when it returns', async () => {
    for (let i = 0; i < 5; i++) {
      const [sa, sb] = await Promise.all([status(a.control), status(b.control)]);
      expect(sa.gateway?.writer).toBe(true);
      expect(sb.gateway?.writer).toBe(false);
      await sleep(300);
    }
    const env = clientEnv(b, GATEWAY_TOKEN, { KELSINGRA_HOLDER: 'dev-dana' });
    await interceptDetached(env, 'billing', 't1', local.port, cleanups);
    expect((await driver.show()).get('billing/t1')).toBe('kelsingra');
    expect(text(await viaGateway(haproxyPort, 't1'))).toBe('local');
    expect(b.logs()).not.toContain('this replica writes to the gateway');
  });

  it('hands the writing to the other replica when the writer is killed', async () => {
    a.child.kill('SIGKILL');
    const ms = await msUntil(
      async () => (await status(b.control)).gateway?.writer === true,
      5_000,
      'B writing',
    );
    console.log(`gateway-replicas: writer killed -> the other replica writes after ${ms.toFixed(0)} ms`);
    expect(ms).toBeLessThanOrEqual(5_000);
    const env = clientEnv(b, GATEWAY_TOKEN, { KELSINGRA_HOLDER: 'dev-dana' });
    // The survivor's changes reach the gateway: a new intercept, and a leave within a second.
    const icp = await interceptDetached(env, 'billing', 't2', local.port, cleanups);
    expect((await driver.show()).get('billing/t2')).toBe('kelsingra');
    expect((await driver.show()).get('billing/t1')).toBe('kelsingra');
    expect(text(await viaGateway(haproxyPort, 't2'))).toBe('local');
    const left = await run(['leave', icp.id], env);
    expect(left.exitCode, left.stderr).toBe(0);
    const gone = await msUntil(
      async () => !(await driver.show()).has('billing/t2'),
      1_000,
      't2 out of the map',
    );
    expect(gone).toBeLessThanOrEqual(1_000);
    await waitFor(async () => text(await viaGateway(haproxyPort, 't2')) === 'base', 2_000, 't2 on the base');
  });
});
