/**
 * The gateway's own answers, marked so a caller can tell them from the dev service's: a JSON
 * body `{ error, code, source: 'kelsingra', … }` and the `x-kelsingra-error` header.
 */
import http, { type ServerResponse } from 'node:http';
import type { Http2ServerResponse } from 'node:http2';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { type ErrorCode, errorEnvelope } from '../../shared/error-codes.js';
import { grpcErrorHeaders, isGrpc } from '../../shared/http/grpc-status.js';
import { ERROR_HEADER } from '../../shared/protocol.js';

/** Answers `res` with a Kelsingra error; returns the body size (0 when only a reset was left). */
export function sendJson(
  res: ServerResponse | Http2ServerResponse,
  status: number,
  code: ErrorCode,
  message: string,
  extra: Record<string, unknown> = {},
  headers: Record<string, string> = {},
): number {
  const body = errorEnvelope(code, message, extra);
  // Half a response already went out: all the caller can still learn is that it broke off.
  if (res.headersSent) {
    res.destroy();
    return 0;
  }
  // A gRPC caller reads a status, not a page: a trailers-only answer (headers set, then end()
  // sends them alone, ending the stream).
  if (isGrpc(res.req?.headers['content-type'])) {
    const grpc = { ...headers, ...grpcErrorHeaders(status, `Kelsingra: ${message}`), [ERROR_HEADER]: code };
    res.statusCode = 200;
    for (const [name, value] of Object.entries(grpc)) res.setHeader(name, value);
    res.end();
    return 0;
  }
  (res as ServerResponse).writeHead(status, {
    ...headers,
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    [ERROR_HEADER]: code,
  });
  res.end(body);
  return Buffer.byteLength(body);
}

/** The same on a socket no ServerResponse owns (CONNECT, upgrades, unparsable requests). */
export function writeRaw(socket: Duplex | Socket, status: number, code: ErrorCode, message: string): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = errorEnvelope(code, message);
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${ERROR_HEADER}: ${code}\r\nconnection: close\r\n\r\n${body}`,
  );
}
