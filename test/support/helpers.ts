/**
 * Test harness: real processes (the built CLI), real HTTP servers, free ports, and an
 * isolated client config dir per test.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execa, type Options } from 'execa';
import { afterEach, expect } from 'vitest';
import { processRunning } from '../../src/client/intercept/client-identity.js';

export const ROOT = resolve(import.meta.dirname, '..', '..');
export const BIN = join(ROOT, 'bin', 'run.js');

export function tempDir(prefix = 'kelsingra-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function listen(
  handler: http.RequestListener,
): Promise<{ server: http.Server; port: number; url: string }> {
  const server = http.createServer(handler);
  return new Promise((res) =>
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as AddressInfo).port;
      res({ server, port, url: `http://127.0.0.1:${port}` });
    }),
  );
}

/**
 * A port nothing listens on, for "connection refused" cases. Privileged and unassigned on any
 * dev machine: unlike a freed ephemeral port, no parallel test can be handed it meanwhile.
 */
export const CLOSED_PORT = 1;

/** A free port for a process that binds it itself (bound then released). */
export async function freePort(): Promise<number> {
  const { server, port } = await listen(() => undefined);
  await new Promise((r) => server.close(r));
  return port;
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

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls until `check` returns a truthy value or the timeout passes. */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  timeoutMs = 15_000,
  what = 'condition',
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(50);
  }
}

/** Sends a request to the data port as the reverse proxy would. */
export async function viaProxy(
  server: ServerProcess,
  service: string,
  tenant: string | undefined,
  path = '/',
  init: RequestInit = {},
) {
  const headers = new Headers(init.headers);
  headers.set('x-kelsingra-service', service);
  if (tenant) headers.set('x-tenant-id', tenant);
  return fetch(`${server.data}${path}`, { ...init, headers });
}

export type Cleanup = () => unknown | Promise<unknown>;

/**
 * A list of cleanups run after each test, last registered first (agents and foreground CLIs
 * before the servers they talk to), each on its own so one failure does not hide the others.
 * Shared so files that start processes per test need not each keep their own list and hook.
 */
export function cleanupsAfterEach(): Cleanup[] {
  const cleanups: Cleanup[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) {
      try {
        await cleanup();
      } catch {
        // Best effort: one failed cleanup must not hide the others.
      }
    }
  });
  return cleanups;
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

/** Closes a test server at once, open keep-alive connections included (`close` alone waits for them). */
export function closeServer(s: http.Server | { server: http.Server } | undefined): Promise<void> {
  if (!s) return Promise.resolve();
  const server = s instanceof http.Server ? s : s.server;
  server.closeAllConnections();
  return new Promise((r) => server.close(() => r()));
}

/** The server agent's own health check of an upstream (not a request anyone sent). */
export function isHealthCheck(req: http.IncomingMessage): boolean {
  return req.headers['user-agent'] === 'kelsingra-health-check';
}

/**
 * An HTTP service that says who it is (`<name> <METHOD> <url>`, text/plain) and records its
 * hits (not health checks): 201 for a POST, 404 under /missing, 503 under /fail, else 200.
 * Closed by the cleanups.
 */
export async function textService(name: string, cleanups: Cleanup[]) {
  const hits: string[] = [];
  const svc = await listen((req, res) => {
    if (isHealthCheck(req)) return void res.end('ok');
    hits.push(`${req.method} ${req.url}`);
    req.resume();
    req.on('end', () => {
      const url = req.url ?? '';
      const status = url.startsWith('/fail')
        ? 503
        : url.startsWith('/missing')
          ? 404
          : req.method === 'POST'
            ? 201
            : 200;
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(`${name} ${req.method} ${url}`);
    });
  });
  cleanups.push(() => closeServer(svc));
  return { ...svc, hits };
}

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/**
 * An HTTP/1.1 request with full control of the headers (fetch refuses hop-by-hop ones and
 * Host), from a chosen local address, and over https trusting `ca` when the URL says https.
 */
export function rawRequest(
  url: string,
  opts: {
    method?: string;
    headers?: http.OutgoingHttpHeaders | string[];
    body?: Buffer | string;
    localAddress?: string;
    ca?: Buffer;
    /** The request target exactly as sent (`url` would merge `..` and never send absolute form). */
    target?: string;
  } = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const request = url.startsWith('https:') ? https.request : http.request;
    const req = request(
      url,
      {
        method: opts.method ?? 'GET',
        headers: opts.headers,
        ...(opts.target === undefined ? {} : { path: opts.target }),
        agent: false,
        localAddress: opts.localAddress,
        ca: opts.ca,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** A response body parsed as a JSON object. */
export function bodyJson(res: { body: Buffer }): Record<string, unknown> {
  return JSON.parse(res.body.toString('utf8')) as Record<string, unknown>;
}

/** Chunk `index` (64 KiB) of a deterministic byte pattern, for large bodies checked by hash. */
export function patternChunk(index: number): Buffer {
  const chunk = Buffer.alloc(64 * 1024);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (index * 31 + i * 7) & 0xff;
  return chunk;
}

/** Writes `total` bytes of the pattern to `res` with backpressure, then ends it. */
export function writePattern(
  res: NodeJS.WritableStream & { once: (e: string, f: () => void) => unknown },
  total: number,
): void {
  let written = 0;
  let index = 0;
  const pump = () => {
    while (written < total) {
      const chunk = patternChunk(index++).subarray(0, Math.min(64 * 1024, total - written));
      written += chunk.length;
      if (!res.write(chunk)) {
        res.once('drain', pump);
        return;
      }
    }
    res.end();
  };
  pump();
}

/** The SHA-256 of the first `total` bytes of the pattern, to check a download against. */
export function patternSha256(total: number): string {
  const hash = createHash('sha256');
  for (let written = 0, index = 0; written < total; index++) {
    const chunk = patternChunk(index).subarray(0, Math.min(64 * 1024, total - written));
    written += chunk.length;
    hash.update(chunk);
  }
  return hash.digest('hex');
}

/** What a service saw of an upload: bytes so far, and whether it ended or was aborted. */
export interface UploadWatch {
  bytes: number;
  ended: boolean;
  aborted: boolean;
}

/** The receiving side of `hangUpMidUpload`: reads the upload into `watch`, answering if it ends. */
export function watchUpload(req: http.IncomingMessage, res: http.ServerResponse, watch: UploadWatch): void {
  req.on('data', (c: Buffer) => {
    watch.bytes += c.length;
  });
  req.on('end', () => {
    watch.ended = true;
    res.end('got it all');
  });
  req.on('close', () => {
    if (!req.complete) watch.aborted = true;
  });
}

/**
 * Starts a chunked POST to `url`, hangs up once the service behind it (`who`, where `watch`
 * records what it saw) has the first 16 KiB, and waits until that service saw the upload end
 * one way or the other. Shared by the pass-through and the tunnel, which must both abort it.
 */
export async function hangUpMidUpload(
  url: string,
  headers: http.OutgoingHttpHeaders,
  watch: UploadWatch,
  who: string,
): Promise<void> {
  Object.assign(watch, { bytes: 0, ended: false, aborted: false });
  const req = http.request(url, {
    method: 'POST',
    headers: { ...headers, 'transfer-encoding': 'chunked' },
    agent: false,
  });
  req.on('error', () => undefined);
  req.write(Buffer.alloc(16 * 1024, 7));
  await waitFor(() => watch.bytes >= 16 * 1024, 15_000, `${who} to receive the first part of the upload`);
  req.destroy();
  await waitFor(() => watch.aborted || watch.ended, 10_000, `${who} request to end one way or the other`);
}

/** Starts a response, then resets the connection: for what callers see of a half-sent body. */
export function resetMidResponse(req: http.IncomingMessage, res: http.ServerResponse): void {
  res.writeHead(200, { 'content-type': 'application/octet-stream' });
  res.write(Buffer.alloc(32 * 1024, 1));
  setTimeout(() => req.socket.destroy(), 100);
}

/** How reading `res`'s body ends: 'completed', 'errored', or 'hung' (nothing within 20 s). */
export function bodyOutcome(res: Response): Promise<'completed' | 'errored' | 'hung'> {
  return Promise.race([
    res.arrayBuffer().then(
      () => 'completed' as const,
      () => 'errored' as const,
    ),
    new Promise<'hung'>((r) => setTimeout(() => r('hung'), 20_000)),
  ]);
}
