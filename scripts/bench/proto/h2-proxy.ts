/**
 * Prototype: the barest HTTP/2 proxy Node can run, for the gRPC benchmark's ceiling (issue 15).
 * Not product code. An intercepted gRPC call crosses two node:http2 hops (the data port, and
 * the client agent's session to the local service); two of these in a row show what those hops
 * cost with none of Kelsingra's own work: no routing, tunnel, log, metrics or timeouts.
 *
 *   node h2-proxy.ts <port> <upstreamUrl>
 *
 * One session to the upstream; each stream is piped both ways, trailers included. Prints
 * "ready" once it listens on 127.0.0.1.
 */
import http2 from 'node:http2';

const [port, upstreamArg] = process.argv.slice(2);
if (!upstreamArg) throw new Error('usage: h2-proxy.ts <port> <upstreamUrl>');
const upstreamUrl = upstreamArg;
let upstream: http2.ClientHttp2Session | undefined;
function session(): http2.ClientHttp2Session {
  if (!upstream || upstream.closed || upstream.destroyed) {
    upstream = http2.connect(upstreamUrl);
    upstream.on('error', (err) => console.error(`upstream: ${err.message}`));
  }
  return upstream;
}

const server = http2.createServer();
server.on('stream', (stream, headers) => {
  stream.on('error', () => undefined); // the caller reset it; the upstream stream is closed with it
  const out = session().request(headers, { endStream: stream.readableEnded, waitForTrailers: false });
  out.on('response', (h) => {
    if (!stream.destroyed) stream.respond(h, { waitForTrailers: true });
  });
  out.on('trailers', (t) => {
    stream.once('wantTrailers', () => stream.sendTrailers(t));
  });
  out.on('error', (err) => stream.destroy(err));
  stream.on('close', () => {
    if (!out.closed) out.close(http2.constants.NGHTTP2_CANCEL);
  });
  // A response without trailers still has to end: wantTrailers then sends none.
  out.on('end', () => {
    if (!stream.destroyed && stream.listenerCount('wantTrailers') === 0)
      stream.once('wantTrailers', () => stream.sendTrailers({}));
  });
  out.pipe(stream);
  if (!stream.readableEnded) stream.pipe(out);
});
server.listen(Number(port), '127.0.0.1', () => console.log('ready'));
