/**
 * Which URLs a tenant route may send traffic to. A route target is a request the server agent
 * makes inside the dev environment on a token holder's say-so, so without a limit any token
 * could point tenants (and its own gateway calls) at any address the server can reach. The
 * operator lists the allowed targets as patterns (`routeTargets`); without a list only admin
 * tokens may set routes, to any target.
 */
import type { Principal } from '../auth/auth.js';

/**
 * `http://*.billing.svc.cluster.local:*`: `*` stands for any run of characters other than
 * `/`, `:` and `@`, so a pattern's host part cannot reach into another host or port; a pattern
 * without a port allows any port.
 */
function patternRegExp(pattern: string): RegExp {
  const withPort = /^[a-z]+:\/\/[^/]*:[^/]*$/i.test(pattern) ? pattern : `${pattern}:*`;
  const body = withPort
    .toLowerCase()
    .split('*')
    .map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
    .join('[^/:@]*');
  return new RegExp(`^${body}$`);
}

/** `scheme://host:port` with the port always written, what patterns are matched against. */
export function targetOrigin(url: URL): string {
  const port = url.port || (url.protocol === 'https:' ? '443' : '80');
  return `${url.protocol}//${url.hostname}:${port}`;
}

/** A problem with a target URL itself, whoever sets it; undefined when it is fine. */
export function targetProblem(target: string): string | undefined {
  let url: URL;
  try {
    url = new URL(target);
  } catch {
    return `${target} is not a URL; write it as http://billing-v2:8080`;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    return `${target}: a route target must start with http:// or https://`;
  // Credentials in a target would be sent on every routed request and shown in every listing.
  if (url.username || url.password) {
    url.username = '';
    url.password = '';
    return `${url.href}: a route target cannot carry a user or password (left out here); the service's own auth travels in the request`;
  }
  if (url.search || url.hash) return `${target}: a route target is a base URL, without ?query or #fragment`;
  return undefined;
}

export class RouteTargetPolicy {
  private readonly patterns: { text: string; re: RegExp }[];

  constructor(patterns: readonly string[] | undefined) {
    this.patterns = (patterns ?? []).map((text) => ({ text, re: patternRegExp(text) }));
  }

  get configured(): boolean {
    return this.patterns.length > 0;
  }

  /** The targets no pattern allows (none, when no patterns are configured). */
  outside(targets: readonly string[]): string[] {
    if (!this.configured) return [];
    return targets.filter((t) => !this.patterns.some((p) => p.re.test(targetOrigin(new URL(t)))));
  }

  /** Why this token may not route to these targets; undefined when it may. */
  refusal(principal: Principal, targets: readonly string[]): string | undefined {
    if (!this.configured) {
      return principal.role === 'admin'
        ? undefined
        : `token "${principal.name}" is a developer token, and this server lets only admin tokens set routes until the operator lists the allowed targets in routeTargets (server config or --route-target)`;
    }
    const outside = this.outside(targets);
    if (outside.length === 0) return undefined;
    return `route target${outside.length > 1 ? 's' : ''} ${outside.join(', ')} ${outside.length > 1 ? 'are' : 'is'} not among the allowed ones (${this.patterns.map((p) => p.text).join(', ')}); ask the operator to add ${outside.length > 1 ? 'them' : 'it'} to routeTargets`;
  }
}
