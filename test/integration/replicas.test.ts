/**
 * Several server agent replicas sharing the real PostgreSQL: routing from any replica,
 * catch-up of a late replica, one holder under a race, a replica killed under a client,
 * and the database restarted under the replicas.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MIGRATIONS } from '../../server/store/pg-migrations.js';
import { TunnelClient } from '../../src/client/tunnel/tunnel-client.js';
import type { InterceptView, StoreHealth } from '../../src/shared/protocol.js';
import { tcpBalancer } from '../support/balancer.js';
import {
  alive,
  type Cleanup,
  cleanupsAfterEach,
  clientEnv,
  closeServer,
  interceptDetached,
  listen,
  run,
  type ServerProcess,
  sleep,
  startServerProcess,
  tempDir,
  textService,
  viaProxy,
  waitFor,
} from '../support/helpers.js';
import { freshDatabase, privatePostgres, query } from '../support/postgres.js';

const TOKEN = 'replica-token-1';
const cleanups = cleanupsAfterEach();

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

async function statusOf(server: ServerProcess): Promise<{ serverId: string; store: StoreHealth }> {
  const res = await fetch(`${server.control}/status`, { headers: { authorization: `Bearer ${TOKEN}` } });
  return (await res.json()) as { serverId: string; store: StoreHealth };
}

async function text(res: Response): Promise<string> {
  return `${res.status} ${await res.text()}`;
}

/** A base upstream, a developer's local service, and a fresh database. */
async function world(c: Cleanup[]) {
  const base = await textService('base', c);
  const local = await textService('local', c);
  const db = await freshDatabase(c);
  return { base, local, db };
}

describe('replicas on PostgreSQL', () => {
  it('routes a tenant through the tunnel from every replica, bodies streaming both ways across replicas', async () => {
    const { base, db } = await world(cleanups);
    // Echoes what it receives: an upload and a download of the same bytes in one request.
    const echo = await listen((req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      req.pipe(res);
    });
    cleanups.push(() => closeServer(echo));
    // Started together: the migration runs once, under its lock.
    const [r1, r2, r3] = await Promise.all([1, 2, 3].map(() => replica(db, base.url)));
    const { rows } = await query<{ version: number }>(db, 'SELECT version FROM kelsingra_migrations');
    // Each migration once, however many replicas raced to apply them.
    expect(rows.map((r) => r.version).sort()).toEqual(MIGRATIONS.map((m) => m.version));

    const env = clientEnv(r1 as ServerProcess, TOKEN);
    const held = await interceptDetached(env, 'billing', 't1', echo.port, cleanups);
    const r1Id = (await statusOf(r1 as ServerProcess)).serverId;

    for (const r of [r1, r2, r3] as ServerProcess[]) {
      const body = randomBytes(6 * 1024 * 1024);
      const res = await viaProxy(r, 'billing', 't1', '/echo', { method: 'POST', body });
      expect(res.status).toBe(200);
      const back = Buffer.from(await res.arrayBuffer());
      expect(createHash('sha256').update(back).digest('hex')).toBe(
        createHash('sha256').update(body).digest('hex'),
      );
      expect(await text(await viaProxy(r, 'billing', 't2', '/x'))).toBe('200 base GET /x');
    }

    // Any replica lists it, connected through the replica that holds the tunnel.
    const listed = await run(['list', '--json'], { ...env, KELSINGRA_SERVER: (r3 as ServerProcess).control });
    const views = JSON.parse(listed.stdout) as InterceptView[];
    expect(views).toMatchObject([{ id: held.id, tenant: 't1', connected: true, replica: r1Id }]);
  });

  it('a replica started last routes by intercepts made before it existed, and a leave anywhere reaches every replica', async () => {
    const { base, local, db } = await world(cleanups);
    const [r1, r2] = await Promise.all([replica(db, base.url), replica(db, base.url)]);
    const env = clientEnv(r1 as ServerProcess, TOKEN);
    const held = await interceptDetached(env, 'billing', 't1', local.port, cleanups);

    const late = await replica(db, base.url);
    // Its very first request, with no waiting: the table was loaded before it listened.
    expect(await text(await viaProxy(late, 'billing', 't1', '/first'))).toBe('200 local GET /first');

    const left = await run(['leave', 'billing', '--tenant', 't1'], {
      ...env,
      KELSINGRA_SERVER: (r2 as ServerProcess).control,
    });
    expect(left.exitCode, left.stderr).toBe(0);
    const startedAt = Date.now();
    for (const r of [r1, r2, late] as ServerProcess[]) {
      await waitFor(
        async () => (await text(await viaProxy(r, 'billing', 't1', '/after'))) === '200 base GET /after',
        1_000,
        'every replica to fall back to base within a second',
      );
    }
    expect(Date.now() - startedAt).toBeLessThan(1_000);
    // The client, whose tunnel is on r1, hears of the leave made through r2 and stops.
    await waitFor(() => !alive(held.agentPid), 5_000, 'the detached agent to exit');
  });

  it('a vanished client stops blocking on every replica once its lease lapses', async () => {
    const { base, local, db } = await world(cleanups);
    const [r1, r2] = (await Promise.all([
      replica(db, base.url, ['--lease-ttl', '2']),
      replica(db, base.url, ['--lease-ttl', '2']),
    ])) as [ServerProcess, ServerProcess];
    const held = await interceptDetached(clientEnv(r1, TOKEN), 'billing', 't1', local.port, () => undefined);
    process.kill(held.agentPid, 'SIGKILL');
    // Within the lease: a clear 502 from both, not a silent fallback.
    for (const r of [r1, r2]) {
      await waitFor(
        async () =>
          (await viaProxy(r, 'billing', 't1', '/x')).headers.get('x-kelsingra-error') ===
          'tunnel-disconnected',
        2_000,
        'tunnel-disconnected from every replica',
      );
    }
    for (const r of [r1, r2]) {
      await waitFor(
        async () => (await text(await viaProxy(r, 'billing', 't1', '/x'))) === '200 base GET /x',
        5_000,
        'the lapsed lease to be swept everywhere',
      );
    }
    const { rows } = await query(db, 'SELECT id FROM kelsingra_intercepts');
    expect(rows).toEqual([]);
    // Audited once, by the replica whose sweep removed it, not once per replica that heard of it.
    const expiries = () =>
      [r1, r2]
        .flatMap((r) => r.logs().split('\n'))
        .filter((l) => l.includes('"audit":true') && l.includes(held.id) && l.includes('"reason":"expired"'));
    await waitFor(() => expiries().length > 0, 3_000, 'the expiry in the audit trail');
    await sleep(1_000);
    expect(expiries()).toHaveLength(1);
  });

  it('exactly one client holds a (service, tenant) when two race for it on two replicas', async () => {
    const { base, local, db } = await world(cleanups);
    const [r1, r2] = await Promise.all([replica(db, base.url), replica(db, base.url)]);
    const alice = clientEnv(r1 as ServerProcess, TOKEN, { KELSINGRA_HOLDER: 'alice@laptop' });
    const bob = clientEnv(r2 as ServerProcess, TOKEN, { KELSINGRA_HOLDER: 'bob@desk' });
    const args = (tenant: string) => [
      'intercept',
      'billing',
      '--tenant',
      tenant,
      '--port',
      String(local.port),
      '--detach',
      '--json',
    ];
    for (let round = 0; round < 4; round++) {
      const tenant = `race-${round}`;
      const [a, b] = await Promise.all([run(args(tenant), alice), run(args(tenant), bob)]);
      for (const r of [a, b]) {
        if (r.exitCode === 0) {
          const pid = (JSON.parse(r.stdout) as { agentPid: number }).agentPid;
          cleanups.push(() => process.kill(pid, 'SIGKILL'));
        }
      }
      expect([a.exitCode, b.exitCode].sort(), `${a.stderr}\n${b.stderr}`).toEqual([0, 5]);
      const winner = a.exitCode === 0 ? 'alice@laptop' : 'bob@desk';
      const loser = a.exitCode === 0 ? b : a;
      expect(loser.stderr).toContain(`already intercepted by ${winner}`);
      const { rows } = await query<{ holder: string }>(
        db,
        'SELECT holder FROM kelsingra_intercepts WHERE service = $1 AND tenant = $2',
        ['billing', tenant],
      );
      expect(rows).toEqual([{ holder: winner }]);
    }
  });

  it('exactly one of six clients on two replicas wins each of twenty simultaneous races', async () => {
    const { base, db } = await world(cleanups);
    const replicas = (await Promise.all([replica(db, base.url), replica(db, base.url)])) as ServerProcess[];
    // Tunnels open first, so every POST below goes straight to the decision.
    const clients = await Promise.all(
      [0, 1, 2, 3, 4, 5].map(async (n) => {
        const server = (replicas[n % 2] as ServerProcess).control;
        const clientId = `race-client-${n}-${randomBytes(4).toString('hex')}`;
        const tunnel = new TunnelClient({
          server,
          token: TOKEN,
          clientId,
          holder: `dev-${n}`,
          onStream: (stream) => stream.respond({ status: 204, headers: [], body: false }),
        });
        await tunnel.start();
        cleanups.push(() => tunnel.close());
        return { server, clientId };
      }),
    );
    for (let round = 0; round < 20; round++) {
      const tenant = `race-${round}`;
      const statuses = await Promise.all(
        clients.map(async ({ server, clientId }) => {
          const res = await fetch(`${server}/v1/intercepts`, {
            method: 'POST',
            headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
            body: JSON.stringify({ service: 'billing', tenant, clientId, localPort: 3000 }),
          });
          await res.body?.cancel();
          return res.status;
        }),
      );
      expect(statuses.sort(), `round ${round}`).toEqual([201, 409, 409, 409, 409, 409]);
    }
    const { rows } = await query<{ n: string }>(db, 'SELECT count(*) AS n FROM kelsingra_intercepts');
    expect(Number(rows[0]?.n)).toBe(20);
  });

  it("a relay header that does not carry this replica's secret is refused (508), not relayed again", async () => {
    const { base, local, db } = await world(cleanups);
    const [r1, r2] = (await Promise.all([replica(db, base.url), replica(db, base.url)])) as ServerProcess[];
    await interceptDetached(clientEnv(r1 as ServerProcess, TOKEN), 'billing', 't1', local.port, cleanups);
    const forged = await viaProxy(r2 as ServerProcess, 'billing', 't1', '/x', {
      headers: { 'x-kelsingra-relay': 'not-the-secret icp_000000000000' },
    });
    expect(forged.status).toBe(508);
    expect(forged.headers.get('x-kelsingra-error')).toBe('relay-misdirected');
    expect(await text(await viaProxy(r2 as ServerProcess, 'billing', 't1', '/x'))).toBe('200 local GET /x');
  });

  it('when the replica holding a tunnel is killed, requests in flight get a fast 502, and the client moves to another replica within 3 s', async () => {
    const { base, db } = await world(cleanups);
    const slowSeen: string[] = [];
    const local = await listen((req, res) => {
      if (req.url === '/slow') {
        slowSeen.push(req.url);
        setTimeout(() => res.end('late'), 20_000).unref();
        return;
      }
      res.end(`local ${req.url}`);
    });
    cleanups.push(() => closeServer(local));
    const replicas = await Promise.all([1, 2, 3].map(() => replica(db, base.url)));
    const alive = new Set(replicas);
    const lb = await tcpBalancer(() => [...alive].map((r) => r.controlPort), cleanups);
    const env = { ...clientEnv(replicas[0] as ServerProcess, TOKEN), KELSINGRA_SERVER: lb.url };
    const held = await interceptDetached(env, 'billing', 't1', local.port, cleanups);

    const ids = await Promise.all(replicas.map(async (r) => (await statusOf(r)).serverId));
    const listed = JSON.parse((await run(['list', '--json'], env)).stdout) as InterceptView[];
    const holderIndex = ids.indexOf(listed[0]?.replica ?? '');
    expect(holderIndex).toBeGreaterThanOrEqual(0);
    const holder = replicas[holderIndex] as ServerProcess;
    const entry = replicas[(holderIndex + 1) % 3] as ServerProcess;

    const inFlight = viaProxy(entry, 'billing', 't1', '/slow');
    await waitFor(() => slowSeen.length === 1, 5_000, 'the slow request to reach the local service');
    const killedAt = Date.now();
    holder.child.kill('SIGKILL');
    alive.delete(holder);

    const res = await inFlight;
    expect(res.status).toBe(502);
    expect(await res.text()).toContain('Kelsingra');
    expect(Date.now() - killedAt).toBeLessThan(2_000);

    await waitFor(
      async () => (await text(await viaProxy(entry, 'billing', 't1', '/back'))) === '200 local /back',
      5_000,
      'the intercept to route again through another replica',
    );
    expect(Date.now() - killedAt).toBeLessThan(3_000);
    // The same intercept, not a new one: nothing was lost.
    const after = JSON.parse((await run(['list', '--json'], env)).stdout) as InterceptView[];
    expect(after).toMatchObject([{ id: held.id, connected: true }]);
    expect(after[0]?.replica).not.toBe(ids[holderIndex]);
    for (const r of alive) expect(await text(await viaProxy(r, 'billing', 't1', '/x'))).toBe('200 local /x');
  });

  it('keeps routing from memory while PostgreSQL restarts, reports degraded, and resynchronises', async () => {
    const pgServer = await privatePostgres(cleanups);
    const db = await freshDatabase(cleanups, pgServer.url);
    const base = await textService('base', cleanups);
    const local = await textService('local', cleanups);
    // A short lease: the outage below outlasts it, and no lease may lapse because of it.
    const [r1, r2] = (await Promise.all([
      replica(db, base.url, ['--lease-ttl', '4']),
      replica(db, base.url, ['--lease-ttl', '4']),
    ])) as [ServerProcess, ServerProcess];
    const env = clientEnv(r1, TOKEN);
    const held = await interceptDetached(env, 'billing', 't1', local.port, cleanups);
    // A replica knows another from the heartbeats it read: once the database is away, one it
    // never read cannot be relayed to. Both have read each other before the outage.
    for (const r of [r1, r2])
      await waitFor(
        async () =>
          (await statusOf(r)).store.replicas?.filter((p: { alive: boolean }) => p.alive).length === 2,
        5_000,
        'the replicas to know each other',
      );

    pgServer.stop();
    for (const r of [r1, r2]) {
      await waitFor(async () => (await statusOf(r)).store.state === 'degraded', 5_000, 'degraded in /status');
    }
    const status = await run(['status'], { ...env, KELSINGRA_SERVER: r2.control });
    expect(status.stdout).toContain('DEGRADED');
    // Longer than the lease: routing goes on from memory on both replicas.
    for (let i = 0; i < 6; i++) {
      for (const r of [r1, r2])
        expect(await text(await viaProxy(r, 'billing', 't1', '/x'))).toBe('200 local GET /x');
      expect(await text(await viaProxy(r2, 'billing', 't2', '/x'))).toBe('200 base GET /x');
      await sleep(1_000);
    }
    // Changes wait for the database, and say so.
    const refused = await run(
      ['intercept', 'billing', '--tenant', 't2', '--port', String(local.port), '--detach'],
      {
        ...clientEnv(r2, TOKEN),
      },
    );
    expect(refused.exitCode).not.toBe(0);
    expect(refused.stderr).toContain('PostgreSQL is unreachable');

    pgServer.start();
    for (const r of [r1, r2]) {
      await waitFor(async () => (await statusOf(r)).store.state === 'ok', 10_000, 'ok again in /status');
    }
    // The outage outlasted the lease, yet nobody else can take it now that the database is back.
    const bob = await run(
      ['intercept', 'billing', '--tenant', 't1', '--port', String(local.port), '--detach'],
      {
        ...clientEnv(r2, TOKEN, { KELSINGRA_HOLDER: 'bob@desk' }),
      },
    );
    expect(bob.exitCode, bob.stderr).toBe(5);
    // Past the point where lapsed leases would be swept: the intercept survived the outage.
    await sleep(3_000);
    for (const r of [r1, r2])
      expect(await text(await viaProxy(r, 'billing', 't1', '/y'))).toBe('200 local GET /y');
    const listed = JSON.parse(
      (await run(['list', '--json'], { ...env, KELSINGRA_SERVER: r2.control })).stdout,
    );
    expect(listed).toMatchObject([{ id: held.id, connected: true }]);
    const second = await interceptDetached(clientEnv(r2, TOKEN), 'billing', 't2', local.port, cleanups);
    expect(second.tenant).toBe('t2');
  });

  it('a client whose replica dies while PostgreSQL is away moves to another replica and keeps its intercept', async () => {
    const pgServer = await privatePostgres(cleanups);
    const db = await freshDatabase(cleanups, pgServer.url);
    const base = await textService('base', cleanups);
    const local = await textService('local', cleanups);
    const replicas = (await Promise.all([
      replica(db, base.url, ['--lease-ttl', '6']),
      replica(db, base.url, ['--lease-ttl', '6']),
    ])) as ServerProcess[];
    const alive = new Set(replicas);
    const lb = await tcpBalancer(() => [...alive].map((r) => r.controlPort), cleanups);
    const env = { ...clientEnv(replicas[0] as ServerProcess, TOKEN), KELSINGRA_SERVER: lb.url };
    const held = await interceptDetached(env, 'billing', 't1', local.port, cleanups);
    const ids = await Promise.all(replicas.map(async (r) => (await statusOf(r)).serverId));
    const holder = replicas[ids.indexOf(held.replica ?? '')] as ServerProcess;
    const survivor = replicas.find((r) => r !== holder) as ServerProcess;

    pgServer.stop();
    await waitFor(async () => (await statusOf(survivor)).store.state === 'degraded', 5_000, 'degraded');
    holder.child.kill('SIGKILL');
    alive.delete(holder);
    // Re-asserted with no database: the survivor confirms it from memory.
    await waitFor(
      async () => (await text(await viaProxy(survivor, 'billing', 't1', '/x'))) === '200 local GET /x',
      8_000,
      'the intercept to route through the survivor',
    );
    expect(alive.size).toBe(1);
    pgServer.start();
    await waitFor(async () => (await statusOf(survivor)).store.state === 'ok', 10_000, 'ok again');
    const { rows } = await query<{ id: string; replica_id: string }>(
      db,
      'SELECT id, replica_id FROM kelsingra_intercepts',
    );
    expect(rows).toEqual([{ id: held.id, replica_id: ids[replicas.indexOf(survivor)] }]);
    expect(await text(await viaProxy(survivor, 'billing', 't1', '/y'))).toBe('200 local GET /y');
  });

  it('repairs what a lost notification missed: rows changed behind its back are picked up by reconciliation', async () => {
    const { base, local, db } = await world(cleanups);
    // The client renews every third of the lease, and a renewal that finds its row gone asks
    // for the intercept again (as it should). A 60 s lease puts the first renewal 20 s out,
    // past everything below, so what drops the intercept can only be the reload.
    const r1 = await replica(db, base.url, ['--lease-ttl', '60']);
    const r2 = await replica(db, base.url, ['--lease-ttl', '60']);
    const held = await interceptDetached(clientEnv(r1, TOKEN), 'billing', 't1', local.port, cleanups);
    expect(await text(await viaProxy(r2, 'billing', 't1', '/x'))).toBe('200 local GET /x');
    // Right after one of r2's periodic syncs, so the next (5 s on) cannot be what repairs it here.
    const lastSync = async () =>
      (
        JSON.parse((await run(['status', '--json'], clientEnv(r2, TOKEN))).stdout) as {
          store: { lastSyncAt?: string };
        }
      ).store.lastSyncAt;
    const before = await lastSync();
    await waitFor(async () => (await lastSync()) !== before, 8_000, 'a periodic sync of r2');
    // With replication role "replica" no trigger fires: no replica hears of this delete.
    await query(
      db,
      `SET session_replication_role = replica; DELETE FROM kelsingra_intercepts WHERE id = '${held.id}'`,
    );
    await sleep(500);
    expect(await text(await viaProxy(r2, 'billing', 't1', '/x'))).toBe('200 local GET /x');
    for (const r of [r1, r2]) {
      await waitFor(
        async () => (await text(await viaProxy(r, 'billing', 't1', '/y'))) === '200 base GET /y',
        8_000,
        'the periodic reload to drop the intercept',
      );
    }
  });

  it('shares tokens through the database, stored only as digests', async () => {
    const { base, local, db } = await world(cleanups);
    const r1 = await replica(db, base.url);
    // Started without a token of its own: it takes the set r1 stored.
    const r2 = await startServerProcess(['--service', `billing=${base.url}`, '--database-url', db]);
    cleanups.push(() => r2.stop());
    const held = await interceptDetached(clientEnv(r2, TOKEN), 'billing', 't1', local.port, cleanups);
    expect(held.tenant).toBe('t1');
    expect((await run(['list'], clientEnv(r2, 'not-the-token'))).exitCode).toBe(3);
    const { rows } = await query<{ name: string; digest: Buffer; role: string }>(
      db,
      'SELECT name, digest, role FROM kelsingra_tokens',
    );
    expect(rows.map((r) => [r.name, r.role])).toEqual([['default', 'admin']]);
    // The role travels with the digest: r2 knows the token only from the database.
    const status = await run(['status', '--json'], clientEnv(r2, TOKEN));
    expect(JSON.parse(status.stdout).principal).toEqual({ name: 'default', role: 'admin', tenants: ['*'] });
    expect(rows[0]?.digest.toString('hex')).toBe(createHash('sha256').update(TOKEN).digest('hex'));
    expect(JSON.stringify(rows)).not.toContain(TOKEN);
    void r1;
  });

  it('a token removed or narrowed in the shared set ends the tunnels and intercepts it already opened', async () => {
    const { base, local, db } = await world(cleanups);
    const dir = tempDir('kelsingra-tokens-');
    const tokensFile = (name: string, entries: string) => {
      const file = join(dir, name);
      writeFileSync(file, `tokens:\n${entries}`);
      return file;
    };
    const platform = `  - name: platform\n    token: ${TOKEN}\n    role: admin\n`;
    const teamA = (tenants: string) =>
      `  - name: team-a\n    token: team-a-secret-1\n    tenants: [${tenants}]\n`;
    const teamB = "  - name: team-b\n    token: team-b-secret-2\n    tenants: ['b-*']\n";
    const r1 = await startServerProcess([
      '--service',
      `billing=${base.url}`,
      '--database-url',
      db,
      '--tokens-file',
      tokensFile('before.yaml', platform + teamA("'a-*'") + teamB),
    ]);
    cleanups.push(() => r1.stop());
    const agent = (token: string, tenant: string) =>
      interceptDetached(clientEnv(r1, token), 'billing', tenant, local.port, cleanups);
    const [a1, a2, b1] = [
      await agent('team-a-secret-1', 'a-1'),
      await agent('team-a-secret-1', 'a-2'),
      await agent('team-b-secret-2', 'b-1'),
    ];
    for (const tenant of ['a-1', 'a-2', 'b-1'])
      expect(await text(await viaProxy(r1, 'billing', tenant, '/x'))).toBe('200 local GET /x');

    // team-b is also watching its requests (logs -f, dashboard): an event stream.
    const watching = await fetch(`${r1.control}/v1/events`, {
      headers: { authorization: 'Bearer team-b-secret-2' },
    });
    expect(watching.status).toBe(200);
    const streamEnded = watching.text();

    // The platform team rolls out a new set: team-b is gone, team-a keeps only a-1. The
    // replica that starts with it stores it; r1 hears of it from the database.
    const r2 = await startServerProcess([
      '--service',
      `billing=${base.url}`,
      '--database-url',
      db,
      '--tokens-file',
      tokensFile('after.yaml', `${platform}${teamA("'a-1'")}`),
    ]);
    cleanups.push(() => r2.stop());
    for (const tenant of ['a-2', 'b-1'])
      await waitFor(
        async () => (await text(await viaProxy(r1, 'billing', tenant, '/y'))) === '200 base GET /y',
        5_000,
        `${tenant}'s intercept to end on r1 once its token no longer covers it`,
      );
    // Well within a lease: ended, not left to lapse.
    expect(await text(await viaProxy(r2, 'billing', 'b-1', '/y'))).toBe('200 base GET /y');
    expect(await text(await viaProxy(r1, 'billing', 'a-1', '/z'))).toBe('200 local GET /z');
    expect(await text(await viaProxy(r2, 'billing', 'a-1', '/z'))).toBe('200 local GET /z');

    // Their agents stop and say why; the agent whose tenant is still covered keeps going.
    for (const ended of [a2, b1]) {
      await waitFor(() => !alive(ended.agentPid), 10_000, `the agent of ${ended.tenant} to stop`);
      expect(readFileSync(ended.logFile, 'utf8')).toMatch(
        /token was removed, or no longer covers this tenant/,
      );
    }
    expect(alive(a1.agentPid)).toBe(true);
    await sleep(1_500);
    expect(await text(await viaProxy(r1, 'billing', 'a-1', '/z'))).toBe('200 local GET /z');

    // The stream ends too, within its next tick (5 s), rather than showing team-b's tenants on.
    const shown = await Promise.race([streamEnded, sleep(10_000).then(() => 'still open')]);
    expect(shown).not.toBe('still open');

    const logs = r1.logs();
    expect(logs).toMatch(/"tokenName":"team-b".*closing the tunnel and ending its intercepts/);
    for (const ended of [a2, b1])
      expect(logs).toMatch(
        new RegExp(
          `"reason":"token-revoked".*"id":"${ended.id}"|"id":"${ended.id}".*"reason":"token-revoked"`,
        ),
      );
    expect(logs).not.toContain('team-b-secret-2');
    expect(logs).not.toContain('team-a-secret-1');
  });

  it('refuses to start without a reachable database (exit 7), never printing its password', async () => {
    const r = await run(
      [
        'server',
        '--port',
        '0',
        '--proxy-port',
        '0',
        '--service',
        'billing=http://127.0.0.1:9',
        '--token',
        TOKEN,
        '--database-url',
        'postgres://kelsingra:hunter2secret@127.0.0.1:1/kelsingra',
      ],
      { KELSINGRA_CONFIG_DIR: tempDir() },
    );
    expect(r.exitCode).toBe(7);
    expect(r.stderr).toContain('postgres://kelsingra:***@127.0.0.1:1/kelsingra');
    expect(r.stderr).toContain('--database-url');
    expect(`${r.stdout}${r.stderr}`).not.toContain('hunter2secret');
  });
});
