/**
 * Benchmark 4, live view: intercepted req/s and the CLI's CPU per request with the Ink live view
 * open in a real terminal (tmux) vs `--json` to /dev/null, and the live view's idle CPU.
 */
import { fmt, log, median, sleep, stopAll, table, wrk } from '../lib.ts';
import { cpuSeconds, ok } from './measure.ts';
import { opts, startForeground, startInterceptSetup, VIA } from './setup.ts';

// ---------------------------------------------------------------- 4. live view

export async function benchLiveView() {
  log(
    `\n== 4. Live view: intercepted req/s with the Ink live log open in a terminal vs --json to /dev/null; wrk -t1 -c20, ${opts.duration} s, ${opts.rounds} rounds (median)`,
  );
  const { localPort, ks } = await startInterceptSetup('liveview');
  const runs: Record<'json' | 'live', { rps: number; cliCpuPerReqUs: number }[]> = { json: [], live: [] };
  let idleCpu = Number.NaN;
  for (let round = 1; round <= opts.rounds; round++) {
    for (const mode of ['json', 'live'] as const) {
      const fg = await startForeground(ks, localPort, mode);
      await wrk(`${ks.data}/`, { conns: 20, seconds: opts.warmup, headers: VIA('t1') });
      const cpu0 = cpuSeconds(fg.pid);
      const load = await wrk(`${ks.data}/`, { conns: 20, seconds: opts.duration, headers: VIA('t1') });
      const cliCpuPerReqUs = ((cpuSeconds(fg.pid) - cpu0) / load.requests) * 1e6;
      runs[mode].push({ rps: load.rps, cliCpuPerReqUs });
      log(
        `  round ${round} ${mode === 'live' ? 'live view (tmux)' : '--json > /dev/null'}  ${fmt(load.rps, 0).padStart(7)} req/s  CLI CPU ${fmt(cliCpuPerReqUs, 1)} µs/req`,
      );
      if (mode === 'live' && round === 1) {
        // Idle: once the 5 s rate window has emptied, the view should not wake up at all.
        await sleep(6000);
        const idle0 = cpuSeconds(fg.pid);
        await sleep(10_000);
        idleCpu = ((cpuSeconds(fg.pid) - idle0) / 10) * 100;
        log(`  live view idle CPU over 10 s: ${fmt(idleCpu, 2)} %`);
      }
      await fg.leave();
    }
  }
  await stopAll();
  return {
    json: median(runs.json.map((r) => r.rps)),
    live: median(runs.live.map((r) => r.rps)),
    jsonCpu: median(runs.json.map((r) => r.cliCpuPerReqUs)),
    liveCpu: median(runs.live.map((r) => r.cliCpuPerReqUs)),
    idleCpu,
    rounds: runs,
  };
}

/** Its table in the report, and its rows in the summary. */
export function reportLiveView(v: Awaited<ReturnType<typeof benchLiveView>>, rows: string[][]) {
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
