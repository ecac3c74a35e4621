/**
 * The relay header between replicas: a request sent on to the replica holding the tunnel
 * carries that replica's secret, the intercept and its epoch, and only the holder's own
 * secret makes it mean anything.
 */
import { timingSafeEqual } from 'node:crypto';
import type { Intercept, Peer } from '../store/intercept-store.js';

/** The relay header a request carries to the peer holding the tunnel (read by relayedIntercept). */
export function relayHeaderOf(d: { peer: Peer; intercept: Intercept }): string {
  return `${d.peer.secret} ${d.intercept.id} ${d.intercept.epoch}`;
}

/** What a peer's relay header says: the intercept, and the epoch of the peer's copy of it when it relayed. */
export interface Relayed {
  id: string;
  /** NaN from a replica that does not send it: such a relay is never passed on. */
  epoch: number;
}

/**
 * The intercept a peer relayed this request for (`<secret> <intercept id> <epoch>`), if the
 * secret is this replica's own; anything else is an outsider's header and means nothing.
 */
export function relayedIntercept(
  header: string | string[] | undefined,
  secret: string | undefined,
): Relayed | undefined {
  if (typeof header !== 'string' || !secret) return undefined;
  const [given, id, epoch] = header.split(' ');
  const expected = Buffer.from(secret);
  const offered = Buffer.from(given ?? '');
  if (offered.length !== expected.length || !timingSafeEqual(offered, expected)) return undefined;
  return id ? { id, epoch: epoch === undefined ? Number.NaN : Number(epoch) } : undefined;
}
