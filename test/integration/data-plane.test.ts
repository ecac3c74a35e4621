/**
 * Data plane, end to end: a real `kelsingra server` process in front of real upstream HTTP
 * servers. Covers routing, header handling, loop guard, errors and large bodies on the
 * pass-through path, and the tenant header setting with a real intercept.
 */
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  bodyJson,
  bodyOutcome,
  CLOSED_PORT,
  clientEnv,
  closeServer,
  hangUpMidUpload,
  interceptDetached,
  isHealthCheck,
  killQuietly,
  listen,
  patternSha256,
  type RawResponse,
  rawRequest,
  resetMidResponse,
  run,
  type ServerProcess,
  startServerProcess,
  tempDir,
  type UploadWatch,
  waitFor,
  watchUpload,
  writePattern,
} from '../support/helpers.js';

const TOKEN = 'data-plane-token-123';
const MB = 1024 * 1024;

/** Kelsingra's own error responses say so in the body and in a header. */
function expectKelsingraError(res: RawResponse, status: number, code: string): Record<string, unknown> {
  expect(res.status).toBe(status);
  expect(res.headers['content-type']).toMatch(/application\/json/);
  expect(res.headers['x-kelsingra-error']).toBe(code);
  const body = bodyJson(res);
  expect(body.source).toBe('kelsingra');
  expect(body.code).toBe(code);
  expect(String(body.error)).toMatch(/^Kelsingra: /);
  return body;
}

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
}

/**
 * An upstream that answers every request with what it saw, tagged with its name, so a test
 * can tell which upstream got a request and how it looked.
 */
async function echoUpstream(name: string) {
  const seen: Seen[] = [];
  const watch: UploadWatch = { bytes: 0, ended: false, aborted: false };
  const up = await listen((req, res) => {
    if (isHealthCheck(req)) return void res.end('ok');
    if (req.url === '/reset-mid-response') return resetMidResponse(req, res);
    if (req.url === '/upload-watch') return watchUpload(req, res, watch);
    const hash = createHash('sha256');
    let size = 0;
    req.on('data', (c: Buffer) => {
      hash.update(c);
      size += c.length;
    });
    req.on('end', () => {
      seen.push({
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        rawHeaders: req.rawHeaders,
      });
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname === '/download') {
        const total = Number(url.searchParams.get('bytes'));
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': total });
        writePattern(res, total);
        return;
      }
      if (url.pathname === '/cookies') {
        res.setHeader('set-cookie', ['a=1; Path=/', 'b=2; Path=/; HttpOnly']);
        res.setHeader('x-upstream', name);
        res.end('cookies');
        return;
      }
      const body = JSON.stringify({
        upstream: name,
        method: req.method,
        url: req.url,
        headers: req.headers,
        bodyBytes: size,
        bodySha256: hash.digest('hex'),
      });
      res.writeHead(200, { 'content-type': 'application/json', 'x-upstream': name });
      res.end(body);
    });
  });
  return { ...up, seen, name, watch };
}

type Upstream = Awaited<ReturnType<typeof echoUpstream>>;

describe('data plane: pass-through to upstreams', () => {
  let server: ServerProcess;
  let billing: Upstream;
  let orders: Upstream;
  let ledger: Upstream;
  let refusedPort: number;

  beforeAll(async () => {
    billing = await echoUpstream('billing');
    orders = await echoUpstream('orders');
    ledger = await echoUpstream('ledger');
    refusedPort = CLOSED_PORT;
    const dir = tempDir('kelsingra-dp-config-');
    const config = join(dir, 'kelsingra.yaml');
    writeFileSync(
      config,
      [
        'services:',
        '  orders:',
        `    upstream: ${orders.url}`,
        '    hosts: [api.shop.test]',
        '    pathPrefix: /orders-api',
        '  ledger:',
        `    upstream: ${ledger.url}/base`,
        '    pathPrefix: /ledger-api',
        '    stripPrefix: true',
        '',
      ].join('\n'),
    );
    server = await startServerProcess([
      '--config',
      config,
      '--service',
      `billing=${billing.url}`,
      '--service',
      `refused=http://127.0.0.1:${refusedPort}`,
      '--token',
      TOKEN,
    ]);
  });

  afterAll(async () => {
    await server?.stop();
    for (const up of [billing, orders, ledger]) await closeServer(up);
  });

  it('keeps Host, path, query and the tenant header, drops hop-by-hop headers, adds Forwarded, Via and the loop guard', async () => {
    const before = billing.seen.length;
    const res = await rawRequest(`${server.data}/invoices/42?expand=lines&x=1`, {
      headers: [
        'Host',
        'billing.dev.example.com',
        'X-Tenant-ID',
        't-keep',
        'Connection',
        'keep-alive, X-Secret-Hop',
        'X-Secret-Hop',
        'must-not-pass',
        'Keep-Alive',
        'timeout=5',
        'TE',
        'trailers',
        'Upgrade',
        'websocket',
        'Proxy-Authorization',
        'Basic abc',
        'Proxy-Connection',
        'keep-alive',
        'X-Custom',
        'kept',
        'Cookie',
        'a=1',
        'Authorization',
        'Bearer app-token',
      ],
    });
    expect(res.status).toBe(200);
    expect(res.headers['x-upstream']).toBe('billing');
    expect(billing.seen.length).toBe(before + 1);
    const seen = billing.seen[before] as Seen;
    expect(seen.method).toBe('GET');
    expect(seen.url).toBe('/invoices/42?expand=lines&x=1');
    expect(seen.headers.host).toBe('billing.dev.example.com');
    expect(seen.headers['x-tenant-id']).toBe('t-keep');
    expect(seen.headers['x-custom']).toBe('kept');
    expect(seen.headers.cookie).toBe('a=1');
    expect(seen.headers.authorization).toBe('Bearer app-token');
    // Hop-by-hop: named in Connection, and the fixed list.
    expect(seen.headers['x-secret-hop']).toBeUndefined();
    expect(seen.headers['keep-alive']).toBeUndefined();
    expect(seen.headers.te).toBeUndefined();
    expect(seen.headers.upgrade).toBeUndefined();
    expect(seen.headers['proxy-authorization']).toBeUndefined();
    expect(seen.headers['proxy-connection']).toBeUndefined();
    expect(seen.headers.connection ?? '').not.toMatch(/x-secret-hop|upgrade/i);
    // This hop is recorded.
    expect(seen.headers.forwarded).toMatch(/for=127\.0\.0\.1;proto=http;host="billing\.dev\.example\.com"/);
    expect(seen.headers.via).toBe('1.1 kelsingra');
    expect(seen.headers['x-kelsingra-hop']).toMatch(/^ks-[0-9a-f]+$/);
  });

  it('appends to an existing Forwarded and Via chain rather than replacing it', async () => {
    const before = billing.seen.length;
    const res = await rawRequest(`${server.data}/chain`, {
      headers: {
        'x-kelsingra-service': 'billing',
        forwarded: 'for=10.0.0.1;proto=https',
        via: '1.1 edge-proxy',
      },
    });
    expect(res.status).toBe(200);
    const seen = billing.seen[before] as Seen;
    expect(seen.headers.forwarded).toMatch(/^for=10\.0\.0\.1;proto=https, for=127\.0\.0\.1;proto=http/);
    expect(seen.headers.via).toBe('1.1 edge-proxy, 1.1 kelsingra');
  });

  it('answers a request that already passed through Kelsingra with 508 and does not forward it', async () => {
    const before = billing.seen.length;
    const res = await rawRequest(`${server.data}/loop`, {
      headers: { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't1', 'x-kelsingra-hop': 'ks-deadbeef' },
    });
    const body = expectKelsingraError(res, 508, 'loop-detected');
    expect(String(body.error)).toContain('x-kelsingra-hop');
    expect(billing.seen.length).toBe(before);
  });

  it('answers an unknown service with 404 naming the known services', async () => {
    const res = await rawRequest(`${server.data}/x`, { headers: { host: 'nosuch.dev.example.com' } });
    const body = expectKelsingraError(res, 404, 'unknown-service');
    expect([...(body.services as string[])].sort()).toEqual(['billing', 'ledger', 'orders', 'refused']);
    for (const name of ['billing', 'ledger', 'orders', 'refused']) expect(String(body.error)).toContain(name);
    expect(String(body.error)).toContain('nosuch.dev.example.com');

    const byHeader = await rawRequest(`${server.data}/x`, { headers: { 'x-kelsingra-service': 'nosuch' } });
    expectKelsingraError(byHeader, 404, 'unknown-service');
  });

  it('finds the service by configured host, first DNS label, path prefix and x-kelsingra-service', async () => {
    const cases: { headers: Record<string, string>; path: string; upstream: string; url: string }[] = [
      // Configured host (port ignored).
      { headers: { host: 'api.shop.test:8080' }, path: '/o/1', upstream: 'orders', url: '/o/1' },
      // First DNS label.
      { headers: { host: 'billing.team-a.dev.example.com' }, path: '/b', upstream: 'billing', url: '/b' },
      { headers: { host: 'orders' }, path: '/plain', upstream: 'orders', url: '/plain' },
      // Path prefix, kept…
      {
        headers: { host: 'gateway.test' },
        path: '/orders-api/list?page=2',
        upstream: 'orders',
        url: '/orders-api/list?page=2',
      },
      // …or stripped, under the upstream's base path.
      {
        headers: { host: 'gateway.test' },
        path: '/ledger-api/entries?x=1',
        upstream: 'ledger',
        url: '/base/entries?x=1',
      },
      { headers: { host: 'gateway.test' }, path: '/ledger-api', upstream: 'ledger', url: '/base/' },
      // Explicit header wins over Host and path.
      {
        headers: { host: 'billing.dev.example.com', 'x-kelsingra-service': 'ledger' },
        path: '/orders-api/z',
        upstream: 'ledger',
        url: '/base/orders-api/z',
      },
    ];
    for (const c of cases) {
      const res = await rawRequest(`${server.data}${c.path}`, { headers: c.headers });
      expect(res.status, JSON.stringify(c)).toBe(200);
      const body = bodyJson(res);
      expect(body.upstream, JSON.stringify(c)).toBe(c.upstream);
      expect(body.url, JSON.stringify(c)).toBe(c.url);
    }
    // A prefix only matches on a path-segment boundary.
    const notPrefix = await rawRequest(`${server.data}/orders-apix`, { headers: { host: 'gateway.test' } });
    expectKelsingraError(notPrefix, 404, 'unknown-service');
  });

  it('merges dot segments before routing: a path prefix cannot be escaped with "..", and the upstream gets the merged path', async () => {
    const ledgerBefore = ledger.seen.length;
    const cases = [
      // Under /ledger-api by its prefix, but the path names another service's.
      { target: '/ledger-api/../orders-api/x?q=1', upstream: 'orders', url: '/orders-api/x?q=1' },
      { target: '/ledger-api/%2E%2e/orders-api/y', upstream: 'orders', url: '/orders-api/y' },
      { target: '/ledger-api/a/./b/../c', upstream: 'ledger', url: '/base/a/c' },
      { target: '/ledger-api/a/b/..', upstream: 'ledger', url: '/base/a/' },
    ];
    for (const c of cases) {
      const res = await rawRequest(server.data, { target: c.target, headers: { host: 'gateway.test' } });
      expect(res.status, c.target).toBe(200);
      expect(bodyJson(res).upstream, c.target).toBe(c.upstream);
      expect(bodyJson(res).url, c.target).toBe(c.url);
    }
    expect(ledger.seen.slice(ledgerBefore).map((s) => s.url)).toEqual(['/base/a/c', '/base/a/']);
  });

  it('refuses with 400 bad-path a path whose ".." climbs above the root, and a target that is no path, sending nothing on', async () => {
    const before = { ledger: ledger.seen.length, orders: orders.seen.length };
    for (const [method, target] of [
      ['GET', '/ledger-api/../../etc/passwd'],
      ['GET', '/..'],
      ['GET', '/orders-api/%2e%2e/%2E./x'],
      ['GET', 'http://api.shop.test/../x'],
      ['OPTIONS', '*'],
      ['GET', 'ftp://api.shop.test/orders-api/x'],
    ] as const) {
      const res = await rawRequest(server.data, { method, target, headers: { host: 'api.shop.test' } });
      const body = expectKelsingraError(res, 400, 'bad-path');
      expect(String(body.error), target).toMatch(/climbs above the root|neither a path/);
    }
    expect(ledger.seen.length).toBe(before.ledger);
    expect(orders.seen.length).toBe(before.orders);
  });

  it('routes an absolute-form target (GET http://host/path) by its host and merged path, and sends its host as Host', async () => {
    const res = await rawRequest(server.data, {
      target: 'http://Billing.dev.example.com/invoices/../receipts?n=1',
      headers: { host: 'api.shop.test' },
    });
    expect(res.status).toBe(200);
    const body = bodyJson(res);
    expect(body.upstream).toBe('billing');
    expect(body.url).toBe('/receipts?n=1');
    expect((body.headers as http.IncomingHttpHeaders).host).toBe('billing.dev.example.com');
  });

  it('answers 502 from Kelsingra when the upstream refuses the connection', async () => {
    const res = await rawRequest(`${server.data}/anything`, {
      headers: { 'x-kelsingra-service': 'refused', 'x-tenant-id': 't1' },
    });
    const body = expectKelsingraError(res, 502, 'upstream-unreachable');
    expect(body.service).toBe('refused');
    expect(String(body.error)).toContain(`127.0.0.1:${refusedPort}`);
  });

  it('shows the caller an error, not a whole body, when the upstream resets mid-response', async () => {
    const res = await fetch(`${server.data}/reset-mid-response`, {
      headers: { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't1' },
    });
    expect(res.status).toBe(200);
    expect(await bodyOutcome(res)).toBe('errored');
  });

  it('answers oversized request headers with 431 from Kelsingra', async () => {
    const before = billing.seen.length;
    const res = await rawRequest(`${server.data}/big`, {
      headers: { 'x-kelsingra-service': 'billing', 'x-big': 'a'.repeat(40 * 1024) },
    });
    expect(res.status).toBe(431);
    const body = bodyJson(res);
    expect(body.source).toBe('kelsingra');
    expect(String(body.error)).toMatch(/^Kelsingra: request headers too large/);
    expect(billing.seen.length).toBe(before);
  });

  it('preserves repeated Set-Cookie headers from the upstream', async () => {
    const res = await rawRequest(`${server.data}/cookies`, { headers: { 'x-kelsingra-service': 'billing' } });
    expect(res.status).toBe(200);
    expect(res.headers['set-cookie']).toEqual(['a=1; Path=/', 'b=2; Path=/; HttpOnly']);
    expect(res.body.toString()).toBe('cookies');
  });

  it('streams a 20 MB upload and a 20 MB download through pass-through intact', async () => {
    const size = 20 * MB;
    const upload = Buffer.alloc(size);
    for (let i = 0; i < size; i += 4096) upload.writeUInt32BE((i * 2654435761) >>> 0, i);
    const up = await rawRequest(`${server.data}/upload`, {
      method: 'POST',
      headers: {
        'x-kelsingra-service': 'billing',
        'x-tenant-id': 't1',
        'content-type': 'application/octet-stream',
        'content-length': size,
      },
      body: upload,
    });
    expect(up.status).toBe(200);
    const upBody = bodyJson(up);
    expect(upBody.bodyBytes).toBe(size);
    expect(upBody.bodySha256).toBe(createHash('sha256').update(upload).digest('hex'));

    const down = await rawRequest(`${server.data}/download?bytes=${size}`, {
      headers: { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't1' },
    });
    expect(down.status).toBe(200);
    expect(down.body.length).toBe(size);
    expect(createHash('sha256').update(down.body).digest('hex')).toBe(patternSha256(size));
  });

  it('aborts the upstream request, rather than ending its body, when the caller hangs up mid-upload', async () => {
    for (let round = 0; round < 5; round++) {
      await hangUpMidUpload(
        `${server.data}/upload-watch`,
        { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't1' },
        billing.watch,
        'upstream',
      );
      expect(billing.watch.ended, `round ${round}`).toBe(false);
      expect(billing.watch.aborted).toBe(true);
    }
  });

  it('streams a chunked upload (no content-length) to the upstream', async () => {
    const parts = ['alpha-', 'beta-', 'gamma'];
    const res = await new Promise<RawResponse>((resolve, reject) => {
      const req = http.request(
        `${server.data}/chunked`,
        { method: 'PUT', headers: { 'x-kelsingra-service': 'billing' }, agent: false },
        (r) => {
          const chunks: Buffer[] = [];
          r.on('data', (c: Buffer) => chunks.push(c));
          r.on('end', () =>
            resolve({ status: r.statusCode ?? 0, headers: r.headers, body: Buffer.concat(chunks) }),
          );
        },
      );
      req.on('error', reject);
      for (const p of parts) req.write(p);
      req.end();
    });
    expect(res.status).toBe(200);
    const body = bodyJson(res);
    expect(body.method).toBe('PUT');
    expect(body.bodyBytes).toBe(parts.join('').length);
    expect(body.bodySha256).toBe(createHash('sha256').update(parts.join('')).digest('hex'));
  });
});

describe('data plane: an upstream that never answers', () => {
  let quick: ServerProcess;
  let patient: ServerProcess;
  let silent: Awaited<ReturnType<typeof listen>>;
  /** Per request path: when the upstream saw it, and when Kelsingra let go of it. */
  const waits = new Map<string, { seenAt: number; closedAt?: number }>();

  beforeAll(async () => {
    // Accepts requests and never answers them.
    silent = await listen((req) => {
      const wait: { seenAt: number; closedAt?: number } = { seenAt: Date.now() };
      waits.set(req.url ?? '', wait);
      req.socket.once('close', () => {
        wait.closedAt = Date.now();
      });
    });
    const serve = (timeout: string) =>
      startServerProcess([
        '--service',
        `slow=${silent.url}`,
        '--token',
        TOKEN,
        '--upstream-timeout',
        timeout,
      ]);
    [quick, patient] = await Promise.all([serve('1'), serve('60')]);
  });

  afterAll(async () => {
    await Promise.all([quick?.stop(), patient?.stop()]);
    await closeServer(silent);
  });

  it('answers 504 from Kelsingra when the upstream never answers', async () => {
    const started = Date.now();
    const res = await rawRequest(`${quick.data}/never`, {
      headers: { 'x-kelsingra-service': 'slow', 'x-tenant-id': 't1' },
    });
    const elapsed = Date.now() - started;
    const body = expectKelsingraError(res, 504, 'upstream-timeout');
    expect(body.service).toBe('slow');
    expect(String(body.error)).toContain('1000 ms');
    expect(waits.has('/never')).toBe(true);
    expect(elapsed).toBeGreaterThanOrEqual(900);
    expect(elapsed).toBeLessThan(15_000);
  });

  it('frees the upstream request at once when the caller hangs up, not at the upstream timeout', async () => {
    const req = http.request(`${patient.data}/wait`, {
      headers: { 'x-kelsingra-service': 'slow', 'x-tenant-id': 't1' },
      agent: false,
    });
    req.on('error', () => undefined);
    req.end();
    await waitFor(() => waits.get('/wait'), 5_000, 'the upstream to see the request');
    await new Promise((r) => setTimeout(r, 300));
    const hungUpAt = Date.now();
    req.destroy();
    const closedAt = await waitFor(
      () => waits.get('/wait')?.closedAt,
      10_000,
      'the upstream connection to be released',
    );
    expect(closedAt - hungUpAt).toBeLessThan(5_000);
  });
});

describe('data plane: custom tenant header', () => {
  let server: ServerProcess;
  let upstream: Upstream;
  let local: Awaited<ReturnType<typeof listen>>;
  let env: Record<string, string>;
  const agentPids: number[] = [];

  beforeAll(async () => {
    upstream = await echoUpstream('upstream');
    local = await listen((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'x-served-by': 'local' });
      res.end(
        JSON.stringify({
          served: 'local',
          org: req.headers['x-org-id'],
          intercept: req.headers['x-kelsingra-intercept'],
        }),
      );
    });
    server = await startServerProcess([
      '--service',
      `billing=${upstream.url}`,
      '--token',
      TOKEN,
      '--tenant-header',
      'X-Org-ID',
    ]);
    env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: `dp-tenant-header-${process.pid}` });
  });

  afterEach(async () => {
    await run(['leave', '--all'], env);
  });

  afterAll(async () => {
    await run(['leave', '--all'], env).catch(() => undefined);
    for (const pid of agentPids) killQuietly(pid);
    await server?.stop();
    await closeServer(upstream);
    await closeServer(local);
  });

  it('routes by the configured tenant header and ignores x-tenant-id', async () => {
    const status = await fetch(`${server.control}/status`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(((await status.json()) as { tenantHeader: string }).tenantHeader).toBe('x-org-id');

    const icp = await interceptDetached(env, 'billing', 'org1', local.port, (pid) => agentPids.push(pid));

    const viaOrg = await rawRequest(`${server.data}/x`, {
      headers: { 'x-kelsingra-service': 'billing', 'x-org-id': 'org1' },
    });
    expect(viaOrg.status).toBe(200);
    expect(bodyJson(viaOrg)).toEqual({ served: 'local', org: 'org1', intercept: icp.id });

    // The default header name means nothing to this server: upstream, tenant header kept.
    const viaDefault = await rawRequest(`${server.data}/x`, {
      headers: { 'x-kelsingra-service': 'billing', 'x-tenant-id': 'org1' },
    });
    expect(viaDefault.status).toBe(200);
    expect(bodyJson(viaDefault).upstream).toBe('upstream');
    expect((bodyJson(viaDefault).headers as Record<string, string>)['x-tenant-id']).toBe('org1');

    const otherOrg = await rawRequest(`${server.data}/x`, {
      headers: { 'x-kelsingra-service': 'billing', 'x-org-id': 'org2' },
    });
    expect(bodyJson(otherOrg).upstream).toBe('upstream');
    expect((bodyJson(otherOrg).headers as Record<string, string>)['x-org-id']).toBe('org2');

    await waitFor(
      async () => (await run(['list', '--json'], env)).stdout.includes(icp.id),
      10_000,
      'intercept listed',
    );
  });
});
