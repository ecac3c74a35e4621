/**
 * Sends one data-plane request through a developer's tunnel as an HTTP/2 stream and relays
 * the response. Either side hanging up cancels the other.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import http2, { type OutgoingHttpHeaders } from 'node:http2';
import { fromHttp2, rawToObject } from '../src/http-headers.js';
import { INTERCEPT_HEADER } from '../src/protocol.js';
import { sendError } from './error-response.js';
import type { Intercept } from './intercept-store.js';
import type { ClientTunnel } from './tunnel-hub.js';

const { NGHTTP2_CANCEL } = http2.constants;

export function forwardThroughTunnel(
  req: IncomingMessage,
  res: ServerResponse,
  tunnel: ClientTunnel,
  intercept: Intercept,
  path: string,
  headers: string[],
  timeoutMs: number,
): void {
  const h2headers: OutgoingHttpHeaders = rawToObject(headers);
  delete h2headers.host;
  h2headers[':method'] = req.method;
  h2headers[':path'] = path;
  h2headers[':authority'] = req.headers.host ?? intercept.service;
  h2headers[':scheme'] = 'http';
  h2headers[INTERCEPT_HEADER] = intercept.id;

  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  const name = `intercept ${intercept.id} (${intercept.service}, tenant ${intercept.tenant}, held by ${intercept.holder})`;
  let stream: http2.ClientHttp2Stream;
  try {
    stream = tunnel.session.request(h2headers, { endStream: !hasBody });
  } catch (err) {
    sendError(res, 502, 'tunnel-unavailable', `${name}: the tunnel could not take the request: ${(err as Error).message}`, {
      intercept: intercept.id,
    });
    return;
  }

  // Waiting for the developer's service to answer is bounded like any upstream.
  stream.setTimeout(timeoutMs, () => {
    if (!res.headersSent) {
      sendError(res, 504, 'local-timeout', `${name}: the local service on port ${intercept.localPort} did not answer within ${timeoutMs} ms`, {
        intercept: intercept.id,
      });
    }
    stream.close(NGHTTP2_CANCEL);
  });

  stream.on('response', (responseHeaders) => {
    stream.setTimeout(0);
    const status = Number(responseHeaders[':status']);
    res.writeHead(status, fromHttp2(responseHeaders));
    stream.pipe(res);
  });

  stream.on('close', () => {
    if (res.headersSent) {
      // A reset mid-body: the caller must not mistake a truncated body for a whole one.
      if (!res.writableFinished && stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) res.destroy();
      return;
    }
    sendError(res, 502, 'tunnel-reset', `${name}: the tunnel stream was reset before a response (code ${stream.rstCode})`, {
      intercept: intercept.id,
    });
  });
  stream.on('error', () => {
    // 'close' follows and answers the caller; the error itself carries nothing more for them.
  });

  if (hasBody) req.pipe(stream);
  res.on('close', () => {
    if (!res.writableFinished && !stream.closed) stream.close(NGHTTP2_CANCEL);
  });
}
