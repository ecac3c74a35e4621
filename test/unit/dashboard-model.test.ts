/**
 * The dashboard's state without a terminal: rates over the sliding window, error rates,
 * percentiles, intercepts appearing and disappearing, upstream health.
 */
import { stripVTControlCharacters } from 'node:util';
import { describe, expect, it } from 'vitest';
import {
  DashboardModel,
  formatDashboardTable,
  formatErrorRate,
  formatLatency,
  formatUpstream,
  percentile,
  type UpstreamStatus,
  upstreamState,
} from '../../src/client/dashboard/dashboard-model.js';
import { formatRecordLine } from '../../src/client/intercept/request-log.js';
import type { InterceptView, RequestRecord, UpstreamHealth } from '../../src/shared/protocol.js';
import { interceptView, requestRecord, webSocketRecord } from '../support/fixtures.js';

const T0 = Date.UTC(2025, 0, 2, 10, 0, 0);

function clock(start = T0) {
  let t = start;
  return { now: () => t, advance: (ms: number) => (t += ms), set: (v: number) => (t = v) };
}

const view = (id: string, over?: Partial<InterceptView>) => interceptView(id, over, T0);

const req = (interceptId: string, at: number, over?: Partial<RequestRecord>) =>
  requestRecord(interceptId, { at, ...over });

function start(intercepts: InterceptView[] = [view('i1')], upstreams: UpstreamHealth[] = []) {
  const c = clock();
  const model = new DashboardModel({ now: c.now, windowMs: 10_000 });
  model.apply({ type: 'snapshot', at: T0, intercepts, upstreams });
  model.apply({ type: 'live', at: T0 });
  return { model, c };
}

describe('percentile', () => {
  it('is nearest-rank over sorted values', () => {
    const values = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentile(values, 50)).toBe(50);
    expect(percentile(values, 99)).toBe(99);
    expect(percentile([7], 50)).toBe(7);
    expect(percentile([7], 99)).toBe(7);
    expect(percentile([1, 2], 50)).toBe(1);
    expect(percentile([1, 2], 99)).toBe(2);
    expect(percentile([], 50)).toBeNull();
  });
});

describe('DashboardModel', () => {
  it('lists the snapshot intercepts with empty stats, sorted, and goes live', () => {
    const { model } = start([view('i2', { service: 'orders' }), view('i1')]);
    const s = model.snapshot();
    expect(s.connection).toBe('live');
    expect(s.intercepts.map((i) => i.id)).toEqual(['i1', 'i2']);
    expect(s.intercepts[0]).toMatchObject({
      service: 'billing',
      tenant: 't1',
      holder: 'alice',
      localPort: 3000,
      requests: 0,
      errors: 0,
      windowRequests: 0,
      rate: 0,
      errorRate: null,
      p50Ms: null,
      p99Ms: null,
      lastRequest: null,
    });
  });

  it('computes the request rate over the sliding window, and forgets requests that leave it', () => {
    const { model, c } = start();
    c.advance(20_000); // a whole window has been watched
    for (let i = 0; i < 50; i++) {
      model.apply(req('i1', c.now()));
      c.advance(100); // 10 req/s for 5 s
    }
    let s = model.snapshot().intercepts[0];
    expect(s?.windowRequests).toBe(50);
    expect(s?.rate).toBeCloseTo(5, 5); // 50 requests over a 10 s window
    expect(s?.requests).toBe(50);
    expect(model.hasRecentTraffic()).toBe(true);

    c.advance(7_500); // the window now starts halfway through the burst
    s = model.snapshot().intercepts[0];
    expect(s?.windowRequests).toBeGreaterThanOrEqual(23);
    expect(s?.windowRequests).toBeLessThanOrEqual(25);

    c.advance(10_000); // all of it has
    s = model.snapshot().intercepts[0];
    expect(s).toMatchObject({ windowRequests: 0, rate: 0, errorRate: null, p50Ms: null, requests: 50 });
    expect(s?.lastRequest).toMatchObject({ method: 'GET', path: '/invoices/1', status: 200 });
    expect(model.hasRecentTraffic()).toBe(false);
  });

  it('measures the rate over the time actually watched until a whole window has passed', () => {
    const { model, c } = start();
    c.advance(2_000);
    for (let i = 0; i < 10; i++) model.apply(req('i1', c.now()));
    expect(model.snapshot().intercepts[0]?.rate).toBeCloseTo(5, 5); // 10 over 2 s, not over 10 s
  });

  it('counts 5xx and transport errors (not 4xx) in the error rate and totals', () => {
    const { model, c } = start();
    c.advance(10_000);
    model.apply(req('i1', c.now(), { status: 200 }));
    model.apply(req('i1', c.now(), { status: 404 }));
    model.apply(req('i1', c.now(), { status: 503 }));
    model.apply(req('i1', c.now(), { status: 502, error: 'local service refused the connection' }));
    const s = model.snapshot().intercepts[0];
    expect(s?.errors).toBe(2);
    expect(s?.errorRate).toBe(0.5);
    expect(formatErrorRate({ errorRate: s?.errorRate ?? null })).toBe('50%');
    expect(s?.lastRequest).toMatchObject({ status: 502, error: 'local service refused the connection' });
  });

  it('computes p50 and p99 over the window', () => {
    const { model, c } = start();
    c.advance(10_000);
    // 1…100 ms in shuffled order.
    const durations = Array.from({ length: 100 }, (_, i) => i + 1).sort(
      (a, b) => ((a * 37) % 101) - ((b * 37) % 101),
    );
    for (const d of durations) model.apply(req('i1', c.now(), { durationMs: d }));
    const s = model.snapshot().intercepts[0];
    expect(s?.p50Ms).toBe(50);
    expect(s?.p99Ms).toBe(99);
    expect(formatLatency(s?.p50Ms ?? null)).toBe('50 ms');
    c.advance(11_000);
    model.apply(req('i1', c.now(), { durationMs: 3 }));
    expect(model.snapshot().intercepts[0]).toMatchObject({ p50Ms: 3, p99Ms: 3, windowRequests: 1 });
  });

  it('keeps stats per intercept', () => {
    const { model, c } = start([view('i1'), view('i2', { tenant: 't2' })]);
    c.advance(10_000);
    model.apply(req('i1', c.now()));
    model.apply(req('i2', c.now(), { tenant: 't2', status: 500 }));
    model.apply(req('i2', c.now(), { tenant: 't2' }));
    const [a, b] = model.snapshot().intercepts;
    expect(a).toMatchObject({ id: 'i1', requests: 1, errors: 0 });
    expect(b).toMatchObject({ id: 'i2', requests: 2, errors: 1, errorRate: 0.5 });
    expect(model.log('i2').map((r) => r.status)).toEqual([500, 200]);
  });

  it('adds intercepts on created and removes them on ended; an open log still knows it ended', () => {
    const { model, c } = start([]);
    expect(model.snapshot().intercepts).toEqual([]);
    model.apply({
      type: 'intercept',
      action: 'created',
      intercept: view('i9', { service: 'orders' }),
      at: c.now(),
    });
    expect(model.snapshot().intercepts.map((i) => i.id)).toEqual(['i9']);
    model.apply(req('i9', c.now(), { service: 'orders' }));
    model.apply({
      type: 'intercept',
      action: 'ended',
      reason: 'expired',
      intercept: view('i9', { service: 'orders' }),
      at: c.now(),
    });
    expect(model.snapshot().intercepts).toEqual([]);
    expect(model.intercept('i9')).toMatchObject({ id: 'i9', requests: 1, ended: { reason: 'expired' } });
    expect(model.log('i9')).toHaveLength(1);
    // A request finishing just after the end joins the log without bringing the intercept back.
    model.apply(req('i9', c.now() + 1, { service: 'orders' }));
    expect(model.snapshot().intercepts).toEqual([]);
    expect(model.log('i9')).toHaveLength(2);
    // Ending something unknown changes nothing.
    const before = model.version;
    expect(model.apply({ type: 'intercept', action: 'ended', intercept: view('nope'), at: c.now() })).toBe(
      false,
    );
    expect(model.version).toBe(before);
  });

  it('does not bring back an ended intercept whose stats it no longer keeps when a late request arrives', () => {
    const { model, c } = start([]);
    for (let i = 0; i < 25; i++) {
      const id = `old${i}`;
      model.apply({ type: 'intercept', action: 'created', intercept: view(id), at: c.now() });
      model.apply({ type: 'intercept', action: 'ended', reason: 'left', intercept: view(id), at: c.now() });
    }
    // old0 has fallen out of the 20 ended intercepts whose stats are kept.
    model.apply(req('old0', c.now()));
    expect(model.snapshot().intercepts).toEqual([]);
  });

  it('shows an intercept it only knows from a request record', () => {
    const { model, c } = start([]);
    model.apply(req('i5', c.now(), { service: 'orders', tenant: 't5', holder: 'bob' }));
    expect(model.snapshot().intercepts[0]).toMatchObject({
      id: 'i5',
      service: 'orders',
      tenant: 't5',
      holder: 'bob',
      requests: 1,
    });
  });

  it('a new snapshot (after a reconnect) drops intercepts that ended meanwhile and keeps the stats of the others', () => {
    const { model, c } = start([view('i1'), view('i2', { tenant: 't2' })]);
    model.apply(req('i1', c.now()));
    model.setConnection('reconnecting', 'the server closed the event stream');
    expect(model.snapshot().connection).toBe('reconnecting');
    expect(model.lastConnectionError).toMatch(/closed/);
    model.apply({ type: 'snapshot', at: c.now(), intercepts: [view('i1')], upstreams: [] });
    model.apply({ type: 'live', at: c.now() });
    const s = model.snapshot();
    expect(s.connection).toBe('live');
    expect(s.intercepts.map((i) => [i.id, i.requests])).toEqual([['i1', 1]]);
    expect(model.intercept('i2')?.ended).toBeDefined();
  });

  it('counts the history replayed before live (not in the window), once across reconnects', () => {
    const c = clock();
    const model = new DashboardModel({ now: c.now, windowMs: 10_000 });
    model.apply({ type: 'snapshot', at: T0, intercepts: [view('i1')], upstreams: [] });
    model.apply(req('i1', T0 - 60_000, { path: '/old', status: 200 }));
    model.apply(req('i1', T0 - 30_000, { path: '/older-failed', status: 503 }));
    model.apply({ type: 'live', at: T0 });
    let s = model.snapshot().intercepts[0];
    expect(s).toMatchObject({ requests: 2, errors: 1, windowRequests: 0, rate: 0 });
    expect(s?.lastRequest).toMatchObject({ path: '/older-failed', status: 503 });
    model.apply(req('i1', T0 + 1, { path: '/new' }));
    // A reconnect replays the same history again, and the live request with it.
    model.apply({ type: 'snapshot', at: T0 + 2, intercepts: [view('i1')], upstreams: [] });
    model.apply(req('i1', T0 - 60_000, { path: '/old', status: 200 }));
    model.apply(req('i1', T0 - 30_000, { path: '/older-failed', status: 503 }));
    model.apply(req('i1', T0 + 1, { path: '/new' }));
    model.apply({ type: 'live', at: T0 + 2 });
    s = model.snapshot().intercepts[0];
    expect(s).toMatchObject({ requests: 3, errors: 1, windowRequests: 1 });
    expect(s?.lastRequest).toMatchObject({ path: '/new' });
  });

  it('keeps a bounded log, newest last, and merges replayed history without duplicates', () => {
    const c = clock();
    const model = new DashboardModel({ now: c.now, logLimit: 5 });
    model.apply({ type: 'snapshot', at: T0, intercepts: [view('i1')], upstreams: [] });
    for (let i = 0; i < 8; i++) model.apply(req('i1', T0 + i, { path: `/p${i}` }));
    expect(model.log('i1').map((r) => r.path)).toEqual(['/p3', '/p4', '/p5', '/p6', '/p7']);

    const fresh = new DashboardModel({ now: c.now, logLimit: 10 });
    fresh.apply({ type: 'snapshot', at: T0, intercepts: [view('i1')], upstreams: [] });
    fresh.apply(req('i1', T0 + 5, { path: '/live' }));
    fresh.backfill('i1', [req('i1', T0 + 1, { path: '/old' }), req('i1', T0 + 5, { path: '/live' })]);
    expect(fresh.log('i1').map((r) => r.path)).toEqual(['/old', '/live']);
    // History is not counted as live traffic.
    expect(fresh.snapshot().intercepts[0]?.requests).toBe(1);
  });

  it('shows each backend in the state the server reports; unchanged health is not a change', () => {
    const { model } = start(
      [],
      [
        { service: 'orders', url: 'http://o/', state: 'unknown' },
        { service: 'billing', url: 'http://b1/', state: 'healthy', lastOkAt: new Date(T0).toISOString() },
        { service: 'billing', url: 'http://b2/', state: 'healthy', lastOkAt: new Date(T0).toISOString() },
      ],
    );
    // By service, a pool's backends in their order.
    expect(model.snapshot().upstreams.map((u) => [u.service, u.url, u.state])).toEqual([
      ['billing', 'http://b1/', 'healthy'],
      ['billing', 'http://b2/', 'healthy'],
      ['orders', 'http://o/', 'unknown'],
    ]);
    const v = model.version;
    const same = [
      { service: 'billing', url: 'http://b1/', state: 'healthy', lastOkAt: new Date(T0).toISOString() },
      { service: 'billing', url: 'http://b2/', state: 'healthy', lastOkAt: new Date(T0).toISOString() },
      { service: 'orders', url: 'http://o/', state: 'unknown' },
    ] as const;
    expect(model.apply({ type: 'upstreams', upstreams: [...same], at: T0 + 5000 })).toBe(false);
    expect(model.version).toBe(v);
    const failing = [
      same[0],
      {
        service: 'billing',
        url: 'http://b2/',
        state: 'ejected',
        lastOkAt: new Date(T0).toISOString(),
        lastError: 'connect ECONNREFUSED',
        lastErrorAt: new Date(T0 + 1).toISOString(),
      },
      same[2],
    ] as const;
    expect(model.apply({ type: 'upstreams', upstreams: [...failing], at: T0 + 10_000 })).toBe(true);
    const b2 = model.snapshot().upstreams[1] as UpstreamStatus;
    expect(b2).toMatchObject({ url: 'http://b2/', state: 'ejected', lastError: 'connect ECONNREFUSED' });
    expect(formatUpstream(b2)).toMatch(/^ejected: connect ECONNREFUSED \(\d\d:\d\d:\d\d\)$/);
    expect(
      formatUpstream({
        service: 'x',
        url: 'u',
        state: 'unhealthy',
        lastError: 'health check / answered 500',
      }),
    ).toBe('unhealthy: health check / answered 500');
    expect(formatUpstream({ service: 'x', url: 'u', state: 'unknown' })).toBe('not checked yet');
  });

  it('judges a server from before upstream pools by its last request: ok is healthy, an error unhealthy', () => {
    const at = (ms: number) => new Date(T0 + ms).toISOString();
    expect(upstreamState({ service: 'x', url: 'u', lastOkAt: at(0) })).toBe('healthy');
    expect(
      upstreamState({ service: 'x', url: 'u', lastOkAt: at(0), lastError: 'e', lastErrorAt: at(1) }),
    ).toBe('unhealthy');
    // Recovery: an ok after the error.
    expect(
      upstreamState({ service: 'x', url: 'u', lastErrorAt: at(0), lastError: 'e', lastOkAt: at(1) }),
    ).toBe('healthy');
    expect(upstreamState({ service: 'x', url: 'u' })).toBe('unknown');
  });

  it('emits change once per visible change', () => {
    const { model, c } = start();
    let changes = 0;
    model.on('change', () => changes++);
    model.apply(req('i1', c.now()));
    model.apply({ type: 'live', at: c.now() }); // already live
    expect(changes).toBe(1);
  });

  it('shows a WebSocket as one entry: counted, in the log and the last request, but not in the latency', () => {
    const { model, c } = start();
    model.apply(req('i1', c.now(), { durationMs: 20 }));
    c.advance(1_000);
    model.apply(webSocketRecord('i1', { at: c.now() }));
    const s = model.snapshot().intercepts[0];
    expect(s).toMatchObject({ requests: 2, errors: 0, windowRequests: 2, errorRate: 0 });
    // Open for 12.3 s is no latency: the percentiles are the plain request's.
    expect([s?.p50Ms, s?.p99Ms]).toEqual([20, 20]);
    expect(s?.lastRequest).toMatchObject({ path: '/chat', status: 101, upgrade: 'websocket' });
    const text = formatDashboardTable(model.snapshot());
    expect(text).toMatch(/20 ms\s+20 ms\s+\d\d:\d\d:\d\d WS \/chat 101 closed by caller 1000$/m);
    expect(model.log('i1').map((r) => r.path)).toEqual(['/invoices/1', '/chat']);

    // A window of WebSockets only has a rate and no latency.
    c.advance(20_000);
    model.apply(
      webSocketRecord('i1', { at: c.now() }, { closeFrom: undefined, code: undefined, closedBy: 'caller' }),
    );
    const only = model.snapshot().intercepts[0];
    expect(only).toMatchObject({ windowRequests: 1, p50Ms: null, p99Ms: null });
    expect(formatDashboardTable(model.snapshot())).toMatch(
      /WS \/chat 101 dropped by caller \(no close frame\)$/m,
    );
  });

  it('prints a WebSocket record as one line: lifetime, bytes each way, how it closed', () => {
    const line = (over: Partial<RequestRecord>, upgrade = {}) =>
      // biome-ignore lint/suspicious/noControlCharactersInRegex: stripping ANSI colours
      formatRecordLine(webSocketRecord('i1', over, upgrade)).replace(/\u001b\[[0-9;]*m/g, '');
    expect(line({})).toMatch(
      /^\d\d:\d\d:\d\d\.\d{3} {2}WS {6}\/chat +101 {2}12\.3 s {2}↑1\.2 KiB ↓3\.4 KiB {2}closed by caller 1000$/,
    );
    expect(
      line({ durationMs: 245_000 }, { closedBy: 'tunnel', closeFrom: undefined, code: undefined }),
    ).toMatch(/101 {2}4m 05s {2}.* cut by the tunnel$/);
    expect(line({}, { closeFrom: 'local', code: 1001, reason: 'restarting' })).toMatch(
      /closed by local 1001 "restarting"$/,
    );
    expect(
      line(
        { status: 0, durationMs: 30_000, bytesOut: 0, error: 'no answer to the upgrade' },
        { closedBy: 'timeout' },
      ),
    ).toMatch(
      /WS {6}\/chat +0 {2}30\.0 s {2}↑1\.2 KiB ↓0 B {2}not answered {2}\(no answer to the upgrade\)$/,
    );
    expect(line({}, { protocol: 'h2c', closeFrom: undefined, code: undefined, closedBy: 'caller' })).toMatch(
      /UPGRADE {2}\/chat +101 .* closed by caller$/,
    );
    // A plain request keeps its own line.
    expect(formatRecordLine(requestRecord('i1'))).toMatch(/GET {3}\s*\/invoices\/1 +\S*200/);
  });

  it('lines up statuses in a column whatever the path length, and names binary units KiB/MiB', () => {
    const plain = (r: RequestRecord) => stripVTControlCharacters(formatRecordLine(r));
    const short = plain(requestRecord('i1', { path: '/a', bytesOut: 2048 }));
    const long = plain(requestRecord('i1', { path: '/invoices/2026/12', bytesOut: 3 * 1024 * 1024 }));
    expect(short.indexOf(' 200 ')).toBe(long.indexOf(' 200 '));
    expect(short).toMatch(/2\.0 KiB$/);
    expect(long).toMatch(/3\.0 MiB$/);
  });

  it('prints a plain table without colours', () => {
    const { model, c } = start(
      [view('i1')],
      [
        {
          service: 'billing',
          url: 'http://b/',
          state: 'unhealthy',
          lastError: 'ECONNREFUSED',
          lastErrorAt: new Date(T0).toISOString(),
        },
      ],
    );
    c.advance(10_000);
    model.apply(req('i1', c.now(), { status: 503, path: '/x' }));
    const text = formatDashboardTable(model.snapshot());
    expect(text).toMatch(/SERVICE\s+TENANT\s+HOLDER\s+REQ\/S\s+ERR%\s+P50\s+P99\s+LAST REQUEST/);
    expect(text).toMatch(/billing\s+t1\s+alice\s+0\.1\s+100%\s+10 ms\s+10 ms\s+\d\d:\d\d:\d\d GET \/x 503/);
    expect(text).toMatch(/UPSTREAMS\nbilling\s+http:\/\/b\/\s+unhealthy: ECONNREFUSED/);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: checking for ANSI escapes
    expect(text).not.toMatch(/\u001b\[/);
    expect(formatDashboardTable({ ...model.snapshot(), intercepts: [] }, 'nothing here')).toContain(
      'nothing here',
    );
  });
});
