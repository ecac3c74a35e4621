/**
 * Finds the service a data-plane request is for: explicit header, then configured host,
 * then a preview-URL host or a label in front of a configured host (both also carry a
 * routing key), then path prefix, then the first DNS label of Host.
 */

import { type HealthCheckSettings, healthCheckFromConfig } from '../../src/shared/http/upstream-pool.js';
import { SERVICE_HEADER } from '../../src/shared/protocol.js';
import type { ServiceConfig } from '../config/config.js';
import { PreviewHosts } from './routing-keys.js';

export interface RoutedService {
  name: string;
  /** The first of `upstreams`, for messages. */
  upstream: URL;
  upstreams: URL[];
  healthCheck: HealthCheckSettings | false;
  /** false: calls that arrived over HTTP/2 go on over HTTP/1.1 (the service's upstreamHttp2). */
  http2: boolean;
  pathPrefix?: string;
  stripPrefix: boolean;
}

export interface ServiceMatch {
  service: RoutedService;
  /** Path to send on, after any configured prefix stripping. */
  path: string;
  /** The routing key the host names (`t1--billing.dev.example.com`, `feature1.example.com`). */
  hostKey?: string;
}

export class ServiceResolver {
  private readonly byName = new Map<string, RoutedService>();
  private readonly byHost = new Map<string, RoutedService>();
  private readonly prefixes: RoutedService[] = [];
  readonly preview: PreviewHosts;

  constructor(services: Record<string, ServiceConfig>, previewUrl?: string) {
    this.preview = new PreviewHosts(previewUrl, (name) => this.byName.has(name));
    for (const [name, cfg] of Object.entries(services)) {
      const upstreams = (Array.isArray(cfg.upstream) ? cfg.upstream : [cfg.upstream]).map(
        (u: string) => new URL(u),
      );
      const svc: RoutedService = {
        name,
        upstream: upstreams[0] as URL,
        upstreams,
        healthCheck: healthCheckFromConfig(cfg.healthCheck ?? false),
        http2: cfg.upstreamHttp2 ?? true,
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

  resolve(headers: Record<string, string | string[] | undefined>, url: string): ServiceMatch | undefined {
    const explicit = headers[SERVICE_HEADER];
    // `billing.dev.example.com.` (fully qualified) names the same host as without the dot.
    const host =
      typeof headers.host === 'string' ? stripPort(headers.host.toLowerCase()).replace(/\.$/, '') : '';
    if (typeof explicit === 'string') {
      const svc = this.byName.get(explicit.trim().toLowerCase());
      if (!svc) return undefined;
      // A proxy that names the service still leaves the key a preview host carries.
      const preview = host.includes('.') ? this.preview.match(host) : undefined;
      return preview?.service === svc.name
        ? { service: svc, path: url, hostKey: preview.key }
        : { service: svc, path: url };
    }
    const byHost = this.byHost.get(host);
    if (byHost) return { service: byHost, path: url };
    const dot = host.indexOf('.');
    if (dot > 0) {
      const preview = this.preview.match(host);
      if (preview)
        return {
          service: this.byName.get(preview.service) as RoutedService,
          path: url,
          hostKey: preview.key,
        };
      const parent = this.byHost.get(host.slice(dot + 1));
      if (parent) return { service: parent, path: url, hostKey: host.slice(0, dot) };
    }
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
