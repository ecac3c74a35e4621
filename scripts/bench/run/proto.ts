/**
 * Tunnel protocols side by side: direct, `ssh -R`, the product's tunnel (and with --old another
 * checkout's), the HTTP/2-over-the-raw-socket prototype and the bare lean-framing prototype.
 */
import { basename, join, resolve } from 'node:path';
import { fmt, freePort, log, start, stopAll, waitHttp } from '../lib.ts';
import { startSshReverse } from '../ssh.ts';
import { type Measured, measure, ok, type Target, tunnelTable } from './measure.ts';
import {
  NODE,
  opts,
  PROTO,
  servedByLocal,
  startIntercept,
  startInterceptSetup,
  startKelsingra,
  VIA,
  WORK,
  waitIntercepted,
} from './setup.ts';

// ---------------------------------------------------------------- tunnel protocols side by side

/**
 * The tunnel protocol chosen by measurement (issue 15): the same local service direct, through
 * `ssh -R`, through the product's tunnel (this build, and with --old DIR another checkout's),
 * through the HTTP/2-over-the-raw-socket prototype (proto/h2raw-*.ts) and through the bare
 * lean-framing prototype (proto/lean-*.ts: the product's design with none of its own work,
 * its ceiling), in one interleaved run.
 */
export async function benchProto() {
  log(
    `\n== Tunnel protocols: direct, ssh -R, product, HTTP/2 over the raw socket, bare lean framing; wrk -t1 -c${opts.conns} / -c1, ${opts.duration} s, ${opts.rounds} rounds (median)`,
  );
  const { localPort, ks } = await startInterceptSetup('proto');
  const agent = await startIntercept(ks, localPort, 'protocol benchmark');
  const headers = VIA('t1');
  await waitIntercepted(ks, 'intercepted route');
  const ssh = await startSshReverse(WORK, localPort, { check: servedByLocal });
  const tunnelPort = await freePort();
  const h2Port = await freePort();
  const h2s = await start(
    'h2raw server',
    NODE,
    [join(PROTO, 'h2raw-server.ts'), String(tunnelPort), String(h2Port)],
    {
      ready: /ready/,
    },
  );
  const h2c = await start(
    'h2raw client',
    NODE,
    [join(PROTO, 'h2raw-client.ts'), `http://127.0.0.1:${tunnelPort}`, String(localPort)],
    {
      ready: /ready/,
    },
  );
  const h2url = `http://127.0.0.1:${h2Port}/`;
  await waitHttp(h2url, headers, servedByLocal, 'HTTP/2-over-raw-socket prototype');
  const leanTunnel = await freePort();
  const leanPort = await freePort();
  const leans = await start(
    'lean server',
    NODE,
    [join(PROTO, 'lean-server.ts'), String(leanTunnel), String(leanPort)],
    {
      ready: /ready/,
    },
  );
  const leanc = await start(
    'lean client',
    NODE,
    [join(PROTO, 'lean-client.ts'), `ws://127.0.0.1:${leanTunnel}`, String(localPort)],
    { ready: /ready/ },
  );
  const leanUrl = `http://127.0.0.1:${leanPort}/`;
  await waitHttp(leanUrl, headers, servedByLocal, 'lean prototype');
  const targets: Target<'direct' | 'ssh' | 'intercepted' | 'h2raw' | 'lean' | 'old'>[] = [
    { key: 'direct', label: 'local service direct', url: `http://127.0.0.1:${localPort}/`, headers },
    { key: 'ssh', label: 'ssh -R (loopback) → local', url: `${ssh.url}/`, headers, pids: ssh.pids },
    {
      key: 'intercepted',
      label: 'kelsingra (this build)',
      url: `${ks.data}/`,
      headers,
      pids: { server: ks.proc.pid, client: agent.pid },
    },
    {
      key: 'h2raw',
      label: 'prototype: HTTP/2 over raw socket',
      url: h2url,
      headers,
      pids: { server: h2s.pid, client: h2c.pid },
    },
    {
      key: 'lean',
      label: 'prototype: bare lean framing (the ceiling)',
      url: leanUrl,
      headers,
      pids: { server: leans.pid, client: leanc.pid },
    },
  ];
  let old: Awaited<ReturnType<typeof startIntercept>> | undefined;
  if (opts.old) {
    const bin = join(resolve(opts.old), 'bin', 'run.js');
    const oks = await startKelsingra('proto-old', `http://127.0.0.1:${localPort}`, { bin });
    old = await startIntercept(oks, localPort, `--old ${opts.old}`);
    await waitIntercepted(oks, 'intercepted route (--old)');
    targets.push({
      key: 'old',
      label: `kelsingra ${basename(resolve(opts.old))} (--old)`,
      url: `${oks.data}/`,
      headers,
      pids: { server: oks.proc.pid, client: old.pid },
    });
  }
  // 'old' only with --old.
  const res: Record<'direct' | 'ssh' | 'intercepted' | 'h2raw' | 'lean', Measured> & { old?: Measured } =
    await measure(targets);
  await agent.leave();
  if (old) await old.leave();
  await stopAll();
  return res;
}

/** Its table in the report, and its rows in the summary. */
export function reportProto(pr: Awaited<ReturnType<typeof benchProto>>, rows: string[][]) {
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
