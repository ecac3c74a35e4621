/**
 * A server agent without a database forgets its intercepts when it restarts: until a client
 * is back and re-asserts its intercept, that tenant goes to the base service. Clients retry
 * quickly after a drop, so this gap stays short.
 */
import { describe, expect, it } from 'vitest';
import {
  cleanupsAfterEach,
  clientEnv,
  interceptDetached,
  type ServerProcess,
  sleep,
  spawnServerProcess,
  startServerProcess,
  textService,
  viaProxy,
} from '../support/helpers.js';

const TOKEN = 'server-restart-token-1';
const cleanups = cleanupsAfterEach();
const RESTARTS = 3;
/** The client aims at 100 ms; the rest is headroom for a loaded machine. */
const GAP_LIMIT_MS = 600;

/** When the server logged that it listens (pino's `time`, on this machine's clock). */
function listeningAt(server: ServerProcess): number {
  const line = server
    .logs()
    .split('\n')
    .find((l) => l.includes('server agent listening')) as string;
  return (JSON.parse(line) as { time: number }).time;
}

/** Polls the tenant every 10 ms until the laptop answers; the time it did. */
async function interceptedAgainAt(server: ServerProcess, within: number): Promise<number> {
  const deadline = Date.now() + within;
  while (Date.now() < deadline) {
    const answer = await viaProxy(server, 'billing', 't1', '/x').then(
      (res) => res.text(),
      (err: Error) => err.message,
    );
    if (answer === 'local GET /x') return Date.now();
    await sleep(10);
  }
  throw new Error(`the tenant was not intercepted again within ${within} ms`);
}

describe('in-memory server restart', () => {
  it(`the tenant is intercepted again within ${GAP_LIMIT_MS} ms of the restarted server listening, ${RESTARTS} times`, async () => {
    const base = await textService('base', cleanups);
    const local = await textService('local', cleanups);
    const args = ['--service', `billing=${base.url}`, '--token', TOKEN];
    let server = await startServerProcess(args);
    cleanups.push(() => server.stop());
    const ports = ['--port', String(server.controlPort), '--proxy-port', String(server.proxyPort)];
    await interceptDetached(clientEnv(server, TOKEN), 'billing', 't1', local.port, cleanups);
    expect(await (await viaProxy(server, 'billing', 't1', '/x')).text()).toBe('local GET /x');

    const gaps: number[] = [];
    for (let i = 0; i < RESTARTS; i++) {
      await server.stop();
      // Down for about as long as a process restart takes; a client that backs off from the
      // start has by then stretched its retries to a second or more.
      await sleep(1_000);
      server = await spawnServerProcess([...ports, ...args], {}, server.controlPort);
      gaps.push((await interceptedAgainAt(server, 10_000)) - listeningAt(server));
    }
    expect(Math.max(...gaps), `ms from listening to intercepted again: ${gaps.join(', ')}`).toBeLessThan(
      GAP_LIMIT_MS,
    );
  }, 60_000);
});
