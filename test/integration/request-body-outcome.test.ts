/**
 * A request with a body, answered in full, is a success in the client's own events (the live
 * view and --json): not "failed", not counted in errors. The tour's local services answer
 * without reading the body at all, which is where a report on `close` rather than on the
 * response's end would go wrong. Real server agent, real foreground intercept, real callers
 * (HTTP/1.1 and HTTP/2).
 */
import http from 'node:http';
import http2 from 'node:http2';
import { describe, expect, it } from 'vitest';
import {
  background,
  cleanupsAfterEach,
  clientEnv,
  closeServer,
  listen,
  startServerProcess,
  textService,
  waitFor,
} from '../support/helpers.js';

const TOKEN = 'body-outcome-test-token-9b3f';
const cleanups = cleanupsAfterEach();

interface HttpEvent {
  kind: string;
  path: string;
  status: number;
  error?: string;
  bytesIn: number;
}

/** A POST through the data port, over HTTP/1.1 or HTTP/2 (prior knowledge), its body read in full. */
function post(
  data: string,
  path: string,
  body: Buffer,
  h2: boolean,
): Promise<{ status: number; text: string }> {
  const url = new URL(data);
  const headers = {
    'x-kelsingra-service': 'billing',
    'x-tenant-id': 't1',
    'content-type': 'application/octet-stream',
  };
  if (!h2)
    return new Promise((resolve, reject) => {
      const req = http.request(
        { host: url.hostname, port: url.port, method: 'POST', path, headers, agent: false },
        (res) => {
          let text = '';
          res.setEncoding('utf8').on('data', (c: string) => (text += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  return new Promise((resolve, reject) => {
    const session = http2.connect(data);
    session.on('error', reject);
    const req = session.request({ ':method': 'POST', ':path': path, ...headers });
    let status = 0;
    let text = '';
    req.on('response', (h) => (status = Number(h[':status'])));
    req.setEncoding('utf8').on('data', (c: string) => (text += c));
    req.on('end', () => {
      session.close();
      resolve({ status, text });
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('a request with a body, answered in full', () => {
  it('is a success in the client events however the local service treats the body', async () => {
    const upstream = await textService('upstream', cleanups);
    // As in the README's tour: answers at once and never reads the body.
    const local = await listen((_req, res) => res.end('billing on my laptop\n'));
    cleanups.push(() => closeServer(local));
    const server = await startServerProcess(['--service', `billing=${upstream.url}`, '--token', TOKEN]);
    cleanups.push(() => server.stop());
    const held = background(
      ['intercept', 'billing', '--tenant', 't1', '--port', String(local.port), '--json'],
      clientEnv(server, TOKEN),
      cleanups,
    );
    await waitFor(() => held.stdout().includes('"kind":"intercept"'), 20_000, 'the intercept');

    const cases: [string, Buffer, boolean][] = [
      ['/small', Buffer.from('hello=world'), false],
      ['/medium', Buffer.alloc(40 * 1024, 1), false],
      // Beyond the tunnel's stream window: most of it never reaches a service that stops reading.
      ['/large', Buffer.alloc(5 * 1024 * 1024, 2), false],
      ['/h2-small', Buffer.from('a=b'), true],
      ['/h2-large', Buffer.alloc(5 * 1024 * 1024, 3), true],
    ];
    for (const [path, body, h2] of cases) {
      const r = await post(server.data, path, body, h2);
      expect(r, path).toEqual({ status: 200, text: 'billing on my laptop\n' });
    }
    const events = await waitFor(
      () => {
        const list = held
          .stdout()
          .split('\n')
          .filter((l) => l.includes('"kind":"http"'))
          .map((l) => JSON.parse(l) as HttpEvent);
        return list.length === cases.length ? list : undefined;
      },
      20_000,
      'one event per request',
    );
    for (const [path] of cases) {
      const e = events.find((x) => x.path === path);
      expect(e, `${path}\n${held.describe()}`).toMatchObject({ status: 200 });
      expect(e?.error, path).toBeUndefined();
    }
    // Every stream closed once its caller was done (the unread uploads included): leaving has
    // nothing to wait for (it waits up to 5 s for requests still on their way).
    const t = Date.now();
    held.sub.kill('SIGINT');
    await held.sub;
    expect(Date.now() - t).toBeLessThan(3_000);
    // Nor does anything of those uploads keep the server agent up once it is stopped (an unread
    // upload's body-idle timer held it for 30 s after "stopped").
    const s = Date.now();
    await server.stop();
    expect(Date.now() - s, server.logs().slice(-2000)).toBeLessThan(5_000);
  }, 120_000);
});
