/** Real HTTP servers and requests for tests: listeners on free ports, a service that names itself, raw requests through the data port. */
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { ServerProcess } from './agents.js';
import type { Cleanup } from './waiting.js';

export function listen(
  handler: http.RequestListener,
): Promise<{ server: http.Server; port: number; url: string }> {
  const server = http.createServer(handler);
  return new Promise((res) =>
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as AddressInfo).port;
      res({ server, port, url: `http://127.0.0.1:${port}` });
    }),
  );
}

/**
 * A port nothing listens on, for "connection refused" cases. Privileged and unassigned on any
 * dev machine: unlike a freed ephemeral port, no parallel test can be handed it meanwhile.
 */
export const CLOSED_PORT = 1;

/** A free port for a process that binds it itself (bound then released). */
export async function freePort(): Promise<number> {
  const { server, port } = await listen(() => undefined);
  await new Promise((r) => server.close(r));
  return port;
}

/** Sends a request to the data port as the reverse proxy would. */
export async function viaProxy(
  server: ServerProcess,
  service: string,
  tenant: string | undefined,
  path = '/',
  init: RequestInit = {},
) {
  const headers = new Headers(init.headers);
  headers.set('x-kelsingra-service', service);
  if (tenant) headers.set('x-tenant-id', tenant);
  return fetch(`${server.data}${path}`, { ...init, headers });
}

/** Closes a test server at once, open keep-alive connections included (`close` alone waits for them). */
export function closeServer(s: http.Server | { server: http.Server } | undefined): Promise<void> {
  if (!s) return Promise.resolve();
  const server = s instanceof http.Server ? s : s.server;
  server.closeAllConnections();
  return new Promise((r) => server.close(() => r()));
}

/** The server agent's own health check of an upstream (not a request anyone sent). */
export function isHealthCheck(req: http.IncomingMessage): boolean {
  return req.headers['user-agent'] === 'kelsingra-health-check';
}

/**
 * An HTTP service that says who it is (`<name> <METHOD> <url>`, text/plain) and records its
 * hits (not health checks): 201 for a POST, 404 under /missing, 503 under /fail, else 200.
 * Closed by the cleanups.
 */
export async function textService(name: string, cleanups: Cleanup[]) {
  const hits: string[] = [];
  const svc = await listen((req, res) => {
    if (isHealthCheck(req)) return void res.end('ok');
    hits.push(`${req.method} ${req.url}`);
    req.resume();
    req.on('end', () => {
      const url = req.url ?? '';
      const status = url.startsWith('/fail')
        ? 503
        : url.startsWith('/missing')
          ? 404
          : req.method === 'POST'
            ? 201
            : 200;
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(`${name} ${req.method} ${url}`);
    });
  });
  cleanups.push(() => closeServer(svc));
  return { ...svc, hits };
}

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/**
 * An HTTP/1.1 request with full control of the headers (fetch refuses hop-by-hop ones and
 * Host), from a chosen local address, and over https trusting `ca` when the URL says https.
 */
export function rawRequest(
  url: string,
  opts: {
    method?: string;
    headers?: http.OutgoingHttpHeaders | string[];
    body?: Buffer | string;
    localAddress?: string;
    ca?: Buffer;
    /** The request target exactly as sent (`url` would merge `..` and never send absolute form). */
    target?: string;
  } = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const request = url.startsWith('https:') ? https.request : http.request;
    const req = request(
      url,
      {
        method: opts.method ?? 'GET',
        headers: opts.headers,
        ...(opts.target === undefined ? {} : { path: opts.target }),
        agent: false,
        localAddress: opts.localAddress,
        ca: opts.ca,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** A response body parsed as a JSON object. */
export function bodyJson(res: { body: Buffer }): Record<string, unknown> {
  return JSON.parse(res.body.toString('utf8')) as Record<string, unknown>;
}
