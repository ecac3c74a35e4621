/**
 * Property-based tests (fast-check) of the tunnel's decoding: streams multiplexed over the
 * WebSocket, the JSON control messages in text frames, and Kafka records on the wire. Garbage on
 * one tunnel closes that tunnel only, with a log line that says why; another developer's
 * intercept keeps serving throughout.
 */
import { Buffer } from 'node:buffer';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { clientKeyOf } from '../../server/store/intercept-store.js';
import { tunnelIdOf } from '../../server/tunnel/tunnel-hub.js';
import { TunnelClient } from '../../src/client/tunnel/tunnel-client.js';
import { fromWire, toWire, type WireMessage } from '../../src/shared/kafka-wire.js';
import { TunnelMux } from '../../src/shared/tunnel-mux.js';
import {
  FrameType,
  MAX_DATA_FRAME,
  STREAM_WINDOW,
  TUNNEL_SUBPROTOCOL,
} from '../../src/shared/tunnel-wire.js';
import {
  closeServer,
  listen,
  type ServerProcess,
  sleep,
  startServerProcess,
  viaProxy,
  waitFor,
} from '../support/helpers.js';

/** A chunk size: tiny, around the frame splitting limit, around the stream window, or large. */
const chunkSizeArb = fc.oneof(
  fc.integer({ min: 0, max: 64 }),
  fc.integer({ min: MAX_DATA_FRAME - 2, max: MAX_DATA_FRAME + 2 }),
  fc.integer({ min: STREAM_WINDOW - 2, max: STREAM_WINDOW + 2 }),
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

/** Trailers: none, or a few header lines. */
const trailersArb = fc.option(
  fc.array(fc.tuple(fc.constantFrom('grpc-status', 'x-digest', 'x-a'), fc.string({ maxLength: 20 })), {
    maxLength: 3,
  }),
  { nil: undefined },
);

describe('tunnel streams', () => {
  let wss: WebSocketServer;
  let url: string;

  beforeAll(async () => {
    wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false, maxPayload: 8 << 20 });
    await new Promise((r) => wss.once('listening', r));
    url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`;
    // The client agent's end: echoes each stream's body back as its response, trailers included.
    wss.on('connection', (ws) => {
      new TunnelMux(
        ws,
        {
          onControl: () => undefined,
          onProtocolError: (err) => {
            throw err;
          },
          onOpen: (stream) => {
            stream.respond({
              status: 200,
              headers: ['content-type', 'application/octet-stream'],
              body: true,
            });
            stream.onData = (chunk) => {
              // Echoed at the pace the other end credits it.
              stream.write(chunk);
              stream.consumed(chunk.length);
            };
            stream.onEnd = (trailers) => stream.end(trailers);
          },
        },
        false,
      );
    });
  });
  afterAll(() => new Promise((r) => wss.close(r)));

  it('any body on any number of concurrent streams comes back whole, in order, with its trailers', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.array(chunkArb, { maxLength: 6 }), trailersArb), { minLength: 1, maxLength: 4 }),
        async (bodies) => {
          const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 8 << 20 });
          await once(ws, 'open');
          const mux = new TunnelMux(
            ws,
            {
              onControl: () => undefined,
              onProtocolError: (err) => {
                throw err;
              },
            },
            true,
          );
          const results = await Promise.all(
            bodies.map(
              ([chunks, trailers]) =>
                new Promise<{ body: Buffer; trailers?: string[]; status: number }>((resolve, reject) => {
                  const stream = mux.open({
                    kind: 'http',
                    method: 'POST',
                    path: '/echo',
                    authority: 'echo',
                    headers: [],
                    intercept: 'icp_x',
                    http2: false,
                    upgrade: false,
                    body: true,
                  });
                  const got: Buffer[] = [];
                  let status = 0;
                  stream.onHead = (h) => {
                    status = h.status;
                  };
                  stream.onData = (c) => {
                    got.push(Buffer.from(c));
                    stream.consumed(c.length);
                  };
                  stream.onEnd = (t) => resolve({ body: Buffer.concat(got), trailers: t, status });
                  stream.onReset = (r) => reject(new Error(`reset: ${r.message ?? r.code}`));
                  // Writes past the credit wait for it, as pumpInto does.
                  const queue = [...chunks];
                  const next = () => {
                    while (queue.length > 0) if (!stream.write(queue.shift() as Buffer)) return;
                    stream.end(trailers?.flat());
                  };
                  stream.onDrain = next;
                  next();
                }),
            ),
          );
          for (const [i, [chunks, trailers]] of bodies.entries()) {
            const result = results[i] as { body: Buffer; trailers?: string[]; status: number };
            expect(result.status).toBe(200);
            expect(result.body.equals(Buffer.concat(chunks))).toBe(true);
            expect(result.trailers).toEqual(trailers && trailers.length > 0 ? trailers.flat() : undefined);
          }
          ws.close();
        },
      ),
      { numRuns: 60, timeout: 20_000 },
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
      onStream: (stream, head) => {
        stream.respond({ status: 200, headers: ['content-type', 'text/plain'], body: true });
        stream.write(Buffer.from(`local ${head.path}`));
        stream.end();
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
    const ws = new WebSocket(`${server.control.replace('http', 'ws')}/v1/tunnel`, TUNNEL_SUBPROTOCOL, {
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
          // A renew whose ids are not all strings does not fit its schema: ignored, like an unknown message.
          if (m.type === 'renew' && Array.isArray(m.ids) && m.ids.every((id) => typeof id === 'string')) {
            const reply = await waitFor(
              () => bad.texts.map((t) => JSON.parse(t)).find((r) => r.type === 'renewed'),
              5_000,
              'renewed',
            );
            // A tunnel renews only its own leases, never another client's.
            expect(reply.ids).toEqual([]);
            expect(reply.missing).toEqual(m.ids);
          } else {
            await waitFor(
              () => logOf(bad.tunnelId).some((e) => e.msg === 'unknown or malformed control message ignored'),
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

  it('any binary frames that are not tunnel frames close only that tunnel, with a log line saying why', async () => {
    const framesArb = fc.array(
      fc.oneof(
        fc.uint8Array({ minLength: 1, maxLength: 600 }),
        // A well-formed frame head (any type, any stream) with any payload.
        fc.tuple(fc.nat(8), fc.nat(), fc.uint8Array({ maxLength: 64 })).map(([type, stream, payload]) => {
          const head = Buffer.alloc(5);
          head[0] = type;
          head.writeUInt32BE(stream, 1);
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
        // The server opens every stream, so a frame for a stream it did not open is one that
        // crossed its own reset, and ignored. A frame too short for its head, of an unknown
        // type, or one that would open a stream is the client breaking the protocol.
        const mustFail = frames.some(
          (f) => f.length < 5 || (f[0] as number) < FrameType.Head || (f[0] as number) > FrameType.Credit,
        );
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
          // Frames for streams this tunnel never carried: ignored, and the WebSocket is alive.
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
