/**
 * Responses Kelsingra makes itself. Every one says it came from Kelsingra (body and
 * `x-kelsingra-error`), so nobody mistakes it for an answer from their service.
 */
import http, { type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { ERROR_HEADER } from '../src/protocol.js';
import { withRequestId } from './request-id.js';

/**
 * The code of each answer Kelsingra made itself, for metrics and logs: once headers are
 * written with writeHead, the response no longer tells its own header values.
 */
const errorCodes = new WeakMap<ServerResponse, string>();

/** The code of the error Kelsingra answered `res` with, if it did. */
export function errorCodeOf(res: ServerResponse): string | undefined {
  return errorCodes.get(res);
}

function errorBody(code: string, message: string, extra: Record<string, unknown>): string {
  return JSON.stringify({ error: `Kelsingra: ${message}`, code, source: 'kelsingra', ...extra });
}

export function sendError(
  res: ServerResponse,
  status: number,
  code: string,
  message: string,
  extra: Record<string, unknown> = {},
  /** More response headers, such as Retry-After. */
  headers: OutgoingHttpHeaders = {},
): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = errorBody(code, message, extra);
  errorCodes.set(res, code);
  res.writeHead(
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
  code: string,
  message: string,
  extra: Record<string, unknown> = {},
  /** More response headers, such as Retry-After (names and values without CR or LF). */
  headers: Record<string, string> = {},
): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = errorBody(code, message, extra);
  const more = Object.entries(headers)
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join('');
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n${more}content-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${ERROR_HEADER}: ${code}\r\nconnection: close\r\n\r\n${body}`,
  );
}
