#!/usr/bin/env node
/**
 * Kelsingra benchmarks, all in one run on one machine (see docs/BENCHMARKS.md).
 *
 *   npm run bench                                  every benchmark but proto
 *   npm run bench -- passthrough intercept         a subset (passthrough, intercept, grpc, transfer, retained,
 *                                                  liveview, trickle, gateway; proto only when named)
 *   node scripts/bench/run.ts --rounds 1 --duration 10 --profile /tmp/prof --json out.json
 *
 * Options: --rounds N (3; medians are reported), --duration S (5; per wrk measurement),
 * --warmup S (2), --conns N (50), --bytes N (1 GiB per transfer direction),
 * --upstream nginx|node (nginx: the fast upstream for the pass-through benchmark),
 * --profile DIR (server and client agents run with --cpu-prof, profiles land in DIR),
 * --trickles N (1000 slow uploads of one tenant in the trickle benchmark),
 * --json FILE (raw results), --requests N (retained), --old DIR (proto: another built checkout).
 *
 * Each benchmark lives in its own module under run/; this file runs those asked for, in a
 * fixed order, and prints the report.
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
import { benchGrpc, reportGrpc } from './run/grpc-bench.ts';
import { benchIntercept, reportIntercept } from './run/intercept.ts';
import { benchLiveView, reportLiveView } from './run/liveview.ts';
import { ok } from './run/measure.ts';
import { benchPassthrough, reportPassthrough } from './run/passthrough.ts';
import { benchProto, reportProto } from './run/proto.ts';
import { benchRetained, reportRetained } from './run/retained.ts';
import { benches, opts, WORK } from './run/setup.ts';
import { benchTransfer, reportTransfer } from './run/transfer.ts';
import { benchTrickle, reportTrickle } from './run/trickle.ts';

// ---------------------------------------------------------------- report

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
  if (results.passthrough) reportPassthrough(results.passthrough, rows);
  if (results.intercept) reportIntercept(results.intercept, rows);
  if (results.grpc) reportGrpc(results.grpc, rows);
  if (results.proto) reportProto(results.proto, rows);
  if (results.transfer) reportTransfer(results.transfer, rows);
  if (results.retained) reportRetained(results.retained, rows);
  if (results.liveview) reportLiveView(results.liveview, rows);
  if (results.trickle) reportTrickle(results.trickle, rows);
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
