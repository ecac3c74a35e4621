/**
 * Where a request's routing key (a tenant id or a feature label) comes from: the tenant
 * header, an entry of the W3C `baggage` header, or a subdomain label — a preview URL such
 * as `t1--billing.dev.example.com`, or a label in front of a service's own host
 * (`feature1.example.com`).
 */
import { baggageEntry } from '../../src/shared/http/w3c-context.js';

export type KeySource = 'header' | 'baggage' | 'subdomain';

export interface RoutingKey {
  key: string;
  source: KeySource;
}

/** The value of `key` in W3C baggage, percent-decoded; undefined when absent or empty. */
export function baggageValue(header: string | string[] | undefined, key: string): string | undefined {
  return baggageEntry(header, key) || undefined;
}

/** What a key or service name in a preview host may be made of. */
const LABEL_PART = /^[a-z0-9-]+$/;

/** A key that can stand in a DNS label, so a preview URL can carry it. */
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

const KEY_MARK = 'kskeyks';
const SERVICE_MARK = 'ksserviceks';

function markTemplate(template: string): URL | undefined {
  try {
    return new URL(template.replaceAll('{key}', KEY_MARK).replaceAll('{service}', SERVICE_MARK));
  } catch {
    return undefined;
  }
}

export function validPreviewTemplate(template: string): boolean {
  const url = markTemplate(template);
  if (!url || !/^https?:$/.test(url.protocol)) return false;
  const host = url.hostname;
  const k = host.indexOf(KEY_MARK);
  const v = host.indexOf(SERVICE_MARK);
  // Something must stand between key and service, or no host could be split back into them.
  const between = k < v ? host.slice(k + KEY_MARK.length, v) : host.slice(v + SERVICE_MARK.length, k);
  return (
    host.split(KEY_MARK).length === 2 &&
    host.split(SERVICE_MARK).length === 2 &&
    between !== '' &&
    !url.pathname.includes(KEY_MARK) &&
    !url.pathname.includes(SERVICE_MARK)
  );
}

/** Preview-URL hosts: which service and key a host names, and the URL for a (service, key). */
export class PreviewHosts {
  /** The template's host around its two marks: `<head><first><sep><second><tail>`. */
  private readonly shape?: { head: string; sep: string; tail: string; keyFirst: boolean };

  constructor(
    private readonly template: string | undefined,
    private readonly isService: (name: string) => boolean,
  ) {
    const url = template ? markTemplate(template) : undefined;
    if (!url) return;
    const host = url.hostname;
    const k = host.indexOf(KEY_MARK);
    const v = host.indexOf(SERVICE_MARK);
    const keyFirst = k < v;
    const [first, firstLen, second, secondLen] = keyFirst
      ? [k, KEY_MARK.length, v, SERVICE_MARK.length]
      : [v, SERVICE_MARK.length, k, KEY_MARK.length];
    this.shape = {
      head: host.slice(0, first),
      sep: host.slice(first + firstLen, second),
      tail: host.slice(second + secondLen),
      keyFirst,
    };
  }

  get configured(): boolean {
    return this.shape !== undefined;
  }

  /**
   * `host` without its port, lowercased. Every split at the separator is tried, since keys
   * and service names may contain it; when several name a service, the longest service wins.
   */
  match(host: string): { service: string; key: string } | undefined {
    const shape = this.shape;
    if (!shape || host.length <= shape.head.length + shape.tail.length) return undefined;
    if (!host.startsWith(shape.head) || !host.endsWith(shape.tail)) return undefined;
    const middle = host.slice(shape.head.length, host.length - shape.tail.length);
    let best: { service: string; key: string } | undefined;
    for (let i = middle.indexOf(shape.sep, 1); i > 0; i = middle.indexOf(shape.sep, i + 1)) {
      const first = middle.slice(0, i);
      const second = middle.slice(i + shape.sep.length);
      if (!LABEL_PART.test(first) || !LABEL_PART.test(second)) continue;
      const [key, service] = shape.keyFirst ? [first, second] : [second, first];
      if (this.isService(service) && (!best || service.length > best.service.length)) best = { service, key };
    }
    return best;
  }

  /**
   * The preview URL for this key, when one is configured, the key can stand in a hostname,
   * and the URL leads back to this service and key.
   */
  urlFor(service: string, key: string): string | undefined {
    if (!this.template || !DNS_LABEL.test(key)) return undefined;
    const url = this.template.replaceAll('{key}', key).replaceAll('{service}', service);
    const back = this.match(new URL(url).hostname);
    return back?.service === service && back.key === key ? url : undefined;
  }
}

/**
 * Characters no routing key may hold: a comma is how several headers of one name arrive
 * joined (`t1, t2`: which tenant?), and whitespace, separators and control characters have
 * no place in a tenant id or a label but do in tricks that make two readers disagree.
 */
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it refuses
const KEY_FORBIDDEN = /[\u0000-\u0020\u007f,;"\\]/;
export const MAX_KEY_LENGTH = 200;

/** Why `key` cannot be a routing key (tenant id or label); undefined when it can. */
export function routingKeyProblem(key: string): string | undefined {
  if (key.length > MAX_KEY_LENGTH) return `is longer than ${MAX_KEY_LENGTH} characters`;
  const bad = KEY_FORBIDDEN.exec(key);
  if (!bad) return undefined;
  const ch = bad[0] as string;
  const shown =
    ch === ',' ? 'a comma (several tenant headers, or several tenants in one)' : JSON.stringify(ch);
  return `holds ${shown}; a routing key is one tenant id or label, without spaces, commas, semicolons, quotes, backslashes or control characters`;
}

export interface RoutingKeyOptions {
  order: KeySource[];
  tenantHeader: string;
  baggageKey: string;
}

/** The request's routing key from the first source, in the configured order, that has one. */
export function routingKeyOf(
  headers: Record<string, string | string[] | undefined>,
  hostKey: string | undefined,
  opts: RoutingKeyOptions,
): RoutingKey | undefined {
  for (const source of opts.order) {
    if (source === 'header') {
      const value = headers[opts.tenantHeader];
      if (typeof value === 'string' && value !== '') return { key: value, source };
    } else if (source === 'baggage') {
      const value = baggageValue(headers.baggage, opts.baggageKey);
      if (value) return { key: value, source };
    } else if (hostKey) {
      return { key: hostKey, source };
    }
  }
  return undefined;
}
