/**
 * The dashboard's reconnects, driven by scripted event streams: what a user sees when the
 * server goes away after the dashboard was live, and when it never was.
 */
import { describe, expect, it } from 'vitest';
import { followDashboard } from '../../src/client/dashboard/dashboard-feed.js';
import { DashboardModel } from '../../src/client/dashboard/dashboard-model.js';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';
import type { StreamEvent } from '../../src/shared/protocol.js';
import { interceptView } from '../support/fixtures.js';

type Script = (signal: AbortSignal) => AsyncIterable<StreamEvent>;

const liveThen = (after: 'close' | Error, extra: StreamEvent[] = []): Script =>
  async function* () {
    yield* extra;
    yield { type: 'live', at: Date.now() };
    if (after instanceof Error) throw after;
  };

const failing = (err: Error): Script =>
  // biome-ignore lint/correctness/useYield: a stream that fails before its first event
  async function* () {
    throw err;
  };

/** Runs each script once, in order; the last one stays open until the signal aborts. */
function scripted(scripts: Script[]) {
  let opened = 0;
  const open = (signal: AbortSignal): AsyncIterable<StreamEvent> => {
    const script = scripts[Math.min(opened, scripts.length - 1)] as Script;
    opened++;
    return script(signal);
  };
  return { open, opened: () => opened };
}

const until = async (cond: () => boolean, ms = 2000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
};

const hangs: Script = (signal) => ({
  async *[Symbol.asyncIterator]() {
    yield { type: 'live', at: Date.now() } as StreamEvent;
    await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
  },
});

describe('dashboard feed', () => {
  it('fails at once when the first stream never goes live, naming the server', async () => {
    const model = new DashboardModel();
    const feed = followDashboard(model, {
      open: scripted([async function* () {}]).open,
      server: 'http://dev:8080',
      signal: new AbortController().signal,
    });
    await expect(feed.done).rejects.toMatchObject({
      message: expect.stringContaining('http://dev:8080 closed the event stream before it was live'),
      exitCode: ExitCode.unreachable,
    });
  });

  it('reconnects after a live stream breaks, says so meanwhile, and keeps what it knew', async () => {
    const abort = new AbortController();
    const model = new DashboardModel();
    const created: StreamEvent = {
      type: 'intercept',
      action: 'created',
      intercept: interceptView('i1'),
      at: Date.now(),
    };
    const s = scripted([
      liveThen(new Error('socket hang up'), [created]),
      failing(new Error('ECONNREFUSED')),
      failing(new Error('ECONNREFUSED')),
      hangs,
    ]);
    const states: string[] = [];
    model.on('change', () => states.push(`${model.connection}:${model.lastConnectionError ?? ''}`));
    const feed = followDashboard(model, { open: s.open, server: 'x', signal: abort.signal, retryMs: 10 });
    await feed.live;
    await until(() => s.opened() === 4 && model.connection === 'live');
    expect(states).toContain('reconnecting:socket hang up');
    expect(states).toContain('reconnecting:ECONNREFUSED');
    expect(model.snapshot().intercepts.map((i) => i.id)).toEqual(['i1']);
    abort.abort();
    await expect(feed.done).resolves.toBeUndefined();
  });

  it('never retries a refused token, even after it was live', async () => {
    const model = new DashboardModel();
    const refused = new KelsingraError('token refused', ExitCode.auth, 'check KELSINGRA_TOKEN');
    const s = scripted([liveThen(new Error('reset')), failing(refused)]);
    const feed = followDashboard(model, {
      open: s.open,
      server: 'x',
      signal: new AbortController().signal,
      retryMs: 5,
    });
    await expect(feed.done).rejects.toBe(refused);
    expect(s.opened()).toBe(2);
  });
});
