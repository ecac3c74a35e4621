/**
 * The ways a pass-through call goes to one backend besides undici's HTTP/1 pool: over HTTP/2
 * (a call that arrived over HTTP/2: gRPC, h2c) and over node:http (an HTTP/1 request that
 * announces trailers, which undici cannot send). Both stream each way, pass trailers both
 * ways, and turn either side hanging up into the other's cancel.
 */
import http, { type OutgoingHttpHeaders } from 'node:http';
import type http2 from 'node:http2';
import { constants } from 'node:http2';
import https from 'node:https';
import type { Readable, Writable } from 'node:stream';
import { cutResponse } from './error-response.js';
import { track } from './h2-sessions.js';
import { forwardableResponseHeaders, rawToObject } from './http-headers.js';
import {
  type InboundRequest,
  isHttp2,
  type OutboundResponse,
  responseComplete,
  withoutPseudo,
  writeHead,
} from './http-types.js';
import { withRequestId } from './request-id.js';
import { BODY_IDLE_MS } from './timeouts.js';
import type { Backend } from './upstream-pool.js';

/** One forwarded call, as pass-through prepared it. */
export interface UpstreamCall {
  req: InboundRequest;
  res: OutboundResponse;
  path: string;
  /** Forwardable request headers, flat, names in lowercase. */
  headers: string[];
  /** The request body (through the body limits), or null when there is none. */
  body: Readable | null;
  /** Aborted when the caller hangs up. */
  signal: AbortSignal;
  timeoutMs: number;
  /** The backend answered with this status. */
  answered(backend: Backend, status: number): void;
  /** The call failed; pass-through maps the error to an answer (or a cut), or retries. */
  failed(backend: Backend, err: Error, retried: boolean): void;
}

function timeoutError(ms: number): Error {
  return Object.assign(new Error(`no response headers within ${ms} ms`), { code: 'UND_ERR_HEADERS_TIMEOUT' });
}

function basePath(url: URL): string {
  return url.pathname === '/' ? '' : url.pathname.replace(/\/$/, '');
}

/** Trailer fields as they may be passed on: none of HTTP/2's pseudo-headers. */
function trailerFields(
  trailers: Record<string, string | string[] | undefined>,
): Record<string, string | string[]> {
  return withoutPseudo(trailers);
}

/**
 * Over HTTP/2 on a ready session: the call's headers become an HTTP/2 header block (`te:
 * trailers` kept, which gRPC servers require), resets are passed on with their code.
 */
export function sendOverHttp2(
  call: UpstreamCall,
  session: http2.ClientHttp2Session,
  backend: Backend,
  retried: boolean,
): void {
  const { req, res, body } = call;
  const h: OutgoingHttpHeaders = rawToObject(call.headers);
  const host = h.host;
  delete h.host;
  h[':method'] = req.method;
  h[':path'] = basePath(backend.url) + call.path;
  h[':authority'] = typeof host === 'string' && host !== '' ? host : backend.url.host;
  h[':scheme'] = backend.url.protocol === 'https:' ? 'https' : 'http';
  if (typeof req.headers.te === 'string' && req.headers.te.includes('trailers')) h.te = 'trailers';
  let stream: http2.ClientHttp2Stream;
  try {
    stream = session.request(h, {
      endStream: body === null,
      waitForTrailers: body !== null,
      signal: call.signal,
    });
  } catch (err) {
    call.failed(backend, err as Error, retried);
    return;
  }
  track(session, stream);
  let answered = false;
  let failed = false;
  const fail = (err: Error) => {
    if (failed) return;
    failed = true;
    clearTimeout(timer);
    if (!stream.destroyed) stream.close(constants.NGHTTP2_CANCEL);
    call.failed(backend, err, retried);
  };
  const timer = setTimeout(() => fail(timeoutError(call.timeoutMs)), call.timeoutMs);
  if (body) {
    stream.once('wantTrailers', () => stream.sendTrailers(trailerFields(req.trailers ?? {})));
    // Past a body limit (or the caller's reset) the upstream sees the stream cancelled, never a
    // truncated body that looks whole.
    body.once('error', (err: Error) => fail(err));
    body.pipe(stream);
  }
  stream.on('response', (headers, flags) => {
    answered = true;
    clearTimeout(timer);
    const status = Number(headers[':status']);
    call.answered(backend, status);
    const out = withRequestId(res, forwardableResponseHeaders(withoutPseudo(headers)));
    if (flags & constants.NGHTTP2_FLAG_END_STREAM) {
      // Trailers-only (a gRPC status with no message): passed on as one header block that
      // ends the stream, which is where gRPC clients read the status from then.
      res.statusCode = status;
      for (const [name, value] of Object.entries(out)) if (value !== undefined) res.setHeader(name, value);
      res.end();
      return;
    }
    writeHead(res, status, out);
    // Silence inside the response is cut as undici's bodyTimeout cuts it on HTTP/1.
    stream.setTimeout(BODY_IDLE_MS, () => stream.close(constants.NGHTTP2_CANCEL));
    stream.on('trailers', (trailers) => res.addTrailers(trailerFields(trailers)));
    stream.pipe(res as Writable);
  });
  stream.on('error', (err: Error) => {
    if (call.signal.aborted) return;
    if (!answered) fail(err);
  });
  stream.once('close', () => {
    clearTimeout(timer);
    if (call.signal.aborted || failed) return;
    const code = stream.rstCode ?? constants.NGHTTP2_NO_ERROR;
    // NO_ERROR after a whole answer only stops the upload the upstream does not need.
    if (code === constants.NGHTTP2_NO_ERROR && (stream.readableEnded || !answered)) {
      if (!answered) fail(new Error('the upstream closed the stream without an answer'));
      return;
    }
    if (!answered)
      fail(
        Object.assign(new Error(`the upstream reset the stream (HTTP/2 error ${code})`), {
          code: 'ECONNRESET',
        }),
      );
    // The caller sees the upstream's own reset, with its code (a gRPC client reads CANCEL, REFUSED_STREAM…).
    else if (!responseComplete(res))
      cutResponse(res, code === constants.NGHTTP2_NO_ERROR ? constants.NGHTTP2_INTERNAL_ERROR : code);
  });
}

/** Over node:http, for a request that announces trailers: they are sent after its body. */
export function sendWithTrailers(call: UpstreamCall, backend: Backend, retried: boolean): void {
  const { req, res, body } = call;
  const url = backend.url;
  const headers = [...call.headers, 'transfer-encoding', 'chunked'];
  const announced = req.headers.trailer;
  if (typeof announced === 'string') headers.push('trailer', announced);
  const out = (url.protocol === 'https:' ? https : http).request({
    host: url.hostname.replace(/^\[|\]$/g, ''),
    port: url.port || undefined,
    method: req.method,
    path: basePath(url) + call.path,
    headers,
    signal: call.signal,
    agent: false,
  });
  let done = false;
  const fail = (err: Error) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    out.destroy();
    call.failed(backend, err, retried);
  };
  const timer = setTimeout(() => fail(timeoutError(call.timeoutMs)), call.timeoutMs);
  out.on('error', (err) => {
    if (!call.signal.aborted) fail(err);
  });
  out.on('response', (up) => {
    clearTimeout(timer);
    done = true;
    const status = up.statusCode ?? 502;
    call.answered(backend, status);
    const outHeaders = forwardableResponseHeaders(up.headers);
    if (up.headers.trailer !== undefined && (isHttp2(req) || req.httpVersion === '1.1'))
      outHeaders.trailer = up.headers.trailer;
    writeHead(res, status, withRequestId(res, outHeaders));
    // Before pipe's own end listener: the trailers are added before the response ends.
    up.once('end', () => {
      if (Object.keys(up.trailers).length) res.addTrailers(up.trailers);
    });
    up.once('aborted', () => cutResponse(res));
    up.once('error', () => cutResponse(res));
    up.pipe(res as Writable);
  });
  if (!body) {
    out.end();
    return;
  }
  body.once('error', (err: Error) => fail(err));
  body.on('data', (chunk: Buffer) => {
    if (!out.write(chunk)) {
      body.pause();
      out.once('drain', () => body.resume());
    }
  });
  body.once('end', () => {
    // The caller's trailers are read once its body has ended.
    const trailers = req.trailers ?? {};
    if (Object.keys(trailers).length) out.addTrailers(trailerFields(trailers));
    out.end();
  });
}
