/**
 * gRPC unary calls/s with h2load: a grpc-js service directly, through the data port as a base
 * tenant and as an intercepted tenant, and through two bare node:http2 proxies (the ceiling).
 */
import { join } from 'node:path';
import { checkGrpc, h2load, writeRequestBody } from '../grpc.ts';
import { fmt, freePort, log, median, start, stopAll, table } from '../lib.ts';
import { cpuSeconds, ok } from './measure.ts';
import { GRPC, NODE, opts, PROTO, startIntercept, startKelsingra, VIA, WORK } from './setup.ts';

// ---------------------------------------------------------------- gRPC unary

const GRPC_CLIENTS = 5;
const GRPC_STREAMS = 10;

type GrpcKey = 'direct' | 'passthrough' | 'intercepted' | 'bare';

/** A gRPC target: `servedBy` is the service that must answer it. */
interface GrpcTarget {
  key: GrpcKey;
  label: string;
  url: string;
  headers?: Record<string, string>;
  servedBy: string;
  pids?: Record<string, number>;
}

interface GrpcRun {
  rps: number;
  cpuUs: Record<string, number>;
}

/** A target that answered the checked call: its rounds, and their medians. */
interface GrpcMeasured {
  label: string;
  unavailable?: undefined;
  runs: GrpcRun[];
  rps: number;
  cpuUs: Record<string, number>;
}

/** A target that did not, and what it answered. */
interface GrpcUnavailable {
  label: string;
  unavailable: string;
}

/**
 * gRPC unary calls/s with h2load (h2c, prior knowledge): a grpc-js service directly, through
 * the data port as a base tenant (pass-through), and as an intercepted tenant (tunnel). A
 * target that does not answer one checked call first is reported as not available, with what
 * it answered, instead of failing the run.
 */
export async function benchGrpc() {
  log(
    `\n== gRPC unary: h2load -t1 -c${GRPC_CLIENTS} -m${GRPC_STREAMS} (${GRPC_CLIENTS * GRPC_STREAMS} calls in flight), ${opts.duration} s, ${opts.rounds} rounds (median)`,
  );
  const localPort = await freePort();
  const basePort = await freePort();
  await start('local gRPC service', NODE, [GRPC, 'serve', String(localPort), 'local'], { ready: /ready/ });
  await start('base gRPC service', NODE, [GRPC, 'serve', String(basePort), 'base'], { ready: /ready/ });
  const ks = await startKelsingra('grpc', `http://127.0.0.1:${basePort}`);
  const agent = await startIntercept(ks, localPort, 'gRPC benchmark');
  const bodyFile = writeRequestBody(WORK);
  // The ceiling: the two node:http2 hops an intercepted call makes, with nothing else.
  const innerPort = await freePort();
  const outerPort = await freePort();
  const H2PROXY = join(PROTO, 'h2-proxy.ts');
  const inner = await start(
    'bare HTTP/2 proxy (inner)',
    NODE,
    [H2PROXY, String(innerPort), `http://127.0.0.1:${localPort}`],
    {
      ready: /ready/,
    },
  );
  const outer = await start(
    'bare HTTP/2 proxy (outer)',
    NODE,
    [H2PROXY, String(outerPort), `http://127.0.0.1:${innerPort}`],
    {
      ready: /ready/,
    },
  );
  const targets: GrpcTarget[] = [
    {
      key: 'direct',
      label: 'local gRPC service direct',
      url: `http://127.0.0.1:${localPort}`,
      servedBy: 'local',
    },
    {
      key: 'passthrough',
      label: 'data port, base tenant (pass-through)',
      url: ks.data,
      headers: VIA('t2'),
      servedBy: 'base',
      pids: { server: ks.proc.pid },
    },
    {
      key: 'intercepted',
      label: 'data port → tunnel → local',
      url: ks.data,
      headers: VIA('t1'),
      servedBy: 'local',
      pids: { server: ks.proc.pid, client: agent.pid },
    },
    {
      key: 'bare',
      label: 'prototype: two bare node:http2 proxies',
      url: `http://127.0.0.1:${outerPort}`,
      servedBy: 'local',
      pids: { server: outer.pid, client: inner.pid },
    },
  ];
  // Every target gets its entry in the first loop.
  const res = {} as Record<GrpcKey, GrpcMeasured | GrpcUnavailable>;
  /** The targets that answered, and their figures (the same objects as in `res`). */
  const live: GrpcTarget[] = [];
  const figures = new Map<GrpcKey, GrpcMeasured>();
  for (const t of targets) {
    const check = await checkGrpc(t.url, t.headers ?? {}, t.servedBy);
    if (check.ok) {
      live.push(t);
      // rps and cpuUs are set once the rounds are done.
      const f: GrpcMeasured = { label: t.label, runs: [], rps: Number.NaN, cpuUs: {} };
      figures.set(t.key, f);
      res[t.key] = f;
    } else {
      res[t.key] = { label: t.label, unavailable: check.why };
      log(`  ${t.label}: not available: ${check.why}`);
    }
  }
  for (let round = 1; round <= opts.rounds; round++) {
    for (const t of live) {
      const cpu0 = Object.fromEntries(Object.entries(t.pids ?? {}).map(([k, pid]) => [k, cpuSeconds(pid)]));
      const r = await h2load(t.url, {
        clients: GRPC_CLIENTS,
        streams: GRPC_STREAMS,
        seconds: opts.duration,
        warmup: opts.warmup,
        bodyFile,
        headers: t.headers,
      });
      // Includes the warm-up's calls too: CPU is read around the whole h2load run.
      const cpuUs = Object.fromEntries(
        Object.entries(t.pids ?? {}).map(([k, pid]) => [
          k,
          ((cpuSeconds(pid) - (cpu0[k] ?? Number.NaN)) / (r.calls * (1 + opts.warmup / opts.duration))) * 1e6,
        ]),
      );
      figures.get(t.key)?.runs.push({ rps: r.rps, cpuUs });
      log(`  round ${round} ${t.label.padEnd(40)} ${fmt(r.rps, 0).padStart(7)} calls/s`);
    }
  }
  for (const t of live) {
    const f = figures.get(t.key);
    if (!f) continue;
    const runs = f.runs;
    f.rps = median(runs.map((x) => x.rps));
    f.cpuUs = Object.fromEntries(
      Object.keys(t.pids ?? {}).map((k) => [k, median(runs.map((x) => x.cpuUs[k] ?? Number.NaN))]),
    );
  }
  await agent.leave();
  await stopAll();
  return res;
}

/** Its table in the report, and its rows in the summary. */
export function reportGrpc(g: Awaited<ReturnType<typeof benchGrpc>>, rows: string[][]) {
  log(`\ngRPC unary (h2load -t1 -c${GRPC_CLIENTS} -m${GRPC_STREAMS}, medians of ${opts.rounds}):`);
  // NaN (n/a in the table) when the direct call was not available.
  const rpsOf = (r: GrpcMeasured | GrpcUnavailable) => (r.unavailable === undefined ? r.rps : Number.NaN);
  const d = rpsOf(g.direct);
  log(
    table([
      ['Target', 'calls/s', '÷ direct', 'server side CPU/call (µs)', 'client side CPU/call (µs)'],
      ...(['direct', 'passthrough', 'intercepted', 'bare'] as const).map((k) => {
        const r = g[k];
        return r.unavailable !== undefined
          ? [r.label, `not available: ${r.unavailable}`, '—', '—', '—']
          : [
              r.label,
              fmt(r.rps, 0),
              fmt(r.rps / d, 2),
              r.cpuUs.server === undefined ? '—' : fmt(r.cpuUs.server, 1),
              r.cpuUs.client === undefined ? '—' : fmt(r.cpuUs.client, 1),
            ];
      }),
    ]),
  );
  for (const [k, what] of [
    ['passthrough', 'pass-through'],
    ['intercepted', 'intercepted'],
    ['bare', 'two bare node:http2 proxies (the ceiling)'],
  ] as const) {
    const ratio = rpsOf(g[k]) / d;
    rows.push([
      `G. gRPC unary ${what} calls/s / direct`,
      g[k].unavailable ? 'not available' : fmt(ratio, 2),
      k === 'intercepted' ? '≥ 0.35' : '—',
      g[k].unavailable ? 'MISSED' : k === 'intercepted' ? ok(ratio >= 0.35) : '—',
    ]);
  }
}
