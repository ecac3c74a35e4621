/**
 * The outbound gateway: a local HTTP server through which the developer's local service (or a
 * browser front end, or a script) calls the other services of the dev environment. Each call
 * travels to the server agent's `/v1/gateway` with the routing key (tenant header), W3C trace
 * context (`traceparent`) and `baggage` added, and the server routes it like a data-plane
 * request — to the developer's own intercept for that (service, tenant) when there is one, so
 * calls chain from one local service to another.
 *
 * Two request forms (gateway-target.ts):
 * - proxy form, as clients honouring HTTP_PROXY send it: `GET http://inventory.dev.example.com/items`
 *   → the server is told the host (`x-kelsingra-host`) and gets path `/items`;
 * - origin form, with the service as the first path segment: `GET /inventory/items`
 *   → `x-kelsingra-service: inventory`, path `/items`.
 * Plain HTTP inside a CONNECT tunnel is served as the proxy form for the tunnel's host
 * (gateway-connect.ts). Every call carries the developer's token, so web pages are kept out
 * (gateway-cors.ts) before anything is forwarded.
 *
 * Over 400 lines mostly by this header and the trace-context rules; target parsing, CONNECT
 * and CORS are in their own modules (named above).
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { Http2ServerRequest, Http2ServerResponse } from 'node:http2';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { Pool } from 'undici';
import { serveHttp2 } from '../../shared/http/dual-protocol.js';
import { Http2Sessions } from '../../shared/http/h2-sessions.js';
import {
  AMBIGUOUS_HEADER,
  ambiguityRefusal,
  HeaderGuard,
  HTTP_GUARDED,
} from '../../shared/http/header-twins.js';
import {
  forwardableRawHeaders,
  forwardableResponseHeaders,
  fromHttp2,
  maskSecretQuery,
} from '../../shared/http/http-headers.js';
import {
  type InboundRequest,
  isHttp2,
  type OutboundResponse,
  responseComplete,
} from '../../shared/http/http-types.js';
import { sendOverHttp2, type UpstreamCall } from '../../shared/http/upstream-call.js';
import {
  baggageEntry,
  newTraceparent,
  validTraceparent,
  withBaggage,
} from '../../shared/http/w3c-context.js';
import {
  GATEWAY_HOST_HEADER,
  GATEWAY_PATH,
  GATEWAY_TOKEN_HEADER,
  SERVICE_HEADER,
} from '../../shared/protocol.js';
import { acceptTunnels } from './gateway-connect.js';
import {
  addressedToGateway,
  callerRefusal,
  corsHeaders,
  isPreflight,
  preflightHeaders,
  withCors,
} from './gateway-cors.js';
import { sendJson, writeRaw } from './gateway-errors.js';
import type { GatewayRecord } from './gateway-record.js';
import { type Target, targetOf, tunnelTarget } from './gateway-target.js';

/** Longest wait for the server's response headers (the server answers 504 after its own --upstream-timeout first). */
const HEADERS_TIMEOUT_MS = 2 * 60_000;
/** Longest silence inside a body, either way (server-sent events send comments to stay alive). */
const BODY_IDLE_MS = 5 * 60_000;
const CONNECT_TIMEOUT_MS = 10_000;

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
  /** Serve browser front ends on localhost (CORS); without it no browser request is served. */
  cors?: boolean;
  /** Longest silence in a CONNECT tunnel before it is closed (default: the body idle timeout). */
  tunnelIdleMs?: number;
  onRequest?: (record: GatewayRecord) => void;
}

export type { GatewayRecord } from './gateway-record.js';

export interface OutboundGateway {
  url: string;
  port: number;
  close(): Promise<void>;
}

/** Headers the gateway sets or must not pass on: its own, the server's routing headers, Host. */
const DROPPED = new Set([
  'host',
  'expect',
  GATEWAY_TOKEN_HEADER,
  GATEWAY_HOST_HEADER,
  SERVICE_HEADER,
  'traceparent',
  'tracestate',
  'baggage',
]);

type Recorder = (status: number, bytesOut: number, error?: string) => void;

/**
 * An HTTP/2 request as the HTTP/1 rules read it: `:authority` as Host, no pseudo-headers in
 * its raw headers. The CORS and Host checks, the header guard and routedHeaders then hold for
 * both alike.
 */
function asHttp1(req: Http2ServerRequest): IncomingMessage {
  const rawHeaders: string[] = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2)
    if ((req.rawHeaders[i] as string).charCodeAt(0) !== 58)
      rawHeaders.push(req.rawHeaders[i] as string, req.rawHeaders[i + 1] as string);
  return {
    method: req.method,
    url: req.url,
    headers: fromHttp2(req.headers),
    rawHeaders,
  } as unknown as IncomingMessage;
}

export async function startOutboundGateway(opts: GatewayOptions): Promise<OutboundGateway> {
  const serverUrl = new URL(opts.server);
  const basePath = serverUrl.pathname.replace(/\/+$/, '');
  const cors = opts.cors ?? false;
  const pool = new Pool(serverUrl.origin, {
    connections: 128,
    keepAliveTimeout: 10_000,
    headersTimeout: HEADERS_TIMEOUT_MS,
    bodyTimeout: BODY_IDLE_MS,
    connectTimeout: CONNECT_TIMEOUT_MS,
  });
  /** Known once listening, before any request can arrive. */
  let port = 0;
  const guard = new HeaderGuard([...HTTP_GUARDED, opts.tenantHeader]);

  const handle = (inbound: InboundRequest, res: OutboundResponse) => {
    const startedAt = Date.now();
    const t0 = performance.now();
    const req = isHttp2(inbound) ? asHttp1(inbound) : inbound;
    const url = req.url ?? '/';
    const tunnelHost = tunnels.hostOf(dual.connectionOf(inbound));
    // An HTTP/2 call (gRPC) has no absolute form: one whose :authority names another host than
    // the gateway (a client dialling the gateway for a dev host) goes to that host.
    const authority = isHttp2(inbound) ? req.headers.host : undefined;
    const target = tunnelHost
      ? tunnelTarget(url, req.headers.host, tunnelHost)
      : authority && url.startsWith('/') && !addressedToGateway(authority, port)
        ? ({ kind: 'host', host: authority, path: url } as const)
        : targetOf(url);
    let recorded = false;
    const record: Recorder = (status, bytesOut, error) => {
      // Once per request, however it ends (finished, body error, caller gone).
      if (recorded) return;
      recorded = true;
      opts.onRequest?.({
        startedAt,
        method: req.method ?? 'GET',
        ...(target.kind === 'service' ? { service: target.service } : {}),
        ...(target.kind === 'host' ? { host: target.host } : {}),
        path: maskSecretQuery(target.kind === 'none' ? url : target.path),
        status,
        durationMs: performance.now() - t0,
        bytesOut,
        error,
      });
    };

    // First of all, preflights included: a page that may not call with the token may not
    // learn what it could send either.
    const refused = callerRefusal(req, {
      cors,
      port,
      originForm: !tunnelHost && target.kind !== 'host' && url.startsWith('/'),
    });
    if (refused) {
      inbound.resume();
      const { code, message, hint, extra, reason } = refused;
      record(403, sendJson(res, 403, code, message, { hint, ...extra }), reason);
      return;
    }
    if (isPreflight(req, cors)) {
      inbound.resume();
      (res as ServerResponse).writeHead(204, preflightHeaders(req.headers));
      res.end();
      record(204, 0);
      return;
    }
    const corsOut = corsHeaders(req.headers.origin, cors);
    if (target.kind === 'none') {
      inbound.resume();
      record(400, sendJson(res, 400, 'no-target', target.reason, {}, corsOut), target.reason);
      return;
    }
    const twin = guard.ambiguity(req.rawHeaders);
    if (twin) {
      inbound.resume();
      const { message, extra } = ambiguityRefusal(twin);
      record(
        400,
        sendJson(res, 400, AMBIGUOUS_HEADER, message, extra, corsOut),
        `ambiguous header ${twin.header}`,
      );
      return;
    }
    if (isHttp2(inbound))
      forwardHttp2(
        inbound,
        res as Http2ServerResponse,
        target,
        record,
        routedHeaders(req, target, opts, guard),
      );
    else forward(inbound, res as ServerResponse, target, corsOut, record, guard);
  };

  /**
   * An HTTP/2 call goes on over HTTP/2 to the control port (one connection, many streams),
   * trailers and resets included: gRPC from the laptop reaches dev as gRPC.
   */
  const sessions = new Http2Sessions(CONNECT_TIMEOUT_MS);
  const controlOrigin = new URL(serverUrl.origin);
  const forwardHttp2 = (
    req: Http2ServerRequest,
    res: Http2ServerResponse,
    target: Exclude<Target, { kind: 'none' }>,
    record: Recorder,
    headers: string[],
  ) => {
    const abort = new AbortController();
    let status = 0;
    res.once('close', () => {
      if (!responseComplete(res)) abort.abort();
      record(status || 499, 0, responseComplete(res) ? undefined : 'the call was cut before it ended');
    });
    const unreachable = (message: string, timedOut: boolean) => {
      status = timedOut ? 504 : 502;
      sendJson(res, status, timedOut ? 'server-timeout' : 'server-unreachable', message, {
        server: opts.server,
        hint: 'check that the server agent is running and that KELSINGRA_SERVER / kelsingra connect --server point at its control port',
      });
    };
    const call: UpstreamCall = {
      req,
      res,
      path: `${basePath}${GATEWAY_PATH}${target.path}`,
      headers,
      body: req.stream.endAfterHeaders ? null : req,
      signal: abort.signal,
      timeoutMs: HEADERS_TIMEOUT_MS,
      answered: (_backend, answeredStatus) => {
        status = answeredStatus;
      },
      failed: (_backend, err) => {
        if (abort.signal.aborted) return;
        if (res.headersSent) {
          res.stream.close(0x2 /* INTERNAL_ERROR */);
          return;
        }
        const code = (err as NodeJS.ErrnoException).code;
        const timedOut = code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT';
        unreachable(
          timedOut
            ? `the Kelsingra server at ${opts.server} did not answer the gateway in time (${code})`
            : `the gateway could not reach the Kelsingra server at ${opts.server} (${code ?? err.message})`,
          timedOut,
        );
      },
    };
    sessions.acquire(controlOrigin, (r) => {
      if (abort.signal.aborted) return;
      if (r.kind === 'h2') sendOverHttp2(call, r.session, { url: controlOrigin }, false);
      else if (r.kind === 'error') call.failed({ url: controlOrigin }, r.error, false);
      else
        unreachable(
          `the Kelsingra server at ${opts.server} does not speak HTTP/2, so HTTP/2 calls (gRPC) cannot go through the gateway; upgrade the server agent`,
          false,
        );
    });
  };

  const forward = (
    req: IncomingMessage,
    res: ServerResponse,
    target: Exclude<Target, { kind: 'none' }>,
    corsOut: Record<string, string> | undefined,
    record: Recorder,
    guard: HeaderGuard,
  ) => {
    const hasBody =
      req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
    const abort = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) abort.abort();
    });
    pool
      .request({
        method: req.method ?? 'GET',
        path: `${basePath}${GATEWAY_PATH}${target.path}`,
        headers: routedHeaders(req, target, opts, guard),
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
        res.writeHead(statusCode, corsOut ? withCors(out, corsOut) : out);
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
          corsOut,
        );
        record(status, n, code ?? err.message);
      });
  };

  const server = http.createServer({ keepAliveTimeout: 5_000, headersTimeout: 30_000 }, handle);
  // h2c besides HTTP/1.1 on the same port, for gRPC clients (and inside CONNECT tunnels too).
  const dual = serveHttp2(server, handle);
  const tunnels = acceptTunnels(server, {
    idleMs: opts.tunnelIdleMs ?? BODY_IDLE_MS,
    onRequest: opts.onRequest,
  });
  server.on('upgrade', (_req: IncomingMessage, socket: Duplex) => {
    writeRaw(
      socket,
      501,
      'upgrade-not-supported',
      'the gateway carries plain HTTP requests only, not WebSocket or other upgrades',
    );
  });
  server.on('clientError', (_err, socket) => {
    writeRaw(socket, 400, 'malformed-request', 'malformed request');
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
  port = (server.address() as AddressInfo).port;
  let closed: Promise<void> | undefined;
  return {
    url: `http://${host}:${port}`,
    port,
    close: () => {
      closed ??= (async () => {
        const done = new Promise<void>((r) => server.close(() => r()));
        server.closeAllConnections();
        dual.closeAll();
        tunnels.destroyAll();
        sessions.close();
        await done;
        await pool.destroy();
      })();
      return closed;
    },
  };
}

/**
 * The caller's headers as the server agent gets them: the routing key the request already
 * carries (header, else baggage) kept, otherwise the gateway's; a trace continued or begun;
 * the token and the target in Kelsingra's own headers.
 */
function routedHeaders(
  req: IncomingMessage,
  target: Exclude<Target, { kind: 'none' }>,
  opts: GatewayOptions,
  guard: HeaderGuard,
): string[] {
  const tenantHeader = opts.tenantHeader.toLowerCase();
  const headers = forwardableRawHeaders(req.rawHeaders, DROPPED, guard);
  const present = req.headers[tenantHeader];
  const hasHeader = typeof present === 'string' && present !== '';
  const tenant = (hasHeader ? present : baggageEntry(req.headers.baggage, opts.baggageKey)) || opts.tenant;
  // One line, set here: an empty one would shadow ours, and a caller's Connection line must
  // not take it away (guarded above, and set again in any case).
  for (let i = headers.length - 2; i >= 0; i -= 2) if (headers[i] === tenantHeader) headers.splice(i, 2);
  headers.push(tenantHeader, tenant);
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
  else headers.push(SERVICE_HEADER, target.service);
  return headers;
}
