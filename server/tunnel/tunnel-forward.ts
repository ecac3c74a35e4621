/**
 * Sends one data-plane request through a developer's tunnel as a stream and relays the
 * response, trailers included. Either side hanging up cancels the other.
 */

import type { ErrorCode } from '../../src/shared/error-codes.js';
import { cutResponse, sendError } from '../../src/shared/http/error-response.js';
import { lowerCaseNames, maskSecretQuery, rawToObject } from '../../src/shared/http/http-headers.js';
import {
  hasRequestBody,
  type InboundRequest,
  isHttp2,
  type OutboundResponse,
  responseComplete,
  writeHead,
} from '../../src/shared/http/http-types.js';
import { withRequestId } from '../../src/shared/http/request-id.js';
import { BODY_IDLE_MS } from '../../src/shared/http/timeouts.js';
import type { TunnelStream } from '../../src/shared/tunnel-mux.js';
import { drainInto, pumpInto } from '../../src/shared/tunnel-mux.js';
import { answerBodyError, type BodyLimits, limitedBody } from '../data-plane/body-limit.js';
import type { RequestRecord } from '../observability/event-bus.js';
import type { Intercept } from '../store/intercept-store.js';
import type { ClientTunnel } from './tunnel-hub.js';

/** What a request through the tunnel is to the logs and errors: which intercept, whose. */
export function interceptName(intercept: Intercept): string {
  return `intercept ${intercept.id} (${intercept.service}, tenant ${intercept.tenant}, held by ${intercept.holder})`;
}

/** How a tunnelled request is answered when Kelsingra answers it itself (a response, or a raw socket). */
export type Refuse = (
  status: number,
  code: ErrorCode,
  message: string,
  extra: Record<string, unknown>,
  headers?: Record<string, string>,
) => void;

/** What a tunnelled request (or upgraded connection) reports to logs and views when it ends. */
export function tunnelRecord(
  intercept: Intercept,
  requestId: string,
  method: string | undefined,
  path: string,
  startedAt: number,
  t0: number,
  outcome: Pick<RequestRecord, 'status' | 'bytesOut' | 'error' | 'upgrade'>,
): RequestRecord {
  return {
    type: 'request',
    interceptId: intercept.id,
    requestId,
    service: intercept.service,
    tenant: intercept.tenant,
    holder: intercept.holder,
    method: method ?? 'GET',
    path: maskSecretQuery(path),
    durationMs: performance.now() - t0,
    at: startedAt,
    ...outcome,
  };
}

/** The tunnel's limit, if it is at it: answered at once, never queued. */
export function refuseOverStreamLimit(tunnel: ClientTunnel, intercept: Intercept, fail: Refuse): boolean {
  const limit = tunnel.streamLimitReached();
  if (limit === undefined) return false;
  fail(
    503,
    'tunnel-streams-exhausted',
    `${interceptName(intercept)}: its tunnel already carries ${limit} requests at once, the server agent's limit (maxTunnelStreams)`,
    {
      intercept: intercept.id,
      maxTunnelStreams: limit,
      hint: 'retry when some have finished, or raise --max-tunnel-streams on the server agent',
    },
    { 'retry-after': '1' },
  );
  return true;
}

/** The header list without Host, which goes as the authority (the data plane already took out HTTP/2's pseudo-headers). */
export function tunnelHeaders(
  headers: string[],
  fallbackHost: string,
): { list: string[]; authority: string } {
  const list: string[] = [];
  let authority = '';
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i] as string;
    if (name === 'host') authority ||= headers[i + 1] as string;
    else list.push(name, headers[i + 1] as string);
  }
  return { list, authority: authority || fallbackHost };
}

/** A request's trailers as a flat list (HTTP/1 chunked or HTTP/2), if it had any. */
function trailersOf(req: InboundRequest): string[] | undefined {
  const raw = req.rawTrailers;
  return raw && raw.length > 0 ? lowerCaseNames(raw) : undefined;
}

export function forwardThroughTunnel(
  req: InboundRequest,
  res: OutboundResponse,
  tunnel: ClientTunnel,
  intercept: Intercept,
  path: string,
  headers: string[],
  timeoutMs: number,
  publish: (record: RequestRecord) => void,
  requestId: string,
  /** Largest request body passed on, and longest pause in it (0: no limit). */
  bodyLimits: BodyLimits = { maxBytes: 0, idleMs: 0 },
): void {
  const startedAt = Date.now();
  const t0 = performance.now();
  let bytesOut = 0;
  const fail: Refuse = (...refusal) => sendError(res, ...refusal);
  if (refuseOverStreamLimit(tunnel, intercept, fail)) return;

  const http2 = isHttp2(req);
  // A gRPC call has no Content-Length; over HTTP/2 a body is whatever follows the headers.
  const hasBody = hasRequestBody(req);
  const name = interceptName(intercept);
  const { list, authority } = tunnelHeaders(headers, intercept.service);
  // Hop-by-hop on HTTP/1, yet the one TE value HTTP/2 allows, and gRPC servers may insist on it.
  if (http2 && req.headers.te?.includes('trailers')) list.push('te', 'trailers');
  let stream: TunnelStream;
  try {
    stream = tunnel.request({
      kind: 'http',
      method: req.method ?? 'GET',
      path,
      authority,
      headers: list,
      intercept: intercept.id,
      http2,
      upgrade: false,
      body: hasBody,
      trailers: !http2 && hasBody && req.headers.trailer !== undefined,
    });
  } catch (err) {
    fail(
      502,
      'tunnel-unavailable',
      `${name}: the tunnel could not take the request: ${(err as Error).message}`,
      {
        intercept: intercept.id,
      },
    );
    return;
  }
  tunnel.probe();

  // Waiting for the developer's service to answer is bounded like any upstream; from the
  // response head on, the wait is for body bytes, bounded like pass-through's. Activity either
  // way (upload bytes too) keeps it from firing.
  let idle = setTimeout(() => {
    fail(
      504,
      'local-timeout',
      `${name}: the local service on port ${intercept.localPort} did not answer within ${timeoutMs} ms`,
      {
        intercept: intercept.id,
      },
    );
    stream.reset('cancel', 'no response in time');
  }, timeoutMs);

  stream.onHead = (head) => {
    clearTimeout(idle);
    idle = setTimeout(() => {
      stream.reset('cancel', 'the response body stalled');
      cutResponse(res);
    }, BODY_IDLE_MS);
    // The caller gets the id Kelsingra logged, whatever the local service answered.
    const responseHeaders = withRequestId(res, rawToObject(head.headers));
    if (http2 && !head.body) {
      // Headers set this way and no writeHead: Node sends them with END_STREAM, which is what
      // gRPC calls a trailers-only answer; after writeHead a client would wait for trailers.
      res.statusCode = head.status;
      for (const [n, v] of Object.entries(responseHeaders)) if (v !== undefined) res.setHeader(n, v);
      return;
    }
    writeHead(res, head.status, responseHeaders);
    drainInto(stream, res, (chunk) => {
      bytesOut += chunk.length;
      idle.refresh();
    });
  };
  stream.onEnd = (trailers) => {
    if (trailers) res.addTrailers(rawToObject(trailers) as Record<string, string>);
    res.end();
  };
  stream.onReset = (reason) => {
    clearTimeout(idle);
    // A reset mid-body cuts the caller's connection (or HTTP/2 stream): a truncated body must not look whole.
    if (res.headersSent) {
      cutResponse(res);
      return;
    }
    if (tunnel.missedHeartbeat) {
      fail(
        502,
        'tunnel-disconnected',
        `${name}: the client stopped answering heartbeats (asleep, stopped or cut off) with this request in flight; traffic falls back to the base service if it does not reconnect within its lease`,
        { intercept: intercept.id },
      );
      return;
    }
    fail(
      502,
      'tunnel-reset',
      `${name}: the tunnel stream was reset before a response (${reason.message ?? reason.code})`,
      {
        intercept: intercept.id,
      },
    );
  };
  stream.onClose = () => clearTimeout(idle);

  // The limited copy of the upload, when limits apply: its idle timer lives as long as it does.
  let limited: ReturnType<typeof limitedBody> | undefined;
  if (hasBody) {
    const onUpload = () => idle.refresh();
    if (bodyLimits.maxBytes > 0 || bodyLimits.idleMs > 0) {
      const body = limitedBody(bodyLimits);
      limited = body;
      // Past a limit the local service sees the stream reset, never a body that looks whole.
      body.once('error', (err) => {
        stream.reset('cancel', err.message);
        answerBodyError(req, res, err);
      });
      req.pipe(body);
      pumpInto(body, stream, () => trailersOf(req), onUpload);
    } else pumpInto(req, stream, () => trailersOf(req), onUpload);
    res.once('finish', () => {
      // As Node's HTTP/1 server does with a body nobody read: the rest of an upload the local
      // service answered without is read and dropped, so the caller finishes sending and its
      // HTTP/2 stream closes (else it waits on flow control, and the drain on it, forever).
      if (req.readableEnded) return;
      req.unpipe();
      req.removeAllListeners('data');
      req.resume();
    });
  }
  res.on('close', () => {
    // The caller is done either way: no timer of this request may outlive it (nor hold the
    // process: an unread upload's body-idle timer kept a stopped agent up for 30 s).
    clearTimeout(idle);
    limited?.destroy();
    const complete = responseComplete(res);
    // Also an upload still going after the response ended: the local service has answered it.
    if (!stream.closed) stream.reset('cancel', complete ? undefined : 'the caller went away');
    publish(
      tunnelRecord(intercept, requestId, req.method, path, startedAt, t0, {
        status: res.statusCode,
        bytesOut,
        error: complete ? undefined : 'connection closed before the response ended',
      }),
    );
  });
}
