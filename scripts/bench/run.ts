#!/usr/bin/env node
/**
 * Kelsingra benchmarks, all in one run on one machine (see docs/BENCHMARKS.md).
 *
 *   npm run bench                                  all three benchmarks
 *   npm run bench -- passthrough intercept         a subset (passthrough, intercept, transfer, liveview, trickle, gateway)
 *   node scripts/bench/run.ts --rounds 1 --duration 10 --profile /tmp/prof --json out.json
 *
 * Options: --rounds N (3; medians are reported), --duration S (5; per wrk measurement),
 * --warmup S (2), --conns N (50), --bytes N (1 GiB per transfer direction),
 * --upstream nginx|node (nginx: the fast upstream for the pass-through benchmark),
 * --profile DIR (server and client agents run with --cpu-prof, profiles land in DIR),
 * --trickles N (1000 slow uploads of one tenant in the trickle benchmark),
 * --json FILE (raw results).
 *
 * Every process it needs (nginx, upstream, proxies, server agent, client agent) is started
 * here on free 127.0.0.1 ports and stopped before it exits, also on Ctrl-C or failure.
 * wrk always runs with one thread: the machine this was written for has 2 cores, and the load
 * generator competes with the proxy under test for them.
 */
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { benchGateway } from './gateway.ts';
import {
  cleanupAndExit,
  ensureTools,
  fmt,
  log,
  type MachineInfo,
  machineInfo,
  reportFailure,
  stopAll,
  table,
} from './lib.ts';
import {
  benchGrpc,
  GRPC_CLIENTS,
  GRPC_STREAMS,
  type GrpcMeasured,
  type GrpcUnavailable,
} from './run/grpc-bench.ts';
import { benchIntercept } from './run/intercept.ts';
import { benchLiveView } from './run/liveview.ts';
import { tunnelTable } from './run/measure.ts';
import { benchPassthrough } from './run/passthrough.ts';
import { benchProto } from './run/proto.ts';
import { benchRetained } from './run/retained.ts';
import { benches, opts, WORK } from './run/setup.ts';
import { benchTransfer } from './run/transfer.ts';
import { benchTrickle } from './run/trickle.ts';

// ---------------------------------------------------------------- report

const ok = (pass: boolean) => (pass ? 'met' : 'MISSED');

/** Everything a run records (--json writes it). */
interface Results extends MachineInfo {
  opts: typeof opts;
  passthrough?: Awaited<ReturnType<typeof benchPassthrough>>;
  intercept?: Awaited<ReturnType<typeof benchIntercept>>;
  grpc?: Awaited<ReturnType<typeof benchGrpc>>;
  transfer?: Awaited<ReturnType<typeof benchTransfer>>;
  retained?: Awaited<ReturnType<typeof benchRetained>>;
  proto?: Awaited<ReturnType<typeof benchProto>>;
  liveview?: Awaited<ReturnType<typeof benchLiveView>>;
  trickle?: Awaited<ReturnType<typeof benchTrickle>>;
  gateway?: Awaited<ReturnType<typeof benchGateway>>;
}

function report(results: Results) {
  const rows = [['Benchmark', 'Figure', 'Goal', 'Result']];
  const p = results.passthrough;
  if (p) {
    log(`\nPass-through (${opts.upstream} upstream, wrk -t1, medians of ${opts.rounds}):`);
    log(
      table([
        [
          'Target',
          `req/s @${opts.conns} conns`,
          `p99 @${opts.conns} (ms)`,
          'p50 @1 conn (ms)',
          'p50 added vs direct (ms)',
        ],
        ...(['direct', 'nginx', 'replyFrom', 'kelsingra'] as const).map((k) => [
          p[k].label,
          fmt(p[k].rps, 0),
          fmt(p[k].p99, 2),
          fmt(p[k].p50c1, 3),
          k === 'direct' ? '—' : fmt(p[k].p50c1 - p.direct.p50c1, 3),
        ]),
      ]),
    );
    const vsNginx = p.kelsingra.rps / p.nginx.rps;
    const vsRf = p.kelsingra.rps / p.replyFrom.rps;
    const added = p.kelsingra.p50c1 - p.direct.p50c1;
    rows.push(['1. pass-through req/s, kelsingra / nginx', fmt(vsNginx, 2), '≥ 0.30', ok(vsNginx >= 0.3)]);
    rows.push(['1. pass-through req/s, kelsingra / reply-from', fmt(vsRf, 2), '> 1.00', ok(vsRf > 1)]);
    rows.push(['1. p50 added at 1 connection (ms)', fmt(added, 3), '≤ 0.200', ok(added <= 0.2)]);
  }
  const i = results.intercept;
  if (i) {
    log(`\nIntercepted (wrk -t1, medians of ${opts.rounds}):`);
    log(tunnelTable(i, ['direct', 'ssh', 'intercepted']));
    const ratio = i.intercepted.rps / i.direct.rps;
    const vsSsh = i.intercepted.rps / i.ssh.rps;
    const added = i.intercepted.p50c1 - i.direct.p50c1;
    rows.push(['2. ssh -R req/s / direct (baseline)', fmt(i.ssh.rps / i.direct.rps, 2), '—', '—']);
    rows.push(['2. intercepted req/s / direct', fmt(ratio, 2), '≥ 0.35', ok(ratio >= 0.35)]);
    rows.push(['2. intercepted req/s / ssh -R', fmt(vsSsh, 2), '≥ 0.80', ok(vsSsh >= 0.8)]);
    rows.push(['2. intercepted p50 added at 1 connection (ms)', fmt(added, 3), '≤ 0.250', ok(added <= 0.25)]);
  }
  const g = results.grpc;
  if (g) {
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
  const pr = results.proto;
  if (pr) {
    log(`\nTunnel protocols (wrk -t1, medians of ${opts.rounds}):`);
    log(tunnelTable(pr, ['direct', 'ssh', 'intercepted', 'h2raw', 'lean', 'old']));
    for (const k of ['intercepted', 'h2raw', 'lean', 'old'] as const) {
      const r = pr[k];
      if (!r) continue;
      rows.push([
        `P. ${r.label} req/s / direct`,
        fmt(r.rps / pr.direct.rps, 2),
        '≥ 0.35',
        ok(r.rps / pr.direct.rps >= 0.35),
      ]);
      rows.push([
        `P. ${r.label} req/s / ssh -R`,
        fmt(r.rps / pr.ssh.rps, 2),
        '≥ 0.80',
        ok(r.rps / pr.ssh.rps >= 0.8),
      ]);
    }
  }
  const t = results.transfer;
  if (t) {
    const gib = fmt(t.bytes / 1024 ** 3, 2);
    log(`\nBulk transfer (${gib} GiB each way; MB = 10^6 bytes, MiB = 2^20):`);
    log(
      table([
        [
          'Direction',
          'through tunnel (MB/s)',
          'direct (MB/s)',
          'server agent VmHWM (MiB)',
          'client agent VmHWM (MiB)',
        ],
        ['idle, before transfers', '—', '—', fmt(t.idle.server.hwmMiB, 0), fmt(t.idle.agent.hwmMiB, 0)],
        [
          'upload (POST, local discards)',
          fmt(t.upload.mbps, 0),
          fmt(t.directUpload.mbps, 0),
          fmt(t.afterUpload.server.hwmMiB, 0),
          fmt(t.afterUpload.agent.hwmMiB, 0),
        ],
        [
          'download (GET, local streams)',
          fmt(t.download.mbps, 0),
          fmt(t.directDownload.mbps, 0),
          fmt(t.afterDownload.server.hwmMiB, 0),
          fmt(t.afterDownload.agent.hwmMiB, 0),
        ],
      ]),
    );
    for (const [dir, r] of [
      ['upload', t.upload],
      ['download', t.download],
    ] as const)
      rows.push([
        `3. ${dir} ${gib} GiB through the tunnel (MB/s)`,
        fmt(r.mbps, 0),
        '≥ 300',
        ok(r.mbps >= 300),
      ]);
    for (const [who, k] of [
      ['server', 'server'],
      ['client', 'agent'],
    ] as const) {
      const peak = Math.max(t.afterUpload[k].hwmMiB, t.afterDownload[k].hwmMiB);
      rows.push([
        `3. ${who} agent peak RSS over both transfers (MiB)`,
        fmt(peak, 0),
        '≤ 150 MiB',
        ok(peak <= 150),
      ]);
    }
  }
  const rt = results.retained;
  if (rt) {
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
  const v = results.liveview;
  if (v) {
    log(`\nLive view (wrk -t1 -c20, medians of ${opts.rounds}):`);
    log(
      table([
        ['Foreground intercept', 'req/s', 'CLI CPU per request (µs)'],
        ['--json > /dev/null', fmt(v.json, 0), fmt(v.jsonCpu, 1)],
        ['Ink live view in a terminal', fmt(v.live, 0), fmt(v.liveCpu, 1)],
      ]),
    );
    const ratio = v.live / v.json;
    rows.push(['4. live view req/s / --json req/s', fmt(ratio, 2), '≥ 0.90', ok(ratio >= 0.9)]);
    rows.push(['4. live view idle CPU (%)', fmt(v.idleCpu, 2), '≈ 0', ok(v.idleCpu < 1)]);
  }
  const k = results.trickle;
  if (k) {
    log(
      `\nSlow uploads (${opts.trickles} of one tenant; another tenant's req/s, wrk -t1 -c${opts.conns}, medians of ${opts.rounds}):`,
    );
    log(
      table([
        ['Tenant "quiet" on', 'req/s'],
        ['the calm agent', fmt(k.calm, 0)],
        [`the agent with ${opts.trickles} slow uploads of tenant "hog"`, fmt(k.trickled, 0)],
      ]),
    );
    rows.push([
      "5. another tenant's req/s with the slow uploads / without",
      fmt(k.ratio, 2),
      '≥ 0.95',
      ok(k.ratio >= 0.95),
    ]);
    // On a loaded machine req/s drifts more than the slow uploads cost; CPU per request does not.
    rows.push([
      '5. server CPU per request with the slow uploads / without',
      fmt(k.cpuRatio, 2),
      '≤ 1.05',
      ok(k.cpuRatio <= 1.05),
    ]);
  }
  const gw = results.gateway;
  if (gw) {
    const hx = gw.rps.sync10k / gw.rps.sync0;
    const straight = gw.rps.sync10k / gw.rps.straight;
    const nx = gw.rps.nginx10k / gw.rps.nginxNone;
    rows.push(['6. HAProxy, 10k entries / none (unrouted tenant)', fmt(hx, 2), '≥ 0.95', ok(hx >= 0.95)]);
    rows.push(['6. nginx, 10k entries / none (unrouted tenant)', fmt(nx, 2), '≥ 0.95', ok(nx >= 0.95)]);
    rows.push([
      '6. HAProxy with the sync / HAProxy straight',
      fmt(straight, 2),
      '≥ 0.95',
      ok(straight >= 0.95),
    ]);
    rows.push([
      '6. intercepted via HAProxy + Kelsingra / HAProxy straight',
      fmt(gw.rps.intercepted / gw.rps.straight, 2),
      '(reported)',
      '',
    ]);
  }
  log(
    `\nSummary (${os.cpus().length} cores, ${os.cpus()[0]?.model ?? 'unknown CPU'}, Node ${process.versions.node}; wrk -t1 competes with the proxy for the cores; load average at start ${results.loadStart}, at end ${(os.loadavg()[0] ?? Number.NaN).toFixed(2)}):`,
  );
  log(table(rows));
}

// ---------------------------------------------------------------- main

ensureTools(['wrk', 'nginx', 'tmux']);
// Installed as the other tools are (root with apt-get), else named with their package.
if (benches.some((b) => ['intercept', 'proto'].includes(b))) ensureTools(['sshd', 'ssh', 'ssh-keygen']);
if (benches.includes('grpc')) ensureTools(['h2load']);
if (benches.includes('gateway')) ensureTools(['haproxy']);
const results: Results = { opts, ...machineInfo() };
let exitCode = 0;
try {
  log(
    `Kelsingra benchmarks: ${benches.join(', ')} (${os.cpus().length} cores, Node ${process.versions.node})`,
  );
  if (benches.includes('passthrough')) results.passthrough = await benchPassthrough();
  if (benches.includes('intercept')) results.intercept = await benchIntercept();
  if (benches.includes('grpc')) results.grpc = await benchGrpc();
  if (benches.includes('transfer')) results.transfer = await benchTransfer();
  if (benches.includes('retained')) results.retained = await benchRetained();
  if (benches.includes('proto')) results.proto = await benchProto();
  if (benches.includes('liveview')) results.liveview = await benchLiveView();
  if (benches.includes('trickle')) results.trickle = await benchTrickle();
  if (benches.includes('gateway')) {
    results.gateway = await benchGateway(WORK, opts);
    await stopAll();
  }
  report(results);
  if (opts.json) {
    for (const r of [results.passthrough, results.intercept])
      if (r) for (const v of Object.values(r)) if ('rounds' in v) for (const x of v.rounds) delete x.raw;
    writeFileSync(opts.json, `${JSON.stringify(results, null, 2)}\n`);
  }
  if (opts.profile)
    log(`\nCPU profiles in ${opts.profile} (summarise: node scripts/bench/cpuprofile-top.ts <file>)`);
} catch (err) {
  exitCode = reportFailure(err);
}
await cleanupAndExit(exitCode);
