/**
 * The tunnel's streams without the agents: a real WebSocket pair on loopback with a mux at
 * each end (test/support/tunnel-pair.ts). Many streams at once, bodies held back by credit when a
 * reader is slow, resets seen only on their stream, and a dropped WebSocket failing what it
 * carried.
 */
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { TunnelStream } from '../../src/shared/tunnel-mux.js';
import { encodeFrame, FrameType, MAX_DATA_FRAME, STREAM_WINDOW } from '../../src/shared/tunnel-wire.js';
import { cleanupsAfterEach, sleep, waitFor } from '../support/helpers.js';
import { exchange, requestHead, tunnelPair } from '../support/tunnel-pair.js';

const cleanups = cleanupsAfterEach();
const MB = 1 << 20;

/** Answers each stream with its path, after reading (and crediting) its whole body. */
function echoPath(stream: TunnelStream, head: { path: string }) {
  let bytes = 0;
  stream.onData = (c) => {
    bytes += c.length;
    stream.consumed(c.length);
  };
  stream.onEnd = () => {
    stream.respond({ status: 200, headers: ['x-bytes', String(bytes)], body: true });
    stream.write(Buffer.from(head.path));
    stream.end();
  };
}

describe('tunnel streams over a WebSocket', () => {
  it('multiplexes many concurrent streams, each getting its own response', async () => {
    const { hub, errors } = await tunnelPair(echoPath, cleanups);
    const results = await Promise.all(
      Array.from({ length: 500 }, (_, i) =>
        exchange(hub, requestHead({ path: `/r${i}`, body: true }), Buffer.alloc(i)),
      ),
    );
    for (const [i, r] of results.entries()) {
      expect(r.body.toString()).toBe(`/r${i}`);
      expect(r.headers).toEqual(['x-bytes', String(i)]);
    }
    expect(hub.size).toBe(0);
    expect(errors).toEqual([]);
  });

  it('a reader that does not take the body holds its sender to one stream window, and the rest then arrives intact', async () => {
    let reader: TunnelStream | undefined;
    const received: Buffer[] = [];
    const { hub } = await tunnelPair((stream) => {
      reader = stream;
      // Takes the bytes but does not pass them on (no credit back) until told to.
      stream.onData = (c) => received.push(Buffer.from(c));
      stream.onEnd = () => {
        stream.respond({ status: 204, headers: [], body: false });
      };
    }, cleanups);
    const body = randomBytes(8 * MB);
    const stream = hub.open(requestHead({ method: 'POST', body: true }));
    let sent = 0;
    let blocked = false;
    const pump = () => {
      while (sent < body.length) {
        const chunk = body.subarray(sent, sent + 64 * 1024);
        sent += chunk.length;
        if (!stream.write(chunk)) {
          blocked = true;
          return;
        }
      }
      stream.end();
    };
    stream.onDrain = pump;
    pump();
    await sleep(300);
    expect(blocked).toBe(true);
    expect(sent).toBeLessThanOrEqual(STREAM_WINDOW + 64 * 1024);
    const held = received.reduce((n, c) => n + c.length, 0);
    expect(held).toBeLessThanOrEqual(STREAM_WINDOW + MAX_DATA_FRAME);
    // The reader catches up: everything it holds is passed on, and so is all that follows.
    const done = new Promise<number>((resolve) => {
      stream.onHead = (h) => resolve(h.status);
    });
    const target = reader as TunnelStream;
    target.consumed(held);
    target.onData = (c) => {
      received.push(Buffer.from(c));
      target.consumed(c.length);
    };
    expect(await done).toBe(204);
    expect(createHash('sha256').update(Buffer.concat(received)).digest('hex')).toBe(
      createHash('sha256').update(body).digest('hex'),
    );
  });

  it('a reset by either side is seen by the other with its reason, on that stream only', async () => {
    const seen: string[] = [];
    const { hub } = await tunnelPair((stream, head) => {
      if (head.path === '/refuse') {
        stream.reset('refused', 'not today');
        return;
      }
      if (head.path === '/wait') {
        stream.onReset = (r) => seen.push(`${r.code}:${r.message}`);
        return;
      }
      echoPath(stream, head);
    }, cleanups);
    await expect(exchange(hub, requestHead({ path: '/refuse' }))).rejects.toThrow(/refused not today/);
    const waiting = hub.open(requestHead({ path: '/wait' }));
    const other = exchange(hub, requestHead({ path: '/other', body: true }), Buffer.from('x'));
    await sleep(50);
    waiting.reset('cancel', 'the caller went away');
    expect((await other).body.toString()).toBe('/other');
    await waitFor(() => seen.length > 0, 5_000, 'the reset on the client side');
    expect(seen).toEqual(['cancel:the caller went away']);
    expect(hub.size).toBe(0);
  });

  it('a peer that sends past its credit has that stream reset, and only that one', async () => {
    const { hub, hubWs } = await tunnelPair((stream, head) => {
      // This reader keeps what it gets without passing it on: no credit goes back.
      if (head.path === '/hoard') stream.onData = () => undefined;
      else echoPath(stream, head);
    }, cleanups);
    const stream = hub.open(requestHead({ method: 'POST', path: '/hoard', body: true }));
    let reset = '';
    stream.onReset = (r) => {
      reset = r.message ?? r.code;
    };
    // Frames written straight to the socket, bypassing the sender's own accounting.
    for (let sent = 0; sent <= STREAM_WINDOW + 2 * MAX_DATA_FRAME; sent += MAX_DATA_FRAME)
      hubWs.send(encodeFrame(FrameType.Data, stream.id, Buffer.alloc(MAX_DATA_FRAME)));
    await waitFor(() => reset !== '', 5_000, 'the reset');
    expect(reset).toMatch(/past its credit/);
    expect((await exchange(hub, requestHead({ path: '/after' }))).body.toString()).toBe('/after');
  });

  it('text messages are the control channel: each side gets them in order, never as stream bytes', async () => {
    const pair = await tunnelPair(echoPath, cleanups);
    const request = exchange(
      pair.hub,
      requestHead({ path: '/between', body: true }),
      Buffer.alloc(100_000, 1),
    );
    for (let i = 0; i < 5; i++) {
      pair.hubWs.send(JSON.stringify({ n: i }));
      pair.agentWs.send(JSON.stringify({ m: i }));
    }
    expect((await request).headers).toEqual(['x-bytes', '100000']);
    await waitFor(() => pair.hubTexts.length === 5 && pair.agentTexts.length === 5, 5_000, 'all texts');
    expect(pair.agentTexts).toEqual([0, 1, 2, 3, 4].map((n) => JSON.stringify({ n })));
    expect(pair.hubTexts).toEqual([0, 1, 2, 3, 4].map((m) => JSON.stringify({ m })));
  });

  it('a dropped WebSocket fails every open stream on both sides', async () => {
    const agentSide: string[] = [];
    const pair = await tunnelPair((stream) => {
      stream.onReset = (r) => agentSide.push(r.message ?? r.code);
    }, cleanups);
    const pending = [0, 1, 2].map((i) => exchange(pair.hub, requestHead({ path: `/hang${i}` })));
    await waitFor(() => pair.agent.size === 3, 5_000, 'three streams open');
    pair.agentWs.terminate();
    for (const p of pending) await expect(p).rejects.toThrow(/the tunnel closed/);
    await waitFor(() => agentSide.length === 3, 5_000, 'the client side to fail them');
    expect(pair.hub.size).toBe(0);
    expect(pair.agent.size).toBe(0);
  });

  it('a frame that breaks the protocol closes the tunnel with 1002 and says why', async () => {
    const pair = await tunnelPair(echoPath, cleanups);
    const closed = new Promise<number>((r) => pair.agentWs.once('close', (code) => r(code)));
    // The client agent may not open streams.
    pair.agentWs.send(encodeFrame(FrameType.Open, 7, '{}'));
    expect(await closed).toBe(1002);
    expect(pair.errors.map((e) => e.message)).toEqual(['the peer may not open streams']);
  });
});
