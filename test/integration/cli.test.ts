/**
 * The CLI as users and CI scripts run it: the real `kelsingra server`, the built CLI as
 * separate processes, real HTTP services on both sides of the tunnel.
 *
 * Over 400 lines on purpose: it is the list of the CLI's cases, each one self-contained; split,
 * one capability would be spread over several files.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  alive,
  background,
  CLOSED_PORT,
  cleanupsAfterEach,
  cli,
  clientEnv,
  type DetachedIntercept,
  freePort,
  interceptDetached,
  killPid,
  type ServerProcess,
  sleep,
  startServerProcess,
  tempDir,
  textService,
  viaProxy,
  waitFor,
} from '../support/helpers.js';

const TOKEN = 'cli-test-secret-token-5f1e';

// Exit codes from src/shared/errors.ts (ExitCode), spelled out: scripts depend on the numbers.
const EXIT = { usage: 2, auth: 3, notFound: 4, conflict: 5, unreachable: 6 } as const;

const cleanups = cleanupsAfterEach();

/** A server agent with two services (billing, orders) in front of one upstream. */
async function setup(extraArgs: string[] = ['--token', TOKEN]) {
  const upstream = await textService('upstream', cleanups);
  const server = await startServerProcess([
    '--service',
    `billing=${upstream.url}`,
    '--service',
    `orders=${upstream.url}`,
    ...extraArgs,
  ]);
  cleanups.push(() => server.stop());
  return { server, upstream };
}

async function get(server: ServerProcess, svc: string, tenant: string, path = '/', init: RequestInit = {}) {
  const res = await viaProxy(server, svc, tenant, path, init);
  return { status: res.status, body: await res.text() };
}

/** `intercept --detach --json`; the background agent is killed after the test whatever happens. */
const detach = (env: Record<string, string>, svc: string, tenant: string, port: number) =>
  interceptDetached(env, svc, tenant, port, cleanups);

async function listJson(
  env: Record<string, string>,
): Promise<{ id: string; service: string; tenant: string; holder: string }[]> {
  const r = await cli(['list', '--json'], env);
  expect(r.exitCode, String(r.stderr)).toBe(0);
  return JSON.parse(String(r.stdout));
}

/** A foreground CLI whose output can be watched while it runs. */
const foreground = (args: string[], env: Record<string, string>) => background(args, env, cleanups);

describe('kelsingra connect', () => {
  it('saves server and token, so later commands need no environment', async () => {
    const { server } = await setup();
    const dir = tempDir('kelsingra-client-');
    const r = await cli(['connect', '--server', server.control, '--token', TOKEN], {
      KELSINGRA_CONFIG_DIR: dir,
    });
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(r.stdout).toContain('billing');
    const saved = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    expect(saved).toEqual({ server: server.control, token: TOKEN });

    const status = await cli(['status', '--json'], { KELSINGRA_CONFIG_DIR: dir });
    expect(status.exitCode, String(status.stderr)).toBe(0);
    const doc = JSON.parse(String(status.stdout));
    expect(doc.server).toBe(server.control);
    expect(doc.services.map((s: { name: string }) => s.name).sort()).toEqual(['billing', 'orders']);
    const list = await cli(['list', '--json'], { KELSINGRA_CONFIG_DIR: dir });
    expect(list.exitCode).toBe(0);
    expect(JSON.parse(String(list.stdout))).toEqual([]);
  });

  it('--json prints one document naming the server and the services', async () => {
    const { server } = await setup();
    const r = await cli(['connect', '--server', server.control, '--token', TOKEN, '--json'], {
      KELSINGRA_CONFIG_DIR: tempDir(),
    });
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const doc = JSON.parse(String(r.stdout));
    expect(doc.server).toBe(server.control);
    expect(doc.services).toEqual(['billing', 'orders']);
    expect(String(r.stdout)).not.toContain(TOKEN);
  });

  it('a wrong token exits 3, says the token was rejected, and saves nothing', async () => {
    const { server } = await setup();
    const dir = tempDir('kelsingra-client-');
    const r = await cli(['connect', '--server', server.control, '--token', 'not-the-right-token'], {
      KELSINGRA_CONFIG_DIR: dir,
    });
    expect(r.exitCode).toBe(EXIT.auth);
    expect(r.stderr).toMatch(/rejected the token/);
    expect(r.stdout).toBe('');
    expect(readdirSync(dir)).toEqual([]);
    // The wrong secret is not echoed back, and the server does not log it.
    expect(r.stderr).not.toContain('not-the-right-token');
    expect(server.logs()).not.toContain('not-the-right-token');
  });

  it('an unreachable server exits 6 with a hint, and saves nothing', async () => {
    const port = CLOSED_PORT;
    const dir = tempDir('kelsingra-client-');
    const r = await cli(['connect', '--server', `http://127.0.0.1:${port}`, '--token', TOKEN], {
      KELSINGRA_CONFIG_DIR: dir,
    });
    expect(r.exitCode).toBe(EXIT.unreachable);
    expect(r.stderr).toContain(`cannot reach the Kelsingra server at http://127.0.0.1:${port}`);
    expect(r.stderr).toMatch(/Hint: .*server agent is running/);
    expect(readdirSync(dir)).toEqual([]);

    const json = await cli(['connect', '--server', `http://127.0.0.1:${port}`, '--token', TOKEN, '--json'], {
      KELSINGRA_CONFIG_DIR: dir,
    });
    expect(json.exitCode).toBe(EXIT.unreachable);
    expect(json.stdout).toBe('');
    const err = JSON.parse(String(json.stderr));
    expect(err.exitCode).toBe(EXIT.unreachable);
    expect(err.hint).toMatch(/server agent is running/);
  });

  it('KELSINGRA_SERVER and KELSINGRA_TOKEN override the saved settings', async () => {
    const a = await setup();
    const b = await setup(['--token', 'other-server-token-77']);
    const dir = tempDir('kelsingra-client-');
    expect(
      (await cli(['connect', '--server', a.server.control, '--token', TOKEN], { KELSINGRA_CONFIG_DIR: dir }))
        .exitCode,
    ).toBe(0);
    const statusOf = async (env: Record<string, string>) => {
      const r = await cli(['status', '--json'], { KELSINGRA_CONFIG_DIR: dir, ...env });
      return {
        exitCode: r.exitCode,
        doc: r.exitCode === 0 ? JSON.parse(String(r.stdout)) : undefined,
        stderr: String(r.stderr),
      };
    };
    const saved = await statusOf({});
    const overridden = await statusOf({
      KELSINGRA_SERVER: b.server.control,
      KELSINGRA_TOKEN: 'other-server-token-77',
    });
    expect(saved.doc.server).toBe(a.server.control);
    expect(overridden.doc.server).toBe(b.server.control);
    expect(overridden.doc.serverId).not.toBe(saved.doc.serverId);

    // A wrong token in the environment wins over the right saved one.
    const wrong = await statusOf({ KELSINGRA_TOKEN: 'definitely-wrong-token' });
    expect(wrong.exitCode).toBe(EXIT.auth);
    expect(wrong.stderr).toMatch(/rejected the token/);
    // ...and the saved settings are untouched by the override.
    expect(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))).toEqual({
      server: a.server.control,
      token: TOKEN,
    });
  });

  it('without any settings, commands say how to connect', async () => {
    const r = await cli(['list'], { KELSINGRA_CONFIG_DIR: tempDir() });
    expect(r.exitCode).toBe(EXIT.usage);
    expect(r.stderr).toMatch(/no server configured/);
    expect(r.stderr).toMatch(/kelsingra connect/);
  });
});

describe('kelsingra intercept --detach', () => {
  it('prints one JSON document, returns once live, and the agent outlives the CLI', async () => {
    const { server, upstream } = await setup();
    const local = await textService('local', cleanups);
    const env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice' });

    const r = await cli(
      ['intercept', 'billing', '--tenant', 't1', '--port', String(local.port), '--detach', '--json'],
      env,
    );
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const doc = JSON.parse(String(r.stdout)) as DetachedIntercept;
    cleanups.push(() => killPid(doc.agentPid));
    expect(doc).toMatchObject({ service: 'billing', tenant: 't1', localPort: local.port, holder: 'alice' });
    expect(doc.id).toMatch(/\S/);
    expect(String(r.stdout)).not.toContain(TOKEN);

    // Live the moment the command returns: no polling.
    const first = await get(server, 'billing', 't1', '/invoices/1');
    expect(first).toEqual({ status: 200, body: 'local GET /invoices/1' });
    // Other tenants and services are untouched.
    expect(await get(server, 'billing', 't2', '/invoices/1')).toEqual({
      status: 200,
      body: 'upstream GET /invoices/1',
    });
    expect(await get(server, 'orders', 't1', '/o/1')).toEqual({ status: 200, body: 'upstream GET /o/1' });

    // The CLI has exited; the background agent still holds the tunnel.
    expect(alive(doc.agentPid)).toBe(true);
    await sleep(1000);
    expect(alive(doc.agentPid)).toBe(true);
    expect(await get(server, 'billing', 't1', '/invoices/2')).toEqual({
      status: 200,
      body: 'local GET /invoices/2',
    });
    expect(local.hits).toEqual(['GET /invoices/1', 'GET /invoices/2']);
    expect(upstream.hits).toEqual(['GET /invoices/1', 'GET /o/1']);

    const list = await listJson(env);
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({
      id: doc.id,
      service: 'billing',
      tenant: 't1',
      holder: 'alice',
      connected: true,
    });

    const status = await cli(['status', '--json'], env);
    expect(status.exitCode, String(status.stderr)).toBe(0);
    const s = JSON.parse(String(status.stdout));
    expect(s.services.map((x: { name: string }) => x.name).sort()).toEqual(['billing', 'orders']);
    expect(s.intercepts.map((i: { id: string }) => i.id)).toEqual([doc.id]);
    expect(s.clients).toHaveLength(1);
    expect(s.clients[0]).toMatchObject({ holder: 'alice', intercepts: [doc.id] });

    // The human-readable views name the intercept too.
    const plainList = await cli(['list'], env);
    expect(plainList.stdout).toContain(doc.id);
    const plainStatus = await cli(['status'], env);
    expect(plainStatus.stdout).toContain(doc.id);
    expect(plainStatus.stdout).toContain('billing');

    // No secret anywhere a user or an operator looks.
    for (const out of [
      r.stdout,
      status.stdout,
      plainList.stdout,
      plainStatus.stdout,
      plainStatus.stderr,
      server.logs(),
    ]) {
      expect(String(out)).not.toContain(TOKEN);
    }
    expect(readFileSync(doc.logFile, 'utf8')).not.toContain(TOKEN);
  });

  it('the plain form says how to stop it, and names the agent pid', async () => {
    const { server } = await setup();
    const local = await textService('local', cleanups);
    const env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice' });
    const r = await cli(
      ['intercept', 'orders', '--tenant', 't9', '--port', String(local.port), '--detach'],
      env,
    );
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const pid = Number(/pid (\d+)/.exec(String(r.stdout))?.[1]);
    expect(pid).toBeGreaterThan(0);
    cleanups.push(() => killPid(pid));
    expect(r.stdout).toContain('kelsingra leave orders --tenant t9');
    expect(await get(server, 'orders', 't9')).toEqual({ status: 200, body: 'local GET /' });
  });

  it('refuses to run a command after -- with --detach', async () => {
    const { server } = await setup();
    const r = await cli(
      ['intercept', 'billing', '--tenant', 't1', '--port', '3000', '--detach', '--', 'true'],
      clientEnv(server, TOKEN),
    );
    expect(r.exitCode).toBe(EXIT.usage);
    expect(r.stderr).toMatch(/--detach cannot run a command/);
  });
});

describe('conflicts and bad requests', () => {
  it('a second intercept of the same service and tenant exits 5 naming the holder', async () => {
    const { server } = await setup();
    const local = await textService('local', cleanups);
    const alice = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice' });
    const bob = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'bob' });
    const held = await detach(alice, 'billing', 't1', local.port);

    const plain = await cli(
      ['intercept', 'billing', '--tenant', 't1', '--port', String(local.port), '--detach'],
      bob,
    );
    expect(plain.exitCode).toBe(EXIT.conflict);
    expect(plain.stderr).toMatch(/already intercepted by alice/);
    expect(plain.stderr).toContain(held.id);
    expect(plain.stdout).toBe('');

    const json = await cli(
      ['intercept', 'billing', '--tenant', 't1', '--port', String(local.port), '--detach', '--json'],
      bob,
    );
    expect(json.exitCode).toBe(EXIT.conflict);
    expect(json.stdout).toBe('');
    const err = JSON.parse(String(json.stderr));
    expect(err).toMatchObject({ exitCode: EXIT.conflict, holder: 'alice', intercept: held.id });
    expect(err.error).toMatch(/^billing for tenant t1 is already intercepted by alice/);
    expect(err.hint).toMatch(/ask alice to run kelsingra leave/);

    // Foreground too, and bob's refused attempts leave no tunnel behind.
    const fg = await cli(['intercept', 'billing', '--tenant', 't1', '--port', String(local.port)], bob);
    expect(fg.exitCode).toBe(EXIT.conflict);
    expect(fg.stderr).toMatch(/alice/);
    await waitFor(
      async () => {
        const s = JSON.parse(String((await cli(['status', '--json'], alice)).stdout));
        return s.clients.length === 1 && s.clients[0].holder === 'alice';
      },
      30_000,
      "bob's refused tunnels to close",
    );

    // Alice still holds it.
    expect(await get(server, 'billing', 't1', '/x')).toEqual({ status: 200, body: 'local GET /x' });
    expect((await listJson(bob)).map((i) => i.holder)).toEqual(['alice']);
  });

  it('your own intercept held from another shell: no "ask yourself", and the lease end on the local clock', async () => {
    const { server } = await setup();
    const local = await textService('local', cleanups);
    const shellA = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice', TZ: 'Asia/Kolkata' });
    const shellB = { ...clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice' }), TZ: 'Asia/Kolkata' };
    const held = await detach(shellA, 'billing', 't1', local.port);
    const r = await cli(
      ['intercept', 'billing', '--tenant', 't1', '--port', String(local.port), '--detach', '--json'],
      shellB,
    );
    expect(r.exitCode).toBe(EXIT.conflict);
    const err = JSON.parse(String(r.stderr));
    expect(err.hint).not.toMatch(/ask alice/);
    expect(err.hint).toContain(`you hold it already`);
    expect(err.hint).toContain(`kelsingra leave ${held.id}`);
    // +05:30 makes a UTC time and a local one differ in their minutes, whatever the hour.
    const expires = new Date(err.expiresAt);
    const two = (n: number) => String(n).padStart(2, '0');
    const kolkata = new Date(expires.getTime() + 5.5 * 3600_000);
    expect(err.error).toContain(`expires ${two(kolkata.getUTCHours())}:${two(kolkata.getUTCMinutes())}:`);
    expect(err.error).not.toMatch(/\d{4}-\d\d-\d\dT/);
  });

  it('an unknown service exits 4 and lists the known services', async () => {
    const { server } = await setup();
    const env = clientEnv(server, TOKEN);
    const r = await cli(['intercept', 'invoicing', '--tenant', 't1', '--port', '3000'], env);
    expect(r.exitCode).toBe(EXIT.notFound);
    expect(r.stderr).toMatch(/unknown service "invoicing"/);
    expect(r.stderr).toMatch(/billing, orders/);

    const json = await cli(
      ['intercept', 'invoicing', '--tenant', 't1', '--port', '3000', '--detach', '--json'],
      env,
    );
    expect(json.exitCode).toBe(EXIT.notFound);
    expect(json.stdout).toBe('');
    expect(JSON.parse(String(json.stderr))).toMatchObject({
      exitCode: EXIT.notFound,
      services: ['billing', 'orders'],
    });
    expect(await listJson(env)).toEqual([]);
  });

  it('a missing --tenant or --port is a usage error', async () => {
    const { server } = await setup();
    const env = clientEnv(server, TOKEN);
    const noTenant = await cli(['intercept', 'billing', '--port', '3000'], env);
    expect(noTenant.exitCode).not.toBe(0);
    expect(noTenant.stderr).toMatch(/tenant/);
    const noPort = await cli(['intercept', 'billing', '--tenant', 't1'], env);
    expect(noPort.exitCode).not.toBe(0);
    expect(noPort.stderr).toMatch(/port/);
    const badPort = await cli(['intercept', 'billing', '--tenant', 't1', '--port', '70000'], env);
    expect(badPort.exitCode).not.toBe(0);
    expect(await listJson(env)).toEqual([]);
  });

  it('intercept with a wrong token exits 3 and creates nothing', async () => {
    const { server } = await setup();
    const r = await cli(
      ['intercept', 'billing', '--tenant', 't1', '--port', '3000', '--detach'],
      clientEnv(server, 'wrong-token-123'),
    );
    expect(r.exitCode).toBe(EXIT.auth);
    expect(r.stderr).toMatch(/token/);
    expect(await listJson(clientEnv(server, TOKEN))).toEqual([]);
  });
});

describe('kelsingra leave', () => {
  it('by service and tenant, from another shell: traffic falls back at once and the agent exits', async () => {
    const { server } = await setup();
    const local = await textService('local', cleanups);
    const alice = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice' });
    const held = await detach(alice, 'billing', 't1', local.port);
    expect((await get(server, 'billing', 't1')).body).toBe('local GET /');

    // A different process with its own (empty) config dir: only the environment.
    const r = await cli(
      ['leave', 'billing', '--tenant', 't1'],
      clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice' }),
    );
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(r.stdout).toContain(held.id);
    expect(await get(server, 'billing', 't1')).toEqual({ status: 200, body: 'upstream GET /' });
    expect(await listJson(alice)).toEqual([]);
    await waitFor(() => !alive(held.agentPid), 20_000, 'the detached agent to exit');
    expect(readFileSync(held.logFile, 'utf8')).toMatch(/intercept ended: left from another shell/);
  });

  it('by id, with --json', async () => {
    const { server } = await setup();
    const local = await textService('local', cleanups);
    const alice = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice' });
    const held = await detach(alice, 'orders', 'tenant-42', local.port);
    const r = await cli(['leave', held.id, '--json'], alice);
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(JSON.parse(String(r.stdout)).removed.map((i: { id: string }) => i.id)).toEqual([held.id]);
    expect((await get(server, 'orders', 'tenant-42')).body).toBe('upstream GET /');
    await waitFor(() => !alive(held.agentPid), 20_000, 'the detached agent to exit');
  });

  it("--all ends only the caller's own intercepts", async () => {
    const { server } = await setup();
    const local = await textService('local', cleanups);
    const alice = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice' });
    const bob = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'bob' });
    const a1 = await detach(alice, 'billing', 't1', local.port);
    const a2 = await detach(alice, 'orders', 't1', local.port);
    const b1 = await detach(bob, 'billing', 't2', local.port);

    const r = await cli(['leave', '--all', '--json'], { ...alice, KELSINGRA_CONFIG_DIR: tempDir() });
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(
      JSON.parse(String(r.stdout))
        .removed.map((i: { id: string }) => i.id)
        .sort(),
    ).toEqual([a1.id, a2.id].sort());

    expect((await get(server, 'billing', 't1')).body).toBe('upstream GET /');
    expect((await get(server, 'orders', 't1')).body).toBe('upstream GET /');
    expect((await get(server, 'billing', 't2')).body).toBe('local GET /');
    expect((await listJson(alice)).map((i) => i.id)).toEqual([b1.id]);
    await waitFor(() => !alive(a1.agentPid) && !alive(a2.agentPid), 20_000, "alice's agents to exit");
    expect(alive(b1.agentPid)).toBe(true);

    // Nothing left of alice's: a second --all is a no-op, not an error.
    const again = await cli(['leave', '--all'], alice);
    expect(again.exitCode).toBe(0);
    expect(again.stdout).toMatch(/No intercepts/);
  });

  it('a non-existent intercept exits 4', async () => {
    const { server } = await setup();
    const env = clientEnv(server, TOKEN);
    const byName = await cli(['leave', 'billing', '--tenant', 'nobody'], env);
    expect(byName.exitCode).toBe(EXIT.notFound);
    expect(byName.stderr).toMatch(/no intercept of billing for tenant nobody/);
    const byId = await cli(['leave', 'icp_000000000000'], env);
    expect(byId.exitCode).toBe(EXIT.notFound);
    expect(byId.stderr).toMatch(/icp_000000000000/);
    const json = await cli(['leave', 'icp_000000000000', '--json'], env);
    expect(json.exitCode).toBe(EXIT.notFound);
    expect(json.stdout).toBe('');
    expect(JSON.parse(String(json.stderr)).exitCode).toBe(EXIT.notFound);
    const nothing = await cli(['leave'], env);
    expect(nothing.exitCode).toBe(EXIT.usage);
  });
});

describe('foreground kelsingra intercept', () => {
  it('without a TTY prints one line per request, and Ctrl-C leaves promptly with 130', async () => {
    const { server } = await setup();
    const local = await textService('local', cleanups);
    const env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice' });
    const fg = foreground(['intercept', 'billing', '--tenant', 't1', '--port', String(local.port)], env);
    await waitFor(
      () => fg.stdout().includes('Intercepting billing for tenant t1'),
      20_000,
      `the intercept to start\n${fg.describe()}`,
    );

    expect(await get(server, 'billing', 't1', '/invoices/42')).toEqual({
      status: 200,
      body: 'local GET /invoices/42',
    });
    expect(await get(server, 'billing', 't1', '/pay', { method: 'POST', body: 'x'.repeat(100) })).toEqual({
      status: 201,
      body: 'local POST /pay',
    });
    await waitFor(
      () => /GET\s+\/invoices\/42\s+200/.test(fg.stdout()) && /POST\s+\/pay\s+201/.test(fg.stdout()),
      10_000,
      `request lines\n${fg.describe()}`,
    );
    // A pipe is not a terminal: plain text, no colours or cursor movement.
    expect(fg.stdout()).not.toContain('\x1b');

    const t0 = Date.now();
    fg.sub.kill('SIGINT');
    const result = await fg.sub;
    const took = Date.now() - t0;
    expect(result.exitCode, fg.describe()).toBe(130);
    expect(took).toBeLessThan(3_000);
    expect(await listJson(env)).toEqual([]);
    expect(await get(server, 'billing', 't1', '/invoices/42')).toEqual({
      status: 200,
      body: 'upstream GET /invoices/42',
    });
  });

  it('--json prints NDJSON: the intercept, then one object per event', async () => {
    const { server } = await setup();
    const local = await textService('local', cleanups);
    const env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice' });
    const fg = foreground(
      ['intercept', 'orders', '--tenant', 'team-x', '--port', String(local.port), '--json'],
      env,
    );
    await waitFor(() => fg.stdout().includes('\n'), 20_000, `the first line\n${fg.describe()}`);

    expect((await get(server, 'orders', 'team-x', '/orders?id=7')).body).toBe('local GET /orders?id=7');
    const lines = () =>
      fg
        .stdout()
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => JSON.parse(l));
    await waitFor(() => lines().some((e) => e.kind === 'http'), 10_000, `a request event\n${fg.describe()}`);
    fg.sub.kill('SIGINT');
    const result = await fg.sub;
    expect(result.exitCode, fg.describe()).toBe(130);

    const events = lines();
    expect(events[0]).toMatchObject({
      kind: 'intercept',
      service: 'orders',
      tenant: 'team-x',
      localPort: local.port,
    });
    expect(events.find((e) => e.kind === 'http')).toMatchObject({
      method: 'GET',
      path: '/orders?id=7',
      status: 200,
      interceptId: events[0].id,
    });
    expect(events.find((e) => e.kind === 'ended')).toMatchObject({ reason: 'left (SIGINT)' });
    expect(fg.stdout()).not.toContain(TOKEN);
  });

  it('a request with an Authorization header does not put the secret in the log', async () => {
    const { server } = await setup();
    const local = await textService('local', cleanups);
    const env = clientEnv(server, TOKEN);
    const fg = foreground(
      ['intercept', 'billing', '--tenant', 't1', '--port', String(local.port), '--json'],
      env,
    );
    await waitFor(() => fg.stdout().includes('\n'), 20_000, `the first line\n${fg.describe()}`);
    await get(server, 'billing', 't1', '/me', {
      headers: { authorization: 'Bearer user-session-secret-991' },
    });
    await waitFor(() => fg.stdout().includes('"kind":"http"'), 10_000, `a request event\n${fg.describe()}`);
    fg.sub.kill('SIGINT');
    await fg.sub;
    expect(fg.stdout()).not.toContain('user-session-secret-991');
  });

  it('-- cmd: the command gets the intercept in its environment, and its exit code becomes the CLI exit code', async () => {
    const { server } = await setup();
    const env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice' });
    const r = await cli(
      [
        'intercept',
        'billing',
        '--tenant',
        't1',
        '--port',
        '3999',
        '--',
        'sh',
        '-c',
        'echo "env: $KELSINGRA_TENANT $KELSINGRA_SERVICE $PORT"; exit 7',
      ],
      env,
    );
    expect(r.exitCode, String(r.stderr)).toBe(7);
    expect(r.stdout).toContain('env: t1 billing 3999');
    expect(await listJson(env)).toEqual([]);

    const ok = await cli(['intercept', 'billing', '--tenant', 't1', '--port', '3999', '--', 'true'], env);
    expect(ok.exitCode, String(ok.stderr)).toBe(0);
    expect(await listJson(env)).toEqual([]);
  });

  it('-- cmd can be the local service itself: it serves on $PORT, exits, and the intercept ends', async () => {
    const { server } = await setup();
    const env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice' });
    const port = await freePort();
    const script = join(tempDir('kelsingra-script-'), 'local-service.mjs');
    writeFileSync(
      script,
      `import http from 'node:http';
const server = http.createServer((req, res) => {
  const body = JSON.stringify({ tenant: process.env.KELSINGRA_TENANT, service: process.env.KELSINGRA_SERVICE, port: process.env.PORT, intercept: process.env.KELSINGRA_INTERCEPT, url: req.url });
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(body, () => setTimeout(() => process.exit(9), 200));
});
server.listen(Number(process.env.PORT), '127.0.0.1', () => console.log('local service listening on ' + process.env.PORT));
`,
    );
    const fg = foreground(
      ['intercept', 'billing', '--tenant', 't1', '--port', String(port), '--', process.execPath, script],
      env,
    );
    await waitFor(
      () => fg.stdout().includes(`local service listening on ${port}`),
      20_000,
      `the local service to listen\n${fg.describe()}`,
    );

    const res = await get(server, 'billing', 't1', '/from-the-command');
    expect(res.status).toBe(200);
    const served = JSON.parse(res.body);
    expect(served).toMatchObject({
      tenant: 't1',
      service: 'billing',
      port: String(port),
      url: '/from-the-command',
    });
    expect(served.intercept).toMatch(/\S/);

    const result = await fg.sub;
    expect(result.exitCode, fg.describe()).toBe(9);
    expect(await listJson(env)).toEqual([]);
    expect((await get(server, 'billing', 't1', '/after')).body).toBe('upstream GET /after');
  });

  it('a command that cannot be started fails the CLI with a message and ends the intercept', async () => {
    const { server } = await setup();
    const env = clientEnv(server, TOKEN);
    const r = await cli(
      ['intercept', 'billing', '--tenant', 't1', '--port', '3999', '--', 'kelsingra-no-such-command-xyz'],
      env,
    );
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/could not run kelsingra-no-such-command-xyz.*ENOENT/);
    expect(r.stdout).toMatch(/intercept ended: local command exited \(could not start\)/);
    expect(r.stdout).not.toContain('undefined');
    expect(await listJson(env)).toEqual([]);
  });
});

describe('tokens limited to tenants (--tokens-file)', () => {
  it('a team token may intercept its tenants only, and only sees those', async () => {
    const dir = tempDir('kelsingra-tokens-');
    const tokensFile = join(dir, 'tokens.yaml');
    writeFileSync(
      tokensFile,
      `tokens:
  - name: platform
    token: platform-admin-secret-1
  - name: team-a
    token: team-a-secret-token-2
    tenants: ['team-a-*']
`,
    );
    const { server } = await setup(['--tokens-file', tokensFile]);
    const local = await textService('local', cleanups);
    const admin = clientEnv(server, 'platform-admin-secret-1', { KELSINGRA_HOLDER: 'admin' });
    const team = clientEnv(server, 'team-a-secret-token-2', { KELSINGRA_HOLDER: 'ana' });

    const mine = await detach(team, 'billing', 'team-a-1', local.port);
    expect((await get(server, 'billing', 'team-a-1')).body).toBe('local GET /');

    const refused = await cli(
      ['intercept', 'billing', '--tenant', 't1', '--port', String(local.port), '--detach'],
      team,
    );
    expect(refused.exitCode).toBe(EXIT.auth);
    expect(refused.stderr).toMatch(/token "team-a" may not intercept tenant "t1"/);
    const refusedFg = await cli(
      ['intercept', 'billing', '--tenant', 't1', '--port', String(local.port)],
      team,
    );
    expect(refusedFg.exitCode).toBe(EXIT.auth);
    expect((await get(server, 'billing', 't1')).body).toBe('upstream GET /');

    const theirs = await detach(admin, 'billing', 't1', local.port);
    expect((await listJson(team)).map((i) => i.id)).toEqual([mine.id]);
    expect((await listJson(admin)).map((i) => i.id).sort()).toEqual([mine.id, theirs.id].sort());

    // The team token cannot see or end the admin's intercept.
    const leave = await cli(['leave', theirs.id], team);
    expect(leave.exitCode).toBe(EXIT.notFound);
    const status = await cli(['status', '--json'], team);
    const s = JSON.parse(String(status.stdout));
    expect(s.intercepts.map((i: { id: string }) => i.id)).toEqual([mine.id]);
    expect(s.clients.map((c: { holder: string }) => c.holder)).toEqual(['ana']);
    expect(s.clients[0].token).toBe('team-a');

    // The server's log says which token a tunnel used, by name only.
    expect(server.logs()).toMatch(/"holder":"ana","tokenName":"team-a","msg":"tunnel connected"/);
    for (const out of [status.stdout, (await cli(['status', '--json'], admin)).stdout, server.logs()]) {
      expect(String(out)).not.toContain('team-a-secret-token-2');
      expect(String(out)).not.toContain('platform-admin-secret-1');
    }
  });
});
