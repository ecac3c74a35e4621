/**
 * Tokens with roles, tokens kept only as hashes, the limit on wrong tokens, and the audit
 * trail: real `kelsingra server` processes, the built CLI, and the REST API and tunnel as
 * clients use them.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import type http from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { InterceptView } from '../../src/shared/protocol.js';
import { TUNNEL_SUBPROTOCOL } from '../../src/shared/tunnel-wire.js';
import {
  cleanupsAfterEach,
  cli,
  clientEnv,
  interceptDetached,
  type RawResponse,
  rawRequest,
  run,
  type ServerProcess,
  startServerProcess,
  tempDir,
  textService,
  waitFor,
} from '../support/helpers.js';

// Exit codes from src/shared/errors.ts (ExitCode), spelled out: scripts depend on the numbers.
const EXIT = { ok: 0, failure: 1, usage: 2, auth: 3 } as const;

const cleanups = cleanupsAfterEach();

interface AuditLine {
  audit: true;
  log: 'audit';
  action: string;
  outcome: string;
  reason?: string;
  actor: { tokenName?: string; role?: string; holder?: string; address?: string; system?: true };
  intercept?: { id?: string; service: string; tenant: string; holder?: string; tokenName?: string };
  [field: string]: unknown;
}

/** The audit lines among JSON log lines. */
function auditLines(text: string): AuditLine[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l): l is AuditLine => l.audit === true);
}

/** An HTTP request from a chosen local address (the loopback network is all of 127/8). */
function requestFrom(
  localAddress: string,
  url: string,
  headers: http.OutgoingHttpHeaders = {},
): Promise<RawResponse> {
  return rawRequest(url, { headers, localAddress });
}

/** Opens the tunnel WebSocket; the status of a refused upgrade, with its Retry-After. */
function openTunnel(
  server: ServerProcess,
  token: string,
  clientId: string,
): Promise<{ ws?: WebSocket; status?: number; retryAfter?: string }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${server.control.replace('http', 'ws')}/v1/tunnel`, TUNNEL_SUBPROTOCOL, {
      headers: {
        authorization: `Bearer ${token}`,
        'x-kelsingra-client': clientId,
        'x-kelsingra-holder': 'raw-client@test',
      },
    });
    ws.once('unexpected-response', (_req, res) => {
      res.resume();
      resolve({ status: res.statusCode, retryAfter: res.headers['retry-after'] as string | undefined });
    });
    ws.once('message', () => resolve({ ws }));
    ws.once('error', () => resolve({}));
  });
}

describe('admin and developer tokens, kept as hashes, with an audit trail', () => {
  const dir = tempDir('kelsingra-security-');
  const tokensFile = join(dir, 'tokens.yaml');
  const auditFile = join(dir, 'audit.log');
  const TEAM_A = 'team-a-secret-token-7f1c';
  const TEAM_B = 'team-b-plain-secret-2d9e';
  let ADMIN = '';
  let server: ServerProcess;
  let base: { url: string };
  const stops: (() => Promise<void>)[] = [];
  const secrets = () => [ADMIN, TEAM_A, TEAM_B];

  beforeAll(async () => {
    // The file as an operator builds it with `kelsingra token hash`: a generated admin secret,
    // team-a's secret hashed from stdin, and team-b still in plain text.
    const generated = await run(
      ['token', 'hash', '--generate', '--name', 'ops', '--role', 'admin', '--json'],
      {},
    );
    expect(generated.exitCode, generated.stderr).toBe(0);
    const admin = JSON.parse(generated.stdout) as { token: string; tokenSha256: string; role: string };
    ADMIN = admin.token;
    expect(admin.tokenSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(generated.stdout).not.toContain('tokens:');
    const hashed = await cli(
      ['token', 'hash', '--name', 'team-a', '--tenants', 'team-a-*,demo'],
      {},
      {
        input: `${TEAM_A}\n`,
      },
    );
    const teamA = { exitCode: hashed.exitCode, stdout: String(hashed.stdout), stderr: String(hashed.stderr) };
    expect(teamA.exitCode, teamA.stderr).toBe(0);
    expect(teamA.stdout).not.toContain(TEAM_A);
    writeFileSync(
      tokensFile,
      `tokens:
  - name: ops
    tokenSha256: ${admin.tokenSha256}
    role: admin
${teamA.stdout.trimEnd()}
  - name: team-b
    token: ${TEAM_B}
    tenants: ['team-b-*', 'demo']
`,
    );
    const svc = await textService('base', []);
    base = svc;
    stops.push(() => new Promise((r) => svc.server.close(() => r())));
    server = await startServerProcess([
      '--service',
      `billing=${svc.url}`,
      '--service',
      `orders=${svc.url}`,
      '--tokens-file',
      tokensFile,
      '--route-target',
      'http://127.0.0.1:*',
      '--audit-log',
      auditFile,
    ]);
    stops.push(() => server.stop());
  });
  afterAll(async () => {
    for (const stop of stops.reverse()) await stop();
  });

  const as = (token: string, holder: string) => clientEnv(server, token, { KELSINGRA_HOLDER: holder });
  const list = async (env: Record<string, string>) => {
    const r = await run(['list', '--json'], env);
    expect(r.exitCode, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as InterceptView[];
  };
  const fileAudit = () => auditLines(readFileSync(auditFile, 'utf8'));

  it('takes hashed tokens from `kelsingra token hash`, warns once about the plain one, and shows each its role', async () => {
    const warn = server
      .logs()
      .split('\n')
      .filter((l) => l.includes('tokenSha256:'));
    expect(warn).toHaveLength(1);
    expect(JSON.parse(warn[0] as string)).toMatchObject({ level: 40, tokenNames: ['team-b'] });

    const admin = await run(['status'], as(ADMIN, 'olga@ops'));
    expect(admin.exitCode, admin.stderr).toBe(0);
    expect(admin.stdout).toContain('Token ops: admin (every tenant');
    const dev = await run(['status', '--json'], as(TEAM_A, 'alice@a'));
    expect(dev.exitCode, dev.stderr).toBe(0);
    expect(JSON.parse(dev.stdout).principal).toEqual({
      name: 'team-a',
      role: 'developer',
      tenants: ['team-a-*', 'demo'],
    });
    const connect = await run(['connect', '--server', server.control, '--token', TEAM_B], {
      KELSINGRA_CONFIG_DIR: tempDir(),
    });
    expect(connect.stdout).toContain(
      'Token team-b: developer (tenants team-b-*, demo; ends the intercepts it made)',
    );
    // The digest is not a token.
    const sha = readFileSync(tokensFile, 'utf8').match(/tokenSha256: ([0-9a-f]{64})/)?.[1] as string;
    expect((await run(['list'], as(sha, 'x@y'))).exitCode).toBe(EXIT.auth);
  });

  it('a developer ends only what its token made; an admin sees and ends anyone’s; each change is audited', async () => {
    const alice = as(TEAM_A, 'alice@a');
    const bob = as(TEAM_B, 'bob@b');
    const ops = as(ADMIN, 'olga@ops');
    const aliceDemo = await interceptDetached(alice, 'billing', 'demo', 3001, cleanups);
    const aliceOwn = await interceptDetached(alice, 'billing', 'team-a-1', 3002, cleanups);
    const bobOwn = await interceptDetached(bob, 'orders', 'team-b-1', 3003, cleanups);
    const bobDemo = await interceptDetached(bob, 'orders', 'demo', 3004, cleanups);

    // team-b sees the shared tenant's intercepts, not team-a's own; the admin sees all.
    expect((await list(bob)).map((i) => i.id).sort()).toEqual([aliceDemo.id, bobOwn.id, bobDemo.id].sort());
    expect((await list(ops)).map((i) => i.id).sort()).toEqual(
      [aliceDemo.id, aliceOwn.id, bobOwn.id, bobDemo.id].sort(),
    );

    // Not by service and tenant, not by id, whatever holder name it claims.
    const byKey = await run(['leave', 'billing', '--tenant', 'demo'], bob);
    expect(byKey.exitCode).toBe(EXIT.auth);
    expect(byKey.stderr).toContain('held by alice@a with token "team-a"');
    expect(byKey.stderr).toContain('token "team-b" (developer) ends only the intercepts it made');
    expect(byKey.stderr).toContain('Hint: ask alice@a to run kelsingra leave');
    const byId = await run(['leave', aliceDemo.id, '--json'], bob);
    expect(byId.exitCode).toBe(EXIT.auth);
    expect(JSON.parse(byId.stderr)).toMatchObject({ code: 'intercept-forbidden', holder: 'alice@a' });
    const posing = await run(['leave', '--all'], as(TEAM_B, 'alice@a'));
    expect(posing.exitCode, posing.stderr).toBe(0);
    expect(posing.stdout).toContain('No intercepts to end.');
    // Nor through the API's bulk forms.
    const bulk = await fetch(`${server.control}/v1/intercepts?tenant=demo`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${TEAM_B}` },
    });
    expect(bulk.status).toBe(403);
    const byHolder = await fetch(`${server.control}/v1/intercepts?holder=alice%40a`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${TEAM_B}` },
    });
    expect(await byHolder.json()).toEqual({ removed: [] });
    expect((await list(ops)).map((i) => i.id)).toContain(aliceDemo.id);

    // A developer may not even try a tenant outside its patterns.
    const outside = await run(
      ['intercept', 'billing', '--tenant', 'team-b-2', '--port', '3005', '--detach'],
      alice,
    );
    expect(outside.exitCode).toBe(EXIT.auth);

    // Its own: yes, by id or all at once.
    expect((await run(['leave', bobDemo.id], bob)).exitCode).toBe(EXIT.ok);
    // The admin: anyone's, by service and tenant, or every intercept of a holder.
    const kicked = await run(['leave', 'billing', '--tenant', 'demo'], ops);
    expect(kicked.exitCode, kicked.stderr).toBe(0);
    expect(kicked.stdout).toContain(`Left billing for tenant demo (${aliceDemo.id}).`);
    const all = await run(['leave', '--all', '--json'], as(ADMIN, 'alice@a'));
    expect(JSON.parse(all.stdout).removed.map((i: InterceptView) => i.id)).toEqual([aliceOwn.id]);
    expect((await run(['leave', '--all'], bob)).exitCode).toBe(EXIT.ok);
    expect(await list(ops)).toEqual([]);

    const audit = fileAudit().filter((l) => l.action.startsWith('intercept.'));
    const of = (id: string) => audit.filter((l) => l.intercept?.id === id);
    // One line per change, naming who (token, role, holder, address) and what.
    expect(of(aliceDemo.id).filter((l) => l.outcome === 'created')).toEqual([
      expect.objectContaining({
        log: 'audit',
        action: 'intercept.create',
        actor: { tokenName: 'team-a', role: 'developer', holder: 'alice@a', address: '127.0.0.1' },
        intercept: expect.objectContaining({ service: 'billing', tenant: 'demo', tokenName: 'team-a' }),
      }),
    ]);
    const ended = (id: string) => of(id).filter((l) => l.action === 'intercept.end' && l.outcome === 'ended');
    expect(ended(aliceDemo.id)).toEqual([
      expect.objectContaining({
        reason: 'kicked',
        actor: { tokenName: 'ops', role: 'admin', holder: 'olga@ops', address: '127.0.0.1' },
        intercept: expect.objectContaining({ holder: 'alice@a', tokenName: 'team-a' }),
      }),
    ]);
    expect(ended(aliceOwn.id)).toEqual([expect.objectContaining({ reason: 'kicked' })]);
    expect(ended(bobDemo.id)).toEqual([
      expect.objectContaining({ reason: 'left', actor: expect.objectContaining({ tokenName: 'team-b' }) }),
    ]);
    expect(ended(bobOwn.id)).toHaveLength(1);
    // The refusals are in the trail too (two by the CLI, one by the API), changing nothing.
    expect(
      of(aliceDemo.id).filter((l) => l.outcome === 'refused' && l.actor.tokenName === 'team-b'),
    ).toHaveLength(3);
    expect(audit).toContainEqual(
      expect.objectContaining({
        action: 'intercept.create',
        outcome: 'refused',
        reason: 'tenant-forbidden',
        intercept: expect.objectContaining({ tenant: 'team-b-2' }),
      }),
    );
    // The same lines in the server's own log.
    const untimed = ({ time: _, ...rest }: AuditLine) => rest;
    expect(auditLines(server.logs()).map(untimed)).toEqual(fileAudit().map(untimed));
  });

  it('routes: a developer changes only its tenants; an admin sees and deletes every route; both audited', async () => {
    const alice = as(TEAM_A, 'alice@a');
    const bob = as(TEAM_B, 'bob@b');
    const ops = as(ADMIN, 'olga@ops');
    const target = base.url;
    expect(
      (await run(['route', 'set', 'billing', '--tenants', 'team-a-1', '--to', target], alice)).exitCode,
    ).toBe(EXIT.ok);
    expect(
      (await run(['route', 'set', 'billing', '--tenants', 'team-b-1', '--to', target], bob)).exitCode,
    ).toBe(EXIT.ok);
    const bobs = JSON.parse((await run(['route', 'list', '--json'], bob)).stdout);
    expect(bobs.map((r: { tenants: string[] }) => r.tenants)).toEqual([['team-b-1']]);
    const routeId = bobs[0].id as string;

    const steal = await run(['route', 'delete', 'billing', '--tenants', 'team-a-1'], bob);
    expect(steal.exitCode).toBe(EXIT.auth);
    expect(steal.stderr).toContain('token "team-b" may not change the routes of tenant team-a-1');
    const whole = await run(['route', 'delete', routeId], bob);
    expect(whole.exitCode).toBe(EXIT.auth);

    const everything = JSON.parse((await run(['route', 'list', '--json'], ops)).stdout);
    expect(everything.map((r: { tenants: string[] }) => r.tenants.sort())).toEqual([
      ['team-a-1', 'team-b-1'],
    ]);
    const deleted = await run(['route', 'delete', routeId, '--json'], ops);
    expect(deleted.exitCode, deleted.stderr).toBe(0);
    expect(JSON.parse((await run(['route', 'list', '--json'], ops)).stdout)).toEqual([]);

    const routes = fileAudit().filter((l) => l.action.startsWith('route.'));
    expect(routes.map((l) => [l.action, l.outcome, l.actor.tokenName])).toEqual([
      ['route.set', 'created', 'team-a'],
      ['route.set', 'updated', 'team-b'],
      ['route.delete', 'refused', 'team-b'],
      ['route.delete', 'refused', 'team-b'],
      ['route.delete', 'deleted', 'ops'],
    ]);
    expect(routes[1]).toMatchObject({
      actor: { tokenName: 'team-b', role: 'developer', holder: 'bob@b', address: '127.0.0.1' },
      route: {
        id: routeId,
        service: 'billing',
        targets: [new URL(target).href],
        tenants: ['team-a-1', 'team-b-1'],
      },
      requested: { tenants: ['team-b-1'], replace: false },
    });
    expect(routes[2]).toMatchObject({ reason: 'tenant-forbidden', forbidden: ['team-a-1'] });
    expect(routes[4]).toMatchObject({
      actor: { tokenName: 'ops', role: 'admin' },
      deleted: [{ id: routeId, tenants: ['team-a-1', 'team-b-1'], tenantCount: 2 }],
    });
  });

  it('never writes a token to the log or the audit trail', () => {
    const written = `${server.logs()}\n${readFileSync(auditFile, 'utf8')}`;
    expect(auditLines(written).length).toBeGreaterThan(10);
    for (const secret of secrets()) expect(written).not.toContain(secret);
  });
});

describe('the limit on wrong tokens', () => {
  const TOKEN = 'limit-test-secret-token-1';
  // Long enough for the checks made while blocked (a CLI run among them) on a loaded machine.
  const WINDOW_S = 10;

  async function limited(extra: string[] = []) {
    const server = await startServerProcess([
      '--service',
      'billing=http://127.0.0.1:1',
      '--token',
      TOKEN,
      '--auth-failure-limit',
      '3',
      '--auth-failure-window',
      String(WINDOW_S),
      ...extra,
    ]);
    cleanups.push(() => server.stop());
    return server;
  }
  const status = (
    server: ServerProcess,
    from: string,
    token: string,
    headers: http.OutgoingHttpHeaders = {},
  ) => requestFrom(from, `${server.control}/status`, { authorization: `Bearer ${token}`, ...headers });
  const blockLines = (server: ServerProcess) =>
    server
      .logs()
      .split('\n')
      .filter((l) => l.includes('too many wrong tokens from one client address'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  it('turns an address away with 429 and Retry-After after N wrong tokens, everywhere; other addresses, and it after the window, get in', async () => {
    const server = await limited();
    for (let i = 0; i < 3; i++)
      expect((await status(server, '127.0.0.1', `wrong-token-${i}`)).status).toBe(401);
    // Now even the right token, on the API, the gateway and the tunnel.
    const api = await status(server, '127.0.0.1', TOKEN);
    expect(api.status).toBe(429);
    expect(Number(api.headers['retry-after'])).toBeGreaterThan(0);
    expect(Number(api.headers['retry-after'])).toBeLessThanOrEqual(WINDOW_S);
    expect(JSON.parse(api.body.toString())).toMatchObject({ code: 'too-many-auth-failures' });
    const gateway = await requestFrom('127.0.0.1', `${server.control}/v1/gateway/billing/x`, {
      'x-kelsingra-token': TOKEN,
    });
    expect(gateway.status).toBe(429);
    expect(gateway.headers['retry-after']).toBeDefined();
    const tunnel = await openTunnel(server, TOKEN, 'c_limit_client_1');
    expect(tunnel.status).toBe(429);
    expect(Number(tunnel.retryAfter)).toBeGreaterThan(0);
    const cli = await run(['list'], clientEnv(server, TOKEN));
    expect(cli.exitCode).toBe(EXIT.failure);
    expect(cli.stderr).toContain('too many wrong tokens from 127.0.0.1');
    // Health checks need no token and are never turned away.
    expect((await requestFrom('127.0.0.1', `${server.control}/healthz`)).status).toBe(200);

    // Another address is a client of its own.
    expect((await status(server, '127.0.0.2', TOKEN)).status).toBe(200);
    expect((await status(server, '127.0.0.2', 'wrong-token-x')).status).toBe(401);

    // One warning per block, naming the address and the count, never a token.
    expect(blockLines(server)).toEqual([
      expect.objectContaining({ level: 40, address: '127.0.0.1', failures: 3, blockedForSeconds: WINDOW_S }),
    ]);
    expect(server.logs()).not.toContain('wrong-token-');
    expect(server.logs()).not.toContain(TOKEN);

    await waitFor(
      async () => (await status(server, '127.0.0.1', TOKEN)).status === 200,
      (WINDOW_S + 3) * 1000,
      'the block to end',
    );
  });

  it('behind a trusted proxy, counts the address it forwards for, and ignores that header from anyone else', async () => {
    const server = await limited(['--trusted-proxy', '127.0.0.1']);
    const xff = (address: string) => ({ 'x-forwarded-for': address });
    for (let i = 0; i < 3; i++)
      expect((await status(server, '127.0.0.1', 'wrong-token', xff('203.0.113.9'))).status).toBe(401);
    expect((await status(server, '127.0.0.1', TOKEN, xff('203.0.113.9'))).status).toBe(429);
    // The proxy itself, and the other clients behind it, still get in.
    expect((await status(server, '127.0.0.1', TOKEN, xff('203.0.113.10'))).status).toBe(200);
    expect((await status(server, '127.0.0.1', TOKEN)).status).toBe(200);
    // An untrusted peer cannot pass itself off as someone else (or get someone blocked).
    expect((await status(server, '127.0.0.2', TOKEN, xff('203.0.113.9'))).status).toBe(200);
    expect(blockLines(server)).toEqual([expect.objectContaining({ address: '203.0.113.9' })]);
  });
});

describe('audit of the server’s own changes', () => {
  it('refuses to start (exit 7) when the audit file cannot be opened', async () => {
    const missing = join(tempDir(), 'no-such-dir', 'audit.log');
    const r = await run(
      ['server', '--port', '0', '--proxy-port', '0', '--service', 'billing=http://127.0.0.1:1'],
      {
        KELSINGRA_TOKEN: 'audit-start-token-1',
        KELSINGRA_AUDIT_LOG: missing,
        KELSINGRA_CONFIG_DIR: tempDir(),
      },
    );
    expect(r.exitCode).toBe(7);
    expect(r.stderr).toContain(`cannot open the audit log ${missing}`);
  });

  it('records a re-assertion as renewed and a lapsed lease as expired, by the system', async () => {
    const TOKEN = 'audit-lease-token-123';
    const server = await startServerProcess([
      '--service',
      'billing=http://127.0.0.1:1',
      '--token',
      TOKEN,
      '--lease-ttl',
      '1',
    ]);
    cleanups.push(() => server.stop());
    const clientId = 'c_audit_lease_1';
    const tunnel = await openTunnel(server, TOKEN, clientId);
    expect(tunnel.ws, 'tunnel').toBeDefined();
    const create = () =>
      fetch(`${server.control}/v1/intercepts`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ service: 'billing', tenant: 't1', clientId, localPort: 3000 }),
      });
    const first = await create();
    expect(first.status).toBe(201);
    const { id } = (await first.json()) as InterceptView;
    expect((await create()).status).toBe(200);
    tunnel.ws?.close();
    const lines = await waitFor(
      () => {
        const mine = auditLines(server.logs()).filter((l) => l.intercept?.id === id);
        return mine.some((l) => l.reason === 'expired') ? mine : undefined;
      },
      10_000,
      'the lease to lapse',
    );
    expect(lines.map((l) => [l.action, l.outcome, l.reason])).toEqual([
      ['intercept.create', 'created', undefined],
      ['intercept.create', 'renewed', undefined],
      ['intercept.end', 'ended', 'expired'],
    ]);
    // The single --token is the admin "default"; the tunnel's holder is the one audited.
    expect(lines[0]?.actor).toEqual({
      tokenName: 'default',
      role: 'admin',
      holder: 'raw-client@test',
      address: '127.0.0.1',
    });
    expect(lines[2]?.actor).toEqual({ system: true });
    expect(server.logs()).not.toContain(TOKEN);
    // Nothing asked for an audit file, and plain --token is not a tokens file: no warning.
    expect(server.logs()).not.toContain('tokenSha256:');
  });
});
