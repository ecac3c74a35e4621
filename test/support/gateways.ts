/**
 * Real gateways for the gateway-sync tests: HAProxy, nginx and Caddy as the Debian packages
 * install them (.ci/run installs them; without them these tests fail, they do not skip), run
 * in the foreground from a private directory, plus the services behind them.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants, readFileSync, writeFileSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import {
  type Cleanup,
  closeServer,
  exited,
  isHealthCheck,
  listen,
  type RawResponse,
  ROOT,
  rawRequest,
  sleep,
  spawnServerProcess,
  tempDir,
  waitFor,
} from './helpers.js';

export const GATEWAY_TOKEN = 'gateway-sync-test-token-7f2e';
export const BILLING_HOST = 'billing.dev.example.com';

/** The installed program, or an error saying how to install it. */
export function program(name: string, debianPackage = name): string {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/local/sbin', '/usr/bin'];
  for (const dir of dirs.filter(Boolean)) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  throw new Error(
    `${name} is not installed, and the gateway-sync tests run it for real: install it (Debian: apt-get install -y ${debianPackage}; .ci/run does this when it is missing)`,
  );
}

/** A shipped recipe with every `from` replaced; a `from` it no longer holds fails loudly. */
export function recipe(file: string, pairs: [from: string, to: string][]): string {
  const path = join(ROOT, 'deploy', 'reverse-proxy', file);
  let out = readFileSync(path, 'utf8');
  for (const [from, to] of pairs) {
    if (!out.includes(from))
      throw new Error(`${path} no longer contains "${from}": update the test to match`);
    out = out.split(from).join(to);
  }
  return out;
}

export interface Hit {
  url: string;
  headers: IncomingHttpHeaders;
}

/** An HTTP service that answers `<name>` and records its requests (not health checks). */
export async function recorder(name: string, cleanups: Cleanup[]) {
  const hits: Hit[] = [];
  const svc = await listen((req, res) => {
    if (isHealthCheck(req)) return void res.end('ok');
    hits.push({ url: req.url ?? '', headers: req.headers });
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(name);
    });
  });
  cleanups.push(() => closeServer(svc));
  return { ...svc, hits, at: (url: string) => hits.filter((h) => h.url === url) };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

export interface Program {
  child: ChildProcess;
  output: () => string;
  stop: () => Promise<void>;
}

/** Spawns a gateway in the foreground and waits until it accepts connections on `port`. */
export async function runProgram(
  bin: string,
  args: string[],
  port: number,
  cleanups: Cleanup[],
  env: Record<string, string> = {},
): Promise<Program> {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let output = '';
  child.stdout?.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (output += c.toString()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await Promise.race([exited(child), sleep(5_000)]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  };
  cleanups.push(stop);
  await waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`${bin} exited (${child.exitCode}):\n${output}`);
      return accepts(port);
    },
    10_000,
    `${bin} to listen on ${port}`,
  );
  return { child, output: () => output, stop };
}

/** A server agent on fixed ports (the gateway's config names them), with this YAML config. */
export async function kelsingra(
  ports: { control: number; data: number },
  configYaml: string,
  cleanups: Cleanup[],
  extraArgs: string[] = [],
) {
  const file = join(tempDir('kelsingra-gw-config-'), 'kelsingra.yaml');
  writeFileSync(file, configYaml);
  const server = await spawnServerProcess(
    ['--port', String(ports.control), '--proxy-port', String(ports.data), '--config', file, ...extraArgs],
    {},
    ports.control,
  );
  cleanups.push(() => server.stop());
  return server;
}

/** /status of a server agent, as an admin sees it. */
export async function status(
  control: string,
): Promise<Record<string, unknown> & { gateway?: Record<string, unknown> }> {
  const res = await fetch(`${control}/status`, { headers: { authorization: `Bearer ${GATEWAY_TOKEN}` } });
  return (await res.json()) as Record<string, unknown>;
}

/** Waits until the server agent's first whole write to the gateway is done. */
export function synced(control: string) {
  return waitFor(async () => (await status(control)).gateway?.lastSyncAt, 15_000, 'the first gateway sync');
}

/** A request through the gateway as a caller in the dev environment sends it. */
export function viaGateway(
  port: number,
  tenant?: string,
  path = '/',
  host = BILLING_HOST,
): Promise<RawResponse> {
  return rawRequest(`http://127.0.0.1:${port}${path}`, {
    headers: { host, ...(tenant ? { 'x-tenant-id': tenant } : {}) },
  });
}

export const text = (r: RawResponse) => r.body.toString('utf8');

/**
 * Milliseconds until `check` holds, polled every 10 ms (for the one-second and kill bounds);
 * fails after `limitMs` times three, so a slow answer is measured rather than cut off.
 */
export async function msUntil(check: () => Promise<boolean>, limitMs: number, what: string): Promise<number> {
  const started = performance.now();
  for (;;) {
    const ok = await check().catch(() => false);
    const ms = performance.now() - started;
    if (ok) return ms;
    if (ms > limitMs * 3) throw new Error(`${what}: still not after ${Math.round(ms)} ms`);
    await sleep(10);
  }
}

/**
 * Kills the server agent and times how long until `answer(tenant)` comes from the base (the
 * recipe's fail-safe), counting the answers that did not meanwhile; logged for the note.
 */
export async function msToBaseAfterKill(
  gateway: string,
  server: { child: { kill(signal: NodeJS.Signals): unknown } },
  answer: (tenant: string) => Promise<string>,
  tenant: string,
  limitMs: number,
): Promise<number> {
  server.child.kill('SIGKILL');
  let failures = 0;
  const ms = await msUntil(
    async () => {
      const body = await answer(tenant);
      if (body !== 'base') failures += 1;
      return body === 'base';
    },
    limitMs,
    `${tenant} on the base after the kill`,
  );
  console.log(
    `gateway-${gateway}: server agent killed -> base answers ${tenant} after ${ms.toFixed(0)} ms (${failures} not served by the base meanwhile)`,
  );
  return ms;
}
