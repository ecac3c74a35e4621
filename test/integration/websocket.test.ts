/**
 * WebSockets (and other upgrades) on the data port, with the real `ws` library at both ends:
 * passed through to the upstream for tenants nobody intercepts, carried through the tunnel
 * to the developer's local service for an intercepted one — text, binary, ping/pong, close
 * codes, a large message held back by a slow reader — and closed cleanly (1001) by a leave.
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import {
  type Cleanup,
  cli,
  clientEnv,
  closeServer,
  interceptDetached,
  listen,
  type ServerProcess,
  startServerProcess,
  waitFor,
} from '../support/helpers.js';
import { freshDatabase } from '../support/postgres.js';

const TOKEN = 'websocket-test-token-1';

/** A WebSocket echo service: says who it is, echoes text and binary, and records how each socket closed. */
async function echoService(name: string, cleanups: Cleanup[]) {
  const svc = await listen((_req, res) => res.end(`${name} plain`));
  const wss = new WebSocketServer({ server: svc.server, perMessageDeflate: false });
  const seen: { url?: string; tenant?: string; intercept?: string; hop?: string; via?: string }[] = [];
  const closes: { code: number; reason: string }[] = [];
  const sockets = new Set<WebSocket>();
  wss.on('connection', (ws, req) => {
    sockets.add(ws);
    seen.push({
      url: req.url,
      tenant: req.headers['x-tenant-id'] as string,
      intercept: req.headers['x-kelsingra-intercept'] as string,
      hop: req.headers['x-kelsingra-hop'] as string,
      via: req.headers.via as string,
    });
    ws.on('message', (data, isBinary) => {
      if (!isBinary && data.toString() === 'close-me') ws.close(4002, 'asked to');
      else if (isBinary)
        ws.send(
          createHash('sha256')
            .update(data as Buffer)
            .digest('hex'),
        );
      else ws.send(`${name}:${data}`);
    });
    ws.on('close', (code, reason) => {
      sockets.delete(ws);
      closes.push({ code, reason: reason.toString() });
    });
  });
  cleanups.push(() => {
    for (const ws of sockets) ws.terminate();
    wss.close();
    return closeServer(svc);
  });
  return { ...svc, seen, closes, sockets };
}

/** Opens a WebSocket through the data port as a tenant; rejects with the refusal status. */
async function connect(server: ServerProcess, headers: Record<string, string>, path = '/chat?room=1') {
  const ws = new WebSocket(`${server.data.replace('http', 'ws')}${path}`, {
    headers,
    perMessageDeflate: false,
  });
  const refused = new Promise<never>((_, reject) =>
    ws.once('unexpected-response', (_req, res) => {
      res.resume();
      reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode }));
    }),
  );
  await Promise.race([once(ws, 'open'), refused]);
  const messages: string[] = [];
  ws.on('message', (data) => messages.push(data.toString()));
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })),
  );
  const next = async (count = messages.length + 1) => {
    await waitFor(() => messages.length >= count, 20_000, `message ${count}`);
    return messages[count - 1] as string;
  };
  return { ws, messages, next, closed };
}

function refusal(p: Promise<unknown>): Promise<number | undefined> {
  return p.then(
    () => undefined,
    (err: { status?: number }) => err.status,
  );
}

const headers = (tenant: string) => ({ 'x-kelsingra-service': 'chat', 'x-tenant-id': tenant });

describe('WebSockets on the data port', () => {
  let server: ServerProcess;
  let upstream: Awaited<ReturnType<typeof echoService>>;
  let local: Awaited<ReturnType<typeof echoService>>;
  let interceptId: string;
  let env: Record<string, string>;
  const cleanups: Cleanup[] = [];

  beforeAll(async () => {
    upstream = await echoService('upstream', cleanups);
    local = await echoService('local', cleanups);
    server = await startServerProcess(['--service', `chat=${upstream.url}`, '--token', TOKEN]);
    env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'websocket-test' });
    interceptId = (await interceptDetached(env, 'chat', 't1', local.port, cleanups)).id;
  });

  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
    await server?.stop();
  });

  it('passes a WebSocket through to the upstream for a tenant nobody intercepts, with this hop’s headers', async () => {
    const c = await connect(server, headers('t2'));
    c.ws.send('hello');
    expect(await c.next()).toBe('upstream:hello');
    expect(upstream.seen.at(-1)).toMatchObject({ url: '/chat?room=1', tenant: 't2', via: '1.1 kelsingra' });
    expect(upstream.seen.at(-1)?.hop).toBeTruthy();
    c.ws.close();
  });

  it('carries an intercepted tenant’s WebSocket to the local service: text, binary, ping/pong and close codes both ways', async () => {
    const before = upstream.seen.length;
    const c = await connect(server, headers('t1'));
    expect(local.seen.at(-1)).toMatchObject({ url: '/chat?room=1', tenant: 't1', intercept: interceptId });
    c.ws.send('hello');
    expect(await c.next()).toBe('local:hello');
    const blob = randomBytes(70_000);
    c.ws.send(blob);
    expect(await c.next()).toBe(createHash('sha256').update(blob).digest('hex'));
    const pong = once(c.ws, 'pong');
    c.ws.ping(Buffer.from('are you there'));
    expect(((await pong)[0] as Buffer).toString()).toBe('are you there');
    c.ws.close(4001, 'done here');
    expect(await c.closed).toEqual({ code: 4001, reason: 'done here' });
    await waitFor(() => local.closes.some((x) => x.code === 4001), 10_000, 'the local side to see 4001');
    expect(local.closes.at(-1)).toEqual({ code: 4001, reason: 'done here' });

    const d = await connect(server, headers('t1'));
    d.ws.send('close-me');
    expect(await d.closed).toEqual({ code: 4002, reason: 'asked to' });
    expect(upstream.seen.length).toBe(before);
  });

  it('holds a 32 MiB message back by the reader’s pace and delivers it whole', async () => {
    const c = await connect(server, headers('t1'));
    const big = randomBytes(32 << 20);
    c.ws.send(big);
    expect(await c.next()).toBe(createHash('sha256').update(big).digest('hex'));
    // Many at once, interleaved with small ones: frames of one do not block the others.
    const small = Array.from({ length: 50 }, (_, i) => `m${i}`);
    for (const m of small) c.ws.send(m);
    for (let i = 0; i < small.length; i++) expect(await c.next(2 + i)).toBe(`local:m${i}`);
    c.ws.close();
    await c.closed;
  }, 60_000);

  it('shows each WebSocket once in kelsingra logs: how long, bytes each way, who closed it with which code', async () => {
    const c = await connect(server, headers('t1'), '/logged');
    c.ws.send('x');
    await c.next();
    c.ws.close(1000, 'bye');
    await c.closed;
    const admin = clientEnv(server, TOKEN);
    await waitFor(
      async () => {
        const r = await cli(['logs', interceptId, '--json'], admin);
        return String(r.stdout).includes('/logged');
      },
      15_000,
      'the WebSocket in kelsingra logs',
    );
    const r = await cli(['logs', interceptId, '--json'], admin);
    const records = String(r.stdout)
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((e) => e.path === '/logged');
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({
      status: 101,
      upgrade: {
        protocol: 'websocket',
        code: 1000,
        reason: 'bye',
        closeFrom: 'caller',
        messagesIn: 1,
        messagesOut: 1,
      },
    });
    const [record] = records as [{ upgrade: { bytesIn: number }; bytesOut: number }];
    expect(record.upgrade.bytesIn).toBeGreaterThan(6);
    expect(record.bytesOut).toBeGreaterThan(7);
  });

  it('answers unknown services and loops as it does for plain requests', async () => {
    expect(await refusal(connect(server, { 'x-kelsingra-service': 'nope' }))).toBe(404);
    expect(await refusal(connect(server, { 'x-kelsingra-service': 'chat', 'x-kelsingra-hop': 'ks-x' }))).toBe(
      508,
    );
  });

  it('a local service that refuses the upgrade: its answer reaches the caller', async () => {
    // The local HTTP server answers plain requests only at paths no WebSocket server takes.
    const plain = await listen((_req, res) => {
      res.writeHead(403, { 'content-type': 'text/plain' });
      res.end('no sockets here');
    });
    cleanups.push(() => closeServer(plain));
    await interceptDetached(env, 'chat', 't3', plain.port, cleanups);
    expect(await refusal(connect(server, headers('t3')))).toBe(403);
  });

  // Last: it ends the intercept.
  it('leaving closes the intercept’s WebSockets cleanly with 1001 at both ends, and new ones go to the upstream', async () => {
    const c = await connect(server, headers('t1'));
    c.ws.send('before leave');
    expect(await c.next()).toBe('local:before leave');
    const localCloses = local.closes.length;
    const left = await cli(['leave', 'chat', '--tenant', 't1'], env);
    expect(left.exitCode, String(left.stderr)).toBe(0);
    const closed = await c.closed;
    expect(closed.code).toBe(1001);
    await waitFor(() => local.closes.length > localCloses, 10_000, 'the local side to be closed');
    expect(local.closes.at(-1)?.code).toBe(1001);
    const d = await connect(server, headers('t1'));
    d.ws.send('after leave');
    expect(await d.next()).toBe('upstream:after leave');
    d.ws.close();
  });
});

describe('a WebSocket relayed between replicas on PostgreSQL', () => {
  const cleanups: Cleanup[] = [];
  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  it('reaches the local service through the replica that holds the tunnel, and closes cleanly there', async () => {
    const upstream = await echoService('upstream', cleanups);
    const local = await echoService('local', cleanups);
    const db = await freshDatabase(cleanups);
    const [r1, r2] = (await Promise.all(
      [1, 2].map(() =>
        startServerProcess(['--service', `chat=${upstream.url}`, '--token', TOKEN, '--database-url', db]),
      ),
    )) as [ServerProcess, ServerProcess];
    cleanups.push(
      () => r1.stop(),
      () => r2.stop(),
    );
    const held = await interceptDetached(clientEnv(r1, TOKEN), 'chat', 't1', local.port, cleanups);
    // r2 has no tunnel for t1: it hears of the intercept through the database and relays.
    await waitFor(
      async () =>
        (await fetch(`${r2.data}/`, { headers: headers('t1') }).then((r) => r.text())) === 'local plain',
      10_000,
      'r2 to route t1 to the tunnel on r1',
    );
    const c = await connect(r2, headers('t1'));
    expect(local.seen.at(-1)).toMatchObject({ tenant: 't1', intercept: held.id });
    c.ws.send('across replicas');
    expect(await c.next()).toBe('local:across replicas');
    const blob = randomBytes(3 << 20);
    c.ws.send(blob);
    expect(await c.next()).toBe(createHash('sha256').update(blob).digest('hex'));
    c.ws.close(4003, 'relayed');
    expect(await c.closed).toEqual({ code: 4003, reason: 'relayed' });
    await waitFor(() => local.closes.some((x) => x.code === 4003), 10_000, 'the local side to see 4003');
    expect(upstream.seen.filter((s) => s.tenant === 't1')).toEqual([]);
  }, 60_000);
});
