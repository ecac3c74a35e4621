/**
 * What the benchmarks of run.ts share to set up: the parsed command line, the run's temp dir,
 * and the pieces under test (an upstream, a Kelsingra server agent, an intercept, detached or
 * in the foreground).
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join, resolve } from 'node:path';
import {
  alive,
  freePort,
  type HttpResponse,
  log,
  onCleanup,
  orphanPids,
  type Proc,
  parseOptions,
  ROOT,
  requireBuild,
  sleep,
  smallBodyServer,
  start,
  startNginx,
  stop,
  stopPid,
  waitHttp,
} from '../lib.ts';

export const BIN = join(ROOT, 'bin', 'run.js');
export const SERVICES = join(import.meta.dirname, '..', 'services.ts');
export const PROTO = join(import.meta.dirname, '..', 'proto');
export const GRPC = join(import.meta.dirname, '..', 'grpc.ts');
export const NODE = process.execPath;
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
export const opts = parseOptions(
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
export const benches = opts._;
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

export const WORK = mkdtempSync(join(os.tmpdir(), 'kelsingra-bench-'));
chmodSync(WORK, 0o755); // nginx workers drop to an unprivileged user
onCleanup(() => rmSync(WORK, { recursive: true, force: true }));

// ---------------------------------------------------------------- the pieces under test

export async function startUpstream() {
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
export interface Kelsingra {
  proc: Proc;
  bin: string;
  control: string;
  data: string;
}

/** A server agent; `bin`: another checkout's bin/run.js (built), to compare commits in one run. */
export async function startKelsingra(
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
export async function startIntercept(server: Kelsingra, localPort: number, label: string) {
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

export const VIA = (tenant: string) => ({ 'x-kelsingra-service': 'billing', 'x-tenant-id': tenant });

/** The intercept benchmarks' set-up: a local service, a base service, and a server agent for them. */
export async function startInterceptSetup(label: string) {
  const localPort = await freePort();
  const basePort = await freePort();
  await start('local service', NODE, [SERVICES, 'service', String(localPort), 'local'], { ready: /ready/ });
  await start('base service', NODE, [SERVICES, 'service', String(basePort), 'base'], { ready: /ready/ });
  const ks = await startKelsingra(label, `http://127.0.0.1:${basePort}`);
  return { localPort, ks };
}

export const servedByLocal = (r: HttpResponse) =>
  r.status === 200 && r.headers.get('x-served-by') === 'local';

/** Waits until tenant t1's requests reach the local service through `ks`. */
export function waitIntercepted(ks: Kelsingra, what: string, timeoutMs?: number) {
  return waitHttp(
    `${ks.data}/`,
    VIA('t1'),
    (r) => r.status === 200 && r.headers.get('x-served-by') === 'local',
    what,
    timeoutMs,
  );
}

/**
 * A foreground `intercept` as a developer runs it: with the Ink live view in a real terminal
 * (tmux), or with --json into /dev/null. Resolves once the route is live, with the CLI's pid
 * and a function that leaves (q in the terminal, SIGINT otherwise).
 */
export async function startForeground(
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
