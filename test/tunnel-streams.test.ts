/**
 * The tunnel's streams without the whole server: a real WebSocket pair on loopback,
 * webSocketDuplex on both ends, the server agent's side as the HTTP/2 client (as in
 * server/tunnel-hub.ts) and the client agent's side as the HTTP/2 server (as in
 * src/tunnel-client.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import http2, {
  type ClientHttp2Session,
  type ClientHttp2Stream,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
} from 'node:http2';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { H2_SETTINGS, SESSION_WINDOW, STREAM_WINDOW } from '../src/tunnel-settings.js';
import { webSocketDuplex } from '../src/ws-duplex.js';

const { NGHTTP2_CANCEL, NGHTTP2_NO_ERROR } = http2.constants;
const MB = 1 << 20;

type StreamHandler = (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => void;

interface Tunnel {
  /** Server agent side: opens a stream per request. */
  session: ClientHttp2Session;
  /** WebSocket of the server agent side / of the client agent side. */
  hubWs: WebSocket;
  agentWs: WebSocket;
  hubDuplex: Duplex;
  agentDuplex: Duplex;
  /** Text frames each side received through onText. */
  hubTexts: string[];
  agentTexts: string[];
  /** Session-level errors seen on either side (there should be none). */
  errors: Error[];
  agentSession: () => http2.ServerHttp2Session | undefined;
  close: () => Promise<void>;
}

const open: Tunnel[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((t) => t.close()));
});

async function tunnel(onStream: StreamHandler): Promise<Tunnel> {
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    perMessageDeflate: false,
    maxPayload: 8 * MB,
  });
  await once(wss, 'listening');
  const port = (wss.address() as AddressInfo).port;
  const accepted = once(wss, 'connection') as Promise<[WebSocket]>;
  const agentWs = new WebSocket(`ws://127.0.0.1:${port}`, { perMessageDeflate: false, maxPayload: 8 * MB });
  await once(agentWs, 'open');
  const [hubWs] = await accepted;

  const hubTexts: string[] = [];
  const agentTexts: string[] = [];
  const errors: Error[] = [];

  // Client agent: an HTTP/2 server fed the duplex as a connection.
  const h2server = http2.createServer({ settings: H2_SETTINGS, maxSessionMemory: 64 });
  let agentSession: http2.ServerHttp2Session | undefined;
  h2server.on('session', (s) => {
    agentSession = s;
    s.setLocalWindowSize(SESSION_WINDOW);
    // As the client agent does: a session error ends the tunnel.
    s.on('error', (e) => {
      errors.push(e);
      agentWs.terminate();
    });
  });
  h2server.on('stream', onStream);
  const agentDuplex = webSocketDuplex(agentWs, (t) => agentTexts.push(t));
  h2server.emit('connection', agentDuplex);

  // Server agent: an HTTP/2 client over the other end.
  const hubDuplex = webSocketDuplex(hubWs, (t) => hubTexts.push(t));
  const session = http2.connect('http://tunnel.kelsingra', {
    createConnection: () => hubDuplex,
    settings: H2_SETTINGS,
    maxSessionMemory: 64,
    peerMaxConcurrentStreams: 10_000,
  });
  // As the server agent does: a session error ends the tunnel.
  session.on('error', (e) => {
    errors.push(e);
    hubWs.terminate();
  });
  await once(session, 'connect');
  session.setLocalWindowSize(SESSION_WINDOW);
  // Let both sides see each other's settings (and window updates) before a test starts.
  await new Promise<void>((resolve, reject) => session.ping((err) => (err ? reject(err) : resolve())));

  const t: Tunnel = {
    session,
    hubWs,
    agentWs,
    hubDuplex,
    agentDuplex,
    hubTexts,
    agentTexts,
    errors,
    agentSession: () => agentSession,
    close: async () => {
      session.destroy();
      agentSession?.destroy();
      hubWs.terminate();
      agentWs.terminate();
      await new Promise((r) => h2server.close(r));
      await new Promise((r) => wss.close(r));
    },
  };
  open.push(t);
  return t;
}

type Readable = NodeJS.ReadableStream & { destroyed: boolean; readableEnded: boolean };

/**
 * Yields a stream's chunks as the caller asks for them (so a slow caller applies backpressure).
 * Ends only on a clean end; a stream destroyed before its end throws. (Not `for await` on the
 * stream: it reports an HTTP/2 stream whose both halves closed before the read as premature.)
 */
async function* chunksOf(readable: Readable): AsyncGenerator<Buffer> {
  let error: Error | undefined;
  readable.on('error', (e: Error) => {
    error = e;
  });
  for (;;) {
    for (let c = readable.read() as Buffer | null; c !== null; c = readable.read() as Buffer | null) yield c;
    if (error) throw error;
    if (readable.readableEnded) return;
    if (readable.destroyed) throw new Error('stream closed before its end');
    await new Promise<void>((resolve) => {
      const events = ['readable', 'end', 'close', 'error'];
      const done = () => {
        for (const e of events) readable.off(e, done);
        resolve();
      };
      for (const e of events) readable.on(e, done);
    });
  }
}

/** Collects a readable into one Buffer. */
async function collect(readable: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of chunksOf(readable)) chunks.push(c);
  return Buffer.concat(chunks);
}

function request(
  session: ClientHttp2Session,
  path: string,
  body?: Buffer,
  extra: Record<string, string> = {},
) {
  const stream = session.request(
    { ':method': body ? 'POST' : 'GET', ':path': path, ...extra },
    { endStream: !body },
  );
  if (body) stream.end(body);
  return stream;
}

async function response(stream: ClientHttp2Stream): Promise<{ headers: IncomingHttpHeaders; body: Buffer }> {
  const [headers] = (await once(stream, 'response')) as [IncomingHttpHeaders];
  const body = await collect(stream);
  return { headers, body };
}

/** Resolves on 'close' even if 'error' came first (events.once would reject on the error). */
const closeOf = (s: NodeJS.EventEmitter) => new Promise<void>((resolve) => s.once('close', () => resolve()));
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Writes `total` random bytes to `writable`, only as fast as it accepts them (write() false
 * → wait for 'drain'). `produced` counts bytes handed over so far.
 */
function produce(
  writable: NodeJS.WritableStream & { destroyed?: boolean },
  total: number,
  chunkSize = 64 * 1024,
) {
  const hash = createHash('sha256');
  const state = { produced: 0, done: false, hash: '' };
  const finished = (async () => {
    while (state.produced < total) {
      const chunk = randomBytes(Math.min(chunkSize, total - state.produced));
      hash.update(chunk);
      state.produced += chunk.length;
      if (!writable.write(chunk)) await once(writable, 'drain');
    }
    writable.end();
    state.hash = hash.digest('hex');
    state.done = true;
  })();
  return { state, finished };
}

/**
 * Reads a stream slowly: nothing at first (the writer must stall), then with a pause after
 * every `pauseEvery` bytes. Records the largest gap between what the writer has handed over
 * and what this reader has taken, and the writer WebSocket's largest bufferedAmount.
 */
async function slowRead(
  readable: Readable,
  produced: () => number,
  writerWs: WebSocket,
  opts: { initialStallMs: number; pauseEvery: number; pauseMs: number },
) {
  const stats = { consumed: 0, maxInFlight: 0, maxBuffered: 0, producedDuringStall: [] as number[] };
  const hash = createHash('sha256');
  const sample = () => {
    stats.maxInFlight = Math.max(stats.maxInFlight, produced() - stats.consumed);
    stats.maxBuffered = Math.max(stats.maxBuffered, writerWs.bufferedAmount);
  };
  const sampler = setInterval(sample, 2);
  try {
    // Stall: sample what the writer managed to hand over while nobody reads.
    for (let waited = 0; waited < opts.initialStallMs; waited += 50) {
      await sleep(50);
      stats.producedDuringStall.push(produced());
    }
    sample();
    let nextPause = opts.pauseEvery;
    for await (const c of chunksOf(readable)) {
      hash.update(c);
      stats.consumed += c.length;
      sample();
      if (stats.consumed >= nextPause) {
        nextPause += opts.pauseEvery;
        await sleep(opts.pauseMs);
        sample();
      }
    }
  } finally {
    clearInterval(sampler);
  }
  return { ...stats, hash: hash.digest('hex') };
}

describe('tunnel streams over a WebSocket', () => {
  it('multiplexes many concurrent streams, each getting its own response', async () => {
    const t = await tunnel((stream, headers) => {
      const path = String(headers[':path']);
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        const body = Buffer.concat(chunks);
        // Answer out of order on purpose: later streams may finish first.
        setTimeout(
          () => {
            stream.respond({ ':status': 200, 'x-path': path, 'x-sha': sha(body) });
            stream.end(Buffer.concat([Buffer.from(`${path}\n`), body]));
          },
          Number(path.split('/')[2]) % 7,
        );
      });
    });

    const N = 300; // above HTTP/2's usual default of 100 concurrent streams
    const bodies = Array.from({ length: N }, (_, i) => randomBytes((i * 7919) % (96 * 1024)));
    const results = await Promise.all(bodies.map((b, i) => response(request(t.session, `/echo/${i}`, b))));
    results.forEach(({ headers, body }, i) => {
      const prefix = Buffer.from(`/echo/${i}\n`);
      expect(headers[':status']).toBe(200);
      expect(headers['x-path']).toBe(`/echo/${i}`);
      expect(headers['x-sha']).toBe(sha(bodies[i] as Buffer));
      expect(body.subarray(0, prefix.length).equals(prefix)).toBe(true);
      expect(body.subarray(prefix.length).equals(bodies[i] as Buffer)).toBe(true);
    });
    expect(t.errors).toEqual([]);
  });

  it('streams a 32 MB download intact with a slow reader; the writer is held back by flow control', async () => {
    const SIZE = 32 * MB;
    let writer: ReturnType<typeof produce> | undefined;
    const t = await tunnel((stream) => {
      stream.respond({ ':status': 200 });
      writer = produce(stream, SIZE);
    });
    const req = request(t.session, '/download');
    await once(req, 'response');
    const read = await slowRead(req, () => writer?.state.produced ?? 0, t.agentWs, {
      initialStallMs: 400,
      pauseEvery: 4 * MB,
      pauseMs: 40,
    });
    await writer?.finished;

    expect(read.consumed).toBe(SIZE);
    expect(read.hash).toBe(writer?.state.hash);
    // While nobody read, the writer stalled: nothing more was accepted in the last 200 ms of the stall…
    const stall = read.producedDuringStall;
    expect(stall.at(-1)).toBe(stall.at(-5));
    // …after handing over about one stream window, not the body.
    expect(stall.at(-1)).toBeGreaterThan(STREAM_WINDOW / 2);
    expect(stall.at(-1)).toBeLessThan(STREAM_WINDOW + MB);
    // Throughout: bytes in flight are bounded by the windows, not the 32 MB body.
    expect(read.maxInFlight).toBeLessThan(STREAM_WINDOW + MB);
    expect(read.maxBuffered).toBeLessThanOrEqual(STREAM_WINDOW + MB);
    expect(t.errors).toEqual([]);
  });

  it('streams a 32 MB upload intact to a slow local service; the uploader is held back by flow control', async () => {
    const SIZE = 32 * MB;
    let read: Promise<Awaited<ReturnType<typeof slowRead>>> | undefined;
    let uploader: ReturnType<typeof produce> | undefined;
    const t = await tunnel((stream) => {
      read = slowRead(stream, () => uploader?.state.produced ?? 0, t.hubWs, {
        initialStallMs: 400,
        pauseEvery: 4 * MB,
        pauseMs: 40,
      });
      read.then((r) => {
        stream.respond({ ':status': 200, 'x-sha': r.hash });
        stream.end();
      });
    });
    const req = t.session.request({ ':method': 'POST', ':path': '/upload' });
    uploader = produce(req, SIZE);
    const res = await response(req);
    await uploader.finished;
    const r = await (read as NonNullable<typeof read>);

    expect(r.consumed).toBe(SIZE);
    expect(res.headers['x-sha']).toBe(uploader.state.hash);
    const stall = r.producedDuringStall;
    expect(stall.at(-1)).toBe(stall.at(-5));
    expect(stall.at(-1)).toBeLessThan(STREAM_WINDOW + MB);
    expect(r.maxInFlight).toBeLessThan(STREAM_WINDOW + MB);
    expect(r.maxBuffered).toBeLessThanOrEqual(STREAM_WINDOW + MB);
    expect(t.errors).toEqual([]);
  });

  it('many stalled streams: each is held to its stream window, whatever its body size', async () => {
    // Note: Node's HTTP/2 returns connection-level window as soon as data arrives, so the
    // session window does not cap the total; the per-stream window does, stream by stream.
    const STREAMS = 16;
    const BODY = 4 * MB;
    const writers: ReturnType<typeof produce>[] = [];
    const t = await tunnel((stream) => {
      stream.respond({ ':status': 200 });
      writers.push(produce(stream, BODY));
    });
    const reqs = Array.from({ length: STREAMS }, (_, i) => request(t.session, `/download/${i}`));
    await Promise.all(reqs.map((r) => once(r, 'response')));
    // Nobody reads. Wait until the writers stop making progress.
    let last = -1;
    for (let i = 0; i < 100; i++) {
      await sleep(50);
      const now = writers.reduce((s, w) => s + w.state.produced, 0);
      if (now === last) break;
      last = now;
    }
    expect(writers).toHaveLength(STREAMS);
    for (const w of writers) {
      expect(w.state.done).toBe(false);
      expect(w.state.produced).toBeLessThanOrEqual(STREAM_WINDOW + 256 * 1024);
    }
    for (const r of reqs) expect(r.readableLength).toBeLessThanOrEqual(STREAM_WINDOW);
    expect(t.agentWs.bufferedAmount).toBeLessThanOrEqual(SESSION_WINDOW + MB);
    // And every stream still completes intact once read.
    const bodies = await Promise.all(reqs.map((r) => collect(r)));
    await Promise.all(writers.map((w) => w.finished));
    expect(bodies.every((b) => b.length === BODY)).toBe(true);
    // Streams may have been accepted in any order; match by hash.
    expect(new Set(bodies.map(sha))).toEqual(new Set(writers.map((w) => w.state.hash)));
    expect(t.errors).toEqual([]);
  });

  it('a stream cancelled by the server agent is seen as cancelled by the client agent, and only that stream', async () => {
    const seen: Array<{ path: string; closed: Promise<number> }> = [];
    const t = await tunnel((stream, headers) => {
      const path = String(headers[':path']);
      stream.on('error', () => undefined);
      const closed = new Promise<number>((resolve) =>
        stream.on('close', () => resolve(stream.rstCode as number)),
      );
      seen.push({ path, closed });
      if (path === '/ok') {
        stream.respond({ ':status': 200 });
        stream.end('fine');
      } else {
        stream.respond({ ':status': 200 });
        stream.write('partial');
      }
    });
    const hold = request(t.session, '/hold');
    hold.on('error', () => undefined);
    await once(hold, 'response');
    const aborted = closeOf(hold);
    hold.close(NGHTTP2_CANCEL);
    await aborted;
    const agentSide = seen.find((s) => s.path === '/hold');
    expect(await agentSide?.closed).toBe(NGHTTP2_CANCEL);

    // The session and other streams carry on.
    const ok = await response(request(t.session, '/ok'));
    expect(ok.body.toString()).toBe('fine');
    expect(t.errors).toEqual([]);
  });

  it('a stream closed with CANCEL by the client agent before answering is seen as cancelled by the server agent', async () => {
    const t = await tunnel((stream, headers) => {
      stream.on('error', () => undefined);
      if (headers[':path'] === '/ok') {
        stream.respond({ ':status': 200 });
        stream.end('fine');
        return;
      }
      stream.close(NGHTTP2_CANCEL);
    });
    const req = request(t.session, '/refuse');
    let responded = false;
    req.on('response', () => {
      responded = true;
    });
    req.on('error', () => undefined);
    await closeOf(req);
    expect(req.rstCode).toBe(NGHTTP2_CANCEL);
    expect(responded).toBe(false);
    const ok = await response(request(t.session, '/ok'));
    expect(ok.body.toString()).toBe('fine');
    expect(t.errors).toEqual([]);
  });

  it('a response the client agent abandons mid-body (destroy, as the local forwarder does) is seen as a reset', async () => {
    const t = await tunnel((stream) => {
      stream.on('error', () => undefined);
      stream.respond({ ':status': 200 });
      stream.write(Buffer.alloc(100_000, 1), () =>
        setTimeout(() => stream.destroy(new Error('local service went away')), 20),
      );
    });
    const req = request(t.session, '/reset-me');
    req.on('error', () => undefined);
    let received = 0;
    req.on('data', (c: Buffer) => {
      received += c.length;
    });
    await closeOf(req);
    // Reset, not a clean end: the server agent must not relay the partial body as a whole one.
    expect(req.rstCode).toBe(http2.constants.NGHTTP2_INTERNAL_ERROR);
    expect(received).toBe(100_000);
    expect(t.errors).toEqual([]);
  });

  it('an upload the server agent aborts mid-body (AbortSignal, as the data plane does) is seen as cancelled', async () => {
    let agentSide: ServerHttp2Stream | undefined;
    let received = 0;
    const t = await tunnel((stream) => {
      agentSide = stream;
      stream.on('error', () => undefined);
      stream.on('data', (c: Buffer) => {
        received += c.length;
      });
    });
    const abort = new AbortController();
    const req = t.session.request({ ':method': 'POST', ':path': '/upload' }, { signal: abort.signal });
    req.on('error', () => undefined);
    req.write(Buffer.alloc(50_000, 2));
    for (let i = 0; i < 200 && received < 50_000; i++) await sleep(5);
    expect(received).toBe(50_000);
    const closed = closeOf(agentSide as ServerHttp2Stream);
    abort.abort();
    await closed;
    expect(agentSide?.rstCode).toBe(NGHTTP2_CANCEL);
    expect(agentSide?.aborted).toBe(true);
    expect(t.errors).toEqual([]);
  });

  it('a completed stream closes with NO_ERROR, distinguishable from a reset', async () => {
    const t = await tunnel((stream) => {
      stream.respond({ ':status': 200 });
      stream.end('done');
    });
    const req = request(t.session, '/x');
    const res = await response(req);
    if (!req.closed) await once(req, 'close');
    expect(res.body.toString()).toBe('done');
    expect(req.rstCode).toBe(NGHTTP2_NO_ERROR);
  });

  it('text frames go to onText on each side, in order, never into the byte stream', async () => {
    const SIZE = 8 * MB;
    let writer: ReturnType<typeof produce> | undefined;
    const t = await tunnel((stream) => {
      stream.respond({ ':status': 200 });
      writer = produce(stream, SIZE);
    });
    const req = request(t.session, '/download');
    await once(req, 'response');
    // Interleave control messages with the body in both directions. Some look like HTTP/2
    // bytes: were they mixed into the stream, the session would break with a protocol error.
    const bodyDone = collect(req);
    const toHub: string[] = [];
    const toAgent: string[] = [];
    for (let i = 0; i < 50; i++) {
      const a =
        i % 10 === 0
          ? 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'
          : JSON.stringify({ type: 'renew', ids: [`icp_${i}`] });
      const b = JSON.stringify({ type: 'renewed', ids: [`icp_${i}`], missing: [] });
      toHub.push(a);
      toAgent.push(b);
      t.agentWs.send(a);
      t.hubWs.send(b);
      if (i % 5 === 0) await sleep(1);
    }
    const body = await bodyDone;
    await writer?.finished;
    expect(body.length).toBe(SIZE);
    expect(sha(body)).toBe(writer?.state.hash);
    // Frames sent before the body finished have all arrived by now; wait briefly for any stragglers.
    for (let i = 0; i < 100 && (t.hubTexts.length < 50 || t.agentTexts.length < 50); i++) await sleep(10);
    expect(t.hubTexts).toEqual(toHub);
    expect(t.agentTexts).toEqual(toAgent);
    // The session is unharmed and still carries requests.
    expect(t.errors).toEqual([]);
    expect(t.session.destroyed).toBe(false);
  });

  it('a dropped WebSocket ends the HTTP/2 session on both sides and fails the open streams', async () => {
    const t = await tunnel((stream) => {
      stream.on('error', () => undefined);
      stream.respond({ ':status': 200 });
      stream.write('partial');
    });
    const req = request(t.session, '/hold');
    req.on('error', () => undefined);
    await once(req, 'response');
    const sessionClosed = once(t.session, 'close');
    const reqClosed = closeOf(req);
    t.agentWs.terminate();
    await Promise.all([sessionClosed, reqClosed]);
    expect(req.rstCode).not.toBe(NGHTTP2_NO_ERROR);
    expect(t.hubDuplex.destroyed).toBe(true);
    const agentSession = t.agentSession();
    if (agentSession && !agentSession.closed) await once(agentSession, 'close');
    expect(t.agentDuplex.destroyed).toBe(true);
    // Writing to a dead tunnel fails instead of buffering forever.
    const err = await new Promise<Error | null | undefined>((resolve) =>
      t.hubDuplex.write(Buffer.from('x'), resolve),
    );
    expect(err).toBeInstanceOf(Error);
  });
});
