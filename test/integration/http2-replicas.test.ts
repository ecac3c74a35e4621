/**
 * HTTP/2 between two replicas on PostgreSQL: a call that reaches a replica which does not hold
 * the tenant's tunnel is relayed to the one that does, over HTTP/2 when it arrived over HTTP/2.
 * Base tenants' gRPC calls pass through from either replica. (gRPC through the tunnel itself is
 * covered with the tunnel's own tests.)
 */
import http2 from 'node:http2';
import { describe, expect, it } from 'vitest';
import { echoClient, startEchoServer } from '../support/grpc-fixtures.js';
import {
  cleanupsAfterEach,
  clientEnv,
  interceptDetached,
  type ServerProcess,
  startServerProcess,
  textService,
} from '../support/helpers.js';
import { freshDatabase } from '../support/postgres.js';

const TOKEN = 'grpc-replica-token-1';
const cleanups = cleanupsAfterEach();

/** One HTTP/2 POST with a body, on its own connection: status and body. */
async function h2post(origin: string, headers: http2.OutgoingHttpHeaders, body: string) {
  const session = http2.connect(origin);
  try {
    return await new Promise<{ status: number; body: string }>((resolve, reject) => {
      session.on('error', reject);
      const stream = session.request({
        ':method': 'POST',
        'content-length': Buffer.byteLength(body),
        ...headers,
      });
      stream.end(body);
      let status = 0;
      let text = '';
      stream.on('response', (h) => {
        status = Number(h[':status']);
      });
      stream.setEncoding('utf8');
      stream.on('data', (c: string) => {
        text += c;
      });
      stream.on('error', reject);
      stream.on('end', () => resolve({ status, body: text }));
    });
  } finally {
    session.close();
  }
}

describe('HTTP/2 across replicas', () => {
  it('relays an HTTP/2 call to the replica holding the tunnel over HTTP/2; gRPC passes through from either', async () => {
    const echo = await startEchoServer('base');
    cleanups.push(() => echo.close());
    const local = await textService('local', cleanups);
    const db = await freshDatabase(cleanups);
    const a = await startServerProcess([
      '--service',
      `echo=${echo.url}`,
      '--token',
      TOKEN,
      '--database-url',
      db,
    ]);
    cleanups.push(() => a.stop());
    // Node's own HTTP/2 debug lines say when b's data port takes an HTTP/2 connection: only
    // a's relay opens one there.
    const b: ServerProcess = await startServerProcess(
      ['--service', `echo=${echo.url}`, '--token', TOKEN, '--database-url', db],
      { NODE_DEBUG: 'http2' },
    );
    cleanups.push(() => b.stop());

    for (const r of [a, b]) {
      const c = echoClient(`127.0.0.1:${r.proxyPort}`, 'echo');
      cleanups.push(() => c.close());
      const streamed = await c.bidi([{ message: '1' }, { message: '2' }], {
        metadata: { 'x-tenant-id': 't2' },
      });
      expect(streamed.map((x) => x.servedBy)).toEqual(['base', 'base']);
    }
    const before = b.logs().split('Http2Session server: created').length;

    await interceptDetached(clientEnv(b, TOKEN), 'echo', 't1', local.port, cleanups);
    const relayed = await h2post(
      a.data,
      { ':path': '/orders', ':authority': 'echo', 'x-tenant-id': 't1' },
      'hi',
    );
    expect(relayed).toEqual({ status: 201, body: 'local POST /orders' });
    expect(b.logs().split('Http2Session server: created').length).toBeGreaterThan(before);
  }, 60_000);
});
