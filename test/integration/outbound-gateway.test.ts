/**
 * The outbound gateway: calls from the developer's machine into the dev environment, with
 * the tenant header, W3C trace context and baggage added, through a real `kelsingra server`.
 * First the gateway in-process against echoing upstreams; then the whole chain A → B → C
 * with B (and C) intercepted by real `kelsingra intercept` processes.
 *
 * Over 400 lines on purpose: it is the list of the outbound gateway's cases, each one self-contained; split,
 * one capability would be spread over several files.
 */
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { stripVTControlCharacters } from 'node:util';
import { describe, expect, it } from 'vitest';
import { gatewayEnv, outboundEvent, startClientGateway } from '../../src/client/gateway/gateway-client.js';
import { addressedToGateway, allowedOrigin } from '../../src/client/gateway/gateway-cors.js';
import { targetOf } from '../../src/client/gateway/gateway-target.js';
import {
  type GatewayRecord,
  type OutboundGateway,
  startOutboundGateway,
} from '../../src/client/gateway/outbound-gateway.js';
import {
  baggageEntry,
  newTraceparent,
  validTraceparent,
  withBaggage,
} from '../../src/shared/http/w3c-context.js';
import { formatBatch } from '../../src/ui/live-log-lines.js';
import { LiveLogModel } from '../../src/ui/live-log-model.js';
import {
  background,
  bodyJson,
  CLOSED_PORT,
  type Cleanup,
  cleanupsAfterEach,
  cli,
  clientEnv,
  closeServer,
  freePort,
  interceptDetached,
  isHealthCheck,
  killPid,
  listen,
  rawRequest,
  type ServerProcess,
  startServerProcess,
  tempDir,
  waitFor,
} from '../support/helpers.js';

const TOKEN = 'gateway-test-secret-token-77a1';
const cleanups = cleanupsAfterEach();

/** What an echoing service saw of a request. */
interface Seen {
  who: string;
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  bodyBytes: number;
}

/** The server agent's health checks are not calls anyone made: answered, not recorded or passed on. */
function answeredHealthCheck(req: http.IncomingMessage, res: http.ServerResponse): boolean {
  if (!isHealthCheck(req)) return false;
  res.end('ok');
  return true;
}

/** A service that answers with what it got: its name, method, url, headers, body size. */
async function echoService(name: string, cleanups: Cleanup[]) {
  const seen: Seen[] = [];
  const svc = await listen((req, res) => {
    if (answeredHealthCheck(req, res)) return;
    let bodyBytes = 0;
    req.on('data', (c: Buffer) => (bodyBytes += c.length));
    req.on('end', () => {
      const s: Seen = {
        who: name,
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        bodyBytes,
      };
      seen.push(s);
      res.writeHead(200, { 'content-type': 'application/json', 'x-echo': name });
      res.end(JSON.stringify(s));
    });
  });
  cleanups.push(() => closeServer(svc));
  return { ...svc, seen };
}

async function startServer(services: Record<string, string>, extra: string[] = ['--token', TOKEN]) {
  const server = await startServerProcess([
    ...Object.entries(services).flatMap(([name, url]) => ['--service', `${name}=${url}`]),
    ...extra,
  ]);
  cleanups.push(() => server.stop());
  return server;
}

function settingsFor(server: ServerProcess, token = TOKEN) {
  return { server: server.control, token, holder: 'gw-test', configDir: tempDir('kelsingra-gw-') };
}

async function gatewayFor(
  server: ServerProcess,
  opts: { tenant?: string; cors?: boolean; token?: string } = {},
): Promise<{ gateway: OutboundGateway; records: GatewayRecord[] }> {
  const records: GatewayRecord[] = [];
  const { gateway } = await startClientGateway(settingsFor(server, opts.token), opts.tenant ?? 't1', {
    port: 0,
    cors: opts.cors ?? false,
    onRequest: (r) => records.push(r),
  });
  cleanups.push(() => gateway.close());
  return { gateway, records };
}

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const TRACEPARENT = `00-${TRACE_ID}-00f067aa0ba902b7-01`;
const traceIdOf = (tp: unknown) => String(tp).split('-')[1];

describe('gateway header rules (pure functions)', () => {
  it('reads the target from proxy-form and origin-form request lines', () => {
    expect(targetOf('http://inventory.dev.example.com:8080/items?x=1')).toEqual({
      kind: 'host',
      host: 'inventory.dev.example.com:8080',
      path: '/items?x=1',
    });
    expect(targetOf('/inventory/items?x=1')).toEqual({
      kind: 'service',
      service: 'inventory',
      path: '/items?x=1',
    });
    expect(targetOf('/inventory')).toEqual({ kind: 'service', service: 'inventory', path: '/' });
    expect(targetOf('/inventory?x=1')).toEqual({ kind: 'service', service: 'inventory', path: '/?x=1' });
    expect(targetOf('/').kind).toBe('none');
    expect(targetOf('ftp://x/y').kind).toBe('none');
  });

  it('traceparent: valid ones are recognised, new ones are valid and sampled', () => {
    expect(validTraceparent(TRACEPARENT)).toBe(true);
    expect(validTraceparent(`00-${'0'.repeat(32)}-00f067aa0ba902b7-01`)).toBe(false);
    expect(validTraceparent(`00-${TRACE_ID}-${'0'.repeat(16)}-01`)).toBe(false);
    expect(validTraceparent(`ff-${TRACE_ID}-00f067aa0ba902b7-01`)).toBe(false);
    expect(validTraceparent(`00-${TRACE_ID}-00f067aa0ba902b7-01-extra`)).toBe(false);
    expect(validTraceparent(`01-${TRACE_ID}-00f067aa0ba902b7-01-extra`)).toBe(true);
    expect(validTraceparent('garbage')).toBe(false);
    expect(validTraceparent([TRACEPARENT, TRACEPARENT])).toBe(false);
    const fresh = newTraceparent();
    expect(fresh).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    expect(validTraceparent(fresh)).toBe(true);
    expect(newTraceparent()).not.toBe(fresh);
  });

  it('baggage: the key is added percent-encoded once, other members kept', () => {
    expect(withBaggage(undefined, 'tenant', 't1')).toBe('tenant=t1');
    expect(withBaggage('userId=42, k=v;p=1', 'tenant', 'a b,c;%')).toBe(
      'userId=42,k=v;p=1,tenant=a%20b%2Cc%3B%25',
    );
    expect(withBaggage('tenant=t9,userId=1', 'tenant', 't1')).toBe('tenant=t9,userId=1');
    expect(withBaggage(['a=1', 'b=2'], 'tenant', 't1')).toBe('a=1,b=2,tenant=t1');
    expect(baggageEntry('x=1, tenant = a%20b ;p', 'tenant')).toBe('a b');
    expect(baggageEntry('tenantx=1', 'tenant')).toBeUndefined();
  });

  it('CORS origins: pages on this machine only', () => {
    for (const o of [
      'http://localhost:5173',
      'https://localhost',
      'http://127.0.0.1:3000',
      'http://[::1]:8080',
    ])
      expect(allowedOrigin(o), o).toBe(true);
    for (const o of [
      'http://evil.example.com',
      'http://localhost.evil.com',
      'null',
      'http://127.0.0.2:80',
      undefined,
    ])
      expect(allowedOrigin(o), String(o)).toBe(false);
  });

  it('Host: only the gateway itself, by a loopback name and its own port', () => {
    for (const h of ['127.0.0.1:7790', 'localhost:7790', 'LOCALHOST:7790', '[::1]:7790'])
      expect(addressedToGateway(h, 7790), h).toBe(true);
    expect(addressedToGateway('127.0.0.1', 80)).toBe(true);
    for (const h of [
      'evil.example:7790',
      '127.0.0.1:7791',
      '127.0.0.1',
      'localhost.evil.com:7790',
      '',
      undefined,
    ])
      expect(addressedToGateway(h, 7790), String(h)).toBe(false);
  });

  it('the command environment points HTTP_PROXY at the gateway and keeps this machine direct', () => {
    const env = gatewayEnv('http://127.0.0.1:7790', { NO_PROXY: 'corp.example.com,localhost' });
    expect(env).toEqual({
      KELSINGRA_GATEWAY: 'http://127.0.0.1:7790',
      HTTP_PROXY: 'http://127.0.0.1:7790',
      http_proxy: 'http://127.0.0.1:7790',
      NO_PROXY: 'corp.example.com,localhost,127.0.0.1,::1',
      no_proxy: 'corp.example.com,localhost,127.0.0.1,::1',
      NODE_USE_ENV_PROXY: '1',
    });
  });
});

describe('outbound calls in the live view', () => {
  it('the banner names the gateway and preview URL; calls print as "→ out" lines, not counted as intercepted requests', () => {
    const model = new LiveLogModel({
      service: 'b',
      tenant: 't1',
      localPort: 3000,
      server: 'http://dev:7700',
      interceptId: 'icp_1',
      gateway: 'http://127.0.0.1:7790',
      previewUrl: 'https://t1--b.dev.example.com',
    });
    model.apply(
      outboundEvent({
        startedAt: 0,
        method: 'GET',
        service: 'c',
        path: '/items',
        status: 200,
        durationMs: 12,
        bytesOut: 20,
      }),
    );
    const text = stripVTControlCharacters(formatBatch(model.takePrintable()));
    expect(text).toContain('gateway: http://127.0.0.1:7790');
    expect(text).toContain('preview: https://t1--b.dev.example.com');
    expect(text).toMatch(/→ out\s+GET\s+c \/items\s+200\s+12\.0 ms\s+20 B/);
    expect(model.snapshot().total).toBe(0);
  });
});

describe('the gateway against a real server agent', () => {
  it('adds the tenant, a new trace and baggage; the app’s Authorization passes untouched; the token does not reach the service', async () => {
    const inv = await echoService('inventory', cleanups);
    const server = await startServer({ inventory: inv.url });
    const { gateway, records } = await gatewayFor(server);

    const res = await fetch(`${gateway.url}/inventory/items?x=1`, {
      headers: { authorization: 'Bearer the-apps-own-token' },
    });
    expect(res.status).toBe(200);
    const seen = (await res.json()) as Seen;
    expect(seen.url).toBe('/items?x=1');
    expect(seen.headers['x-tenant-id']).toBe('t1');
    expect(validTraceparent(seen.headers.traceparent)).toBe(true);
    expect(seen.headers.baggage).toBe('tenant=t1');
    expect(seen.headers.authorization).toBe('Bearer the-apps-own-token');
    for (const h of ['x-kelsingra-token', 'x-kelsingra-host']) expect(seen.headers[h], h).toBeUndefined();
    expect(JSON.stringify(seen.headers)).not.toContain(TOKEN);
    expect(res.headers.get('x-echo')).toBe('inventory');

    // Each call without a trace starts its own.
    const again = (await (await fetch(`${gateway.url}/inventory/`)).json()) as Seen;
    expect(traceIdOf(again.headers.traceparent)).not.toBe(traceIdOf(seen.headers.traceparent));

    await waitFor(() => records.length >= 2, 5_000, 'gateway records');
    expect(records[0]).toMatchObject({
      method: 'GET',
      service: 'inventory',
      path: '/items?x=1',
      status: 200,
    });
    expect(records[0]?.durationMs).toBeGreaterThanOrEqual(0);
  });

  it('keeps what the caller already carries: tenant header, valid traceparent (and tracestate), baggage members', async () => {
    const inv = await echoService('inventory', cleanups);
    const server = await startServer({ inventory: inv.url });
    const { gateway } = await gatewayFor(server);

    const kept = (await (
      await fetch(`${gateway.url}/inventory/a`, {
        headers: {
          'x-tenant-id': 't9',
          traceparent: TRACEPARENT,
          tracestate: 'vendor=abc',
          baggage: 'userId=42, feature=x;ttl=3',
        },
      })
    ).json()) as Seen;
    expect(kept.headers['x-tenant-id']).toBe('t9');
    expect(kept.headers.traceparent).toBe(TRACEPARENT);
    expect(kept.headers.tracestate).toBe('vendor=abc');
    expect(kept.headers.baggage).toBe('userId=42,feature=x;ttl=3,tenant=t9');

    // A baggage entry for the key is kept as it is, and is the routing key when no header says otherwise.
    const fromBaggage = (await (
      await fetch(`${gateway.url}/inventory/b`, { headers: { baggage: 'tenant=t5,userId=1' } })
    ).json()) as Seen;
    expect(fromBaggage.headers.baggage).toBe('tenant=t5,userId=1');
    expect(fromBaggage.headers['x-tenant-id']).toBe('t5');

    // An invalid traceparent is replaced, and its tracestate dropped with it.
    const bad = (await (
      await fetch(`${gateway.url}/inventory/c`, {
        headers: { traceparent: `00-${'0'.repeat(32)}-00f067aa0ba902b7-01`, tracestate: 'vendor=old' },
      })
    ).json()) as Seen;
    expect(validTraceparent(bad.headers.traceparent)).toBe(true);
    expect(bad.headers.traceparent).not.toContain('0'.repeat(32));
    expect(bad.headers.tracestate).toBeUndefined();
  });

  it('proxy form (HTTP_PROXY): the host the caller addressed picks the service; bodies stream through', async () => {
    const inv = await echoService('inventory', cleanups);
    const server = await startServer({ inventory: inv.url });
    const { gateway, records } = await gatewayFor(server);

    const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.request(
        {
          host: '127.0.0.1',
          port: gateway.port,
          method: 'POST',
          path: 'http://inventory.dev.example.com/items?y=2',
          headers: { host: 'inventory.dev.example.com', 'content-type': 'application/octet-stream' },
          agent: false,
        },
        (r) => {
          let body = '';
          r.setEncoding('utf8').on('data', (c: string) => (body += c));
          r.on('end', () => resolve({ status: r.statusCode ?? 0, body }));
        },
      );
      req.on('error', reject);
      req.end(Buffer.alloc(3 * 1024 * 1024, 1));
    });
    expect(res.status, res.body).toBe(200);
    const seen = JSON.parse(res.body) as Seen;
    expect(seen).toMatchObject({ method: 'POST', url: '/items?y=2', bodyBytes: 3 * 1024 * 1024 });
    expect(seen.headers['x-tenant-id']).toBe('t1');
    await waitFor(() => records.length >= 1, 5_000, 'gateway record');
    expect(records[0]).toMatchObject({ host: 'inventory.dev.example.com', path: '/items?y=2', status: 200 });
  });

  it("Kelsingra's own errors come back marked; a path without a service is a 400 from the gateway", async () => {
    const inv = await echoService('inventory', cleanups);
    const server = await startServer({ inventory: inv.url });
    const { gateway } = await gatewayFor(server);

    const unknown = await fetch(`${gateway.url}/no-such-service/x`);
    expect(unknown.status).toBe(404);
    expect(unknown.headers.get('x-kelsingra-error')).toBeTruthy();
    await unknown.body?.cancel();

    const root = await fetch(`${gateway.url}/`);
    expect(root.status).toBe(400);
    expect(root.headers.get('x-kelsingra-error')).toBe('no-target');
    expect(((await root.json()) as { error: string }).error).toMatch(/first path segment/);
  });

  it('a token limited to other tenants is refused by the server (403)', async () => {
    const inv = await echoService('inventory', cleanups);
    const tokens = join(tempDir('kelsingra-tokens-'), 'tokens.yaml');
    writeFileSync(
      tokens,
      `tokens:\n  - { name: team-a, token: team-a-secret-token-9, tenants: ['team-a-*'] }\n`,
    );
    const server = await startServer({ inventory: inv.url }, ['--tokens-file', tokens]);
    const { gateway } = await gatewayFor(server, { token: 'team-a-secret-token-9', tenant: 't1' });
    const refused = await fetch(`${gateway.url}/inventory/x`);
    expect(refused.status).toBe(403);
    expect(refused.headers.get('x-kelsingra-error')).toBeTruthy();
    await refused.body?.cancel();
    expect(inv.seen).toEqual([]);
    const allowed = await fetch(`${gateway.url}/inventory/x`, { headers: { 'x-tenant-id': 'team-a-1' } });
    expect(allowed.status).toBe(200);
    await allowed.body?.cancel();
  });

  it('--cors: preflights from localhost pages are answered here; responses carry CORS; other origins get none', async () => {
    const inv = await echoService('inventory', cleanups);
    const server = await startServer({ inventory: inv.url });
    const { gateway } = await gatewayFor(server, { cors: true });
    const origin = 'http://localhost:5173';

    const pre = await rawRequest(`${gateway.url}/inventory/items`, {
      method: 'OPTIONS',
      headers: {
        origin,
        'access-control-request-method': 'PUT',
        'access-control-request-headers': 'content-type, x-custom',
      },
    });
    expect(pre.status).toBe(204);
    expect(pre.headers['access-control-allow-origin']).toBe(origin);
    expect(pre.headers['access-control-allow-credentials']).toBe('true');
    expect(pre.headers['access-control-allow-methods']).toContain('PUT');
    expect(pre.headers['access-control-allow-headers']).toBe('content-type, x-custom');
    expect(Number(pre.headers['access-control-max-age'])).toBeGreaterThan(0);
    expect(pre.headers.vary).toContain('Origin');
    expect(inv.seen, 'the preflight must not reach the service').toEqual([]);

    const got = await fetch(`${gateway.url}/inventory/items`, { headers: { origin } });
    expect(got.status).toBe(200);
    expect(got.headers.get('access-control-allow-origin')).toBe(origin);
    expect(got.headers.get('access-control-allow-credentials')).toBe('true');
    expect(got.headers.get('access-control-expose-headers')).toContain('x-echo');
    expect(got.headers.get('vary')).toContain('Origin');
    await got.body?.cancel();

    const evil = 'http://evil.example.com';
    const evilPre = await rawRequest(`${gateway.url}/inventory/items`, {
      method: 'OPTIONS',
      headers: { origin: evil, 'access-control-request-method': 'PUT' },
    });
    expect(evilPre.status).toBe(403);
    expect(evilPre.headers['access-control-allow-origin']).toBeUndefined();
    expect(bodyJson(evilPre).error).toMatch(/localhost/);
    const evilGet = await fetch(`${gateway.url}/inventory/items`, { headers: { origin: evil } });
    expect(evilGet.status).toBe(403);
    expect(evilGet.headers.get('access-control-allow-origin')).toBeNull();
    expect(evilGet.headers.get('access-control-allow-credentials')).toBeNull();
    await evilGet.body?.cancel();
    expect(inv.seen.length, 'only the localhost GET reaches the service').toBe(1);

    // A page on localhost calling the gateway as 127.0.0.1 is cross-site to the browser, yet
    // its Origin is one --cors serves.
    const crossName = await fetch(`${gateway.url}/inventory/items`, {
      headers: { origin, 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'cors' },
    });
    expect(crossName.status).toBe(200);
    expect(crossName.headers.get('access-control-allow-origin')).toBe(origin);
    await crossName.body?.cancel();
  });

  it('a web page’s Origin is refused (403, never forwarded): any page without --cors, a foreign page with it', async () => {
    const inv = await echoService('inventory', cleanups);
    const server = await startServer({ inventory: inv.url });
    const plain = await gatewayFor(server, { cors: false });
    const withCors = await gatewayFor(server, { cors: true });

    const cases: [OutboundGateway, string, string][] = [
      [plain.gateway, 'GET', 'https://evil.example'],
      [plain.gateway, 'POST', 'https://evil.example'],
      // Without --cors not even a page on this machine: another local program is not the developer.
      [plain.gateway, 'GET', 'http://localhost:5173'],
      [withCors.gateway, 'GET', 'https://evil.example'],
      [withCors.gateway, 'POST', 'https://evil.example'],
      [withCors.gateway, 'GET', 'null'],
    ];
    for (const [gateway, method, origin] of cases) {
      const what = `${method} Origin ${origin} ${gateway === plain.gateway ? 'without' : 'with'} --cors`;
      const res = await rawRequest(`${gateway.url}/inventory/items`, {
        method,
        headers: { origin, 'content-type': 'text/plain' },
        body: method === 'POST' ? 'amount=1000' : undefined,
      });
      expect(res.status, what).toBe(403);
      expect(res.headers['x-kelsingra-error'], what).toBe('origin-refused');
      expect(res.headers['access-control-allow-origin'], what).toBeUndefined();
      const body = bodyJson(res);
      expect(body.error, what).toContain(origin);
      expect(body.hint, what).toMatch(gateway === plain.gateway ? /--cors/ : /localhost/);
    }
    // Without --cors a preflight is refused like the request it announces, not forwarded.
    const pre = await rawRequest(`${plain.gateway.url}/inventory/items`, {
      method: 'OPTIONS',
      headers: { origin: 'http://localhost:5173', 'access-control-request-method': 'PUT' },
    });
    expect(pre.status).toBe(403);
    expect(pre.headers['access-control-allow-origin']).toBeUndefined();
    expect(inv.seen, 'no refused request reaches the service').toEqual([]);
    expect(plain.records.map((r) => `${r.method} ${r.status}`)).toEqual([
      'GET 403',
      'POST 403',
      'GET 403',
      'OPTIONS 403',
    ]);
    expect(plain.records[0]?.error).toMatch(/Origin https:\/\/evil\.example/);

    // Callers that are not browsers send no Origin and are served as before.
    const ok = await fetch(`${plain.gateway.url}/inventory/items`);
    expect(ok.status).toBe(200);
    await ok.body?.cancel();
  });

  it('Sec-Fetch-Site cross-site or same-site without an allowed Origin (an <img>, a link, a form) is refused', async () => {
    const inv = await echoService('inventory', cleanups);
    const server = await startServer({ inventory: inv.url });
    const plain = await gatewayFor(server, { cors: false });
    const withCors = await gatewayFor(server, { cors: true });
    for (const { gateway } of [plain, withCors])
      for (const site of ['cross-site', 'same-site', 'CROSS-SITE']) {
        const what = `Sec-Fetch-Site ${site} ${gateway === plain.gateway ? 'without' : 'with'} --cors`;
        const res = await rawRequest(`${gateway.url}/inventory/transfer?to=attacker`, {
          headers: { 'sec-fetch-site': site, 'sec-fetch-mode': 'no-cors', 'sec-fetch-dest': 'image' },
        });
        expect(res.status, what).toBe(403);
        expect(res.headers['x-kelsingra-error'], what).toBe('cross-site-refused');
        expect(bodyJson(res).hint, what).toBeTruthy();
      }
    expect(inv.seen).toEqual([]);
    // Typed into the address bar (none) or from the gateway's own origin: not a third-party page.
    for (const site of ['none', 'same-origin']) {
      const res = await fetch(`${plain.gateway.url}/inventory/x`, { headers: { 'sec-fetch-site': site } });
      expect(res.status, site).toBe(200);
      await res.body?.cancel();
    }
  });

  it('a request addressed to another host name (DNS rebinding) is refused 403 and never forwarded', async () => {
    const inv = await echoService('inventory', cleanups);
    const server = await startServer({ inventory: inv.url });
    const { gateway, records } = await gatewayFor(server, { cors: true });
    const port = gateway.port;
    for (const host of [`evil.example:${port}`, `127.0.0.1:${port + 1}`, 'evil.example']) {
      const res = await rawRequest(`${gateway.url}/inventory/items`, { headers: { host } });
      expect(res.status, host).toBe(403);
      expect(res.headers['x-kelsingra-error'], host).toBe('foreign-host');
      const body = bodyJson(res);
      expect(body.error, host).toContain(host);
      expect(body.hint, host).toContain(`http://127.0.0.1:${port}/`);
    }
    // A rebinding page is same-origin to itself, so its Origin (when sent) does not save it.
    const posted = await rawRequest(`${gateway.url}/inventory/items`, {
      method: 'POST',
      headers: {
        host: `evil.example:${port}`,
        origin: `http://evil.example:${port}`,
        'sec-fetch-site': 'same-origin',
      },
      body: '{}',
    });
    expect(posted.status).toBe(403);
    expect(inv.seen).toEqual([]);
    expect(records.map((r) => r.status)).toEqual([403, 403, 403, 403]);
    expect(records[0]?.error).toContain(`evil.example:${port}`);

    // Its own names are fine. (The proxy form and tunnels name the target in Host by design:
    // the proxy-form and CONNECT tests send Host: inventory.dev.example.com.)
    for (const host of [`localhost:${port}`, `[::1]:${port}`, `127.0.0.1:${port}`]) {
      const res = await rawRequest(`${gateway.url}/inventory/items`, { headers: { host } });
      expect(res.status, host).toBe(200);
    }
    expect(inv.seen.length).toBe(3);
  });

  it('CONNECT: to port 443 a 501 that says to call http://; plain HTTP inside a tunnel is served; TLS inside is dropped', async () => {
    const inv = await echoService('inventory', cleanups);
    const server = await startServer({ inventory: inv.url });
    const { gateway, records } = await gatewayFor(server);
    /** Opens a raw connection, sends `lines` (one write each, after the previous answer began), collects all it hears. */
    const converse = (writes: (string | Buffer)[]) =>
      new Promise<string>((resolve, reject) => {
        const socket = net.connect(gateway.port, '127.0.0.1');
        let text = '';
        let next = 0;
        const send = () => {
          const w = writes[next++];
          if (w !== undefined) socket.write(w);
        };
        socket.on('connect', send);
        socket.setEncoding('utf8').on('data', (c: string) => {
          text += c;
          if (next < writes.length) send();
          // The answer inside the tunnel is complete once its JSON body closes.
          if (next >= writes.length && writes.length > 1 && text.trimEnd().endsWith('}')) socket.end();
        });
        socket.on('end', () => resolve(text));
        socket.on('close', () => resolve(text));
        socket.on('error', reject);
        setTimeout(() => {
          socket.destroy();
          resolve(text);
        }, 5_000);
      });

    const https = await converse([
      'CONNECT inventory.dev.example.com:443 HTTP/1.1\r\nHost: inventory.dev.example.com:443\r\n\r\n',
    ]);
    expect(https).toMatch(/^HTTP\/1\.1 501 /);
    expect(https).toMatch(/http:\/\//);
    expect(https.toLowerCase()).toContain('x-kelsingra-error: connect-not-supported');

    const plain = await converse([
      'CONNECT inventory.dev.example.com:80 HTTP/1.1\r\nHost: inventory.dev.example.com:80\r\n\r\n',
      'GET /in-tunnel?q=1 HTTP/1.1\r\nHost: inventory.dev.example.com\r\nConnection: close\r\n\r\n',
    ]);
    expect(plain).toMatch(/^HTTP\/1\.1 200 Connection Established\r\n\r\nHTTP\/1\.1 200 /);
    const seen = JSON.parse(plain.slice(plain.indexOf('{'), plain.lastIndexOf('}') + 1)) as Seen;
    expect(seen).toMatchObject({ who: 'inventory', url: '/in-tunnel?q=1' });
    expect(seen.headers['x-tenant-id']).toBe('t1');

    const tls = await converse([
      'CONNECT inventory.dev.example.com:8443 HTTP/1.1\r\nHost: inventory.dev.example.com:8443\r\n\r\n',
      Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0, 0, 0, 0]),
    ]);
    expect(tls).toBe('HTTP/1.1 200 Connection Established\r\n\r\n');
    await waitFor(() => records.length >= 3, 5_000, 'gateway records');
    expect(records.map((r) => `${r.method} ${r.host} ${r.status}`)).toEqual([
      'CONNECT inventory.dev.example.com:443 501',
      'GET inventory.dev.example.com 200',
      'CONNECT inventory.dev.example.com:8443 501',
    ]);
    expect(inv.seen.length).toBe(1);
  });

  it('CONNECT: a tunnel idle past the timeout is closed, before its first request and between requests', async () => {
    const inv = await echoService('inventory', cleanups);
    const server = await startServer({ inventory: inv.url });
    const IDLE_MS = 400;
    const gateway = await startOutboundGateway({
      server: server.control,
      token: TOKEN,
      tenant: 't1',
      tenantHeader: 'x-tenant-id',
      baggageKey: 'tenant',
      tunnelIdleMs: IDLE_MS,
    });
    cleanups.push(() => gateway.close());
    const request = 'GET /idle HTTP/1.1\r\nHost: inventory.dev.example.com\r\n\r\n';

    /**
     * Opens a tunnel and, once it is established, sends `count` keep-alive requests `gapMs`
     * apart; resolves when the gateway closes it, with what came back and how long the tunnel
     * had been silent by then.
     */
    const tunnel = (count: number, gapMs: number) =>
      new Promise<{ text: string; silentMs: number }>((resolve, reject) => {
        const socket = net.connect(gateway.port, '127.0.0.1');
        let text = '';
        let last = performance.now();
        const timer = setTimeout(() => {
          socket.destroy();
          reject(new Error(`the tunnel was still open after 4 s; it got:\n${text}`));
        }, 4_000);
        socket.on('connect', () =>
          socket.write(
            'CONNECT inventory.dev.example.com:80 HTTP/1.1\r\nHost: inventory.dev.example.com:80\r\n\r\n',
          ),
        );
        socket.setEncoding('utf8').on('data', (c: string) => {
          if (text === '')
            for (let i = 0; i < count; i++)
              setTimeout(() => {
                last = performance.now();
                socket.write(request);
              }, i * gapMs);
          text += c;
          last = performance.now();
        });
        socket.on('error', reject);
        socket.on('close', () => {
          clearTimeout(timer);
          resolve({ text, silentMs: performance.now() - last });
        });
      });

    const unused = await tunnel(0, 0);
    expect(unused.text).toBe('HTTP/1.1 200 Connection Established\r\n\r\n');
    expect(unused.silentMs).toBeGreaterThanOrEqual(IDLE_MS - 50);

    // Requests closer together than the timeout keep the tunnel, however long it lives in all.
    const used = await tunnel(4, IDLE_MS / 3);
    expect(used.text.match(/HTTP\/1\.1 200 OK/g)?.length, used.text).toBe(4);
    expect(used.silentMs).toBeGreaterThanOrEqual(IDLE_MS - 50);
    expect(inv.seen.map((x) => x.url)).toEqual(['/idle', '/idle', '/idle', '/idle']);
  });

  it('the server agent down: a 502 at once, naming the server, with a hint', async () => {
    const server = `http://127.0.0.1:${CLOSED_PORT}`;
    const gateway = await startOutboundGateway({
      server,
      token: TOKEN,
      tenant: 't1',
      tenantHeader: 'x-tenant-id',
      baggageKey: 'tenant',
    });
    cleanups.push(() => gateway.close());
    const t0 = Date.now();
    const res = await fetch(`${gateway.url}/inventory/x`);
    expect(Date.now() - t0).toBeLessThan(3_000);
    expect(res.status).toBe(502);
    expect(res.headers.get('x-kelsingra-error')).toBe('server-unreachable');
    const body = (await res.json()) as { error: string; hint: string; server: string };
    expect(body.error).toContain(server);
    expect(body.server).toBe(server);
    expect(body.hint).toMatch(/server agent/);
  });

  it('a port already taken is a usage error naming it', async () => {
    const inv = await echoService('inventory', cleanups);
    const server = await startServer({ inventory: inv.url });
    const taken = await listen(() => undefined);
    cleanups.push(() => closeServer(taken));
    await expect(
      startClientGateway(settingsFor(server), 't1', { port: taken.port, cors: false }),
    ).rejects.toMatchObject({ exitCode: 2, message: expect.stringContaining(String(taken.port)) });
  });
});

/** Headers a traced service passes on to the next one (never Kelsingra's own). */
function propagated(h: http.IncomingHttpHeaders, tenant = true): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of [...(tenant ? ['x-tenant-id'] : []), 'traceparent', 'baggage'])
    if (typeof h[name] === 'string') out[name] = h[name] as string;
  return out;
}

/**
 * The dev environment of the chain: base A calls B, base B calls C, both through the data
 * port as the reverse proxy would send them; base C says what it got.
 */
async function chainEnvironment() {
  let data = '';
  const call = async (service: string, path: string, headers: Record<string, string>) => {
    const res = await fetch(`${data}${path}`, { headers: { ...headers, 'x-kelsingra-service': service } });
    return res.json();
  };
  const baseA = await listen(async (req, res) => {
    if (answeredHealthCheck(req, res)) return;
    const b = await call('b', '/from-a', propagated(req.headers)).catch((e: Error) => ({ error: e.message }));
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ who: 'base-A', b }));
  });
  const baseB = await listen(async (req, res) => {
    if (answeredHealthCheck(req, res)) return;
    const c = await call('c', '/from-base-b', propagated(req.headers)).catch((e: Error) => ({
      error: e.message,
    }));
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ who: 'base-B', c }));
  });
  const baseC = await echoService('base-C', cleanups);
  cleanups.push(
    () => closeServer(baseA),
    () => closeServer(baseB),
  );
  const server = await startServer({ a: baseA.url, b: baseB.url, c: baseC.url });
  data = server.data;
  return { server, baseC };
}

/** Local B, run by `intercept b … -- node local-b.mjs`: calls C through the gateway both ways. */
const LOCAL_B = `import http from 'node:http';
const gw = process.env.KELSINGRA_GATEWAY;
const server = http.createServer(async (req, res) => {
  // An instrumented service passes the trace on; the tenant header it forgets on purpose.
  const headers = {};
  for (const name of ['traceparent', 'baggage']) if (req.headers[name]) headers[name] = req.headers[name];
  const viaBase = await (await fetch(gw + '/c/from-local-b', { headers })).json();
  // Through HTTP_PROXY (NODE_USE_ENV_PROXY=1): the dev host name, as the code would call it in dev.
  const viaProxy = await (await fetch('http://c.dev.example.com/via-proxy', { headers })).json();
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({
    who: 'local-B', c: viaBase, viaProxy,
    env: { KELSINGRA_GATEWAY: gw, HTTP_PROXY: process.env.HTTP_PROXY, http_proxy: process.env.http_proxy,
      NO_PROXY: process.env.NO_PROXY, NODE_USE_ENV_PROXY: process.env.NODE_USE_ENV_PROXY },
  }));
});
server.listen(Number(process.env.PORT), '127.0.0.1', () => console.log('local B listening on ' + process.env.PORT));
// Never outlive the CLI that started it (a test killing the CLI hard must not leave it running).
const parent = process.ppid;
setInterval(() => process.ppid !== parent && process.exit(0), 200).unref();
`;

async function startLocalB(env: Record<string, string>) {
  const port = await freePort();
  const script = join(tempDir('kelsingra-local-b-'), 'local-b.mjs');
  writeFileSync(script, LOCAL_B);
  const fg = background(
    ['intercept', 'b', '--tenant', 't1', '--port', String(port), '--', process.execPath, script],
    env,
    cleanups,
  );
  // Ended like Ctrl-C first, so the CLI stops local B itself (its output pipe stays open while it runs).
  cleanups.push(async () => {
    if (fg.sub.exitCode !== null || fg.sub.signalCode !== null) return;
    fg.sub.kill('SIGINT');
    await Promise.race([fg.sub.catch(() => undefined), new Promise((r) => setTimeout(r, 10_000))]);
  });
  await waitFor(
    () => fg.stdout().includes(`local B listening on ${port}`),
    30_000,
    `local B\n${fg.describe()}`,
  );
  const gateway = /gateway: (http:\/\/127\.0\.0\.1:\d+)/.exec(fg.stdout())?.[1];
  expect(gateway, fg.describe()).toBeDefined();
  return { fg, gateway: gateway as string };
}

interface ChainAnswer {
  who: string;
  b: {
    who: string;
    c: Seen;
    viaProxy?: Seen;
    env?: Record<string, string | undefined>;
  };
}

async function enterChain(server: ServerProcess, tenant: string, traceparent: string, baggage: string) {
  const res = await fetch(`${server.data}/start`, {
    headers: { 'x-kelsingra-service': 'a', 'x-tenant-id': tenant, traceparent, baggage },
  });
  expect(res.status).toBe(200);
  return (await res.json()) as ChainAnswer;
}

describe('the chain A → B → C with B on the laptop', () => {
  it("local B's calls reach C as the tenant, in the caller's trace, with baggage; other tenants are untouched", async () => {
    const { server } = await chainEnvironment();
    const env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'dev-b' });
    const { fg, gateway } = await startLocalB(env);

    const t1 = await enterChain(server, 't1', TRACEPARENT, 'userId=42');
    expect(t1.who).toBe('base-A');
    expect(t1.b.who, JSON.stringify(t1)).toBe('local-B');
    for (const c of [t1.b.c, t1.b.viaProxy]) {
      expect(c?.who, JSON.stringify(t1.b)).toBe('base-C');
      expect(c?.headers['x-tenant-id']).toBe('t1');
      expect(traceIdOf(c?.headers.traceparent)).toBe(TRACE_ID);
      expect(c?.headers.baggage).toBe('userId=42,tenant=t1');
      expect(c?.headers['x-kelsingra-token']).toBeUndefined();
    }
    expect(t1.b.c.url).toBe('/from-local-b');
    expect(t1.b.viaProxy?.url).toBe('/via-proxy');
    expect(t1.b.env).toEqual({
      KELSINGRA_GATEWAY: gateway,
      HTTP_PROXY: gateway,
      http_proxy: gateway,
      NO_PROXY: expect.stringContaining('localhost,127.0.0.1,::1'),
      NODE_USE_ENV_PROXY: '1',
    });

    // Another tenant: A → base B → C, as if nobody were on a laptop.
    const t2Trace = `00-${'ab'.repeat(16)}-${'cd'.repeat(8)}-01`;
    const t2 = await enterChain(server, 't2', t2Trace, 'userId=7');
    expect(t2.b.who).toBe('base-B');
    const c2 = (t2.b as unknown as { c: Seen }).c;
    expect(c2.url).toBe('/from-base-b');
    expect(c2.headers['x-tenant-id']).toBe('t2');
    expect(c2.headers.traceparent).toBe(t2Trace);
    expect(c2.headers.baggage).toBe('userId=7');

    // The calls show in the intercept's output, marked as outbound.
    await waitFor(
      () => /→ out\s+GET\s+c \/from-local-b\s+200/.test(fg.stdout()),
      10_000,
      `an outbound line\n${fg.describe()}`,
    );
    expect(fg.stdout()).toMatch(/→ out\s+GET\s+c\.dev\.example\.com \/via-proxy\s+200/);
  });

  it("chained routing: C on the same developer's laptop too, B's gateway call reaches local C", async () => {
    const { server, baseC } = await chainEnvironment();
    const env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'dev-bc' });
    const localC = await echoService('local-C', cleanups);
    await interceptDetached(
      clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'dev-bc' }),
      'c',
      't1',
      localC.port,
      cleanups,
    );
    await startLocalB(env);

    const t1 = await enterChain(server, 't1', TRACEPARENT, 'userId=42');
    expect(t1.b.who).toBe('local-B');
    expect(t1.b.c.who, JSON.stringify(t1.b)).toBe('local-C');
    expect(t1.b.c.headers['x-tenant-id']).toBe('t1');
    expect(traceIdOf(t1.b.c.headers.traceparent)).toBe(TRACE_ID);
    expect(t1.b.viaProxy?.who).toBe('local-C');
    expect(baseC.seen).toEqual([]);

    // t2 still goes everywhere on base.
    const t2 = await enterChain(server, 't2', TRACEPARENT, 'userId=7');
    expect(t2.b.who).toBe('base-B');
    expect((t2.b as unknown as { c: Seen }).c.who).toBe('base-C');
  });
});

describe('intercept --key, gateway flags and the gateway command', () => {
  it('--key is the routing key; --detach --json reports the gateway, which carries the key', async () => {
    const { server, baseC } = await chainEnvironment();
    const env = clientEnv(server, TOKEN);
    const local = await echoService('local-B', cleanups);
    const doc = await interceptDetachedWith(env, ['b', '--key', 'feature1', '--port', String(local.port)]);
    expect(doc.tenant).toBe('feature1');
    expect(doc.gateway).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const gatewayUrl = doc.gateway as string;

    const viaData = await fetch(`${server.data}/x`, {
      headers: { 'x-kelsingra-service': 'b', 'x-tenant-id': 'feature1' },
    });
    expect(((await viaData.json()) as Seen).who).toBe('local-B');

    const out = (await (await fetch(`${gatewayUrl}/c/out`)).json()) as Seen;
    expect(out.who).toBe('base-C');
    expect(out.headers['x-tenant-id']).toBe('feature1');
    expect(out.headers.baggage).toBe('tenant=feature1');
    expect(baseC.seen.length).toBe(1);
  });

  it('--tenant and --key together, or neither, is a usage error (exit 2) with a hint', async () => {
    const env = {
      KELSINGRA_SERVER: 'http://127.0.0.1:1',
      KELSINGRA_TOKEN: TOKEN,
      KELSINGRA_CONFIG_DIR: tempDir(),
    };
    const both = await cli(['intercept', 'b', '--tenant', 't1', '--key', 'feature1', '--port', '3000'], env);
    expect(both.exitCode).toBe(2);
    expect(both.stderr).toMatch(/--tenant and --key/);
    expect(both.stderr).toMatch(/Hint:/);
    const neither = await cli(['intercept', 'b', '--port', '3000', '--json'], env);
    expect(neither.exitCode).toBe(2);
    const err = JSON.parse(String(neither.stderr)) as { error: string; hint: string; exitCode: number };
    expect(err.error).toMatch(/--tenant <tenant> or --key <key>/);
    expect(err.hint).toMatch(/--key feature1/);
    expect(err.exitCode).toBe(2);
    const gw = await cli(['gateway'], env);
    expect(gw.exitCode).toBe(2);
  });

  it('--no-gateway runs none; --gateway-port picks the port; the plain output says both', async () => {
    const { server } = await chainEnvironment();
    const env = clientEnv(server, TOKEN);
    const local = await echoService('local-B', cleanups);
    const none = background(
      ['intercept', 'b', '-t', 't1', '-p', String(local.port), '--no-gateway'],
      env,
      cleanups,
    );
    await waitFor(() => none.stdout().includes('Intercepting b'), 20_000, none.describe());
    expect(none.stdout()).not.toContain('gateway:');
    none.sub.kill('SIGINT');
    await none.sub;

    const port = await freePort();
    const fixed = background(
      ['intercept', 'b', '-t', 't1', '-p', String(local.port), '--gateway-port', String(port)],
      env,
      cleanups,
    );
    await waitFor(() => fixed.stdout().includes('gateway:'), 20_000, fixed.describe());
    expect(fixed.stdout()).toContain(`gateway: http://127.0.0.1:${port}`);
    const seen = (await (await fetch(`http://127.0.0.1:${port}/c/x`)).json()) as Seen;
    expect(seen.headers['x-tenant-id']).toBe('t1');
    fixed.sub.kill('SIGINT');
    expect((await fixed.sub).exitCode).toBe(130);
    // The gateway ends with the intercept.
    await expect(fetch(`http://127.0.0.1:${port}/c/x`)).rejects.toThrow();
  });

  it('kelsingra gateway: a foreground gateway without an intercept, NDJSON with --json, Ctrl-C ends it', async () => {
    const { server, baseC } = await chainEnvironment();
    const env = clientEnv(server, TOKEN);
    const fg = background(['gateway', '--key', 'feature2', '--json'], env, cleanups);
    await waitFor(() => fg.stdout().includes('\n'), 20_000, fg.describe());
    const first = JSON.parse(fg.stdout().split('\n')[0] as string) as {
      kind: string;
      url: string;
      tenant: string;
    };
    expect(first).toMatchObject({ kind: 'gateway', tenant: 'feature2' });
    const seen = (await (await fetch(`${first.url}/c/hello`)).json()) as Seen;
    expect(seen.headers['x-tenant-id']).toBe('feature2');
    expect(baseC.seen.length).toBe(1);
    await waitFor(() => fg.stdout().includes('"kind":"outbound"'), 5_000, fg.describe());
    const event = JSON.parse(fg.stdout().split('\n')[1] as string);
    expect(event).toMatchObject({
      kind: 'outbound',
      method: 'GET',
      target: 'c',
      path: '/hello',
      status: 200,
    });
    fg.sub.kill('SIGINT');
    expect((await fg.sub).exitCode).toBe(130);
  });

  it('prints the preview URL when the server has a template', async () => {
    const local = await echoService('local-B', cleanups);
    const server = await startServer({ b: local.url }, [
      '--token',
      TOKEN,
      '--preview-url',
      'https://{key}--{service}.dev.example.com',
    ]);
    const env = clientEnv(server, TOKEN);
    const doc = await interceptDetachedWith(env, ['b', '--key', 'feature1', '--port', String(local.port)]);
    expect(doc.previewUrl).toBe('https://feature1--b.dev.example.com');
    const fg = background(['intercept', 'b', '-k', 'feature9', '-p', String(local.port)], env, cleanups);
    await waitFor(() => fg.stdout().includes('preview:'), 20_000, fg.describe());
    expect(fg.stdout()).toContain('preview: https://feature9--b.dev.example.com');
  });
});

/** `intercept <args> --detach --json`, its agent killed by the cleanups. */
async function interceptDetachedWith(env: Record<string, string>, args: string[]) {
  const r = await cli(['intercept', ...args, '--detach', '--json'], env);
  expect(r.exitCode, String(r.stderr)).toBe(0);
  const doc = JSON.parse(String(r.stdout)) as {
    agentPid: number;
    tenant: string;
    gateway?: string;
    previewUrl?: string;
  };
  cleanups.push(() => killPid(doc.agentPid));
  return doc;
}
