/**
 * The live request log rendered with ink-testing-library: header and lines, batching,
 * keys (p, ↑/↓, enter, esc, ?, q, Ctrl-C) and masked credentials in the details.
 */
import { stripVTControlCharacters } from 'node:util';
import chalk from 'chalk';
import { render } from 'ink-testing-library';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { RequestEvent, WebSocketEvent } from '../../src/client/intercept/events.js';
import { LiveLog } from '../../src/ui/LiveLog.js';
import { LiveLogModel } from '../../src/ui/live-log-model.js';

const INFO = {
  service: 'billing',
  tenant: 't1',
  localPort: 3000,
  server: 'http://dev:7000',
  interceptId: 'icp_abc',
  leaseTtlMs: 30_000,
};
const KEY = { up: '\u001B[A', down: '\u001B[B', enter: '\r', esc: '\u001B', ctrlC: '\u0003' };

let n = 0;
function request(
  model: LiveLogModel,
  path: string,
  status = 200,
  extra: Partial<RequestEvent> = {},
): RequestEvent {
  const requestId = `r${++n}`;
  const startedAt = Date.now();
  model.apply({ kind: 'http-start', requestId, interceptId: 'icp_abc', startedAt, method: 'GET', path });
  const e: RequestEvent = {
    kind: 'http',
    requestId,
    interceptId: 'icp_abc',
    startedAt,
    method: 'GET',
    path,
    status,
    durationMs: 12.5,
    headersMs: 4.25,
    bytesIn: 0,
    bytesOut: 2048,
    requestHeaders: { host: 'billing.dev', accept: 'application/json' },
    responseHeaders: { 'content-type': 'application/json' },
    ...extra,
  };
  model.apply(e);
  return e;
}

type Rendered = ReturnType<typeof render>;
const mounted: Rendered[] = [];
afterEach(() => {
  for (const r of mounted.splice(0)) r.unmount();
});

function mount(model = new LiveLogModel(INFO)) {
  const onQuit = vi.fn();
  const onInterrupt = vi.fn();
  const r = render(<LiveLog model={model} onQuit={onQuit} onInterrupt={onInterrupt} batchMs={20} />);
  mounted.push(r);
  /** The live part as last drawn, without colours. */
  const screen = () => stripVTControlCharacters(r.lastFrame() ?? '');
  /** Everything written so far: the printed lines (request log) and every live frame. */
  const all = () => stripVTControlCharacters(r.frames.join(''));
  const until = (check: (live: string, all: string) => boolean, what: string) =>
    vi.waitFor(
      () => {
        if (!check(screen(), all())) throw new Error(`waiting for ${what}; live part:\n${screen()}`);
      },
      { timeout: 3_000, interval: 10 },
    );
  const press = async (key: string) => {
    r.stdin.write(key);
    await new Promise((res) => setTimeout(res, 5));
  };
  return { model, r, screen, all, until, press, onQuit, onInterrupt };
}

describe('LiveLog', () => {
  it('shows the intercept, the tunnel state, rate and errors, and one line per request', async () => {
    const ui = mount();
    await ui.until((_, all) => all.includes('Intercepting billing for tenant t1'), 'the banner');
    expect(ui.all()).toContain('icp_abc');
    expect(ui.all()).toContain('server http://dev:7000');
    await ui.until(
      (live) => /● connected · billing\/t1 → :3000 · 0 req\/s · 0 requests · 0 errors/.test(live),
      'the status bar',
    );

    request(ui.model, '/invoices/42', 200);
    request(ui.model, '/boom', 503);
    await ui.until((live, all) => all.includes('/boom') && live.includes('2 requests'), 'the request lines');
    expect(ui.all()).toMatch(/GET\s+\/invoices\/42\s+200\s+12\.5 ms\s+2\.0 KiB/);
    expect(ui.all()).toMatch(/GET\s+\/boom\s+503/);
    expect(ui.screen()).toMatch(/2 requests · 1 error /);
  });

  it('colours the status by class', async () => {
    const level = chalk.level;
    chalk.level = 1;
    const ui = mount();
    request(ui.model, '/ok', 201);
    request(ui.model, '/gone', 404);
    request(ui.model, '/err', 500);
    await ui.until((_, all) => all.includes('/err'), 'lines');
    const raw = ui.r.frames.join('');
    chalk.level = level;
    expect(raw).toContain('\u001B[32m201');
    expect(raw).toContain('\u001B[33m404');
    expect(raw).toContain('\u001B[31m500');
  });

  it('renders in batches, not once per request', async () => {
    const ui = mount();
    await ui.until((_, all) => all.includes('Intercepting'), 'the banner');
    const before = ui.r.frames.length;
    for (let i = 0; i < 500; i++) request(ui.model, `/bulk/${i}`);
    await ui.until((_, all) => all.includes('/bulk/499'), 'the last line');
    expect(ui.r.frames.length - before).toBeLessThan(20);
    expect(ui.all()).toContain('/bulk/0 ');
  });

  it('shows requests in flight live, and stops ticking when nothing happens', async () => {
    const ui = mount();
    ui.model.apply({
      kind: 'http-start',
      requestId: 'slow',
      interceptId: 'icp_abc',
      startedAt: Date.now(),
      method: 'POST',
      path: '/slow',
    });
    await ui.until((s) => /POST\s+\/slow/.test(s) && s.includes('1 in flight'), 'the in-flight line');
    ui.model.apply({
      kind: 'http',
      requestId: 'slow',
      interceptId: 'icp_abc',
      startedAt: Date.now(),
      method: 'POST',
      path: '/slow',
      status: 201,
      durationMs: 300,
      bytesIn: 10,
      bytesOut: 10,
      requestHeaders: {},
      responseHeaders: {},
    });
    await ui.until(
      (live, all) => !live.includes('in flight') && /POST\s+\/slow\s+201/.test(all),
      'the completed line',
    );
  });

  it('shows an open WebSocket as open, then one line with its life; enter shows every field', async () => {
    const ui = mount();
    request(ui.model, '/before');
    const startedAt = Date.now() - 12_000;
    ui.model.apply({
      kind: 'http-start',
      requestId: 'ws1',
      interceptId: 'icp_abc',
      startedAt,
      method: 'GET',
      path: '/chat',
      upgrade: 'websocket',
    });
    await ui.until((s) => /WS\s+\/chat\s+open 1[23] s/.test(s), 'the open WebSocket');
    // Open for a while, not a request in flight.
    expect(ui.screen()).toContain('1 WebSocket open');
    expect(ui.screen()).not.toContain('in flight');
    await ui.until((s) => /WS\s+\/chat\s+open 1[34] s/.test(s), 'its time ticking');

    const closed: WebSocketEvent = {
      kind: 'websocket',
      requestId: 'ws1',
      interceptId: 'icp_abc',
      startedAt,
      path: '/chat',
      protocol: 'websocket',
      status: 101,
      durationMs: 12_300,
      bytesIn: 1200,
      bytesOut: 3500,
      messagesIn: 3,
      messagesOut: 1,
      closedBy: 'local',
      closeFrom: 'caller',
      code: 1000,
      reason: 'bye',
    };
    ui.model.apply(closed);
    await ui.until(
      (live, all) => !live.includes('open') && all.includes('closed by caller'),
      'the closed WebSocket line',
    );
    expect(ui.all()).toMatch(
      /WS\s+\/chat\s+101\s+12\.3 s\s+↑1\.2 KiB ↓3\.4 KiB\s+closed by caller 1000 "bye"/,
    );
    // The static line and the status bar can land in separate writes: wait for the bar.
    await ui.until((s) => /2 requests · 0 errors/.test(s), 'the status bar counting it once, with no error');

    await ui.press(KEY.up);
    await ui.until((s) => /› \S+\s+WS\s+\/chat\s+101\s+12\.3 s/.test(s), 'the WebSocket selected');
    await ui.press(KEY.enter);
    await ui.until((s) => s.includes('from the caller'), 'its details');
    const details = ui.screen();
    expect(details).toContain('WS /chat → 101');
    expect(details).toMatch(/open for 12\.3 s · WebSocket/);
    expect(details).toContain('from the caller: 1.2 KiB in 3 messages');
    expect(details).toContain('from the local service: 3.4 KiB in 1 message');
    expect(details).toContain('closed by caller 1000 "bye"');
    expect(details).toContain('connection ended first by the local service');
    await ui.press(KEY.up);
    await ui.until((s) => s.includes('GET /before → 200'), 'the request before it, in the details');
  });

  it('shows a WebSocket that closed abnormally in yellow', async () => {
    const level = chalk.level;
    chalk.level = 1;
    const ui = mount();
    ui.model.apply({
      kind: 'websocket',
      requestId: 'ws2',
      interceptId: 'icp_abc',
      startedAt: Date.now(),
      path: '/feed',
      protocol: 'websocket',
      status: 101,
      durationMs: 800,
      bytesIn: 10,
      bytesOut: 20,
      closedBy: 'caller',
    });
    await ui.until((_, all) => all.includes('/feed'), 'the line');
    const raw = ui.r.frames.join('');
    chalk.level = level;
    expect(raw).toContain('\u001B[32m101');
    expect(raw).toContain('\u001B[33mdropped by caller (no close frame)');
  });

  it('p pauses the view (lines wait, counters go on) and resumes it', async () => {
    const ui = mount();
    await ui.until((_, all) => all.includes('Intercepting'), 'the banner');
    await ui.press('p');
    await ui.until((s) => s.includes('PAUSED'), 'paused');
    request(ui.model, '/while-paused');
    await ui.until((s) => s.includes('PAUSED (1 waiting)') && s.includes('1 request '), 'the buffered count');
    expect(ui.all()).not.toContain('/while-paused');
    await ui.press('p');
    await ui.until((live, all) => all.includes('/while-paused') && !live.includes('PAUSED'), 'resumed');
  });

  it('↑/↓ select a request, enter opens details with masked credentials, esc closes', async () => {
    const ui = mount();
    request(ui.model, '/first');
    request(ui.model, '/secret', 401, {
      requestHeaders: {
        host: 'billing.dev',
        // Deliberately unmasked input: the view masks again.
        authorization: 'Bearer sk-live-abcdef',
        cookie: 'session=xyz123',
        'x-api-key': 'key-999',
        'x-request-id': 'req-1',
      },
      responseHeaders: { 'set-cookie': 'sid=zzz; HttpOnly', 'content-type': 'text/plain' },
    });
    request(ui.model, '/last');
    await ui.until((_, all) => all.includes('/last'), 'lines');

    await ui.press(KEY.up);
    await ui.until((s) => s.includes('recent requests'), 'the selection');
    await ui.press(KEY.up);
    await ui.until((s) => /› \S+\s+GET\s+\/secret\s+401/.test(s), 'the second-newest selected');
    await ui.press(KEY.enter);
    await ui.until((s) => s.includes('Request headers'), 'the details');
    const details = ui.screen();
    expect(details).toContain('GET /secret → 401');
    expect(details).toMatch(/headers 4\.3 ms · total 12\.5 ms/);
    expect(details).toContain('authorization: ***');
    expect(details).toContain('cookie: ***');
    expect(details).toContain('x-api-key: ***');
    expect(details).toContain('set-cookie: ***');
    expect(details).toContain('x-request-id: req-1');
    expect(details).toContain('content-type: text/plain');
    expect(ui.all()).not.toContain('sk-live-abcdef');
    expect(ui.all()).not.toContain('xyz123');
    expect(ui.all()).not.toContain('zzz');

    // ↑/↓ with details open move the details along.
    await ui.press(KEY.down);
    await ui.until((s) => s.includes('GET /last → 200'), 'the next request in the details');
    await ui.press(KEY.up);
    await ui.until((s) => s.includes('GET /secret → 401'), 'back to the previous one');
    await ui.press(KEY.esc);
    await ui.until(
      (s) => !s.includes('Request headers') && s.includes('recent requests'),
      'back to the list',
    );
    await ui.press(KEY.down);
    await ui.press(KEY.down);
    await ui.until((s) => !s.includes('recent requests'), 'the selection closed past the newest');
  });

  it('? shows the keys; q and Ctrl-C leave', async () => {
    const ui = mount();
    await ui.until((_, all) => all.includes('Intercepting'), 'the banner');
    await ui.press('?');
    await ui.until((s) => s.includes('pause / resume the view'), 'the help');
    expect(ui.screen()).toContain('leave the intercept');
    // q and Ctrl-C exit with different codes: the help must not call them alike.
    expect(ui.screen()).toMatch(/q\s+leave the intercept and exit 0/);
    expect(ui.screen()).toMatch(/ctrl-c\s+leave the intercept and exit 130/);
    expect(ui.screen()).not.toContain('like Ctrl-C');
    await ui.press('?');
    await ui.until((s) => !s.includes('pause / resume the view'), 'the help closed');
    await ui.press('q');
    expect(ui.onQuit).toHaveBeenCalledTimes(1);
    await ui.press(KEY.ctrlC);
    expect(ui.onInterrupt).toHaveBeenCalledTimes(1);
  });

  it('shows reconnecting with a countdown, an overdue lease, and the end', async () => {
    const ui = mount();
    ui.model.apply({
      kind: 'tunnel',
      state: 'reconnecting',
      retryInMs: 5_000,
      error: 'socket closed',
      at: Date.now(),
    });
    await ui.until((s) => /reconnecting in [45] s/.test(s), 'the countdown');
    expect(ui.all()).toContain('tunnel lost (socket closed); reconnecting');
    await ui.until((s) => /reconnecting in [34] s/.test(s) && !/in 5 s/.test(s), 'the countdown to tick');
    ui.model.apply({ kind: 'tunnel', state: 'connected', at: Date.now() });
    await ui.until((s) => s.includes('● connected'), 'connected again');

    const lease = new LiveLogModel({ ...INFO, leaseTtlMs: 2_000 });
    const ui2 = mount(lease);
    await ui2.until((s) => /lease expiring in [01] s|lease expired/.test(s), 'the lease warning');
    lease.apply({ kind: 'lease', interceptId: 'icp_abc', expiresAt: Date.now() + 2_000, at: Date.now() });
    await ui2.until((s) => !s.includes('lease expir'), 'the warning gone after a renewal');
    lease.apply({ kind: 'ended', reason: 'left (q)', end: { kind: 'left', detail: 'q' }, at: Date.now() });
    await ui2.until((s) => s.includes('ended: left (q)'), 'the end');
  });
});
