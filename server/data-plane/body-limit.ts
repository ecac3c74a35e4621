/**
 * The data port's limits on request bodies. Size (`maxBodyBytes`): bodies stream, so memory
 * is not what it protects: it keeps accidental or hostile uploads from reaching services. A
 * body announced too large (Content-Length) is refused before a byte of it is read; one that
 * streams (chunked) is counted as it flows, and the upstream sees the upload aborted, never
 * a truncated body that looks whole. Silence (`bodyIdleTimeout`, nginx's client_body_timeout):
 * a caller that stops sending mid-body would otherwise hold its upstream request for as long
 * as it likes; past the idle time the upload is aborted the same way.
 */
import { PassThrough, Transform } from 'node:stream';
import { cutResponse, sendError } from '../../src/shared/http/error-response.js';
import type { InboundRequest, OutboundResponse } from '../../src/shared/http/http-types.js';

export class BodyTooLarge extends Error {
  override readonly name = 'BodyTooLarge';
  constructor(readonly limit: number) {
    super(`request body over ${limit} bytes`);
  }
}

/** The caller sent nothing of its body for `idleMs` while Kelsingra was waiting for it. */
export class BodyIdle extends Error {
  override readonly name = 'BodyIdle';
  constructor(readonly idleMs: number) {
    super(`no request body bytes for ${idleMs} ms`);
  }
}

/** What limitedBody enforces (0: that limit is off). */
export interface BodyLimits {
  maxBytes: number;
  idleMs: number;
}

const HINT =
  'the server agent passes on request bodies up to maxBodyBytes (--max-body-bytes); send less, or ask the platform team to raise it';

/** The size Content-Length announces, when it is more than `max` (0: no limit). */
export function announcedTooLarge(req: InboundRequest, max: number): number | undefined {
  const length = Number(req.headers['content-length']);
  return max > 0 && Number.isFinite(length) && length > max ? length : undefined;
}

/** Answers 413 when Content-Length announces more than `max`; true when it did. */
export function refuseAnnouncedBody(req: InboundRequest, res: OutboundResponse, max: number): boolean {
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

/**
 * What the body is piped through on its way on: fails with BodyTooLarge at the first chunk
 * past `maxBytes`, and with BodyIdle once the caller has sent nothing for `idleMs`.
 */
export function limitedBody({ maxBytes, idleMs }: BodyLimits): Transform {
  if (maxBytes <= 0 && idleMs <= 0) return new PassThrough();
  let seen = 0;
  let timer: NodeJS.Timeout | undefined;
  const body = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      timer?.refresh();
      seen += chunk.length;
      if (maxBytes > 0 && seen > maxBytes) done(new BodyTooLarge(maxBytes));
      else done(null, chunk);
    },
    flush(done) {
      clearTimeout(timer);
      done();
    },
    destroy(err, done) {
      clearTimeout(timer);
      done(err);
    },
  });
  if (idleMs > 0) {
    timer = setTimeout(() => {
      // Bytes still held here mean the upstream is not reading: the wait is its, not the caller's.
      if (body.writableLength > 0 || body.readableLength > 0) timer?.refresh();
      else body.destroy(new BodyIdle(idleMs));
    }, idleMs);
  }
  return body;
}

/**
 * After limitedBody failed (the upstream's upload is already aborted): a 413 or 408 if the
 * caller has no answer yet, else the response is cut, as any failure mid-response is. False
 * when `err` is not one of its errors.
 */
export function answerBodyError(req: InboundRequest, res: OutboundResponse, err: unknown): boolean {
  if (!(err instanceof BodyTooLarge) && !(err instanceof BodyIdle)) return false;
  // The rest of the upload goes nowhere; reading it while the answer goes out keeps the
  // connection from being reset under the answer.
  req.unpipe();
  req.resume();
  if (res.headersSent || res.destroyed) {
    cutResponse(res);
    return true;
  }
  if (err instanceof BodyTooLarge)
    sendError(
      res,
      413,
      'body-too-large',
      `the request body went past ${err.limit} bytes, the most this server agent passes on; the upload was stopped`,
      { limit: err.limit, hint: HINT },
      { connection: 'close' },
    );
  else
    sendError(
      res,
      408,
      'body-timeout',
      `the request body stopped arriving: nothing came for ${err.idleMs / 1000} s (bodyIdleTimeout), so the upload was stopped`,
      {
        limit: err.idleMs / 1000,
        hint: 'the server agent waits up to bodyIdleTimeout (--body-idle-timeout) seconds between body bytes; send the body without pauses, or ask the platform team to raise it',
      },
      { connection: 'close' },
    );
  return true;
}
