/**
 * The dashboard's Ink view, rendered with ink-testing-library: the table, the upstream
 * section, selecting an intercept, its live log on enter, esc back, ? keys, q quits.
 */
import { render } from 'ink-testing-library';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { DashboardModel } from '../../src/client/dashboard/dashboard-model.js';
import type { InterceptView } from '../../src/shared/protocol.js';
import { Dashboard } from '../../src/ui/Dashboard.js';
import { interceptView, requestRecord as req, webSocketRecord } from '../support/fixtures.js';

const T0 = Date.now();
const KEY = { up: '\u001B[A', down: '\u001B[B', enter: '\r', esc: '\u001B' };

// biome-ignore lint/suspicious/noControlCharactersInRegex: stripping ANSI escapes
const plain = (s: string | undefined) => (s ?? '').replace(/\u001B\[[0-9;]*m/g, '');

const view = (id: string, over?: Partial<InterceptView>) => interceptView(id, over, T0);

function setup(props: Partial<Parameters<typeof Dashboard>[0]> = {}) {
  const model = new DashboardModel();
  model.apply({
    type: 'snapshot',
    at: T0,
    intercepts: [view('icp_a'), view('icp_b', { service: 'orders', tenant: 't2', holder: 'bob' })],
    upstreams: [
      {
        service: 'billing',
        url: 'http://upstream:9001/',
        state: 'healthy',
        lastOkAt: new Date(T0).toISOString(),
      },
      {
        service: 'billing',
        url: 'http://upstream:9003/',
        state: 'ejected',
        lastError: '5 answers in a row were 5xx',
        lastErrorAt: new Date(T0).toISOString(),
      },
      {
        service: 'orders',
        url: 'http://upstream:9002/',
        state: 'unhealthy',
        lastError: 'ECONNREFUSED',
        lastErrorAt: new Date(T0).toISOString(),
      },
    ],
  });
  model.apply({ type: 'live', at: T0 });
  const onQuit = vi.fn();
  const app = render(
    <Dashboard
      model={model}
      scope="all intercepts"
      server="http://k:7700"
      throttleMs={10}
      onQuit={onQuit}
      {...props}
    />,
  );
  return { model, app, onQuit, frame: () => plain(app.lastFrame()) };
}

/** Polls the rendered frame (renders are batched, and stdin is read asynchronously). */
async function frameMatching(
  frame: () => string,
  test: (f: string) => boolean,
  what: string,
): Promise<string> {
  await vi.waitFor(
    () => {
      if (!test(frame())) throw new Error(`frame never showed ${what}:\n${frame()}`);
    },
    { timeout: 3000, interval: 10 },
  );
  return frame();
}

let unmount: (() => void) | undefined;
afterEach(() => {
  unmount?.();
  unmount = undefined;
});

describe('Dashboard (Ink)', () => {
  it('renders the intercept table and the upstream health', async () => {
    const { app, model, frame } = setup();
    unmount = app.unmount;
    let f = frame();
    expect(f).toContain('Kelsingra dashboard');
    expect(f).toContain('all intercepts');
    expect(f).toContain('● live');
    expect(f).toMatch(/SERVICE\s+TENANT\s+HOLDER\s+REQ\/S\s+ERR%\s+P50\s+P99\s+LAST REQUEST/);
    expect(f).toMatch(/›\s*billing\s+t1\s+alice\s+–/);
    expect(f).toMatch(/orders\s+t2\s+bob/);
    expect(f).toMatch(/UPSTREAMS/);
    expect(f).toMatch(/billing\s+http:\/\/upstream:9001\/\s+healthy/);
    expect(f).toMatch(/billing\s+http:\/\/upstream:9003\/\s+ejected: 5 answers in a row were 5xx/);
    expect(f).toMatch(/orders\s+http:\/\/upstream:9002\/\s+unhealthy: ECONNREFUSED/);

    model.apply(req('icp_a', { status: 200, durationMs: 4 }));
    model.apply(req('icp_a', { status: 503, durationMs: 40, path: '/boom' }));
    f = await frameMatching(frame, (x) => x.includes('/boom'), 'the last request');
    expect(f).toMatch(
      /billing\s+t1\s+alice\s+\d+(\.\d)?\s+50%\s+4\.0 ms\s+40 ms\s+\d\d:\d\d:\d\d GET \/boom 503/,
    );

    model.apply({
      type: 'intercept',
      action: 'ended',
      intercept: view('icp_b', { service: 'orders' }),
      at: Date.now(),
    });
    f = await frameMatching(frame, (x) => !/orders\s+t2\s+bob/.test(x), 'the ended intercept gone');
    model.apply({
      type: 'intercept',
      action: 'created',
      intercept: view('icp_c', { service: 'search', tenant: 't3' }),
      at: Date.now(),
    });
    await frameMatching(frame, (x) => /search\s+t3\s+alice/.test(x), 'the new intercept');
  });

  it('says what to do when there is nothing to show', () => {
    const model = new DashboardModel();
    model.apply({ type: 'snapshot', at: T0, intercepts: [], upstreams: [] });
    const app = render(
      <Dashboard model={model} scope="your intercepts (alice)" emptyHint="You hold no intercepts." />,
    );
    unmount = app.unmount;
    expect(plain(app.lastFrame())).toContain('You hold no intercepts.');
  });

  it('↑/↓ select, enter opens the live log (history merged, newest at the bottom), esc goes back', async () => {
    const history = [req('icp_b', { path: '/from-history', service: 'orders', at: Date.now() - 5000 })];
    const loadHistory = vi.fn(async () => history);
    const { app, model, frame } = setup({ loadHistory });
    unmount = app.unmount;
    model.apply(req('icp_a', { path: '/not-this-one' }));
    model.apply(req('icp_b', { path: '/orders/1', service: 'orders' }));
    await frameMatching(frame, (x) => x.includes('/orders/1'), 'the orders request in the table');

    app.stdin.write(KEY.down);
    await frameMatching(frame, (x) => /›\s*orders/.test(x), 'orders selected');
    app.stdin.write(KEY.up);
    await frameMatching(frame, (x) => /›\s*billing/.test(x), 'billing selected');
    app.stdin.write(KEY.down);
    await frameMatching(frame, (x) => /›\s*orders/.test(x), 'orders selected again');
    app.stdin.write(KEY.enter);

    let f = await frameMatching(frame, (x) => x.includes('/from-history'), 'the log with its history');
    expect(loadHistory.mock.calls, f).toEqual([['icp_b']]);
    expect(f).toMatch(/orders · tenant t2 · bob/);
    expect(f).not.toContain('/not-this-one');
    expect(f).not.toContain('SERVICE');
    expect(f.indexOf('/from-history')).toBeLessThan(f.indexOf('/orders/1'));

    model.apply(req('icp_b', { path: '/orders/2', service: 'orders', status: 500 }));
    model.apply(req('icp_a', { path: '/still-not-this-one' }));
    f = await frameMatching(frame, (x) => x.includes('/orders/2'), 'a new line in the log');
    expect(f.indexOf('/orders/1')).toBeLessThan(f.indexOf('/orders/2'));
    expect(f).not.toContain('/still-not-this-one');

    model.apply({
      type: 'intercept',
      action: 'ended',
      reason: 'expired',
      intercept: view('icp_b', { service: 'orders' }),
      at: Date.now(),
    });
    await frameMatching(
      frame,
      (x) => x.includes('intercept ended: lease expired'),
      'the end of the intercept',
    );

    app.stdin.write(KEY.esc);
    f = await frameMatching(frame, (x) => x.includes('SERVICE'), 'the table again');
    expect(f).toContain('/still-not-this-one');
  });

  it('shows a WebSocket as one entry in the table and the live log: lifetime, bytes each way, how it closed', async () => {
    const { app, model, frame } = setup();
    unmount = app.unmount;
    model.apply(req('icp_a', { path: '/invoices/9', durationMs: 40 }));
    model.apply(webSocketRecord('icp_a', {}, { closeFrom: 'local', code: 1011 }));
    let f = await frameMatching(frame, (x) => x.includes('/chat'), 'the WebSocket in the table');
    expect(f).toMatch(
      /billing\s+t1\s+alice\s+\S+\s+0%\s+40 ms\s+40 ms\s+\d\d:\d\d:\d\d WS \/chat 101 closed by local 1011/,
    );

    app.stdin.write(KEY.enter);
    f = await frameMatching(frame, (x) => x.includes('↑1.2 KiB'), 'the WebSocket in the live log');
    expect(f).toMatch(/GET\s+\/invoices\/9\s+200\s+40\.0 ms/);
    expect(f).toMatch(/WS\s+\/chat\s+101\s+12\.3 s\s+↑1\.2 KiB ↓3\.4 KiB\s+closed by local 1011/);
    expect(f).toMatch(/2 requests, 0 errors/);
  });

  it('? shows the keys and q quits', async () => {
    const { app, frame, onQuit } = setup();
    unmount = app.unmount;
    app.stdin.write('?');
    const f = await frameMatching(frame, (x) => x.includes('Keys'), 'the keys');
    expect(f).toMatch(/enter\s+open the selected intercept's live request log/);
    expect(f).toMatch(/q, ctrl-c\s+quit/);
    // The same box as the live log's panels: square corners in every view.
    expect(f).toContain('┌');
    expect(f).not.toContain('╭');
    app.stdin.write('?');
    await frameMatching(frame, (x) => x.includes('SERVICE'), 'the table again');
    app.stdin.write('q');
    await vi.waitFor(() => expect(onQuit).toHaveBeenCalledTimes(1), { timeout: 3000 });
  });

  it('batches renders: a burst of requests is one render, and an idle model renders nothing', async () => {
    const { app, model, frame } = setup({ throttleMs: 200 });
    unmount = app.unmount;
    await new Promise((r) => setTimeout(r, 300));
    const before = app.frames.length;
    for (let i = 0; i < 500; i++) model.apply(req('icp_a', { path: `/burst/${i}` }));
    await frameMatching(frame, (x) => x.includes('/burst/499'), 'the end of the burst');
    const afterBurst = app.frames.length;
    expect(afterBurst - before).toBeLessThanOrEqual(2);

    // Nothing in the window any more: no timers, no renders.
    model.apply({ type: 'upstreams', upstreams: [], at: Date.now() });
    const idle = new DashboardModel();
    idle.apply({ type: 'snapshot', at: T0, intercepts: [view('icp_a')], upstreams: [] });
    idle.apply({ type: 'live', at: T0 }); // (while connecting, a spinner does animate)
    const quiet = render(<Dashboard model={idle} scope="all intercepts" throttleMs={10} />);
    const frames = quiet.frames.length;
    await new Promise((r) => setTimeout(r, 1500));
    expect(quiet.frames.length).toBe(frames);
    quiet.unmount();
  });
});
