/**
 * Prototype, client side of h2raw-server.ts (see there): opens the upgrade with
 * `http.request`, takes the raw socket on 'upgrade', and serves HTTP/2 on it by handing it to
 * an `http2` server as a connection. Each stream is forwarded to the local HTTP/1.1 service
 * with an undici Pool, as the product's client agent does.
 *
 *   node h2raw-client.ts <tunnelUrl> <localPort>
 *
 * Prints "ready" once the tunnel is up.
 */
import http from 'node:http';
import http2 from 'node:http2';
import { PassThrough } from 'node:stream';
import { Pool } from 'undici';

const [tunnelUrl, localPort] = process.argv.slice(2);
const HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'upgrade',
  'te',
  'host',
  'expect',
]);
const WINDOW = 1024 * 1024;

const pool = new Pool(`http://127.0.0.1:${localPort}`, { connections: null, pipelining: 1 });

const h2 = http2.createServer({
  settings: { initialWindowSize: WINDOW, maxConcurrentStreams: 10_000 },
});
h2.on('stream', (stream, headers) => {
  stream.on('error', () => undefined); // a reset by the caller; the pool request is aborted with it
  const h: http.IncomingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) if (k[0] !== ':' && !HOP.has(k)) h[k] = v;
  h.host = headers[':authority'];
  // nghttp2 refuses a request stream without :method or :path: both are set here.
  const method = headers[':method'] as string;
  const bodyless = stream.readableEnded || ((method === 'GET' || method === 'HEAD') && !h['content-length']);
  pool
    // undici destroys a request body it has sent, and destroying an HTTP/2 stream resets it
    // both ways: it gets a PassThrough, so the response can still use the stream.
    .request({
      method,
      path: headers[':path'] as string,
      headers: h,
      body: bodyless ? null : stream.pipe(new PassThrough()),
    })
    .then(({ statusCode, headers: rh, body }) => {
      const out: http2.OutgoingHttpHeaders = { ':status': statusCode };
      for (const [k, v] of Object.entries(rh)) if (!HOP.has(k)) out[k] = v;
      body.on('error', (err) => stream.destroy(err));
      if (stream.destroyed) return body.destroy();
      stream.respond(out);
      body.pipe(stream);
    })
    .catch((err: Error) => {
      if (stream.destroyed) return;
      if (!stream.headersSent) stream.respond({ ':status': 502, 'content-type': 'text/plain' });
      stream.end(`local service: ${err.message}\n`);
    });
  if (bodyless) stream.resume();
});
h2.on('sessionError', (err) => console.error(`tunnel session: ${err.message}`));

const req = http.request(`${tunnelUrl}/tunnel`, {
  headers: { connection: 'Upgrade', upgrade: 'kelsingra-h2' },
});
req.on('upgrade', (_res, socket, head) => {
  if (head.length) socket.unshift(head);
  socket.setNoDelay(true);
  h2.emit('connection', socket);
  socket.on('close', () => {
    console.error('tunnel closed');
    process.exit(1);
  });
  console.log('ready');
});
req.on('response', (res) => {
  console.error(`tunnel refused: HTTP ${res.statusCode}`);
  process.exit(1);
});
req.on('error', (err) => {
  console.error(`tunnel: ${err.message}`);
  process.exit(1);
});
req.end();
