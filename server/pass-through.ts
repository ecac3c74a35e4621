/**
 * Sends a request on to its service's normal upstream over a keep-alive pool, streaming
 * both bodies, and maps transport failures to 502/504.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Pool } from 'undici';
import { forwardableResponseHeaders } from '../src/http-headers.js';
import type { UpstreamHealth } from '../src/protocol.js';
import { sendError } from './error-response.js';
import type { RoutedService } from './routing.js';
import { BODY_IDLE_MS } from './timeouts.js';

export type { UpstreamHealth } from '../src/protocol.js';

/** How failures name the target: a service's upstream, or another replica. */
export interface TargetLabel {
  /** Fills "could not reach <what>" and "<what> did not answer". */
  what: string;
  /** Prefix of the error code: `upstream-unreachable`, `replica-timeout`… */
  code: string;
  extra: Record<string, unknown>;
}

export class PassThrough {
  private readonly pools = new Map<string, Pool>();
  private readonly health = new Map<string, { ok: number; err: number; error?: string }>();

  constructor(private readonly timeoutMs: number) {}

  private pool(service: RoutedService): Pool {
    let pool = this.pools.get(service.name);
    if (!pool) {
      pool = new Pool(service.upstream.origin, {
        connections: 512,
        keepAliveTimeout: 30_000,
        headersTimeout: this.timeoutMs,
        bodyTimeout: BODY_IDLE_MS,
        connectTimeout: Math.min(this.timeoutMs, 10_000),
      });
      this.pools.set(service.name, pool);
    }
    return pool;
  }

  forward(
    req: IncomingMessage,
    res: ServerResponse,
    service: RoutedService,
    path: string,
    headers: string[],
    label: TargetLabel = {
      what: `the ${service.name} upstream (${service.upstream.origin})`,
      code: 'upstream',
      extra: { service: service.name },
    },
  ): void {
    const hasBody =
      req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
    const basePath = service.upstream.pathname === '/' ? '' : service.upstream.pathname.replace(/\/$/, '');
    const state = this.stateFor(service.name);
    // A caller that hangs up before the answer frees the upstream connection at once, rather
    // than holding it until the upstream answers or the timeout fires.
    const abort = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) abort.abort();
    });
    this.pool(service).stream(
      {
        method: req.method as string,
        path: basePath + path,
        headers,
        body: hasBody ? req : null,
        signal: abort.signal,
      },
      ({ statusCode, headers: upstreamHeaders }) => {
        res.writeHead(statusCode, forwardableResponseHeaders(upstreamHeaders));
        return res;
      },
      (err) => {
        if (!err) {
          state.ok = Date.now();
          return;
        }
        state.err = Date.now();
        state.error = err.message;
        if (res.headersSent || req.destroyed) {
          res.destroy();
          return;
        }
        const code = (err as NodeJS.ErrnoException).code ?? '';
        if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT') {
          sendError(
            res,
            504,
            `${label.code}-timeout`,
            `${label.what} did not answer within ${this.timeoutMs} ms`,
            label.extra,
          );
        } else {
          sendError(
            res,
            502,
            `${label.code}-unreachable`,
            `could not reach ${label.what}: ${err.message}`,
            label.extra,
          );
        }
      },
    );
  }

  upstreams(services: RoutedService[]): UpstreamHealth[] {
    return services.map((svc) => {
      const s = this.health.get(svc.name);
      return {
        service: svc.name,
        url: svc.upstream.href,
        lastOkAt: s?.ok ? new Date(s.ok).toISOString() : undefined,
        lastError: s?.error,
        lastErrorAt: s?.err ? new Date(s.err).toISOString() : undefined,
      };
    });
  }

  async close(): Promise<void> {
    await Promise.all([...this.pools.values()].map((p) => p.close()));
  }

  private stateFor(name: string) {
    let s = this.health.get(name);
    if (!s) {
      s = { ok: 0, err: 0 };
      this.health.set(name, s);
    }
    return s;
  }
}
