/**
 * Responses Kelsingra makes itself. Every one says it came from Kelsingra (body and
 * `x-kelsingra-error`), so nobody mistakes it for an answer from their service.
 */
import type { ServerResponse } from 'node:http';
import { ERROR_HEADER } from '../src/protocol.js';

export function sendError(
  res: ServerResponse,
  status: number,
  code: string,
  message: string,
  extra: Record<string, unknown> = {},
): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ error: `Kelsingra: ${message}`, code, source: 'kelsingra', ...extra });
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    [ERROR_HEADER]: code,
  });
  res.end(body);
}
