/**
 * Sends a request on to its service's normal upstream over keep-alive pools, streaming both
 * bodies. An upstream may be several backends (an UpstreamPool: round robin, health checks,
 * ejection); transport failures map to 502/504, and a pool with no backend up to 503.
 *
 * Pools of registered targets (services, routes) live from register() to release(). Others
 * are made on first use (a relay to another replica, a route forwarded to after its release)
 * and closed once idle, so replicas that come and go do not each leave a pool behind.
 *
 * Over 400 lines on purpose: it is the hot path of every request not intercepted, and pool
 * lifetime, forwarding and the error mapping are kept where a profile reads them together.
 */

import type { IncomingHttpHeaders } from 'node:http';
import type { Transform, Writable } from 'node:stream';
import { type Dispatcher, Pool } from 'undici';
import { cutResponse, sendError } from '../../src/shared/http/error-response.js';
import { Http2Sessions } from '../../src/shared/http/h2-sessions.js';
import { forwardableResponseHeaders } from '../../src/shared/http/http-headers.js';
import {
  hasRequestBody,
  type InboundRequest,
  isHttp2,
  type OutboundResponse,
  responseComplete,
  writeHead,
} from '../../src/shared/http/http-types.js';
import { withRequestId } from '../../src/shared/http/request-id.js';
import { BODY_IDLE_MS } from '../../src/shared/http/timeouts.js';
import { sendOverHttp2, sendWithTrailers, type UpstreamCall } from '../../src/shared/http/upstream-call.js';
import {
  type Backend,
  type BackendState,
  type BackendStatus,
  describeError,
  type HealthCheckSettings,
  UpstreamPool,
} from '../../src/shared/http/upstream-pool.js';
import type { UpstreamHealth } from '../../src/shared/protocol.js';
import { answerBodyError, type BodyLimits, limitedBody } from './body-limit.js';

export type { HealthCheckSettings } from '../../src/shared/http/upstream-pool.js';
export type { UpstreamHealth } from '../../src/shared/protocol.js';

/** Where pass-through traffic goes: a name (for messages and /status) and its backends. */
export interface UpstreamTarget {
  name: string;
  /** Each backend's URL; its path is a base path put in front of the request's. */
  upstreams: URL[];
  /** false: no checks and no ejection (a relay to one peer replica); failures are plain 502/504. */
  healthCheck: HealthCheckSettings | false;
  /** false: calls that arrived over HTTP/2 still go on over HTTP/1.1 (default: HTTP/2 goes on as HTTP/2). */
  http2?: boolean;
}

/** How failures name the target: a service's upstream, or another replica. */
export interface TargetLabel {
  /** Fills "could not reach <what>" and "<what> did not answer". */
  what: string;
  /** Prefix of the error code: `upstream-unreachable`, `replica-timeout`… */
  code: 'upstream' | 'replica' | 'route';
  extra: Record<string, unknown>;
}

/** One row of /status per backend, state always set. */
export type BackendHealth = UpstreamHealth & { state: BackendState };

/** Errors that mean the request never reached the backend's application (or its socket died first). */
const CONNECT_ERRORS = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_SOCKET',
]);

const RETRY_SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

interface PoolEntry {
  pool: UpstreamPool;
  /** Registrations per target name; none for a pool made on first use. */
  names: Map<string, number>;
  /** Requests forwarded and not yet answered: an idle sweep must not close their connections. */
  active: number;
  lastUsedAt: number;
}

export interface PassThroughOptions {
  /** An unregistered target's pool is closed after this long without a request (default 5 min). */
  adHocIdleMs?: number;
  /** Largest request body passed on, in bytes (0 or absent: no limit). */
  maxBodyBytes?: number;
  /** Longest pause allowed between request body bytes, in ms (0 or absent: no limit). */
  bodyIdleMs?: number;
}

/** Long enough that a relay to a peer replica keeps its connections between bursts. */
const AD_HOC_IDLE_MS = 5 * 60_000;

interface Logger {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

function poolKey(target: UpstreamTarget): string {
  const hc = target.healthCheck;
  const checks = hc
    ? `${hc.path} ${hc.intervalMs} ${hc.timeoutMs} ${hc.unhealthyAfter} ${hc.healthyAfter}`
    : 'none';
  return `${target.upstreams.map((u) => u.href).join(' ')} | ${checks}`;
}

export class PassThroughProxy {
  /** undici pools, one per backend origin, shared by every upstream pool that uses it. */
  private readonly connections = new Map<string, Pool>();
  private readonly pools = new Map<string, PoolEntry>();
  private readonly adHocIdleMs: number;
  private readonly bodyLimits: BodyLimits;
  /** HTTP/2 connections to backends, for calls that arrived over HTTP/2. */
  private readonly h2: Http2Sessions;
  private sweeper?: NodeJS.Timeout;

  constructor(
    private readonly timeoutMs: number,
    private readonly log?: Logger,
    options: PassThroughOptions = {},
  ) {
    this.adHocIdleMs = options.adHocIdleMs ?? AD_HOC_IDLE_MS;
    this.bodyLimits = { maxBytes: options.maxBodyBytes ?? 0, idleMs: options.bodyIdleMs ?? 0 };
    this.h2 = new Http2Sessions(Math.min(timeoutMs, 10_000));
  }

  /**
   * A configured target: its pool starts its health checks now, so /status shows health
   * before the first request. Targets with the same backends (and checks) share one pool.
   */
  register(target: UpstreamTarget): void {
    const entry = this.entry(target);
    entry.names.set(target.name, (entry.names.get(target.name) ?? 0) + 1);
  }

  /** Undoes one register(); a pool nobody registers any more stops its checks and closes. */
  release(target: UpstreamTarget): void {
    const key = poolKey(target);
    const entry = this.pools.get(key);
    const count = entry?.names.get(target.name);
    if (!entry || count === undefined) return;
    if (count > 1) entry.names.set(target.name, count - 1);
    else entry.names.delete(target.name);
    if (entry.names.size === 0) this.closeEntry(key, entry);
  }

  /** The backend the next request would go to (round robin), for traffic that does not pass through forward(). */
  pick(target: UpstreamTarget): URL | undefined {
    const entry = this.entry(target);
    entry.lastUsedAt = Date.now();
    return entry.pool.pick()?.url;
  }

  forward(
    req: InboundRequest,
    res: OutboundResponse,
    target: UpstreamTarget,
    path: string,
    headers: string[],
    label: TargetLabel = {
      what: `the ${target.name} upstream`,
      code: 'upstream',
      extra: { service: target.name },
    },
  ): void {
    const hasBody = hasRequestBody(req);
    const retrySafe = !hasBody && RETRY_SAFE_METHODS.has(req.method ?? '');
    const entry = this.entry(target);
    const { pool } = entry;
    entry.lastUsedAt = Date.now();
    // Before anything reads the body: an answer of our own must find it still unread, to drain.
    const first = pool.pick();
    if (!first) {
      this.noneUp(req, res, target, pool, label);
      return;
    }
    entry.active++;
    // A caller that hangs up before the answer frees the upstream connection at once, rather
    // than holding it until the upstream answers or the timeout fires.
    const abort = new AbortController();
    res.once('close', () => {
      entry.active--;
      entry.lastUsedAt = Date.now();
      if (!responseComplete(res)) abort.abort();
      // An upload the upstream answered without reading would keep its body-idle timer (and the
      // process, once stopped) for up to the idle timeout.
      body?.destroy();
    });

    // undici destroys the body it was given when the request fails; given `req` itself, that
    // would hang up on the caller before it hears why. A request with a body is never retried,
    // so one wrapper serves.
    let body: Transform | null = null;
    if (hasBody) {
      body = limitedBody(this.bodyLimits);
      req.pipe(body);
      req.once('error', (err) => body?.destroy(err));
    }
    const http2 = isHttp2(req) && target.http2 !== false;
    // undici cannot send request trailers: a request that announces them goes by node:http.
    const trailers = !http2 && hasBody && req.headers.trailer !== undefined;

    const failed = (backend: Backend, err: Error, retried: boolean) => {
      // Past a body limit the upload is aborted already; the caller hears why.
      if (answerBodyError(req, res, err)) return;
      const origin = backend.url.origin;
      const where = label.what.includes(origin) ? label.what : `${label.what} (${origin})`;
      const code = (err as NodeJS.ErrnoException).code ?? '';
      const message = describeError(err);
      const connectError = CONNECT_ERRORS.has(code) && !abort.signal.aborted;
      const timedOut = code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT';
      if (connectError) pool.unreachable(backend, message);
      else if (timedOut && !abort.signal.aborted)
        pool.timedOut(backend, `no answer within ${this.timeoutMs} ms`);
      if (res.headersSent || res.destroyed || abort.signal.aborted) {
        cutResponse(res);
        return;
      }
      if (body) {
        // The rest of the upload goes nowhere; read it so the connection stays usable.
        req.unpipe(body);
        req.resume();
      }
      if (connectError) {
        const other = retrySafe && !retried ? pool.pick(backend) : undefined;
        if (other) {
          attempt(other, true);
          return;
        }
      }
      if (timedOut) {
        sendError(res, 504, `${label.code}-timeout`, `${where} did not answer within ${this.timeoutMs} ms`, {
          ...label.extra,
          backend: backend.url.href,
        });
      } else {
        sendError(res, 502, `${label.code}-unreachable`, `could not reach ${where}: ${message}`, {
          ...label.extra,
          backend: backend.url.href,
        });
      }
    };

    const call: UpstreamCall = {
      req,
      res,
      path,
      headers,
      body,
      signal: abort.signal,
      timeoutMs: this.timeoutMs,
      answered: (backend, status) => pool.answered(backend, status),
      failed,
    };
    const viaHttp1 = (backend: Backend, retried: boolean) => {
      if (trailers) sendWithTrailers(call, backend, retried);
      else this.viaUndici(call, backend, retried);
    };
    const attempt = (backend: Backend, retried: boolean) => {
      if (!http2) return viaHttp1(backend, retried);
      this.h2.acquire(backend.url, (r) => {
        if (abort.signal.aborted) return;
        if (r.kind === 'h2') sendOverHttp2(call, r.session, backend, retried);
        else if (r.kind === 'http1') viaHttp1(backend, retried);
        else failed(backend, r.error, retried);
      });
    };

    attempt(first, false);
  }

  private viaUndici(call: UpstreamCall, backend: Backend, retried: boolean): void {
    const { req } = call;
    this.connection(backend.url).dispatch(
      {
        method: req.method as Dispatcher.HttpMethod,
        path: basePath(backend.url) + call.path,
        headers: call.headers,
        body: call.body,
      },
      new UpstreamReply(call, backend, retried),
    );
  }

  /**
   * One row per backend of each target, in order: the given ones (those not registered yet
   * show as unknown), or without an argument every registered one.
   */
  upstreams(
    targets?: readonly Pick<UpstreamTarget, 'name' | 'upstreams' | 'healthCheck'>[],
  ): BackendHealth[] {
    const rows = (name: string, list: BackendStatus[]) => list.map((b) => healthRow(name, b));
    if (targets) {
      return targets.flatMap((t) => {
        const entry = this.pools.get(poolKey(t));
        return rows(
          t.name,
          entry ? entry.pool.status() : t.upstreams.map((u) => ({ url: u.href, state: 'unknown' })),
        );
      });
    }
    return [...this.pools.values()].flatMap((e) => {
      const status = e.pool.status();
      return [...e.names.keys()].flatMap((name) => rows(name, status));
    });
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    this.sweeper = undefined;
    const pools = [...this.pools.values()].map((e) => e.pool.close());
    const connections = [...this.connections.values()].map((p) => p.close());
    this.pools.clear();
    this.connections.clear();
    this.h2.close();
    await Promise.all([...pools, ...connections]);
  }

  private noneUp(
    req: InboundRequest,
    res: OutboundResponse,
    target: UpstreamTarget,
    pool: UpstreamPool,
    label: TargetLabel,
  ): void {
    // An unread body stalls the connection once its buffers fill: the client, still sending,
    // never reads the 503, and its next request on that keep-alive connection waits forever.
    // Reading it to the end keeps the connection usable (a close instead could reset it before
    // the client has read the answer).
    req.resume();
    const retryAfter = pool.retryAfterSeconds();
    const backends = pool.status();
    const n = backends.length;
    const each = backends
      .map((b) => `${b.url} is ${b.state}${b.lastError ? ` (${b.lastError})` : ''}`)
      .join('; ');
    const when = target.healthCheck ? 'checks them again' : 'tries them again';
    sendError(
      res,
      503,
      'no-healthy-backend',
      `no healthy backend for ${label.what}: ${n === 1 ? 'its only backend is down' : `none of its ${n} backends is up`}: ${each}. Kelsingra ${when} in ${retryAfter} s`,
      {
        ...label.extra,
        retryAfter,
        backends: backends.map((b) => ({ url: b.url, state: b.state, lastError: b.lastError })),
        ...(target.healthCheck && {
          hint: `every backend failed its health check (GET ${target.healthCheck.path}, which must answer below 500 within ${target.healthCheck.timeoutMs} ms); start the service, or point healthCheck.path at an endpoint that answers`,
        }),
      },
      { 'retry-after': String(retryAfter) },
    );
  }

  private entry(target: UpstreamTarget): PoolEntry {
    const key = poolKey(target);
    let entry = this.pools.get(key);
    if (!entry) {
      const checks = target.healthCheck;
      const pool = new UpstreamPool(target.upstreams, {
        healthCheck: checks,
        onChange: (b, previous, reason) => {
          const names = [...(this.pools.get(key)?.names.keys() ?? [target.name])].join(', ');
          const fields = { upstream: names, backend: b.url, state: b.state, previous, reason };
          if (b.state === 'healthy' || b.state === 'unknown')
            this.log?.info(fields, 'upstream backend back in rotation');
          else this.log?.warn(fields, `upstream backend ${b.state}`);
        },
      });
      entry = { pool, names: new Map(), active: 0, lastUsedAt: Date.now() };
      this.pools.set(key, entry);
      pool.start();
      this.sweepLater();
    }
    return entry;
  }

  /** Closes the pools of unregistered targets that have been idle for adHocIdleMs. */
  private sweepLater(): void {
    if (this.sweeper) return;
    this.sweeper = setInterval(
      () => {
        const now = Date.now();
        let adHoc = 0;
        for (const [key, e] of this.pools) {
          if (e.names.size > 0) continue;
          if (e.active === 0 && now - e.lastUsedAt >= this.adHocIdleMs) this.closeEntry(key, e);
          else adHoc++;
        }
        if (adHoc === 0) {
          clearInterval(this.sweeper);
          this.sweeper = undefined;
        }
      },
      Math.max(10, Math.min(this.adHocIdleMs / 2, 60_000)),
    );
    this.sweeper.unref();
  }

  /** Stops a pool's checks and closes the connections to backends no other pool uses. */
  private closeEntry(key: string, entry: PoolEntry): void {
    this.pools.delete(key);
    void entry.pool.close();
    const inUse = new Set([...this.pools.values()].flatMap((e) => e.pool.backends.map((b) => b.url.origin)));
    for (const b of entry.pool.backends) {
      const conn = this.connections.get(b.url.origin);
      if (conn && !inUse.has(b.url.origin)) {
        this.connections.delete(b.url.origin);
        void conn.close().catch(() => undefined);
      }
    }
  }

  private connection(url: URL): Pool {
    let pool = this.connections.get(url.origin);
    if (!pool) {
      // No cap on connections: with one, a tenant's held requests (slow uploads, long polls)
      // queue every other tenant's behind them. What one caller may hold is the data port's
      // per-tenant share (TenantShare) instead.
      pool = new Pool(url.origin, {
        connections: null,
        keepAliveTimeout: 30_000,
        headersTimeout: this.timeoutMs,
        bodyTimeout: BODY_IDLE_MS,
        connectTimeout: Math.min(this.timeoutMs, 10_000),
      });
      this.connections.set(url.origin, pool);
    }
    return pool;
  }
}

function basePath(url: URL): string {
  return url.pathname === '/' ? '' : url.pathname.replace(/\/$/, '');
}

function healthRow(service: string, b: BackendStatus): BackendHealth {
  const iso = (t?: number) => (t ? new Date(t).toISOString() : undefined);
  return {
    service,
    url: b.url,
    state: b.state,
    lastOkAt: iso(b.lastOkAt),
    lastError: b.lastError,
    lastErrorAt: iso(b.lastErrorAt),
    lastCheckAt: iso(b.lastCheckAt),
  };
}

/**
 * One request's answer from undici, written straight to the caller: `dispatch` with a handler
 * object costs less per request than `stream()` and its wrapper (issue 17, item 5).
 */
class UpstreamReply implements Dispatcher.DispatchHandler {
  private controller?: Dispatcher.DispatchController;
  /** The response announced trailers: they are added before it ends. */
  private trailers = false;
  private readonly call: UpstreamCall;
  private readonly backend: Backend;
  private readonly retried: boolean;

  constructor(call: UpstreamCall, backend: Backend, retried: boolean) {
    this.call = call;
    this.backend = backend;
    this.retried = retried;
  }

  /** The caller hung up: undici lets go of the upstream connection at once. */
  private readonly abort = () => this.controller?.abort(new Error('the caller went away'));

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    const { signal } = this.call;
    if (signal.aborted) controller.abort(new Error('the caller went away'));
    else signal.addEventListener('abort', this.abort, { once: true });
  }

  onResponseStart(
    controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: Record<string, string | string[] | undefined>,
  ): void {
    // An informational answer (103 Early Hints, 100 Continue): the final one is still to come.
    if (statusCode < 200) return;
    const { call } = this;
    const { req, res } = call;
    call.answered(this.backend, statusCode);
    const out = forwardableResponseHeaders(headers as IncomingHttpHeaders);
    // A response that announces trailers ends only once they are added (undici hands them
    // over after the body); an HTTP/1.0 caller cannot take them.
    const announced = headers.trailer;
    if (announced !== undefined && (isHttp2(req) || req.httpVersion === '1.1')) {
      out.trailer = Array.isArray(announced) ? announced.join(', ') : announced;
      this.trailers = true;
    }
    // The caller gets the id Kelsingra logged, whatever the upstream answered.
    writeHead(res, statusCode, withRequestId(res, out));
    if (res.destroyed) controller.abort(new Error('the caller went away'));
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    const res = this.call.res as Writable;
    if (res.destroyed || res.write(chunk)) return;
    controller.pause();
    res.once('drain', () => controller.resume());
  }

  onResponseEnd(
    _controller: Dispatcher.DispatchController,
    trailers: Record<string, string | string[] | undefined>,
  ): void {
    this.call.signal.removeEventListener('abort', this.abort);
    const { res } = this.call;
    if (this.trailers && trailers) res.addTrailers(trailers as Record<string, string>);
    res.end();
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    this.call.signal.removeEventListener('abort', this.abort);
    this.call.failed(this.backend, err, this.retried);
  }
}
