/**
 * Test harness: real processes (the built CLI), real HTTP servers, free ports, and an
 * isolated client config dir per test.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execa, type Options } from 'execa';

export const ROOT = resolve(import.meta.dirname, '..');
export const BIN = join(ROOT, 'bin', 'run.js');

export function tempDir(prefix = 'kelsingra-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function listen(handler: http.RequestListener): Promise<{ server: http.Server; port: number; url: string }> {
  const server = http.createServer(handler);
  return new Promise((res) =>
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as AddressInfo).port;
      res({ server, port, url: `http://127.0.0.1:${port}` });
    }),
  );
}

/** A port nothing listens on (bound then released). */
export async function freePort(): Promise<number> {
  const { server, port } = await listen(() => undefined);
  await new Promise((r) => server.close(r));
  return port;
}

/** Runs the CLI to completion. */
export function cli(args: string[], env: Record<string, string> = {}, opts: Options = {}) {
  return execa(process.execPath, [BIN, ...args], { reject: false, env: { NO_COLOR: '1', ...env }, timeout: 60_000, ...opts });
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

/** Starts `kelsingra server` as a real process and waits until /healthz answers. */
export async function startServerProcess(args: string[], env: Record<string, string> = {}): Promise<ServerProcess> {
  const controlPort = await freePort();
  const proxyPort = await freePort();
  const child = spawn(process.execPath, [BIN, 'server', '--port', String(controlPort), '--proxy-port', String(proxyPort), ...args], {
    env: { ...process.env, NO_COLOR: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (output += c.toString()));
  const control = `http://127.0.0.1:${controlPort}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited early (${child.exitCode}):\n${output}`);
    try {
      const res = await fetch(`${control}/healthz`);
      if (res.ok) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`server did not start:\n${output}`);
    await sleep(100);
  }
  return {
    child,
    control,
    data: `http://127.0.0.1:${proxyPort}`,
    controlPort,
    proxyPort,
    logs: () => output,
    stop: async () => {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => child.once('exit', r));
      }
    },
  };
}

/** Environment for an isolated client that talks to `server` with `token`. */
export function clientEnv(server: ServerProcess, token: string, extra: Record<string, string> = {}): Record<string, string> {
  return { KELSINGRA_SERVER: server.control, KELSINGRA_TOKEN: token, KELSINGRA_CONFIG_DIR: tempDir('kelsingra-client-'), ...extra };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls until `check` returns a truthy value or the timeout passes. */
export async function waitFor<T>(check: () => T | Promise<T>, timeoutMs = 15_000, what = 'condition'): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(50);
  }
}

/** Sends a request to the data port as the reverse proxy would. */
export async function viaProxy(server: ServerProcess, service: string, tenant: string | undefined, path = '/', init: RequestInit = {}) {
  const headers = new Headers(init.headers);
  headers.set('x-kelsingra-service', service);
  if (tenant) headers.set('x-tenant-id', tenant);
  return fetch(`${server.data}${path}`, { ...init, headers });
}
