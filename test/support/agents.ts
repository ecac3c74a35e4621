/**
 * The agents as real processes: the built CLI, a server agent on free ports, a detached
 * intercept, and an isolated client config dir per test.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execa, type Options } from 'execa';
import { expect } from 'vitest';
import { processRunning } from '../../src/client/intercept/client-identity.js';
import { type Cleanup, sleep, waitFor } from './waiting.js';

export const ROOT = resolve(import.meta.dirname, '..', '..');
export const BIN = join(ROOT, 'bin', 'run.js');

export function tempDir(prefix = 'kelsingra-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Runs the CLI to completion. */
export function cli(args: string[], env: Record<string, string> = {}, opts: Options = {}) {
  return execa(process.execPath, [BIN, ...args], {
    reject: false,
    env: { NO_COLOR: '1', ...env },
    timeout: 60_000,
    ...opts,
  });
}

export interface ServerProcess {
  child: ChildProcess;
  control: string;
  data: string;
  controlPort: number;
  proxyPort: number;
  logs: () => string;
  stop: () => Promise<void>;
}

/**
 * Spawns `kelsingra server` with exactly these arguments and waits for its "listening" log
 * line, which names the ports it really bound. Polling /healthz on a port chosen in advance
 * is not enough: if the server lost that port to a parallel test, whatever took it would answer.
 * `controlPort`, when given, must be the port the server reports.
 */
export async function spawnServerProcess(args: string[], env: Record<string, string>, controlPort?: number) {
  const child = spawn(process.execPath, [BIN, 'server', ...args], {
    env: { ...process.env, NO_COLOR: '1', KELSINGRA_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (output += c.toString()));
  const listening = (): { controlPort: number; proxyPort: number } | undefined => {
    for (const line of output.split('\n')) {
      if (!line.includes('server agent listening')) continue;
      const entry = JSON.parse(line) as { controlPort: number; proxyPort: number };
      return { controlPort: entry.controlPort, proxyPort: entry.proxyPort };
    }
    return undefined;
  };
  const deadline = Date.now() + 20_000;
  let ports: { controlPort: number; proxyPort: number } | undefined;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited early (${child.exitCode}):\n${output}`);
    ports = listening();
    if (ports) break;
    if (Date.now() > deadline) {
      killQuietly(child.pid);
      await exited(child);
      throw new Error(`server did not start:\n${output}`);
    }
    await sleep(50);
  }
  if (controlPort !== undefined && ports.controlPort !== controlPort) {
    killQuietly(child.pid);
    throw new Error(`server listens on ${ports.controlPort}, not ${controlPort}:\n${output}`);
  }
  return {
    child,
    control: `http://127.0.0.1:${ports.controlPort}`,
    data: `http://127.0.0.1:${ports.proxyPort}`,
    ...ports,
    logs: () => output,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await exited(child);
      }
    },
  };
}

/** Starts `kelsingra server` on ports the kernel picks, as a real process, once it listens. */
export async function startServerProcess(
  args: string[],
  env: Record<string, string> = {},
): Promise<ServerProcess> {
  return spawnServerProcess(['--port', '0', '--proxy-port', '0', ...args], env);
}

/** Environment for an isolated client that talks to `server` with `token`. */
export function clientEnv(
  server: ServerProcess,
  token: string,
  extra: Record<string, string> = {},
): Record<string, string> {
  return {
    KELSINGRA_SERVER: server.control,
    KELSINGRA_TOKEN: token,
    KELSINGRA_CONFIG_DIR: tempDir('kelsingra-client-'),
    ...extra,
  };
}

/** The CLI run to completion, with its output as text (for tests that compare or parse it). */
export async function run(args: string[], env: Record<string, string>) {
  const r = await cli(args, env);
  return { exitCode: r.exitCode, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** A CLI left running, whose output can be watched while it runs; killed by the cleanups if still running. */
export function background(args: string[], env: Record<string, string>, cleanups: Cleanup[]) {
  const sub = cli(args, env);
  let stdout = '';
  let stderr = '';
  sub.stdout?.on('data', (c: Buffer) => (stdout += c.toString()));
  sub.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  cleanups.push(async () => {
    if (sub.exitCode === null && sub.signalCode === null) {
      sub.kill('SIGKILL');
      await sub.catch(() => undefined);
    }
  });
  return {
    sub,
    stdout: () => stdout,
    stderr: () => stderr,
    describe: () => `stdout:\n${stdout}\nstderr:\n${stderr}`,
  };
}

/** What `intercept --detach --json` prints. */
export interface DetachedIntercept {
  id: string;
  service: string;
  tenant: string;
  holder: string;
  localPort: number;
  /** The server replica whose tunnel carries it. */
  replica?: string;
  agentPid: number;
  logFile: string;
}

/**
 * `intercept --detach --json`, asserted to succeed. The background agent must not outlive the
 * test: given cleanups, it is killed by them; given a function, that gets its pid to kill later.
 */
export async function interceptDetached(
  env: Record<string, string>,
  service: string,
  tenant: string,
  port: number,
  onAgent: Cleanup[] | ((pid: number) => unknown),
): Promise<DetachedIntercept> {
  const r = await run(
    ['intercept', service, '--tenant', tenant, '--port', String(port), '--detach', '--json'],
    env,
  );
  expect(r.exitCode, `intercept --detach failed:\n${r.stderr}`).toBe(0);
  const doc = JSON.parse(r.stdout) as DetachedIntercept;
  const pid = doc.agentPid;
  if (typeof pid === 'number') {
    if (Array.isArray(onAgent)) onAgent.push(() => killPid(pid));
    else onAgent(pid);
  }
  return doc;
}

/** True while `pid` runs. A zombie (exited, not yet reaped by whoever adopted it) counts as gone. */
export const alive = processRunning;

/** Sends `signal` to `pid` if there is one, ignoring a process that is already gone (for cleanups). */
export function killQuietly(pid: number | undefined, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (!pid) return;
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** Ends `pid` gracefully (SIGTERM, up to 5 s), then by force: for agents a test started in the background. */
export async function killPid(pid: number): Promise<void> {
  if (!alive(pid)) return;
  try {
    process.kill(pid, 'SIGTERM');
    await waitFor(() => !alive(pid), 5_000, `pid ${pid} to exit`);
  } catch {
    if (alive(pid)) killQuietly(pid);
  }
}

/** Resolves once `child` has exited (at once if it already has). */
export function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve()
    : new Promise((r) => child.once('exit', () => r()));
}
