/**
 * Sends one data-plane request through a developer's tunnel as an HTTP/2 stream and relays
 * the response. Either side hanging up cancels the other.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type http2 from 'node:http2';
import type { OutgoingHttpHeaders } from 'node:http2';
import { pipeUnlessReset } from '../src/h2-pipe.js';
import { fromHttp2, maskSecretQuery, rawToObject } from '../src/http-headers.js';
import { INTERCEPT_HEADER } from '../src/protocol.js';
import { answerBodyError, type BodyLimits, limitedBody } from './body-limit.js';
import { sendError } from './error-response.js';
import type { RequestRecord } from './event-bus.js';
import type { Intercept } from './intercept-store.js';
import { withRequestId } from './request-id.js';
import { BODY_IDLE_MS } from './timeouts.js';
import type { ClientTunnel } from './tunnel-hub.js';

export function forwardThroughTunnel(
  req: IncomingMessage,
  res: ServerResponse,
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
  const h2headers: OutgoingHttpHeaders = rawToObject(headers);
  // The Host routing saw (a gateway call's is the dev host it named, not the control port's).
  const host = h2headers.host;
  delete h2headers.host;
  h2headers[':method'] = req.method;
  h2headers[':path'] = path;
  h2headers[':authority'] = typeof host === 'string' && host !== '' ? host : intercept.service;
  h2headers[':scheme'] = 'http';
  h2headers[INTERCEPT_HEADER] = intercept.id;

  const hasBody =
    req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  const name = `intercept ${intercept.id} (${intercept.service}, tenant ${intercept.tenant}, held by ${intercept.holder})`;
  const limit = tunnel.streamLimitReached();
  if (limit !== undefined) {
    sendError(
      res,
      503,
      'tunnel-streams-exhausted',
      `${name}: its tunnel already carries ${limit} requests at once, the server agent's limit (maxTunnelStreams)`,
      {
        intercept: intercept.id,
        maxTunnelStreams: limit,
        hint: 'retry when some have finished, or raise --max-tunnel-streams on the server agent',
      },
      { 'retry-after': '1' },
    );
    return;
  }
  let stream: http2.ClientHttp2Stream;
  // Aborting sends RST_STREAM(CANCEL) alone. stream.close(code) would first end the writable side,
  // so the local service could see END_STREAM (a truncated upload that looks whole) before the reset.
  const cancel = new AbortController();
  try {
    stream = tunnel.request(h2headers, { endStream: !hasBody, signal: cancel.signal });
  } catch (err) {
    sendError(
      res,
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

  // Our own timer rather than stream.setTimeout: when headers, body and END_STREAM arrive in one
  // read, Node emits 'response' after the stream has closed, and a stream.setTimeout there re-arms
  // a timer nothing clears, which held each request's stream, req and res for BODY_IDLE_MS.
  // Activity either way keeps it from firing, as it did that one.
  // Waiting for the developer's service to answer is bounded like any upstream.
  let idle = setTimeout(() => {
    if (!res.headersSent) {
      sendError(
        res,
        504,
        'local-timeout',
        `${name}: the local service on port ${intercept.localPort} did not answer within ${timeoutMs} ms`,
        {
          intercept: intercept.id,
        },
      );
    }
    cancel.abort();
  }, timeoutMs);

  stream.on('response', (responseHeaders) => {
    // From here the wait is for body bytes: bounded by the same idle limit as pass-through.
    clearTimeout(idle);
    idle = setTimeout(() => cancel.abort(), BODY_IDLE_MS);
    const status = Number(responseHeaders[':status']);
    // The caller gets the id Kelsingra logged, whatever the local service answered.
    res.writeHead(status, withRequestId(res, fromHttp2(responseHeaders)));
    stream.on('data', (chunk: Buffer) => {
      bytesOut += chunk.length;
      idle.refresh();
    });
    // A reset mid-body cuts the caller's connection: a truncated body must not look whole.
    pipeUnlessReset(stream, res);
  });

  stream.on('close', () => {
    clearTimeout(idle);
    if (res.headersSent) return;
    if (tunnel.missedHeartbeat) {
      sendError(
        res,
        502,
        'tunnel-disconnected',
        `${name}: the client stopped answering heartbeats (asleep, stopped or cut off) with this request in flight; traffic falls back to the base service if it does not reconnect within its lease`,
        { intercept: intercept.id },
      );
      return;
    }
    sendError(
      res,
      502,
      'tunnel-reset',
      `${name}: the tunnel stream was reset before a response (code ${stream.rstCode})`,
      {
        intercept: intercept.id,
      },
    );
  });
  stream.on('error', () => {
    // 'close' follows and answers the caller; the error itself carries nothing more for them.
  });

  if (hasBody && (bodyLimits.maxBytes > 0 || bodyLimits.idleMs > 0)) {
    const body = limitedBody(bodyLimits);
    // Past a limit the local service sees the stream reset, never a body that looks whole.
    body.once('error', (err) => {
      cancel.abort();
      answerBodyError(req, res, err);
    });
    req.pipe(body).pipe(stream);
  } else if (hasBody) req.pipe(stream);
  if (hasBody) req.on('data', () => idle.refresh());
  res.on('close', () => {
    const complete = res.writableFinished;
    if (!complete && !stream.closed) cancel.abort();
    publish({
      type: 'request',
      interceptId: intercept.id,
      requestId,
      service: intercept.service,
      tenant: intercept.tenant,
      holder: intercept.holder,
      method: req.method ?? 'GET',
      path: maskSecretQuery(path),
      status: res.statusCode,
      durationMs: performance.now() - t0,
      bytesOut,
      at: startedAt,
      error: complete ? undefined : 'connection closed before the response ended',
    });
  });
}
