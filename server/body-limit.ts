/**
 * The data port's limit on request bodies (`maxBodyBytes`). Bodies stream, so memory is not
 * what it protects: it keeps accidental or hostile uploads from reaching services. A body
 * announced too large (Content-Length) is refused before a byte of it is read; one that
 * streams (chunked) is counted as it flows, and the upstream sees the upload aborted, never
 * a truncated body that looks whole.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { PassThrough, Transform } from 'node:stream';
import { sendError } from './error-response.js';

export class BodyTooLarge extends Error {
  override readonly name = 'BodyTooLarge';
  constructor(readonly limit: number) {
    super(`request body over ${limit} bytes`);
  }
}

const HINT =
  'the server agent passes on request bodies up to maxBodyBytes (--max-body-bytes); send less, or ask the platform team to raise it';

/** The size Content-Length announces, when it is more than `max` (0: no limit). */
export function announcedTooLarge(req: IncomingMessage, max: number): number | undefined {
  const length = Number(req.headers['content-length']);
  return max > 0 && Number.isFinite(length) && length > max ? length : undefined;
}

/** Answers 413 when Content-Length announces more than `max`; true when it did. */
export function refuseAnnouncedBody(req: IncomingMessage, res: ServerResponse, max: number): boolean {
  const length = announcedTooLarge(req, max);
  if (length === undefined) return false;
  // The body was never read (with Expect: 100-continue, never even sent): the connection
  // cannot be reused for a next request, so it closes after the answer.
  sendError(
    res,
    413,
    'body-too-large',
    `the request body (${length} bytes) is larger than this server agent passes on (${max} bytes)`,
    { limit: max, hint: HINT },
    { connection: 'close' },
  );
  return true;
}

/** What the body is piped through on its way on: fails with BodyTooLarge at the first chunk past `max`. */
export function limitedBody(max: number): Transform {
  if (max <= 0) return new PassThrough();
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      seen += chunk.length;
      if (seen > max) done(new BodyTooLarge(max));
      else done(null, chunk);
    },
  });
}

/**
 * After the body went past the limit (the upstream's upload is already aborted): a 413 if the
 * caller has no answer yet, else the response is cut, as any failure mid-response is.
 */
export function answerTooLarge(req: IncomingMessage, res: ServerResponse, err: BodyTooLarge): void {
  // The rest of the upload goes nowhere; reading it while the answer goes out keeps the
  // connection from being reset under the answer.
  req.unpipe();
  req.resume();
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  sendError(
    res,
    413,
    'body-too-large',
    `the request body went past ${err.limit} bytes, the most this server agent passes on; the upload was stopped`,
    { limit: err.limit, hint: HINT },
    { connection: 'close' },
  );
}
