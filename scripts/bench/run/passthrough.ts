/**
 * Benchmark 1, pass-through: a tenant with no intercept through Kelsingra's data port, against
 * the upstream directly, nginx proxy_pass and @fastify/reply-from (req/s, p99, p50 at one
 * connection, server agent CPU and memory); also the same agent with an 8 MiB young generation
 * (what `NODE_OPTIONS=--max-semi-space-size=8` buys), and the ceiling of the stack: a bare
 * `node:http` + undici `dispatch` proxy (proto/bare-proxy.ts).
 */

import { join } from 'node:path';
import {
  fmt,
  freePort,
  log,
  memOf,
  SMALL_BODY,
  start,
  startNginx,
  stopAll,
  table,
  waitHttp,
} from '../lib.ts';
import { measure, ok, type Target } from './measure.ts';
import { NODE, opts, PROTO, SERVICES, startKelsingra, startUpstream, VIA, WORK } from './setup.ts';

// ---------------------------------------------------------------- 1. pass-through

export async function benchPassthrough() {
  log(
    `\n== 1. Pass-through: ${opts.upstream} upstream returning ${SMALL_BODY.length} bytes; wrk -t1 -c${opts.conns} / -c1, ${opts.duration} s, ${opts.rounds} rounds (median)`,
  );
  const up = await startUpstream();
  const nginxPort = await freePort();
  await startNginx(
    WORK,
    'nginx-proxy',
    `  upstream backend { server 127.0.0.1:${up.port}; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:${nginxPort};
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }`,
    [`http://127.0.0.1:${nginxPort}/`],
  );
  const rfPort = await freePort();
  await start('reply-from', NODE, [SERVICES, 'reply-from', String(rfPort), up.url], { ready: /ready/ });
  const ks = await startKelsingra('passthrough', up.url);
  const ks8 = await startKelsingra('passthrough-8', up.url, {
    env: { NODE_OPTIONS: '--max-semi-space-size=8' },
  });
  const barePort = await freePort();
  const bare = await start('bare proxy', NODE, [join(PROTO, 'bare-proxy.ts'), String(barePort), up.url], {
    ready: /ready/,
  });

  const headers = VIA('t2');
  const targets: Target<'direct' | 'nginx' | 'replyFrom' | 'kelsingra' | 'kelsingra8' | 'bare'>[] = [
    { key: 'direct', label: `upstream direct (${opts.upstream})`, url: `${up.url}/`, headers },
    { key: 'nginx', label: 'nginx proxy_pass (1 worker)', url: `http://127.0.0.1:${nginxPort}/`, headers },
    { key: 'replyFrom', label: '@fastify/reply-from', url: `http://127.0.0.1:${rfPort}/`, headers },
    {
      key: 'kelsingra',
      label: 'kelsingra data port (pass-through)',
      url: `${ks.data}/`,
      headers,
      pids: { server: ks.proc.pid },
    },
    {
      key: 'kelsingra8',
      label: 'kelsingra, 8 MiB young generation',
      url: `${ks8.data}/`,
      headers,
      pids: { server: ks8.proc.pid },
    },
    {
      key: 'bare',
      label: 'prototype: bare node:http + undici dispatch',
      url: `http://127.0.0.1:${barePort}/`,
      headers,
      pids: { server: bare.pid },
    },
  ];
  for (const t of targets)
    await waitHttp(t.url, headers, (r) => r.status === 200 && r.text === SMALL_BODY, t.label);
  const res = Object.assign(await measure(targets), { kelsingraServerMem: memOf(ks.proc.pid) });
  await stopAll();
  return res;
}

/** Its table in the report, and its rows in the summary. */
export function reportPassthrough(p: Awaited<ReturnType<typeof benchPassthrough>>, rows: string[][]) {
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
      ...(['direct', 'nginx', 'replyFrom', 'kelsingra', 'kelsingra8', 'bare'] as const).map((k) => [
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
  // Issue 17's goals (item 5).
  rows.push(['1. pass-through req/s, kelsingra / nginx', fmt(vsNginx, 2), '≥ 0.40', ok(vsNginx >= 0.4)]);
  rows.push(['1. pass-through req/s, kelsingra / reply-from', fmt(vsRf, 2), '≥ 1.50', ok(vsRf >= 1.5)]);
  rows.push(['1. p50 added at 1 connection (ms)', fmt(added, 3), '≤ 0.150', ok(added <= 0.15)]);
  rows.push([
    '1. the same, 8 MiB young generation / nginx',
    fmt(p.kelsingra8.rps / p.nginx.rps, 2),
    '—',
    '—',
  ]);
  rows.push([
    '1. bare node:http + undici dispatch / nginx (the ceiling)',
    fmt(p.bare.rps / p.nginx.rps, 2),
    '—',
    '—',
  ]);
}
