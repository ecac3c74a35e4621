/**
 * Slow callers hold only their own share: one tenant's trickling uploads (more of them than
 * the old shared pool of 512 upstream connections) leave another tenant of the same service
 * answered at once; a body that stops arriving is cut with 408 after bodyIdleTimeout; a
 * routing key past tenantConcurrency is refused with 429 naming the limit.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  bodyJson,
  clientEnv,
  closeServer,
  interceptDetached,
  killPid,
  listen,
  rawRequest,
  type ServerProcess,
  sleep,
  startServerProcess,
  type UploadWatch,
  waitFor,
  watchUpload,
} from '../support/helpers.js';

const TOKEN = 'slow-clients-token-1';

/** An upstream that reads uploads to the end and counts those still arriving. */
async function upstream() {
  const state = { uploading: 0, watch: { bytes: 0, ended: false, aborted: false } as UploadWatch };
  const up = await listen((req, res) => {
    if (req.method === 'GET') {
      res.end(`hello ${req.headers['x-tenant-id']}`);
      return;
    }
    state.uploading++;
    req.once('close', () => state.uploading--);
    if (req.url === '/watched') watchUpload(req, res, state.watch);
    else {
      req.resume();
      req.on('end', () => res.end('got it'));
    }
  });
  return { ...up, state };
}

/** That upstream as service billing of a server agent started with `flags` besides. */
async function startAgent(flags: string[] = []) {
  const up = await upstream();
  const server = await startServerProcess(['--service', `billing=${up.url}`, '--token', TOKEN, ...flags]);
  return { up, server };
}

interface Trickle {
  /** Resolves with the status and error code of the answer, or `closed` if none came. */
  answer: Promise<{ status: number; code: string | undefined } | 'closed'>;
  close(): void;
}

/**
 * A POST announcing `announce` bytes that sends one byte every `everyMs` ms, over its own
 * socket, until it gets an answer or is closed.
 */
function trickle(port: number, tenant: string, everyMs: number, announce = 1_000_000, path = '/'): Trickle {
  const socket = net.connect(port, '127.0.0.1');
  let timer: NodeJS.Timeout | undefined;
  socket.on('connect', () => {
    socket.write(
      `POST ${path} HTTP/1.1\r\nhost: billing\r\nx-kelsingra-service: billing\r\nx-tenant-id: ${tenant}\r\ncontent-length: ${announce}\r\n\r\nx`,
    );
    timer = setInterval(() => socket.write('x'), everyMs);
  });
  const answer = new Promise<{ status: number; code: string | undefined } | 'closed'>((resolve) => {
    let text = '';
    socket.on('data', (c: Buffer) => {
      text += c.toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      if (end < 0) return;
      clearInterval(timer);
      const head = text.slice(0, end);
      resolve({
        status: Number(head.split(' ')[1]),
        code: /^x-kelsingra-error: (.*)$/im.exec(head)?.[1]?.trim(),
      });
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearInterval(timer);
      resolve('closed');
    });
  });
  return {
    answer,
    close: () => {
      clearInterval(timer);
      socket.destroy();
    },
  };
}

const via = (tenant: string) => ({ 'x-kelsingra-service': 'billing', 'x-tenant-id': tenant });

/** A tenant's GET, which must be answered within `withinMs`. */
async function promptGet(server: ServerProcess, tenant: string, withinMs: number) {
  const started = performance.now();
  const res = await fetch(`${server.data}/`, { headers: via(tenant), signal: AbortSignal.timeout(withinMs) });
  return { status: res.status, body: await res.text(), ms: performance.now() - started };
}

describe('one tenant of a service with a thousand slow uploads', () => {
  let up: Awaited<ReturnType<typeof upstream>>;
  let server: ServerProcess;
  const trickles: Trickle[] = [];

  beforeAll(async () => {
    // The defaults: bodyIdleTimeout 30 s, tenantConcurrency 256.
    ({ up, server } = await startAgent());
  });
  afterAll(async () => {
    for (const t of trickles) t.close();
    await server?.stop();
    await closeServer(up);
  });

  it('leaves another tenant of the same service answered at once, and holds only its own share', async () => {
    // Above the old shared cap of 512 upstream connections, in batches the listen backlog takes.
    const N = 600;
    for (let i = 0; i < N; i += 100) {
      for (let j = 0; j < 100; j++) trickles.push(trickle(server.proxyPort, 'hog', 2_000));
      await sleep(100);
    }
    await waitFor(() => up.state.uploading >= 256, 20_000, 'the first 256 uploads to reach the upstream');
    await sleep(1_000);

    for (let i = 0; i < 10; i++) {
      const r = await promptGet(server, 'quiet', 3_000);
      expect(r).toMatchObject({ status: 200, body: 'hello quiet' });
    }
    // A small upload of the other tenant goes through too.
    const post = await rawRequest(`${server.data}/`, { method: 'POST', headers: via('quiet'), body: 'hi' });
    expect(post.status).toBe(200);

    // The hog holds its share, no more; the rest were told why at once.
    expect(up.state.uploading).toBe(256);
    const answers = await Promise.all(
      trickles.map((t) => Promise.race([t.answer, sleep(2_000).then(() => 'pending' as const)])),
    );
    const refused = answers.filter(
      (a) => typeof a === 'object' && a.status === 429 && a.code === 'tenant-concurrency',
    );
    expect(refused).toHaveLength(N - 256);
    expect(answers.filter((a) => a === 'pending')).toHaveLength(256);
  }, 90_000);
});

describe('slow bodies and the per-tenant share, with short limits', () => {
  let up: Awaited<ReturnType<typeof upstream>>;
  let server: ServerProcess;
  let local: Awaited<ReturnType<typeof listen>>;
  const localWatch: UploadWatch = { bytes: 0, ended: false, aborted: false };
  const agents: number[] = [];

  beforeAll(async () => {
    ({ up, server } = await startAgent(['--body-idle-timeout', '1', '--tenant-concurrency', '3']));
    local = await listen((req, res) => watchUpload(req, res, localWatch));
    await interceptDetached(clientEnv(server, TOKEN), 'billing', 'dev', local.port, (pid) =>
      agents.push(pid),
    );
  });
  afterAll(async () => {
    for (const pid of agents) await killPid(pid);
    await server?.stop();
    await closeServer(up);
    await closeServer(local);
  });

  it.each([
    ['the upstream', 't1', () => up.state.watch],
    ["the developer's local service (through the tunnel)", 'dev', () => localWatch],
  ])(
    'cuts a body that stops arriving with 408 body-timeout, and %s sees the upload aborted',
    async (who, tenant, watch) => {
      const started = performance.now();
      const stalled = trickle(server.proxyPort, tenant, 60_000, 1_000, '/watched');
      const answer = await Promise.race([stalled.answer, sleep(15_000).then(() => 'hung' as const)]);
      stalled.close();
      expect(answer).toEqual({ status: 408, code: 'body-timeout' });
      // One second of silence, with room for a loaded machine, but not Node's 300 s.
      expect(performance.now() - started).toBeGreaterThan(900);
      await waitFor(() => watch().aborted, 10_000, `${who} to see the upload aborted`);
      expect(watch().ended).toBe(false);
    },
  );

  it('lets a slow body through when it never pauses for the idle time', async () => {
    const slow = trickle(server.proxyPort, 't1', 250, 8);
    const answer = await Promise.race([slow.answer, sleep(15_000).then(() => 'hung' as const)]);
    slow.close();
    expect(answer).toEqual({ status: 200, code: undefined });
  });

  it('refuses a routing key over its share with 429 tenant-concurrency and Retry-After, and no other', async () => {
    const held = [0, 1, 2].map(() => trickle(server.proxyPort, 'hog', 300));
    try {
      await waitFor(() => up.state.uploading === 3, 10_000, 'three uploads of the hog to be in flight');
      const refused = await rawRequest(`${server.data}/`, { headers: via('hog') });
      expect(refused.status).toBe(429);
      expect(refused.headers['x-kelsingra-error']).toBe('tenant-concurrency');
      expect(refused.headers['retry-after']).toBe('1');
      const body = bodyJson(refused);
      expect(body.error).toMatch(/^Kelsingra: routing key "hog" already has 3 requests in flight to billing/);
      expect(body).toMatchObject({ service: 'billing', key: 'hog', limit: 3 });
      expect(await promptGet(server, 'quiet', 3_000)).toMatchObject({ status: 200, body: 'hello quiet' });
    } finally {
      for (const t of held) t.close();
    }
    // Its share comes back as its requests end.
    await waitFor(
      async () => (await promptGet(server, 'hog', 3_000)).status === 200,
      10_000,
      'the hog to be served again',
    );
  });
});
