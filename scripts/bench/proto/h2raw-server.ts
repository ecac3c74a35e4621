/**
 * Prototype, server side: HTTP/2 over the raw socket after an HTTP/1.1 upgrade (issue 15,
 * item 6). Not product code: it exists to measure whether keeping HTTP/2 for the tunnel, but
 * over the TCP socket itself instead of a JavaScript duplex over WebSocket messages, is fast
 * enough to keep.
 *
 *   node h2raw-server.ts <tunnelPort> <dataPort>
 *
 * The tunnel port takes `GET /tunnel` with `Upgrade: kelsingra-h2`, answers 101, and from then
 * on is an HTTP/2 client (`http2.connect` over that socket: nghttp2 writes straight to the
 * libuv stream). The data port is an HTTP/1.1 server that sends each request as one stream
 * to the most recent tunnel. Prints "ready" once both listen on 127.0.0.1.
 */
import http from 'node:http';
import http2 from 'node:http2';
import type { Socket } from 'node:net';

const [tunnelPort, dataPort] = process.argv.slice(2).map(Number);

/** Hop-by-hop headers (RFC 9110 7.6.1) and those HTTP/2 forbids. */
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

let session: http2.ClientHttp2Session | undefined;

const tunnel = http.createServer((_req, res) => {
  res.writeHead(426, { upgrade: 'kelsingra-h2' }).end('upgrade to kelsingra-h2\n');
});
tunnel.on('upgrade', (req, socket, head) => {
  if (req.url !== '/tunnel' || req.headers.upgrade?.toLowerCase() !== 'kelsingra-h2') {
    socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n');
    return;
  }
  socket.write('HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: kelsingra-h2\r\n\r\n');
  if (head.length) socket.unshift(head);
  // An http.Server's upgrade socket is its net.Socket (typed as a plain Duplex).
  (socket as Socket).setNoDelay(true);
  const s = http2.connect('http://tunnel', {
    createConnection: () => socket,
    settings: { initialWindowSize: WINDOW, enablePush: false },
    peerMaxConcurrentStreams: 10_000,
  });
  s.on('connect', () => s.setLocalWindowSize(16 * WINDOW));
  s.on('error', (err) => console.error(`tunnel session: ${err.message}`));
  s.on('close', () => {
    if (session === s) session = undefined;
  });
  session = s;
});

const data = http.createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
  if (!session) {
    res.writeHead(502, { 'content-type': 'text/plain' }).end('no tunnel\n');
    return;
  }
  const h: http2.OutgoingHttpHeaders = {
    ':method': req.method,
    ':path': req.url,
    ':authority': req.headers.host ?? 'local',
  };
  for (const [k, v] of Object.entries(req.headers)) if (!HOP.has(k)) h[k] = v;
  const bodyless = req.method === 'GET' || req.method === 'HEAD';
  const stream = session.request(h, { endStream: bodyless && req.headers['content-length'] === undefined });
  stream.on('response', (rh) => {
    const out: http.OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(rh)) if (k[0] !== ':' && !HOP.has(k)) out[k] = v;
    // Every HTTP/2 response carries :status (nghttp2 refuses one without).
    res.writeHead(rh[':status'] as number, out);
    stream.pipe(res);
  });
  stream.on('error', (err) => {
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' }).end(`${err.message}\n`);
    else res.destroy(err);
  });
  res.on('close', () => {
    if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
  });
  if (!stream.writableEnded) req.pipe(stream);
  else req.resume();
});

let listening = 0;
const up = () => {
  if (++listening === 2) console.log('ready');
};
tunnel.listen(tunnelPort, '127.0.0.1', up);
data.listen(dataPort, '127.0.0.1', up);
