/**
 * Helpers shared by the benchmark scripts (run.ts, replicas.ts): tracked child processes
 * that are all stopped on exit, Ctrl-C or failure; free ports on 127.0.0.1; HTTP readiness
 * waits; wrk runs; medians, percentiles and tables.
 *
 * Importing this module installs the SIGINT/SIGTERM handlers: they stop every tracked
 * process, run the hooks registered with onCleanup (in order), then exit.
 *
 * Over 400 lines on purpose: it is the toolbox every script imports; each part is small and
 * stands alone (processes, ports, waits, wrk, statistics, tables), found by its section divider.
 */

import { type ChildProcess, type ChildProcessByStdio, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { type ParseArgsOptionDescriptor, parseArgs } from 'node:util';
import pg from 'pg';

export const ROOT = resolve(import.meta.dirname, '../..');

// ---------------------------------------------------------------- process bookkeeping

/** A process in `children`: stopped on exit; `output()` is the tail of what it printed. */
export interface TrackedProcess {
  name: string;
  child: ChildProcess;
  pid: number | undefined;
  output: () => string;
}

/** A process started by `start`: its stdout and stderr are pipes, and it has a pid. */
export interface Proc extends TrackedProcess {
  child: ChildProcessByStdio<null, Readable, Readable>;
  pid: number;
}

export interface StartOptions {
  /** Added to this process's environment (with NO_COLOR=1). */
  env?: Record<string, string | undefined>;
  /** Matched against stdout+stderr: `start` resolves once it does. */
  ready?: RegExp;
  timeoutMs?: number;
}

/** Children we spawned, and detached agents we only know by pid. */
export const children = new Set<TrackedProcess>();
export const orphanPids = new Set<number>();

export function log(line: string): void {
  process.stdout.write(`${line}\n`);
}

/** Spawns a tracked process; resolves once `ready` (a regexp on stdout+stderr) matches, if given. */
export function start(
  name: string,
  cmd: string,
  args: readonly string[],
  { env = {}, ready, timeoutMs = 20_000 }: StartOptions = {},
): Promise<Proc> {
  const child = spawn(cmd, args, {
    cwd: ROOT,
    env: { ...process.env, NO_COLOR: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const keep = (c: Buffer) => {
    output += c.toString();
    if (output.length > 64 * 1024) output = output.slice(-32 * 1024);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  if (child.pid === undefined) throw new Error(`${name}: could not spawn ${cmd}`);
  const proc: Proc = { name, child, pid: child.pid, output: () => output };
  children.add(proc);
  child.once('exit', () => children.delete(proc));
  if (!ready) return Promise.resolve(proc);
  return new Promise<Proc>((res, rej) => {
    const timer = setTimeout(
      () => rej(new Error(`${name} did not become ready in ${timeoutMs} ms:\n${output}`)),
      timeoutMs,
    );
    const check = () => {
      if (ready.test(output)) {
        clearTimeout(timer);
        child.stdout.off('data', check);
        child.stderr.off('data', check);
        res(proc);
      }
    };
    child.stdout.on('data', check);
    child.stderr.on('data', check);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      rej(new Error(`${name} exited (${code ?? signal}) before it was ready:\n${output}`));
    });
  });
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function stopPid(pid: number, graceMs = 10_000): Promise<void> {
  if (!alive(pid)) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (alive(pid) && Date.now() < deadline) await sleep(50);
  if (alive(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {}
  }
}

export async function stop(proc: TrackedProcess): Promise<void> {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return;
  const exited = new Promise((r) => proc.child.once('exit', r));
  proc.child.kill('SIGTERM');
  const t = setTimeout(() => proc.child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(t);
}

export async function stopAll(): Promise<void> {
  await Promise.all([...children].map(stop));
  await Promise.all([...orphanPids].map((pid) => stopPid(pid)));
  orphanPids.clear();
}

/**
 * Extra clean-up (temp dirs, databases, brokers), run in order after every tracked process has
 * stopped; with `beforeStop`, before (to close in-process clients of those processes quietly).
 */
export type CleanupHook = () => unknown;
const cleanupHooks: CleanupHook[] = [];
const beforeStopHooks: CleanupHook[] = [];
export function onCleanup(fn: CleanupHook, { beforeStop = false }: { beforeStop?: boolean } = {}): void {
  (beforeStop ? beforeStopHooks : cleanupHooks).push(fn);
}

async function runHooks(hooks: readonly CleanupHook[]) {
  for (const hook of hooks) {
    try {
      await hook();
    } catch (err) {
      console.error(`clean-up step failed: ${(err instanceof Error ? err.message : undefined) ?? err}`);
    }
  }
}

let cleaning = false;
export async function cleanupAndExit(code: number): Promise<void> {
  if (cleaning) return;
  cleaning = true;
  await runHooks(beforeStopHooks);
  await stopAll().catch(() => undefined);
  await runHooks(cleanupHooks);
  process.exit(code);
}

// Said out loud: on a shared machine a run stopped by someone else's clean-up otherwise just ends.
process.on('SIGINT', () => {
  console.error('stopped by SIGINT: cleaning up');
  cleanupAndExit(130);
});
process.on('SIGTERM', () => {
  console.error('stopped by SIGTERM: cleaning up');
  cleanupAndExit(143);
});
process.on('exit', () => {
  // Last resort if something threw past the handlers: nothing may outlive the run.
  for (const p of children) p.child.kill('SIGKILL');
  for (const pid of orphanPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {}
  }
});

// ---------------------------------------------------------------- small helpers

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const address = s.address();
      if (address === null || typeof address === 'string')
        return rej(new Error(`a TCP server has no port: ${address}`));
      const { port } = address;
      s.close(() => res(port));
    });
  });
}

export function which(cmd: string): string {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' }).stdout.trim();
}

/**
 * Installs missing command-line tools with apt-get when running as root on Debian. With
 * `required`, exits (2) if any is still missing; otherwise returns the ones still missing.
 */
/** Debian packages of the tools whose package is named otherwise. */
const PACKAGES: Record<string, string> = {
  sshd: 'openssh-server',
  ssh: 'openssh-client',
  'ssh-keygen': 'openssh-client',
  h2load: 'nghttp2-client',
};

export function ensureTools(
  tools: readonly string[],
  { required = true }: { required?: boolean } = {},
): string[] {
  const missing = tools.filter((t) => !which(t) && !existsSync(`/usr/sbin/${t}`));
  if (missing.length === 0) return [];
  const packages = [...new Set(missing.map((t) => PACKAGES[t] ?? t))];
  if (process.getuid?.() === 0 && which('apt-get')) {
    log(`installing ${packages.join(', ')} (apt-get)…`);
    const r = spawnSync(
      'sh',
      [
        '-c',
        `apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${packages.join(' ')}`,
      ],
      { stdio: 'inherit' },
    );
    if (r.status === 0) return [];
  }
  if (!required) return missing;
  console.error(
    `missing ${missing.join(', ')}: install them (Debian: apt-get install -y ${packages.join(' ')})`,
  );
  process.exit(2);
}

/** Peak and current resident memory of a process, in MiB. */
export interface Mem {
  hwmMiB: number;
  rssMiB: number;
}

/** Peak and current resident memory of a process, in MiB. */
export function memOf(pid: number): Mem {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? Number.NaN);
  return { hwmMiB: kb('VmHWM') / 1024, rssMiB: kb('VmRSS') / 1024 };
}

/** Read and write syscalls a process has made so far. */
export interface Io {
  syscr: number;
  syscw: number;
}

/** Read and write syscalls a process has made so far. */
export function ioOf(pid: number): Io {
  const io = readFileSync(`/proc/${pid}/io`, 'utf8');
  return { syscr: Number(/^syscr:\s+(\d+)/m.exec(io)?.[1]), syscw: Number(/^syscw:\s+(\d+)/m.exec(io)?.[1]) };
}

export interface HttpResponse {
  status: number;
  headers: Headers;
  text: string;
}

export async function get(url: string | URL, headers: Record<string, string> = {}): Promise<HttpResponse> {
  const res = await fetch(url, { headers });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

export async function waitHttp(
  url: string | URL,
  headers: Record<string, string> | undefined,
  check: (r: HttpResponse) => boolean,
  what: string,
  timeoutMs = 20_000,
): Promise<HttpResponse> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    try {
      const r = await get(url, headers);
      if (check(r)) return r;
      last = `HTTP ${r.status} ${r.text.slice(0, 200)}`;
    } catch (err) {
      last = String((err instanceof Error ? err.cause : undefined) ?? err);
    }
    if (Date.now() > deadline) throw new Error(`${what} not answering as expected at ${url}: ${last}`);
    await sleep(100);
  }
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  // An empty list has no middle: NaN.
  const at = (i: number) => s[i] ?? Number.NaN;
  return s.length % 2 ? at(m) : (at(m - 1) + at(m)) / 2;
}

/** Nearest-rank percentile (q in 0..100) of a list of numbers. */
export function percentile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((q / 100) * s.length) - 1))] ?? Number.NaN;
}

// ---------------------------------------------------------------- wrk

export function toMs(value: string | number | undefined, unit: string | undefined): number {
  const v = Number(value);
  return unit === 'us'
    ? v / 1000
    : unit === 'ms'
      ? v
      : unit === 's'
        ? v * 1000
        : unit === 'm'
          ? v * 60_000
          : Number.NaN;
}

/**
 * One wrk run (always -t1), with fixed headers or a Lua script (`script`: its path). Returns
 * requests/s and latency percentiles in ms.
 */
export interface WrkOptions {
  conns: number;
  seconds: number;
  headers?: Record<string, string>;
  /** Path of a Lua script. */
  script?: string;
}

export interface WrkResult {
  rps: number;
  /** Latency percentiles, in ms. */
  p50: number;
  p99: number;
  requests: number;
  /** Socket errors (connect, read, write, timeout). */
  errors: number;
  /** wrk's output. */
  raw: string;
}

export function wrk(url: string, { conns, seconds, headers = {}, script }: WrkOptions): Promise<WrkResult> {
  const args = ['-t1', `-c${conns}`, `-d${seconds}s`, '--latency', '--timeout', '10s'];
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`);
  if (script) args.push('-s', script);
  args.push(url);
  return new Promise((res, rej) => {
    const child = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const proc: TrackedProcess = { name: 'wrk', child, pid: child.pid, output: () => out };
    children.add(proc);
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c));
    child.stderr.on('data', (c: Buffer) => (out += c));
    const timer = setTimeout(() => child.kill('SIGKILL'), (seconds + 30) * 1000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      children.delete(proc);
      if (code !== 0) return rej(new Error(`wrk ${args.join(' ')} failed (${code}):\n${out}`));
      const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]);
      const pct = (p: number) => {
        const m = new RegExp(`^\\s+${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(out);
        return m ? toMs(m[1], m[2]) : Number.NaN;
      };
      const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? 0);
      const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
      const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
      const errors = sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0;
      if (!Number.isFinite(rps) || requests === 0)
        return rej(new Error(`could not read wrk output:\n${out}`));
      if (non2xx > 0)
        return rej(new Error(`${non2xx} of ${requests} responses were not 2xx from ${url}:\n${out}`));
      res({ rps, p50: pct(50), p99: pct(99), requests, errors, raw: out });
    });
  });
}

/** `n` with `digits` decimals; 'n/a' when it is not a finite number (a figure that was not taken). */
export function fmt(n: number | undefined, digits = 2): string {
  return n !== undefined && Number.isFinite(n) ? n.toFixed(digits) : 'n/a';
}

// ---------------------------------------------------------------- report

export function table(rows: readonly (readonly unknown[])[]): string {
  const [head] = rows;
  if (!head) throw new Error('table() needs at least a header row');
  const widths = head.map((_, i) => Math.max(...rows.map((r) => String(r[i]).length)));
  const line = (r: readonly unknown[]) =>
    `| ${r.map((c, i) => String(c).padEnd(widths[i] ?? 0)).join(' | ')} |`;
  return [line(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.slice(1).map(line)].join(
    '\n',
  );
}

/**
 * `--name value` options over `defaults` (node:util parseArgs; numbers are converted and must
 * be positive; booleans take no value), and the positional arguments, each of which must be
 * one of `positionals`. Anything else is a usage error, reported with `usageText`.
 */
export type OptionValue = number | string | boolean;

/**
 * What parseOptions returns: `defaults`' shape, and the positional arguments in `_`. A boolean
 * default is inferred as the literal `false`; the option is a boolean.
 */
export type Options<T extends Record<string, OptionValue>> = {
  [K in keyof T]: T[K] extends boolean ? boolean : T[K] extends number ? number : string;
} & { _: string[] };

export function parseOptions<T extends Record<string, OptionValue>>(
  argv: string[],
  defaults: T,
  usageText: string,
  positionals: readonly string[] = [],
): Options<T> {
  function usage(msg: string): never {
    console.error(`${msg}\nusage: ${usageText}`);
    process.exit(2);
  }
  let parsed: { values: Record<string, unknown>; positionals: string[] };
  try {
    parsed = parseArgs({
      args: argv,
      options: Object.fromEntries(
        Object.entries(defaults).map(([k, v]) => [
          k,
          { type: typeof v === 'boolean' ? 'boolean' : 'string' } satisfies ParseArgsOptionDescriptor,
        ]),
      ),
      allowPositionals: positionals.length > 0,
      strict: true,
    });
  } catch (err) {
    usage(err instanceof Error ? err.message : String(err));
  }
  const opts: Record<string, OptionValue> = { ...defaults };
  for (const [key, value] of Object.entries(parsed.values)) {
    // Only strings and booleans here: no option is `multiple`.
    if (typeof value !== 'string' && typeof value !== 'boolean') continue;
    const v = typeof defaults[key] === 'number' ? Number(value) : value;
    opts[key] = v;
    if (typeof v === 'number' && !(v > 0)) usage(`--${key} needs a positive number`);
  }
  for (const p of parsed.positionals) if (!positionals.includes(p)) usage(`unknown argument ${p}`);
  // parseArgs checked every name against `defaults` and the values were converted to their types.
  return { ...opts, _: parsed.positionals } as Options<T>;
}

/** What a results file records about the machine and the run's start. */
export interface MachineInfo {
  node: string;
  cores: number;
  cpu: string | undefined;
  startedAt: string;
  loadStart: string;
}

/** What a results file records about the machine and the run's start. */
export function machineInfo(): MachineInfo {
  const [load1 = Number.NaN] = os.loadavg();
  return {
    node: process.versions.node,
    cores: os.cpus().length,
    cpu: os.cpus()[0]?.model,
    startedAt: new Date().toISOString(),
    loadStart: load1.toFixed(2),
  };
}

/** Says why a benchmark failed, with the tail of every process it started; returns the exit code. */
export function reportFailure(err: unknown): number {
  console.error(`\nbenchmark failed: ${(err instanceof Error ? err.stack : undefined) ?? err}`);
  for (const p of children) console.error(`--- ${p.name} output (tail):\n${p.output().slice(-2000)}`);
  return 1;
}

/** PostgreSQL the benchmarks create their databases in (KELSINGRA_BENCH_PG to change it). */
export const ADMIN_DB_URL = process.env.KELSINGRA_BENCH_PG ?? 'postgres://postgres@127.0.0.1:5432/postgres';

/** A fresh database for this run, dropped (WITH (FORCE)) when the script ends. */
export interface Database {
  name: string;
  url: string;
}

export async function createDatabase(
  name: string,
  { hint = 'start it, or set KELSINGRA_BENCH_PG' }: { hint?: string } = {},
): Promise<Database> {
  const admin = new pg.Client({ connectionString: ADMIN_DB_URL });
  await admin.connect().catch((err: unknown) => {
    const message = err instanceof Error ? err.message : undefined;
    throw new Error(`cannot reach PostgreSQL at ${ADMIN_DB_URL} (${message}): ${hint}`);
  });
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  onCleanup(async () => {
    const c = new pg.Client({ connectionString: ADMIN_DB_URL });
    await c.connect();
    try {
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    } finally {
      await c.end();
    }
  });
  const url = new URL(ADMIN_DB_URL);
  url.pathname = `/${name}`;
  return { name, url: url.toString() };
}

/** An nginx config tuned for benchmarks (one worker, long keep-alive, temp files in `dir`) around `body`. */
export function nginxConf(dir: string, body: string): string {
  mkdirSync(dir, { recursive: true });
  return `worker_processes 1;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 65s;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
${body}
}
`;
}

/** The body every pass-through benchmark's upstream answers with. */
export const SMALL_BODY = 'hello from upstream\n';

/** An nginx `server` on 127.0.0.1:`port` answering SMALL_BODY; `extra`: more directives for it. */
export function smallBodyServer(port: number, extra = ''): string {
  return `  server {
    listen 127.0.0.1:${port};
    location / { default_type text/plain; ${extra}return 200 "${SMALL_BODY.replace('\n', '\\n')}"; }
  }`;
}

/**
 * Starts nginx (one worker, see nginxConf) with `body` as its http block's content, its files
 * under `workDir/name`, and waits until each of `readyUrls` answers 200. `cpu` pins it to
 * that core where taskset exists.
 */
export async function startNginx(
  workDir: string,
  name: string,
  body: string,
  readyUrls: readonly string[],
  { cpu }: { cpu?: number } = {},
): Promise<Proc> {
  const dir = join(workDir, name);
  const conf = join(workDir, `${name}.conf`);
  writeFileSync(conf, nginxConf(dir, body));
  const nginx = which('nginx') || '/usr/sbin/nginx';
  const args = ['-e', join(dir, 'startup.log'), '-p', dir, '-c', conf];
  const proc =
    cpu !== undefined && which('taskset')
      ? await start(name, 'taskset', ['-c', String(cpu), nginx, ...args])
      : await start(name, nginx, args);
  for (const url of readyUrls) await waitHttp(url, {}, (r) => r.status === 200, name);
  return proc;
}

/**
 * Exits 2 with a hint unless this runs on Node 24 and the build is there: `how` is the
 * command that does both (`npm run bench:scale`), `files` what the script loads from dist/.
 */
export function requireBuild(how: string, files: readonly string[] = ['commands/server.js']): void {
  if (Number(process.versions.node.split('.')[0]) < 24) {
    console.error(`Node ${process.versions.node}: run with Node 24 (${how})`);
    process.exit(2);
  }
  for (const f of files) {
    if (!existsSync(resolve(ROOT, 'dist', f))) {
      console.error(`dist/${f} is missing: npm run build first (${how} does)`);
      process.exit(2);
    }
  }
}
