/**
 * Where a gateway request is meant to go, read from its request line: the proxy form names a
 * host (`GET http://inventory.dev/items`), the origin form a service (`GET /inventory/items`).
 */

export type Target =
  | { kind: 'host'; host: string; path: string }
  | { kind: 'service'; service: string; path: string }
  | { kind: 'none'; reason: string };

/** `GET http://inventory.dev/items?x=1` or `GET /inventory/items?x=1`. */
export function targetOf(url: string): Target {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      return { kind: 'none', reason: `"${url}" is not a URL` };
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:')
      return { kind: 'none', reason: `only http:// URLs can be proxied, not ${parsed.protocol}` };
    return { kind: 'host', host: parsed.host, path: `${parsed.pathname || '/'}${parsed.search}` };
  }
  if (!url.startsWith('/')) return { kind: 'none', reason: `"${url}" is neither a path nor a URL` };
  const rest = url.slice(1);
  const cut = rest.search(/[/?]/);
  const service = decodeSegment(cut === -1 ? rest : rest.slice(0, cut));
  if (!service)
    return {
      kind: 'none',
      reason:
        'name the service as the first path segment (GET /inventory/items reaches /items on inventory), or use this gateway as HTTP_PROXY',
    };
  const after = cut === -1 ? '' : rest.slice(cut);
  return { kind: 'service', service, path: after.startsWith('/') ? after : `/${after}` };
}

/**
 * Inside a CONNECT tunnel the tunnel named the host, so the request line is only a path; a
 * client that sends the absolute form there anyway keeps only its path.
 */
export function tunnelTarget(url: string, hostHeader: string | undefined, tunnelHost: string): Target {
  const t = url.startsWith('/') ? undefined : targetOf(url);
  return {
    kind: 'host',
    host: hostHeader ? hostHeader : tunnelHost,
    path: url.startsWith('/') ? url : t?.kind === 'host' ? t.path : '/',
  };
}

function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}
