/**
 * The id that ties a data-plane request's log lines, its event, the services it reaches and
 * the caller's answer together. A caller's own `x-request-id` is kept so an id assigned
 * further up (an ingress, another Kelsingra hop) stays one id end to end.
 */
import { randomUUID } from 'node:crypto';

export const REQUEST_ID_HEADER = 'x-request-id';

/** Visible ASCII only: anything else could forge log lines or smuggle header syntax downstream. */
const SANE = /^[\x21-\x7e]{1,200}$/;

/** The caller's id if it is sane (one header, ≤ 200 visible ASCII characters), else a new one. */
export function requestIdOf(header: string | string[] | undefined): string {
  return typeof header === 'string' && SANE.test(header) ? header : randomUUID();
}
