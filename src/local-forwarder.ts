/**
 * Serves one tunnelled request from the developer's local service: the HTTP/2 stream the
 * server opened becomes an HTTP/1.1 request to 127.0.0.1:<port>, and the response streams
 * back. Reports each finished request as an event for the request log.
 */
import http2, { type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import { PassThrough } from 'node:stream';
import { Pool } from 'undici';
import type { HttpStartEvent, RequestEvent } from './events.js';
import { pipeUnlessReset } from './h2-pipe.js';
import { AMBIGUOUS_HEADER, ambiguityRefusal, HeaderGuard, HTTP_GUARDED } from './header-twins.js';
import { forwardableResponseHeaders, fromHttp2, maskSecretHeaders, maskSecretQuery } from './http-headers.js';
import { ERROR_HEADER, INTERCEPT_HEADER } from './protocol.js';

export interface LocalTarget {
  service: string;
  tenant: string;
  port: number;
  host?: string;
  /** Put (masked) headers into request events; plain log lines do not show them. */
  withHeaders?: boolean;
}

/**
 * The server refuses twins before a request enters the tunnel; the client checks again, as the
 * local service is as likely as any to fold `x_tenant_id` into `x-tenant-id`. It does not know
 * the tenant header's name, but the server always sets it, so a twin of it comes as a pair.
 */
const guard = new HeaderGuard(HTTP_GUARDED);

export class LocalForwarder {
  private readonly pool: Pool;
  private nextRequest = 1;

  constructor(
    private readonly target: LocalTarget,
    private readonly onEvent: (event: HttpStartEvent | RequestEvent) => void,
  ) {
    // No cap on connections: each tunnelled stream needs one while its response lasts (HTTP/1.1),
    // and a capped pool made the rest wait past the server's timeout (a 504 naming no limit).
    // The HTTP/2 windows already bound each stream's memory.
    this.pool = new Pool(`http://${target.host ?? '127.0.0.1'}:${target.port}`, {
      keepAliveTimeout: 10_000,
      // The server agent bounds the wait for a response; this only stops a stuck socket living forever.
      headersTimeout: 10 * 60_000,
      bodyTimeout: 10 * 60_000,
    });
  }

  serve(stream: ServerHttp2Stream, h2headers: IncomingHttpHeaders): void {
    const startedAt = Date.now();
    const t0 = performance.now();
    const requestId = String(this.nextRequest++);
    // Stamped by the server on every stream; the session only hands over streams for its own
    // intercept, whose id changes if a restarted server makes it re-register.
    const interceptId = interceptIdOf(h2headers) ?? 'unknown';
    const method = String(h2headers[':method']);
    const path = String(h2headers[':path']);
    // Events reach logs and views: credentials in the query string are masked there.
    const shownPath = maskSecretQuery(path);
    let headersMs: number | undefined;
    this.onEvent({
      kind: 'http-start',
      requestId,
      interceptId,
      startedAt,
      method,
      path: shownPath,
    });
    const headers = fromHttp2(h2headers);
    const hasBody = !stream.readableEnded && !stream.endAfterHeaders;
    const abort = new AbortController();
    let bytesIn = 0;
    let bytesOut = 0;
    if (hasBody) stream.on('data', (c: Buffer) => (bytesIn += c.length));

    const finish = (
      status: number,
      responseHeaders: Record<string, string | string[] | undefined>,
      error?: string,
    ) => {
      this.onEvent({
        kind: 'http',
        requestId,
        interceptId,
        startedAt,
        method,
        path: shownPath,
        status,
        durationMs: performance.now() - t0,
        headersMs,
        bytesIn,
        bytesOut,
        error,
        ...(this.target.withHeaders
          ? {
              requestHeaders: maskSecretHeaders(headers),
              responseHeaders: maskSecretHeaders(responseHeaders),
            }
          : {}),
      });
    };

    const twin = guard.ambiguity(Object.keys(headers).flatMap((name) => [name, '']));
    if (twin) {
      const { message, extra } = ambiguityRefusal(twin);
      stream.on('error', () => {
        // The refusal is all the caller gets; an upload it was still sending goes nowhere.
      });
      const answer = answerError(stream, 400, AMBIGUOUS_HEADER, message, extra);
      bytesOut = answer.bytes;
      finish(400, answer.headers, `ambiguous header ${twin.header}`);
      return;
    }

    // The caller hung up (the server reset the stream): stop the local request too.
    stream.on('close', () => {
      if (stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) abort.abort();
    });
    stream.on('error', () => {
      // Surfaces as the 'close' above with a reset code; the local request is aborted there.
    });

    this.pool
      .request({ method, path, headers, body: hasBody ? uploadBody(stream) : null, signal: abort.signal })
      .then(({ statusCode, headers: resHeaders, body }) => {
        if (stream.destroyed) {
          body.destroy();
          finish(499, resHeaders, 'caller went away');
          return;
        }
        headersMs = performance.now() - t0;
        stream.respond({ ':status': statusCode, ...forwardableResponseHeaders(resHeaders) });
        body.on('data', (c: Buffer) => (bytesOut += c.length));
        body.pipe(stream);
        // destroy, not close(code): close() ends the writable side first, so the peer would see
        // END_STREAM (a clean, truncated body) before the RST_STREAM.
        body.on('error', (err) => stream.destroy(err));
        // Logged when the response is fully sent, even if the caller's upload is still unread.
        let reported = false;
        const report = (error?: string) => {
          if (reported) return;
          reported = true;
          finish(statusCode, resHeaders, error);
        };
        stream.once('finish', () => report());
        stream.once('close', () => report('stream reset before the response ended'));
      })
      .catch((err: Error & { code?: string }) => {
        if (abort.signal.aborted || stream.destroyed) {
          finish(499, {}, 'caller went away');
          return;
        }
        const where = `127.0.0.1:${this.target.port}`;
        const reason = err.code === 'ECONNREFUSED' ? 'connection refused — is it running?' : err.message;
        const answer = answerError(
          stream,
          502,
          'local-unreachable',
          `intercept ${interceptId} (${this.target.service}, tenant ${this.target.tenant}) could not reach the local service at ${where}: ${reason}`,
          { intercept: interceptId, localPort: this.target.port },
        );
        bytesOut = answer.bytes;
        finish(502, answer.headers, reason);
      });
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}

/** Kelsingra's own answer on a tunnelled stream, in the error envelope. */
function answerError(
  stream: ServerHttp2Stream,
  status: number,
  code: string,
  message: string,
  extra: Record<string, unknown>,
): { headers: Record<string, string>; bytes: number } {
  const body = JSON.stringify({ error: `Kelsingra: ${message}`, code, source: 'kelsingra', ...extra });
  const headers = { 'content-type': 'application/json; charset=utf-8', [ERROR_HEADER]: code };
  stream.respond({ ':status': status, ...headers });
  stream.end(body);
  return { headers, bytes: Buffer.byteLength(body) };
}

/**
 * undici destroys a body stream once it has read it; handing it the HTTP/2 stream itself would
 * reset the stream before the response could be written back on it. A reset upload must also
 * reach the local service as an error, never as a shorter body that ends cleanly.
 */
function uploadBody(stream: ServerHttp2Stream): PassThrough {
  const body = new PassThrough();
  pipeUnlessReset(stream, body);
  return body;
}

/** The intercept id the server stamped on a tunnelled request. */
export function interceptIdOf(headers: IncomingHttpHeaders): string | undefined {
  const id = headers[INTERCEPT_HEADER];
  return typeof id === 'string' ? id : undefined;
}
