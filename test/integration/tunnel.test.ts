/**
 * The tunnel, end to end: a real `kelsingra server`, a real upstream, a real local service
 * and the intercept held by the real CLI (a --detach background agent, or a foreground
 * `intercept` process when the test needs to kill or stop it).
 *
 * Over 400 lines on purpose: it is the list of the tunnel's cases, each one self-contained; split,
 * one capability would be spread over several files.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  alive,
  BIN,
  bodyJson,
  bodyOutcome,
  CLOSED_PORT,
  clientEnv,
  closeServer,
  type DetachedIntercept,
  exited,
  hangUpMidUpload,
  interceptDetached,
  killQuietly,
  listen,
  patternSha256,
  type RawResponse,
  rawRequest,
  resetMidResponse,
  run,
  type ServerProcess,
  sleep,
  startServerProcess,
  type UploadWatch,
  waitFor,
  watchUpload,
  writePattern,
} from '../support/helpers.js';

const TOKEN = 'tunnel-test-token-123';
const MB = 1024 * 1024;

/** `intercept --detach --json`; the agent's pid goes to `pids`, for the suite's afterAll to kill. */
async function detach(
  env: Record<string, string>,
  service: string,
  tenant: string,
  port: number,
  pids: number[],
) {
  const icp = await interceptDetached(env, service, tenant, port, (pid) => pids.push(pid));
  expect(icp.id).toMatch(/^icp_/);
  return icp;
}

/** A foreground `kelsingra intercept … --json`; resolves once its first line says the intercept is live. */
async function interceptForeground(
  env: Record<string, string>,
  service: string,
  tenant: string,
  port: number,
) {
  const child = spawn(
    process.execPath,
    [BIN, 'intercept', service, '--tenant', tenant, '--port', String(port), '--json'],
    {
      env: { ...process.env, NO_COLOR: '1', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  const first = await waitFor(
    () => {
      if (child.exitCode !== null) throw new Error(`intercept exited (${child.exitCode}): ${stderr}`);
      const line = stdout.split('\n').find((l) => l.includes('"kind":"intercept"'));
      return line ? (JSON.parse(line) as { id: string }) : undefined;
    },
    30_000,
    'foreground intercept to go live',
  );
  return { child, id: first.id, output: () => stdout + stderr };
}

/** Sends a request to the data port the way the reverse proxy would, with full header control. */
function dataRequest(
  server: ServerProcess,
  path: string,
  opts: { tenant?: string; method?: string; headers?: http.OutgoingHttpHeaders; body?: Buffer | string } = {},
): Promise<RawResponse> {
  const headers: http.OutgoingHttpHeaders = { 'x-kelsingra-service': 'billing', ...opts.headers };
  if (opts.tenant) headers['x-tenant-id'] = opts.tenant;
  return rawRequest(`${server.data}${path}`, { method: opts.method, headers, body: opts.body });
}

/** Upstream: says it is the upstream and what it saw. */
async function startUpstream() {
  return listen((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json', 'x-served-by': 'upstream' });
      res.end(
        JSON.stringify({
          served: 'upstream',
          url: req.url,
          tenant: req.headers['x-tenant-id'] ?? null,
          hop: req.headers['x-kelsingra-hop'] ?? null,
        }),
      );
    });
  });
}

/** What the local service observed, per test. */
interface LocalState {
  sseGate?: () => void;
  /** Answers the request held at /held. */
  heldGate?: () => void;
  sseSecondSent: boolean;
  hangSeen: boolean;
  hangClosedEarly: boolean;
  hangClosedAt: number;
  streamSeen: boolean;
  streamClosedEarly: boolean;
  streamClosedAt: number;
  upload: UploadWatch;
}

async function startLocal() {
  const state: LocalState = {
    sseSecondSent: false,
    hangSeen: false,
    hangClosedEarly: false,
    hangClosedAt: 0,
    streamSeen: false,
    streamClosedEarly: false,
    streamClosedAt: 0,
    upload: { bytes: 0, ended: false, aborted: false },
  };
  const local = await listen((req, res) => {
    const url = new URL(req.url ?? '/', 'http://local');
    const path = url.pathname;
    if (path === '/upload') {
      const hash = createHash('sha256');
      let size = 0;
      req.on('data', (c: Buffer) => {
        hash.update(c);
        size += c.length;
      });
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ bytes: size, sha256: hash.digest('hex') }));
      });
      return;
    }
    if (path === '/download') {
      const total = Number(url.searchParams.get('bytes'));
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': total });
      req.resume();
      writePattern(res, total);
      return;
    }
    if (path.startsWith('/c/')) {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        // Answer out of order so a mix-up between streams would show.
        setTimeout(
          () => {
            res.writeHead(200, {
              'content-type': 'application/json',
              'x-echo-id': String(req.headers['x-req-id']),
            });
            res.end(
              JSON.stringify({ path, id: req.headers['x-req-id'], body: Buffer.concat(chunks).toString() }),
            );
          },
          Math.floor(Math.random() * 30),
        );
      });
      return;
    }
    if (path === '/sse') {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      res.write('id: 1\ndata: first\n\n');
      // The second event is only sent once the test has read the first.
      new Promise<void>((resolve) => {
        state.sseGate = resolve;
      }).then(() => {
        state.sseSecondSent = true;
        res.end('id: 2\ndata: second\n\n');
      });
      return;
    }
    if (path === '/upload-watch') return watchUpload(req, res, state.upload);
    if (path === '/held') {
      req.resume();
      state.heldGate = () => {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('held, then answered');
      };
      return;
    }
    if (path === '/hang') {
      state.hangSeen = true;
      res.on('close', () => {
        if (!res.writableFinished) {
          state.hangClosedEarly = true;
          state.hangClosedAt = Date.now();
        }
      });
      return; // never answers
    }
    if (path === '/stream-forever') {
      state.streamSeen = true;
      res.writeHead(200, { 'content-type': 'text/plain' });
      const timer = setInterval(() => res.write('tick\n'), 50);
      res.on('close', () => {
        clearInterval(timer);
        if (!res.writableFinished) {
          state.streamClosedEarly = true;
          state.streamClosedAt = Date.now();
        }
      });
      return;
    }
    if (path === '/reset-mid-response') return resetMidResponse(req, res);
    if (path === '/reset-before-response') {
      req.socket.destroy();
      return;
    }
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json', 'x-served-by': 'local' });
      res.end(
        JSON.stringify({
          served: 'local',
          method: req.method,
          url: req.url,
          host: req.headers.host,
          tenant: req.headers['x-tenant-id'] ?? null,
          intercept: req.headers['x-kelsingra-intercept'] ?? null,
          forwarded: req.headers.forwarded ?? null,
          via: req.headers.via ?? null,
          custom: req.headers['x-custom'] ?? null,
        }),
      );
    });
  });
  return { ...local, state };
}

describe('tunnel: routing and streaming through a detached intercept', () => {
  let server: ServerProcess;
  let upstream: Awaited<ReturnType<typeof startUpstream>>;
  let local: Awaited<ReturnType<typeof startLocal>>;
  let env: Record<string, string>;
  let t1: DetachedIntercept;
  const pids: number[] = [];

  beforeAll(async () => {
    upstream = await startUpstream();
    local = await startLocal();
    server = await startServerProcess(['--service', `billing=${upstream.url}`, '--token', TOKEN]);
    env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: `tunnel-test-${process.pid}` });
    t1 = await detach(env, 'billing', 't1', local.port, pids);
  });

  afterAll(async () => {
    local?.state.sseGate?.();
    if (server) await run(['leave', '--all'], env).catch(() => undefined);
    for (const pid of pids) killQuietly(pid);
    await server?.stop();
    await closeServer(upstream);
    await closeServer(local);
  });

  it('sends tenant t1 to the local service and everyone else to the upstream', async () => {
    const mine = await dataRequest(server, '/invoices/7?full=1', {
      tenant: 't1',
      method: 'POST',
      headers: { host: 'billing.dev.example.com', 'x-custom': 'yes', 'content-type': 'text/plain' },
      body: 'hello',
    });
    expect(mine.status).toBe(200);
    expect(mine.headers['x-served-by']).toBe('local');
    const seen = bodyJson(mine);
    expect(seen).toMatchObject({
      served: 'local',
      method: 'POST',
      url: '/invoices/7?full=1',
      host: 'billing.dev.example.com',
      tenant: 't1',
      intercept: t1.id,
      via: '1.1 kelsingra',
      custom: 'yes',
    });
    expect(String(seen.forwarded)).toMatch(/for=127\.0\.0\.1;proto=http;host="billing\.dev\.example\.com"/);

    const other = await dataRequest(server, '/invoices/7', { tenant: 't2' });
    expect(other.status).toBe(200);
    expect(bodyJson(other)).toMatchObject({ served: 'upstream', tenant: 't2', url: '/invoices/7' });
    expect(bodyJson(other).hop).toMatch(/^ks-/);

    const none = await dataRequest(server, '/invoices/7');
    expect(none.status).toBe(200);
    expect(bodyJson(none)).toMatchObject({ served: 'upstream', tenant: null });

    // The intercept is listed as connected, held by this client.
    const list = await run(['list', '--json'], env);
    expect(list.exitCode, list.stderr).toBe(0);
    const entry = (
      JSON.parse(list.stdout) as { id: string; connected: boolean; tenant: string; localPort: number }[]
    ).find((i) => i.id === t1.id);
    expect(entry).toMatchObject({ tenant: 't1', connected: true, localPort: local.port });
  });

  it('falls back to the upstream at once after leave, and the background agent exits', async () => {
    const icp = await detach(env, 'billing', 't-leave', local.port, pids);
    const before = await dataRequest(server, '/x', { tenant: 't-leave' });
    expect(bodyJson(before)).toMatchObject({ served: 'local', intercept: icp.id });

    const left = await run(['leave', 'billing', '--tenant', 't-leave'], env);
    expect(left.exitCode, left.stderr).toBe(0);
    // No polling: the very next request already goes to the upstream.
    const after = await dataRequest(server, '/x', { tenant: 't-leave' });
    expect(after.status).toBe(200);
    expect(bodyJson(after)).toMatchObject({ served: 'upstream', tenant: 't-leave' });
    // The other intercept is untouched.
    expect(bodyJson(await dataRequest(server, '/x', { tenant: 't1' }))).toMatchObject({
      served: 'local',
      intercept: t1.id,
    });

    await waitFor(() => !alive(icp.agentPid), 15_000, 'background agent to exit after leave');
  });

  it('lets a request already on its way to the laptop finish when the intercept is left', async () => {
    const icp = await detach(env, 'billing', 't-inflight', local.port, pids);
    const state: LocalState = local.state;
    // A closure: TypeScript would keep `heldGate` narrowed to the undefined set below.
    const answerHeld = () => state.heldGate?.();
    state.heldGate = undefined;
    const held = dataRequest(server, '/held', { tenant: 't-inflight' });
    await waitFor(() => state.heldGate !== undefined, 5_000, 'the local service to get the request');
    const left = await run(['leave', 'billing', '--tenant', 't-inflight'], env);
    expect(left.exitCode, left.stderr).toBe(0);
    expect(bodyJson(await dataRequest(server, '/x', { tenant: 't-inflight' }))).toMatchObject({
      served: 'upstream',
    });
    // The agent is leaving, but not before its last request is answered.
    await sleep(500);
    answerHeld();
    const res = await held;
    expect(`${res.status} ${res.body}`).toBe('200 held, then answered');
    await waitFor(() => !alive(icp.agentPid), 15_000, 'background agent to exit after leave');
  });

  it('streams a 20 MB upload and a 20 MB download through the tunnel intact', async () => {
    const size = 20 * MB;
    const upload = Buffer.alloc(size);
    for (let i = 0; i < size; i += 4096) upload.writeUInt32BE((i * 2654435761) >>> 0, i);
    const up = await dataRequest(server, '/upload', {
      tenant: 't1',
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream', 'content-length': size },
      body: upload,
    });
    expect(up.status).toBe(200);
    expect(bodyJson(up)).toEqual({ bytes: size, sha256: createHash('sha256').update(upload).digest('hex') });

    const down = await dataRequest(server, `/download?bytes=${size}`, { tenant: 't1' });
    expect(down.status).toBe(200);
    expect(down.headers['content-type']).toBe('application/octet-stream');
    expect(down.body.length).toBe(size);
    expect(createHash('sha256').update(down.body).digest('hex')).toBe(patternSha256(size));
  });

  it('answers 200 concurrent requests, each with its own response', async () => {
    const n = 200;
    const results = await Promise.all(
      Array.from({ length: n }, async (_, i) => {
        const res = await fetch(`${server.data}/c/${i}?q=${i}`, {
          method: i % 2 ? 'POST' : 'GET',
          headers: { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't1', 'x-req-id': `req-${i}` },
          body: i % 2 ? `payload-${i}` : undefined,
        });
        return {
          i,
          status: res.status,
          echo: res.headers.get('x-echo-id'),
          body: (await res.json()) as { path: string; id: string; body: string },
        };
      }),
    );
    for (const r of results) {
      expect(r.status, `request ${r.i}`).toBe(200);
      expect(r.echo).toBe(`req-${r.i}`);
      expect(r.body).toEqual({ path: `/c/${r.i}`, id: `req-${r.i}`, body: r.i % 2 ? `payload-${r.i}` : '' });
    }
  });

  it('delivers server-sent events as they are sent', async () => {
    local.state.sseSecondSent = false;
    const res = await fetch(`${server.data}/sse`, {
      headers: { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't1', accept: 'text/event-stream' },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/event-stream');
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = '';
    const readUntil = async (marker: string) => {
      const deadline = Date.now() + 15_000;
      while (!text.includes(marker)) {
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`no "${marker}" within 15 s; got ${JSON.stringify(text)}`)),
            Math.max(0, deadline - Date.now()),
          );
        });
        const { value, done } = await Promise.race([reader.read(), timeout]).finally(() =>
          clearTimeout(timer),
        );
        if (done) throw new Error(`stream ended before "${marker}"; got ${JSON.stringify(text)}`);
        text += decoder.decode(value, { stream: true });
      }
    };
    await readUntil('data: first\n\n');
    // The first event arrived while the local service was still holding the second one back.
    expect(local.state.sseSecondSent).toBe(false);
    expect(text).not.toContain('second');
    local.state.sseGate?.();
    await readUntil('data: second\n\n');
    expect(text).toBe('id: 1\ndata: first\n\nid: 2\ndata: second\n\n');
    expect((await reader.read()).done).toBe(true);
  });

  it('aborts the local request when the caller hangs up while waiting for the response', async () => {
    local.state.hangSeen = false;
    local.state.hangClosedEarly = false;
    const ctrl = new AbortController();
    const pending = fetch(`${server.data}/hang`, {
      headers: { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't1' },
      signal: ctrl.signal,
    }).catch((e: Error) => e);
    await waitFor(() => local.state.hangSeen, 15_000, 'local service to receive the request');
    const abortedAt = Date.now();
    ctrl.abort();
    expect(await pending).toBeInstanceOf(Error);
    await waitFor(() => local.state.hangClosedEarly, 10_000, 'local request to be aborted');
    expect(local.state.hangClosedAt - abortedAt).toBeLessThan(10_000);
  });

  it('aborts the local response when the caller hangs up mid-body', async () => {
    local.state.streamSeen = false;
    local.state.streamClosedEarly = false;
    const ctrl = new AbortController();
    const res = await fetch(`${server.data}/stream-forever`, {
      headers: { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't1' },
      signal: ctrl.signal,
    });
    expect(res.status).toBe(200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toContain('tick');
    ctrl.abort();
    await reader.read().catch(() => undefined);
    await waitFor(() => local.state.streamClosedEarly, 10_000, 'local streaming response to be aborted');
  });

  it('aborts the local request, rather than ending its body, when the caller hangs up mid-upload', async () => {
    // Repeated: a wrong order of END_STREAM and RST_STREAM only shows some of the time.
    for (let round = 0; round < 10; round++) {
      await hangUpMidUpload(
        `${server.data}/upload-watch`,
        { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't1' },
        local.state.upload,
        'local service',
      );
      // A truncated upload must never look complete to the local service.
      expect(local.state.upload.ended, `round ${round}`).toBe(false);
      expect(local.state.upload.aborted).toBe(true);
    }
  });

  it('shows the caller an error, not a hang or a whole body, when the local service resets mid-response', async () => {
    const res = await fetch(`${server.data}/reset-mid-response`, {
      headers: { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't1' },
    });
    expect(res.status).toBe(200);
    expect(await bodyOutcome(res)).toBe('errored');
  });

  it('answers 502 naming the intercept when the local service resets before responding', async () => {
    const res = await dataRequest(server, '/reset-before-response', { tenant: 't1' });
    expect(res.status).toBe(502);
    const body = bodyJson(res);
    expect(body.source).toBe('kelsingra');
    expect(String(body.error)).toMatch(/^Kelsingra: /);
    expect(String(body.error)).toContain(t1.id);
    expect(body.intercept).toBe(t1.id);
    // The tunnel is fine afterwards.
    expect(bodyJson(await dataRequest(server, '/after-reset', { tenant: 't1' }))).toMatchObject({
      served: 'local',
    });
  });

  it('answers 502 naming the intercept and the local port when the local service is down', async () => {
    const downPort = CLOSED_PORT;
    const icp = await detach(env, 'billing', 't-down', downPort, pids);
    const res = await dataRequest(server, '/anything', { tenant: 't-down' });
    expect(res.status).toBe(502);
    expect(res.headers['x-kelsingra-error']).toBe('local-unreachable');
    const body = bodyJson(res);
    expect(body).toMatchObject({
      source: 'kelsingra',
      code: 'local-unreachable',
      intercept: icp.id,
      localPort: downPort,
    });
    expect(String(body.error)).toMatch(/^Kelsingra: /);
    expect(String(body.error)).toContain(icp.id);
    expect(String(body.error)).toContain(`127.0.0.1:${downPort}`);
    // Not a silent fallback, and other tenants are unaffected.
    expect(bodyJson(await dataRequest(server, '/anything', { tenant: 't2' }))).toMatchObject({
      served: 'upstream',
    });
    const left = await run(['leave', icp.id], env);
    expect(left.exitCode, left.stderr).toBe(0);
  });
});

describe('tunnel: client agent killed (lease expiry)', () => {
  let server: ServerProcess;
  let upstream: Awaited<ReturnType<typeof startUpstream>>;
  let local: Awaited<ReturnType<typeof startLocal>>;
  let env: Record<string, string>;
  let child: ChildProcess | undefined;

  beforeAll(async () => {
    upstream = await startUpstream();
    local = await startLocal();
    server = await startServerProcess([
      '--service',
      `billing=${upstream.url}`,
      '--token',
      TOKEN,
      '--lease-ttl',
      '3',
    ]);
    env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: `tunnel-kill-${process.pid}` });
  });

  afterAll(async () => {
    if (child) {
      killQuietly(child.pid);
      await exited(child);
    }
    await server?.stop();
    await closeServer(upstream);
    await closeServer(local);
  });

  it('answers 502 (tunnel disconnected) within the lease, then falls back to the upstream once it expires', async () => {
    const fg = await interceptForeground(env, 'billing', 't1', local.port);
    child = fg.child;
    expect(bodyJson(await dataRequest(server, '/x', { tenant: 't1' }))).toMatchObject({
      served: 'local',
      intercept: fg.id,
    });

    const killedAt = Date.now();
    fg.child.kill('SIGKILL');
    await exited(fg.child);

    const seen: {
      at: number;
      status: number;
      code?: string;
      served?: string;
      body: Record<string, unknown>;
    }[] = [];
    await waitFor(
      async () => {
        const res = await dataRequest(server, '/x', { tenant: 't1' });
        const body = bodyJson(res);
        seen.push({
          at: Date.now() - killedAt,
          status: res.status,
          code: res.headers['x-kelsingra-error'] as string | undefined,
          served: body.served as string | undefined,
          body,
        });
        return res.status === 200 && body.served === 'upstream';
      },
      20_000,
      'fallback to the upstream after the lease expires',
    );
    const disconnected = seen.filter((s) => s.code === 'tunnel-disconnected');
    expect(
      disconnected.length,
      JSON.stringify(seen.map((s) => [s.at, s.status, s.code ?? s.served])),
    ).toBeGreaterThan(0);
    const first = disconnected[0] as (typeof seen)[number];
    expect(first.status).toBe(502);
    expect(first.body.source).toBe('kelsingra');
    expect(first.body.intercept).toBe(fg.id);
    expect(String(first.body.error)).toMatch(/^Kelsingra: .*tunnel is disconnected/);
    // Nothing was silently served by the upstream before the lease ran out, and nothing after it by the dead tunnel.
    expect(seen.slice(0, -1).every((s) => s.status === 502)).toBe(true);
    // Fallback is stable.
    expect(bodyJson(await dataRequest(server, '/x', { tenant: 't1' }))).toMatchObject({
      served: 'upstream',
      tenant: 't1',
    });

    const list = await run(['list', '--json'], env);
    expect(list.exitCode, list.stderr).toBe(0);
    expect((JSON.parse(list.stdout) as { id: string }[]).map((i) => i.id)).not.toContain(fg.id);
    await waitFor(
      () => server.logs().includes('intercept lease expired'),
      10_000,
      'lease expiry in the server log',
    );
  });
  it('cuts the caller off, rather than ending the body cleanly, when the client agent dies mid-response', async () => {
    const fg = await interceptForeground(env, 'billing', 't2', local.port);
    child = fg.child;
    const outcome = await new Promise<string>((resolve) => {
      const req = http.request(
        `${server.data}/stream-forever`,
        { headers: { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't2' }, agent: false },
        (res) => {
          res.once('data', () => fg.child.kill('SIGKILL'));
          res.on('end', () => resolve('clean end'));
          res.on('error', () => resolve('cut off'));
          res.on('aborted', () => resolve('cut off'));
        },
      );
      req.on('error', () => resolve('cut off'));
      req.end();
    });
    expect(outcome).toBe('cut off');
    await exited(fg.child);
  });
});

describe('tunnel: heartbeat and reconnect', () => {
  let server: ServerProcess;
  let upstream: Awaited<ReturnType<typeof startUpstream>>;
  let local: Awaited<ReturnType<typeof startLocal>>;
  let env: Record<string, string>;
  const pids: number[] = [];

  beforeAll(async () => {
    upstream = await startUpstream();
    local = await startLocal();
    server = await startServerProcess([
      '--service',
      `billing=${upstream.url}`,
      '--token',
      TOKEN,
      '--heartbeat-interval',
      '1',
      '--lease-ttl',
      '60',
      '--upstream-timeout',
      '2',
    ]);
    env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: `tunnel-heartbeat-${process.pid}` });
  });

  afterAll(async () => {
    for (const pid of pids) killQuietly(pid, 'SIGCONT');
    if (server) await run(['leave', '--all'], env).catch(() => undefined);
    for (const pid of pids) killQuietly(pid);
    await server?.stop();
    await closeServer(upstream);
    await closeServer(local);
  });

  it('answers 504 naming the local port when the local service never answers, and cancels its request', async () => {
    const icp = await detach(env, 'billing', 't-slow', local.port, pids);
    Object.assign(local.state, { hangSeen: false, hangClosedEarly: false });
    const started = Date.now();
    const res = await dataRequest(server, '/hang', { tenant: 't-slow' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_900);
    expect(res.status).toBe(504);
    expect(res.headers['x-kelsingra-error']).toBe('local-timeout');
    const body = bodyJson(res);
    expect(body).toMatchObject({ source: 'kelsingra', code: 'local-timeout', intercept: icp.id });
    expect(String(body.error)).toMatch(/^Kelsingra: /);
    expect(String(body.error)).toContain(`port ${local.port}`);
    await waitFor(() => local.state.hangClosedEarly, 10_000, 'the timed-out local request to be aborted');
    const left = await run(['leave', icp.id], env);
    expect(left.exitCode, left.stderr).toBe(0);
  });

  it('closes a tunnel whose client stops answering, and the client reconnects and re-asserts its intercept', async () => {
    const icp = await detach(env, 'billing', 't1', local.port, pids);
    expect(bodyJson(await dataRequest(server, '/x', { tenant: 't1' }))).toMatchObject({
      served: 'local',
      intercept: icp.id,
    });
    const connectedBefore = server.logs().split('tunnel connected').length - 1;

    const stoppedAt = Date.now();
    process.kill(icp.agentPid, 'SIGSTOP');
    let detectedAfter = 0;
    try {
      const res = await waitFor(
        async () => {
          const r = await dataRequest(server, '/x', { tenant: 't1' });
          return r.headers['x-kelsingra-error'] === 'tunnel-disconnected' ? r : undefined;
        },
        20_000,
        'the server to drop the silent tunnel',
      );
      detectedAfter = Date.now() - stoppedAt;
      expect(res.status).toBe(502);
      expect(bodyJson(res)).toMatchObject({ source: 'kelsingra', intercept: icp.id });
      // The server's log reaches this test a little after the answer does.
      await waitFor(() => server.logs().includes('missed a heartbeat'), 5_000, 'the log line');
      // Well inside the 60 s lease: the heartbeat, not the lease, caught it.
      expect(detectedAfter).toBeLessThan(15_000);
    } finally {
      process.kill(icp.agentPid, 'SIGCONT');
    }

    // The agent notices, reconnects with the same client id and re-asserts the same intercept.
    const back = await waitFor(
      async () => {
        const r = await dataRequest(server, '/x', { tenant: 't1' });
        return r.status === 200 && bodyJson(r).served === 'local' ? r : undefined;
      },
      30_000,
      'the intercept to serve again after reconnecting',
    );
    expect(bodyJson(back)).toMatchObject({ intercept: icp.id, tenant: 't1' });
    expect(server.logs().split('tunnel connected').length - 1).toBeGreaterThan(connectedBefore);
    expect(alive(icp.agentPid)).toBe(true);
    const list = await run(['list', '--json'], env);
    const entry = (JSON.parse(list.stdout) as { id: string; connected: boolean }[]).find(
      (i) => i.id === icp.id,
    );
    expect(entry).toMatchObject({ connected: true });
  });
});
