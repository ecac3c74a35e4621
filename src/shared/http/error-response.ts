/**
 * Responses Kelsingra makes itself. Every one says it came from Kelsingra (body and
 * `x-kelsingra-error`), so nobody mistakes it for an answer from their service.
 */
import http, { type OutgoingHttpHeaders } from 'node:http';
import { constants as h2 } from 'node:http2';
import type { Duplex } from 'node:stream';
import { type ErrorCode, errorEnvelope } from '../error-codes.js';
import { ERROR_HEADER } from '../protocol.js';
import { grpcErrorHeaders, isGrpc } from './grpc-status.js';
import { type OutboundResponse, writeHead } from './http-types.js';
import { withRequestId } from './request-id.js';

/**
 * The code of each answer Kelsingra made itself, for metrics and logs: once headers are
 * written with writeHead, the response no longer tells its own header values.
 */
const errorCodes = new WeakMap<OutboundResponse, ErrorCode>();

/** The code of the error Kelsingra answered `res` with, if it did. */
export function errorCodeOf(res: OutboundResponse): ErrorCode | undefined {
  return errorCodes.get(res);
}

/** The HTTP status Kelsingra meant for gRPC callers, whose answers are all HTTP 200. */
const grpcStatuses = new WeakMap<OutboundResponse, number>();

/**
 * The status of Kelsingra's answer as metrics and logs count it: for a gRPC caller the HTTP
 * status it stands for (its answer says 200, with the gRPC status in grpc-status).
 */
export function answeredStatusOf(res: OutboundResponse): number {
  return grpcStatuses.get(res) ?? res.statusCode;
}

/**
 * A response cut after its head went out: an HTTP/2 stream is reset (INTERNAL_ERROR, which a
 * gRPC caller reports as INTERNAL, not a clean end), an HTTP/1 connection closed.
 */
export function cutResponse(res: OutboundResponse, code: number = h2.NGHTTP2_INTERNAL_ERROR): void {
  if ('stream' in res && res.stream && !res.stream.destroyed) res.stream.close(code);
  else res.destroy();
}

export function sendError(
  res: OutboundResponse,
  status: number,
  code: ErrorCode,
  message: string,
  extra: Record<string, unknown> = {},
  /** More response headers, such as Retry-After. */
  headers: OutgoingHttpHeaders = {},
): void {
  if (res.headersSent) {
    cutResponse(res);
    return;
  }
  errorCodes.set(res, code);
  const http2 = 'stream' in res;
  // HTTP/2 has no Connection header: its stream ends alone, and the connection goes on.
  if (http2 && 'connection' in headers) {
    headers = { ...headers };
    delete headers.connection;
  }
  // Read before anything else on the response: the caller decides how it reads errors.
  if (isGrpc(res.req?.headers['content-type'])) {
    const grpc = withRequestId(res, {
      ...headers,
      ...grpcErrorHeaders(status, `Kelsingra: ${message}`),
      [ERROR_HEADER]: code,
    });
    // Headers set, not written: end() then sends them alone with END_STREAM, the trailers-only
    // answer gRPC clients read a status from (after writeHead, an empty DATA frame would end
    // the stream instead, and grpc-js reports INTERNAL for want of trailers).
    grpcStatuses.set(res, status);
    res.statusCode = 200;
    for (const [name, value] of Object.entries(grpc)) if (value !== undefined) res.setHeader(name, value);
    res.end();
    return;
  }
  const body = errorEnvelope(code, message, extra);
  writeHead(
    res,
    status,
    withRequestId(res, {
      ...headers,
      'content-type': 'application/json; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      [ERROR_HEADER]: code,
    }),
  );
  res.end(body);
}

/** The same, written straight to a socket: for upgrade requests and unparsable ones. */
export function writeRawError(
  socket: Duplex,
  status: number,
  code: ErrorCode,
  message: string,
  extra: Record<string, unknown> = {},
  /** More response headers, such as Retry-After (names and values without CR or LF). */
  headers: Record<string, string> = {},
): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = errorEnvelope(code, message, extra);
  const more = Object.entries(headers)
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join('');
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n${more}content-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${ERROR_HEADER}: ${code}\r\nconnection: close\r\n\r\n${body}`,
  );
}
