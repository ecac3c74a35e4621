/**
 * The data port and the gateway serve HTTP/1.1 and HTTP/2 on one port: a handler gets either
 * Node's HTTP/1 request and response or the HTTP/2 compatibility ones, which share their API.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Http2ServerRequest, Http2ServerResponse } from 'node:http2';

export type InboundRequest = IncomingMessage | Http2ServerRequest;
export type OutboundResponse = ServerResponse | Http2ServerResponse;

/** Whether the caller spoke HTTP/2 (then the next hop is spoken to over HTTP/2 too). */
export function isHttp2(req: InboundRequest): req is Http2ServerRequest {
  return req.httpVersionMajor === 2;
}
