/**
 * Kong (3.x, `router_flavor = expressions`) through its Admin API, as seed 004's option 3:
 * the service's tenant-agnostic route stays, and per service and target one route whose
 * expression lists the tenants that go elsewhere, at a higher priority. Intercepted tenants go
 * to the Kong service `kelsingraService` (Kelsingra's data port); a tenant route's tenants go
 * to a Kong service Kelsingra keeps for that route. Everything it writes is tagged `kelsingra`.
 *
 * Written to Kong's documented Admin API and expressions format; not run against a real Kong here.
 */
import { type GatewayDriver, GatewayError } from './driver.js';
import { type Diff, type Entry, sorted, targetName } from './entries.js';

export interface KongOptions {
  adminUrl: string;
  /** The Kong service intercepted tenants go to, {service} replaced (it points at Kelsingra's data port). */
  kelsingraService: string;
  /** The expression that selects a service's requests, {service} replaced: http.host == "{service}.dev.example.com". */
  serviceExpression: string;
  /** Above the service's own route. */
  priority: number;
  tenantHeader: string;
  confirmTimeoutMs: number;
}

const TAG = 'kelsingra';

/** A header as Kong's expressions name it: lowercase, dashes as underscores. */
export function kongHeaderField(header: string): string {
  return `http.headers.${header.toLowerCase().replaceAll('-', '_')}`;
}

export function kongRouteName(service: string, entry: Entry): string {
  return `kelsingra-${service}-${targetName(entry.target)}`;
}

export function kongRouteServiceName(routeId: string): string {
  return `kelsingra-${routeId}`;
}

interface KongRoute {
  name: string;
  expression: string;
  priority: number;
  service: { name: string };
  preserve_host: boolean;
  strip_path: boolean;
  tags: string[];
}

/** The Kong routes (and the Kong services of tenant routes) for a set. */
export function kongObjects(
  entries: Iterable<Entry>,
  opts: Omit<KongOptions, 'adminUrl' | 'confirmTimeoutMs'>,
) {
  const groups = new Map<string, { service: string; entry: Entry; tenants: string[] }>();
  for (const e of sorted(entries)) {
    const name = kongRouteName(e.service, e);
    let g = groups.get(name);
    if (!g) {
      g = { service: e.service, entry: e, tenants: [] };
      groups.set(name, g);
    }
    g.tenants.push(e.tenant);
  }
  const field = kongHeaderField(opts.tenantHeader);
  const routes = new Map<string, KongRoute>();
  const services = new Map<string, { name: string; url: string; tags: string[] }>();
  for (const [name, g] of groups) {
    const target = g.entry.target;
    const tenants = g.tenants.map((t) => `${field} == ${JSON.stringify(t)}`).join(' || ');
    let service: string;
    if (target.kind === 'kelsingra') service = opts.kelsingraService.replaceAll('{service}', g.service);
    else {
      service = kongRouteServiceName(target.routeId);
      // A bare origin: a path of "/" would be put before every request's own path.
      const url = (target.targets[0] as string).replace(/\/$/, '');
      services.set(service, { name: service, url, tags: [TAG] });
    }
    routes.set(name, {
      name,
      expression: `(${opts.serviceExpression.replaceAll('{service}', g.service)}) && (${tenants}) && !(${kongHeaderField('x-kelsingra-hop')} ~ r#"."#)`,
      priority: opts.priority,
      service: { name: service },
      preserve_host: true,
      strip_path: false,
      tags: [TAG],
    });
  }
  return { routes, services };
}

export class KongDriver implements GatewayDriver {
  readonly name = 'kong';

  constructor(private readonly opts: KongOptions) {}

  private async call(method: string, path: string, body?: unknown): Promise<unknown> {
    const url = `${this.opts.adminUrl.replace(/\/$/, '')}${path}`;
    let res: Response;
    try {
      res = await fetch(url, {
        method,
        headers: body === undefined ? {} : { 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.opts.confirmTimeoutMs),
      });
    } catch (err) {
      throw new GatewayError(`Kong's Admin API at ${this.opts.adminUrl} failed: ${(err as Error).message}`);
    }
    const text = await res.text();
    if (res.ok || (method === 'DELETE' && res.status === 404)) return text ? JSON.parse(text) : undefined;
    throw new GatewayError(`Kong refused ${method} ${path}: ${res.status} ${text.trim().slice(0, 300)}`);
  }

  /** Every object of `kind` tagged kelsingra, following the Admin API's pages. */
  private async tagged(kind: 'routes' | 'services'): Promise<string[]> {
    const names: string[] = [];
    let path: string | null = `/${kind}?tags=${TAG}&size=1000`;
    while (path) {
      const page = (await this.call('GET', path)) as { data: { name: string }[]; next: string | null };
      names.push(...page.data.map((o) => o.name));
      path = page.next ? page.next.replace(/^https?:\/\/[^/]+/, '') : null;
    }
    return names;
  }

  async replaceAll(entries: Entry[]): Promise<void> {
    const { routes, services } = kongObjects(entries, this.opts);
    for (const s of services.values()) await this.call('PUT', `/services/${s.name}`, s);
    for (const r of routes.values()) await this.call('PUT', `/routes/${r.name}`, r);
    for (const name of await this.tagged('routes'))
      if (!routes.has(name)) await this.call('DELETE', `/routes/${name}`);
    for (const name of await this.tagged('services'))
      if (!services.has(name)) await this.call('DELETE', `/services/${name}`);
  }

  async apply(diff: Diff, all: Entry[]): Promise<void> {
    const { routes, services } = kongObjects(all, this.opts);
    const touched = new Set(
      [...diff.set, ...diff.removed, ...diff.replaced].map((e) => kongRouteName(e.service, e)),
    );
    for (const name of touched) {
      const route = routes.get(name);
      if (!route) continue;
      const service = services.get(route.service.name);
      if (service) await this.call('PUT', `/services/${service.name}`, service);
      await this.call('PUT', `/routes/${name}`, route);
    }
    for (const name of touched) {
      if (routes.has(name)) continue;
      await this.call('DELETE', `/routes/${name}`);
      const gone = [...diff.removed, ...diff.replaced].find((e) => kongRouteName(e.service, e) === name);
      if (gone?.target.kind === 'route' && !services.has(kongRouteServiceName(gone.target.routeId)))
        await this.call('DELETE', `/services/${kongRouteServiceName(gone.target.routeId)}`);
    }
  }

  async close(): Promise<void> {}
}
