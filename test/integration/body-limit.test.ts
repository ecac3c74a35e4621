/**
 * The data port's maxBodyBytes: a body announced too large is refused with 413 before it is
 * sent or read; one that streams past the limit is cut (the upstream or the developer's local
 * service sees an aborted upload, never a short body that looks whole) and the caller gets 413.
 * The control port's own limit on API bodies answers 413 cleanly too.
 */
import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  bodyJson,
  type Cleanup,
  clientEnv,
  closeServer,
  interceptDetached,
  killPid,
  listen,
  rawRequest,
  type ServerProcess,
  startServerProcess,
  type UploadWatch,
  watchUpload,
} from '../support/helpers.js';

const TOKEN = 'body-limit-token-1';
const LIMIT = 64 * 1024;

/**
 * A chunked POST of `total` bytes in 16 KiB chunks; what came back (or how the connection
 * ended). With `started`, the rest waits until the first chunk is where it resolves.
 */
function streamUpload(
  url: string,
  headers: http.OutgoingHttpHeaders,
  total: number,
  started?: () => Promise<unknown>,
) {
  return new Promise<{ status: number; body: string } | { error: string }>((resolve) => {
    const req = http.request(url, {
      method: 'POST',
      headers: { ...headers, 'transfer-encoding': 'chunked' },
      agent: false,
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
      res.on('error', (err) => resolve({ error: String(err) }));
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? String(err) }));
    let sent = 0;
    const chunk = Buffer.alloc(16 * 1024, 7);
    const pump = () => {
      if (req.destroyed) return;
      if (sent >= total) {
        req.end();
        return;
      }
      sent += chunk.length;
      req.write(chunk);
      if (sent === chunk.length && started) started().then(pump, pump);
      else setTimeout(pump, 5);
    };
    pump();
  });
}

describe('the data port limits request bodies (maxBodyBytes)', () => {
  const cleanups: Cleanup[] = [];
  let server: ServerProcess;
  let env: Record<string, string>;
  const upstreamWatch: UploadWatch = { bytes: 0, ended: false, aborted: false };
  const localWatch: UploadWatch = { bytes: 0, ended: false, aborted: false };
  let upstreamHits = 0;

  beforeAll(async () => {
    const upstream = await listen((req, res) => {
      upstreamHits++;
      Object.assign(upstreamWatch, { bytes: 0, ended: false, aborted: false });
      watchUpload(req, res, upstreamWatch);
    });
    const local = await listen((req, res) => {
      Object.assign(localWatch, { bytes: 0, ended: false, aborted: false });
      watchUpload(req, res, localWatch);
    });
    cleanups.push(
      () => closeServer(upstream),
      () => closeServer(local),
    );
    server = await startServerProcess([
      '--service',
      `billing=${upstream.url}`,
      '--token',
      TOKEN,
      '--max-body-bytes',
      String(LIMIT),
    ]);
    cleanups.push(() => server.stop());
    env = clientEnv(server, TOKEN);
    await interceptDetached(env, 'billing', 'dev', local.port, (pid) => cleanups.push(() => killPid(pid)));
  });
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  const headers = (tenant: string) => ({ 'x-kelsingra-service': 'billing', 'x-tenant-id': tenant });

  it('a body announced larger than the limit gets 413 from Kelsingra, and the upstream never sees the request', async () => {
    const before = upstreamHits;
    const res = await rawRequest(`${server.data}/upload`, {
      method: 'POST',
      headers: headers('t1'),
      body: Buffer.alloc(LIMIT + 1, 1),
    });
    expect(res.status).toBe(413);
    expect(res.headers['x-kelsingra-error']).toBe('body-too-large');
    expect(res.headers.connection).toBe('close');
    expect(bodyJson(res)).toMatchObject({ code: 'body-too-large', limit: LIMIT });
    expect(String(bodyJson(res).error)).toMatch(/^Kelsingra: the request body \(65537 bytes\) is larger/);
    expect(upstreamHits).toBe(before);
  });

  it('with Expect: 100-continue, a body announced too large is refused before the client sends it', async () => {
    const answer = await new Promise<string>((resolve) => {
      const socket = net.connect(server.proxyPort, '127.0.0.1');
      let text = '';
      socket.on('data', (c: Buffer) => {
        text += c.toString('latin1');
      });
      socket.on('close', () => resolve(text));
      socket.on('error', () => resolve(text));
      socket.write(
        'POST /big HTTP/1.1\r\nHost: billing\r\nX-Tenant-ID: t1\r\nContent-Length: 1000000000\r\nExpect: 100-continue\r\n\r\n',
      );
    });
    expect(answer).toMatch(/^HTTP\/1\.1 413 /);
    expect(answer).not.toContain('100 Continue');
    expect(answer).toContain('"code":"body-too-large"');
  });

  it('an Expect: 100-continue body within the limit is continued and passed on', async () => {
    const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.request(`${server.data}/small`, {
        method: 'POST',
        headers: { ...headers('t1'), expect: '100-continue', 'content-length': 1000 },
        agent: false,
      });
      req.on('continue', () => req.end(Buffer.alloc(1000, 2)));
      req.on('response', (r) => {
        let body = '';
        r.on('data', (c: Buffer) => {
          body += c.toString();
        });
        r.on('end', () => resolve({ status: r.statusCode ?? 0, body }));
      });
      req.on('error', reject);
    });
    expect(res).toEqual({ status: 200, body: 'got it all' });
    expect(upstreamWatch).toMatchObject({ bytes: 1000, ended: true });
  });

  for (const [where, tenant, watch] of [
    ['the upstream', 't1', upstreamWatch],
    ["the developer's local service, through the tunnel", 'dev', localWatch],
  ] as const) {
    it(`a chunked body that streams past the limit: ${where} sees the upload aborted, the caller gets 413`, async () => {
      Object.assign(watch, { bytes: 0, ended: false, aborted: false });
      // Past the limit only once the service has the request: a cut before that would leave it
      // nothing to see (which is fine, but proves nothing).
      const result = await streamUpload(`${server.data}/stream`, headers(tenant), 8 * LIMIT, () =>
        expect.poll(() => watch.bytes, { timeout: 5_000 }).toBeGreaterThan(0),
      );
      // The answer comes while the client is still sending; a client that does not read it
      // before the connection closes may see a reset instead, so both are accepted as "refused".
      if ('status' in result) {
        expect(result.status).toBe(413);
        expect(JSON.parse(result.body)).toMatchObject({ code: 'body-too-large', limit: LIMIT });
      } else expect(result.error).toMatch(/ECONNRESET|EPIPE|socket hang up/);
      await expect.poll(() => watch.aborted || watch.ended, { timeout: 10_000 }).toBe(true);
      expect(watch.ended).toBe(false);
      expect(watch.aborted).toBe(true);
      expect(watch.bytes).toBeLessThanOrEqual(LIMIT);
    });

    it(`a chunked body within the limit reaches ${where} whole`, async () => {
      const result = await streamUpload(`${server.data}/fits`, headers(tenant), LIMIT - 16 * 1024);
      expect(result).toEqual({ status: 200, body: 'got it all' });
      expect(watch).toMatchObject({ bytes: LIMIT - 16 * 1024, ended: true, aborted: false });
    });
  }
});

describe('the control port limits API bodies', () => {
  let server: ServerProcess;
  beforeAll(async () => {
    server = await startServerProcess(['--service', 'billing=http://127.0.0.1:1', '--token', TOKEN]);
  });
  afterAll(() => server?.stop());

  const api = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };

  it('answers an announced oversized body with 413 body-too-large', async () => {
    const res = await rawRequest(`${server.control}/v1/intercepts`, {
      method: 'POST',
      headers: api,
      body: 'x'.repeat(200 * 1024),
    });
    expect(res.status).toBe(413);
    expect(bodyJson(res)).toMatchObject({ code: 'body-too-large' });
  });

  it('answers a streamed oversized body with 413, read to its end rather than reset', async () => {
    const result = await streamUpload(`${server.control}/v1/intercepts`, api, 1024 * 1024);
    expect(result).toMatchObject({ status: 413 });
    expect(JSON.parse((result as { body: string }).body)).toMatchObject({ code: 'body-too-large' });
  });
});
