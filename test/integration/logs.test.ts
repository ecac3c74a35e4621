/**
 * `kelsingra logs`: an intercept started with --detach, watched from another shell through
 * the server agent's event stream. Real server, real detached agents, real CLIs.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import {
  background,
  CLOSED_PORT,
  cleanupsAfterEach,
  cli,
  clientEnv,
  closeServer,
  interceptDetached,
  listen,
  type ServerProcess,
  startServerProcess,
  tempDir,
  textService,
  viaProxy,
  waitFor,
} from '../support/helpers.js';

const ADMIN = 'logs-admin-secret-token-1';
const TEAM = 'logs-team-a-secret-token-2';
const EXIT = { auth: 3, notFound: 4, unreachable: 6 } as const;

const cleanups = cleanupsAfterEach();

let server: ServerProcess;
let admin: Record<string, string>;
let team: Record<string, string>;
let localPort: number;

/** A server with a tokens file (an admin token, a token limited to team-a-*), and a "laptop" service. */
beforeEach(async () => {
  const upstream = await listen((_req, res) => res.end('upstream'));
  cleanups.push(() => closeServer(upstream));
  const local = await textService('local', cleanups);
  localPort = local.port;
  const tokensFile = join(tempDir('kelsingra-tokens-'), 'tokens.yaml');
  writeFileSync(
    tokensFile,
    `tokens:
  - name: platform
    token: ${ADMIN}
  - name: team-a
    token: ${TEAM}
    tenants: ['team-a-*']
`,
  );
  server = await startServerProcess(['--service', `billing=${upstream.url}`, '--tokens-file', tokensFile]);
  cleanups.push(() => server.stop());
  admin = clientEnv(server, ADMIN, { KELSINGRA_HOLDER: 'admin' });
  team = clientEnv(server, TEAM, { KELSINGRA_HOLDER: 'ana' });
});

const detach = (env: Record<string, string>, tenant: string) =>
  interceptDetached(env, 'billing', tenant, localPort, cleanups);

async function send(tenant: string, path: string, init: RequestInit = {}): Promise<number> {
  const res = await viaProxy(server, 'billing', tenant, path, init);
  await res.text();
  return res.status;
}

describe('kelsingra logs', () => {
  it("prints a detached intercept's recent requests: method, path, status", async () => {
    const held = await detach(admin, 't1');
    expect(await send('t1', '/invoices/42')).toBe(200);
    expect(await send('t1', '/orders', { method: 'POST', body: 'x' })).toBe(201);
    expect(await send('t1', '/missing/7')).toBe(404);
    expect(await send('t2', '/not-intercepted')).toBe(200);

    // The server records a request as its response ends; give it a moment on a loaded machine.
    const r = await waitFor(
      async () => {
        const run = await cli(['logs', 'billing', '--tenant', 't1'], admin);
        expect(run.exitCode, String(run.stderr)).toBe(0);
        return String(run.stdout).includes('/missing/7') ? run : undefined;
      },
      20_000,
      'the three requests in kelsingra logs',
    );
    const lines = String(r.stdout).trim().split('\n');
    expect(lines[0]).toBe(`Requests for billing, tenant t1 (${held.id}, held by admin):`);
    expect(lines.slice(1)).toHaveLength(3);
    expect(lines[1]).toMatch(/\bGET\s+\/invoices\/42\s+200\s/);
    expect(lines[2]).toMatch(/\bPOST\s+\/orders\s+201\s/);
    expect(lines[3]).toMatch(/\bGET\s+\/missing\/7\s+404\s/);
    expect(String(r.stdout)).not.toContain('/not-intercepted');
    expect(String(r.stdout)).not.toContain('\u001b');

    // By id, as JSON: one object per line.
    const byId = await cli(['logs', held.id, '--json'], admin);
    expect(byId.exitCode, String(byId.stderr)).toBe(0);
    const events = String(byId.stdout)
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(events.map((e) => [e.type, e.method, e.path, e.status, e.interceptId])).toEqual([
      ['request', 'GET', '/invoices/42', 200, held.id],
      ['request', 'POST', '/orders', 201, held.id],
      ['request', 'GET', '/missing/7', 404, held.id],
    ]);
  });

  it('shows a WebSocket as one line once it closed: 101, lifetime, bytes each way, who closed it', async () => {
    // A "laptop" service that speaks WebSocket: it echoes every message.
    const chat = await listen((_req, res) => res.end('plain'));
    cleanups.push(() => closeServer(chat.server));
    const wss = new WebSocketServer({ server: chat.server });
    wss.on('connection', (ws) => ws.on('message', (data) => ws.send(`echo:${data}`)));
    cleanups.push(() => new Promise((res) => wss.close(() => res(undefined))));
    const held = await interceptDetached(admin, 'billing', 't1', chat.port, cleanups);

    const ws = new WebSocket(`${server.data.replace('http', 'ws')}/chat?room=1`, {
      headers: { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't1' },
    });
    const echoes: string[] = [];
    await new Promise<void>((resolve, reject) => {
      ws.once('error', reject);
      ws.once('open', () => {
        ws.send('hello');
        ws.send('again');
      });
      ws.on('message', (data) => {
        echoes.push(String(data));
        if (echoes.length === 2) ws.close(1000, 'bye');
      });
      ws.once('close', () => resolve());
    });
    expect(echoes).toEqual(['echo:hello', 'echo:again']);

    const line = /\bWS\s+\/chat\?room=1\s+101\s+[\d.]+ m?s\s+↑\d+ B ↓\d+ B\s+closed by caller 1000 "bye"$/m;
    const r = await waitFor(
      async () => {
        const run = await cli(['logs', 'billing', '--tenant', 't1'], admin);
        expect(run.exitCode, String(run.stderr)).toBe(0);
        return String(run.stdout).includes('/chat') ? run : undefined;
      },
      20_000,
      'the WebSocket in kelsingra logs',
    );
    const lines = String(r.stdout).trim().split('\n');
    // One entry for the whole connection, not a request with a strange status.
    expect(lines.slice(1), String(r.stdout)).toHaveLength(1);
    expect(lines[1]).toMatch(line);

    const json = await cli(['logs', held.id, '--json'], admin);
    const [record] = String(json.stdout)
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(record).toMatchObject({
      type: 'request',
      status: 101,
      upgrade: {
        protocol: 'websocket',
        closeFrom: 'caller',
        code: 1000,
        reason: 'bye',
        messagesIn: 2,
        messagesOut: 2,
      },
    });
    expect(record.upgrade.bytesIn).toBeGreaterThan(0);
    expect(record.bytesOut).toBeGreaterThan(0);

    // The detached agent's log file tells the same from the laptop's side.
    const logged = await waitFor(
      () => (line.test(readFileSync(held.logFile, 'utf8')) ? true : undefined),
      20_000,
      `the WebSocket line in the agent's log:\n${readFileSync(held.logFile, 'utf8')}`,
    );
    expect(logged).toBe(true);
  });

  it('--follow --json streams new requests as NDJSON and exits 0 when the intercept is left from another shell', async () => {
    const held = await detach(admin, 't1');
    const follow = background(['logs', held.id, '--follow', '--json'], admin, cleanups);
    // Sent before or after the stream attaches, the first request shows up (history, then live).
    expect(await send('t1', '/first')).toBe(200);
    await waitFor(
      () => follow.stdout().includes('"/first"'),
      20_000,
      `the first request\n${follow.describe()}`,
    );
    // Printed means subscribed: these are new requests, streamed as they happen.
    expect(await send('t1', '/second')).toBe(200);
    expect(await send('t1', '/missing/second')).toBe(404);
    await waitFor(
      () => follow.stdout().includes('"/missing/second"'),
      20_000,
      `the new requests\n${follow.describe()}`,
    );
    expect(follow.sub.exitCode).toBe(null);

    const leave = await cli(['leave', 'billing', '--tenant', 't1'], admin);
    expect(leave.exitCode, String(leave.stderr)).toBe(0);
    const done = await follow.sub;
    expect(done.exitCode, follow.describe()).toBe(0);

    const events = follow
      .stdout()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(
      events.filter((e) => e.type === 'request').map((e) => `${e.method} ${e.path} ${e.status}`),
    ).toEqual(['GET /first 200', 'GET /second 200', 'GET /missing/second 404']);
    expect(events.at(-1)).toMatchObject({ type: 'intercept', action: 'ended', intercept: { id: held.id } });
  });

  it('--follow in plain text says when the intercept ended', async () => {
    await detach(admin, 't1');
    const follow = background(['logs', 'billing', '--tenant', 't1', '-f'], admin, cleanups);
    await waitFor(() => follow.stdout().includes('Requests for billing'), 20_000, follow.describe());
    expect(await send('t1', '/plain')).toBe(200);
    await waitFor(() => follow.stdout().includes('/plain'), 20_000, follow.describe());
    expect((await cli(['leave', '--all'], admin)).exitCode).toBe(0);
    const done = await follow.sub;
    expect(done.exitCode, follow.describe()).toBe(0);
    expect(follow.stdout().trim().split('\n').at(-1)).toBe('intercept ended: left');
  });

  it('a token limited to other tenants cannot see the intercept (exit 4), but sees its own', async () => {
    const theirs = await detach(admin, 't1');
    const mine = await detach(team, 'team-a-1');
    expect(await send('t1', '/secret')).toBe(200);

    for (const args of [
      ['logs', 'billing', '--tenant', 't1'],
      ['logs', theirs.id],
      ['logs', theirs.id, '--follow'],
    ]) {
      const r = await cli(args, team);
      expect(r.exitCode, `${args.join(' ')}: ${r.stderr}`).toBe(EXIT.notFound);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/Hint: kelsingra list shows the live intercepts/);
    }
    const own = await cli(['logs', mine.id], team);
    expect(own.exitCode, String(own.stderr)).toBe(0);
    expect(own.stdout).not.toContain('/secret');
  });

  it('an unknown intercept exits 4 with a hint; a wrong token exits 3; no server exits 6', async () => {
    await detach(admin, 't1');
    const byName = await cli(['logs', 'billing', '--tenant', 'nobody'], admin);
    expect(byName.exitCode).toBe(EXIT.notFound);
    expect(byName.stderr).toMatch(/no live intercept of billing for tenant nobody/);
    expect(byName.stderr).toMatch(/Hint: kelsingra list shows the live intercepts/);

    // A service name without --tenant: the hint says how to name it.
    const noTenant = await cli(['logs', 'billing', '--json'], admin);
    expect(noTenant.exitCode).toBe(EXIT.notFound);
    const err = JSON.parse(String(noTenant.stderr).trim());
    expect(err).toMatchObject({
      exitCode: EXIT.notFound,
      hint: 'to name one by service, add --tenant: kelsingra logs billing --tenant <t>',
    });

    const byId = await cli(['logs', 'icp_000000000000', '-f'], admin);
    expect(byId.exitCode).toBe(EXIT.notFound);

    const wrong = await cli(['logs', 'billing', '--tenant', 't1'], {
      ...admin,
      KELSINGRA_TOKEN: 'not-the-token',
    });
    expect(wrong.exitCode).toBe(EXIT.auth);
    expect(wrong.stderr).toMatch(/rejected the token/);
    expect(wrong.stderr).toMatch(/Hint: check KELSINGRA_TOKEN/);

    const gone = await cli(['logs', 'billing', '--tenant', 't1'], {
      ...admin,
      KELSINGRA_SERVER: `http://127.0.0.1:${CLOSED_PORT}`,
    });
    expect(gone.exitCode).toBe(EXIT.unreachable);
  });
});
