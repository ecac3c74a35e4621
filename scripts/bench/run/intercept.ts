/**
 * Benchmark 2, intercepted: a local Node service directly, through `ssh -R`, and through
 * Kelsingra's tunnel (data port → server agent → client agent → local service).
 */
import { log, memOf, stopAll } from '../lib.ts';
import { startSshReverse } from '../ssh.ts';
import { measure } from './measure.ts';
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
