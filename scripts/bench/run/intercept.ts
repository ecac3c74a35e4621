/**
 * Benchmark 2, intercepted: a local Node service directly, through `ssh -R`, and through
 * Kelsingra's tunnel (data port → server agent → client agent → local service).
 */
import { fmt, log, memOf, stopAll } from '../lib.ts';
import { startSshReverse } from '../ssh.ts';
import { measure, ok, tunnelTable } from './measure.ts';
import {
  opts,
  servedByLocal,
  startIntercept,
  startInterceptSetup,
  VIA,
  WORK,
  waitIntercepted,
} from './setup.ts';

// ---------------------------------------------------------------- 2. intercepted

export async function benchIntercept() {
  log(
    `\n== 2. Intercepted: local Node service direct vs through the tunnel; wrk -t1 -c${opts.conns} / -c1, ${opts.duration} s, ${opts.rounds} rounds (median)`,
  );
  const { localPort, ks } = await startInterceptSetup('intercept');
  const agent = await startIntercept(ks, localPort, 'intercept benchmark');
  const headers = VIA('t1');
  await waitIntercepted(ks, 'intercepted route');
  const ssh = await startSshReverse(WORK, localPort, { check: servedByLocal });
  const measured = await measure([
    { key: 'direct', label: 'local service direct', url: `http://127.0.0.1:${localPort}/`, headers },
    { key: 'ssh', label: 'ssh -R (loopback) → local', url: `${ssh.url}/`, headers, pids: ssh.pids },
    {
      key: 'intercepted',
      label: 'kelsingra data port → tunnel → local',
      url: `${ks.data}/`,
      headers,
      pids: { server: ks.proc.pid, client: agent.pid },
    },
  ]);
  const res = Object.assign(measured, { serverMem: memOf(ks.proc.pid), agentMem: memOf(agent.pid) });
  await agent.leave();
  await stopAll();
  return res;
}

/** Its table in the report, and its rows in the summary. */
export function reportIntercept(i: Awaited<ReturnType<typeof benchIntercept>>, rows: string[][]) {
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
