/**
 * Property-based tests (fast-check) of the routing-key parsers: the W3C baggage reader, preview
 * hosts, the order of key sources, and the service router. Whatever a caller puts in Host,
 * baggage or the path, none of them may throw, and what they do find must be what was sent.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { validateConfig } from '../../server/config/config.js';
import {
  baggageValue,
  type KeySource,
  PreviewHosts,
  type RoutingKeyOptions,
  routingKeyOf,
} from '../../server/routing/routing-keys.js';
import { ServiceResolver } from '../../server/routing/service-resolver.js';

/** A baggage key: an HTTP token. */
const TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const tokenArb = fc.string({ unit: fc.constantFrom(...TOKEN_CHARS), minLength: 1, maxLength: 12 });
/** Any text, as a tenant id might be; sent percent-encoded. */
const valueArb = fc.string({ unit: 'grapheme', maxLength: 20 });
/** Optional whitespace, which W3C allows around members, keys and values. */
const owsArb = fc.constantFrom('', ' ', '  ', '\t');
/**
 * A DNS label, as service names and preview keys are; half from a tiny alphabet, so that names,
 * keys and separators often overlap (`a-b` as service `a` with key `b`, or service `a-b`).
 */
const labelArb = fc.oneof(
  fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$/),
  fc.stringMatching(/^[ab]([ab-]{0,4}[ab])?$/),
);
/** Hostile header text: any code units, lone surrogates, separators and percent signs included. */
const junkArb = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 60 }),
  fc.string({
    unit: fc.constantFrom(',', ';', '=', '%', ' ', 'a', 'E', '0', '\u00e9', '\ud800'),
    maxLength: 60,
  }),
);

interface Member {
  key: string;
  value: string;
  props: string[];
  ows: [string, string, string, string];
}

const memberArb: fc.Arbitrary<Member> = fc.record({
  key: tokenArb,
  value: valueArb,
  props: fc.array(
    fc.oneof(
      tokenArb,
      fc.tuple(tokenArb, tokenArb).map(([k, v]) => `${k}=${v}`),
    ),
    {
      maxLength: 2,
    },
  ),
  ows: fc.tuple(owsArb, owsArb, owsArb, owsArb),
});

function renderMember(m: Member): string {
  const [a, b, c, d] = m.ows;
  const props = m.props.map((p) => `;${p}`).join('');
  return `${a}${m.key}${b}=${c}${encodeURIComponent(m.value)}${props}${d}`;
}

describe('baggageValue', () => {
  it('never throws on any header, string or list, and any key', () => {
    fc.assert(
      fc.property(
        fc.oneof(tokenArb, junkArb).chain((key) =>
          fc.tuple(
            fc.oneof(
              fc.constant(undefined),
              junkArb,
              fc.array(junkArb, { maxLength: 5 }),
              // The key present, with a value that is no valid percent-encoding (`%E0`, `%`, lone surrogates).
              fc.tuple(junkArb, junkArb).map(([value, rest]) => `${key}=${value},${rest}`),
            ),
            fc.constant(key),
          ),
        ),
        ([header, key]) => {
          const value = baggageValue(header, key);
          expect(value === undefined || typeof value === 'string').toBe(true);
        },
      ),
      { numRuns: 500 },
    );
  });

  it('returns the decoded value of the first member with the key', () => {
    fc.assert(
      fc.property(fc.array(memberArb, { minLength: 1, maxLength: 30 }), tokenArb, (members, other) => {
        const header = members.map(renderMember).join(',');
        for (const key of [...new Set(members.map((m) => m.key)), other]) {
          const first = members.find((m) => m.key === key);
          // An empty value is no key at all, not a reason to look further.
          const expected = first && first.value !== '' ? first.value : undefined;
          expect(baggageValue(header, key)).toBe(expected);
        }
      }),
      { numRuns: 200 },
    );
  });

  it('reads several baggage headers as one list', () => {
    fc.assert(
      fc.property(
        fc.array(fc.array(memberArb, { minLength: 1, maxLength: 5 }), { minLength: 1, maxLength: 5 }),
        tokenArb,
        (headers, key) => {
          const lines = headers.map((members) => members.map(renderMember).join(','));
          expect(baggageValue(lines, key)).toBe(baggageValue(lines.join(','), key));
        },
      ),
      { numRuns: 200 },
    );
  });

  it('never lets a key match a longer key it is a prefix or suffix of', () => {
    fc.assert(
      fc.property(tokenArb, tokenArb, valueArb, fc.boolean(), (key, extra, value, before) => {
        const longer = before ? `${extra}${key}` : `${key}${extra}`;
        const header = `${longer}=${encodeURIComponent(value || 'x')}`;
        expect(baggageValue(header, key)).toBeUndefined();
        expect(baggageValue(`${header},${key}=v`, key)).toBe('v');
      }),
      { numRuns: 200 },
    );
  });

  it('takes bounded time on long hostile headers', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(',', '=', ';', 'a', ' ', 'a=', ',=', 'k=v;', '%', '=,'),
        fc.constantFrom('tenant', 'a', ''),
        (unit, key) => {
          // Past what any data port accepts (32 KiB of headers), as one string and as many.
          const text = unit.repeat(Math.ceil((256 * 1024) / unit.length));
          const started = performance.now();
          baggageValue(text, key);
          baggageValue(
            Array.from({ length: 2000 }, () => text.slice(0, 128)),
            key,
          );
          expect(performance.now() - started).toBeLessThan(250);
        },
      ),
      { numRuns: 30 },
    );
  });
});

const TEMPLATES = [
  'https://{key}--{service}.dev.example.com',
  'https://{service}-{key}.dev.example.com',
  'https://{key}.{service}.example.com',
  'http://pr-{key}_{service}.preview.example.com:8443/app',
  'https://{service}.{key}.preview.example.com',
] as const;

/** The text between key and service in a template's host. */
function separatorOf(template: string): string {
  const host = template.replace(/^https?:\/\//, '').split(/[:/]/)[0] as string;
  const k = host.indexOf('{key}');
  const s = host.indexOf('{service}');
  return k < s ? host.slice(k + 5, s) : host.slice(s + 9, k);
}

describe('PreviewHosts', () => {
  it('urlFor round-trips through match, or declines only for ambiguous hosts', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...TEMPLATES),
        fc.uniqueArray(labelArb, { minLength: 1, maxLength: 6 }),
        fc.nat(),
        labelArb,
        (template, services, pick, key) => {
          const set = new Set(services);
          const preview = new PreviewHosts(template, (name) => set.has(name));
          const service = services[pick % services.length] as string;
          const url = preview.urlFor(service, key);
          const sep = separatorOf(template);
          if (url === undefined) {
            // Only a separator inside a name or the key can make a host name something else.
            expect([key, ...services].some((s) => s.includes(sep))).toBe(true);
            const host = new URL(template.replace('{key}', key).replace('{service}', service)).hostname;
            expect(preview.match(host)).not.toEqual({ service, key });
            return;
          }
          expect(url.startsWith(template.slice(0, template.indexOf(':')))).toBe(true);
          expect(preview.match(new URL(url).hostname)).toEqual({ service, key });
        },
      ),
      { numRuns: 300 },
    );
  });

  it('on hosts that split several ways, match takes the longest configured service', () => {
    // Names and keys made of the separator's own characters: `a-b-a` is service a with key
    // b-a, or service a-b with key a. urlFor must decline the pair match would not give back.
    const ambiguous = fc
      .record({
        template: fc.constantFrom(TEMPLATES[0], TEMPLATES[1]),
        parts: fc.array(fc.stringMatching(/^[ab]{1,2}$/), { minLength: 2, maxLength: 5 }),
        cut: fc.nat(),
        others: fc.array(fc.tuple(fc.nat(), fc.nat()), { maxLength: 4 }),
      })
      .map(({ template, parts, cut, others }) => {
        const sep = separatorOf(template);
        const keyFirst = template.indexOf('{key}') < template.indexOf('{service}');
        const c = 1 + (cut % (parts.length - 1));
        const [first, second] = [parts.slice(0, c).join(sep), parts.slice(c).join(sep)];
        const [key, service] = keyFirst ? [first, second] : [second, first];
        const services = new Set([service]);
        for (const [i, j] of others) {
          const a = i % parts.length;
          const b = a + 1 + (j % (parts.length - a));
          services.add(parts.slice(a, b).join(sep));
        }
        return { template, sep, keyFirst, key, service, services };
      });
    let declined = 0;
    fc.assert(
      fc.property(ambiguous, ({ template, sep, keyFirst, key, service, services }) => {
        const preview = new PreviewHosts(template, (name) => services.has(name));
        const host = new URL(template.replace('{key}', key).replace('{service}', service)).hostname;
        // The model: every split of the middle at the separator, the longest configured service.
        const middle = keyFirst ? `${key}${sep}${service}` : `${service}${sep}${key}`;
        let best: { service: string; key: string } | undefined;
        for (let i = middle.indexOf(sep, 1); i > 0; i = middle.indexOf(sep, i + 1)) {
          const [a, b] = [middle.slice(0, i), middle.slice(i + sep.length)];
          if (!/^[a-z0-9-]+$/.test(a) || !/^[a-z0-9-]+$/.test(b)) continue;
          const [k, s] = keyFirst ? [a, b] : [b, a];
          if (services.has(s) && (!best || s.length > best.service.length)) best = { service: s, key: k };
        }
        expect(preview.match(host)).toEqual(best);
        const url = preview.urlFor(service, key);
        if (url === undefined) declined++;
        expect(url === undefined).toBe(best?.service !== service || best.key !== key);
      }),
      { numRuns: 300 },
    );
    // The generator must really reach the ambiguous cases it is for.
    expect(declined).toBeGreaterThan(0);
  });

  it('match never throws, and names only configured services and label keys', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...TEMPLATES, undefined, 'not a url {key}', 'https://{key}{service}.x'),
        fc.uniqueArray(labelArb, { maxLength: 4 }),
        fc.oneof(
          junkArb,
          fc.tuple(labelArb, junkArb, labelArb).map((p) => p.join('')),
        ),
        (template, services, host) => {
          const set = new Set(services);
          const found = new PreviewHosts(template, (name) => set.has(name)).match(host);
          if (found) {
            expect(set.has(found.service)).toBe(true);
            expect(found.key).toMatch(/^[a-z0-9-]+$/);
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('urlFor declines keys that cannot stand in a hostname, and never throws', () => {
    fc.assert(
      fc.property(fc.constantFrom(...TEMPLATES), labelArb, junkArb, (template, service, key) => {
        const preview = new PreviewHosts(template, (name) => name === service);
        const url = preview.urlFor(service, key);
        if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(key)) expect(url).toBeUndefined();
      }),
      { numRuns: 300 },
    );
  });
});

const SOURCES: KeySource[] = ['header', 'baggage', 'subdomain'];

describe('routingKeyOf', () => {
  it('takes the key from the first source in the configured order that has one', () => {
    fc.assert(
      fc.property(
        fc.shuffledSubarray(SOURCES, { minLength: 1 }),
        fc.option(valueArb, { nil: undefined }),
        fc.option(valueArb, { nil: undefined }),
        fc.option(labelArb, { nil: undefined }),
        fc.array(memberArb, { maxLength: 3 }),
        (order, tenant, baggage, hostKey, noise) => {
          const opts: RoutingKeyOptions = { order, tenantHeader: 'x-tenant-id', baggageKey: 'tenant' };
          const members = noise.filter((m) => m.key !== 'tenant').map(renderMember);
          if (baggage !== undefined) members.push(`tenant=${encodeURIComponent(baggage)}`);
          const headers = {
            'x-tenant-id': tenant,
            baggage: members.length ? members.join(',') : undefined,
          };
          const has: Record<KeySource, string | undefined> = {
            header: tenant || undefined,
            baggage: baggage || undefined,
            subdomain: hostKey || undefined,
          };
          const source = order.find((s) => has[s] !== undefined);
          expect(routingKeyOf(headers, hostKey, opts)).toEqual(
            source ? { key: has[source], source } : undefined,
          );
        },
      ),
      { numRuns: 300 },
    );
  });
});

const serviceEntryArb = fc.record({
  upstream: fc.constantFrom('http://127.0.0.1:9001', 'https://billing.internal', 'http://[::1]:8080'),
  hosts: fc.array(
    fc.oneof(
      labelArb.map((l) => `${l}.example.com`),
      labelArb,
    ),
    { maxLength: 2 },
  ),
  pathPrefix: fc.option(
    fc.array(labelArb, { minLength: 1, maxLength: 2 }).map((p) => `/${p.join('/')}`),
    { nil: undefined },
  ),
  stripPrefix: fc.boolean(),
});

const routerArb = fc
  .tuple(
    fc.dictionary(labelArb, serviceEntryArb, { minKeys: 1, maxKeys: 5 }),
    fc.constantFrom(...TEMPLATES, undefined),
  )
  .map(([services, previewUrl]) => {
    const config = validateConfig({ services, previewUrl }, 'generated');
    return { router: new ServiceResolver(config.services, config.previewUrl), names: Object.keys(services) };
  });

const headerValueArb = fc.oneof(
  fc.constant(undefined),
  junkArb,
  fc.array(junkArb, { maxLength: 3 }),
  labelArb,
  fc.tuple(labelArb, fc.constantFrom('.', '--', '-', ':'), labelArb).map((p) => p.join('')),
);

describe('ServiceResolver.route', () => {
  it('never throws on any Host, service header or path, and routes only to configured services', () => {
    fc.assert(
      fc.property(
        routerArb,
        headerValueArb,
        headerValueArb,
        fc.oneof(junkArb, fc.webPath()),
        ({ router, names }, host, service, url) => {
          const result = router.resolve({ host, 'x-kelsingra-service': service }, url);
          if (!result) return;
          expect(names).toContain(result.service.name);
          expect(typeof result.path).toBe('string');
          if (result.hostKey !== undefined) expect(result.hostKey).not.toBe('');
        },
      ),
      { numRuns: 300 },
    );
  });

  it('an explicit service header naming a configured service always wins', () => {
    fc.assert(
      fc.property(
        routerArb,
        fc.nat(),
        headerValueArb,
        fc.webPath(),
        owsArb,
        ({ router, names }, i, host, url, ws) => {
          const name = names[i % names.length] as string;
          const result = router.resolve(
            { host, 'x-kelsingra-service': `${ws}${name.toUpperCase()}${ws}` },
            url,
          );
          expect(result?.service.name).toBe(name);
          expect(result?.path).toBe(url);
        },
      ),
      { numRuns: 200 },
    );
  });
});
