/**
 * HTTP/1.1 trailers on pass-through, end to end with a real `kelsingra server` process: a
 * chunked request's trailers reach the upstream, a chunked response's reach the caller.
 */
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeServer, listen, type ServerProcess, startServerProcess } from '../support/helpers.js';

const TOKEN = 'trailers-test-token-1';

interface Answer {
  status: number;
  body: string;
  headers: http.IncomingHttpHeaders;
  trailers: NodeJS.Dict<string>;
}

/** A chunked HTTP/1.1 request, with trailers after its body when given. */
function chunkedRequest(
  url: string,
  host: string,
  body: string,
  trailers?: Record<string, string>,
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      method: 'POST',
      agent: false,
      headers: {
        host,
        'transfer-encoding': 'chunked',
        ...(trailers && { trailer: Object.keys(trailers).join(', ') }),
      },
    });
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        text += c;
      });
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, body: text, headers: res.headers, trailers: res.trailers }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.write(body.slice(0, 3));
    req.write(body.slice(3));
    if (trailers) req.addTrailers(trailers);
    req.end();
  });
}

describe('HTTP/1.1 trailers on pass-through', () => {
  let server: ServerProcess;
  let upstream: Awaited<ReturnType<typeof listen>>;
  const seen: { body: string; trailers: NodeJS.Dict<string> }[] = [];

  beforeAll(async () => {
    // Answers chunked with a trailer that sums up what it received.
    upstream = await listen((req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (c: string) => {
        body += c;
      });
      req.on('end', () => {
        seen.push({ body, trailers: { ...req.trailers } });
        res.writeHead(200, { 'content-type': 'text/plain', trailer: 'x-upstream-sum' });
        res.write('got ');
        res.addTrailers({ 'x-upstream-sum': `${body.length} bytes` });
        res.end(body);
      });
    });
    server = await startServerProcess(['--service', `billing=${upstream.url}`, '--token', TOKEN]);
  }, 60_000);

  afterAll(async () => {
    await server?.stop();
    await closeServer(upstream);
  });

  it('passes a chunked request’s trailers to the upstream and the response’s back to the caller', async () => {
    const res = await chunkedRequest(`${server.data}/upload`, 'billing', 'payload', {
      'x-checksum': 'c0ffee',
    });
    expect(res.status).toBe(200);
    expect(res.body).toBe('got payload');
    expect(seen.at(-1)).toEqual({ body: 'payload', trailers: { 'x-checksum': 'c0ffee' } });
    expect(res.headers.trailer).toBe('x-upstream-sum');
    expect(res.trailers['x-upstream-sum']).toBe('7 bytes');
  });

  it('passes response trailers on for a request without trailers of its own', async () => {
    const res = await chunkedRequest(`${server.data}/plain`, 'billing', 'abc');
    expect(res.body).toBe('got abc');
    expect(seen.at(-1)?.trailers).toEqual({});
    expect(res.trailers['x-upstream-sum']).toBe('3 bytes');
  });
});
