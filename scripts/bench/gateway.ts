/**
 * The gateway sync (issue 17), part of `npm run bench` (`npm run bench -- gateway`):
 *
 * - scale: 10,000 routed tenants across 100 services written to a real HAProxy by the sync
 *   (PostgreSQL store): the whole set at start, one change, and the server agent's CPU and
 *   memory for it; HAProxy's and nginx's req/s for an unrouted tenant with the 10k entries in
 *   their map, ÷ with none (nginx's include as the nginx driver generates it);
 * - design: an unrouted tenant through HAProxy with the sync on ÷ HAProxy straight to the base,
 *   and an intercepted tenant through HAProxy + Kelsingra (tunnel to a local service).
 *
 * Every upstream is nginx answering a small body, so the figures are the gateways' own costs.
 *
 * Just over 400 lines: the drivers' set-up (HAProxy, nginx) and the design comparison share the
 * generated entries and the nginx upstream.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import { join } from 'node:path';
import type { Entry } from '../../server/gateway-sync/entries.ts';
import {
  createDatabase,
  fmt,
  freePort,
  log,
  memOf,
  orphanPids,
  type Proc,
  ROOT,
  sleep,
  smallBodyServer,
  start,
  startNginx,
  stop,
  stopPid,
  table,
  waitHttp,
  which,
  wrk,
} from './lib.ts';

const NODE = process.execPath;
const BIN = join(ROOT, 'bin', 'run.js');
const SERVICES = 100;
const TENANTS_PER_SERVICE = 100;
const svc = (i: number) => `svc${String(i).padStart(3, '0')}`;

/** What benchGateway reads of `npm run bench`'s options. */
export interface GatewayOptions {
  rounds: number;
  duration: number;
  warmup: number;
  conns: number;
}

/** One wrk target: `key` names its figure. */
interface Target<K extends string> {
  key: K;
  url: string;
  headers: Record<string, string>;
}

/** The server agent's log line once the whole set is written. */
interface WholeSetWritten {
  ms: number;
}

/** What `intercept --detach --json` prints (what is read of it). */
interface DetachedIntercept {
  agentPid: number;
}

function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1];
  if (stat === undefined) throw new Error(`/proc/${pid}/stat: no ") " after the command name`);
  const fields = stat.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** One Runtime API command; HAProxy closes the connection after answering. */
function haproxyCommand(socket: string, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const conn = net.connect(socket);
    let out = '';
    conn.setEncoding('utf8');
    conn.on('data', (c: string) => (out += c));
    conn.on('error', reject);
    conn.on('close', () => resolve(out));
    conn.end(`${command}\n`);
  });
}

const mapSize = async (socket: string, map: string) =>
  (await haproxyCommand(socket, `show map ${map}`)).split('\n').filter((l) => l.trim()).length;

/** One request with these headers (Host included, which fetch will not set): its status and body. */
function probe(
  url: string,
  headers: Record<string, string>,
): Promise<{ status: number | undefined; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { headers }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode, body }));
      })
      .on('error', reject);
  });
}

async function until(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<number> {
  const started = performance.now();
  for (;;) {
    if (await check()) return performance.now() - started;
    if (performance.now() - started > timeoutMs) throw new Error(`timed out: ${what}`);
    await sleep(5);
  }
}

export async function benchGateway(work: string, opts: GatewayOptions) {
  log(
    `\n== gateway sync: ${SERVICES * TENANTS_PER_SERVICE} routed tenants across ${SERVICES} services; wrk -t1 -c${opts.conns}, ${opts.duration} s, ${opts.rounds} round(s) (median)`,
  );
  const haproxyBin = which('haproxy') || '/usr/sbin/haproxy';
  const token = `bench-${Math.random().toString(36).slice(2, 12)}`;
  const dir = mkdtempSync(join(work, 'gateway-'));
  const [basePort, v2Port, localPort] = [await freePort(), await freePort(), await freePort()];
  await startNginx(
    work,
    'gateway-upstreams',
    [smallBodyServer(basePort), smallBodyServer(v2Port), smallBodyServer(localPort)].join('\n'),
    [basePort, v2Port, localPort].map((p) => `http://127.0.0.1:${p}/`),
  );

  // HAProxy: one frontend with the recipe's map lookup, one straight to the base.
  const [syncPort, straightPort, controlPort, dataPort] = [
    await freePort(),
    await freePort(),
    await freePort(),
    await freePort(),
  ];
  const map = join(dir, 'kelsingra.map');
  const socket = join(dir, 'admin.sock');
  writeFileSync(map, '');
  writeFileSync(
    join(dir, 'haproxy.cfg'),
    `global
    stats socket ${socket} mode 600 level admin
    nbthread 1
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
frontend sync
    bind 127.0.0.1:${syncPort}
    http-request set-var(txn.ks_service) req.hdr(host),field(1,.),field(1,:),lower
    http-request set-var-fmt(txn.ks_key) "%[var(txn.ks_service)]/%[req.hdr(x-tenant-id)]"
    http-request set-var(txn.ks_target) var(txn.ks_key),map(${map}) if { req.hdr(x-tenant-id) -m found } !{ req.hdr(x-kelsingra-hop) -m found }
    use_backend via_kelsingra if { var(txn.ks_target) -m str kelsingra }
    use_backend kelsingra_route if { var(txn.ks_target) -m found }
    default_backend base
frontend straight
    bind 127.0.0.1:${straightPort}
    default_backend base
backend base
    server base 127.0.0.1:${basePort}
backend via_kelsingra
    option httpchk GET /healthz
    server kelsingra 127.0.0.1:${dataPort} check port ${controlPort} inter 500ms
    server base 127.0.0.1:${basePort} backup
backend kelsingra_route
    http-request set-dst var(txn.ks_target),field(1,:)
    http-request set-dst-port var(txn.ks_target),field(2,:)
    server route 0.0.0.0:0
`,
  );
  await start('haproxy', haproxyBin, ['-db', '-f', join(dir, 'haproxy.cfg')]);
  await waitHttp(`http://127.0.0.1:${straightPort}/`, {}, (r) => r.status === 200, 'haproxy');

  const db = await createDatabase(`kelsingra_bench_gateway_${process.pid}`);
  const config = join(dir, 'kelsingra.yaml');
  writeFileSync(
    config,
    [
      `token: ${token}`,
      `databaseUrl: ${db.url}`,
      'routeTargets: ["http://127.0.0.1:*"]',
      'drainTimeout: 0',
      'services:',
      ...Array.from(
        { length: SERVICES },
        (_, i) => `  ${svc(i)}: { upstream: "http://127.0.0.1:${basePort}", healthCheck: false }`,
      ),
      'gateway:',
      '  driver: haproxy',
      `  socket: ${socket}`,
      `  map: ${map}`,
      '',
    ].join('\n'),
  );
  const startServer = () =>
    start(
      'kelsingra server (gateway)',
      NODE,
      [BIN, 'server', '--port', String(controlPort), '--proxy-port', String(dataPort), '--config', config],
      {
        ready: /gateway sync: whole set written/,
        timeoutMs: 120_000,
      },
    );
  const auth = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
  const control = `http://127.0.0.1:${controlPort}`;
  let server = await startServer();
  const memEmpty = memOf(server.pid);

  const host = (i: number) => `${svc(i)}.dev.example.com`;
  const unrouted = { Host: host(42), 'x-tenant-id': 'nobody' };
  const routed = { Host: host(42), 'x-tenant-id': 't042-7' };
  const measure = async <K extends string>(targets: readonly Target<K>[]): Promise<Record<K, number>> => {
    const runs = Object.fromEntries(targets.map((t): [K, number[]] => [t.key, []])) as Record<K, number[]>;
    for (let round = 0; round < opts.rounds; round++)
      for (const t of targets) {
        const first = await probe(t.url, t.headers);
        if (first.status !== 200)
          throw new Error(`${t.key}: ${t.url} answers ${first.status}: ${first.body.slice(0, 300)}`);
        await wrk(t.url, { conns: opts.conns, seconds: opts.warmup, headers: t.headers });
        runs[t.key].push(
          (await wrk(t.url, { conns: opts.conns, seconds: opts.duration, headers: t.headers })).rps,
        );
      }
    // Every key has `rounds` (≥ 1) figures.
    return Object.fromEntries(
      Object.entries<number[]>(runs).map(([k, v]) => [
        k,
        v.sort((a, b) => a - b)[Math.floor(v.length / 2)] ?? Number.NaN,
      ]),
    ) as Record<K, number>;
  };
  const empty = await measure([
    { key: 'straight', url: `http://127.0.0.1:${straightPort}/`, headers: unrouted },
    { key: 'sync0', url: `http://127.0.0.1:${syncPort}/`, headers: unrouted },
  ]);

  // 10,000 routed tenants: one route per service, 100 tenants each, through the routes API.
  const loadStarted = performance.now();
  for (let i = 0; i < SERVICES; i++) {
    const tenants = Array.from(
      { length: TENANTS_PER_SERVICE },
      (_, j) => `t${String(i).padStart(3, '0')}-${j}`,
    );
    const res = await fetch(`${control}/v1/routes`, {
      method: 'PUT',
      headers: auth,
      body: JSON.stringify({ service: svc(i), tenants, targets: [`http://127.0.0.1:${v2Port}`] }),
    });
    if (!res.ok) throw new Error(`route for ${svc(i)}: ${res.status} ${await res.text()}`);
  }
  const entries = SERVICES * TENANTS_PER_SERVICE;
  await until(async () => (await mapSize(socket, map)) >= entries, 60_000, 'the map filled');
  const loadTotalMs = performance.now() - loadStarted;

  // Initial sync: a server agent starting with the 10k routes in the store writes them whole.
  await stop(server);
  await haproxyCommand(socket, `clear map ${map}`);
  const startAt = performance.now();
  server = await startServer();
  const startupMs = performance.now() - startAt;
  const wholeLine = server
    .output()
    .split('\n')
    .find((l) => l.includes('whole set written'));
  if (wholeLine === undefined) throw new Error('the server agent logged no "whole set written" line');
  const whole: WholeSetWritten = JSON.parse(wholeLine);
  const cpuAfterStart = cpuSeconds(server.pid);
  const memAfterStart = memOf(server.pid);
  if ((await mapSize(socket, map)) !== entries) throw new Error('the restart did not write the whole set');

  // One change: a tenant added to a route; time until HAProxy's map has it.
  const cpuBefore = cpuSeconds(server.pid);
  const changeStarted = performance.now();
  const res = await fetch(`${control}/v1/routes`, {
    method: 'PUT',
    headers: auth,
    body: JSON.stringify({ service: svc(0), tenants: ['t-new'], targets: [`http://127.0.0.1:${v2Port}`] }),
  });
  if (!res.ok) throw new Error(`one change: ${res.status}`);
  await until(
    async () => (await haproxyCommand(socket, `get map ${map} ${svc(0)}/t-new`)).includes('found=yes'),
    10_000,
    'the change in the map',
  );
  const changeMs = performance.now() - changeStarted;
  const changeCpuMs = (cpuSeconds(server.pid) - cpuBefore) * 1000;

  // An intercepted tenant through HAProxy + Kelsingra.
  const env = {
    ...process.env,
    NO_COLOR: '1',
    KELSINGRA_SERVER: control,
    KELSINGRA_TOKEN: token,
    KELSINGRA_CONFIG_DIR: mkdtempSync(join(os.tmpdir(), 'kelsingra-bench-client-')),
  };
  const interceptStarted = performance.now();
  const r = spawnSync(
    NODE,
    [BIN, 'intercept', svc(42), '--tenant', 'dev-1', '--port', String(localPort), '--detach', '--json'],
    { cwd: ROOT, env, encoding: 'utf8', timeout: 60_000 },
  );
  if (r.status !== 0) throw new Error(`intercept --detach failed:\n${r.stdout}\n${r.stderr}`);
  const interceptMs = performance.now() - interceptStarted;
  const agent: DetachedIntercept = JSON.parse(r.stdout.slice(r.stdout.indexOf('{')));
  orphanPids.add(agent.agentPid);
  const intercepted = { Host: host(42), 'x-tenant-id': 'dev-1' };

  const full = await measure([
    { key: 'straight', url: `http://127.0.0.1:${straightPort}/`, headers: unrouted },
    { key: 'sync10k', url: `http://127.0.0.1:${syncPort}/`, headers: unrouted },
    { key: 'routed', url: `http://127.0.0.1:${syncPort}/`, headers: routed },
    { key: 'intercepted', url: `http://127.0.0.1:${syncPort}/`, headers: intercepted },
  ]);
  const serverMem = memOf(server.pid);
  spawnSync(NODE, [BIN, 'leave', '--all'], { cwd: ROOT, env, encoding: 'utf8', timeout: 30_000 });
  await stopPid(agent.agentPid);
  orphanPids.delete(agent.agentPid);

  // nginx with the include the nginx driver writes: 10,000 entries, and none.
  const nginxJs = new URL('../../dist/server/gateway-sync/nginx.js', import.meta.url).href;
  const { nginxInclude } = (await import(nginxJs)) as typeof import('../../server/gateway-sync/nginx.ts');
  const routeEntries: Entry[] = [];
  for (let i = 0; i < SERVICES; i++)
    for (let j = 0; j < TENANTS_PER_SERVICE; j++)
      routeEntries.push({
        service: svc(i),
        tenant: `t${String(i).padStart(3, '0')}-${j}`,
        target: { kind: 'route', routeId: 'rt_bench', targets: [`http://127.0.0.1:${v2Port}`] },
      });
  // Both nginx configurations run at once and are measured interleaved, so drift on a shared
  // machine hits both alike.
  const nginxTargets: Target<'none' | '10k'>[] = [];
  const nginxProcs: Proc[] = [];
  const nginxSets: ['none' | '10k', Entry[]][] = [
    ['none', []],
    ['10k', routeEntries],
  ];
  for (const [key, list] of nginxSets) {
    const nginxPort = await freePort();
    const include = join(dir, `gateway-${key}.conf`);
    writeFileSync(
      include,
      nginxInclude(list, { source: '$kelsingra_service_key', variable: '$kelsingra_target' }).text,
    );
    nginxProcs.push(
      await startNginx(
        work,
        `gateway-nginx-${key}`,
        `  map $host $kelsingra_service { default ""; "~^(?<kelsingra_label>[a-z0-9-]+)\\." $kelsingra_label; }
  map "$http_x_kelsingra_hop:$http_x_tenant_id" $kelsingra_service_key { default ""; "~^:(?<kelsingra_tenant>.+)$" "$kelsingra_service/$kelsingra_tenant"; }
  include ${include};
  upstream base { server 127.0.0.1:${basePort}; keepalive 16; }
  map $kelsingra_target $backend { "" base; default $kelsingra_target; }
  server {
    listen 127.0.0.1:${nginxPort};
    location / { proxy_pass http://$backend; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host; }
  }`,
        [],
      ),
    );
    await waitHttp(`http://127.0.0.1:${nginxPort}/`, {}, (x) => x.status === 200, 'nginx');
    nginxTargets.push({ key, url: `http://127.0.0.1:${nginxPort}/`, headers: unrouted });
  }
  const nginxRps = await measure(nginxTargets);
  for (const proc of nginxProcs) await stop(proc);

  const out = {
    entries,
    loadTotalMs,
    startupMs,
    wholeWriteMs: whole.ms,
    startupCpuS: cpuAfterStart,
    memAfterStart,
    changeMs,
    changeCpuMs,
    interceptMs,
    serverMem,
    memEmpty,
    rps: {
      ...full,
      sync0: empty.sync0,
      straightEmpty: empty.straight,
      nginxNone: nginxRps.none,
      nginx10k: nginxRps['10k'],
    },
  };
  log(
    table([
      ['figure', 'value'],
      ['HAProxy, unrouted tenant: 10k entries ÷ none (same run)', fmt(full.sync10k / empty.sync0)],
      [
        'HAProxy, unrouted tenant, sync on (10k) ÷ HAProxy straight to the base',
        fmt(full.sync10k / full.straight),
      ],
      ['HAProxy, routed tenant (→ its target direct) ÷ HAProxy straight', fmt(full.routed / full.straight)],
      ['HAProxy + Kelsingra, intercepted tenant ÷ HAProxy straight', fmt(full.intercepted / full.straight)],
      ['nginx, unrouted tenant: 10k entries ÷ none', fmt(nginxRps['10k'] / nginxRps.none)],
      ['whole set (10k) written at start, HAProxy Runtime API + map file', `${whole.ms} ms`],
      [
        'server agent start to synced (process start, PostgreSQL load, write)',
        `${fmt(startupMs, 0)} ms, ${fmt(cpuAfterStart)} s CPU`,
      ],
      ['10k entries through the routes API (100 PUTs) until in the map', `${fmt(loadTotalMs, 0)} ms`],
      [
        'one change (a tenant added to a route) until in the map',
        `${fmt(changeMs, 1)} ms, ${fmt(changeCpuMs, 0)} ms CPU`,
      ],
      ['intercept --detach (client start to answer, gateway confirmed)', `${fmt(interceptMs, 0)} ms`],
      [
        'server agent RSS: 100 services, no routes / restarted with 10k routed tenants, synced / at the end (peak)',
        `${fmt(memEmpty.rssMiB, 0)} / ${fmt(memAfterStart.rssMiB, 0)} / ${fmt(serverMem.rssMiB, 0)} (${fmt(serverMem.hwmMiB, 0)}) MiB`,
      ],
      [
        'req/s: straight / sync 10k / routed / intercepted / sync 0',
        [full.straight, full.sync10k, full.routed, full.intercepted, empty.sync0]
          .map((x) => fmt(x, 0))
          .join(' / '),
      ],
      ['req/s nginx: none / 10k', `${fmt(nginxRps.none, 0)} / ${fmt(nginxRps['10k'], 0)}`],
    ]),
  );
  return out;
}
