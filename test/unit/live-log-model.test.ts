/**
 * The live log's state without a terminal: rate, errors, in-flight requests, pause
 * buffering, tunnel and lease state, selection.
 */

import chalk from 'chalk';
import { describe, expect, it } from 'vitest';
import type { HttpStartEvent, RequestEvent, WebSocketEvent } from '../../src/client/intercept/events.js';
import { formatPrintable } from '../../src/ui/live-log-lines.js';
import { LiveLogModel, type Printable, pendingParts } from '../../src/ui/live-log-model.js';

const INFO = {
  service: 'billing',
  tenant: 't1',
  localPort: 3000,
  server: 'http://dev:7000',
  interceptId: 'icp_1',
};

function clock(start = 1_000_000) {
  let t = start;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

let n = 0;
function start(path = '/x', at = 0): HttpStartEvent {
  return {
    kind: 'http-start',
    requestId: `r${++n}`,
    interceptId: 'icp_1',
    startedAt: at,
    method: 'GET',
    path,
  };
}
function done(s: HttpStartEvent, status = 200, extra: Partial<RequestEvent> = {}): RequestEvent {
  return {
    kind: 'http',
    requestId: s.requestId,
    interceptId: s.interceptId,
    startedAt: s.startedAt,
    method: s.method,
    path: s.path,
    status,
    durationMs: 3,
    bytesIn: 0,
    bytesOut: 10,
    requestHeaders: {},
    responseHeaders: {},
    ...extra,
  };
}
function request(
  model: LiveLogModel,
  path = '/x',
  status = 200,
  extra: Partial<RequestEvent> = {},
): RequestEvent {
  const s = start(path, model.now());
  model.apply(s);
  const e = done(s, status, extra);
  model.apply(e);
  return e;
}
function wsStart(path = '/chat', at = 0): HttpStartEvent {
  return { ...start(path, at), upgrade: 'websocket' };
}
function wsClosed(s: HttpStartEvent, extra: Partial<WebSocketEvent> = {}): WebSocketEvent {
  return {
    kind: 'websocket',
    requestId: s.requestId,
    interceptId: s.interceptId,
    startedAt: s.startedAt,
    path: s.path,
    protocol: 'websocket',
    status: 101,
    durationMs: 12_300,
    bytesIn: 1200,
    bytesOut: 3500,
    messagesIn: 3,
    messagesOut: 5,
    closedBy: 'local',
    closeFrom: 'caller',
    code: 1000,
    ...extra,
  };
}
/** A printed line as a terminal without colours shows it. */
function plain(p: Printable): string {
  const level = chalk.level;
  chalk.level = 0;
  try {
    return formatPrintable(p);
  } finally {
    chalk.level = level;
  }
}

const paths = (items: Printable[]) => items.flatMap((p) => (p.kind === 'request' ? [p.request.path] : []));

describe('LiveLogModel', () => {
  it('prints the banner first, then each completed request once', () => {
    const c = clock();
    const model = new LiveLogModel(INFO, { now: c.now });
    const first = model.takePrintable();
    expect(first[0]?.kind).toBe('banner');
    request(model, '/a');
    request(model, '/b');
    expect(paths(model.takePrintable())).toEqual(['/a', '/b']);
    expect(model.takePrintable()).toEqual([]);
  });

  it('prints each Kafka message as a line of its own among the requests, failures as errors', () => {
    const c = clock();
    const model = new LiveLogModel(INFO, { now: c.now });
    model.takePrintable();
    request(model, '/a');
    model.apply({
      kind: 'kafka',
      direction: 'in',
      from: 'orders',
      to: 'orders.local',
      key: 'k1',
      bytes: 120,
      at: c.now(),
    });
    model.apply({
      kind: 'kafka',
      direction: 'in',
      from: '',
      to: '',
      bytes: 0,
      at: c.now(),
      error: 'broker down',
    });
    const lines = model.takePrintable();
    expect(lines.map((p) => p.kind)).toEqual(['request', 'notice', 'notice']);
    const [, message, failure] = lines as [
      Printable,
      Printable & { kind: 'notice' },
      Printable & { kind: 'notice' },
    ];
    expect(message.tone).toBe('info');
    expect(message.text).toContain('orders → local orders.local');
    expect(message.text).toContain('key k1');
    expect(failure.tone).toBe('error');
    expect(failure.text).toContain('broker down');
    // Messages are not requests: the request counters do not move.
    expect(model.snapshot().total).toBe(1);
  });

  it('tracks requests in flight from http-start until http', () => {
    const c = clock();
    const model = new LiveLogModel(INFO, { now: c.now });
    const a = start('/slow', c.now());
    const b = start('/other', c.now());
    model.apply(a);
    model.apply(b);
    expect(model.snapshot().inFlight.map((r) => r.path)).toEqual(['/slow', '/other']);
    // Something is in flight: the view ticks (elapsed time, spinner).
    expect(model.nextChangeAt()).toBeDefined();
    model.apply(done(a));
    expect(model.snapshot().inFlight.map((r) => r.path)).toEqual(['/other']);
    model.apply({ kind: 'ended', reason: 'left', end: { kind: 'left' }, at: c.now() });
    expect(model.snapshot().inFlight).toEqual([]);
  });

  it('computes the request rate over a sliding window, then falls to 0 and stops ticking', () => {
    const c = clock();
    const model = new LiveLogModel(INFO, { now: c.now, rateWindowMs: 5000 });
    expect(model.nextChangeAt()).toBeUndefined();
    for (let i = 0; i < 50; i++) {
      request(model);
      c.advance(100);
    }
    // 50 requests over the last 5 s (the window moves in quarter-second buckets).
    expect(model.snapshot().ratePerSecond).toBeGreaterThanOrEqual(9);
    expect(model.snapshot().ratePerSecond).toBeLessThanOrEqual(10);
    expect(model.nextChangeAt()).toBeDefined();
    c.advance(2_600);
    expect(model.snapshot().ratePerSecond).toBeLessThan(10);
    expect(model.snapshot().ratePerSecond).toBeGreaterThan(0);
    c.advance(5_000);
    expect(model.snapshot().ratePerSecond).toBe(0);
    expect(model.nextChangeAt()).toBeUndefined();
    expect(model.snapshot().total).toBe(50);
  });

  it('counts errors: status ≥ 500 or a failure', () => {
    const model = new LiveLogModel(INFO);
    request(model, '/ok', 200);
    request(model, '/missing', 404);
    request(model, '/boom', 500);
    request(model, '/down', 502, { error: 'ECONNREFUSED' });
    request(model, '/reset', 200, { error: 'socket hang up' });
    const snap = model.snapshot();
    expect(snap.total).toBe(5);
    expect(snap.errors).toBe(3);
  });

  it('pause holds lines back (traffic and counters go on) and resume prints them in order', () => {
    const model = new LiveLogModel(INFO);
    model.takePrintable();
    model.togglePause();
    request(model, '/1');
    request(model, '/2');
    expect(model.takePrintable()).toEqual([]);
    const snap = model.snapshot();
    expect(snap.paused).toBe(true);
    expect(snap.buffered).toBe(2);
    expect(snap.total).toBe(2);
    model.togglePause();
    expect(paths(model.takePrintable())).toEqual(['/1', '/2']);
    expect(model.snapshot().buffered).toBe(0);
  });

  it('a full pause buffer drops the oldest lines and says so on resume', () => {
    const model = new LiveLogModel(INFO, { maxBuffered: 3 });
    model.takePrintable();
    model.togglePause();
    for (const p of ['/1', '/2', '/3', '/4', '/5']) request(model, p);
    expect(model.snapshot().dropped).toBe(2);
    model.togglePause();
    const out = model.takePrintable();
    expect(out[0]).toMatchObject({ kind: 'notice', text: '2 lines not shown (pause buffer full)' });
    expect(paths(out)).toEqual(['/3', '/4', '/5']);
  });

  it('shows the reconnect countdown and notes tunnel changes in the log', () => {
    const c = clock();
    const model = new LiveLogModel(INFO, { now: c.now });
    model.takePrintable();
    model.apply({
      kind: 'tunnel',
      state: 'reconnecting',
      retryInMs: 4_000,
      error: 'socket closed',
      at: c.now(),
    });
    expect(model.snapshot().tunnel).toEqual({ state: 'reconnecting', inSeconds: 4, error: 'socket closed' });
    // The countdown ticks on whole seconds.
    expect(model.nextChangeAt()).toBe(c.now() + 1000);
    c.advance(2_500);
    expect(model.snapshot().tunnel).toMatchObject({ state: 'reconnecting', inSeconds: 2 });
    c.advance(2_000);
    expect(model.snapshot().tunnel).toMatchObject({ state: 'reconnecting', inSeconds: 0 });
    model.apply({ kind: 'tunnel', state: 'connected', at: c.now() });
    expect(model.snapshot().tunnel).toEqual({ state: 'connected' });
    const notices = model.takePrintable().flatMap((p) => (p.kind === 'notice' ? [p.text] : []));
    expect(notices).toEqual(['tunnel lost (socket closed); reconnecting', 'tunnel connected']);
  });

  it('warns when a lease renewal is overdue, with the seconds left, and stops when renewed', () => {
    const c = clock();
    const model = new LiveLogModel({ ...INFO, leaseTtlMs: 30_000 }, { now: c.now });
    expect(model.snapshot().leaseExpiresInSeconds).toBeUndefined();
    // Renewals come every 10 s; the view wakes once, when one is overdue (at half the TTL).
    expect(model.nextChangeAt()).toBe(c.now() + 15_000);
    c.advance(10_000);
    model.apply({ kind: 'lease', interceptId: 'icp_1', expiresAt: c.now() + 30_000, at: c.now() });
    c.advance(14_000);
    expect(model.snapshot().leaseExpiresInSeconds).toBeUndefined();
    c.advance(2_000);
    expect(model.snapshot().leaseExpiresInSeconds).toBe(14);
    c.advance(14_000);
    expect(model.snapshot().leaseExpiresInSeconds).toBe(0);
    model.apply({ kind: 'lease', interceptId: 'icp_1', expiresAt: c.now() + 30_000, at: c.now() });
    expect(model.snapshot().leaseExpiresInSeconds).toBeUndefined();
    model.apply({ kind: 'ended', reason: 'left', end: { kind: 'left' }, at: c.now() });
    c.advance(60_000);
    expect(model.snapshot().leaseExpiresInSeconds).toBeUndefined();
    expect(model.snapshot().ended).toBe('left');
  });

  it('says when a lapsed lease came back, where the traffic went, and follows a new id', () => {
    const c = clock();
    const model = new LiveLogModel({ ...INFO, leaseTtlMs: 30_000 }, { now: c.now });
    model.takePrintable();
    c.advance(45_000);
    expect(model.snapshot().leaseExpiresInSeconds).toBe(0);
    model.apply({
      kind: 'lease-lapsed',
      interceptId: 'icp_2',
      previousId: 'icp_1',
      lapsedAt: c.now() - 15_000,
      fallback: 'base',
      fallbackMs: 15_000,
      at: c.now(),
    });
    const notices = model.takePrintable().flatMap((p) => (p.kind === 'notice' ? [p] : []));
    expect(notices).toHaveLength(1);
    expect(notices[0]).toMatchObject({ tone: 'warn' });
    expect(notices[0]?.text).toMatch(
      /^lease lapsed at [\d:.]+: the tenant's traffic went to the base service for 15\.00 s; the intercept is back under a new id, icp_2 \(it was icp_1\)$/,
    );
    const snapshot = model.snapshot();
    expect(snapshot.info.interceptId).toBe('icp_2');
    // A whole new lease: no countdown until a renewal is overdue again.
    expect(snapshot.leaseExpiresInSeconds).toBeUndefined();
  });

  it('selects among recent requests with ↑/↓ and opens details; history is bounded', () => {
    const model = new LiveLogModel(INFO, { historySize: 100, selectWindow: 5 });
    const all = Array.from({ length: 300 }, (_, i) => request(model, `/r${i}`));
    model.selectNext(); // nothing selected yet: no-op
    expect(model.snapshot().panel).toBe('none');
    model.selectPrevious();
    let snap = model.snapshot();
    expect(snap.panel).toBe('select');
    expect(snap.recent.map((r) => r.path)).toEqual(['/r295', '/r296', '/r297', '/r298', '/r299']);
    expect(snap.recent[snap.selectedIndex]?.path).toBe('/r299');
    model.selectPrevious();
    model.selectPrevious();
    snap = model.snapshot();
    expect(snap.recent[snap.selectedIndex]?.path).toBe('/r297');
    model.openDetails();
    expect(model.snapshot().details).toBe(all[297]);
    model.close();
    expect(model.snapshot().panel).toBe('select');
    model.selectNext();
    model.selectNext();
    model.selectNext(); // past the newest: selection closes
    expect(model.snapshot().panel).toBe('none');
    // Only the last 100 (plus a trimming slack) are kept.
    for (let i = 0; i < 200; i++) model.selectPrevious();
    snap = model.snapshot();
    expect(Number(snap.recent[snap.selectedIndex]?.path.slice(2))).toBeGreaterThanOrEqual(190);
  });

  it('prints the local command output line by line', () => {
    const model = new LiveLogModel(INFO);
    model.takePrintable();
    model.output('stdout', 'listening on ');
    expect(model.takePrintable()).toEqual([]);
    model.output('stdout', '3000\nready\npart');
    model.output('stderr', 'warn: x\n');
    model.flushOutput();
    const out = model.takePrintable().map((p) => (p.kind === 'output' ? `${p.stream}:${p.text}` : p.kind));
    expect(out).toEqual(['stdout:listening on 3000\nready', 'stderr:warn: x', 'stdout:part']);
  });
});

describe('WebSockets in the live log', () => {
  it('shows an open WebSocket as open (ticking, no spinner), then one line when it closes', () => {
    const c = clock();
    const model = new LiveLogModel(INFO, { now: c.now });
    model.takePrintable();
    const ws = wsStart('/chat', c.now());
    model.apply(ws);
    const open = model.snapshot();
    expect(open.inFlight.map((r) => r.path)).toEqual(['/chat']);
    expect(open.openUpgrades).toBe(1);
    c.advance(12_400);
    expect(pendingParts(ws, c.now())).toEqual({ label: 'WS    ', path: '/chat', elapsed: 'open 12 s' });
    expect(pendingParts(ws, c.now() + 245_000).elapsed).toBe('open 4m 17s');
    // Long-lived by nature: its time ticks once a second, but it turns no spinner.
    expect(model.hasRecentInFlight(c.now() - 12_000)).toBe(false);
    expect(model.nextChangeAt()).toBe(c.now() + 1000);

    model.apply(wsClosed(ws));
    const closed = model.snapshot();
    expect(closed.inFlight).toEqual([]);
    expect(closed.openUpgrades).toBe(0);
    expect(closed.total).toBe(1);
    expect(closed.errors).toBe(0);
    const printed = model.takePrintable();
    expect(printed).toHaveLength(1);
    expect(plain(printed[0] as Printable)).toMatch(
      /^\d\d:\d\d:\d\d\.\d{3} {2}WS {6}\/chat +101 {2}12\.3 s {2}↑1\.2 KiB ↓3\.4 KiB {2}closed by caller 1000$/,
    );
    // It is one of the recent entries ↑ selects, like any request.
    model.selectPrevious();
    expect(model.snapshot().recent.map((r) => r.kind)).toEqual(['websocket']);
  });

  it('says how each WebSocket closed, and marks failures', () => {
    const c = clock();
    const model = new LiveLogModel(INFO, { now: c.now });
    model.takePrintable();
    const line = (extra: Partial<WebSocketEvent>, path = '/chat') => {
      const s = wsStart(path, c.now());
      model.apply(s);
      model.apply(wsClosed(s, extra));
      return plain(model.takePrintable()[0] as Printable);
    };
    expect(line({ closeFrom: 'local', closedBy: 'caller', code: 1011, reason: 'boom' })).toContain(
      '↑1.2 KiB ↓3.4 KiB  closed by local 1011 "boom"',
    );
    expect(line({ closedBy: 'leave', closeFrom: undefined, code: 1001 })).toMatch(/closed on leave 1001$/);
    expect(line({ closedBy: 'caller', closeFrom: undefined, code: undefined })).toMatch(
      /dropped by caller \(no close frame\)$/,
    );
    expect(line({ durationMs: 3_725_000 })).toMatch(/101 {2}1h 02m {2}/);
    expect(line({ status: 403, durationMs: 4.5, bytesOut: 120, code: undefined })).toMatch(
      /WS {6}\/chat +403 {2}4\.5 ms {2}↑1\.2 KiB ↓120 B {2}refused by local$/,
    );
    expect(
      line({
        status: 0,
        bytesIn: 0,
        bytesOut: 0,
        code: undefined,
        error: 'connect ECONNREFUSED 127.0.0.1:3000',
      }),
    ).toMatch(/\/chat +0 {2}.*not answered {2}\(connect ECONNREFUSED 127\.0\.0\.1:3000\)$/);
    expect(line({ protocol: 'upgrade', closeFrom: undefined, code: undefined }, '/tcp')).toMatch(
      /UPGRADE {2}\/tcp +101 .* closed by local$/,
    );
    // Not reached is a failure; refused (4xx) and closed are not.
    expect(model.snapshot().errors).toBe(1);
    expect(model.snapshot().total).toBe(7);
  });
});

describe('spinner frames for long-lived requests', () => {
  it('counts only requests started in the last few seconds as needing spinner frames', () => {
    let now = 1_000_000;
    const model = new LiveLogModel(INFO, { now: () => now });
    model.apply({
      kind: 'http-start',
      requestId: '1',
      interceptId: 'icp_x',
      startedAt: now,
      method: 'GET',
      path: '/sse',
    });
    expect(model.hasRecentInFlight(now)).toBe(true);
    now += 6_000;
    expect(model.hasRecentInFlight(now)).toBe(false);
    // Its elapsed time still changes once a second.
    expect(model.nextChangeAt(now)).toBe(now + 1000);
  });
});
