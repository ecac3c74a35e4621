/**
 * A data-port or gateway request as routing sees it: HTTP/2 headers read as HTTP/1's, an
 * absolute-form target's host as Host, and a gateway call's own path and Host without
 * Kelsingra's credentials.
 */
import { fromHttp2 } from '../../src/shared/http/http-headers.js';
import { type InboundRequest, isHttp2 } from '../../src/shared/http/http-types.js';
import { REQUEST_ID_HEADER, requestIdOf } from '../../src/shared/http/request-id.js';
import {
  GATEWAY_HOST_HEADER,
  GATEWAY_PATH,
  GATEWAY_TOKEN_HEADER,
  HOP_HEADER,
  RELAY_HEADER,
} from '../../src/shared/protocol.js';
import { requestTarget } from './request-target.js';

/** The request as routing sees it: a data-port request as it came, or a gateway request rewritten. */
export interface Inbound {
  url: string;
  requestId: string;
  /** performance.now() on arrival: the duration metric includes any wait before routing. */
  receivedAt: number;
  headers: Record<string, string | string[] | undefined>;
  rawHeaders: string[];
  remoteAddress: string | undefined;
  /** Why the request target is refused (server/data-plane/request-target.ts), if it is. */
  badTarget?: string;
}

/**
 * An HTTP/2 request's headers as an HTTP/1 one's: no pseudo-headers, `:authority` as Host.
 * Routing, the header guard and forwarding then read both alike.
 */
export function plainHeaders(req: InboundRequest): Pick<Inbound, 'headers' | 'rawHeaders'> {
  if (!isHttp2(req)) return { headers: req.headers, rawHeaders: req.rawHeaders };
  const rawHeaders: string[] = [];
  const raw = req.rawHeaders;
  let host = false;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (name.charCodeAt(0) === 58 /* ':' */) continue;
    if (name === 'host') host = true;
    rawHeaders.push(name, raw[i + 1] as string);
  }
  const authority = req.headers[':authority'];
  if (!host && typeof authority === 'string') rawHeaders.push('host', authority);
  return { headers: fromHttp2(req.headers), rawHeaders };
}

/** A flat header list without the `drop` lines (names in lowercase). */
export function rawHeadersWithout(raw: string[], drop: ReadonlySet<string>): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2)
    if (!drop.has((raw[i] as string).toLowerCase())) out.push(raw[i] as string, raw[i + 1] as string);
  return out;
}

export const HOST = new Set(['host']);

/** Kelsingra's own gateway headers, never sent on. */
export const GATEWAY_ONLY = new Set([
  'host',
  GATEWAY_TOKEN_HEADER,
  GATEWAY_HOST_HEADER,
  RELAY_HEADER,
  HOP_HEADER,
]);

/** Replaces every `name` line of a flat header list with one. */
export function setHeader(headers: string[], name: string, value: string): void {
  for (let i = headers.length - 2; i >= 0; i -= 2) if (headers[i] === name) headers.splice(i, 2);
  headers.push(name, value);
}

export function headerObject(raw: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as string).toLowerCase();
    const value = raw[i + 1] as string;
    out[name] = out[name] === undefined ? value : `${out[name]}, ${value}`;
  }
  return out;
}

/** The gateway request as the dev environment should see it: its own path and Host, no Kelsingra credentials. */
export function gatewayInbound(req: InboundRequest): Inbound {
  // The path the control port matched on (dot segments resolved), so both read the same one.
  const parsed = new URL(req.url ?? '/', 'http://gateway.invalid');
  const rest = parsed.pathname.slice(GATEWAY_PATH.length);
  const url = `${rest.startsWith('/') ? rest : `/${rest}`}${parsed.search}`;
  const host = req.headers[GATEWAY_HOST_HEADER];
  const rawHeaders = rawHeadersWithout(plainHeaders(req).rawHeaders, GATEWAY_ONLY);
  if (typeof host === 'string' && host !== '') rawHeaders.push('host', host);
  return {
    url,
    requestId: requestIdOf(req.headers[REQUEST_ID_HEADER]),
    receivedAt: performance.now(),
    headers: headerObject(rawHeaders),
    rawHeaders,
    remoteAddress: req.socket.remoteAddress,
  };
}

/** A data-port request by its merged path, and by the host of an absolute-form target. */
export function inboundOf(req: InboundRequest): Inbound {
  // HTTP/1 requests (the hot path) take their own headers as they are, without a copy.
  const plain = isHttp2(req) ? plainHeaders(req) : undefined;
  const headers = plain ? plain.headers : req.headers;
  const rawHeaders = plain ? plain.rawHeaders : req.rawHeaders;
  const inbound: Inbound = {
    url: req.url ?? '/',
    requestId: requestIdOf(headers[REQUEST_ID_HEADER]),
    receivedAt: performance.now(),
    headers,
    rawHeaders,
    remoteAddress: req.socket.remoteAddress,
  };
  const target = requestTarget(inbound.url);
  if ('problem' in target) return { ...inbound, badTarget: target.problem };
  inbound.url = target.path;
  if (target.host !== undefined) {
    inbound.headers = { ...headers, host: target.host };
    inbound.rawHeaders = [...rawHeadersWithout(rawHeaders, HOST), 'host', target.host];
  }
  return inbound;
}
