/**
 * Finds the service a data-plane request is for: explicit header, then configured host,
 * then path prefix, then the first DNS label of Host.
 */
import { SERVICE_HEADER } from '../src/protocol.js';
import type { ServiceConfig } from './config.js';

export interface RoutedService {
  name: string;
  upstream: URL;
  pathPrefix?: string;
  stripPrefix: boolean;
}

export interface RouteResult {
  service: RoutedService;
  /** Path to send on, after any configured prefix stripping. */
  path: string;
}

export class ServiceRouter {
  private readonly byName = new Map<string, RoutedService>();
  private readonly byHost = new Map<string, RoutedService>();
  private readonly prefixes: RoutedService[] = [];

  constructor(services: Record<string, ServiceConfig>) {
    for (const [name, cfg] of Object.entries(services)) {
      const svc: RoutedService = {
        name,
        upstream: new URL(cfg.upstream),
        pathPrefix: cfg.pathPrefix?.replace(/\/+$/, '') || undefined,
        stripPrefix: cfg.stripPrefix,
      };
      this.byName.set(name, svc);
      for (const host of cfg.hosts) this.byHost.set(host.toLowerCase(), svc);
      if (svc.pathPrefix) this.prefixes.push(svc);
    }
    // Longest prefix first so /billing/admin wins over /billing.
    this.prefixes.sort((a, b) => (b.pathPrefix as string).length - (a.pathPrefix as string).length);
  }

  get names(): string[] {
    return [...this.byName.keys()];
  }

  get(name: string): RoutedService | undefined {
    return this.byName.get(name);
  }

  route(headers: Record<string, string | string[] | undefined>, url: string): RouteResult | undefined {
    const explicit = headers[SERVICE_HEADER];
    if (typeof explicit === 'string') {
      const svc = this.byName.get(explicit.trim().toLowerCase());
      return svc ? { service: svc, path: url } : undefined;
    }
    const host = typeof headers.host === 'string' ? stripPort(headers.host.toLowerCase()) : '';
    const byHost = this.byHost.get(host);
    if (byHost) return { service: byHost, path: url };
    for (const svc of this.prefixes) {
      const prefix = svc.pathPrefix as string;
      if (
        url.startsWith(prefix) &&
        (url.length === prefix.length || '/?#'.includes(url[prefix.length] as string))
      ) {
        const rest = url.slice(prefix.length);
        return { service: svc, path: svc.stripPrefix ? (rest.startsWith('/') ? rest : `/${rest}`) : url };
      }
    }
    const dot = host.indexOf('.');
    const label = dot === -1 ? host : host.slice(0, dot);
    const byLabel = this.byName.get(label);
    return byLabel ? { service: byLabel, path: url } : undefined;
  }
}

function stripPort(host: string): string {
  if (host.startsWith('[')) return host.slice(0, host.indexOf(']') + 1);
  const colon = host.lastIndexOf(':');
  return colon === -1 ? host : host.slice(0, colon);
}
