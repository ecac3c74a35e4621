/**
 * The CLI's side of the control-plane REST API. Turns HTTP failures into errors that say
 * what went wrong and what to do about it.
 */
import { request } from 'undici';
import { z } from 'zod';
import type { ErrorCode } from '../../shared/error-codes.js';
import { ExitCode, KelsingraError } from '../../shared/errors.js';
import type { WireMessage } from '../../shared/kafka-wire.js';
import {
  type CreatedIntercept,
  CreatedInterceptSchema,
  HOLDER_HEADER,
  type InterceptView,
  InterceptViewSchema,
  type RemoveRoutesResult,
  RemoveRoutesResultSchema,
  type RouteView,
  RouteViewSchema,
  type ServerInfo,
  ServerInfoSchema,
  type ServerStatus,
  ServerStatusSchema,
  type SetRouteResult,
  SetRouteResultSchema,
} from '../../shared/protocol.js';
import { clockTime } from '../intercept/request-log.js';
import { tlsHint } from './tls-trust.js';

const TIMEOUT_MS = 10_000;

const HealthSchema = z.looseObject({ ok: z.boolean(), version: z.string() });
const RemovedSchema = z.looseObject({ removed: z.array(InterceptViewSchema) });
const ProducedSchema = z.looseObject({ produced: z.number() });

export class ApiClient {
  constructor(
    readonly server: string,
    private readonly token: string,
    /** Named in the server's audit trail for the changes this client makes. */
    private readonly holder?: string,
  ) {}

  health(): Promise<{ ok: boolean; version: string }> {
    return this.call('GET', '/healthz', HealthSchema);
  }

  status(): Promise<ServerStatus> {
    return this.call('GET', '/status', ServerStatusSchema);
  }

  /** What the client agent needs to know of the server: routing-key header and baggage key, preview URLs. */
  info(): Promise<ServerInfo> {
    return this.call('GET', '/v1/info', ServerInfoSchema);
  }

  list(): Promise<InterceptView[]> {
    return this.call('GET', '/v1/intercepts', z.array(InterceptViewSchema));
  }

  create(body: {
    service: string;
    tenant: string;
    clientId: string;
    previousId?: string;
    localPort: number;
    kafka?: { topics?: string[] };
  }): Promise<CreatedIntercept> {
    return this.call('POST', '/v1/intercepts', CreatedInterceptSchema, body);
  }

  /** Produces messages into a dev topic as the intercept's tenant (the server sets the tenant header). */
  forwardKafka(intercept: string, topic: string, messages: WireMessage[]): Promise<{ produced: number }> {
    return this.call('POST', '/v1/kafka/forward', ProducedSchema, { intercept, topic, messages });
  }

  remove(id: string): Promise<{ removed: InterceptView[] }> {
    return this.call('DELETE', `/v1/intercepts/${encodeURIComponent(id)}`, RemovedSchema);
  }

  removeWhere(query: {
    service?: string;
    tenant?: string;
    holder?: string;
  }): Promise<{ removed: InterceptView[] }> {
    const params = new URLSearchParams(
      Object.entries(query).filter((e): e is [string, string] => e[1] !== undefined),
    );
    return this.call('DELETE', `/v1/intercepts?${params}`, RemovedSchema);
  }

  /** Tenant routes (`kelsingra route …`), of one service or all. */
  listRoutes(service?: string): Promise<RouteView[]> {
    return this.call(
      'GET',
      `/v1/routes${service ? `?${new URLSearchParams({ service })}` : ''}`,
      z.array(RouteViewSchema),
    );
  }

  /** The route for (service, targets) now names exactly these tenants; they move out of other routes. */
  setRoute(body: {
    service: string;
    tenants: string[];
    targets: string[];
    replace?: boolean;
  }): Promise<SetRouteResult> {
    return this.call('PUT', '/v1/routes', SetRouteResultSchema, body);
  }

  removeRoute(id: string): Promise<RemoveRoutesResult> {
    return this.call('DELETE', `/v1/routes/${encodeURIComponent(id)}`, RemoveRoutesResultSchema);
  }

  /** Deletes a service's routes (to `target`), or with `tenants` takes those tenants out of them. */
  removeRoutesWhere(query: {
    service: string;
    target?: string;
    tenants?: string[];
  }): Promise<RemoveRoutesResult> {
    const params = new URLSearchParams({ service: query.service });
    if (query.target !== undefined) params.set('target', query.target);
    if (query.tenants?.length) params.set('tenants', query.tenants.join(','));
    return this.call('DELETE', `/v1/routes?${params}`, RemoveRoutesResultSchema);
  }

  private async call<T>(
    method: 'GET' | 'POST' | 'PUT' | 'DELETE',
    path: string,
    schema: z.ZodType<T>,
    body?: unknown,
  ): Promise<T> {
    let res: Awaited<ReturnType<typeof request>>;
    try {
      res = await request(this.server + path, {
        method,
        headers: {
          authorization: `Bearer ${this.token}`,
          // Only for the audit trail: a name a header cannot carry is left out rather than failing the call.
          ...(this.holder && /^[\x20-\x7e]+$/.test(this.holder) ? { [HOLDER_HEADER]: this.holder } : {}),
          ...(body ? { 'content-type': 'application/json' } : {}),
        },
        body: body ? JSON.stringify(body) : undefined,
        headersTimeout: TIMEOUT_MS,
        bodyTimeout: TIMEOUT_MS,
        signal: AbortSignal.timeout(TIMEOUT_MS * 2),
      });
    } catch (err) {
      throw unreachable(this.server, err as Error);
    }
    const text = await res.body.text();
    let data: Record<string, unknown> = {};
    try {
      data = text ? JSON.parse(text) : {};
    } catch {
      throw new KelsingraError(
        `${this.server} answered ${method} ${path} with something that is not Kelsingra JSON (HTTP ${res.statusCode})`,
        ExitCode.unreachable,
        'is --server the Kelsingra control port (not the data port or another service)?',
      );
    }
    if (res.statusCode >= 300) throw apiError(res.statusCode, data, this.holder);
    const parsed = schema.safeParse(data);
    if (parsed.success) return parsed.data;
    const issues = parsed.error.issues
      .slice(0, 3)
      .map((i) => `${i.path.join('.') || 'the answer'}: ${i.message}`);
    throw new KelsingraError(
      `${this.server} answered ${method} ${path} with JSON this CLI does not understand (${issues.join('; ')})`,
      ExitCode.unreachable,
      'the server agent may be of another release: kelsingra status --json shows its version; run the same release on both sides',
    );
  }
}

export function unreachable(server: string, err: Error): KelsingraError {
  const code = (err as NodeJS.ErrnoException).code ?? (err.cause as NodeJS.ErrnoException | undefined)?.code;
  return new KelsingraError(
    `cannot reach the Kelsingra server at ${server} (${code ?? err.message})`,
    ExitCode.unreachable,
    tlsHint(code, server) ??
      'check that the server agent is running and that KELSINGRA_SERVER / kelsingra connect --server point at its control port',
  );
}

function apiError(status: number, data: Record<string, unknown>, self?: string): KelsingraError {
  const message = String(data.error ?? `HTTP ${status}`).replace(/^Kelsingra: /, '');
  switch (status) {
    case 401:
      return new KelsingraError(
        `the server rejected the token (401): ${message}`,
        ExitCode.auth,
        'check KELSINGRA_TOKEN, or run kelsingra connect --token <secret>',
      );
    case 403:
      return new KelsingraError(
        message,
        ExitCode.auth,
        typeof data.hint === 'string'
          ? data.hint
          : 'ask the platform team for a token that covers this tenant',
        data,
      );
    case 404:
      return new KelsingraError(
        message,
        ExitCode.notFound,
        data.services
          ? 'pick one of the known services; kelsingra status lists them'
          : data.code === ('unknown-route' satisfies ErrorCode)
            ? 'kelsingra route list shows the routes'
            : 'kelsingra list shows the live intercepts',
        data,
      );
    case 409:
      return new KelsingraError(
        conflictMessage(message, data),
        ExitCode.conflict,
        data.holder === undefined
          ? 'kelsingra list shows who holds what'
          : data.holder === self
            ? // Asking yourself is no advice: it is another shell of yours, or a --detach agent.
              `you hold it already (another shell, or a --detach agent): kelsingra leave ${String(data.intercept ?? '<id>')} first, or kelsingra list`
            : `ask ${data.holder} to run kelsingra leave, or wait for the lease to lapse`,
        data,
      );
    case 400:
      // A plain-HTTP URL for a port that serves TLS: the server answers that much in plain HTTP.
      if (data.code === ('https-required' satisfies ErrorCode))
        return new KelsingraError(message, ExitCode.unreachable, String(data.hint ?? ''), data);
      return new KelsingraError(
        `${message} (HTTP 400)`,
        ExitCode.usage,
        'check the arguments; kelsingra <command> --help shows the usage',
        data,
      );
    default:
      return new KelsingraError(
        `${message} (HTTP ${status})`,
        ExitCode.failure,
        typeof data.hint === 'string'
          ? data.hint
          : status >= 500
            ? "the server agent failed; try again, and if it persists check the server agent's log"
            : 'check that the CLI and the server agent versions match (kelsingra status)',
        data,
      );
  }
}

/**
 * The server names the lease's end in ISO UTC; the CLI shows every other time on the local
 * clock, so the conflict does too (the JSON error keeps the server's instant in `expiresAt`).
 */
function conflictMessage(message: string, data: Record<string, unknown>): string {
  if (typeof data.expiresAt !== 'string') return message;
  const at = Date.parse(data.expiresAt);
  if (Number.isNaN(at)) return message;
  const inSeconds = Math.max(0, Math.round((at - Date.now()) / 1000));
  return message.replace(`expires ${data.expiresAt}`, `expires ${clockTime(at)}, in ${inSeconds} s`);
}
