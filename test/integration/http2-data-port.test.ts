/**
 * HTTP/2 on the data port and the control port's gateway, with plain node:http2 clients (as
 * curl --http2-prior-knowledge speaks it) against a real `kelsingra server` process: h2c by
 * preface and h2 by ALPN on the same port as HTTP/1.1, HTTP/2 carried on to the upstream
 * (or HTTP/1.1 to one that speaks nothing else, or when upstreamHttp2 is false), trailers,
 * resets and timeouts each way.
 */

import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import https from 'node:https';
import net, { type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  bodyJson,
  closeServer,
  listen,
  rawRequest,
  type ServerProcess,
  startServerProcess,
  tempDir,
  waitFor,
} from '../support/helpers.js';
import { makePki, type TestPki } from '../support/tls-fixtures.js';

const TOKEN = 'http2-data-port-token-1';

interface H2Answer {
  status: number;
  headers: http2.IncomingHttpHeaders;
  body: Buffer;
  trailers: http2.IncomingHttpHeaders;
}

/** One HTTP/2 request on a new connection (h2c, or h2 over TLS trusting `ca`). */
async function h2request(
  origin: string,
  headers: http2.OutgoingHttpHeaders,
  opts: { body?: string; trailers?: Record<string, string>; ca?: Buffer } = {},
): Promise<H2Answer> {
  const session = http2.connect(origin, opts.ca ? { ca: opts.ca } : {});
  try {
    return await new Promise<H2Answer>((resolve, reject) => {
      session.on('error', reject);
      const hasBody = opts.body !== undefined;
      const stream = session.request(headers, { endStream: !hasBody, waitForTrailers: !!opts.trailers });
      if (opts.trailers) stream.once('wantTrailers', () => stream.sendTrailers(opts.trailers ?? {}));
      if (hasBody) stream.end(opts.body);
      let status = 0;
      let got: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      stream.on('response', (h) => {
        status = Number(h[':status']);
        got = h;
      });
      stream.on('trailers', (t) => {
        trailers = t;
      });
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('error', reject);
      stream.on('end', () => resolve({ status, headers: got, body: Buffer.concat(chunks), trailers }));
    });
  } finally {
    session.close();
  }
}

/** What an upstream saw of one request. */
interface Seen {
  version: string;
  path: string;
  headers: Record<string, unknown>;
  body: string;
  trailers: Record<string, unknown>;
}

/**
 * An h2c upstream: /echo answers what it saw with a trailer; /hang never answers (and counts
 * the streams cancelled under it); /reset resets its stream with ENHANCE_YOUR_CALM after the head.
 */
async function h2Upstream(tls?: TestPki) {
  const seen: Seen[] = [];
  const cancelled: string[] = [];
  const handler = (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => {
    if (req.url === '/hang') {
      req.stream.once('close', () => {
        if (!res.writableEnded) cancelled.push(req.url);
      });
      return;
    }
    if (req.url === '/reset') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('partial');
      setTimeout(() => res.stream.close(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM), 50);
      return;
    }
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const s: Seen = {
        version: req.httpVersion,
        path: req.url,
        headers: { ...req.headers },
        body: Buffer.concat(chunks).toString(),
        trailers: { ...req.trailers },
      };
      seen.push(s);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.addTrailers({ 'x-upstream-trailer': 'done' });
      res.end(JSON.stringify(s));
    });
  };
  // Over TLS it offers h2 only, as gRPC servers do.
  const server = tls
    ? http2.createSecureServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, handler)
    : http2.createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return { server, seen, cancelled, url: `${tls ? 'https' : 'http'}://127.0.0.1:${port}` };
}

/** An HTTP/1-only upstream that also counts what it could not parse (an HTTP/2 preface). */
async function h1Upstream() {
  const versions: string[] = [];
  let clientErrors = 0;
  const up = await listen((req, res) => {
    versions.push(req.httpVersion);
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`http/${req.httpVersion}`);
    });
  });
  up.server.on('clientError', (_err, socket) => {
    clientErrors++;
    socket.destroy();
  });
  return { ...up, versions, clientErrors: () => clientErrors };
}

describe('HTTP/2 on the data port (h2c)', () => {
  let server: ServerProcess;
  let h2up: Awaited<ReturnType<typeof h2Upstream>>;
  let h1up: Awaited<ReturnType<typeof h1Upstream>>;
  let forced: Awaited<ReturnType<typeof h1Upstream>>;

  beforeAll(async () => {
    h2up = await h2Upstream();
    h1up = await h1Upstream();
    forced = await h1Upstream();
    const config = join(tempDir('kelsingra-h2-config-'), 'kelsingra.yaml');
    writeFileSync(
      config,
      [
        'services:',
        '  forced:',
        `    upstream: ${forced.url}`,
        '    upstreamHttp2: false',
        '    healthCheck: false',
        '',
      ].join('\n'),
    );
    server = await startServerProcess([
      '--config',
      config,
      '--service',
      `h2svc=${h2up.url}`,
      '--service',
      `h1svc=${h1up.url}`,
      '--token',
      TOKEN,
      '--upstream-timeout',
      '2',
    ]);
  }, 60_000);

  afterAll(async () => {
    await server?.stop();
    await new Promise((r) => h2up?.server.close(r));
    await closeServer(h1up);
    await closeServer(forced);
  });

  it('answers a prior-knowledge h2c request and carries it on over HTTP/2, body and trailers both ways', async () => {
    const res = await h2request(
      server.data,
      { ':method': 'POST', ':path': '/echo?x=1', ':authority': 'h2svc', 'x-tenant-id': 't1' },
      { body: 'hello over h2', trailers: { 'x-caller-trailer': 'sent' } },
    );
    expect(res.status).toBe(200);
    const seen = bodyJson(res) as unknown as Seen;
    expect(seen.version).toBe('2.0');
    expect(seen.path).toBe('/echo?x=1');
    expect(seen.body).toBe('hello over h2');
    expect(seen.headers['x-tenant-id']).toBe('t1');
    expect(seen.headers[':authority']).toBe('h2svc');
    expect(seen.headers.via).toBe('1.1 kelsingra');
    expect(seen.trailers['x-caller-trailer']).toBe('sent');
    expect(res.trailers['x-upstream-trailer']).toBe('done');
    expect(res.headers['x-request-id']).toBeTruthy();
  });

  it('still serves HTTP/1.1 on the same port', async () => {
    const res = await rawRequest(`${server.data}/plain`, { headers: { host: 'h1svc' } });
    expect(res.status).toBe(200);
    expect(res.body.toString()).toBe('http/1.1');
  });

  it('tells HTTP/1.1 from the HTTP/2 preface however the first bytes are split ("P" of POST, then the rest)', async () => {
    const socket = net.connect(server.proxyPort, '127.0.0.1');
    await once(socket, 'connect');
    let answer = '';
    socket.setEncoding('latin1');
    socket.on('data', (c: string) => {
      answer += c;
    });
    socket.write('P');
    await new Promise((r) => setTimeout(r, 100));
    socket.write('OST /split HTTP/1.1\r\nHost: h1svc\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi');
    await once(socket, 'end');
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(answer).toContain('http/1.1');
  });

  it('speaks HTTP/1.1 to an upstream that answers the h2c preface with anything but HTTP/2', async () => {
    const res = await h2request(server.data, { ':path': '/x', ':authority': 'h1svc' });
    expect(res.status).toBe(200);
    expect(res.body.toString()).toBe('http/1.1');
    // Remembered: the next call goes straight over HTTP/1.1.
    const errorsBefore = h1up.clientErrors();
    await h2request(server.data, { ':path': '/y', ':authority': 'h1svc' });
    expect(h1up.clientErrors()).toBe(errorsBefore);
  });

  it('upstreamHttp2: false sends an HTTP/2 call on over HTTP/1.1 without trying HTTP/2', async () => {
    const res = await h2request(server.data, { ':path': '/f', ':authority': 'forced' });
    expect(res.status).toBe(200);
    expect(res.body.toString()).toBe('http/1.1');
    expect(forced.clientErrors()).toBe(0);
  });

  it("cancels the upstream's stream when the caller resets its own", async () => {
    const session = http2.connect(server.data);
    try {
      const stream = session.request({ ':path': '/hang', ':authority': 'h2svc' });
      stream.on('error', () => undefined);
      const before = h2up.cancelled.length;
      // Long enough for the call to reach the upstream, well short of the upstream timeout.
      await new Promise((r) => setTimeout(r, 300));
      stream.close(http2.constants.NGHTTP2_CANCEL);
      await waitFor(() => h2up.cancelled.length > before);
    } finally {
      session.close();
    }
  });

  it("resets the caller's stream with the upstream's code when the upstream resets mid-response", async () => {
    const session = http2.connect(server.data);
    try {
      const outcome = await new Promise<{ status: number; rstCode: number | undefined; body: string }>(
        (resolve) => {
          const stream = session.request({ ':path': '/reset', ':authority': 'h2svc' });
          let status = 0;
          let body = '';
          stream.on('response', (h) => {
            status = Number(h[':status']);
          });
          stream.on('data', (c: Buffer) => {
            body += c;
          });
          stream.on('error', () => undefined);
          stream.on('close', () => resolve({ status, rstCode: stream.rstCode, body }));
        },
      );
      expect(outcome.status).toBe(200);
      expect(outcome.body).toBe('partial');
      expect(outcome.rstCode).toBe(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
    } finally {
      session.close();
    }
  });

  it('answers 504 in time when the upstream sends no headers within upstreamTimeout', async () => {
    const t0 = Date.now();
    const res = await h2request(server.data, { ':path': '/hang', ':authority': 'h2svc' });
    expect(res.status).toBe(504);
    expect(res.headers['x-kelsingra-error']).toBe('upstream-timeout');
    expect(String(bodyJson(res).error)).toMatch(/^Kelsingra: /);
    expect(Date.now() - t0).toBeLessThan(6_000);
  });

  it("serves HTTP/2 on the control port's gateway", async () => {
    const res = await h2request(
      server.control,
      {
        ':method': 'POST',
        ':path': '/v1/gateway/echo',
        ':authority': `127.0.0.1:${server.controlPort}`,
        'x-kelsingra-token': TOKEN,
        'x-kelsingra-host': 'h2svc',
        'x-tenant-id': 't1',
      },
      { body: 'out' },
    );
    expect(res.status).toBe(200);
    const seen = bodyJson(res) as unknown as Seen;
    expect(seen.version).toBe('2.0');
    expect(seen.path).toBe('/echo');
    expect(seen.body).toBe('out');
    expect(seen.headers['x-kelsingra-token']).toBeUndefined();
  });
});

describe('HTTP/2 on a TLS data port (ALPN)', () => {
  let pki: TestPki;
  let server: ServerProcess;
  let up: Awaited<ReturnType<typeof h2Upstream>>;
  let secureUp: Awaited<ReturnType<typeof h2Upstream>>;
  let h1up: Awaited<ReturnType<typeof h1Upstream>>;
  let secureH1: https.Server;

  beforeAll(async () => {
    pki = makePki();
    up = await h2Upstream();
    secureUp = await h2Upstream(pki);
    h1up = await h1Upstream();
    secureH1 = https.createServer(
      { cert: readFileSync(pki.cert), key: readFileSync(pki.key) },
      (req, res) => {
        req.resume();
        res.end(`https http/${req.httpVersion}`);
      },
    );
    await new Promise<void>((r) => secureH1.listen(0, '127.0.0.1', r));
    server = await startServerProcess([
      '--service',
      `h2svc=${up.url}`,
      '--service',
      `h1svc=${h1up.url}`,
      '--service',
      `secure=${secureUp.url}`,
      '--service',
      `secureh1=https://127.0.0.1:${(secureH1.address() as AddressInfo).port}`,
      '--token',
      TOKEN,
      '--tls-cert',
      pki.cert,
      '--tls-key',
      pki.key,
      '--tls-ca',
      pki.ca,
    ]);
  }, 60_000);

  afterAll(async () => {
    await server?.stop();
    await new Promise((r) => up?.server.close(r));
    await new Promise((r) => secureUp?.server.close(r));
    await new Promise((r) => secureH1?.close(r));
    await closeServer(h1up);
  });

  it('speaks h2 to an https upstream by ALPN, and HTTP/1.1 to one that picks it', async () => {
    const res = await h2request(
      server.data.replace('http:', 'https:'),
      { ':path': '/echo', ':authority': 'secure' },
      {
        ca: readFileSync(pki.ca),
      },
    );
    expect(res.status).toBe(200);
    expect((bodyJson(res) as unknown as Seen).version).toBe('2.0');
    expect(res.trailers['x-upstream-trailer']).toBe('done');
    const h1 = await h2request(
      server.data.replace('http:', 'https:'),
      { ':path': '/', ':authority': 'localhost', 'x-kelsingra-service': 'secureh1' },
      {
        ca: readFileSync(pki.ca),
      },
    );
    expect(h1.body.toString(), h1.body.toString()).toBe('https http/1.1');
    // The health checks reach the h2-only upstream too (over ALPN): it is healthy, not taken out.
    await waitFor(async () => {
      const status = await rawRequest(`https://127.0.0.1:${server.controlPort}/status`, {
        headers: { authorization: `Bearer ${TOKEN}` },
        ca: readFileSync(pki.ca),
      });
      const rows = bodyJson(status).upstreams as { service: string; state: string }[];
      return rows.find((r) => r.service === 'secure')?.state === 'healthy';
    });
  });

  it('negotiates h2 by ALPN and still serves HTTP/1.1 over TLS', async () => {
    const ca = readFileSync(pki.ca);
    const origin = `https://127.0.0.1:${server.proxyPort}`;
    const res = await h2request(origin, { ':path': '/echo', ':authority': 'h2svc' }, { ca });
    expect(res.status).toBe(200);
    expect((bodyJson(res) as unknown as Seen).version).toBe('2.0');
    expect(res.trailers['x-upstream-trailer']).toBe('done');

    const h1 = await rawRequest(`${origin}/plain`, { headers: { 'x-kelsingra-service': 'h1svc' }, ca });
    expect(h1.status).toBe(200);
    expect(h1.body.toString()).toBe('http/1.1');
  });
});
