/**
 * The outbound gateway: a local HTTP server through which the developer's local service (or a
 * browser front end, or a script) calls the other services of the dev environment. Each call
 * travels to the server agent's `/v1/gateway` with the routing key (tenant header), W3C trace
 * context (`traceparent`) and `baggage` added, and the server routes it like a data-plane
 * request — to the developer's own intercept for that (service, tenant) when there is one, so
 * calls chain from one local service to another.
 *
 * Two request forms:
 * - proxy form, as clients honouring HTTP_PROXY send it: `GET http://inventory.dev.example.com/items`
 *   → the server is told the host (`x-kelsingra-host`) and gets path `/items`;
 * - origin form, with the service as the first path segment: `GET /inventory/items`
 *   → `x-kelsingra-service: inventory`, path `/items`.
 * Node's fetch with NODE_USE_ENV_PROXY=1 sends even http:// calls through a CONNECT tunnel: the
 * plain HTTP inside one is served as the proxy form for the tunnel's host. TLS cannot be (the
 * tenant could not be added): CONNECT to port 443 gets a 501 saying to call http://.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { type Duplex, duplexPair } from 'node:stream';
import { Pool } from 'undici';
import { ApiClient } from './api-client.js';
import { ExitCode, KelsingraError } from './errors.js';
import type { OutboundEvent } from './events.js';
import { forwardableRawHeaders, forwardableResponseHeaders, maskSecretQuery } from './http-headers.js';
import {
  ERROR_HEADER,
  GATEWAY_HOST_HEADER,
  GATEWAY_PATH,
  GATEWAY_TOKEN_HEADER,
  SERVICE_HEADER,
  type ServerInfo,
} from './protocol.js';
import type { ClientSettings } from './settings.js';
import { baggageEntry, newTraceparent, validTraceparent, withBaggage } from './w3c-context.js';

/** Origin form: the service named by the first path segment. */
const GATEWAY_SERVICE_HEADER = SERVICE_HEADER;

/** Longest wait for the server's response headers (the server answers 504 after its own --upstream-timeout first). */
const HEADERS_TIMEOUT_MS = 2 * 60_000;
/** Longest silence inside a body, either way (server-sent events send comments to stay alive). */
const BODY_IDLE_MS = 5 * 60_000;
const CONNECT_TIMEOUT_MS = 10_000;
const PREFLIGHT_MAX_AGE_S = 600;

export interface GatewayOptions {
  /** Control-port URL of the server agent. */
  server: string;
  token: string;
  /** Routing key added to requests that carry none. */
  tenant: string;
  /** From the server's /v1/info. */
  tenantHeader: string;
  baggageKey: string;
  /** 0 (default): any free port. */
  port?: number;
  host?: '127.0.0.1';
  /** Answer CORS for browser front ends on localhost. */
  cors?: boolean;
  onRequest?: (record: GatewayRecord) => void;
}

/** One finished gateway request, for the live view and plain logs. */
export interface GatewayRecord {
  startedAt: number;
  method: string;
  /** Origin form: the service named by the path. */
  service?: string;
  /** Proxy form: the host the caller addressed. */
  host?: string;
  /** Path and query sent on (credential-like query values masked). */
  path: string;
  status: number;
  durationMs: number;
  bytesOut: number;
  error?: string;
}

export interface OutboundGateway {
  url: string;
  port: number;
  close(): Promise<void>;
}

/** Where a request is meant to go, read from its request line. */
type Target =
  | { kind: 'host'; host: string; path: string }
  | { kind: 'service'; service: string; path: string }
  | { kind: 'none'; reason: string };

/** `GET http://inventory.dev/items?x=1` or `GET /inventory/items?x=1`. */
export function targetOf(url: string): Target {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      return { kind: 'none', reason: `"${url}" is not a URL` };
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:')
      return { kind: 'none', reason: `only http:// URLs can be proxied, not ${parsed.protocol}` };
    return { kind: 'host', host: parsed.host, path: `${parsed.pathname || '/'}${parsed.search}` };
  }
  if (!url.startsWith('/')) return { kind: 'none', reason: `"${url}" is neither a path nor a URL` };
  const rest = url.slice(1);
  const cut = rest.search(/[/?]/);
  const service = decodeSegment(cut === -1 ? rest : rest.slice(0, cut));
  if (!service)
    return {
      kind: 'none',
      reason:
        'name the service as the first path segment (GET /inventory/items reaches /items on inventory), or use this gateway as HTTP_PROXY',
    };
  const after = cut === -1 ? '' : rest.slice(cut);
  return { kind: 'service', service, path: after.startsWith('/') ? after : `/${after}` };
}

/** Inside a tunnel requests are origin-form; an absolute-form one keeps only its path. */
function tunnelPath(url: string): string {
  if (url.startsWith('/')) return url;
  const t = targetOf(url);
  return t.kind === 'host' ? t.path : '/';
}

function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

const LOCAL_ORIGIN = /^https?:\/\/(localhost|127\.0\.0\.1|\[::1\])(:\d{1,5})?$/i;

/** Browser origins --cors answers: pages served from this machine. */
export function allowedOrigin(origin: string | undefined): boolean {
  return typeof origin === 'string' && LOCAL_ORIGIN.test(origin);
}

/** Headers the gateway sets or must not pass on: its own, the server's routing headers, Host. */
const DROPPED = new Set([
  'host',
  'expect',
  GATEWAY_TOKEN_HEADER,
  GATEWAY_HOST_HEADER,
  GATEWAY_SERVICE_HEADER,
  'traceparent',
  'tracestate',
  'baggage',
]);

function sendJson(
  res: ServerResponse,
  status: number,
  code: string,
  message: string,
  extra: Record<string, unknown> = {},
  headers: Record<string, string> = {},
): number {
  const body = JSON.stringify({ error: `Kelsingra: ${message}`, code, source: 'kelsingra', ...extra });
  if (res.headersSent) {
    res.destroy();
    return 0;
  }
  res.writeHead(status, {
    ...headers,
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    [ERROR_HEADER]: code,
  });
  res.end(body);
  return Buffer.byteLength(body);
}

export async function startOutboundGateway(opts: GatewayOptions): Promise<OutboundGateway> {
  /** Connections carrying the HTTP inside a CONNECT tunnel, and the host:port the tunnel named. */
  const tunnelHosts = new WeakMap<object, string>();
  const tenantHeader = opts.tenantHeader.toLowerCase();
  const serverUrl = new URL(opts.server);
  const basePath = serverUrl.pathname.replace(/\/+$/, '');
  const pool = new Pool(serverUrl.origin, {
    connections: 128,
    keepAliveTimeout: 10_000,
    headersTimeout: HEADERS_TIMEOUT_MS,
    bodyTimeout: BODY_IDLE_MS,
    connectTimeout: CONNECT_TIMEOUT_MS,
  });

  /** CORS headers for a response to `origin` (none unless --cors and a local origin). */
  const corsFor = (origin: string | undefined): Record<string, string> | undefined => {
    if (!opts.cors || !allowedOrigin(origin)) return undefined;
    return {
      'access-control-allow-origin': origin as string,
      'access-control-allow-credentials': 'true',
      vary: 'Origin',
    };
  };

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const startedAt = Date.now();
    const t0 = performance.now();
    const method = req.method ?? 'GET';
    const tunnel = tunnelHosts.get(req.socket);
    const target: Target = tunnel
      ? {
          kind: 'host',
          host: typeof req.headers.host === 'string' && req.headers.host !== '' ? req.headers.host : tunnel,
          path: tunnelPath(req.url ?? '/'),
        }
      : targetOf(req.url ?? '/');
    const origin = typeof req.headers.origin === 'string' ? req.headers.origin : undefined;
    let recorded = false;
    const record = (status: number, bytesOut: number, error?: string) => {
      // Once per request, however it ends (finished, body error, caller gone).
      if (recorded) return;
      recorded = true;
      opts.onRequest?.({
        startedAt,
        method,
        ...(target.kind === 'service' ? { service: target.service } : {}),
        ...(target.kind === 'host' ? { host: target.host } : {}),
        path: maskSecretQuery(target.kind === 'none' ? (req.url ?? '/') : target.path),
        status,
        durationMs: performance.now() - t0,
        bytesOut,
        error,
      });
    };

    // CORS preflight: answered here, never sent on (the dev service knows nothing of localhost).
    if (opts.cors && method === 'OPTIONS' && origin && req.headers['access-control-request-method']) {
      req.resume();
      if (!allowedOrigin(origin)) {
        const n = sendJson(
          res,
          403,
          'cors-origin-refused',
          `the gateway answers CORS only for pages on this machine (http(s)://localhost, 127.0.0.1 or [::1], any port), not ${origin}`,
          { origin },
        );
        record(403, n, 'origin not allowed');
        return;
      }
      const requested = req.headers['access-control-request-headers'];
      res.writeHead(204, {
        ...corsFor(origin),
        'access-control-allow-methods': `GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS${/^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS)$/i.test(String(req.headers['access-control-request-method'])) ? '' : `, ${req.headers['access-control-request-method']}`}`,
        ...(requested ? { 'access-control-allow-headers': String(requested) } : {}),
        ...(req.headers['access-control-request-private-network'] === 'true'
          ? { 'access-control-allow-private-network': 'true' }
          : {}),
        'access-control-max-age': String(PREFLIGHT_MAX_AGE_S),
        vary: 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers',
        'content-length': '0',
      });
      res.end();
      record(204, 0);
      return;
    }

    const cors = corsFor(origin);
    if (target.kind === 'none') {
      req.resume();
      record(400, sendJson(res, 400, 'no-target', target.reason, {}, cors), target.reason);
      return;
    }

    const headers = forwardableRawHeaders(req.rawHeaders, DROPPED);
    // The routing key the request already carries (header, else baggage) is kept; otherwise ours.
    const present = req.headers[tenantHeader];
    const carried =
      typeof present === 'string' && present !== ''
        ? present
        : baggageEntry(req.headers.baggage, opts.baggageKey);
    const tenant = carried || opts.tenant;
    if (!(typeof present === 'string' && present !== '')) {
      // Drop an empty one before adding ours.
      for (let i = headers.length - 2; i >= 0; i -= 2) if (headers[i] === tenantHeader) headers.splice(i, 2);
      headers.push(tenantHeader, tenant);
    }
    if (validTraceparent(req.headers.traceparent)) {
      headers.push('traceparent', req.headers.traceparent.trim());
      const state = req.headers.tracestate;
      if (state !== undefined) headers.push('tracestate', Array.isArray(state) ? state.join(',') : state);
    } else {
      // A new trace; a tracestate belongs to the old (invalid or missing) parent and goes with it.
      headers.push('traceparent', newTraceparent());
    }
    headers.push('baggage', withBaggage(req.headers.baggage, opts.baggageKey, tenant));
    headers.push(GATEWAY_TOKEN_HEADER, opts.token);
    if (target.kind === 'host') headers.push(GATEWAY_HOST_HEADER, target.host);
    else headers.push(GATEWAY_SERVICE_HEADER, target.service);

    const hasBody =
      req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
    const abort = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) abort.abort();
    });
    pool
      .request({
        method,
        path: `${basePath}${GATEWAY_PATH}${target.path}`,
        headers,
        body: hasBody ? req : null,
        signal: abort.signal,
      })
      .then(({ statusCode, headers: upstream, body }) => {
        if (res.destroyed) {
          body.destroy();
          record(499, 0, 'caller went away');
          return;
        }
        const out = forwardableResponseHeaders(upstream);
        if (cors) {
          for (const name of Object.keys(out)) if (name.startsWith('access-control-')) delete out[name];
          const exposed = Object.keys(out).filter((n) => n !== 'set-cookie' && n !== 'set-cookie2');
          Object.assign(out, cors);
          if (exposed.length) out['access-control-expose-headers'] = exposed.join(', ');
          const vary = upstream.vary;
          if (vary) out.vary = `${Array.isArray(vary) ? vary.join(', ') : vary}, Origin`;
        }
        res.writeHead(statusCode, out);
        let bytes = 0;
        body.on('data', (c: Buffer) => (bytes += c.length));
        body.pipe(res);
        body.on('error', (err) => {
          res.destroy(err);
          record(statusCode, bytes, err.message);
        });
        res.once('finish', () => record(statusCode, bytes));
        res.once('close', () => record(statusCode, bytes, 'caller went away before the response ended'));
      })
      .catch((err: Error & { code?: string }) => {
        if (abort.signal.aborted || res.destroyed) {
          record(499, 0, 'caller went away');
          return;
        }
        const code = err.code ?? (err.cause as NodeJS.ErrnoException | undefined)?.code;
        const timedOut = code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT';
        const status = timedOut ? 504 : 502;
        const n = sendJson(
          res,
          status,
          timedOut ? 'server-timeout' : 'server-unreachable',
          timedOut
            ? `the Kelsingra server at ${opts.server} did not answer the gateway in time (${code})`
            : `the gateway could not reach the Kelsingra server at ${opts.server} (${code ?? err.message})`,
          {
            server: opts.server,
            hint: 'check that the server agent is running and that KELSINGRA_SERVER / kelsingra connect --server point at its control port',
          },
          cors,
        );
        record(status, n, code ?? err.message);
      });
  };

  const server = http.createServer({ keepAliveTimeout: 5_000, headersTimeout: 30_000 }, handle);
  // CONNECT: Node's fetch with NODE_USE_ENV_PROXY (undici's proxy agent) tunnels even plain
  // http:// calls, so a tunnel is accepted and the HTTP inside it served like any request, with
  // the tunnel's host as the target. TLS inside a tunnel (https://, HTTPS_PROXY) cannot be: the
  // gateway could not add the tenant, and the dev host is not reachable from here anyway.
  const tunnels = new Set<Duplex>();
  server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const startedAt = Date.now();
    const t0 = performance.now();
    const authority = req.url ?? '';
    const refuse = (how: 'answer' | 'drop') => {
      const message = `Kelsingra: the gateway cannot carry HTTPS (a CONNECT tunnel to ${authority} with TLS inside). Call the dev service with http:// through the gateway: the server agent reaches the upstream with its own scheme (https when the service is configured so). Leave HTTPS_PROXY unset, or list the host in NO_PROXY.`;
      if (how === 'answer') writeRaw(socket, 501, 'connect-not-supported', message);
      else socket.destroy();
      opts.onRequest?.({
        startedAt,
        method: 'CONNECT',
        host: authority,
        path: '',
        status: 501,
        durationMs: performance.now() - t0,
        bytesOut: how === 'answer' ? Buffer.byteLength(message) : 0,
        error: 'HTTPS cannot go through the gateway',
      });
    };
    socket.on('error', () => socket.destroy());
    // Port 443 is TLS: say so in an HTTP answer, while the client still reads one.
    if (/:443$/.test(authority)) {
      refuse('answer');
      return;
    }
    tunnels.add(socket);
    socket.once('close', () => tunnels.delete(socket));
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    const start = (first: Buffer) => {
      // A TLS record starts with 0x16 (handshake).
      if (first[0] === 0x16) {
        refuse('drop');
        return;
      }
      const [inner, outer] = duplexPair();
      tunnelHosts.set(inner, authority);
      server.emit('connection', inner);
      outer.write(first);
      socket.pipe(outer).pipe(socket);
      outer.on('error', () => socket.destroy());
      outer.once('close', () => socket.destroy());
      socket.once('close', () => outer.destroy());
    };
    if (head.length > 0) start(head);
    else
      socket.once('data', (chunk: Buffer) => {
        socket.pause();
        start(chunk);
        socket.resume();
      });
  });
  server.on('upgrade', (_req: IncomingMessage, socket: Duplex) => {
    writeRaw(
      socket,
      501,
      'upgrade-not-supported',
      'Kelsingra: the gateway carries plain HTTP requests only, not WebSocket or other upgrades',
    );
  });
  server.on('clientError', (_err, socket) => {
    writeRaw(socket, 400, 'malformed-request', 'Kelsingra: malformed request');
  });

  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  }).catch(async (err: NodeJS.ErrnoException) => {
    await pool.close();
    throw err;
  });
  const port = (server.address() as AddressInfo).port;
  let closed: Promise<void> | undefined;
  return {
    url: `http://${host}:${port}`,
    port,
    close: () => {
      closed ??= (async () => {
        const done = new Promise<void>((r) => server.close(() => r()));
        server.closeAllConnections();
        for (const socket of tunnels) socket.destroy();
        await done;
        await pool.destroy();
      })();
      return closed;
    },
  };
}

function writeRaw(socket: Duplex | Socket, status: number, code: string, message: string): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = JSON.stringify({ error: message, code, source: 'kelsingra' });
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${ERROR_HEADER}: ${code}\r\nconnection: close\r\n\r\n${body}`,
  );
}

/** A gateway record as an event of the client's event stream (live view, plain lines, NDJSON). */
export function outboundEvent(r: GatewayRecord): OutboundEvent {
  return {
    kind: 'outbound',
    startedAt: r.startedAt,
    method: r.method,
    target: r.service ?? r.host ?? '',
    path: r.path,
    status: r.status,
    durationMs: r.durationMs,
    bytesOut: r.bytesOut,
    ...(r.error ? { error: r.error } : {}),
  };
}

export interface ClientGatewayOptions {
  /** 0: any free port. */
  port: number;
  cors: boolean;
  onRequest?: (record: GatewayRecord) => void;
}

/**
 * The gateway of a client (`intercept`, `gateway`): asks the server which header and baggage
 * key carry the routing key, then listens. Errors say what to do (a taken port, an old server).
 */
export async function startClientGateway(
  settings: ClientSettings,
  tenant: string,
  opts: ClientGatewayOptions,
): Promise<{ gateway: OutboundGateway; info: ServerInfo }> {
  const api = new ApiClient(settings.server, settings.token);
  let info: ServerInfo;
  try {
    info = await api.info();
  } catch (err) {
    if (err instanceof KelsingraError && err.exitCode === ExitCode.notFound)
      throw new KelsingraError(
        `the server agent at ${settings.server} has no outbound gateway (GET /v1/info: ${err.message})`,
        ExitCode.failure,
        'upgrade the server agent, or run intercept with --no-gateway',
        { code: 'no-gateway' },
      );
    throw err;
  }
  try {
    const gateway = await startOutboundGateway({
      server: settings.server,
      token: settings.token,
      tenant,
      tenantHeader: info.tenantHeader,
      baggageKey: info.baggageKey,
      port: opts.port,
      cors: opts.cors,
      onRequest: opts.onRequest,
    });
    return { gateway, info };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE' || code === 'EACCES')
      throw new KelsingraError(
        `the gateway cannot listen on 127.0.0.1:${opts.port} (${code})`,
        ExitCode.usage,
        'pick another port with --gateway-port (gateway command: --port), or 0 for any free port',
      );
    throw err;
  }
}

/**
 * What the local command (`intercept … -- cmd`) gets so its HTTP calls go through the gateway:
 * `KELSINGRA_GATEWAY` for base URLs, `HTTP_PROXY` for clients that honour it (Node 24's fetch and
 * http with `NODE_USE_ENV_PROXY=1`), and `NO_PROXY` keeping this machine's own addresses direct.
 */
export function gatewayEnv(url: string, env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const noProxy = [
    ...new Set(
      [env.NO_PROXY ?? env.no_proxy ?? '', 'localhost,127.0.0.1,::1']
        .join(',')
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean),
    ),
  ].join(',');
  return {
    KELSINGRA_GATEWAY: url,
    HTTP_PROXY: url,
    http_proxy: url,
    NO_PROXY: noProxy,
    no_proxy: noProxy,
    NODE_USE_ENV_PROXY: '1',
  };
}
