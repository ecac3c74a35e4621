/**
 * HTTP/1.1 trailers through the tunnel, both ways: a chunked response's trailers reach the
 * caller, and a chunked upload's trailers reach the developer's local service.
 */
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Cleanup,
  clientEnv,
  closeServer,
  interceptDetached,
  listen,
  type ServerProcess,
  startServerProcess,
} from '../support/helpers.js';

const TOKEN = 'trailers-test-token-1';

describe('trailers through the tunnel', () => {
  let server: ServerProcess;
  const cleanups: Cleanup[] = [];
  const uploads: { body: string; trailers: Record<string, string | undefined> }[] = [];

  beforeAll(async () => {
    const local = await listen((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        uploads.push({ body: Buffer.concat(chunks).toString(), trailers: { ...req.trailers } });
        res.writeHead(200, { 'content-type': 'text/plain', trailer: 'x-checksum' });
        res.write('part one, ');
        res.write('part two');
        res.addTrailers({ 'x-checksum': 'sha256=abc', 'x-served': 'local' });
        res.end();
      });
    });
    cleanups.push(() => closeServer(local));
    server = await startServerProcess(['--service', 'billing=http://127.0.0.1:1', '--token', TOKEN]);
    await interceptDetached(clientEnv(server, TOKEN), 'billing', 't1', local.port, cleanups);
  });
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c();
    await server?.stop();
  });

  /** A chunked request through the data port, with trailers of its own when given. */
  function call(trailers?: Record<string, string>) {
    return new Promise<{ status: number; body: string; trailers: Record<string, string | undefined> }>(
      (resolve, reject) => {
        const url = new URL(server.data);
        const req = http.request({
          host: url.hostname,
          port: url.port,
          method: 'POST',
          path: '/upload',
          headers: {
            'x-kelsingra-service': 'billing',
            'x-tenant-id': 't1',
            'transfer-encoding': 'chunked',
            ...(trailers ? { trailer: Object.keys(trailers).join(', ') } : {}),
          },
        });
        req.on('error', reject);
        req.on('response', (res) => {
          let body = '';
          res.on('data', (c: Buffer) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body, trailers: { ...res.trailers } }));
        });
        req.write('hello ');
        req.write('world');
        if (trailers) req.addTrailers(trailers);
        req.end();
      },
    );
  }

  it('a chunked response’s trailers reach the caller', async () => {
    const r = await call();
    expect(r).toMatchObject({ status: 200, body: 'part one, part two' });
    expect(r.trailers).toEqual({ 'x-checksum': 'sha256=abc', 'x-served': 'local' });
    expect(uploads.at(-1)?.body).toBe('hello world');
  });

  it('a chunked upload’s trailers reach the local service', async () => {
    const r = await call({ 'x-upload-digest': 'md5=xyz' });
    expect(r.status).toBe(200);
    expect(uploads.at(-1)).toEqual({ body: 'hello world', trailers: { 'x-upload-digest': 'md5=xyz' } });
    expect(r.trailers['x-checksum']).toBe('sha256=abc');
  });
});
