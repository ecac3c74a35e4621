/**
 * A client agent killed and started again (same machine, same config dir) takes its live
 * intercept back, instead of being refused as someone else until the lease lapses.
 */
import { describe, expect, it } from 'vitest';
import {
  alive,
  cleanupsAfterEach,
  clientEnv,
  interceptDetached,
  killQuietly,
  run,
  startServerProcess,
  textService,
  viaProxy,
  waitFor,
} from '../support/helpers.js';

const TOKEN = 'restart-token-1';
const cleanups = cleanupsAfterEach();

describe('client restart within the lease', () => {
  it('a killed client started again holds the same intercept; a second client beside a live one is refused', async () => {
    const base = await textService('base', cleanups);
    const local = await textService('local', cleanups);
    const server = await startServerProcess(['--service', `billing=${base.url}`, '--token', TOKEN]);
    cleanups.push(() => server.stop());
    const env = clientEnv(server, TOKEN);

    const first = await interceptDetached(env, 'billing', 't1', local.port, cleanups);
    // Beside a live client, the same machine's second one is someone else: a conflict.
    const second = await run(
      ['intercept', 'billing', '--tenant', 't1', '--port', String(local.port), '--detach'],
      env,
    );
    expect(second.exitCode, second.stderr).toBe(5);

    killQuietly(first.agentPid);
    await waitFor(() => !alive(first.agentPid), 5_000, 'the agent to die');
    const again = await interceptDetached(env, 'billing', 't1', local.port, cleanups);
    expect(again.id).toBe(first.id);
    expect(await (await viaProxy(server, 'billing', 't1', '/x')).text()).toBe('local GET /x');

    // After a clean leave the next intercept is a new one.
    expect((await run(['leave', 'billing', '--tenant', 't1'], env)).exitCode).toBe(0);
    await waitFor(() => !alive(again.agentPid), 5_000, 'the agent to exit after leave');
    const fresh = await interceptDetached(env, 'billing', 't1', local.port, cleanups);
    expect(fresh.id).not.toBe(first.id);
  });
});
