/**
 * The path a data-port request is routed by and sent on with, one and the same, as nginx does:
 * dot segments (`.`, `..`, also written `%2e`) are merged away, so a path prefix such as
 * `/billing/../orders` cannot pick one service while the upstream serves another's path, and a
 * path that climbs above the root is refused. An absolute-form target (`GET http://host/path`,
 * as sent to a proxy) gives its path and, in place of the Host header, its host (RFC 9112
 * §3.2.2). Anything else (`*`, another scheme) is refused. Nothing is percent-decoded.
 */

export type RequestTarget = { path: string; host?: string } | { problem: string };

const ABSOLUTE = /^(https?):\/\/([^/?#]*)(.*)$/is;

export function requestTarget(target: string): RequestTarget {
  if (target.startsWith('/')) return merged(target);
  const m = ABSOLUTE.exec(target);
  const authority = m?.[2] ?? '';
  const host = m && !authority.includes('@') ? hostOf(`${m[1]}://${authority}/`) : undefined;
  if (!m || !host)
    return {
      problem: `the request target "${target.slice(0, 200)}" is neither a path (/…) nor an http:// or https:// URL with a host`,
    };
  const rest = m[3] ?? '';
  const result = merged(rest.startsWith('/') ? rest : `/${rest}`);
  return 'path' in result ? { ...result, host } : result;
}

function hostOf(url: string): string | undefined {
  try {
    return new URL(url).host || undefined;
  } catch {
    return undefined;
  }
}

/** RFC 3986 remove_dot_segments on the path, the query left as it came. */
function merged(target: string): RequestTarget {
  const q = target.indexOf('?');
  const path = q === -1 ? target : target.slice(0, q);
  // A dot segment needs a `.` or a `%2e`: most paths have neither and are kept without a split.
  if (!path.includes('.') && !path.includes('%')) return { path: target };
  const query = q === -1 ? '' : target.slice(q);
  const segments = path.slice(1).split('/');
  const out: string[] = [];
  for (const [i, segment] of segments.entries()) {
    const dots = dotSegment(segment);
    if (dots === 0) {
      out.push(segment);
      continue;
    }
    if (dots === 2) {
      if (out.length === 0)
        return { problem: `the path "${path.slice(0, 200)}" climbs above the root with ".." segments` };
      out.pop();
    }
    // `/a/b/..` is the directory `/a/`.
    if (i === segments.length - 1) out.push('');
  }
  return { path: `/${out.join('/')}${query}` };
}

/** 1 for `.`, 2 for `..`, in any mix of `.` and `%2e` (as browsers and many servers read them). */
function dotSegment(segment: string): 0 | 1 | 2 {
  if (segment.length > 6) return 0;
  const plain = segment.toLowerCase().replaceAll('%2e', '.');
  return plain === '.' ? 1 : plain === '..' ? 2 : 0;
}
