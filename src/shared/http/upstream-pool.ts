/**
 * The backends of one upstream: round robin over those that are up, active health checks,
 * and passive ejection of a backend that refuses connections or keeps answering 502/503/504.
 *
 * A backend is `unknown` until a check passes (it takes traffic meanwhile), then `healthy` or
 * `unhealthy` by its checks, or `ejected` by the traffic sent to it. It takes `unhealthyAfter`
 * failed checks in a row to mark a backend unhealthy and `healthyAfter` passing ones to bring
 * it back. An ejected backend comes back when a check passes (without checks, after
 * EJECT_WITHOUT_CHECKS_MS).
 *
 * Passive ejection only ever trims a pool: the last backend up is never ejected, and when
 * every backend the checks have not condemned is ejected anyway (one was ejected, then the
 * checks took the others out), they all take traffic again (Envoy's panic mode). Traffic is a
 * guess about a backend's health; a health check is a verdict. So the pool answers "none up"
 * only when every backend failed its checks.
 */
import http2 from 'node:http2';
import { Agent, request } from 'undici';

/** Active health checks of a pool's backends (durations in ms). */
export interface HealthCheckSettings {
  /** Path asked with GET, under each backend's base path; any answer below 500 passes. */
  path: string;
  intervalMs: number;
  timeoutMs: number;
  unhealthyAfter: number;
  healthyAfter: number;
}

export type BackendState = 'healthy' | 'unhealthy' | 'ejected' | 'unknown';

export interface BackendStatus {
  url: string;
  state: BackendState;
  lastOkAt?: number;
  lastError?: string;
  lastErrorAt?: number;
  lastCheckAt?: number;
}

export interface Backend {
  /** The backend's URL, base path included. */
  readonly url: URL;
}

/**
 * Consecutive gateway failures (a 502, 503 or 504 answer, or no answer in time) after which
 * a backend is ejected.
 */
export const EJECT_AFTER_FAILURES = 5;

/**
 * Answers that say the backend itself is unwell (or the proxy in front of it cannot reach
 * it), as Envoy's consecutive_gateway_failure counts them. A 500 or any other status is the
 * application answering: a bug in one endpoint must not take the backend out for every
 * tenant's requests to every other endpoint.
 */
const GATEWAY_FAILURES = new Set([502, 503, 504]);

/** Without health checks, an ejected backend takes traffic again after this long. */
export const EJECT_WITHOUT_CHECKS_MS = 10_000;

interface BackendEntry extends Backend {
  state: BackendState;
  /** Consecutive passing / failing checks. */
  passes: number;
  fails: number;
  /** Consecutive gateway failures of forwarded requests. */
  failures: number;
  ejectedUntil: number;
  checking: boolean;
  /** Answered an HTTP/1 check with HTTP/2 (a gRPC server): checked over h2c from then on. */
  h2c?: boolean;
  lastOkAt?: number;
  lastError?: string;
  lastErrorAt?: number;
  lastCheckAt?: number;
}

export interface UpstreamPoolOptions {
  healthCheck: HealthCheckSettings | false;
  /** Take failing backends out of the rotation (default true). */
  eject?: boolean;
  /** Told when a backend changes state, with the reason. */
  onChange?: (backend: BackendStatus, previous: BackendState, reason: string) => void;
  now?: () => number;
}

export class UpstreamPool {
  private readonly entries: BackendEntry[];
  private readonly healthCheck: HealthCheckSettings | false;
  private readonly eject: boolean;
  private readonly onChange: UpstreamPoolOptions['onChange'];
  private readonly now: () => number;
  private next = 0;
  private timer?: NodeJS.Timeout;
  private agent?: Agent;
  private nextCheckAt = 0;
  private closed = false;

  constructor(urls: readonly URL[], options: UpstreamPoolOptions) {
    if (urls.length === 0) throw new Error('an upstream pool needs at least one backend');
    this.entries = urls.map((url) => ({
      url,
      state: 'unknown',
      passes: 0,
      fails: 0,
      failures: 0,
      ejectedUntil: 0,
      checking: false,
    }));
    this.healthCheck = options.healthCheck;
    this.eject = options.eject ?? true;
    this.onChange = options.onChange;
    this.now = options.now ?? Date.now;
  }

  get backends(): readonly Backend[] {
    return this.entries;
  }

  /** Starts the health checks (the first at once); nothing without checks or once started. */
  start(): void {
    const hc = this.healthCheck;
    if (!hc || this.timer || this.closed) return;
    this.agent = new Agent({
      connections: 1,
      // An https backend that speaks only HTTP/2 (a gRPC server) is checked over it, by ALPN.
      allowH2: true,
      connectTimeout: hc.timeoutMs,
      headersTimeout: hc.timeoutMs,
      bodyTimeout: hc.timeoutMs,
      keepAliveTimeout: Math.max(hc.intervalMs * 2, 1_000),
    });
    const tick = () => {
      this.nextCheckAt = this.now() + hc.intervalMs;
      for (const b of this.entries) void this.check(b, hc);
    };
    this.timer = setInterval(tick, hc.intervalMs);
    this.timer.unref();
    tick();
  }

  /**
   * The next backend that takes traffic, round robin, skipping `exclude` (one already tried).
   * When none is up, the ejected ones (panic mode). Undefined when every backend is
   * unhealthy by its checks.
   */
  pick(exclude?: Backend): Backend | undefined {
    const up = this.rotate(exclude, (b) => this.up(b));
    if (up || this.entries.some((b) => this.up(b))) return up;
    return this.rotate(exclude, (b) => b.state === 'ejected');
  }

  /** A forwarded request got an answer with this status. */
  answered(backend: Backend, statusCode: number): void {
    const b = backend as BackendEntry;
    if (GATEWAY_FAILURES.has(statusCode)) {
      this.failed(b, `answered ${statusCode}`);
      return;
    }
    b.failures = 0;
    if (statusCode < 500) b.lastOkAt = this.now();
  }

  /** A forwarded request got no answer within the upstream timeout: counts as a 504 would. */
  timedOut(backend: Backend, error: string): void {
    this.failed(backend as BackendEntry, error);
  }

  /** A forwarded request could not reach the backend (refused, reset, connect timeout…). */
  unreachable(backend: Backend, error: string): void {
    const b = backend as BackendEntry;
    b.lastError = error;
    b.lastErrorAt = this.now();
    if (b.state !== 'unhealthy') this.ejectBackend(b, error);
  }

  /** Whole seconds until a backend may take traffic again (the next check), at least 1. */
  retryAfterSeconds(): number {
    const now = this.now();
    let at: number;
    if (this.healthCheck) at = this.nextCheckAt || now;
    else {
      const until = this.entries.map((b) => b.ejectedUntil).filter((t) => t > now);
      at = until.length ? Math.min(...until) : now;
    }
    return Math.max(1, Math.ceil((at - now) / 1000));
  }

  status(): BackendStatus[] {
    return this.entries.map((b) => {
      this.up(b); // an ejection that ran out shows as over
      return this.view(b);
    });
  }

  close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    this.timer = undefined;
    return this.agent ? this.agent.close().catch(() => undefined) : Promise.resolve();
  }

  private up(b: BackendEntry): boolean {
    if (b.state === 'ejected' && !this.healthCheck && this.now() >= b.ejectedUntil) {
      this.setState(b, 'unknown', `${EJECT_WITHOUT_CHECKS_MS / 1000} s after its ejection`);
    }
    return b.state === 'healthy' || b.state === 'unknown';
  }

  private rotate(exclude: Backend | undefined, takes: (b: BackendEntry) => boolean): Backend | undefined {
    const n = this.entries.length;
    for (let i = 0; i < n; i++) {
      const b = this.entries[(this.next + i) % n] as BackendEntry;
      if (b === exclude || !takes(b)) continue;
      this.next = (this.next + i + 1) % n;
      return b;
    }
    return undefined;
  }

  private failed(b: BackendEntry, error: string): void {
    b.failures++;
    b.lastError = error;
    b.lastErrorAt = this.now();
    if (b.failures >= EJECT_AFTER_FAILURES && b.state !== 'unhealthy') {
      this.ejectBackend(b, `${b.failures} gateway failures in a row (last: ${error})`);
    }
  }

  private ejectBackend(b: BackendEntry, reason: string): void {
    if (!this.eject || b.state === 'ejected') return;
    // Out of rotation, the last one would turn its own answers (a 502 naming its error, or
    // the odd success) into Kelsingra's 503 for everyone until the next check.
    if (!this.entries.some((o) => o !== b && this.up(o))) return;
    b.passes = 0;
    b.failures = 0;
    b.ejectedUntil = this.now() + EJECT_WITHOUT_CHECKS_MS;
    this.setState(b, 'ejected', reason);
  }

  private async check(b: BackendEntry, hc: HealthCheckSettings): Promise<void> {
    if (b.checking || !this.agent) return;
    b.checking = true;
    let error: string | undefined;
    try {
      const base = b.url.pathname.replace(/\/$/, '');
      const url = new URL(base + hc.path, b.url.origin);
      let statusCode: number;
      if (b.h2c) statusCode = await h2cCheck(url, hc.timeoutMs);
      else {
        try {
          const answer = await request(url, {
            dispatcher: this.agent,
            method: 'GET',
            headers: { 'user-agent': 'kelsingra-health-check' },
            signal: AbortSignal.timeout(hc.timeoutMs),
          });
          await answer.body.dump();
          statusCode = answer.statusCode;
        } catch (err) {
          // An HTTP/2-only server (grpc-js, h2c) answers HTTP/1 with HTTP/2 frames: asked over
          // h2c instead, it is healthy if it answers (a gRPC server answers a GET with 200 or 4xx).
          if ((err as Error).name !== 'HTTPParserError' || b.url.protocol !== 'http:') throw err;
          statusCode = await h2cCheck(url, hc.timeoutMs);
          b.h2c = true;
        }
      }
      if (statusCode >= 500) error = `health check ${hc.path} answered ${statusCode}`;
    } catch (err) {
      const e = err as Error & { code?: string };
      error =
        e.name === 'TimeoutError' ||
        e.code === 'UND_ERR_CONNECT_TIMEOUT' ||
        e.code === 'UND_ERR_HEADERS_TIMEOUT'
          ? `health check ${hc.path} got no answer within ${hc.timeoutMs} ms`
          : `health check ${hc.path}: ${describeError(e)}`;
    } finally {
      b.checking = false;
    }
    if (this.closed) return;
    const now = this.now();
    b.lastCheckAt = now;
    if (error === undefined) {
      b.lastOkAt = now;
      b.fails = 0;
      b.passes++;
      if (
        b.state === 'ejected' ||
        b.state === 'unknown' ||
        (b.state === 'unhealthy' && b.passes >= hc.healthyAfter)
      ) {
        b.failures = 0;
        this.setState(b, 'healthy', 'its health check passed');
      }
    } else {
      b.lastError = error;
      b.lastErrorAt = now;
      b.passes = 0;
      b.fails++;
      if (b.state !== 'unhealthy' && b.fails >= hc.unhealthyAfter) {
        this.setState(b, 'unhealthy', error);
      }
    }
  }

  private setState(b: BackendEntry, state: BackendState, reason: string): void {
    if (b.state === state) return;
    const previous = b.state;
    b.state = state;
    this.onChange?.(this.view(b), previous, reason);
  }

  private view(b: BackendEntry): BackendStatus {
    return {
      url: b.url.href,
      state: b.state,
      lastOkAt: b.lastOkAt,
      lastError: b.lastError,
      lastErrorAt: b.lastErrorAt,
      lastCheckAt: b.lastCheckAt,
    };
  }
}

/** A GET over prior-knowledge h2c on its own short connection: the answer's status. */
function h2cCheck(url: URL, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(url.origin);
    const timer = setTimeout(() => {
      session.destroy();
      reject(Object.assign(new Error('no answer'), { name: 'TimeoutError' }));
    }, timeoutMs);
    const done = (err: Error | undefined, status?: number) => {
      clearTimeout(timer);
      session.close();
      if (err) reject(err);
      else resolve(status as number);
    };
    session.on('error', (err) => done(err));
    const stream = session.request({
      ':method': 'GET',
      ':path': `${url.pathname}${url.search}`,
      'user-agent': 'kelsingra-health-check',
    });
    stream.on('response', (h) => {
      stream.resume();
      done(undefined, Number(h[':status']));
    });
    stream.on('error', (err) => done(err));
  });
}

/** An error's message, with the code when the message does not say it (undici's often do not). */
export function describeError(err: Error & { code?: string }): string {
  const cause = (err as { cause?: Error & { code?: string } }).cause;
  const inner = cause?.message && cause.message !== err.message ? cause : undefined;
  const message = inner ? `${err.message} (${inner.message})` : err.message;
  const code = err.code ?? inner?.code;
  return code && !message.includes(code) ? `${code}: ${message}` : message || code || 'unknown error';
}

/** The config file's health check (seconds) as a pool takes it (ms). */
export function healthCheckFromConfig(
  hc:
    | { path: string; interval: number; timeout: number; unhealthyAfter: number; healthyAfter: number }
    | false,
): HealthCheckSettings | false {
  if (!hc) return false;
  return {
    path: hc.path,
    intervalMs: Math.round(hc.interval * 1000),
    timeoutMs: Math.round(hc.timeout * 1000),
    unhealthyAfter: hc.unhealthyAfter,
    healthyAfter: hc.healthyAfter,
  };
}
