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
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import { basename, join, resolve } from 'node:path';
import { benchGateway } from './gateway.ts';
import { checkGrpc, h2load, writeRequestBody } from './grpc.ts';
import {
  alive,
  cleanupAndExit,
  ensureTools,
  fmt,
  freePort,
  type HttpResponse,
  ioOf,
  log,
  type MachineInfo,
  machineInfo,
  median,
  memOf,
  onCleanup,
  orphanPids,
  type Proc,
  parseOptions,
  ROOT,
  reportFailure,
  requireBuild,
  SMALL_BODY,
  sleep,
  smallBodyServer,
  start,
  startNginx,
  stop,
  stopAll,
  stopPid,
  table,
  waitHttp,
  wrk,
} from './lib.ts';
import { startSshReverse } from './ssh.ts';

const BIN = join(ROOT, 'bin', 'run.js');
const SERVICES = join(import.meta.dirname, 'services.ts');
const PROTO = join(import.meta.dirname, 'proto');
const GRPC = join(import.meta.dirname, 'grpc.ts');
const NODE = process.execPath;
const TOKEN = `bench-${Math.random().toString(36).slice(2, 12)}`;
const HOLDER = `bench-${process.pid}@${os.hostname()}`;

// ---------------------------------------------------------------- options

const USAGE =
  'run.ts [passthrough] [intercept] [grpc] [transfer] [retained] [liveview] [trickle] [proto] [gateway] [--rounds N] [--duration S] [--warmup S] [--conns N] [--bytes N] [--upstream nginx|node] [--trickles N] [--requests N] [--old DIR] [--profile DIR] [--json FILE]';
const BENCHES = [
  'passthrough',
  'intercept',
  'transfer',
  'liveview',
  'trickle',
  'grpc',
  'retained',
  'proto',
  'gateway',
];
/** What `npm run bench` runs when no benchmark is named (proto compares prototypes: on request). */
const DEFAULT_BENCHES = [
  'passthrough',
  'intercept',
  'grpc',
  'transfer',
  'retained',
  'liveview',
  'trickle',
  'gateway',
];
const opts = parseOptions(
  process.argv.slice(2),
  {
    rounds: 3,
    duration: 5,
    warmup: 2,
    conns: 50,
    bytes: 1024 ** 3,
    upstream: 'nginx',
    trickles: 1000,
    profile: '',
    json: '',
    old: '',
    requests: 50_000,
  },
  USAGE,
  BENCHES,
);
const benches = opts._;
if (benches.length === 0) benches.push(...DEFAULT_BENCHES);
if (!['nginx', 'node'].includes(opts.upstream)) usage('--upstream is nginx or node');
if (opts.profile) {
  opts.profile = resolve(opts.profile);
  mkdirSync(opts.profile, { recursive: true });
}

function usage(msg: string): never {
  console.error(`${msg}\nusage: ${USAGE}`);
  process.exit(2);
}

requireBuild('npm run bench');

// ---------------------------------------------------------------- process bookkeeping

const WORK = mkdtempSync(join(os.tmpdir(), 'kelsingra-bench-'));
chmodSync(WORK, 0o755); // nginx workers drop to an unprivileged user
onCleanup(() => rmSync(WORK, { recursive: true, force: true }));

// ---------------------------------------------------------------- wrk

/** A wrk target; `pids`: the processes under test, whose CPU and syscalls per request are read. */
interface Target<K extends string> {
  key: K;
  label: string;
  url: string;
  headers: Record<string, string>;
  pids?: Record<string, number>;
}

/** Per request, in one process under test. */
interface RequestCost {
  reads: number;
  writes: number;
  cpuUs: number;
}

/** One round of one target. */
interface Round {
  rps: number;
  p99: number;
  p50c1: number;
  p99c1: number;
  rpsc1: number;
  errors: number;
  syscalls: Record<string, RequestCost>;
  /** Never set here (wrk's output is not kept); --json still deletes it. */
  raw?: string;
}

/** A target's medians over the rounds, and the rounds. */
interface Measured {
  label: string;
  rps: number;
  p99: number;
  p50c1: number;
  p99c1: number;
  cpuUs: Record<string, number>;
  rounds: Round[];
}

/**
 * Measures each target `rounds` times, interleaved so drift on a shared machine hits all of
 * them alike: a warm-up, throughput at `conns` connections, then latency at one connection.
 */
async function measure<K extends string>(targets: readonly Target<K>[]): Promise<Record<K, Measured>> {
  const runs = Object.fromEntries(targets.map((t): [K, Round[]] => [t.key, []])) as Record<K, Round[]>;
  for (let round = 1; round <= opts.rounds; round++) {
    for (const t of targets) {
      await wrk(t.url, { conns: opts.conns, seconds: opts.warmup, headers: t.headers });
      const before = Object.fromEntries(
        Object.entries(t.pids ?? {}).map(([k, pid]) => [k, { ...ioOf(pid), cpu: cpuSeconds(pid) }]),
      );
      const load = await wrk(t.url, { conns: opts.conns, seconds: opts.duration, headers: t.headers });
      // Syscalls per request in each process under test (from /proc/<pid>/io): on a VM where
      // a syscall is expensive, this is what most of the proxy's CPU time goes to.
      const syscalls = Object.fromEntries(
        Object.entries(t.pids ?? {}).map(([k, pid]) => {
          const now = ioOf(pid);
          const b = before[k];
          if (!b) throw new Error(`no figures for ${k} before the load`);
          return [
            k,
            {
              reads: (now.syscr - b.syscr) / load.requests,
              writes: (now.syscw - b.syscw) / load.requests,
              cpuUs: ((cpuSeconds(pid) - b.cpu) / load.requests) * 1e6,
            },
          ];
        }),
      );
      const one = await wrk(t.url, { conns: 1, seconds: opts.duration, headers: t.headers });
      runs[t.key].push({
        rps: load.rps,
        p99: load.p99,
        p50c1: one.p50,
        p99c1: one.p99,
        rpsc1: one.rps,
        errors: load.errors + one.errors,
        syscalls,
      });
      const sys = Object.entries(syscalls)
        .map(
          ([k, v]) =>
            `  ${k} CPU ${fmt(v.cpuUs, 1)} µs/req syscalls/req r ${fmt(v.reads, 1)} w ${fmt(v.writes, 1)}`,
        )
        .join('');
      log(
        `  round ${round} ${t.label.padEnd(34)} ${fmt(load.rps, 0).padStart(7)} req/s @${opts.conns}  p50@1 ${fmt(one.p50, 3)} ms  p99@1 ${fmt(one.p99, 3)} ms${load.errors + one.errors ? `  socket errors ${load.errors + one.errors}` : ''}${sys}`,
      );
    }
  }
  // Filled for every target below.
  const out = {} as Record<K, Measured>;
  for (const t of targets) {
    const r = runs[t.key];
    out[t.key] = {
      label: t.label,
      rps: median(r.map((x) => x.rps)),
      p99: median(r.map((x) => x.p99)),
      p50c1: median(r.map((x) => x.p50c1)),
      p99c1: median(r.map((x) => x.p99c1)),
      cpuUs: Object.fromEntries(
        Object.keys(t.pids ?? {}).map((k) => [k, median(r.map((x) => x.syscalls[k]?.cpuUs ?? Number.NaN))]),
      ),
      rounds: r,
    };
  }
  return out;
}

// ---------------------------------------------------------------- the pieces under test

async function startUpstream() {
  const port = await freePort();
  if (opts.upstream === 'nginx') {
    await startNginx(WORK, 'nginx-upstream', smallBodyServer(port), [`http://127.0.0.1:${port}/`]);
  } else {
    await start('node-upstream', NODE, [SERVICES, 'service', String(port), 'upstream'], { ready: /ready/ });
  }
  return { port, url: `http://127.0.0.1:${port}` };
}

function profileArgs(name: string): string[] {
  return opts.profile
    ? ['--cpu-prof', `--cpu-prof-dir=${opts.profile}`, `--cpu-prof-name=${name}-${Date.now()}.cpuprofile`]
    : [];
}

/** A server agent started by startKelsingra: its control and data port URLs. */
interface Kelsingra {
  proc: Proc;
  bin: string;
  control: string;
  data: string;
}

/** A server agent; `bin`: another checkout's bin/run.js (built), to compare commits in one run. */
async function startKelsingra(
  label: string,
  upstreamUrl: string,
  { bin = BIN, env = {} }: { bin?: string; env?: Record<string, string> } = {},
): Promise<Kelsingra> {
  const controlPort = await freePort();
  const proxyPort = await freePort();
  const proc = await start(
    `kelsingra server (${label})`,
    NODE,
    [
      ...profileArgs(`server-${label}`),
      bin,
      'server',
      '--port',
      String(controlPort),
      '--proxy-port',
      String(proxyPort),
      '--service',
      `billing=${upstreamUrl}`,
      '--token',
      TOKEN,
      // The transfers send more than the default limit (100 MiB) in one body.
      '--max-body-bytes',
      '0',
    ],
    { ready: /server agent listening/, env },
  );
  return { proc, bin, control: `http://127.0.0.1:${controlPort}`, data: `http://127.0.0.1:${proxyPort}` };
}

/** What `intercept --detach --json` prints (what is read of it). */
interface DetachedIntercept {
  id: string;
  agentPid: number;
}

/** `kelsingra intercept --detach` as a user would run it; returns the background agent's pid. */
async function startIntercept(server: Kelsingra, localPort: number, label: string) {
  const configDir = mkdtempSync(join(WORK, 'client-'));
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    NO_COLOR: '1',
    KELSINGRA_SERVER: server.control,
    KELSINGRA_TOKEN: TOKEN,
    KELSINGRA_CONFIG_DIR: configDir,
    KELSINGRA_HOLDER: HOLDER,
  };
  if (opts.profile)
    env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} --cpu-prof --cpu-prof-dir=${opts.profile}`.trim();
  const r = spawnSync(
    NODE,
    [server.bin, 'intercept', 'billing', '--tenant', 't1', '--port', String(localPort), '--detach', '--json'],
    {
      cwd: ROOT,
      env,
      encoding: 'utf8',
      timeout: 60_000,
    },
  );
  if (r.status !== 0) throw new Error(`intercept --detach failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  const ready: DetachedIntercept = JSON.parse(r.stdout.slice(r.stdout.indexOf('{')));
  orphanPids.add(ready.agentPid);
  const leave = async () => {
    spawnSync(NODE, [server.bin, 'leave', '--all'], { cwd: ROOT, env, encoding: 'utf8', timeout: 30_000 });
    const deadline = Date.now() + 10_000;
    while (alive(ready.agentPid) && Date.now() < deadline) await sleep(50);
    await stopPid(ready.agentPid);
    orphanPids.delete(ready.agentPid);
  };
  log(`  intercept ${ready.id} (${label}): client agent pid ${ready.agentPid}`);
  return { pid: ready.agentPid, id: ready.id, leave };
}

const VIA = (tenant: string) => ({ 'x-kelsingra-service': 'billing', 'x-tenant-id': tenant });

/** The intercept benchmarks' set-up: a local service, a base service, and a server agent for them. */
async function startInterceptSetup(label: string) {
  const localPort = await freePort();
  const basePort = await freePort();
  await start('local service', NODE, [SERVICES, 'service', String(localPort), 'local'], { ready: /ready/ });
  await start('base service', NODE, [SERVICES, 'service', String(basePort), 'base'], { ready: /ready/ });
  const ks = await startKelsingra(label, `http://127.0.0.1:${basePort}`);
  return { localPort, ks };
}

const servedByLocal = (r: HttpResponse) => r.status === 200 && r.headers.get('x-served-by') === 'local';

/** Waits until tenant t1's requests reach the local service through `ks`. */
function waitIntercepted(ks: Kelsingra, what: string, timeoutMs?: number) {
  return waitHttp(
    `${ks.data}/`,
    VIA('t1'),
    (r) => r.status === 200 && r.headers.get('x-served-by') === 'local',
    what,
    timeoutMs,
  );
}

// ---------------------------------------------------------------- 1. pass-through

async function benchPassthrough() {
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

  const headers = VIA('t2');
  const targets: Target<'direct' | 'nginx' | 'replyFrom' | 'kelsingra'>[] = [
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
  ];
  for (const t of targets)
    await waitHttp(t.url, headers, (r) => r.status === 200 && r.text === SMALL_BODY, t.label);
  const res = Object.assign(await measure(targets), { kelsingraServerMem: memOf(ks.proc.pid) });
  await stopAll();
  return res;
}

// ---------------------------------------------------------------- 2. intercepted

async function benchIntercept() {
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
async function benchGrpc() {
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

// ---------------------------------------------------------------- tunnel protocols side by side

/**
 * The tunnel protocol chosen by measurement (issue 15): the same local service direct, through
 * `ssh -R`, through the product's tunnel (this build, and with --old DIR another checkout's),
 * through the HTTP/2-over-the-raw-socket prototype (proto/h2raw-*.ts) and through the bare
 * lean-framing prototype (proto/lean-*.ts: the product's design with none of its own work,
 * its ceiling), in one interleaved run.
 */
async function benchProto() {
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

// ---------------------------------------------------------------- 3. bulk transfer

/** One transfer: how long it took, and MB (10^6 bytes) per second. */
interface Rate {
  seconds: number;
  mbps: number;
}

function upload(url: string, headers: Record<string, string>, bytes: number): Promise<Rate> {
  const chunk = Buffer.alloc(64 * 1024, 'u');
  return new Promise((res, rej) => {
    const t0 = performance.now();
    const req = http.request(url, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/octet-stream', 'content-length': bytes },
    });
    req.setTimeout(300_000, () => req.destroy(new Error('upload timed out')));
    req.on('error', rej);
    req.on('response', (r) => {
      let body = '';
      r.setEncoding('utf8');
      r.on('data', (c: string) => (body += c));
      r.on('end', () => {
        const seconds = (performance.now() - t0) / 1000;
        if (r.statusCode !== 200) return rej(new Error(`upload: HTTP ${r.statusCode} ${body.slice(0, 300)}`));
        const { bytes: got }: { bytes: unknown } = JSON.parse(body);
        if (got !== bytes) return rej(new Error(`upload: local service received ${got} of ${bytes} bytes`));
        res({ seconds, mbps: bytes / 1e6 / seconds });
      });
    });
    let sent = 0;
    const pump = () => {
      while (sent < bytes) {
        const n = Math.min(chunk.length, bytes - sent);
        sent += n;
        if (!req.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
          req.once('drain', pump);
          return;
        }
      }
      req.end();
    };
    pump();
  });
}

function download(url: string, headers: Record<string, string>, bytes: number): Promise<Rate> {
  return new Promise((res, rej) => {
    const t0 = performance.now();
    const req = http.get(`${url}?bytes=${bytes}`, { headers }, (r) => {
      if (r.statusCode !== 200) {
        r.resume();
        return rej(new Error(`download: HTTP ${r.statusCode}`));
      }
      let got = 0;
      r.on('data', (c: Buffer) => (got += c.length));
      r.on('error', rej);
      r.on('end', () => {
        const seconds = (performance.now() - t0) / 1000;
        if (got !== bytes) return rej(new Error(`download: received ${got} of ${bytes} bytes`));
        res({ seconds, mbps: bytes / 1e6 / seconds });
      });
    });
    req.setTimeout(300_000, () => req.destroy(new Error('download timed out')));
    req.on('error', rej);
  });
}

async function benchTransfer() {
  const gib = opts.bytes / 1024 ** 3;
  log(
    `\n== 3. Bulk transfer through the tunnel: ${fmt(gib, 2)} GiB each way, server and client agents as separate processes`,
  );
  const { localPort, ks } = await startInterceptSetup('transfer');
  const local = `http://127.0.0.1:${localPort}`;
  const agent = await startIntercept(ks, localPort, 'transfer benchmark');
  const headers = VIA('t1');
  await waitIntercepted(ks, 'intercepted route');

  const bytes = opts.bytes;
  const idle = { server: memOf(ks.proc.pid), agent: memOf(agent.pid) };
  const directUpload = await upload(`${local}/upload`, {}, opts.bytes);
  const directDownload = await download(`${local}/download`, {}, opts.bytes);
  log(
    `  direct to local service: upload ${fmt(directUpload.mbps, 0)} MB/s, download ${fmt(directDownload.mbps, 0)} MB/s`,
  );
  const tunnelUpload = await upload(`${ks.data}/upload`, headers, opts.bytes);
  const afterUpload = { server: memOf(ks.proc.pid), agent: memOf(agent.pid) };
  log(
    `  tunnel upload:   ${fmt(tunnelUpload.mbps, 0)} MB/s (${fmt(tunnelUpload.seconds, 1)} s); peak RSS server ${fmt(afterUpload.server.hwmMiB, 0)} MiB, client ${fmt(afterUpload.agent.hwmMiB, 0)} MiB`,
  );
  const tunnelDownload = await download(`${ks.data}/download`, headers, opts.bytes);
  const afterDownload = { server: memOf(ks.proc.pid), agent: memOf(agent.pid) };
  log(
    `  tunnel download: ${fmt(tunnelDownload.mbps, 0)} MB/s (${fmt(tunnelDownload.seconds, 1)} s); peak RSS server ${fmt(afterDownload.server.hwmMiB, 0)} MiB, client ${fmt(afterDownload.agent.hwmMiB, 0)} MiB`,
  );
  await agent.leave();
  await stopAll();
  return {
    bytes,
    idle,
    directUpload,
    directDownload,
    upload: tunnelUpload,
    afterUpload,
    download: tunnelDownload,
    afterDownload,
  };
}

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
async function benchRetained() {
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

// ---------------------------------------------------------------- 4. live view

/** CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1];
  if (stat === undefined) throw new Error(`/proc/${pid}/stat: no ") " after the command name`);
  const fields = stat.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/**
 * A foreground `intercept` as a developer runs it: with the Ink live view in a real terminal
 * (tmux), or with --json into /dev/null. Resolves once the route is live, with the CLI's pid
 * and a function that leaves (q in the terminal, SIGINT otherwise).
 */
async function startForeground(
  server: Kelsingra,
  localPort: number,
  mode: 'json' | 'live',
  extraEnv: Record<string, string> = {},
) {
  const configDir = mkdtempSync(join(WORK, 'client-'));
  const env = {
    ...extraEnv,
    KELSINGRA_SERVER: server.control,
    KELSINGRA_TOKEN: TOKEN,
    KELSINGRA_CONFIG_DIR: configDir,
    KELSINGRA_HOLDER: HOLDER,
  };
  const args = [BIN, 'intercept', 'billing', '--tenant', 't1', '--port', String(localPort)];
  let leave: () => Promise<void>;
  let pid: number;
  let output: (() => string) | undefined;
  if (mode === 'live') {
    const socket = `kelsingra-bench-${process.pid}`;
    const envArgs = Object.entries({ ...env, CI: '0', TERM: 'xterm-256color' }).map(([k, v]) => `${k}=${v}`);
    const r = spawnSync(
      'tmux',
      ['-L', socket, 'new-session', '-d', '-x', '160', '-y', '50', 'env', ...envArgs, NODE, ...args],
      {
        cwd: ROOT,
        encoding: 'utf8',
      },
    );
    if (r.status !== 0) throw new Error(`tmux failed: ${r.stderr}`);
    const pane = () =>
      spawnSync('tmux', ['-L', socket, 'list-panes', '-F', '#{pane_pid}'], {
        encoding: 'utf8',
      }).stdout.trim();
    pid = Number(pane());
    leave = async () => {
      spawnSync('tmux', ['-L', socket, 'send-keys', 'q']);
      const deadline = Date.now() + 10_000;
      while (alive(pid) && Date.now() < deadline) await sleep(50);
      spawnSync('tmux', ['-L', socket, 'kill-server']);
      await stopPid(pid);
    };
    orphanPids.add(pid);
  } else {
    const proc = await start('intercept --json', NODE, [...args, '--json'], { env });
    output = proc.output;
    // stdout is read and dropped here: the same as `> /dev/null`, without a shell in between.
    pid = proc.pid;
    leave = async () => {
      proc.child.kill('SIGINT');
      await stop(proc);
    };
  }
  await waitIntercepted(server, `intercepted route (${mode})`, 30_000);
  return { pid, leave, output: () => output?.() ?? '' };
}

async function benchLiveView() {
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

// ---------------------------------------------------------------- 5. one tenant's slow uploads

/**
 * `n` uploads of `tenant` to `url` announcing 1 MB and sending a byte every 10 s, each on its
 * own connection, opened in batches the listen backlog takes. Each records how it ended.
 */
async function trickles(url: string, tenant: string, n: number) {
  const { hostname, port } = new URL(url);
  const state = { answered: new Map<string, number>(), ended: 0, list: [] as net.Socket[] };
  for (let i = 0; i < n; i++) {
    const socket = net.connect(Number(port), hostname);
    let timer: NodeJS.Timeout | undefined;
    let head = '';
    let ended = false;
    const end = () => {
      clearInterval(timer);
      if (!ended) state.ended++;
      ended = true;
    };
    socket.on('connect', () => {
      socket.write(
        `POST /upload HTTP/1.1\r\nhost: billing\r\nx-kelsingra-service: billing\r\nx-tenant-id: ${tenant}\r\ncontent-length: 1000000\r\n\r\nx`,
      );
      timer = setInterval(() => socket.write('x'), 10_000);
    });
    socket.on('data', (c: Buffer) => {
      if (head.includes('\r\n\r\n')) return;
      head += c.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      end();
      const what =
        `${head.split(' ')[1]} ${/^x-kelsingra-error: (.*)$/im.exec(head)?.[1]?.trim() ?? ''}`.trim();
      state.answered.set(what, (state.answered.get(what) ?? 0) + 1);
    });
    socket.on('error', () => undefined);
    socket.on('close', end);
    state.list.push(socket);
    if (i % 100 === 99) await sleep(50);
  }
  return {
    state,
    held: () => n - state.ended,
    close: () => {
      for (const s of state.list) s.destroy();
    },
  };
}

/**
 * Two identical server agents on one upstream, loaded at once by one wrk each as tenant
 * "quiet"; in each round one of them (alternating) also has the slow uploads of tenant "hog".
 * Loaded together, whatever else the machine does hits both alike: the ratio of their req/s is
 * what the slow uploads cost, where two runs one after the other would differ by more.
 */
async function benchTrickle() {
  log(
    `\n== 5. Slow uploads: another tenant's req/s (wrk -t1 -c${opts.conns}, ${opts.duration} s) on two server agents loaded at once, one of them also with ${opts.trickles} uploads of one tenant sending a byte every 10 s; ${opts.rounds} rounds (median)`,
  );
  // nginx holds an upload until it has the whole body (request buffering), as a service would.
  const upPort = await freePort();
  await startNginx(
    WORK,
    'nginx-upstream-trickle',
    `  server {
    listen 127.0.0.1:${upPort};
    location / { default_type text/plain; return 200 "${SMALL_BODY.replace('\n', '\\n')}"; }
    location /upload { proxy_pass http://127.0.0.1:${upPort}/; }
  }`,
    [`http://127.0.0.1:${upPort}/`],
  );
  const headers = VIA('quiet');
  const agents: { ks: Kelsingra; url: string }[] = [];
  for (const name of ['a', 'b']) {
    const ks = await startKelsingra(`trickle-${name}`, `http://127.0.0.1:${upPort}`);
    await waitHttp(`${ks.data}/`, headers, (r) => r.status === 200 && r.text === SMALL_BODY, `agent ${name}`);
    agents.push({ ks, url: `${ks.data}/` });
  }
  const load = (seconds: number) =>
    Promise.all(
      agents.map(async ({ ks, url }) => {
        const cpu = cpuSeconds(ks.proc.pid);
        const r = await wrk(url, { conns: opts.conns, seconds, headers });
        return { ...r, cpuPerReq: (cpuSeconds(ks.proc.pid) - cpu) / r.requests };
      }),
    );
  await load(opts.warmup);
  const rounds = [];
  for (let round = 1; round <= opts.rounds; round++) {
    const slow = round % 2;
    const slowAgent = agents[slow];
    if (!slowAgent) throw new Error(`no agent ${slow}`);
    const hog = await trickles(slowAgent.ks.data, 'hog', opts.trickles);
    // Until each upload is either held (and has sent its first byte) or refused.
    await sleep(2_000);
    const results = await load(opts.duration);
    const held = hog.held();
    const answered = Object.fromEntries(hog.state.answered);
    hog.close();
    await sleep(1_000);
    const [calm, trickled] = slow ? results : [results[1], results[0]];
    if (!calm || !trickled) throw new Error('one result per agent expected');
    const r = {
      calm: calm.rps,
      trickled: trickled.rps,
      ratio: trickled.rps / calm.rps,
      cpuRatio: trickled.cpuPerReq / calm.cpuPerReq,
      p99Calm: calm.p99,
      p99Trickled: trickled.p99,
      held,
      answered,
    };
    rounds.push(r);
    log(
      `  round ${round} calm agent ${fmt(r.calm, 0)} req/s, agent with the slow uploads ${fmt(r.trickled, 0)} req/s: ratio ${fmt(r.ratio, 3)}  CPU/req ratio ${fmt(r.cpuRatio, 3)}  p99 ${fmt(r.p99Calm, 2)} / ${fmt(r.p99Trickled, 2)} ms  slow uploads held ${held}, answered ${JSON.stringify(answered)}`,
    );
  }
  const res = {
    calm: median(rounds.map((r) => r.calm)),
    trickled: median(rounds.map((r) => r.trickled)),
    ratio: median(rounds.map((r) => r.ratio)),
    cpuRatio: median(rounds.map((r) => r.cpuRatio)),
    rounds,
  };
  await stopAll();
  return res;
}

// ---------------------------------------------------------------- report

/** One row per tunnel target: req/s and its ratio to direct, latency, CPU per request on each side. */
function tunnelTable<K extends string>(
  res: Partial<Record<K, Measured>> & { direct: Measured },
  keys: readonly K[],
): string {
  const d = res.direct;
  return table([
    [
      'Target',
      `req/s @${opts.conns} conns`,
      '÷ direct',
      `p99 @${opts.conns} (ms)`,
      'p50 @1 conn (ms)',
      'p50 added (ms)',
      'server side CPU/req (µs)',
      'client side CPU/req (µs)',
    ],
    ...keys.flatMap((k) => {
      const r: Measured | undefined = res[k];
      if (!r) return [];
      return [
        [
          r.label,
          fmt(r.rps, 0),
          fmt(r.rps / d.rps, 2),
          fmt(r.p99, 2),
          fmt(r.p50c1, 3),
          k === 'direct' ? '—' : fmt(r.p50c1 - d.p50c1, 3),
          k === 'direct' ? '—' : fmt(r.cpuUs.server, 1),
          k === 'direct' ? '—' : fmt(r.cpuUs.client, 1),
        ],
      ];
    }),
  ]);
}

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
