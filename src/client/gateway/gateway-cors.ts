/**
 * Who may use the gateway, and the CORS it answers. The gateway adds the developer's token to
 * every call, so a web page the developer happens to visit must not be able to drive it:
 * browsers let any page send requests to 127.0.0.1 (CSRF), and a page whose host name is made
 * to resolve to 127.0.0.1 can even read the answers (DNS rebinding).
 *
 * Non-browser callers (the local service, scripts, curl, Node's fetch) send neither `Origin`
 * nor `Sec-Fetch-Site` and address the gateway by its own name, so the rules cost them nothing;
 * browsers always say where a request came from, and cannot be made to lie about it.
 */

import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import type { ErrorCode } from '../../shared/error-codes.js';

const PREFLIGHT_MAX_AGE_S = 600;
const LOCAL_ORIGIN = /^https?:\/\/(localhost|127\.0\.0\.1|\[::1\])(:\d{1,5})?$/i;
const LOCAL_AUTHORITY = /^(localhost|127\.0\.0\.1|\[::1\])(?::(\d{1,5}))?$/i;
const BROWSER_SITES = new Set(['cross-site', 'same-site']);

/** Browser origins --cors answers: pages served from this machine. */
export function allowedOrigin(origin: string | undefined): boolean {
  return typeof origin === 'string' && LOCAL_ORIGIN.test(origin);
}

/** A Host header naming this gateway itself (loopback name and its own port). */
export function addressedToGateway(host: string | undefined, port: number): boolean {
  const m = host === undefined ? null : LOCAL_AUTHORITY.exec(host);
  return m !== null && Number(m[2] ?? 80) === port;
}

export interface Refusal {
  code: ErrorCode;
  message: string;
  hint: string;
  /** Short, for the request log. */
  reason: string;
  extra: Record<string, unknown>;
}

export interface CallerRules {
  cors: boolean;
  /** The port the gateway listens on. */
  port: number;
  /**
   * The request line is a path, so Host is the only thing saying which server the caller
   * meant. Proxy-form and tunnelled requests name their own target in Host.
   */
  originForm: boolean;
}

/** Why a request must not be served with the developer's token, or undefined when it may. */
export function callerRefusal(req: IncomingMessage, rules: CallerRules): Refusal | undefined {
  const { cors, port } = rules;
  const host = req.headers.host;
  if (rules.originForm && !addressedToGateway(host, port))
    return {
      code: 'foreign-host',
      message: `the gateway serves only requests addressed to it (Host 127.0.0.1:${port}, localhost:${port} or [::1]:${port}), not Host ${host === undefined ? '(none)' : JSON.stringify(host)}: a web page whose host name resolves to this machine must not call dev with your token`,
      hint: `call http://127.0.0.1:${port}/<service>/<path>, or send absolute URLs (the gateway as HTTP_PROXY); a dev server proxying to the gateway must rewrite Host (Vite: changeOrigin: true)`,
      reason: `refused: Host ${host ?? '(none)'}`,
      extra: { host: host ?? null },
    };

  const origin = req.headers.origin;
  if (origin !== undefined && !(cors && allowedOrigin(origin)))
    return cors
      ? {
          code: 'origin-refused',
          message: `the gateway serves browsers only for pages on this machine (http(s)://localhost, 127.0.0.1 or [::1], any port), not ${origin}`,
          hint: 'open the front end from http://localhost:<its port>; pages from anywhere else must not call dev with your token',
          reason: `refused: Origin ${origin}`,
          extra: { origin },
        }
      : {
          code: 'origin-refused',
          message: `a web page (Origin ${origin}) called the gateway; without --cors it serves no browser at all, so that pages you visit cannot call dev with your token`,
          hint: 'for a front end served from localhost, run the gateway with --cors (kelsingra gateway --cors, or intercept --cors); services and scripts send no Origin and are served',
          reason: `refused: Origin ${origin} (no --cors)`,
          extra: { origin },
        };

  // A page's request without an Origin (an <img>, a link, a form GET): the Origin rule above
  // cannot see it, Sec-Fetch-Site can. Same-site counts too: another port on localhost is
  // another program. An allowed Origin has passed above, whichever site the browser says.
  const site = req.headers['sec-fetch-site'];
  if (typeof site === 'string' && BROWSER_SITES.has(site.toLowerCase()) && origin === undefined)
    return {
      code: 'cross-site-refused',
      message: `a request from a web page (Sec-Fetch-Site: ${site}) without an Origin the gateway allows: refused, so that pages you visit cannot call dev with your token`,
      hint: cors
        ? 'call the gateway with fetch() from a page on localhost (the browser then sends its Origin)'
        : 'a front end served from localhost can call it with fetch() under --cors; services and scripts send no Sec-Fetch-Site and are served',
      reason: `refused: Sec-Fetch-Site ${site}`,
      extra: { secFetchSite: site },
    };
  return undefined;
}

/** A CORS preflight the gateway answers itself (the dev service knows nothing of localhost). */
export function isPreflight(req: IncomingMessage, cors: boolean): boolean {
  return (
    cors &&
    req.method === 'OPTIONS' &&
    req.headers.origin !== undefined &&
    req.headers['access-control-request-method'] !== undefined
  );
}

/** The 204 answer to a preflight from an allowed origin. */
export function preflightHeaders(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const method = String(headers['access-control-request-method']);
  const requested = headers['access-control-request-headers'];
  return {
    ...corsHeaders(headers.origin, true),
    'access-control-allow-methods': `GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS${/^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS)$/i.test(method) ? '' : `, ${method}`}`,
    ...(requested ? { 'access-control-allow-headers': String(requested) } : {}),
    // Chrome's Private Network Access: a page asks before it may call a loopback address.
    ...(headers['access-control-request-private-network'] === 'true'
      ? { 'access-control-allow-private-network': 'true' }
      : {}),
    'access-control-max-age': String(PREFLIGHT_MAX_AGE_S),
    vary: 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers',
    'content-length': '0',
  };
}

/** CORS headers for a response to `origin` (none unless --cors and a local origin). */
export function corsHeaders(origin: string | undefined, cors: boolean): Record<string, string> | undefined {
  if (!cors || !allowedOrigin(origin)) return undefined;
  return {
    'access-control-allow-origin': origin as string,
    'access-control-allow-credentials': 'true',
    vary: 'Origin',
  };
}

/**
 * The dev service's response made readable by the page: the service's own CORS answer was
 * for its dev origin, not for localhost, so it is replaced; cookies stay unreadable to scripts.
 */
export function withCors(out: OutgoingHttpHeaders, cors: Record<string, string>): OutgoingHttpHeaders {
  const vary = out.vary;
  for (const name of Object.keys(out)) if (name.startsWith('access-control-')) delete out[name];
  const exposed = Object.keys(out).filter((n) => n !== 'set-cookie' && n !== 'set-cookie2');
  Object.assign(out, cors);
  if (exposed.length) out['access-control-expose-headers'] = exposed.join(', ');
  if (vary) out.vary = `${Array.isArray(vary) ? vary.join(', ') : vary}, Origin`;
  return out;
}
