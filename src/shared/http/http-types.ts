/**
 * The data port and the gateway serve HTTP/1.1 and HTTP/2 on one port: a handler gets either
 * Node's HTTP/1 request and response or the HTTP/2 compatibility ones, which share their API.
 */
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Http2ServerRequest, Http2ServerResponse } from 'node:http2';

export type InboundRequest = IncomingMessage | Http2ServerRequest;
export type OutboundResponse = ServerResponse | Http2ServerResponse;

/** Whether the caller spoke HTTP/2 (then the next hop is spoken to over HTTP/2 too). */
export function isHttp2(req: InboundRequest): req is Http2ServerRequest {
  return req.httpVersionMajor === 2;
}

/**
 * Whether the request has a body to pass on: HTTP/1 announces one (Content-Length or
 * Transfer-Encoding); an HTTP/2 request has one unless its HEADERS frame ended the stream
 * (gRPC sends no Content-Length).
 */
export function hasRequestBody(req: InboundRequest): boolean {
  if (isHttp2(req)) return !req.stream.endAfterHeaders;
  return req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
}

export { withoutPseudo } from './http-headers.js';

/**
 * `res.writeHead(status, headers)` for either kind of response: TypeScript cannot call a method
 * both overload differently, though both take this form.
 */
export function writeHead(res: OutboundResponse, status: number, headers: OutgoingHttpHeaders): void {
  (res as ServerResponse).writeHead(status, headers);
}

/**
 * Whether the whole response was handed over. Not `writableFinished` alone: the HTTP/2
 * compatibility response reports that true once its stream closes, reset by the caller or not.
 */
export function responseComplete(res: OutboundResponse): boolean {
  return 'stream' in res ? res.writableEnded : res.writableFinished;
}
