/**
 * The id that ties a data-plane request's log lines, its event, the services it reaches and
 * the caller's answer together. A caller's own `x-request-id` is kept so an id assigned
 * further up (an ingress, another Kelsingra hop) stays one id end to end.
 */
import { randomUUID } from 'node:crypto';
import type { OutgoingHttpHeaders } from 'node:http';
import type { OutboundResponse } from './http-types.js';

export const REQUEST_ID_HEADER = 'x-request-id';

/** Visible ASCII only: anything else could forge log lines or smuggle header syntax downstream. */
const SANE = /^[\x21-\x7e]{1,200}$/;

/** The caller's id if it is sane (one header, ≤ 200 visible ASCII characters), else a new one. */
export function requestIdOf(header: string | string[] | undefined): string {
  return typeof header === 'string' && SANE.test(header) ? header : randomUUID();
}

/**
 * Each data-plane response's id, added where its head is written rather than with setHeader
 * up front: a header set before writeHead(status, headers) sends Node down its slow path,
 * which checks every upstream header again (about 8 % of the data port's throughput).
 */
const ids = new WeakMap<OutboundResponse, string>();

export function tagResponse(res: OutboundResponse, id: string): void {
  ids.set(res, id);
}

/** `headers` with the response's id in place of any the upstream sent (as Envoy does). */
export function withRequestId(res: OutboundResponse, headers: OutgoingHttpHeaders): OutgoingHttpHeaders {
  const id = ids.get(res);
  if (id !== undefined) headers[REQUEST_ID_HEADER] = id;
  return headers;
}
