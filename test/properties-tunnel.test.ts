/**
 * Property-based tests (fast-check) of the tunnel's decoding: the WebSocket byte stream under
 * HTTP/2, the JSON control messages in text frames, and Kafka records on the wire. Garbage on
 * one tunnel closes that tunnel only, with a log line that says why; another developer's
 * intercept keeps serving throughout.
 */
import { Buffer } from 'node:buffer';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { clientKeyOf } from '../server/intercept-store.js';
import { tunnelIdOf } from '../server/tunnel-hub.js';
import { fromWire, toWire, type WireMessage } from '../src/kafka-wire.js';
import { TunnelClient } from '../src/tunnel-client.js';
import { webSocketDuplex } from '../src/ws-duplex.js';
import {
  closeServer,
  listen,
  type ServerProcess,
  sleep,
  startServerProcess,
  viaProxy,
  waitFor,
} from './helpers.js';

/** A chunk size: tiny, around the duplex's coalescing and splitting limits, or large. */
const chunkSizeArb = fc.oneof(
  fc.integer({ min: 0, max: 64 }),
  fc.integer({ min: 16 * 1024 - 2, max: 16 * 1024 + 2 }),
  fc.integer({ min: 2 * (64 * 1024 + 9) - 2, max: 2 * (64 * 1024 + 9) + 2 }),
  fc.integer({ min: 0, max: 400_000 }),
);

/** Bytes of `size`, from random bytes for small chunks and a seeded pattern for large ones. */
const chunkArb = fc.oneof(
  fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
  fc.tuple(chunkSizeArb, fc.nat(255)).map(([size, seed]) => {
    const b = Buffer.allocUnsafe(size);
    for (let i = 0; i < size; i++) b[i] = (seed + i * 7 + (i >> 8)) & 0xff;
    return b;
  }),
);

type Op = { kind: 'bytes'; data: Buffer } | { kind: 'text'; text: string };
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: chunkArb.map((data) => ({ kind: 'bytes' as const, data })) },
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }).map((text) => ({ kind: 'text' as const, text })) },
);

describe('webSocketDuplex', () => {
  let wss: WebSocketServer;
  let url: string;
  const received = new Map<string, Promise<{ bytes: Buffer; texts: string[] }>>();

  beforeAll(async () => {
    wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false, maxPayload: 8 << 20 });
    await new Promise((r) => wss.once('listening', r));
    url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`;
    wss.on('connection', (ws, req) => {
      const texts: string[] = [];
      const duplex = webSocketDuplex(ws, (text) => texts.push(text));
      const chunks: Buffer[] = [];
      received.set(
        req.url ?? '',
        new Promise((resolve, reject) => {
          duplex.on('data', (c: Buffer) => chunks.push(c));
          duplex.on('end', () => resolve({ bytes: Buffer.concat(chunks), texts }));
          duplex.on('error', reject);
        }),
      );
    });
  });
  afterAll(() => new Promise((r) => wss.close(r)));

  let n = 0;
  it('delivers any sequence of binary chunks in order and intact, and text frames in order', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { maxLength: 12 }), fc.boolean(), async (ops, corked) => {
        const path = `/run-${n++}`;
        const ws = new WebSocket(`${url}${path}`, { perMessageDeflate: false, maxPayload: 8 << 20 });
        await new Promise((resolve, reject) => {
          ws.once('open', resolve);
          ws.once('error', reject);
        });
        const duplex = webSocketDuplex(ws, () => undefined);
        // Corked, the writes reach the duplex together (writev): small ones are joined, large ones split.
        if (corked) duplex.cork();
        for (const op of ops) {
          if (op.kind === 'bytes') duplex.write(op.data);
          else ws.send(op.text);
        }
        if (corked) duplex.uncork();
        duplex.end();
        const got = await waitFor(() => received.get(path), 5_000, 'the server end');
        const { bytes, texts } = await got;
        const sent = Buffer.concat(ops.flatMap((op) => (op.kind === 'bytes' ? [op.data] : [])));
        expect(bytes.length).toBe(sent.length);
        expect(bytes.equals(sent)).toBe(true);
        expect(texts).toEqual(ops.flatMap((op) => (op.kind === 'text' ? [op.text] : [])));
        received.delete(path);
      }),
      { numRuns: 60, timeout: 15_000 },
    );
  });
});

const TOKEN = 'properties-tunnel-token-1';
const GOOD_CLIENT = 'good-client-000001';

/** One server agent for the garbage: a good client holds an intercept on it throughout. */
describe('garbage on a tunnel', () => {
  let server: ServerProcess;
  let upstream: Awaited<ReturnType<typeof listen>>;
  let good: TunnelClient;
  let goodIntercept: string;
  /** Rejects, with the end of the server's output, if the server exits. */
  let exited: Promise<never>;

  beforeAll(async () => {
    upstream = await listen((_req, res) => res.end('upstream'));
    server = await startServerProcess(['--service', `billing=${upstream.url}`, '--token', TOKEN], {
      KELSINGRA_LEASE_TTL: '600',
    });
    exited = new Promise<never>((_, reject) =>
      server.child.once('exit', (code) =>
        reject(new Error(`the server exited (${code}):\n${server.logs().slice(-2000)}`)),
      ),
    );
    exited.catch(() => undefined);
    good = new TunnelClient({
      server: server.control,
      token: TOKEN,
      clientId: GOOD_CLIENT,
      holder: 'good',
      onStream: (stream, headers) => {
        stream.on('error', () => undefined);
        stream.resume();
        stream.respond({ ':status': 200, 'content-type': 'text/plain' });
        stream.end(`local ${headers[':path']}`);
      },
    });
    await good.start();
    const res = await fetch(`${server.control}/v1/intercepts`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ service: 'billing', tenant: 't-good', clientId: GOOD_CLIENT, localPort: 3000 }),
    });
    expect(res.status).toBe(201);
    goodIntercept = ((await res.json()) as { id: string }).id;
  });
  afterAll(async () => {
    good?.close();
    await server?.stop();
    await closeServer(upstream);
  });

  /** `p`, unless the server exits first. */
  function whileUp<T>(p: Promise<T>): Promise<T> {
    return Promise.race([p, exited]);
  }

  /** The good intercept's traffic, and a tenant nobody intercepts, both as they should be. */
  async function goodTraffic(tag: string): Promise<void> {
    const [mine, other] = await Promise.all([
      viaProxy(server, 'billing', 't-good', `/${tag}`).then((r) => r.text()),
      viaProxy(server, 'billing', 't-other', `/${tag}`).then((r) => r.text()),
    ]);
    expect(mine).toBe(`local /${tag}`);
    expect(other).toBe('upstream');
  }

  let n = 0;
  /** A tunnel of its own, open (hello received, when asked to wait for it). */
  async function badTunnel(waitHello: boolean) {
    const clientId = `bad-client-${n++}-${Date.now()}`;
    const ws = new WebSocket(`${server.control.replace('http', 'ws')}/v1/tunnel`, 'kelsingra.h2.v1', {
      headers: {
        authorization: `Bearer ${TOKEN}`,
        'x-kelsingra-client': clientId,
        'x-kelsingra-holder': 'bad',
      },
      perMessageDeflate: false,
    });
    const texts: string[] = [];
    ws.on('message', (data, isBinary) => {
      if (!isBinary) texts.push(String(data));
    });
    ws.on('error', () => undefined);
    const closed = new Promise<{ code: number; reason: string }>((r) =>
      ws.once('close', (code, reason) => r({ code, reason: String(reason) })),
    );
    await whileUp(
      new Promise<void>((resolve, reject) => {
        ws.once('open', () => (waitHello ? undefined : resolve()));
        ws.once('unexpected-response', () => reject(new Error('tunnel refused')));
        ws.once('close', () => reject(new Error('tunnel closed before it opened')));
        if (waitHello) ws.once('message', () => resolve());
      }),
    );
    return { ws, texts, closed, tunnelId: tunnelIdOf(clientKeyOf(clientId)) };
  }

  /** The server's log lines about one tunnel, in order. */
  function logOf(tunnelId: string): { msg: string; err?: string }[] {
    return server
      .logs()
      .split('\n')
      .filter((line) => line.includes(`"${tunnelId}"`))
      .map((line) => JSON.parse(line) as { msg: string; err?: string; tunnel?: string })
      .filter((entry) => entry.tunnel === tunnelId);
  }

  /** Resolves 'open' once a ping is answered (the frames before it were handled), 'closed' if it closes first. */
  function settle(ws: WebSocket, closed: Promise<unknown>): Promise<'open' | 'closed'> {
    return whileUp(
      Promise.race([
        closed.then(() => 'closed' as const),
        new Promise<'open'>((resolve) => {
          ws.once('pong', () => resolve('open'));
          if (ws.readyState === WebSocket.OPEN) ws.ping();
        }),
      ]),
    );
  }

  const textFrameArb = fc.oneof(
    fc.string({ unit: 'binary', maxLength: 200 }),
    fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
    fc
      .record(
        {
          type: fc.oneof(fc.constantFrom('renew', 'hello', 'renewed', 'intercept-ended'), fc.jsonValue()),
          ids: fc.oneof(
            fc.array(fc.oneof(fc.string(), fc.constant('GOOD'), fc.jsonValue()), { maxLength: 5 }),
            fc.jsonValue(),
          ),
        },
        { requiredKeys: [] },
      )
      .map((m) => JSON.stringify(m)),
    fc.constantFrom('null', '[]', '0', '""', 'true', '{}', '{"type":null}', '{"type":"renew"}', '{'),
  );

  it('any text frame: one that is not JSON closes only that tunnel, any other is ignored; each is logged', async () => {
    await fc.assert(
      fc.asyncProperty(textFrameArb, fc.boolean(), async (raw, waitHello) => {
        const text = raw.replaceAll('"GOOD"', JSON.stringify(goodIntercept));
        const bad = await badTunnel(waitHello);
        const during = goodTraffic(`text-${n}`);
        bad.ws.send(text);
        const state = await settle(bad.ws, bad.closed);
        // What the server received: the text as UTF-8, lone surrogates replaced.
        // docs/protocol.md: a text frame that is not JSON closes the tunnel with code 1007; unknown
        // messages (any other JSON, `null` and lists included) are logged and ignored.
        let message: unknown;
        let json = true;
        try {
          message = JSON.parse(Buffer.from(text).toString('utf8'));
        } catch {
          json = false;
        }
        if (!json) {
          expect(state).toBe('closed');
          expect((await bad.closed).code).toBe(1007);
          await waitFor(
            () => logOf(bad.tunnelId).some((e) => e.msg === 'tunnel closed'),
            5_000,
            'tunnel closed',
          );
          const msgs = logOf(bad.tunnelId).map((e) => e.msg);
          expect(msgs).toContain('malformed control frame; closing tunnel');
          expect(msgs.indexOf('malformed control frame; closing tunnel')).toBeLessThan(
            msgs.indexOf('tunnel closed'),
          );
        } else {
          expect(state).toBe('open');
          const m = (message ?? {}) as { type?: unknown; ids?: unknown };
          if (m.type === 'renew' && Array.isArray(m.ids)) {
            const reply = await waitFor(
              () => bad.texts.map((t) => JSON.parse(t)).find((r) => r.type === 'renewed'),
              5_000,
              'renewed',
            );
            // A tunnel renews only its own leases, never another client's.
            expect(reply.ids).toEqual([]);
            expect(reply.missing).toEqual(m.ids.filter((id) => typeof id === 'string'));
          } else {
            await waitFor(
              () => logOf(bad.tunnelId).some((e) => e.msg === 'unknown control message ignored'),
              5_000,
              'the ignored message to be logged',
            );
          }
        }
        await whileUp(during);
        bad.ws.terminate();
        expect(server.child.exitCode).toBeNull();
      }),
      { numRuns: 40, timeout: 15_000 },
    );
    await goodTraffic('after-text');
  });

  it('any binary frames that are not HTTP/2 close only that tunnel, with a log line saying why', async () => {
    const framesArb = fc.array(
      fc.oneof(
        fc.uint8Array({ minLength: 1, maxLength: 600 }),
        // A well-formed frame header with a payload shorter or longer than it says.
        fc
          .tuple(fc.nat(70_000), fc.nat(12), fc.nat(255), fc.nat(), fc.uint8Array({ maxLength: 64 }))
          .map(([length, type, flags, stream, payload]) => {
            const head = Buffer.alloc(9);
            head.writeUIntBE(length, 0, 3);
            head[3] = type;
            head[4] = flags;
            head.writeUInt32BE(stream & 0x7fffffff, 5);
            return new Uint8Array(Buffer.concat([head, payload]));
          }),
      ),
      { minLength: 1, maxLength: 3 },
    );
    await fc.assert(
      fc.asyncProperty(framesArb, fc.boolean(), async (frames, waitHello) => {
        const bad = await badTunnel(waitHello);
        const during = goodTraffic(`binary-${n}`);
        for (const frame of frames) bad.ws.send(frame, { binary: true });
        const all = Buffer.concat(frames);
        // The server end is an HTTP/2 client: the first thing it must read is a SETTINGS frame
        // (type 4). Nine bytes of anything else can be nothing but an error.
        const mustFail = all.length >= 9 && all[3] !== 4;
        const state = await whileUp(
          Promise.race([
            bad.closed.then(() => 'closed' as const),
            sleep(mustFail ? 5_000 : 300).then(() => 'open' as const),
          ]),
        );
        if (mustFail) expect(state).toBe('closed');
        if (state === 'closed') {
          await waitFor(
            () => logOf(bad.tunnelId).some((e) => e.msg === 'tunnel closed'),
            5_000,
            'tunnel closed',
          );
          const log = logOf(bad.tunnelId);
          const why = log.find((e) => e.msg.startsWith('tunnel protocol error'));
          expect(why, `no reason logged: ${JSON.stringify(log)}`).toBeDefined();
          expect(why?.err).toBeTruthy();
          expect(log.indexOf(why as (typeof log)[number])).toBeLessThan(
            log.findIndex((e) => e.msg === 'tunnel closed'),
          );
        } else {
          // Not failed (yet): a frame still incomplete. The WebSocket itself is alive.
          expect(await settle(bad.ws, bad.closed)).toBe('open');
        }
        await whileUp(during);
        bad.ws.terminate();
        expect(server.child.exitCode).toBeNull();
      }),
      { numRuns: 25, timeout: 15_000 },
    );
    await goodTraffic('after-binary');
  });

  it('text frames that are not UTF-8 close only that tunnel, with a log line saying why', async () => {
    const bad = await badTunnel(true);
    bad.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x80]), { binary: false });
    expect((await bad.closed).code).toBe(1007);
    await waitFor(() => logOf(bad.tunnelId).some((e) => e.msg === 'tunnel closed'), 5_000, 'tunnel closed');
    expect(logOf(bad.tunnelId).find((e) => e.msg.startsWith('tunnel protocol error'))?.err).toMatch(/UTF-8/);
    await goodTraffic('after-utf8');
  });
});

describe('Kafka records on the wire', () => {
  const bytesArb = fc.option(
    fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
    { nil: null },
  );
  it('fromWire(toWire(m)) gives back the same bytes', () => {
    fc.assert(
      fc.property(
        bytesArb,
        bytesArb,
        fc.dictionary(
          fc.oneof(fc.string({ maxLength: 10 }), fc.constantFrom('__proto__', 'constructor')),
          fc.uint8Array({ maxLength: 16 }).map((a) => Buffer.from(a)),
          { maxKeys: 4 },
        ),
        (key, value, headers) => {
          const m = fromWire(JSON.parse(JSON.stringify(toWire({ key, value, headers }))) as WireMessage);
          expect(m.key).toEqual(key);
          expect(m.value).toEqual(value);
          expect(Object.keys(m.headers ?? {}).sort()).toEqual(Object.keys(headers).sort());
          for (const [k, v] of Object.entries(headers)) expect(m.headers?.[k]).toEqual(v);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('any text where base64 belongs decodes to bytes, never an error', () => {
    fc.assert(
      fc.property(
        fc.option(fc.string({ unit: 'binary' }), { nil: null }),
        fc.option(fc.string({ unit: 'binary' }), { nil: null }),
        fc.dictionary(fc.string(), fc.string({ unit: 'binary' }), { maxKeys: 3 }),
        (key, value, headers) => {
          const m = fromWire({ key, value, headers });
          expect(m.key === null || Buffer.isBuffer(m.key)).toBe(true);
          expect(m.value === null || Buffer.isBuffer(m.value)).toBe(true);
          for (const v of Object.values(m.headers ?? {})) expect(Buffer.isBuffer(v)).toBe(true);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('anything else fails with an error that names the field', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.anything(),
          fc.record(
            { key: fc.anything(), value: fc.anything(), headers: fc.anything() },
            { requiredKeys: [] },
          ),
        ),
        (w) => {
          try {
            fromWire(w as WireMessage);
          } catch (err) {
            expect(err).toBeInstanceOf(Error);
            expect((err as Error).message).toMatch(
              /^Kafka wire message: (must be|key|value|headers|header )/,
            );
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
