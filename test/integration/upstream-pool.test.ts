/**
 * Upstream pools: a service whose upstream is several backends. Round robin, active health
 * checks, passive ejection (of gateway failures only, never the last backend up), panic mode,
 * retry of a safe request on another backend, /status per backend, and 503 with Retry-After
 * when every backend failed its checks. Real HTTP servers throughout; the end-to-end
 * cases run a real `kelsingra server` process.
 */
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { servicesFromFlags, validateConfig } from '../../server/config/config.js';
import { PassThroughProxy, type UpstreamTarget } from '../../server/data-plane/pass-through.js';
import {
  type BackendState,
  EJECT_AFTER_FAILURES,
  EJECT_WITHOUT_CHECKS_MS,
  type HealthCheckSettings,
  UpstreamPool,
} from '../../src/shared/http/upstream-pool.js';
import type { UpstreamHealth } from '../../src/shared/protocol.js';
import {
  CLOSED_PORT,
  type Cleanup,
  cleanupsAfterEach,
  closeServer,
  isHealthCheck,
  listen,
  rawRequest,
  type ServerProcess,
  sleep,
  startServerProcess,
  tempDir,
  waitFor,
} from '../support/helpers.js';

const TOKEN = 'upstream-pool-token-1';
const cleanups: Cleanup[] = cleanupsAfterEach();

/**
 * A backend that answers `<name> <METHOD> <url>` (with the status set by setStatus), records
 * the requests that are not health checks, and can be stopped and started again on the same
 * port (a restarted pod).
 */
async function backend(name: string) {
  const hits: string[] = [];
  const checks: string[] = [];
  let healthStatus = 200;
  let appStatus = 200;
  const handler: http.RequestListener = (req, res) => {
    req.resume();
    if (isHealthCheck(req)) {
      checks.push(req.url ?? '');
      res.writeHead(healthStatus).end();
      return;
    }
    hits.push(`${req.method} ${req.url}`);
    res.writeHead(appStatus, { 'content-type': 'text/plain' }).end(`${name} ${req.method} ${req.url}`);
  };
  const first = await listen(handler);
  let server: http.Server | undefined = first.server;
  const b = {
    name,
    port: first.port,
    url: first.url,
    hits,
    checks,
    setHealth: (status: number) => {
      healthStatus = status;
    },
    /** What it answers to everything but its health checks. */
    setStatus: (status: number) => {
      appStatus = status;
    },
    /** Gone: new connections are refused and open ones closed. */
    stop: async () => {
      const s = server;
      server = undefined;
      await closeServer(s);
    },
    start: async () => {
      const s = http.createServer(handler);
      await new Promise<void>((res, rej) => {
        s.once('error', rej);
        s.listen(first.port, '127.0.0.1', () => res());
      });
      server = s;
    },
  };
  cleanups.push(() => b.stop());
  return b;
}

type Backend = Awaited<ReturnType<typeof backend>>;

function checks(over: Partial<HealthCheckSettings> = {}): HealthCheckSettings {
  return { path: '/healthz', intervalMs: 50, timeoutMs: 500, unhealthyAfter: 2, healthyAfter: 1, ...over };
}

function pool(urls: string[], options: ConstructorParameters<typeof UpstreamPool>[1]) {
  const p = new UpstreamPool(
    urls.map((u) => new URL(u)),
    options,
  );
  cleanups.push(() => p.close());
  return p;
}

const states = (p: UpstreamPool) => p.status().map((b) => b.state);

describe('UpstreamPool', () => {
  it('takes the backends in turn, skipping one that is out', async () => {
    const p = pool(['http://127.0.0.1:9001/', 'http://127.0.0.1:9002/', 'http://127.0.0.1:9003/'], {
      healthCheck: false,
    });
    const order = Array.from({ length: 6 }, () => p.pick()?.url.port);
    expect(order).toEqual(['9001', '9002', '9003', '9001', '9002', '9003']);

    const second = p.backends[1] as (typeof p.backends)[number];
    p.unreachable(second, 'ECONNREFUSED');
    expect(states(p)).toEqual(['unknown', 'ejected', 'unknown']);
    expect(Array.from({ length: 4 }, () => p.pick()?.url.port)).toEqual(['9001', '9003', '9001', '9003']);
    // A retry goes to another backend than the one that failed.
    const first = p.backends[0] as (typeof p.backends)[number];
    expect(p.pick(first)?.url.port).toBe('9003');
  });

  it('checks every backend at start: a live one is healthy, a dead one unhealthy after unhealthyAfter failures', async () => {
    const up = await backend('up');
    const changes: [string, BackendState, string][] = [];
    const p = pool([up.url, `http://127.0.0.1:${CLOSED_PORT}`], {
      healthCheck: checks({ unhealthyAfter: 2 }),
      onChange: (b, _prev, reason) => changes.push([b.url, b.state, reason]),
    });
    expect(states(p)).toEqual(['unknown', 'unknown']);
    p.start();
    await waitFor(() => states(p)[1] === 'unhealthy', 5_000, 'the dead backend to be unhealthy');
    expect(states(p)[0]).toBe('healthy');
    expect(up.checks[0]).toBe('/healthz');
    const dead = p.status()[1];
    expect(dead?.lastError).toMatch(/ECONNREFUSED/);
    expect(dead?.lastCheckAt).toBeGreaterThan(0);
    expect(changes.find((c) => c[1] === 'unhealthy')?.[2]).toMatch(/health check \/healthz.*ECONNREFUSED/);
    // Only the healthy one takes traffic now.
    expect([p.pick()?.url.href, p.pick()?.url.href]).toEqual([`${up.url}/`, `${up.url}/`]);
  });

  it('needs unhealthyAfter failed checks in a row to mark a backend unhealthy, and healthyAfter passes to bring it back', async () => {
    const b = await backend('flaky');
    const answered: string[] = [];
    const p = pool([b.url], {
      healthCheck: checks({ unhealthyAfter: 3, healthyAfter: 2 }),
      // What the backend had answered to checks when the state changed.
      onChange: (s) => answered.push(`${s.state} after ${b.checks.length} checks`),
    });
    p.start();
    await waitFor(() => states(p)[0] === 'healthy', 5_000, 'healthy');
    const before = b.checks.length;
    b.setHealth(503); // any answer below 500 passes; 5xx fails
    await waitFor(() => states(p)[0] === 'unhealthy', 5_000, 'unhealthy');
    expect(answered.at(-1)).toBe(`unhealthy after ${before + 3} checks`);
    expect(p.pick()).toBeUndefined();
    const down = b.checks.length;
    b.setHealth(404);
    await waitFor(() => states(p)[0] === 'healthy', 5_000, 'healthy again');
    expect(answered.at(-1)).toBe(`healthy after ${down + 2} checks`);
    expect(p.pick()?.url.port).toBe(String(b.port));
  });

  it('counts a check that gets no answer within the timeout as failed', async () => {
    const silent = await listen(() => undefined);
    cleanups.push(() => closeServer(silent));
    const p = pool([silent.url], { healthCheck: checks({ timeoutMs: 100, unhealthyAfter: 1 }) });
    p.start();
    await waitFor(() => states(p)[0] === 'unhealthy', 5_000, 'unhealthy');
    expect(p.status()[0]?.lastError).toContain('no answer within 100 ms');
  });

  it('ejects a backend after 5 gateway failures in a row (502, 503, 504, no answer), never for 500s, and takes it back when a check passes', async () => {
    const b = await backend('b');
    const other = await backend('other');
    const p = pool([b.url, other.url], { healthCheck: checks({ intervalMs: 300 }) });
    p.start();
    await waitFor(() => states(p).every((s) => s === 'healthy'), 5_000, 'both healthy');
    const first = p.backends[0] as (typeof p.backends)[number];
    for (let i = 0; i < EJECT_AFTER_FAILURES - 1; i++) p.answered(first, 502);
    p.answered(first, 200); // a good answer starts the count again
    // The application answering, however badly: not a sign the backend is unwell.
    for (let i = 0; i < 3 * EJECT_AFTER_FAILURES; i++) p.answered(first, 500);
    expect(states(p)[0]).toBe('healthy');
    for (let i = 0; i < EJECT_AFTER_FAILURES - 4; i++) p.answered(first, 502);
    p.answered(first, 500); // and an answer starts the count again too
    p.answered(first, 504);
    p.timedOut(first, 'no answer within 30000 ms');
    p.answered(first, 502);
    p.answered(first, 504);
    expect(states(p)[0]).toBe('healthy');
    p.answered(first, 503);
    expect(states(p)[0]).toBe('ejected');
    expect(p.status()[0]?.lastError).toBe('answered 503');
    expect([p.pick()?.url.port, p.pick()?.url.port]).toEqual([String(other.port), String(other.port)]);
    expect(p.retryAfterSeconds()).toBe(1);
    // Its health check still passes, so the next check brings it back.
    await waitFor(() => states(p)[0] === 'healthy', 5_000, 'back after a passing check');
  });

  it('without health checks, takes an ejected backend back after 10 s', () => {
    let now = 1_000_000;
    const p = pool(['http://127.0.0.1:9001', 'http://127.0.0.1:9002', 'http://127.0.0.1:9003'], {
      healthCheck: false,
      now: () => now,
    });
    const [first, second] = p.backends as [(typeof p.backends)[number], (typeof p.backends)[number]];
    p.unreachable(first, 'connect ECONNREFUSED');
    now += 1_000;
    p.unreachable(second, 'connect ECONNREFUSED');
    expect(states(p)).toEqual(['ejected', 'ejected', 'unknown']);
    expect(p.retryAfterSeconds()).toBe(EJECT_WITHOUT_CHECKS_MS / 1000 - 1);
    now += EJECT_WITHOUT_CHECKS_MS - 2_500;
    expect(p.pick()?.url.port).toBe('9003');
    expect(p.pick()?.url.port).toBe('9003');
    now += 1_500;
    expect(states(p)).toEqual(['unknown', 'ejected', 'unknown']);
    now += 1_000;
    expect(states(p)).toEqual(['unknown', 'unknown', 'unknown']);
  });

  it('never ejects the last backend up: its own answers reach the caller, not a 503', async () => {
    const only = pool(['http://127.0.0.1:9001'], { healthCheck: false });
    const one = only.backends[0] as (typeof only.backends)[number];
    for (let i = 0; i < 4 * EJECT_AFTER_FAILURES; i++) only.answered(one, 503);
    only.unreachable(one, 'connect ECONNREFUSED');
    expect(states(only)).toEqual(['unknown']);
    expect(only.status()[0]?.lastError).toBe('connect ECONNREFUSED');
    expect(only.pick()?.url.port).toBe('9001');

    // With checks too, and with another backend that its checks took out.
    const up = await backend('up');
    const p = pool([up.url, `http://127.0.0.1:${CLOSED_PORT}`], {
      healthCheck: checks({ intervalMs: 60_000, unhealthyAfter: 1 }),
    });
    p.start();
    await waitFor(() => states(p).join() === 'healthy,unhealthy', 5_000, 'one healthy, one unhealthy');
    const last = p.backends[0] as (typeof p.backends)[number];
    for (let i = 0; i < 2 * EJECT_AFTER_FAILURES; i++) p.answered(last, 502);
    p.unreachable(last, 'connect ECONNREFUSED');
    expect(states(p)).toEqual(['healthy', 'unhealthy']);
    expect(p.pick()?.url.href).toBe(`${up.url}/`);
  });

  it('sends to the ejected backends when no other is up (panic mode); none only when all failed their checks', async () => {
    // Its checks get no answer: it stays where traffic put it for the length of the test.
    const silent = await listen(() => undefined);
    cleanups.push(() => closeServer(silent));
    const p = pool([silent.url, `http://127.0.0.1:${CLOSED_PORT}`], {
      healthCheck: checks({ intervalMs: 60_000, timeoutMs: 1_000, unhealthyAfter: 1 }),
    });
    p.start();
    // Ejected while the other was still up; then the other's check takes it out.
    p.unreachable(p.backends[0] as (typeof p.backends)[number], 'read ECONNRESET');
    await waitFor(() => states(p)[1] === 'unhealthy', 5_000, 'the dead backend unhealthy');
    expect(states(p)).toEqual(['ejected', 'unhealthy']);
    expect([p.pick()?.url.port, p.pick()?.url.port]).toEqual([String(silent.port), String(silent.port)]);
    // Its check's verdict, unlike an ejection, takes it out for good.
    await waitFor(() => states(p)[0] === 'unhealthy', 5_000, 'the silent backend unhealthy');
    expect(p.pick()).toBeUndefined();
  });

  it('never ejects when told not to (a relay to one peer)', () => {
    const p = pool(['http://127.0.0.1:9001'], { healthCheck: false, eject: false });
    const only = p.backends[0] as (typeof p.backends)[number];
    p.unreachable(only, 'ECONNREFUSED');
    for (let i = 0; i < 10; i++) p.answered(only, 500);
    expect(p.pick()?.url.port).toBe('9001');
  });
});

/** PassThroughProxy in this process, behind a plain HTTP server, as the data plane uses it. */
async function passThroughServer(target: UpstreamTarget) {
  const pt = new PassThroughProxy(5_000);
  pt.register(target);
  const front = await listen((req, res) => pt.forward(req, res, target, req.url ?? '/', []));
  cleanups.push(() => closeServer(front));
  cleanups.push(() => pt.close());
  return { pt, url: front.url };
}

describe('PassThroughProxy over a pool', () => {
  it('keeps a one-backend pool serving while its app answers 500, and answers 200 when it recovers', async () => {
    const app = await backend('app');
    const { pt, url } = await passThroughServer({
      name: 'billing',
      upstreams: [new URL(app.url)],
      healthCheck: checks({ intervalMs: 60_000 }),
    });
    await waitFor(() => pt.upstreams()[0]?.state === 'healthy', 5_000, 'healthy');
    app.setStatus(500);
    for (let i = 0; i < 4 * EJECT_AFTER_FAILURES; i++) {
      const res = await fetch(`${url}/broken/${i}`);
      expect(res.headers.get('x-kelsingra-error'), `request ${i}`).toBeNull();
      expect(res.status).toBe(500);
      expect(await res.text()).toBe(`app GET /broken/${i}`);
    }
    expect(pt.upstreams()[0]?.state).toBe('healthy');
    app.setStatus(200);
    const res = await fetch(`${url}/fixed`);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('app GET /fixed');
  });

  it('ejects a backend answering 503 from a two-backend pool while the other serves', async () => {
    const sick = await backend('sick');
    const well = await backend('well');
    sick.setStatus(503);
    const { pt, url } = await passThroughServer({
      name: 'billing',
      upstreams: [new URL(sick.url), new URL(well.url)],
      // Checks that pass and come too rarely to matter: the traffic alone ejects it.
      healthCheck: checks({ intervalMs: 60_000 }),
    });
    await waitFor(() => pt.upstreams().every((u) => u.state === 'healthy'), 5_000, 'both healthy');
    const statuses: number[] = [];
    for (let i = 0; i < 4 * EJECT_AFTER_FAILURES; i++) {
      const res = await fetch(`${url}/r${i}`);
      await res.text();
      statuses.push(res.status);
    }
    // The sick one's 503s reach the callers (they are its answers) until it is out.
    expect(sick.hits).toHaveLength(EJECT_AFTER_FAILURES);
    expect(statuses.filter((s) => s === 503)).toHaveLength(EJECT_AFTER_FAILURES);
    expect(statuses.slice(2 * EJECT_AFTER_FAILURES)).toEqual(Array(2 * EJECT_AFTER_FAILURES).fill(200));
    const rows = pt.upstreams();
    expect(rows.map((u) => u.state)).toEqual(['ejected', 'healthy']);
    expect(rows[0]?.lastError).toBe('answered 503');
  });

  it('retries a GET on another backend when one refuses the connection; a POST gets one 502, then goes elsewhere', async () => {
    const live = await backend('live');
    const dead = `http://127.0.0.1:${CLOSED_PORT}`;
    const { pt, url } = await passThroughServer({
      name: 'billing',
      upstreams: [new URL(dead), new URL(live.url)],
      // Checks too rare to matter here: the traffic alone ejects the dead backend.
      healthCheck: checks({ intervalMs: 60_000 }),
    });
    const post = await fetch(`${url}/p1`, { method: 'POST', body: 'x' });
    // Round robin starts at the dead one (its check found it down once: not yet unhealthy).
    expect(post.status).toBe(502);
    const body = (await post.json()) as Record<string, unknown>;
    expect(body.code).toBe('upstream-unreachable');
    expect(String(body.error)).toContain(`127.0.0.1:${CLOSED_PORT}`);
    for (let i = 0; i < 6; i++) {
      const res = await fetch(`${url}/p${i + 2}`, { method: 'POST', body: 'x' });
      expect(res.status).toBe(200);
    }
    expect(pt.upstreams().map((u) => [u.service, u.state])).toEqual([
      ['billing', 'ejected'],
      ['billing', 'healthy'],
    ]);

    // A fresh pool, GETs only: the first one is retried on the live backend.
    const again = await passThroughServer({
      name: 'orders',
      upstreams: [new URL(dead), new URL(live.url)],
      healthCheck: checks({ intervalMs: 60_000 }),
    });
    for (let i = 0; i < 4; i++) {
      const res = await fetch(`${again.url}/g${i}`);
      expect(res.status).toBe(200);
      expect(await res.text()).toBe(`live GET /g${i}`);
    }
  });

  it('answers 502 for every failure of a target without checks, never 503 (a relay to a replica)', async () => {
    const { url } = await passThroughServer({
      name: 'replica:r2',
      upstreams: [new URL(`http://127.0.0.1:${CLOSED_PORT}`)],
      healthCheck: false,
    });
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${url}/x`);
      expect(res.status).toBe(502);
      expect(res.headers.get('x-kelsingra-error')).toBe('upstream-unreachable');
    }
  });

  it('shares one pool between two names with the same backends, and closes it when the last lets go', async () => {
    const b = await backend('shared');
    const pt = new PassThroughProxy(5_000);
    cleanups.push(() => pt.close());
    const hc = checks({ intervalMs: 100 });
    const one = { name: 'one', upstreams: [new URL(b.url)], healthCheck: hc };
    const two = { name: 'two', upstreams: [new URL(b.url)], healthCheck: hc };
    pt.register(one);
    pt.register(two);
    await waitFor(() => pt.upstreams().every((u) => u.state === 'healthy'), 5_000, 'healthy');
    expect(pt.upstreams().map((u) => u.service)).toEqual(['one', 'two']);
    // One pool: one check per interval, not two.
    const before = b.checks.length;
    await sleep(500);
    expect(b.checks.length - before).toBeLessThanOrEqual(6);
    pt.release(one);
    expect(pt.upstreams().map((u) => u.service)).toEqual(['two']);
    pt.release(two);
    expect(pt.upstreams()).toEqual([]);
    await sleep(150);
    const after = b.checks.length;
    await sleep(400);
    expect(b.checks.length).toBe(after);
  });
});

describe('service config for pools', () => {
  it('takes a URL or a list, `upstreams` as another name, and health check settings in seconds', () => {
    const c = validateConfig(
      {
        token: TOKEN,
        services: {
          one: { upstream: 'http://a:1' },
          many: { upstreams: ['http://a:1', 'http://b:2'], healthCheck: { path: '/healthz', interval: 0.5 } },
          off: { upstream: ['http://c:3'], healthCheck: false },
        },
      },
      'test',
    );
    expect(c.services.one).toMatchObject({
      upstream: ['http://a:1'],
      healthCheck: { path: '/', interval: 5, timeout: 2, unhealthyAfter: 2, healthyAfter: 1 },
    });
    expect(c.services.many).toMatchObject({
      upstream: ['http://a:1', 'http://b:2'],
      healthCheck: { path: '/healthz', interval: 0.5, timeout: 2 },
    });
    expect(c.services.off?.healthCheck).toBe(false);
    expect(() => validateConfig({ token: TOKEN, services: { x: { upstream: [] } } }, 'test')).toThrow(
      /services\.x\.upstream: name at least one upstream URL/,
    );
    expect(() =>
      validateConfig({ token: TOKEN, services: { x: { upstream: ['http://a:1', 'ftp://b'] } } }, 'test'),
    ).toThrow(/services\.x\.upstream\.1: must start with http/);
  });

  it('makes a pool of a name given several times on the command line', () => {
    expect(
      servicesFromFlags([
        'billing=http://a:1',
        'orders=http://o:1',
        'billing=http://b:2',
        'billing=http://c:3',
      ]),
    ).toEqual({
      billing: { upstream: ['http://a:1', 'http://b:2', 'http://c:3'] },
      orders: { upstream: 'http://o:1' },
    });
  });
});

// ---------------------------------------------------------------------------------------
// End to end: a real `kelsingra server`.

async function status(server: ServerProcess): Promise<UpstreamHealth[]> {
  const res = await fetch(`${server.control}/status`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(res.status).toBe(200);
  return ((await res.json()) as { upstreams: UpstreamHealth[] }).upstreams;
}

async function get(server: ServerProcess, path: string) {
  const res = await rawRequest(`${server.data}${path}`, {
    headers: { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't1' },
  });
  return { status: res.status, headers: res.headers, text: res.body.toString() };
}

/** Who answered each of `n` GETs, asserting every one succeeded. */
async function servedBy(server: ServerProcess, n: number, tag: string): Promise<string[]> {
  const names: string[] = [];
  for (let i = 0; i < n; i++) {
    const r = await get(server, `/${tag}/${i}`);
    expect(r.status, `GET /${tag}/${i}: ${r.text}`).toBe(200);
    names.push(r.text.split(' ')[0] as string);
  }
  return names;
}

async function startWithPool(backends: Backend[], healthCheck?: Record<string, unknown>) {
  let args: string[];
  if (healthCheck) {
    const file = join(tempDir(), 'kelsingra.yaml');
    writeFileSync(
      file,
      [
        'services:',
        '  billing:',
        '    upstream:',
        ...backends.map((b) => `      - ${b.url}`),
        `    healthCheck: ${JSON.stringify(healthCheck)}`,
        '',
      ].join('\n'),
    );
    args = ['--config', file];
  } else {
    args = backends.flatMap((b) => ['--service', `billing=${b.url}`]);
  }
  const server = await startServerProcess([...args, '--token', TOKEN]);
  cleanups.push(() => server.stop());
  return server;
}

describe('kelsingra server with a pool of backends', () => {
  it('sends requests round robin over the backends of repeated --service flags', async () => {
    const backends = await Promise.all(['b1', 'b2', 'b3'].map(backend));
    const server = await startWithPool(backends);
    // /status shows each backend before any traffic, checked at start.
    const rows = await waitFor(
      async () => {
        const s = await status(server);
        return s.length === 3 && s.every((u) => u.state === 'healthy') ? s : undefined;
      },
      10_000,
      'three healthy backends in /status',
    );
    expect(rows.map((u) => [u.service, u.url])).toEqual(backends.map((b) => ['billing', `${b.url}/`]));

    const names = await servedBy(server, 9, 'rr');
    // Each in turn, from wherever the rotation stands.
    const start = names.indexOf('b1');
    expect(names.slice(start, start + 3)).toEqual(['b1', 'b2', 'b3']);
    for (let i = 3; i < 9; i++) expect(names[i]).toBe(names[i - 3]);
    for (const b of backends) expect(b.hits).toHaveLength(3);
  });

  it('keeps serving when backends die, answers 503 with Retry-After when all are down, and takes them back', async () => {
    const backends = await Promise.all(['b1', 'b2', 'b3'].map(backend));
    const [b1, b2, b3] = backends as [Backend, Backend, Backend];
    const server = await startWithPool(backends, { path: '/healthz', interval: 0.2, timeout: 0.5 });
    await waitFor(
      async () => (await status(server)).every((u) => u.state === 'healthy'),
      10_000,
      'all healthy',
    );
    expect(new Set(await servedBy(server, 6, 'warm'))).toEqual(new Set(['b1', 'b2', 'b3']));
    expect(b1.checks).toContain('/healthz');

    // b2 goes away: not one GET fails (a refused one is retried on another backend).
    await b2.stop();
    const during = await servedBy(server, 30, 'one-down');
    expect(during).not.toContain('b2');
    expect(new Set(during)).toEqual(new Set(['b1', 'b3']));
    const rows = await waitFor(
      async () => {
        const s = await status(server);
        return s.find((u) => u.url === `${b2.url}/`)?.state === 'unhealthy' ? s : undefined;
      },
      5_000,
      'b2 unhealthy in /status',
    );
    expect(rows.find((u) => u.url === `${b2.url}/`)?.lastError).toMatch(/ECONNREFUSED/);
    expect(rows.filter((u) => u.state === 'healthy').map((u) => u.url)).toEqual([`${b1.url}/`, `${b3.url}/`]);

    // All gone: Kelsingra says so itself, and when to try again.
    await Promise.all([b1.stop(), b3.stop()]);
    const down = await waitFor(
      async () => {
        const r = await get(server, '/all-down');
        return r.status === 503 ? r : undefined;
      },
      5_000,
      'a 503 once every backend is down',
    );
    expect(down.headers['x-kelsingra-error']).toBe('no-healthy-backend');
    expect(Number(down.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    const body = JSON.parse(down.text) as { error: string; code: string; backends: { url: string }[] };
    expect(body.code).toBe('no-healthy-backend');
    expect(body.error).toMatch(/^Kelsingra: no healthy backend for the billing upstream/);
    expect(body.error).toContain('none of its 3 backends is up');
    for (const b of backends) expect(body.error).toContain(b.url);
    expect(body.error).toMatch(/ECONNREFUSED/);
    expect(body.error).toMatch(/checks them again in \d+ s/);
    expect(body.backends).toHaveLength(3);

    // Back again on the same ports: traffic returns to all three within a few check intervals.
    await Promise.all(backends.map((b) => b.start()));
    await waitFor(
      async () => (await status(server)).every((u) => u.state === 'healthy'),
      5_000,
      'all healthy again',
    );
    expect(new Set(await servedBy(server, 6, 'back'))).toEqual(new Set(['b1', 'b2', 'b3']));
  });
});
