/**
 * Graceful shutdown (SIGTERM), with real processes: requests in flight finish, /healthz
 * answers 503 "draining" and the data port stops taking connections meanwhile, the process
 * exits 0 within the drain timeout; and with replicas on PostgreSQL behind a load balancer, a
 * connected `kelsingra intercept` moves to another replica without losing its intercept or
 * a request.
 */
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import type { InterceptView } from '../../src/shared/protocol.js';
import { tcpBalancer } from '../support/balancer.js';
import {
  cleanupsAfterEach,
  clientEnv,
  closeServer,
  exited,
  interceptDetached,
  listen,
  run,
  type ServerProcess,
  sleep,
  startServerProcess,
  viaProxy,
  waitFor,
} from '../support/helpers.js';
import { freshDatabase } from '../support/postgres.js';

const TOKEN = 'drain-token-1';
const cleanups = cleanupsAfterEach();
/** Drains in a row in the load test; each costs a replica start and a drain (about 3 s). */
const DRAIN_ROUNDS = Number(process.env.KELSINGRA_DRAIN_ROUNDS ?? 3);

/** Whether a new TCP connection to `port` is refused. */
function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'));
  });
}

/** A service that answers `<name> <path>`, `/slow…` after `slowMs`; records the paths it got. */
async function service(name: string, slowMs: number) {
  const hits: string[] = [];
  const svc = await listen((req, res) => {
    hits.push(req.url ?? '');
    req.resume();
    const answer = () => res.end(`${name} ${req.url}`);
    if (req.url?.startsWith('/slow')) setTimeout(answer, slowMs);
    else if (req.url?.startsWith('/never')) return;
    else answer();
  });
  cleanups.push(() => closeServer(svc));
  return { ...svc, hits };
}

async function text(res: Response): Promise<string> {
  return `${res.status} ${await res.text()}`;
}

function exitedWithin(server: ServerProcess, ms: number) {
  return waitFor(
    () => server.child.exitCode !== null || server.child.signalCode !== null,
    ms,
    'the server to exit',
  );
}

/** A server agent for billing on `upstream`, draining for up to `drainTimeoutS` on SIGTERM. */
async function drainingServer(upstream: string, drainTimeoutS: number, extra: string[] = []) {
  const server = await startServerProcess([
    '--service',
    `billing=${upstream}`,
    '--token',
    TOKEN,
    '--drain-timeout',
    String(drainTimeoutS),
    ...extra,
  ]);
  cleanups.push(() => server.stop());
  return server;
}

async function serverIdOf(server: ServerProcess): Promise<string> {
  const res = await fetch(`${server.control}/status`, { headers: { authorization: `Bearer ${TOKEN}` } });
  return ((await res.json()) as { serverId: string }).serverId;
}

describe('graceful shutdown', () => {
  it('SIGTERM: a slow request in flight completes, /healthz is 503 and new data connections are refused meanwhile, exit 0', async () => {
    const upstream = await service('base', 2_500);
    const server = await drainingServer(upstream.url, 10);
    expect((await fetch(`${server.control}/healthz`)).status).toBe(200);

    const inFlight = viaProxy(server, 'billing', 't1', '/slow');
    await waitFor(() => upstream.hits.includes('/slow'), 5_000, 'the slow request to reach the upstream');
    const signalledAt = Date.now();
    server.child.kill('SIGTERM');

    const health = await waitFor(async () => {
      const res = await fetch(`${server.control}/healthz`);
      return res.status === 503 ? res.json() : undefined;
    }, 2_000);
    expect(health).toMatchObject({ ok: false, state: 'draining' });
    await waitFor(() => refused(server.proxyPort), 2_000, 'the data port to refuse new connections');
    // Still draining: the slow request is not done yet.
    expect(server.child.exitCode).toBeNull();

    expect(await text(await inFlight)).toBe('200 base /slow');
    await exitedWithin(server, 10_000);
    expect(server.child.exitCode).toBe(0);
    // It waited for the request, not for the whole drain timeout.
    expect(Date.now() - signalledAt).toBeLessThan(6_000);
    expect(server.logs()).toMatch(/"msg":"drained"/);
  });

  it('a request still in flight when the drain timeout runs out is cut, and the server still exits 0', async () => {
    const upstream = await service('base', 0);
    const server = await drainingServer(upstream.url, 1);
    const inFlight = viaProxy(server, 'billing', 't1', '/never').then(
      (res) => res.text().then(() => 'answered'),
      () => 'cut',
    );
    await waitFor(() => upstream.hits.includes('/never'), 5_000, 'the request to reach the upstream');
    const signalledAt = Date.now();
    server.child.kill('SIGTERM');
    await exitedWithin(server, 5_000);
    expect(server.child.exitCode).toBe(0);
    expect(Date.now() - signalledAt).toBeLessThan(4_000);
    expect(await inFlight).toBe('cut');
    expect(server.logs()).toMatch(/drain timeout reached: requests still in flight are cut/);
  });

  it('a second signal stops at once, without waiting for the drain', async () => {
    const upstream = await service('base', 0);
    const server = await drainingServer(upstream.url, 30);
    void viaProxy(server, 'billing', 't1', '/never').catch(() => undefined);
    await waitFor(() => upstream.hits.includes('/never'), 5_000, 'the request to reach the upstream');
    server.child.kill('SIGTERM');
    await waitFor(async () => (await fetch(`${server.control}/healthz`)).status === 503, 2_000);
    // Later than the echo of the first that some libraries send (commands/server.ts).
    await sleep(1_200);
    server.child.kill('SIGTERM');
    await exitedWithin(server, 3_000);
    expect(server.child.exitCode).toBe(0);
  });

  it('replicas: a connected intercept moves to another replica without losing the intercept or a request; the old one exits 0', async () => {
    const db = await freshDatabase(cleanups);
    const base = await service('base', 0);
    const local = await service('local', 2_000);
    const replica = () => drainingServer(base.url, 15, ['--database-url', db]);
    const replicas = await Promise.all([replica(), replica()]);
    const up = new Set(replicas);
    const lb = await tcpBalancer(() => [...up].map((r) => r.controlPort), cleanups);
    const env = clientEnv(replicas[0] as ServerProcess, TOKEN, { KELSINGRA_SERVER: lb.url });
    const held = await interceptDetached(env, 'billing', 't1', local.port, cleanups);

    const ids = await Promise.all(
      replicas.map(async (r) => {
        const res = await fetch(`${r.control}/status`, { headers: { authorization: `Bearer ${TOKEN}` } });
        return ((await res.json()) as { serverId: string }).serverId;
      }),
    );
    const holderIndex = ids.indexOf(held.replica ?? '');
    expect(holderIndex).toBeGreaterThanOrEqual(0);
    const holder = replicas[holderIndex] as ServerProcess;
    const other = replicas[1 - holderIndex] as ServerProcess;
    const otherId = ids[1 - holderIndex];

    // Traffic for the tenant through the other replica all along (relayed to the holder at first).
    const answers: string[] = [];
    let ticking = true;
    const ticker = (async () => {
      for (let i = 0; ticking; i++) {
        answers.push(await text(await viaProxy(other, 'billing', 't1', `/tick-${i}`)).catch(String));
        await sleep(50);
      }
    })();
    await waitFor(() => answers.length >= 3, 5_000, 'traffic to flow');

    // A slow request through the holder's own tunnel, in flight when the holder is told to stop.
    const inFlight = viaProxy(holder, 'billing', 't1', '/slow');
    await waitFor(() => local.hits.includes('/slow'), 5_000, 'the slow request to reach the laptop');
    const signalledAt = Date.now();
    holder.child.kill('SIGTERM');
    await waitFor(async () => (await fetch(`${holder.control}/healthz`)).status === 503, 2_000);

    // The client moves: same intercept, now through the other replica.
    const moved = await waitFor(
      async () => {
        const listed = await run(['list', '--json'], { ...env, KELSINGRA_SERVER: other.control });
        const view = (JSON.parse(listed.stdout) as InterceptView[])[0];
        return view && view.replica === otherId && view.connected ? view : undefined;
      },
      10_000,
      'the intercept to move to the other replica',
    );
    expect(moved.id).toBe(held.id);

    expect(await text(await inFlight)).toBe('200 local /slow');
    await exitedWithin(holder, 15_000);
    up.delete(holder);
    expect(holder.child.exitCode).toBe(0);
    expect(Date.now() - signalledAt).toBeLessThan(15_000);
    await exited(holder.child);
    // After the holder is gone, the tenant is still served by the laptop.
    expect(await text(await viaProxy(other, 'billing', 't1', '/after'))).toBe('200 local /after');
    ticking = false;
    await ticker;
    const failed = answers.filter((a) => !/^200 local \/tick-\d+$/.test(a));
    expect(failed, `answers that did not reach the laptop: ${failed.join('; ')}`).toEqual([]);
    expect(holder.logs()).toMatch(/"msg":"drained"/);
  });

  it(
    `replicas under load: ${DRAIN_ROUNDS} drains in a row, each while another replica relays to the draining one, lose no request`,
    async () => {
      const db = await freshDatabase(cleanups);
      const base = await service('base', 0);
      const local = await service('local', 0);
      const replica = () => drainingServer(base.url, 15, ['--database-url', db]);
      const up = new Set(await Promise.all([replica(), replica()]));
      const lb = await tcpBalancer(() => [...up].map((r) => r.controlPort), cleanups);
      const env = clientEnv([...up][0] as ServerProcess, TOKEN, { KELSINGRA_SERVER: lb.url });
      const held = await interceptDetached(env, 'billing', 't1', local.port, cleanups);
      let holderId = held.replica ?? '';
      const failed: string[] = [];
      let answered = 0;

      for (let round = 0; round < DRAIN_ROUNDS; round++) {
        const ids = new Map(await Promise.all([...up].map(async (r) => [r, await serverIdOf(r)] as const)));
        const holder = [...up].find((r) => ids.get(r) === holderId) as ServerProcess;
        const other = [...up].find((r) => r !== holder) as ServerProcess;
        const otherId = ids.get(other) as string;
        expect(holder, `no replica holds the tunnel in round ${round}`).toBeDefined();

        // Requests back to back on several connections through the replica that does not hold
        // the tunnel: some are relayed to the holder at every moment of the move.
        let loading = true;
        const workers = Array.from({ length: 6 }, async (_, w) => {
          for (let i = 0; loading; i++) {
            const path = `/r${round}-w${w}-${i}`;
            const answer = await viaProxy(other, 'billing', 't1', path).then(text, String);
            answered++;
            if (answer !== `200 local ${path}`) failed.push(`round ${round}: ${answer}`);
          }
        });
        const before = answered;
        await waitFor(() => answered >= before + 30, 10_000, 'traffic to flow');
        holder.child.kill('SIGTERM');
        await waitFor(
          async () => {
            const listed = await run(['list', '--json'], { ...env, KELSINGRA_SERVER: other.control });
            const view = (JSON.parse(listed.stdout) as InterceptView[])[0];
            return view && view.replica === otherId && view.connected;
          },
          10_000,
          `the intercept to move in round ${round}`,
        );
        await exitedWithin(holder, 15_000);
        expect(holder.child.exitCode).toBe(0);
        up.delete(holder);
        const afterExit = answered;
        await waitFor(() => answered >= afterExit + 10, 10_000, 'traffic after the move');
        loading = false;
        await Promise.all(workers);
        holderId = otherId;
        up.add(await replica());
      }
      expect(failed, `${failed.length} of ${answered} requests did not reach the laptop`).toEqual([]);
    },
    60_000 + DRAIN_ROUNDS * 20_000,
  );
});
