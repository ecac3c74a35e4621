/**
 * Property-based tests (fast-check) of garbage on the server agent's ports: random bytes, half a
 * request, a huge header, broken request lines. Each bad connection gets a 400 or 431 or is
 * closed; the server stays up, and good requests sent at the same time still succeed.
 */
import net from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeServer, listen, type ServerProcess, startServerProcess, viaProxy } from '../support/helpers.js';

const TOKEN = 'properties-ports-token-1';

/**
 * What a raw connection got back: all bytes until the server closed it, or until `timeoutMs`
 * passed (`idleMs` after the last bytes received, when given). With `halfClose`, the client
 * sends its end after the data, so a request cut short is cut short for good.
 */
function rawExchange(
  port: number,
  data: Uint8Array,
  {
    halfClose = true,
    timeoutMs = 5_000,
    idleMs,
  }: { halfClose?: boolean; timeoutMs?: number; idleMs?: number } = {},
): Promise<{ response: string; closed: boolean }> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const done = (closed: boolean) => {
      clearTimeout(timer);
      clearTimeout(idle);
      if (!closed) socket.destroy();
      resolve({ response: Buffer.concat(chunks).toString('latin1'), closed });
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    let idle: NodeJS.Timeout | undefined;
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      if (idleMs !== undefined) {
        clearTimeout(idle);
        idle = setTimeout(() => done(false), idleMs);
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => done(true));
    socket.on('connect', () => (halfClose ? socket.end(data) : socket.write(data)));
  });
}

/** The status codes of every response in `text` (pipelined ones too). */
function statuses(text: string): number[] {
  return [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));
}

const REQUEST =
  'POST /orders/1?x=1 HTTP/1.1\r\nHost: billing.dev.example.com\r\nX-Tenant-ID: t1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}';
const HEAD_END = REQUEST.indexOf('\r\n\r\n');

/** Bytes that are no complete HTTP request, each with the statuses it may get. */
const garbageArb: fc.Arbitrary<{ what: string; data: Uint8Array; allowed: number[] }> = fc.oneof(
  fc
    .uint8Array({ minLength: 1, maxLength: 4096 })
    .map((data) => ({ what: 'random bytes', data, allowed: [400] })),
  // A request cut anywhere before the blank line that ends its head.
  fc.integer({ min: 1, max: HEAD_END + 1 }).map((cut) => ({
    what: `half a request (${cut} bytes)`,
    data: Buffer.from(REQUEST.slice(0, cut)),
    allowed: [400],
  })),
  // One header larger than either port accepts (16 KiB control, 32 KiB data).
  fc.integer({ min: 33 * 1024, max: 256 * 1024 }).map((size) => ({
    what: `a ${size}-byte header`,
    data: Buffer.from(`GET / HTTP/1.1\r\nHost: billing\r\nX-Big: ${'a'.repeat(size)}\r\n\r\n`),
    allowed: [431, 400],
  })),
  // Request lines and header lines broken in the ways parsers trip on.
  fc
    .tuple(
      fc.constantFrom('GET', 'G\u0000T', 'GET GET', '', 'P0ST', '\u00ff\u00fe'),
      fc.constantFrom('/', '/a b', '/\u0001', '', '/%zz', 'http://[::1'),
      fc.constantFrom('HTTP/1.1', 'HTTP/9.9', 'HTTP/1', 'http/1.1', 'HTTP/1.1 extra', ''),
      fc.constantFrom(
        'Host: billing',
        'Host billing',
        ': no-name',
        'Bad Header: x',
        'Content-Length: -1',
        'Content-Length: 1\r\nContent-Length: 2',
        'Transfer-Encoding: chunked\r\nContent-Length: 3',
        'X-A: \u0000',
        'X-A:\r\n folded',
      ),
    )
    .filter(([m, p, v, h]) => !(m === 'GET' && p === '/' && v === 'HTTP/1.1' && h === 'Host: billing'))
    .map(([method, path, version, header]) => ({
      what: 'a broken request line or header',
      data: Buffer.from(`${method} ${path} ${version}\r\n${header}\r\n\r\n`, 'latin1'),
      // Some of these parse as a request after all (an unknown method, an odd path), and get an
      // answer about it; none may get a 2xx or a 5xx.
      allowed: [400, 401, 404, 405, 431, 501],
    })),
);

describe('garbage on the ports', () => {
  let server: ServerProcess;
  let upstream: Awaited<ReturnType<typeof listen>>;

  beforeAll(async () => {
    upstream = await listen((req, res) => {
      req.resume();
      res.end(`upstream ${req.url}`);
    });
    server = await startServerProcess(['--service', `billing=${upstream.url}`, '--token', TOKEN]);
  });
  afterAll(async () => {
    await server?.stop();
    await closeServer(upstream);
  });

  /** Good requests on both ports, sent while the garbage is in flight. */
  async function goodRequests(tag: string): Promise<void> {
    const [health, status, data] = await Promise.all([
      fetch(`${server.control}/healthz`),
      fetch(`${server.control}/status`, { headers: { authorization: `Bearer ${TOKEN}` } }),
      viaProxy(server, 'billing', 't1', `/good-${tag}`),
    ]);
    expect(health.status).toBe(200);
    expect(status.status).toBe(200);
    expect(await data.text()).toBe(`upstream /good-${tag}`);
    await Promise.all([health.arrayBuffer(), status.arrayBuffer()]);
  }

  let n = 0;
  for (const port of ['control', 'data'] as const) {
    it(`${port} port: each bad connection gets a 4xx or is closed, and good requests go on`, async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(garbageArb, { minLength: 1, maxLength: 3 }), async (garbage) => {
          const target = port === 'control' ? server.controlPort : server.proxyPort;
          const tag = String(n++);
          const [results] = await Promise.all([
            Promise.all(garbage.map((g) => rawExchange(target, g.data))),
            goodRequests(tag),
          ]);
          results.forEach(({ response, closed }, i) => {
            const g = garbage[i] as (typeof garbage)[number];
            expect(closed, `${g.what}: connection left open`).toBe(true);
            const got = statuses(response);
            if (response !== '')
              expect(got.length, `${g.what}: not HTTP: ${response.slice(0, 80)}`).toBeGreaterThan(0);
            for (const status of got) expect(g.allowed, `${g.what}: answered ${status}`).toContain(status);
            // The data port's own answers say they are Kelsingra's, and why.
            if (port === 'data' && (got.includes(400) || got.includes(431)))
              expect(response.toLowerCase()).toContain('x-kelsingra-error:');
          });
          expect(server.child.exitCode).toBeNull();
        }),
        { numRuns: 25, timeout: 20_000 },
      );
      await goodRequests(`after-${port}`);
    });
  }

  it('a request followed by garbage on the same connection: only that connection is refused', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('control', 'data'),
        fc.oneof(
          fc.uint8Array({ minLength: 1, maxLength: 512 }),
          fc
            .constantFrom('\n', '\r\n', 'G', 'GET', '\u0000', 'GET / HTTP/1.1\r\nBad Header\r\n\r\n')
            .map((t) => Buffer.from(t)),
        ),
        async (port, junk) => {
          const [target, head] =
            port === 'control'
              ? [server.controlPort, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n']
              : [server.proxyPort, 'GET /piped HTTP/1.1\r\nHost: billing\r\nX-Tenant-ID: t1\r\n\r\n'];
          // No half-close here: Node ends a half-closed connection without answering requests
          // still in progress, and the point is what the junk does, not what the client's end does.
          const [{ response, closed }] = await Promise.all([
            rawExchange(target, Buffer.concat([Buffer.from(head), junk]), { halfClose: false, idleMs: 300 }),
            goodRequests(`piped-${n++}`),
          ]);
          const got = statuses(response);
          expect(got.length, `no answer: ${JSON.stringify(response)}`).toBeGreaterThan(0);
          // /healthz answers at once, before the junk is parsed. A request that waits on its
          // upstream loses its answer to the 400 for the junk behind it, as with Node's own
          // handler: the connection is the offender, and it is closed.
          if (port === 'control') expect(got[0]).toBe(200);
          else expect([200, 400]).toContain(got[0]);
          for (const status of got.slice(1)) expect([400, 431]).toContain(status);
          // Refused junk closes the connection; junk that may yet become a request (line breaks,
          // the start of a method) leaves it open, waiting, as keep-alive does.
          if (got.includes(400) || got.includes(431)) expect(closed).toBe(true);
          expect(server.child.exitCode).toBeNull();
        },
      ),
      { numRuns: 20, timeout: 20_000 },
    );
  });
});
