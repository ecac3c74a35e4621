/**
 * What operators see of a running server agent: Prometheus metrics at /metrics (requests by
 * decision, durations, tunnels, intercepts, routes, lease expiries, backends, Kafka lag), the
 * request id that ties a request's hops and log lines together, and trace context carried
 * end to end. Real server processes, detached clients, upstreams, PostgreSQL and Kafka.
 *
 * Over 400 lines on purpose: it is the list of logs, metrics and /status's cases, each one self-contained; split,
 * one capability would be spread over several files.
 */
import { writeFileSync } from 'node:fs';
import type http from 'node:http';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import {
  CLOSED_PORT,
  type Cleanup,
  cleanupsAfterEach,
  clientEnv,
  closeServer,
  exited,
  interceptDetached,
  isHealthCheck,
  killPid,
  killQuietly,
  listen,
  rawRequest,
  run,
  type ServerProcess,
  sleep,
  startServerProcess,
  tempDir,
  viaProxy,
  waitFor,
} from '../support/helpers.js';
import {
  BROKER,
  closeProducer,
  createTopic,
  deleteTopics,
  ensureKafka,
  produce,
  uniqueName,
  watchTopic,
} from '../support/kafka-helpers.js';
import { freshDatabase } from '../support/postgres.js';

const TOKEN = 'observability-secret-token-7f3a';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const cleanups = cleanupsAfterEach();
afterAll(() => closeProducer());

// ---------------------------------------------------------------------------------------------
// Prometheus text format, as a scraper reads it

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g))
      labels[l[1] as string] = (l[2] as string).replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    samples.push({ name: m[1] as string, labels, value: Number(m[3]) });
  }
  return samples;
}

/** /metrics as an anonymous scraper gets it: no token. */
async function scrapeText(server: ServerProcess): Promise<{ status: number; type: string; text: string }> {
  const res = await fetch(`${server.control}/metrics`);
  return { status: res.status, type: res.headers.get('content-type') ?? '', text: await res.text() };
}

async function scrape(server: ServerProcess): Promise<Sample[]> {
  const r = await scrapeText(server);
  expect(r.status, r.text).toBe(200);
  return parseMetrics(r.text);
}

/** The sum of the samples of `name` whose labels include all of `labels` (0 when there are none). */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

/** Waits until `check` holds for a fresh scrape (requests are counted once their response is over). */
async function untilScrape(
  server: ServerProcess,
  check: (samples: Sample[]) => void,
  timeoutMs = 15_000,
): Promise<Sample[]> {
  let last: unknown;
  try {
    return await waitFor(
      async () => {
        const samples = await scrape(server);
        try {
          check(samples);
          return samples;
        } catch (err) {
          last = err;
          return undefined;
        }
      },
      timeoutMs,
      'the metrics',
    );
  } catch (err) {
    throw last ?? err;
  }
}

const requests = (decision: string, service: string, statusClass: string, code = '') => ({
  decision,
  service,
  status_class: statusClass,
  code,
});

// ---------------------------------------------------------------------------------------------
// Services that say what they saw

interface Seen {
  url: string;
  headers: http.IncomingHttpHeaders;
}

/**
 * An HTTP service that records each request's headers (health checks aside), answers
 * `<name> <url>` (503 under /fail, 404 under /missing) and an `x-request-id` of its own, which
 * the caller must never get instead of Kelsingra's.
 */
async function recorder(name: string, c: Cleanup[] = cleanups) {
  const seen: Seen[] = [];
  const svc = await listen((req, res) => {
    if (isHealthCheck(req)) return void res.end('ok');
    seen.push({ url: req.url ?? '', headers: req.headers });
    req.resume();
    req.on('end', () => {
      const url = req.url ?? '';
      const status = url.startsWith('/fail') ? 503 : url.startsWith('/missing') ? 404 : 200;
      res.writeHead(status, { 'content-type': 'text/plain', 'x-request-id': `${name}-own-id` });
      res.end(`${name} ${url}`);
    });
  });
  c.push(() => closeServer(svc));
  return { ...svc, seen, last: () => seen[seen.length - 1] as Seen };
}

async function server(args: string[], env: Record<string, string> = {}): Promise<ServerProcess> {
  const s = await startServerProcess(args, env);
  cleanups.push(() => s.stop());
  return s;
}

/**
 * A server agent with billing on `base`, a service whose upstream refuses connections, tenant
 * t1 of billing (or `tenant`) intercepted to `local` and t2 (or `routed`) routed to `v2`.
 */
async function world(opts: { holder?: string; tenant?: string; routed?: string } = {}) {
  const base = await recorder('base');
  const v2 = await recorder('v2');
  const local = await recorder('local');
  const s = await server([
    '--service',
    `billing=${base.url}`,
    '--service',
    `broken=http://127.0.0.1:${CLOSED_PORT}`,
    '--token',
    TOKEN,
  ]);
  const env = clientEnv(s, TOKEN, { KELSINGRA_HOLDER: opts.holder ?? 'dev@laptop' });
  const tenant = opts.tenant ?? 't1';
  const held = await interceptDetached(env, 'billing', tenant, local.port, cleanups);
  const routed = opts.routed ?? 't2';
  const set = await run(['route', 'set', 'billing', '--tenants', routed, '--to', v2.url, '--json'], env);
  expect(set.exitCode, set.stderr).toBe(0);
  return { base, v2, local, server: s, env, held, tenant };
}

async function send(
  s: ServerProcess,
  service: string,
  tenant: string | undefined,
  path = '/',
  init: RequestInit = {},
) {
  const res = await viaProxy(s, service, tenant, path, init);
  const body = await res.text();
  return {
    status: res.status,
    body,
    id: res.headers.get('x-request-id'),
    error: res.headers.get('x-kelsingra-error'),
  };
}

// ---------------------------------------------------------------------------------------------

describe('metrics', () => {
  it('counts requests by decision, service, status class and error code, and times them by decision', async () => {
    const w = await world();
    const before = await scrape(w.server);

    expect((await send(w.server, 'billing', 't1', '/a')).body).toBe('local /a');
    expect((await send(w.server, 'billing', 't1', '/fail')).status).toBe(503);
    for (let i = 0; i < 3; i++)
      expect((await send(w.server, 'billing', 't2', `/r${i}`)).body).toBe(`v2 /r${i}`);
    expect((await send(w.server, 'billing', 't3', '/b')).body).toBe('base /b');
    expect((await send(w.server, 'billing', 't3', '/missing')).status).toBe(404);
    // Refused at connect, unless the health check found the upstream down first (a slow run).
    const broken = (await send(w.server, 'broken', 't3')).error ?? '';
    expect(['upstream-unreachable', 'no-healthy-backend']).toContain(broken);
    expect((await send(w.server, 'nosuch', 't3')).error).toBe('unknown-service');
    expect((await send(w.server, 'billing', 't1, t2')).error).toBe('bad-routing-key');
    const loop = await send(w.server, 'billing', 't3', '/', { headers: { 'x-kelsingra-hop': 'ks-other' } });
    expect(loop.error).toBe('loop-detected');

    const expected: [Record<string, string>, number][] = [
      [requests('tunnel', 'billing', '2xx'), 1],
      [requests('tunnel', 'billing', '5xx'), 1],
      [requests('route', 'billing', '2xx'), 3],
      [requests('base', 'billing', '2xx'), 1],
      [requests('base', 'billing', '4xx'), 1],
      [requests('base', 'broken', '5xx', broken), 1],
      [requests('error', '', '4xx', 'unknown-service'), 1],
      [requests('error', 'billing', '4xx', 'bad-routing-key'), 1],
      // Caught before routing: no service.
      [requests('error', '', '5xx', 'loop-detected'), 1],
    ];
    const after = await untilScrape(w.server, (now) => {
      const moved = (labels: Record<string, string>) =>
        value(now, 'kelsingra_requests_total', labels) - value(before, 'kelsingra_requests_total', labels);
      expect(expected.map(([labels]) => moved(labels))).toEqual(expected.map(([, n]) => n));
      expect(moved({})).toBe(11);
    });

    const moved = (name: string, labels: Record<string, string>) =>
      value(after, name, labels) - value(before, name, labels);
    const perDecision = { tunnel: 2, route: 3, base: 3, error: 3 };
    for (const [decision, n] of Object.entries(perDecision)) {
      expect(moved('kelsingra_request_duration_seconds_count', { decision }), decision).toBe(n);
      expect(moved('kelsingra_request_duration_seconds_bucket', { decision, le: '+Inf' }), decision).toBe(n);
      expect(moved('kelsingra_request_duration_seconds_sum', { decision }), decision).toBeGreaterThan(0);
      // Seconds, not milliseconds: none of these took anywhere near 5 s.
      expect(moved('kelsingra_request_duration_seconds_sum', { decision }), decision).toBeLessThan(5 * n);
    }
  });

  it('counts a request relayed through another replica as relay there and tunnel on the replica holding the tunnel', async () => {
    const db = await freshDatabase(cleanups);
    const base = await recorder('base');
    const local = await recorder('local');
    const args = ['--service', `billing=${base.url}`, '--token', TOKEN, '--database-url', db];
    const a = await server(args);
    const b = await server(args);
    await interceptDetached(clientEnv(a, TOKEN), 'billing', 't1', local.port, cleanups);
    // B learns of the intercept from the database; until then it sends t1 to the base.
    await waitFor(async () => (await send(b, 'billing', 't1')).body === 'local /', 15_000, 'B to relay t1');
    const [beforeA, beforeB] = await Promise.all([scrape(a), scrape(b)]);

    const r = await send(b, 'billing', 't1', '/via-b', { headers: { 'x-request-id': 'relayed-request-1' } });
    expect(r.body).toBe('local /via-b');
    expect(r.id).toBe('relayed-request-1');
    expect(local.last().headers['x-request-id']).toBe('relayed-request-1');

    const label = requests('relay', 'billing', '2xx');
    await untilScrape(b, (now) =>
      expect(
        value(now, 'kelsingra_requests_total', label) - value(beforeB, 'kelsingra_requests_total', label),
      ).toBe(1),
    );
    const tunnelled = requests('tunnel', 'billing', '2xx');
    await untilScrape(a, (now) =>
      expect(
        value(now, 'kelsingra_requests_total', tunnelled) -
          value(beforeA, 'kelsingra_requests_total', tunnelled),
      ).toBe(1),
    );
  });

  it('open tunnels and live intercepts go up with an intercept and down when it is left', async () => {
    const base = await recorder('base');
    const local = await recorder('local');
    const s = await server([
      '--service',
      `billing=${base.url}`,
      '--service',
      `orders=${base.url}`,
      '--token',
      TOKEN,
    ]);
    const env = clientEnv(s, TOKEN);
    const idle = await scrape(s);
    expect(value(idle, 'kelsingra_tunnels_open')).toBe(0);
    // Every configured service has its series, at 0 when nothing is live.
    expect(
      idle.filter((x) => x.name === 'kelsingra_intercepts').map((x) => [x.labels.service, x.value]),
    ).toEqual([
      ['billing', 0],
      ['orders', 0],
    ]);

    await interceptDetached(env, 'billing', 't1', local.port, cleanups);
    await untilScrape(s, (now) => {
      expect(value(now, 'kelsingra_tunnels_open')).toBe(1);
      expect(value(now, 'kelsingra_intercepts', { service: 'billing' })).toBe(1);
      expect(value(now, 'kelsingra_intercepts', { service: 'orders' })).toBe(0);
    });

    const left = await run(['leave', 'billing', '--tenant', 't1'], env);
    expect(left.exitCode, left.stderr).toBe(0);
    // The detached agent exits once its only intercept has ended, closing its tunnel.
    await untilScrape(s, (now) => {
      expect(value(now, 'kelsingra_intercepts', { service: 'billing' })).toBe(0);
      expect(value(now, 'kelsingra_tunnels_open')).toBe(0);
    });
    expect(value(await scrape(s), 'kelsingra_lease_expiries_total')).toBe(0);
  });

  it('counts a lease expiry when the client is killed', async () => {
    const base = await recorder('base');
    const local = await recorder('local');
    const s = await server(['--service', `billing=${base.url}`, '--token', TOKEN, '--lease-ttl', '2']);
    let agent = 0;
    await interceptDetached(clientEnv(s, TOKEN), 'billing', 't1', local.port, (pid) => {
      agent = pid;
      cleanups.push(() => killQuietly(pid));
    });
    await untilScrape(s, (now) => expect(value(now, 'kelsingra_intercepts', { service: 'billing' })).toBe(1));
    expect(value(await scrape(s), 'kelsingra_lease_expiries_total', { service: 'billing' })).toBe(0);

    killQuietly(agent, 'SIGKILL');
    await untilScrape(s, (now) => {
      expect(value(now, 'kelsingra_lease_expiries_total', { service: 'billing' })).toBe(1);
      expect(value(now, 'kelsingra_intercepts', { service: 'billing' })).toBe(0);
      expect(value(now, 'kelsingra_tunnels_open')).toBe(0);
    });
  });

  it('counts each lease expiry once across replicas: on the replica that ended it', async () => {
    const base = await recorder('base');
    const local = await recorder('local');
    const db = await freshDatabase(cleanups);
    const args = [
      '--service',
      `billing=${base.url}`,
      '--token',
      TOKEN,
      '--lease-ttl',
      '2',
      '--database-url',
      db,
    ];
    const replicas = [await server(args), await server(args)];
    let agent = 0;
    await interceptDetached(
      clientEnv(replicas[0] as ServerProcess, TOKEN),
      'billing',
      't1',
      local.port,
      (pid) => {
        agent = pid;
        cleanups.push(() => killQuietly(pid));
      },
    );
    for (const r of replicas)
      await untilScrape(r, (now) =>
        expect(value(now, 'kelsingra_intercepts', { service: 'billing' })).toBe(1),
      );
    killQuietly(agent, 'SIGKILL');
    for (const r of replicas)
      await untilScrape(r, (now) =>
        expect(value(now, 'kelsingra_intercepts', { service: 'billing' })).toBe(0),
      );
    // Every replica hears the intercept end; summed over them, as a dashboard does, it is one expiry.
    await sleep(500);
    let total = 0;
    for (const r of replicas)
      total += value(await scrape(r), 'kelsingra_lease_expiries_total', { service: 'billing' });
    expect(total).toBe(1);
  });

  it('needs no token, and names no tenant, token, holder, path or URL; routes, backends and process metrics are there', async () => {
    const tenant = 'acme-tenant-7c1e';
    const holder = 'ana@laptop-4d2b';
    const routed = 'routed-tenant-a1f0';
    const w = await world({ tenant, holder, routed });
    const path = '/invoices/path-marker-93f1?access_token=query-secret-55aa';
    expect((await send(w.server, 'billing', tenant, path)).body).toBe(`local ${path}`);
    expect((await send(w.server, 'billing', routed, path)).body).toBe(`v2 ${path}`);
    expect((await send(w.server, 'billing', 'other-tenant-0b9d', path)).body).toBe(`base ${path}`);

    const r = await scrapeText(w.server);
    expect(r.status).toBe(200);
    expect(r.type).toMatch(/^text\/plain; version=0\.0\.4/);
    for (const secret of [
      TOKEN,
      tenant,
      routed,
      'other-tenant-0b9d',
      holder,
      w.held.id,
      'path-marker-93f1',
      'query-secret-55aa',
      '127.0.0.1',
      String(w.base.port),
      String(w.v2.port),
    ])
      expect(r.text, secret).not.toContain(secret);

    const samples = parseMetrics(r.text);
    expect(value(samples, 'kelsingra_routes', { service: 'billing' })).toBe(1);
    expect(value(samples, 'kelsingra_routed_tenants', { service: 'billing' })).toBe(1);
    expect(value(samples, 'kelsingra_upstream_backends', { service: 'billing', pool: 'base' })).toBe(1);
    expect(value(samples, 'kelsingra_upstream_backends', { service: 'billing', pool: 'route' })).toBe(1);
    expect(value(samples, 'kelsingra_upstream_backends', { service: 'broken', pool: 'base' })).toBe(1);
    const states = samples.filter((x) => x.name === 'kelsingra_upstream_backends').map((x) => x.labels.state);
    for (const state of states) expect(['healthy', 'unhealthy', 'ejected', 'unknown']).toContain(state);
    expect(value(samples, 'kelsingra_tunnels_open')).toBe(1);
    expect(value(samples, 'kelsingra_intercepts', { service: 'billing' })).toBe(1);
    expect(samples.some((x) => x.name === 'process_cpu_user_seconds_total')).toBe(true);
    expect(samples.some((x) => x.name === 'nodejs_eventloop_lag_seconds')).toBe(true);
    // The only labels Kelsingra's own metrics carry.
    const labelNames = new Set(
      samples.filter((x) => x.name.startsWith('kelsingra_')).flatMap((x) => Object.keys(x.labels)),
    );
    expect([...labelNames].sort()).toEqual([
      'code',
      'decision',
      'le',
      'pool',
      'service',
      'state',
      'status_class',
    ]);
  });
});

describe('request id', () => {
  it('is kept when sane, else made; the upstream, the route target and the laptop get it, and so does the caller', async () => {
    const w = await world();

    // None sent: one is made, sent on and returned (not the upstream's own).
    const made = await send(w.server, 'billing', 't3', '/made');
    expect(made.id).toMatch(UUID);
    expect(w.base.last().headers['x-request-id']).toBe(made.id);

    const cases: [string, string, { last: () => Seen }][] = [
      ['t3', 'caller-id-base-1', w.base],
      ['t2', 'caller-id-route-2', w.v2],
      ['t1', 'caller-id-laptop-3', w.local],
    ];
    for (const [tenant, id, target] of cases) {
      const r = await send(w.server, 'billing', tenant, '/kept', { headers: { 'x-request-id': id } });
      expect(r.status, tenant).toBe(200);
      expect(r.id, tenant).toBe(id);
      expect(target.last().headers['x-request-id'], tenant).toBe(id);
    }

    // The longest sane id is kept; anything longer, with a space or beyond visible ASCII is replaced.
    const longest = 'x'.repeat(200);
    expect((await send(w.server, 'billing', 't3', '/', { headers: { 'x-request-id': longest } })).id).toBe(
      longest,
    );
    for (const insane of ['x'.repeat(201), 'two words', 'caf\u00e9']) {
      const r = await rawRequest(`${w.server.data}/insane`, {
        headers: { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't3', 'x-request-id': insane },
      });
      expect(r.status).toBe(200);
      expect(r.headers['x-request-id'], insane).toMatch(UUID);
      expect(w.base.last().headers['x-request-id'], insane).toBe(r.headers['x-request-id']);
    }
    // Two of them: neither is the request's id.
    const twice = await rawRequest(`${w.server.data}/twice`, {
      headers: [
        'host',
        'billing.dev.example.com',
        'x-kelsingra-service',
        'billing',
        'x-tenant-id',
        't3',
        'x-request-id',
        'a',
        'x-request-id',
        'b',
      ],
    });
    expect(twice.headers['x-request-id']).toMatch(UUID);
    expect(w.base.last().headers['x-request-id']).toBe(twice.headers['x-request-id']);

    // The server's request events (kelsingra logs --json) carry it.
    const events = await waitFor(async () => {
      const r = await run(['logs', 'billing', '--tenant', 't1', '--json'], w.env);
      expect(r.exitCode, r.stderr).toBe(0);
      const lines = r.stdout
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { requestId?: string; path?: string });
      return lines.some((e) => e.requestId === 'caller-id-laptop-3') ? lines : undefined;
    });
    expect(events.find((e) => e.requestId === 'caller-id-laptop-3')?.path).toBe('/kept');
  });

  it("is in the server's warning about a failing request (a 502 to a refused upstream), with no token or credential", async () => {
    const s = await server(['--service', `broken=http://127.0.0.1:${CLOSED_PORT}`, '--token', TOKEN]);
    const given = await send(s, 'broken', 't1', '/pay?api_key=query-credential-77', {
      headers: { 'x-request-id': 'failing-request-1', authorization: 'Bearer app-credential-31d' },
    });
    expect(given.status).toBe(502);
    expect(given.id).toBe('failing-request-1');
    const made = await send(s, 'broken', 't1', '/pay');
    expect(made.status).toBe(502);
    expect(made.id).toMatch(UUID);

    const lines = () =>
      s
        .logs()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>);
    for (const id of ['failing-request-1', made.id]) {
      const line = await waitFor(
        () => lines().find((l) => l.requestId === id),
        10_000,
        `a log line with ${id}`,
      );
      expect(line).toMatchObject({
        level: 40,
        requestId: id,
        decision: 'base',
        service: 'broken',
        status: 502,
        code: 'upstream-unreachable',
        method: 'GET',
      });
    }
    for (const secret of [TOKEN, 'app-credential-31d', 'query-credential-77'])
      expect(s.logs()).not.toContain(secret);
  });
});

describe('trace context', () => {
  it('traceparent, tracestate and baggage reach the base upstream, a route target and the laptop unchanged', async () => {
    const w = await world();
    const trace = {
      traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
      tracestate: 'congo=t61rcWkgMzE,rojo=00f067aa0ba902b7',
    };
    for (const [tenant, target] of [
      ['t3', w.base],
      ['t2', w.v2],
      ['t1', w.local],
    ] as const) {
      // Baggage naming the routed tenant, and other members with properties and escapes.
      const baggage = `userId=alice,tenant=${tenant};ttl=60,cart=a%2Cb`;
      const r = await send(w.server, 'billing', tenant, '/traced', { headers: { ...trace, baggage } });
      expect(r.status, tenant).toBe(200);
      const seen = target.last().headers;
      expect([seen.traceparent, seen.tracestate, seen.baggage], tenant).toEqual([
        trace.traceparent,
        trace.tracestate,
        baggage,
      ]);
    }

    // Baggage naming another tenant than the one routed by: that entry is rewritten (docs/routing.md).
    const r = await send(w.server, 'billing', 't1', '/other', {
      headers: { ...trace, baggage: 'tenant=t2,userId=42' },
    });
    expect(r.body).toBe('local /other');
    const seen = w.local.last().headers;
    expect([seen.traceparent, seen.tracestate, seen.baggage]).toEqual([
      trace.traceparent,
      trace.tracestate,
      'userId=42,tenant=t1',
    ]);
  });
});

describe('kafka lag', () => {
  it('shows the splitter lag per intercepted topic and the delivery lag per service, up while the client stalls and back to 0', async () => {
    ensureKafka();
    const service = uniqueName('billing');
    const topic = uniqueName('orders');
    cleanups.push(() => deleteTopics([topic, `kelsingra-${service}-`]));
    await createTopic(topic, 1);
    const base = await recorder('base');
    const local = await recorder('local');
    const file = join(tempDir(), 'kelsingra.yaml');
    writeFileSync(
      file,
      stringify({
        token: TOKEN,
        services: { [service]: { upstream: base.url } },
        kafka: {
          brokers: [BROKER],
          clientId: uniqueName('kelsingra'),
          topics: { [topic]: { service, mode: 'split' } },
        },
      }),
    );
    // A stopped client answers no heartbeat and renews no lease: long enough for both to outlast the test.
    const s = await startServerProcess([
      '--config',
      file,
      '--heartbeat-interval',
      '120',
      '--lease-ttl',
      '120',
    ]);
    // SIGTERM would wait for the consumers to leave their groups; the groups are this test's own.
    cleanups.push(async () => {
      killQuietly(s.child.pid);
      await exited(s.child);
    });
    await waitFor(() => s.logs().includes('kafka splitter joined its group'), 20_000, 'the splitter to join');

    // Made up front: a client agent that makes it itself can race the broker's metadata.
    const localTopic = `${topic}.local`;
    await createTopic(localTopic, 1);
    const r = await run(
      [
        'intercept',
        service,
        '--tenant',
        't1',
        '--port',
        String(local.port),
        '--detach',
        '--json',
        '--kafka-local',
        BROKER,
        '--kafka-topic',
        `${topic}=${localTopic}`,
      ],
      clientEnv(s, TOKEN),
    );
    expect(r.exitCode, r.stderr).toBe(0);
    const agent = (JSON.parse(r.stdout) as { agentPid: number }).agentPid;
    cleanups.push(() => killPid(agent));
    cleanups.push(() => killQuietly(agent, 'SIGCONT'));

    // The splitter starts at the latest offset when it first fetches: probe until one gets through.
    const watch = await watchTopic(localTopic);
    cleanups.push(() => watch.stop());
    let round = 0;
    const message = (value: string) => ({ key: 'k', value, headers: { 'x-tenant-id': 't1' } });
    await waitFor(
      async () => {
        if (watch.records.length > 0) return true;
        if (round++ % 20 === 0) await produce(topic, [message(`probe-${round}`)]);
        return false;
      },
      30_000,
      'a probe to reach the local topic',
    );

    const lagSeries = (now: Sample[]) => ({
      split: now.filter((x) => x.name === 'kelsingra_kafka_consumer_lag').map((x) => x.labels),
      delivery: value(now, 'kelsingra_kafka_delivery_lag', { service }),
    });
    await untilScrape(s, (now) => {
      expect(lagSeries(now)).toEqual({ split: [{ topic, service }], delivery: 0 });
      expect(now.filter((x) => x.name === 'kelsingra_kafka_delivery_lag').map((x) => x.labels)).toEqual([
        { service },
      ]);
    });

    // The client stops answering: the tenant's messages wait in its delivery.
    process.kill(agent, 'SIGSTOP');
    await produce(topic, [message('m1'), message('m2'), message('m3')]);
    await untilScrape(
      s,
      (now) => expect(value(now, 'kelsingra_kafka_delivery_lag', { service })).toBe(3),
      30_000,
    );

    process.kill(agent, 'SIGCONT');
    await waitFor(
      () => watch.records.filter((x) => x.value?.startsWith('m')).length === 3,
      30_000,
      'delivery',
    );
    await untilScrape(
      s,
      (now) => {
        expect(value(now, 'kelsingra_kafka_delivery_lag', { service })).toBe(0);
        expect(value(now, 'kelsingra_kafka_consumer_lag', { topic, service })).toBe(0);
      },
      30_000,
    );
    const samples = await scrape(s);
    expect(value(samples, 'kelsingra_kafka_lag_errors_total')).toBe(0);
    expect(samples.map((x) => JSON.stringify(x.labels)).join('\n')).not.toContain('t1');
  });
});
