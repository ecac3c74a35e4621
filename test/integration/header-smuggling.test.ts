/**
 * Header twins: a CGI-style service (WSGI, PHP, Rack…) reads `x_tenant_id` as `x-tenant-id`,
 * so a twin Kelsingra does not read would let the service act for another tenant than the one
 * routed and authorised. Through real server and client processes, on every path a test can
 * reach: the twin is refused with 400 naming it and reaches nobody; a Connection line naming
 * the tenant header does not take it away; the target sees one tenant header, the routed key.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startClientGateway } from '../../src/client/gateway/gateway-client.js';
import { LocalForwarder } from '../../src/client/tunnel/local-forwarder.js';
import {
  bodyJson,
  type Cleanup,
  cleanupsAfterEach,
  clientEnv,
  closeServer,
  interceptDetached,
  isHealthCheck,
  listen,
  type RawResponse,
  rawRequest,
  run,
  type ServerProcess,
  startServerProcess,
  tempDir,
} from '../support/helpers.js';
import { freshDatabase } from '../support/postgres.js';
import { exchange, requestHead, tunnelPair } from '../support/tunnel-pair.js';

const TEAM_A = 'team-a-smuggling-token-41c2';
const cleanups = cleanupsAfterEach();

/** A target that records the header lines it got, as they came. */
async function recorder(c: Cleanup[]) {
  const seen: string[][] = [];
  const svc = await listen((req, res) => {
    if (isHealthCheck(req)) return void res.end('ok');
    seen.push(req.rawHeaders);
    req.resume();
    res.end('served');
  });
  c.push(() => closeServer(svc));
  return { ...svc, seen };
}

/** The request as a CGI-style server sees it: `HTTP_X_TENANT_ID`, every spelling merged, repeats joined. */
function cgiView(raw: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (let i = 0; i < raw.length; i += 2) {
    const name = `HTTP_${(raw[i] as string).toUpperCase().replaceAll('-', '_')}`;
    env[name] = env[name] === undefined ? (raw[i + 1] as string) : `${env[name]},${raw[i + 1]}`;
  }
  return env;
}

const linesOf = (raw: string[], name: string) =>
  raw.filter((n, i) => i % 2 === 0 && n.toLowerCase() === name);

/** What a target that got one request must have seen of the tenant: one line, the routed key. */
function expectOneTenant(seen: string[][], key: string) {
  expect(seen).toHaveLength(1);
  const raw = seen[0] as string[];
  expect(linesOf(raw, 'x-tenant-id'), JSON.stringify(raw)).toHaveLength(1);
  expect(cgiView(raw).HTTP_X_TENANT_ID).toBe(key);
  return raw;
}

function expectRefused(res: RawResponse, header: string) {
  expect(res.status, res.body.toString()).toBe(400);
  expect(res.headers['x-kelsingra-error']).toBe('ambiguous-header');
  const body = bodyJson(res);
  expect(body).toMatchObject({ code: 'ambiguous-header', source: 'kelsingra', header });
  expect(String(body.error)).toMatch(/^Kelsingra: header "/);
  expect(String(body.hint)).toContain('spelled with dashes');
}

/** Requests with header lines exactly as given (twins, Connection lines); Node adds no Host to those. */
const send = (url: string, lines: string[], method = 'GET') =>
  rawRequest(url, { method, headers: ['host', new URL(url).host, ...lines] });

describe('header twins on one server: pass-through, route, tunnel, /v1/gateway, client gateway', () => {
  const dir = tempDir('kelsingra-smuggling-');
  const local: Cleanup[] = [];
  let server: ServerProcess;
  let base: Awaited<ReturnType<typeof recorder>>;
  let routed: Awaited<ReturnType<typeof recorder>>;
  let laptop: Awaited<ReturnType<typeof recorder>>;
  let gatewayUrl: string;
  const all = () => [base, routed, laptop].flatMap((r) => r.seen);

  beforeAll(async () => {
    base = await recorder(local);
    routed = await recorder(local);
    laptop = await recorder(local);
    const tokensFile = join(dir, 'tokens.yaml');
    writeFileSync(tokensFile, `tokens:\n  - { name: team-a, token: ${TEAM_A}, tenants: ['team-a-*'] }\n`);
    server = await startServerProcess([
      '--service',
      `billing=${base.url}`,
      '--service',
      `orders=${base.url}`,
      '--tokens-file',
      tokensFile,
      '--route-target',
      'http://127.0.0.1:*',
    ]);
    local.push(() => server.stop());
    const env = clientEnv(server, TEAM_A);
    const route = await run(['route', 'set', 'billing', '--tenants', 'team-a-9', '--to', routed.url], env);
    expect(route.exitCode, route.stderr).toBe(0);
    await interceptDetached(env, 'billing', 'team-a-7', laptop.port, local);
    const { gateway } = await startClientGateway(
      { server: server.control, token: TEAM_A, holder: 'smuggler', configDir: tempDir('kelsingra-gw-') },
      'team-a-3',
      { port: 0, cors: false },
    );
    local.push(() => gateway.close());
    gatewayUrl = gateway.url;
  }, 60_000);
  afterAll(async () => {
    for (const c of local.reverse()) await c();
  });
  const clear = () => {
    for (const r of [base, routed, laptop]) r.seen.length = 0;
  };

  /** Sends path `p` its tenant and `extra`; served, its target saw one tenant header, the key: the CGI view of it. */
  const served = async (p: ReturnType<typeof paths>[number], extra: string[]) => {
    clear();
    const res = await send(p.url, [...p.lines, 'x-tenant-id', p.key, ...extra]);
    expect(res.status, `${p.name}: ${res.body}`).toBe(200);
    expect(res.body.toString()).toBe('served');
    return cgiView(expectOneTenant(p.target.seen, p.key));
  };

  /** Each path: where to send, the header lines that pick it, and which target serves it. */
  const dataPort = (name: string, key: string, target: typeof base) => ({
    name,
    url: `${server.data}/x`,
    lines: ['x-kelsingra-service', 'billing'],
    key,
    target,
  });
  const paths = () => [
    dataPort('pass-through', 'team-a-3', base),
    dataPort('tenant route', 'team-a-9', routed),
    dataPort('tunnel', 'team-a-7', laptop),
    {
      name: '/v1/gateway',
      url: `${server.control}/v1/gateway/x`,
      lines: ['x-kelsingra-service', 'billing', 'x-kelsingra-token', TEAM_A],
      key: 'team-a-3',
      target: base,
    },
    { name: 'client gateway', url: `${gatewayUrl}/billing/x`, lines: [], key: 'team-a-3', target: base },
  ];

  it('refuses an underscore twin of the tenant header with 400 naming it, on every path, and nothing reaches a target', async () => {
    for (const p of paths()) {
      clear();
      for (const twin of ['x_tenant_id', 'X_Tenant-Id']) {
        const res = await send(p.url, [...p.lines, 'x-tenant-id', p.key, twin, 'team-b-1']);
        expectRefused(res, twin);
      }
      // The twin alone: routed as no tenant (or the gateway's), served as team-b-1.
      expectRefused(await send(p.url, [...p.lines, 'x_tenant_id', 'team-b-1']), 'x_tenant_id');
      expect(all(), p.name).toEqual([]);
    }
  });

  it('refuses twins of the other headers Kelsingra reads, and two spellings of any one header', async () => {
    for (const p of paths()) {
      clear();
      const twins = [
        ['x_kelsingra_service', 'orders'],
        ['x-kelsingra_hop', 'someone'],
        ['x_request_id', 'forged'],
        ['content_length', '0'],
      ];
      for (const [name, value] of twins)
        expectRefused(
          await send(p.url, [...p.lines, 'x-tenant-id', p.key, name as string, value as string]),
          name as string,
        );
      expectRefused(
        await send(p.url, [
          ...p.lines,
          'x-tenant-id',
          p.key,
          'x-user-role',
          'viewer',
          'x_user_role',
          'admin',
        ]),
        'x_user_role',
      );
      expect(all(), p.name).toEqual([]);
    }
    // The gateway token's twin would reach the dev service: a credential leak, refused too.
    clear();
    const p = paths()[3] as ReturnType<typeof paths>[number];
    expectRefused(await send(p.url, [...p.lines, 'x_kelsingra_token', TEAM_A]), 'x_kelsingra_token');
    expect(all()).toEqual([]);
  });

  it('a Connection line naming the tenant header (and trace headers) does not take them away: one tenant header, the routed key', async () => {
    for (const p of paths()) {
      const cgi = await served(p, [
        'traceparent',
        '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
        'baggage',
        'team=blue',
        'connection',
        'x-tenant-id, baggage, traceparent, x-request-id, x-kelsingra-service',
      ]);
      expect(cgi.HTTP_TRACEPARENT, p.name).toMatch(/^00-4bf92f3577b34da6a3ce929d0e0e4736-/);
      expect(cgi.HTTP_BAGGAGE, p.name).toContain('team=blue');
      expect(cgi.HTTP_X_REQUEST_ID, p.name).toBeTruthy();
      // The caller's Connection line is this hop's only: the next one gets its own.
      expect(cgi.HTTP_CONNECTION ?? '', p.name).not.toContain('x-tenant-id');
    }
  });

  it('the issue as reported: team A authorised as team-a-3 never reaches the service as team-b-1', async () => {
    const p = paths()[3] as ReturnType<typeof paths>[number];
    clear();
    const lines = [...p.lines, 'x-tenant-id', 'team-a-3', 'x_tenant_id', 'team-b-1'];
    expectRefused(await send(p.url, [...lines, 'connection', 'x-tenant-id']), 'x_tenant_id');
    expectRefused(await send(p.url, lines), 'x_tenant_id');
    expect(all()).toEqual([]);
    const only = await send(p.url, [...p.lines, 'x-tenant-id', 'team-a-3', 'connection', 'x-tenant-id']);
    expect(only.status).toBe(200);
    expectOneTenant(base.seen, 'team-a-3');
  });

  it('a second tenant member in baggage does not go on: the target gets one, the routed key', async () => {
    for (const p of paths()) {
      const cgi = await served(p, ['baggage', `tenant=${p.key},userId=42`, 'baggage', 'tenant=team-b-1']);
      const members = cgi.HTTP_BAGGAGE?.split(',');
      expect(
        members?.filter((m) => m.startsWith('tenant=')),
        p.name,
      ).toEqual([`tenant=${p.key}`]);
      expect(members, p.name).toContain('userId=42');
    }
  });

  it('a duplicate tenant header line is refused as two keys; an upgrade with a twin is refused before it is relayed', async () => {
    clear();
    const dup = await send(`${server.data}/x`, [
      'x-kelsingra-service',
      'billing',
      'x-tenant-id',
      'team-a-3',
      'X-Tenant-ID',
      'team-b-1',
    ]);
    expect(dup.status).toBe(400);
    expect(dup.headers['x-kelsingra-error']).toBe('bad-routing-key');
    const upgrade = await send(`${server.data}/ws`, [
      'x-kelsingra-service',
      'billing',
      'x-tenant-id',
      'team-a-3',
      'x_tenant_id',
      'team-b-1',
      'connection',
      'upgrade',
      'upgrade',
      'websocket',
    ]);
    expectRefused(upgrade, 'x_tenant_id');
    expect(all()).toEqual([]);
  });
});

describe('header twins across replicas on PostgreSQL', () => {
  it('a replica relaying to the one with the tunnel refuses the twin and sends on one tenant header', async () => {
    const laptop = await recorder(cleanups);
    const base = await recorder(cleanups);
    const db = await freshDatabase(cleanups);
    const replicas = await Promise.all(
      [1, 2].map(() =>
        startServerProcess(['--service', `billing=${base.url}`, '--token', TEAM_A, '--database-url', db]),
      ),
    );
    for (const r of replicas) cleanups.push(() => r.stop());
    const [r1, r2] = replicas as [ServerProcess, ServerProcess];
    await interceptDetached(clientEnv(r1, TEAM_A), 'billing', 't1', laptop.port, cleanups);

    const lines = ['x-kelsingra-service', 'billing', 'x-tenant-id', 't1'];
    expectRefused(await send(`${r2.data}/x`, [...lines, 'x_tenant_id', 't2']), 'x_tenant_id');
    expect([...laptop.seen, ...base.seen]).toEqual([]);
    const res = await send(`${r2.data}/x`, [...lines, 'connection', 'x-tenant-id, x-kelsingra-relay']);
    expect(res.status, res.body.toString()).toBe(200);
    expectOneTenant(laptop.seen, 't1');
    expect(base.seen).toEqual([]);
  }, 60_000);
});

describe('the client agent before the local service', () => {
  it('refuses a tunnelled request carrying two spellings of the tenant header, whatever a server let through', async () => {
    const laptop = await recorder(cleanups);
    const forwarder = new LocalForwarder(
      { service: 'billing', tenant: 't1', port: laptop.port },
      () => undefined,
    );
    cleanups.push(() => forwarder.close());
    // The tunnel's stream as the server agent opens it, from a server that did not check.
    const { hub } = await tunnelPair((stream, head) => forwarder.serve(stream, head), cleanups);
    const answer = async (headers: Record<string, string>) => {
      const r = await exchange(hub, requestHead({ headers: Object.entries(headers).flat() }));
      const at = r.headers.indexOf('x-kelsingra-error');
      return { status: r.status, code: at >= 0 ? r.headers[at + 1] : undefined, body: r.body.toString() };
    };
    const refused = await answer({ 'x-tenant-id': 't1', x_tenant_id: 'team-b-1' });
    expect(refused).toMatchObject({ status: 400, code: 'ambiguous-header' });
    expect(JSON.parse(refused.body)).toMatchObject({ header: 'x_tenant_id', twinOf: 'x-tenant-id' });
    expect(laptop.seen).toEqual([]);
    expect((await answer({ 'x-tenant-id': 't1' })).status).toBe(200);
    expectOneTenant(laptop.seen, 't1');
  });
});

// Node's own client must send the lines as given: the test relies on it.
it('sends header twins and Connection lines as written', async () => {
  const got = await recorder(cleanups);
  await send(got.url, ['x-tenant-id', 'a', 'x_tenant_id', 'b']);
  expect(cgiView(got.seen[0] as string[]).HTTP_X_TENANT_ID).toBe('a,b');
});
