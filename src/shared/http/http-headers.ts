/**
 * Header handling shared by both agents: what must not be forwarded, and how headers
 * are converted between HTTP/1.1 raw arrays and HTTP/2 header objects.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import type { HeaderGuard } from './header-twins.js';

/** RFC 9110 §7.6.1 connection-specific headers, plus the ones HTTP/2 forbids outright. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

export function isHopByHop(name: string): boolean {
  return HOP_BY_HOP.has(name);
}

/** Extra hop-by-hop names announced in a Connection header (`Connection: close, x-foo`). */
function connectionTokens(value: string | undefined): Set<string> | undefined {
  if (!value) return undefined;
  const tokens = new Set<string>();
  for (const t of value.split(',')) {
    const name = t.trim().toLowerCase();
    if (name) tokens.add(name);
  }
  return tokens;
}

/**
 * Filters Node's rawHeaders (`[name, value, name, value…]`, original case, duplicates kept)
 * into a flat list safe to forward. Keeps duplicates such as repeated Cookie lines intact.
 * A Connection line never removes a header `guard` guards: the caller naming the tenant
 * header there must not get it past routing, nor strip what Kelsingra reads.
 */
export function forwardableRawHeaders(
  raw: string[],
  drop?: ReadonlySet<string>,
  guard?: HeaderGuard,
): string[] {
  let extra: Set<string> | undefined;
  // A request may carry several Connection lines; each one's names are hop-by-hop.
  for (let i = 0; i < raw.length; i += 2) {
    if ((raw[i] as string).length === 10 && (raw[i] as string).toLowerCase() === 'connection') {
      const tokens = connectionTokens(raw[i + 1]);
      if (tokens) extra = extra ? new Set([...extra, ...tokens]) : tokens;
    }
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as string).toLowerCase();
    if (HOP_BY_HOP.has(name) || drop?.has(name)) continue;
    if (extra?.has(name) && !guard?.guards(name)) continue;
    out.push(name, raw[i + 1] as string);
  }
  return out;
}

/** Response headers from undici (lowercase keys) minus hop-by-hop ones. */
export function forwardableResponseHeaders(
  headers: Record<string, string | string[] | undefined>,
): OutgoingHttpHeaders {
  const conn = headers.connection;
  const extra = connectionTokens(Array.isArray(conn) ? conn.join(',') : conn);
  const out: OutgoingHttpHeaders = {};
  for (const name in headers) {
    if (HOP_BY_HOP.has(name) || extra?.has(name)) continue;
    const value = headers[name];
    if (value !== undefined) out[name] = value;
  }
  return out;
}

/** `Forwarded` (RFC 7239) with this hop appended to whatever the caller already sent. */
export function appendForwarded(
  existing: string | undefined,
  remoteAddress: string | undefined,
  host: string | undefined,
): string {
  const forAddr = remoteAddress?.includes(':') ? `"[${remoteAddress}]"` : (remoteAddress ?? 'unknown');
  let element = `for=${forAddr};proto=http`;
  if (host) element += `;host="${host.replace(/"/g, '')}"`;
  return existing ? `${existing}, ${element}` : element;
}

export function appendVia(existing: string | undefined): string {
  return existing ? `${existing}, 1.1 kelsingra` : '1.1 kelsingra';
}

/** Flat header list → HTTP/2 header object; repeated names become arrays (set-cookie, cookie…). */
export function rawToObject(raw: string[]): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const value = raw[i + 1] as string;
    const prev = out[name];
    if (prev === undefined) out[name] = value;
    else if (Array.isArray(prev)) prev.push(value);
    else out[name] = [String(prev), value];
  }
  return out;
}

/** Header fields of an HTTP/2 header block without its pseudo-headers (`:status`, `:path`…). */
export function withoutPseudo(
  headers: Record<string, string | string[] | number | undefined>,
): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const name in headers) {
    if (name.charCodeAt(0) === 58 /* ':' */) continue;
    const value = headers[name];
    if (value !== undefined) out[name] = typeof value === 'number' ? String(value) : value;
  }
  return out;
}

/** Node's rawHeaders/rawTrailers (names as sent) with names in lowercase, as the tunnel carries them. */
export function lowerCaseNames(raw: readonly string[]): string[] {
  return raw.map((v, i) => (i % 2 === 0 ? v.toLowerCase() : v));
}

/** Header object → flat list `[name, value…]`; an array value becomes repeated lines. */
export function objectToRaw(headers: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) out.push(name, String(v));
    else out.push(name, String(value));
  }
  return out;
}

/** HTTP/2 incoming headers → plain headers: pseudo-headers removed, `:authority` restored as Host. */
export function fromHttp2(headers: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const name in headers) {
    if (name.charCodeAt(0) === 58 /* ':' */) continue;
    const value = headers[name];
    if (value !== undefined) out[name] = value;
  }
  const authority = headers[':authority'];
  if (authority && !out.host) out.host = authority;
  return out;
}

/** Any header whose name suggests a credential: authorization, cookie, api keys, tokens… */
const SECRET_HEADERS = /auth|cookie|api[-_]?key|token|secret|passw|session|credential|signature/i;
/** Query parameters with such names (`?access_token=…`, `?api_key=…`). */
const SECRET_QUERY =
  /([?&][^=&#]*(?:auth|api[-_]?key|token|secret|passw|session|credential|signature|sig)[^=&#]*=)[^&#]*/gi;

/** A request path for logs and views: values of credential-like query parameters masked. */
export function maskSecretQuery(path: string): string {
  return path.includes('?') ? path.replace(SECRET_QUERY, '$1***') : path;
}

/** For logs and request details: values of credential-like headers are masked. */
export function maskSecretHeaders(
  headers: Record<string, string | string[] | undefined>,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    out[name] = SECRET_HEADERS.test(name) ? '***' : Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}
