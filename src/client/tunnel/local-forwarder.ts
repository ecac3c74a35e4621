/**
 * Serves tunnelled requests from the developer's local service: each stream the server
 * opened becomes a request to 127.0.0.1:<port> — HTTP/1.1 on a keep-alive pool, HTTP/2 (h2c)
 * when the caller spoke HTTP/2 (gRPC), an upgraded connection for an Upgrade (WebSocket) —
 * and the response streams back, trailers included. Reports each request as an event.
 *
 * Over 400 lines on purpose: the three ways a stream is served share one stream lifecycle
 * (window, reset, timeout) and one event report, which is what keeps them reported alike.
 */

import http from 'node:http';
import http2, { type ClientHttp2Session } from 'node:http2';
import { PassThrough } from 'node:stream';
import { type Dispatcher, Pool } from 'undici';
import { type ErrorCode, errorEnvelope } from '../../shared/error-codes.js';
import { grpcErrorHeaders, isGrpc } from '../../shared/http/grpc-status.js';
import { Http2Sessions, track } from '../../shared/http/h2-sessions.js';
import {
  AMBIGUOUS_HEADER,
  ambiguityRefusal,
  HeaderGuard,
  HTTP_GUARDED,
} from '../../shared/http/header-twins.js';
import {
  forwardableResponseHeaders,
  lowerCaseNames,
  maskSecretHeaders,
  maskSecretQuery,
  objectToRaw,
  rawToObject,
  withoutPseudo,
} from '../../shared/http/http-headers.js';
import { isWebSocketUpgrade } from '../../shared/http/ws-frames.js';
import { ERROR_HEADER, INTERCEPT_HEADER } from '../../shared/protocol.js';
import { drainInto, type TunnelStream } from '../../shared/tunnel-mux.js';
import type { OpenHead } from '../../shared/tunnel-wire.js';
import type { HttpStartEvent, RequestEvent, WebSocketEvent } from '../intercept/events.js';
import { LocalUpgrade } from './local-upgrade.js';

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

type Headers = Record<string, string | string[] | undefined>;

/** What one request reports when it is over. */
interface Outcome {
  status: number;
  headers: Headers;
  error?: string;
}

export class LocalForwarder {
  private readonly pool: Pool;
  private readonly origin: string;
  /** One HTTP/2 connection to the local service for every HTTP/2 call; made again if it closes. */
  private readonly h2 = new Http2Sessions(10_000);
  private readonly url: URL;
  private readonly upgrades = new Set<LocalUpgrade>();
  private nextRequest = 1;

  constructor(
    private readonly target: LocalTarget,
    private readonly onEvent: (event: HttpStartEvent | RequestEvent | WebSocketEvent) => void,
  ) {
    this.origin = `http://${target.host ?? '127.0.0.1'}:${target.port}`;
    this.url = new URL(this.origin);
    // No cap on connections: each tunnelled stream needs one while its response lasts (HTTP/1.1),
    // and a capped pool made the rest wait past the server's timeout (a 504 naming no limit).
    // The tunnel's credit already bounds each stream's memory.
    this.pool = new Pool(this.origin, {
      keepAliveTimeout: 10_000,
      // The server agent bounds the wait for a response; this only stops a stuck socket living forever.
      headersTimeout: 10 * 60_000,
      bodyTimeout: 10 * 60_000,
    });
  }

  serve(stream: TunnelStream, head: OpenHead): void {
    const startedAt = Date.now();
    const t0 = performance.now();
    const requestId = String(this.nextRequest++);
    const interceptId = head.intercept;
    // Events reach logs and views: credentials in the query string are masked there.
    const shownPath = maskSecretQuery(head.path);
    // The local service (and its logs) can tell which intercept brought the request; a caller's
    // own header of that name does not pass.
    for (let i = head.headers.length - 2; i >= 0; i -= 2)
      if (head.headers[i] === INTERCEPT_HEADER) head.headers.splice(i, 2);
    head.headers.push(INTERCEPT_HEADER, head.intercept);
    // As an object only for what needs one (details in views, the gRPC and upgrade checks): not per plain request.
    const requestHeaders = () => rawToObject(head.headers) as Headers;
    let headersMs: number | undefined;
    let bytesIn = 0;
    let bytesOut = 0;
    this.onEvent({
      kind: 'http-start',
      requestId,
      interceptId,
      startedAt,
      method: head.method,
      path: shownPath,
      // Views show an upgraded connection as open rather than as a request waiting for its answer.
      ...(head.upgrade
        ? {
            upgrade: isWebSocketUpgrade(requestHeaders().upgrade as string | undefined)
              ? 'websocket'
              : 'upgrade',
          }
        : {}),
    });
    const report = ({ status, headers, error }: Outcome) =>
      this.onEvent({
        kind: 'http',
        requestId,
        interceptId,
        startedAt,
        method: head.method,
        path: shownPath,
        status,
        durationMs: performance.now() - t0,
        headersMs,
        bytesIn,
        bytesOut,
        error,
        ...(this.target.withHeaders
          ? {
              requestHeaders: maskSecretHeaders(requestHeaders()),
              responseHeaders: maskSecretHeaders(headers),
            }
          : {}),
      });
    const grpc = head.http2 && isGrpc(requestHeaders()['content-type']);
    const refuse = (
      status: number,
      code: ErrorCode,
      message: string,
      extra: Record<string, unknown>,
      error: string,
    ) => {
      const answer = answerError(stream, grpc, status, code, message, extra);
      bytesOut = answer.bytes;
      report({ status: answer.status, headers: answer.headers, error });
    };

    const twin = guard.ambiguity(head.headers);
    if (twin) {
      const { message, extra } = ambiguityRefusal(twin);
      refuse(400, AMBIGUOUS_HEADER, message, extra, `ambiguous header ${twin.header}`);
      return;
    }
    const unreachable = (err: Error & { code?: string }) => {
      const where = `127.0.0.1:${this.target.port}`;
      const reason = err.code === 'ECONNREFUSED' ? 'connection refused — is it running?' : err.message;
      refuse(
        502,
        'local-unreachable',
        `intercept ${interceptId} (${this.target.service}, tenant ${this.target.tenant}) could not reach the local service at ${where}: ${reason}`,
        { intercept: interceptId, localPort: this.target.port },
        reason,
      );
    };
    const counted = {
      in: (n: number) => {
        bytesIn += n;
      },
      out: (n: number) => {
        bytesOut += n;
      },
      headers: () => {
        headersMs = performance.now() - t0;
      },
    };

    if (head.upgrade) {
      const upgrade = new LocalUpgrade(this.target, stream, head, (event) => {
        this.upgrades.delete(upgrade);
        this.onEvent({ ...event, requestId, interceptId, startedAt, path: shownPath });
      });
      this.upgrades.add(upgrade);
      upgrade.start(unreachable);
      return;
    }
    if (head.http2 && !this.h2.http1Only(this.url)) {
      // Taken from the tunnel at once, while the connection to the local service is made.
      const trailers: { list?: string[] } = {};
      const body = head.body ? uploadBody(stream, counted.in, (t) => (trailers.list = t)) : null;
      this.h2.acquire(this.url, (r) => {
        if (r.kind === 'h2')
          this.serveHttp2(stream, head, r.session, body, trailers, counted, report, unreachable);
        // A local service that speaks HTTP/1.1 only still serves HTTP/2 callers (not gRPC ones).
        else if (r.kind === 'http1') this.serveHttp1(stream, head, counted, report, unreachable, body);
        else unreachable(r.error);
      });
    } else if (head.trailers) this.serveWithTrailers(stream, head, counted, report, unreachable);
    else this.serveHttp1(stream, head, counted, report, unreachable);
  }

  /** HTTP/1.1 on the keep-alive pool, driven by callbacks: no stream objects per request. */
  private serveHttp1(
    stream: TunnelStream,
    head: OpenHead,
    counted: Counters,
    report: (outcome: Outcome) => void,
    unreachable: (err: Error) => void,
    taken?: PassThrough | null,
  ): void {
    const body = taken !== undefined ? taken : head.body ? uploadBody(stream, counted.in) : null;
    let controller: Dispatcher.DispatchController | undefined;
    let status = 0;
    let responseHeaders: Headers = {};
    stream.onReset = () => {
      // The caller hung up: stop the local request too.
      controller?.abort(new Error('the caller went away'));
      body?.destroy();
    };
    this.pool.dispatch(
      { method: head.method, path: head.path, headers: [...head.headers, 'host', head.authority], body },
      {
        onRequestStart: (c) => {
          controller = c;
          if (stream.closed) c.abort(new Error('the caller went away'));
        },
        onResponseStart: (c, statusCode, headers) => {
          if (statusCode < 200) return;
          counted.headers();
          status = statusCode;
          responseHeaders = headers as Headers;
          stream.respond({ status, headers: objectToRaw(forwardableResponseHeaders(headers)), body: true });
          stream.onDrain = () => c.resume();
        },
        onResponseData: (c, chunk) => {
          counted.out(chunk.length);
          if (!stream.write(chunk)) c.pause();
        },
        onResponseEnd: (_c, trailers) => {
          stream.end(objectToRaw(trailers as Headers));
          report({ status, headers: responseHeaders });
        },
        onResponseError: (_c, err) => {
          body?.destroy();
          if (stream.closed) report({ status: 499, headers: responseHeaders, error: 'caller went away' });
          else if (status === 0) unreachable(err);
          else {
            // Mid-body: the caller's connection is cut, so a truncated body is never taken for a whole one.
            stream.reset('error', `the local service failed mid-response: ${err.message}`);
            report({ status, headers: responseHeaders, error: err.message });
          }
        },
      },
    );
  }

  /**
   * A request that announced trailers (a `Trailer` header): undici cannot send request
   * trailers, Node's HTTP client can. Rare enough that its slower path costs nothing overall.
   */
  private serveWithTrailers(
    stream: TunnelStream,
    head: OpenHead,
    counted: Counters,
    report: (outcome: Outcome) => void,
    unreachable: (err: Error) => void,
  ): void {
    const url = new URL(this.origin);
    const req = http.request({
      host: url.hostname,
      port: url.port,
      method: head.method,
      path: head.path,
      headers: [...head.headers, 'host', head.authority],
    });
    req.on('error', (err) => {
      if (!stream.closed) unreachable(err);
      else report({ status: 499, headers: {}, error: 'caller went away' });
    });
    stream.onReset = () => req.destroy();
    req.on('response', (res) => {
      counted.headers();
      stream.respond({
        status: res.statusCode ?? 502,
        headers: objectToRaw(forwardableResponseHeaders(res.headers)),
        body: true,
      });
      pumpResponse(res, stream, counted.out, () => res.rawTrailers);
      res.once('end', () => report({ status: res.statusCode ?? 502, headers: res.headers }));
      stream.onReset = () => res.destroy();
    });
    drainInto(stream, req, (chunk) => counted.in(chunk.length));
    stream.onEnd = (trailers) => {
      if (trailers) req.addTrailers(rawToObject(trailers) as Record<string, string>);
      req.end();
    };
  }

  /** HTTP/2 to the local service, for callers that spoke it (gRPC needs it: trailers, streaming both ways). */
  private serveHttp2(
    stream: TunnelStream,
    head: OpenHead,
    session: ClientHttp2Session,
    body: PassThrough | null,
    upload: { list?: string[] },
    counted: Counters,
    report: (outcome: Outcome) => void,
    unreachable: (err: Error) => void,
  ): void {
    if (stream.closed) {
      body?.destroy();
      report({ status: 499, headers: {}, error: 'caller went away' });
      return;
    }
    const headers: http2.OutgoingHttpHeaders = {
      ...rawToObject(head.headers),
      ':method': head.method,
      ':path': head.path,
      ':authority': head.authority,
      ':scheme': 'http',
    };
    let req: http2.ClientHttp2Stream;
    try {
      req = session.request(headers, { endStream: !body, waitForTrailers: body !== null });
    } catch (err) {
      unreachable(err as Error);
      return;
    }
    track(session, req);
    let status = 0;
    let responseHeaders: Headers = {};
    let answered = false;
    req.on('wantTrailers', () => req.sendTrailers(upload.list ? rawToObject(upload.list) : {}));
    body?.pipe(req);
    // The caller hung up (a deadline, a cancel): the local call is cancelled too.
    stream.onReset = () => {
      body?.destroy();
      req.close(http2.constants.NGHTTP2_CANCEL);
    };
    req.on('response', (h, flags) => {
      counted.headers();
      status = Number(h[':status']);
      responseHeaders = withoutPseudo(h);
      // A gRPC error often comes as headers alone with END_STREAM (trailers-only): passed on as such.
      const endsHere = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0;
      stream.respond({ status, headers: objectToRaw(responseHeaders), body: !endsHere });
      answered = true;
    });
    let trailers: string[] | undefined;
    req.on('trailers', (t) => {
      trailers = objectToRaw(withoutPseudo(t));
    });
    req.on('data', (chunk: Buffer) => {
      counted.out(chunk.length);
      if (!stream.write(chunk)) req.pause();
    });
    stream.onDrain = () => req.resume();
    req.on('end', () => {
      if (!stream.sentEnd) stream.end(trailers);
    });
    req.on('error', (err) => {
      if (!answered && !stream.closed) unreachable(err);
    });
    req.on('close', () => {
      // The local service may answer before reading the whole upload: what is left is dropped.
      body?.destroy();
      const code = req.rstCode ?? http2.constants.NGHTTP2_NO_ERROR;
      if (stream.closed) {
        if (!answered) report({ status: 499, headers: {}, error: 'caller went away' });
        else report({ status, headers: responseHeaders });
        return;
      }
      if (!answered) return; // 'error' answered the caller
      if (code !== http2.constants.NGHTTP2_NO_ERROR || !stream.sentEnd) {
        stream.reset('error', `the local service reset the HTTP/2 stream (code ${code})`);
        report({ status, headers: responseHeaders, error: `reset by the local service (code ${code})` });
      } else report({ status, headers: responseHeaders });
    });
  }

  /**
   * Leaving: every WebSocket still open is closed cleanly, with 1001 (going away) to both its
   * caller and the local service, and the connections end once both have answered (at most a second).
   */
  async closeUpgrades(): Promise<void> {
    await Promise.all([...this.upgrades].map((u) => u.goAway()));
  }

  async close(): Promise<void> {
    for (const upgrade of this.upgrades) upgrade.destroy();
    this.h2.close();
    await this.pool.close();
  }
}

interface Counters {
  in: (bytes: number) => void;
  out: (bytes: number) => void;
  headers: () => void;
}

/** Kelsingra's own answer on a tunnelled stream: the error envelope, or a gRPC status to a gRPC caller. */
function answerError(
  stream: TunnelStream,
  grpc: boolean,
  status: number,
  code: ErrorCode,
  message: string,
  extra: Record<string, unknown>,
): { status: number; headers: Record<string, string>; bytes: number } {
  if (grpc) {
    const headers = { ...grpcErrorHeaders(status, `Kelsingra: ${message}`), [ERROR_HEADER]: code };
    stream.respond({ status: 200, headers: objectToRaw(headers), body: false });
    return { status: 200, headers, bytes: 0 };
  }
  const body = errorEnvelope(code, message, extra);
  const headers = { 'content-type': 'application/json; charset=utf-8', [ERROR_HEADER]: code };
  stream.respond({ status, headers: objectToRaw(headers), body: true });
  stream.write(Buffer.from(body));
  stream.end();
  return { status, headers, bytes: Buffer.byteLength(body) };
}

/**
 * The upload as undici reads it: a body stream fed from the tunnel, crediting the server as
 * undici takes it. A reset upload reaches the local service as an error, never as a shorter
 * body that ends cleanly.
 */
function uploadBody(
  stream: TunnelStream,
  onBytes: (bytes: number) => void,
  onTrailers?: (trailers: string[] | undefined) => void,
): PassThrough {
  const body = new PassThrough();
  drainInto(stream, body, (chunk) => onBytes(chunk.length));
  body.once('close', () => {
    if (stream.gotEnd || stream.closed) return;
    // The local service answered without reading all of the upload, and its client dropped the
    // body: the rest is credited and dropped (as Node's HTTP server does), or the caller's
    // upload would wait for credit forever and the stream never close. 'drain' credits what
    // drainInto held back for the body.
    body.emit('drain');
    stream.onData = (chunk) => stream.consumed(chunk.length);
  });
  stream.onEnd = (trailers) => {
    onTrailers?.(trailers);
    body.end();
  };
  return body;
}

/** A Node response's body onto the stream, paused while the server has given no credit. */
function pumpResponse(
  res: http.IncomingMessage,
  stream: TunnelStream,
  onBytes: (bytes: number) => void,
  trailers: () => string[],
): void {
  res.on('data', (chunk: Buffer) => {
    onBytes(chunk.length);
    if (!stream.write(chunk)) res.pause();
  });
  stream.onDrain = () => res.resume();
  res.once('end', () => {
    const raw = trailers();
    stream.end(raw.length > 0 ? lowerCaseNames(raw) : undefined);
  });
  res.once('error', (err) => stream.reset('error', err.message));
}
