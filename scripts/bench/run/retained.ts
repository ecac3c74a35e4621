/**
 * Memory kept per request: the live heap after a full collection and RSS of the server agent
 * and of a foreground intercept, after a warm-up and again after `--requests` more requests.
 */
import { fmt, freePort, log, memOf, start, stopAll, table, wrk } from '../lib.ts';
import { ok } from './measure.ts';
import { type Kelsingra, NODE, opts, SERVICES, startForeground, startKelsingra, VIA } from './setup.ts';

// ---------------------------------------------------------------- memory kept per request

/**
 * wrk as tenant t1 for about `n` requests at the rate `rps` measured just before (wrk stops on
 * time, not on a count; the figures divide by the requests it reports).
 */
function wrkRequests(ks: Kelsingra, n: number, rps: number) {
  const seconds = Math.min(300, Math.max(3, Math.ceil(n / rps)));
  return wrk(`${ks.data}/`, { conns: 20, seconds, headers: VIA('t1') });
}

/** Each agent opens an inspector on a port of its choosing and names it on stderr. */
const INSPECT = { NODE_OPTIONS: '--inspect=127.0.0.1:0' };

/** The inspector a process announced last (bin/run.js re-executes itself: the first one is gone). */
function inspectorUrl(output: string): string | undefined {
  return [...output.matchAll(/Debugger listening on (ws:\/\/\S+)/g)].at(-1)?.[1];
}

/** Live heap of the process behind inspector `url` after a full collection, in bytes. */
async function heapAfterGc(url: string): Promise<number> {
  const ws = new WebSocket(url);
  await new Promise((res, rej) => {
    ws.addEventListener('open', res, { once: true });
    ws.addEventListener('error', () => rej(new Error(`inspector ${url} refused`)), { once: true });
  });
  let nextId = 1;
  /** One DevTools protocol call; `T` is its result's shape. */
  const call = <T>(method: string) =>
    new Promise<T>((res, rej) => {
      const id = nextId++;
      const onMessage = (ev: MessageEvent) => {
        const m: { id?: number; result?: T } = JSON.parse(String(ev.data));
        if (m.id !== id) return;
        ws.removeEventListener('message', onMessage);
        m.result ? res(m.result) : rej(new Error(`${method} failed: ${ev.data}`));
      };
      ws.addEventListener('message', onMessage);
      ws.send(JSON.stringify({ id, method }));
    });
  try {
    await call('HeapProfiler.collectGarbage');
    return (await call<{ usedSize: number }>('Runtime.getHeapUsage')).usedSize;
  } finally {
    ws.close();
  }
}

/** One retained-memory figure of one agent, in bytes. */
interface Figure {
  what: string;
  before: number;
  after: number;
  /** A figure with a goal (the heap; RSS is reported only). */
  goal?: true;
  perRequest: number;
}

/**
 * What each agent keeps per intercepted request: the live heap after a full collection (through
 * each agent's inspector) and RSS (VmRSS), of the server agent and of a foreground intercept
 * (the client agent), after a warm-up and again after `--requests` more.
 */
export async function benchRetained() {
  const warmupRequests = Math.max(10_000, Math.round(opts.requests / 5));
  log(
    `\n== Memory kept per request: ${warmupRequests} intercepted requests of warm-up, then ${opts.requests} more (wrk -t1 -c20)`,
  );
  const localPort = await freePort();
  const basePort = await freePort();
  await start('local service', NODE, [SERVICES, 'service', String(localPort), 'local'], { ready: /ready/ });
  await start('base service', NODE, [SERVICES, 'service', String(basePort), 'base'], { ready: /ready/ });
  const ks = await startKelsingra('retained', `http://127.0.0.1:${basePort}`, { env: INSPECT });
  const fg = await startForeground(ks, localPort, 'json', INSPECT);
  const agents = [
    { what: 'server agent', pid: ks.proc.pid, inspector: inspectorUrl(ks.proc.output()) },
    { what: 'client agent', pid: fg.pid, inspector: inspectorUrl(fg.output()) },
  ].map(({ what, pid, inspector }) => {
    if (!inspector) throw new Error(`${what} announced no inspector`);
    return { what, pid, inspector };
  });
  const sample = async () =>
    Promise.all(
      agents.map(async (a) => ({ heap: await heapAfterGc(a.inspector), rss: memOf(a.pid).rssMiB * 2 ** 20 })),
    );
  const rate = await wrk(`${ks.data}/`, { conns: 20, seconds: 3, headers: VIA('t1') });
  await wrkRequests(ks, warmupRequests, rate.rps);
  const before = await sample();
  const load = await wrkRequests(ks, opts.requests, rate.rps);
  const after = await sample();
  const figures = agents.flatMap((a, i): Figure[] => {
    const b = before[i];
    const e = after[i];
    if (!b || !e) throw new Error(`no sample of the ${a.what}`);
    // perRequest is set below.
    return [
      {
        what: `${a.what} heap after a full GC`,
        before: b.heap,
        after: e.heap,
        goal: true,
        perRequest: Number.NaN,
      },
      { what: `${a.what} RSS`, before: b.rss, after: e.rss, perRequest: Number.NaN },
    ];
  });
  for (const f of figures) {
    f.perRequest = (f.after - f.before) / load.requests;
    log(
      `  ${f.what}: ${fmt(f.before / 2 ** 20, 1)} → ${fmt(f.after / 2 ** 20, 1)} MiB, ${fmt(f.perRequest, 0)} B/request`,
    );
  }
  await fg.leave();
  await stopAll();
  return { requests: load.requests, warmupRequests, rps: load.rps, figures };
}

/** Its table in the report, and its rows in the summary. */
export function reportRetained(rt: Awaited<ReturnType<typeof benchRetained>>, rows: string[][]) {
  log(
    `\nBytes retained per intercepted request (${rt.requests} requests after ${rt.warmupRequests} of warm-up, wrk -t1 -c20):`,
  );
  log(
    table([
      ['Agent', 'after warm-up', 'at the end', 'bytes per request'],
      ...rt.figures.map((f) => [
        f.what,
        `${fmt(f.before / 2 ** 20, 1)} MiB`,
        `${fmt(f.after / 2 ** 20, 1)} MiB`,
        fmt(f.perRequest, 0),
      ]),
    ]),
  );
  for (const f of rt.figures.filter((x) => x.goal))
    rows.push([
      `R. ${f.what}: bytes retained per request`,
      fmt(f.perRequest, 0),
      '≈ 0 (≤ 200)',
      ok(f.perRequest <= 200),
    ]);
}
