/**
 * Helper processes for the benchmarks, each started as its own process by run.ts:
 *
 *   node services.ts service <port> <label>          small-body service (+ /upload, /download)
 *   node services.ts reply-from <port> <upstreamUrl> @fastify/reply-from proxy
 *
 * Both bind 127.0.0.1 only and print "ready" on stdout once listening.
 */
import http from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';

const [mode, portArg, arg] = process.argv.slice(2);
const port = Number(portArg);

/** The same small body the nginx upstream returns. */
const SMALL_BODY = 'hello from upstream\n';

if (mode === 'service') {
  const label = arg ?? 'service';
  const chunk = Buffer.alloc(64 * 1024, 'x');
  const server = http.createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
    if (req.method === 'POST' && req.url === '/upload') {
      // Discard the body, answer with how much arrived.
      let bytes = 0;
      req.on('data', (c) => (bytes += c.length));
      req.on('end', () => {
        const body = JSON.stringify({ bytes });
        res.writeHead(200, {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
          'x-served-by': label,
        });
        res.end(body);
      });
      return;
    }
    if (req.method === 'GET' && req.url?.startsWith('/download')) {
      const total = Number(new URL(req.url, 'http://x').searchParams.get('bytes') ?? 0);
      res.writeHead(200, {
        'content-type': 'application/octet-stream',
        'content-length': total,
        'x-served-by': label,
      });
      let sent = 0;
      const pump = () => {
        while (sent < total) {
          const n = Math.min(chunk.length, total - sent);
          sent += n;
          if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
            res.once('drain', pump);
            return;
          }
        }
        res.end();
      };
      pump();
      return;
    }
    // Drain any request body, then the small fixed answer.
    req.resume();
    res.writeHead(200, {
      'content-type': 'text/plain',
      'content-length': SMALL_BODY.length,
      'x-served-by': label,
    });
    res.end(SMALL_BODY);
  });
  server.listen(port, '127.0.0.1', () => console.log('ready'));
} else if (mode === 'reply-from') {
  const { default: Fastify } = await import('fastify');
  const { default: replyFrom } = await import('@fastify/reply-from');
  const app = Fastify({ logger: false });
  await app.register(replyFrom, { base: arg });
  const handler = (req: FastifyRequest, reply: FastifyReply) => reply.from(req.url);
  app.all('/', handler);
  app.all('/*', handler);
  await app.listen({ port, host: '127.0.0.1' });
  console.log('ready');
} else {
  console.error('usage: services.ts service <port> <label> | reply-from <port> <upstreamUrl>');
  process.exit(2);
}
