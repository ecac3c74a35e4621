/**
 * Prototype: the barest HTTP/1.1 reverse proxy of the product's stack, for the pass-through
 * benchmark's ceiling (issue 17, item 5). Not product code: `node:http` in front, one undici
 * Pool behind, each request handed to `Pool.dispatch` with its raw header list and a handler
 * object (no stream wrapper, no per-request closures), the answer written straight back. No
 * routing, ids, metrics, limits, health checks or timeouts of its own.
 *
 *   node bare-proxy.ts <port> <upstreamUrl>
 *
 * Prints "ready" once it listens on 127.0.0.1.
 */
import http from 'node:http';
import { type Dispatcher, Pool } from 'undici';

const [port, upstreamUrl] = process.argv.slice(2);
if (!port || !upstreamUrl) throw new Error('usage: node bare-proxy.ts <port> <upstreamUrl>');
const pool = new Pool(upstreamUrl, { connections: 128, pipelining: 1 });
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'te', 'proxy-connection']);

function withoutHop(raw: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (!HOP.has(name.toLowerCase())) out.push(name, raw[i + 1] as string);
  }
  return out;
}

class Reply implements Dispatcher.DispatchHandler {
  readonly res: http.ServerResponse;
  constructor(res: http.ServerResponse) {
    this.res = res;
  }
  onRequestStart(): void {}
  onResponseStart(
    _c: Dispatcher.DispatchController,
    status: number,
    headers: Record<string, string | string[]>,
  ): void {
    const out: string[] = [];
    for (const name in headers) {
      if (HOP.has(name)) continue;
      const value = headers[name] as string | string[];
      if (Array.isArray(value)) for (const v of value) out.push(name, v);
      else out.push(name, value);
    }
    this.res.writeHead(status, out);
  }
  onResponseData(_c: Dispatcher.DispatchController, chunk: Buffer): void {
    this.res.write(chunk);
  }
  onResponseEnd(): void {
    this.res.end();
  }
  onResponseError(_c: Dispatcher.DispatchController, err: Error): void {
    if (this.res.headersSent) this.res.destroy(err);
    else this.res.writeHead(502, { 'content-type': 'text/plain' }).end(`${err.message}\n`);
  }
}

const server = http.createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
  const body = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  if (!body) req.resume();
  pool.dispatch(
    {
      method: req.method as Dispatcher.HttpMethod,
      path: req.url as string,
      headers: withoutHop(req.rawHeaders),
      body: body ? req : null,
    },
    new Reply(res),
  );
});
server.listen(Number(port), '127.0.0.1', () => console.log('ready'));
