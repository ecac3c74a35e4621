/**
 * Caddy through its admin API: each service's site has a `map` handler with the @id
 * `<idPrefix><service>`, mapping the routing key to `kelsingra` or a route's host:port; the
 * driver replaces that handler (PATCH /id/…), and Caddy answers only once the new config
 * runs. Services whose set did not change are left alone.
 */
import { type GatewayDriver, GatewayError } from './driver.js';
import { type Diff, type Entry, hostPort, sorted } from './entries.js';

export interface CaddyOptions {
  adminUrl: string;
  idPrefix: string;
  /** Services that have a map handler in the Caddy config (their sets are written even when empty). */
  services: string[];
  /** The request header that carries the routing key. */
  tenantHeader: string;
  confirmTimeoutMs: number;
}

/** The placeholder the map sets: `kelsingra`, host:port of a route, or "" (the base). */
export const CADDY_DESTINATION = '{kelsingra_target}';

/** A header name as Caddy's placeholder writes it (canonical form: X-Tenant-Id). */
function canonical(header: string): string {
  return header
    .split('-')
    .map((w) => (w ? w[0]?.toUpperCase() + w.slice(1).toLowerCase() : w))
    .join('-');
}

export function caddyMapHandler(
  service: string,
  entries: Entry[],
  opts: Pick<CaddyOptions, 'idPrefix' | 'tenantHeader'>,
) {
  return {
    '@id': `${opts.idPrefix}${service}`,
    handler: 'map',
    source: `{http.request.header.${canonical(opts.tenantHeader)}}`,
    destinations: [CADDY_DESTINATION],
    mappings: sorted(entries).map((e) => ({
      input: e.tenant,
      outputs: [e.target.kind === 'kelsingra' ? 'kelsingra' : hostPort(e.target.targets[0] as string)],
    })),
    defaults: [''],
  };
}

export class CaddyDriver implements GatewayDriver {
  readonly name = 'caddy';

  constructor(private readonly opts: CaddyOptions) {}

  private byService(all: Entry[]): Map<string, Entry[]> {
    const out = new Map<string, Entry[]>(this.opts.services.map((s) => [s, []]));
    for (const e of all) {
      let list = out.get(e.service);
      if (!list) {
        list = [];
        out.set(e.service, list);
      }
      list.push(e);
    }
    return out;
  }

  async replaceAll(entries: Entry[]): Promise<void> {
    for (const [service, list] of this.byService(entries)) await this.write(service, list);
  }

  async apply(diff: Diff, all: Entry[]): Promise<void> {
    const touched = new Set([...diff.set, ...diff.removed].map((e) => e.service));
    const grouped = this.byService(all);
    for (const service of touched) await this.write(service, grouped.get(service) ?? []);
  }

  private async write(service: string, entries: Entry[]): Promise<void> {
    const id = `${this.opts.idPrefix}${service}`;
    const url = `${this.opts.adminUrl.replace(/\/$/, '')}/id/${id}`;
    let res: Response;
    try {
      res = await fetch(url, {
        method: 'PATCH',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(caddyMapHandler(service, entries, this.opts)),
        signal: AbortSignal.timeout(this.opts.confirmTimeoutMs),
      });
    } catch (err) {
      throw new GatewayError(`Caddy's admin API at ${this.opts.adminUrl} failed: ${(err as Error).message}`);
    }
    if (res.ok) return;
    const text = (await res.text()).trim().slice(0, 300);
    throw new GatewayError(
      `Caddy refused the map for ${service} (PATCH /id/${id}: ${res.status}${text ? ` ${text}` : ''})${res.status === 404 ? `; give that service's map handler "@id": "${id}" in the Caddy config` : ''}`,
    );
  }

  async close(): Promise<void> {}
}
