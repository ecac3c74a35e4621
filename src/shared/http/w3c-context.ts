/**
 * W3C trace context (`traceparent`) and `baggage`, as both agents read and write them: the
 * server reads a routing key from baggage, the client's gateway adds one and starts traces.
 */
import { randomBytes } from 'node:crypto';

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;

/** A W3C traceparent a tracer would accept (version ff, all-zero ids and v00 extras are not). */
export function validTraceparent(value: string | string[] | undefined): value is string {
  if (typeof value !== 'string') return false;
  const m = TRACEPARENT.exec(value.trim());
  if (!m) return false;
  const [, version, traceId, parentId, , extra] = m;
  if (version === 'ff') return false;
  if (version === '00' && extra !== undefined) return false;
  return !/^0+$/.test(traceId as string) && !/^0+$/.test(parentId as string);
}

/** A new sampled trace: `00-<32 hex>-<16 hex>-01`. */
export function newTraceparent(): string {
  let traceId = randomBytes(16).toString('hex');
  let spanId = randomBytes(8).toString('hex');
  // All-zero ids are invalid; 2^-128 and 2^-64, but cheap to rule out.
  if (/^0+$/.test(traceId)) traceId = `${traceId.slice(0, 31)}1`;
  if (/^0+$/.test(spanId)) spanId = `${spanId.slice(0, 15)}1`;
  return `00-${traceId}-${spanId}-01`;
}

/** Baggage is bounded by W3C at 64 members; more than this is not baggage anyone sent on purpose. */
const MAX_BAGGAGE_MEMBERS = 180;

/** The members of one or more baggage headers (several arrive joined by commas: the same list). */
function baggageMembers(header: string | string[] | undefined): string[] {
  if (header === undefined) return [];
  const text = Array.isArray(header) ? header.join(',') : header;
  return text
    .split(',', MAX_BAGGAGE_MEMBERS)
    .map((m) => m.trim())
    .filter(Boolean);
}

/** A member's key, or undefined for a member without `=`. */
function memberKey(member: string): string | undefined {
  const eq = member.indexOf('=');
  return eq === -1 ? undefined : member.slice(0, eq).trim();
}

/**
 * The percent-decoded value of the first member named `key` (`k1=v1;prop, k2=v2`): '' when
 * that member is empty, undefined when there is none.
 */
export function baggageEntry(header: string | string[] | undefined, key: string): string | undefined {
  for (const member of baggageMembers(header)) {
    if (memberKey(member) !== key) continue;
    const eq = member.indexOf('=');
    const semi = member.indexOf(';', eq);
    const raw = member.slice(eq + 1, semi === -1 ? undefined : semi).trim();
    try {
      return decodeURIComponent(raw);
    } catch {
      return raw;
    }
  }
  return undefined;
}

/** How many members are named `key`: readers disagree on which of several counts. */
export function baggageEntries(header: string | string[] | undefined, key: string): number {
  return baggageMembers(header).filter((m) => memberKey(m) === key).length;
}

/** W3C baggage values are percent-encoded outside baggage-octet, and `%` itself. */
const encodeValue = (value: string) => encodeURIComponent(value);

/**
 * Baggage with `key=<value>` added when no member has that key; other members kept as they
 * are.
 */
export function withBaggage(header: string | string[] | undefined, key: string, value: string): string {
  const members = baggageMembers(header);
  if (baggageEntry(header, key) !== undefined) return members.join(',');
  members.push(`${key}=${encodeValue(value)}`);
  return members.join(',');
}

/**
 * Baggage whose every `key` member says `value` (and one is added when none does), other
 * members kept: what the services down the chain read must be the key the request was routed
 * and authorised for, not a second one riding along.
 */
export function baggageSetTo(header: string | string[] | undefined, key: string, value: string): string {
  const members = baggageMembers(header).filter((m) => memberKey(m) !== key);
  members.push(`${key}=${encodeValue(value)}`);
  return members.join(',');
}
