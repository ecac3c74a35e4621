/**
 * Traefik: the control port serves the set as dynamic configuration for Traefik's HTTP
 * provider (GET /v1/traefik/dynamic), which Traefik polls. Per service and target, one router
 * above the service's own route whose rule names the keys; intercepted keys go to a failover
 * service (Kelsingra's data port, health-checked on the control port, else the base). A
 * change counts once a poll was served the document with that change in it.
 *
 * Written to Traefik's documented format; not run against a real Traefik here.
 */
import { createHash } from 'node:crypto';
import { confirmByPolling, type GatewayDriver } from './driver.js';
import { type Entry, sorted, targetName } from './entries.js';

export interface TraefikOptions {
  /** Kelsingra's data port as Traefik reaches it, e.g. http://kelsingra-data.kelsingra:7701. */
  kelsingraUrl: string;
  /** Port of Kelsingra's control port on the same host, whose /healthz Traefik checks. */
  healthPort: number;
  /** The rule that selects a service's requests, {service} replaced: Host(`{service}.dev.example.com`). */
  serviceRule: string;
  /** Above the service's own router. */
  priority: number;
  /** v3 writes Header(`k`, `v`); v2 writes Headers(`k`, `v`). */
  ruleSyntax: 'v2' | 'v3';
  entryPoints?: string[];
  tenantHeader: string;
  confirmTimeoutMs: number;
}

export interface ServedVersions {
  /** A poll was answered with this version (on any replica). */
  served(version: string): Promise<void>;
  wasServed(version: string): Promise<boolean>;
}

/** Backtick strings cannot escape a backtick; routing keys cannot hold one either way. */
const quoted = (s: string) => `\`${s}\``;

export function traefikDocument(
  entries: Iterable<Entry>,
  bases: ReadonlyMap<string, string[]>,
  opts: Omit<TraefikOptions, 'confirmTimeoutMs'>,
): { document: unknown; version: string } {
  const groups = new Map<string, { service: string; entry: Entry; tenants: string[] }>();
  for (const e of sorted(entries)) {
    const id = `kelsingra-${e.service}-${targetName(e.target)}`;
    let g = groups.get(id);
    if (!g) {
      g = { service: e.service, entry: e, tenants: [] };
      groups.set(id, g);
    }
    g.tenants.push(e.tenant);
  }
  const header = opts.ruleSyntax === 'v2' ? 'Headers' : 'Header';
  const routers: Record<string, unknown> = {};
  const services: Record<string, unknown> = {};
  for (const [id, g] of groups) {
    const keys = g.tenants.map((t) => `${header}(${quoted(opts.tenantHeader)}, ${quoted(t)})`).join(' || ');
    const target = g.entry.target;
    const service =
      target.kind === 'kelsingra' ? `kelsingra-${g.service}` : `kelsingra-route-${target.routeId}`;
    routers[id] = {
      rule: `(${opts.serviceRule.replaceAll('{service}', g.service)}) && (${keys}) && !HeaderRegexp(${quoted('X-Kelsingra-Hop')}, ${quoted('.+')})`,
      service,
      priority: opts.priority,
      ...(opts.entryPoints ? { entryPoints: opts.entryPoints } : {}),
    };
    if (target.kind === 'kelsingra') {
      services[service] = { failover: { service: `${service}-data`, fallback: `${service}-base` } };
      services[`${service}-data`] = {
        loadBalancer: {
          servers: [{ url: opts.kelsingraUrl }],
          passHostHeader: true,
          healthCheck: { path: '/healthz', port: opts.healthPort, interval: '1s', timeout: '1s' },
        },
      };
      services[`${service}-base`] = {
        loadBalancer: { servers: (bases.get(g.service) ?? []).map((url) => ({ url })), passHostHeader: true },
      };
    } else {
      services[service] = {
        loadBalancer: { servers: target.targets.map((url) => ({ url })), passHostHeader: true },
      };
    }
  }
  const body = JSON.stringify({ routers, services });
  const version = createHash('sha256').update(body).digest('hex').slice(0, 16);
  // Traefik refuses an http section with no routers at all less gracefully than an empty one.
  return { document: { http: { routers, services } }, version };
}

export class TraefikDriver implements GatewayDriver {
  readonly name = 'traefik';

  constructor(
    private readonly opts: TraefikOptions,
    private readonly bases: ReadonlyMap<string, string[]>,
    private readonly versions: ServedVersions,
  ) {}

  /** The document for a set, as the control port serves it (and records that it did). */
  async serve(entries: Iterable<Entry>): Promise<unknown> {
    const { document, version } = traefikDocument(entries, this.bases, this.opts);
    await this.versions.served(version);
    return document;
  }

  async replaceAll(entries: Entry[]): Promise<void> {
    const { version } = traefikDocument(entries, this.bases, this.opts);
    await confirmByPolling(async () => ({ ok: await this.versions.wasServed(version) }), {
      timeoutMs: this.opts.confirmTimeoutMs,
      everyMs: 50,
      timedOut: () =>
        `Traefik did not poll /v1/traefik/dynamic within ${this.opts.confirmTimeoutMs / 1000} s (check providers.http.endpoint and its pollInterval, 1s recommended)`,
    });
  }

  apply(_diff: unknown, all: Entry[]): Promise<void> {
    return this.replaceAll(all);
  }

  async close(): Promise<void> {}
}
