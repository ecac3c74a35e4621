/**
 * Property-based tests (fast-check) of the server agent's config loader: whatever a file, the
 * environment or the flags hold, loading ends in a config or in a KelsingraError (exit 7 for
 * config, 2 for usage) that names the bad key; never in a crash.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { stringify as toYaml } from 'yaml';
import {
  configFromEnv,
  mergeLayers,
  parseServiceFlag,
  readConfigFile,
  servicesFromFlags,
  validateConfig,
} from '../../server/config/config.js';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';
import { tempDir } from '../support/helpers.js';

const KNOWN_KEYS = [
  'port',
  'proxyPort',
  'host',
  'tenantHeader',
  'leaseTtl',
  'heartbeatInterval',
  'upstreamTimeout',
  'token',
  'tokensFile',
  'tokens',
  'services',
  'routingKeys',
  'baggageKey',
  'previewUrl',
  'databaseUrl',
  'advertiseUrl',
  'kafka',
  'logLevel',
];

/** Each line of a validation error: `  <dotted key>: <why>`. */
const ISSUE_LINE = /^ {2}(\S.*?): (.*)$/;

/** Asserts `fn` returns, or throws a KelsingraError with this exit code; returns the error. */
function outcome<T>(fn: () => T, exitCode: number): { value?: T; error?: KelsingraError } {
  try {
    return { value: fn() };
  } catch (err) {
    expect(err, `threw ${String(err)}`).toBeInstanceOf(KelsingraError);
    expect((err as KelsingraError).exitCode).toBe(exitCode);
    return { error: err as KelsingraError };
  }
}

/** The keys a validation error names, first path segment of each issue line. */
function namedKeys(error: KelsingraError, source: string): string[] {
  const [head, ...lines] = error.message.split('\n');
  expect(head).toBe(`${source} is not valid:`);
  expect(lines.length).toBeGreaterThan(0);
  return lines.map((line) => {
    const m = ISSUE_LINE.exec(line);
    expect(m, `not an issue line: ${JSON.stringify(line)}`).not.toBeNull();
    return (m ? (m[1] as string) : '').split('.')[0] as string;
  });
}

const labelArb = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$/);
/** Keys that are special to JavaScript objects: they must be settings or names like any other. */
const objectKeyArb = fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf');
const urlArb = fc.oneof(
  fc.webUrl({ validSchemes: ['http', 'https'] }),
  fc.nat({ max: 65535 }).map((p) => `http://127.0.0.1:${p}`),
);

/** Values as YAML or JSON may hold them, often of the right kind and often not. */
const settingValueArb = fc.oneof(
  fc.jsonValue({ maxDepth: 3 }),
  fc.integer({ min: -10, max: 70000 }),
  fc.string({ maxLength: 30 }),
  urlArb,
  fc.constantFrom('info', 'debug', 'x-tenant', 'header', 'postgres://db/k', '{key}--{service}', true),
);

/** A mapping of settings: known keys with any values, sometimes unknown keys beside them. */
const settingsArb = fc.dictionary(
  fc.oneof(fc.constantFrom(...KNOWN_KEYS), fc.string({ maxLength: 12 }), objectKeyArb),
  settingValueArb,
  { maxKeys: 6 },
);

/** A services section of every shape: right, half right, and wrong. */
const servicesArb = fc.dictionary(
  fc.oneof(labelArb, fc.string({ maxLength: 10 }), objectKeyArb),
  fc.oneof(
    urlArb,
    fc.record(
      {
        upstream: fc.oneof(urlArb, fc.array(urlArb, { maxLength: 3 }), settingValueArb),
        upstreams: fc.oneof(urlArb, fc.array(urlArb, { maxLength: 2 })),
        hosts: fc.oneof(fc.array(fc.string({ maxLength: 8 }), { maxLength: 2 }), settingValueArb),
        pathPrefix: fc.oneof(fc.webPath(), settingValueArb),
        stripPrefix: fc.oneof(fc.boolean(), settingValueArb),
        healthCheck: fc.oneof(
          fc.boolean(),
          fc.record(
            { path: fc.webPath(), interval: settingValueArb, timeout: fc.nat(10) },
            { requiredKeys: [] },
          ),
          settingValueArb,
        ),
        other: settingValueArb,
      },
      { requiredKeys: [] },
    ),
    settingValueArb,
  ),
  { maxKeys: 4 },
);

describe('validateConfig', () => {
  it('any JSON value ends in a config or a config error (exit 7) naming keys of the input', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.jsonValue({ maxDepth: 4 }),
          settingsArb,
          fc.tuple(settingsArb, servicesArb).map(([s, services]) => ({ ...s, services })),
        ),
        (input) => {
          const { error } = outcome(() => validateConfig(input, 'the file'), ExitCode.config);
          if (!error) return;
          const isMapping = typeof input === 'object' && input !== null && !Array.isArray(input);
          for (const key of namedKeys(error, 'the file')) {
            if (key === '(top level)') continue;
            expect(isMapping && Object.hasOwn(input, key), `names ${key}, not in the input`).toBe(true);
          }
          if (!isMapping) return;
          // A key the schema does not know is named by name, and so is a service name that is no DNS label.
          for (const key of Object.keys(input).filter((k) => !KNOWN_KEYS.includes(k)))
            expect(error.message).toContain(key);
          const services = (input as Record<string, unknown>).services;
          if (typeof services !== 'object' || services === null || Array.isArray(services)) return;
          const bad = Object.keys(services).filter((n) => !/^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/.test(n));
          // `__proto__` is refused before the rest of the section is looked at; then it alone is named.
          for (const name of bad.includes('__proto__') ? ['__proto__'] : bad)
            expect(error.message).toContain(`services.${name}: service names are`);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('valid configs keep their services, upstreams and ports', () => {
    const configArb = fc.record({
      port: fc.nat({ max: 65535 }),
      proxyPort: fc.nat({ max: 65535 }),
      tenantHeader: fc.stringMatching(/^[A-Za-z0-9-]{1,20}$/),
      services: fc.dictionary(
        labelArb,
        fc.record(
          {
            upstream: fc.oneof(urlArb, fc.array(urlArb, { minLength: 1, maxLength: 3 })),
            hosts: fc.array(
              labelArb.map((l) => `${l}.example.com`),
              { maxLength: 2 },
            ),
            pathPrefix: fc.webPath().map((p) => `/${p.replace(/^\/+/, '')}`),
            stripPrefix: fc.boolean(),
          },
          { requiredKeys: ['upstream'] },
        ),
        { minKeys: 1, maxKeys: 5 },
      ),
    });
    fc.assert(
      fc.property(configArb, (input) => {
        const config = validateConfig(input, 'generated');
        expect(config.port).toBe(input.port);
        expect(config.proxyPort).toBe(input.proxyPort);
        expect(config.tenantHeader).toBe(input.tenantHeader.toLowerCase());
        expect(Object.keys(config.services).sort()).toEqual(Object.keys(input.services).sort());
        for (const [name, svc] of Object.entries(input.services)) {
          const out = config.services[name];
          expect(out?.upstream).toEqual([svc.upstream].flat());
          expect(out?.hosts).toEqual(svc.hosts ?? []);
          expect(out?.pathPrefix).toBe(svc.pathPrefix);
          expect(out?.stripPrefix).toBe(svc.stripPrefix ?? false);
        }
        // Validating what validation gave is a fixed point.
        expect(validateConfig(JSON.parse(JSON.stringify(config)), 'again')).toEqual(config);
      }),
      { numRuns: 200 },
    );
  });
});

describe('readConfigFile', () => {
  const dir = tempDir('kelsingra-props-config-');
  let n = 0;
  const write = (ext: string, data: string | Uint8Array) => {
    const path = join(dir, `c${n++}.${ext}`);
    writeFileSync(path, data);
    return path;
  };

  it('garbage bytes in a config file end in a config error, never a crash', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('yaml', 'yml', 'json'),
        fc.oneof(
          fc.uint8Array({ maxLength: 300 }),
          fc.string({ unit: 'binary', maxLength: 200 }),
          // YAML-ish: the syntax characters that matter, in any order.
          fc.string({
            unit: fc.constantFrom(
              ':',
              '-',
              ' ',
              '\n',
              '\t',
              '{',
              '}',
              '[',
              ']',
              '"',
              "'",
              '&',
              '*',
              '!',
              '#',
              '|',
              '>',
              '%',
              '@',
              '`',
              ',',
              '?',
              'a',
              '1',
            ),
            maxLength: 120,
          }),
        ),
        async (ext, data) => {
          const path = write(ext, data);
          let layer: Record<string, unknown>;
          try {
            layer = await readConfigFile(path);
          } catch (err) {
            expect(err, `threw ${String(err)}`).toBeInstanceOf(KelsingraError);
            expect((err as KelsingraError).exitCode).toBe(ExitCode.config);
            expect((err as Error).message).toContain(path);
            return;
          }
          expect(typeof layer).toBe('object');
          expect(Array.isArray(layer)).toBe(false);
          outcome(() => validateConfig(layer, path), ExitCode.config);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('a mapping written as YAML or JSON reads back as the same mapping and validates alike', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('yaml', 'json'),
        fc.tuple(settingsArb, servicesArb).map(([s, services]) => ({ ...s, services })),
        async (ext, input) => {
          // What a file can hold: JSON's own values (no undefined, no -0).
          const plain = JSON.parse(JSON.stringify(input)) as Record<string, unknown>;
          const path = write(ext, ext === 'json' ? JSON.stringify(plain) : toYaml(plain));
          const layer = await readConfigFile(path);
          expect(layer).toEqual(plain);
          const direct = outcome(() => validateConfig(plain, 'x'), ExitCode.config);
          const viaFile = outcome(() => validateConfig(layer, 'x'), ExitCode.config);
          expect(viaFile.value).toEqual(direct.value);
          expect(viaFile.error?.message).toBe(direct.error?.message);
        },
      ),
      { numRuns: 150 },
    );
  });
});

describe('service flags', () => {
  it('parseServiceFlag splits at the first "=" or fails as a usage error', () => {
    const flagArb = fc.oneof(
      fc.string({ maxLength: 40 }),
      fc
        .tuple(fc.constantFrom('', ' ', 'billing', ' billing '), fc.constantFrom('=', '', '=='), fc.string())
        .map((p) => p.join('')),
    );
    fc.assert(
      fc.property(flagArb, (value) => {
        const { value: parsed, error } = outcome(() => parseServiceFlag(value), ExitCode.usage);
        const eq = value.indexOf('=');
        // No name before the first "=", or no "=" at all: a usage error that quotes the flag.
        expect(error !== undefined).toBe(eq <= 0);
        if (error) {
          expect(error.message).toContain(value);
          return;
        }
        expect(parsed).toEqual([value.slice(0, eq).trim(), { upstream: value.slice(eq + 1).trim() }]);
      }),
      { numRuns: 300 },
    );
  });

  it('servicesFromFlags keeps every name, and a repeated name gets all its URLs in order', () => {
    // Names as anyone might type them, including the ones that are special to JavaScript objects.
    const nameArb = fc.oneof(labelArb, objectKeyArb);
    fc.assert(
      fc.property(fc.array(fc.tuple(nameArb, urlArb), { maxLength: 8 }), (flags) => {
        const out = servicesFromFlags(flags.map(([name, url]) => `${name}=${url}`));
        const expected = new Map<string, string[]>();
        for (const [name, url] of flags) expected.set(name, [...(expected.get(name) ?? []), url]);
        expect(Object.keys(out).sort()).toEqual([...expected.keys()].sort());
        for (const [name, urls] of expected) {
          expect(Object.hasOwn(out, name)).toBe(true);
          expect(out[name]?.upstream).toEqual(urls.length === 1 ? urls[0] : urls);
        }
        // Then validation either takes all of them or names the one it refuses.
        const { value, error } = outcome(() => validateConfig({ services: out }, 'flags'), ExitCode.config);
        if (value) expect(Object.keys(value.services).sort()).toEqual([...expected.keys()].sort());
        else for (const key of namedKeys(error as KelsingraError, 'flags')) expect(key).toBe('services');
      }),
      { numRuns: 300 },
    );
  });
});

// The variables this layer reads (lists); one-value variables are oclif's (commands/server.ts).
const LIST_VARS = { KELSINGRA_ROUTE_TARGETS: 'routeTargets', KELSINGRA_TRUSTED_PROXIES: 'trustedProxies' };

describe('configFromEnv', () => {
  it('any environment ends in settings (then a config or exit 7), or a usage error for a bad service entry', () => {
    const envArb = fc.dictionary(
      fc.oneof(
        fc.constantFrom(...Object.keys(LIST_VARS), 'KELSINGRA_PORT', 'KELSINGRA_SERVICES', 'PATH'),
        fc.string({ maxLength: 10 }),
      ),
      fc.oneof(
        fc.string({ maxLength: 30 }),
        fc
          .array(fc.tuple(fc.oneof(labelArb, fc.string({ maxLength: 5 })), urlArb), { maxLength: 3 })
          .map((pairs) => pairs.map(([n, u]) => `${n}=${u}`).join(', ')),
        fc.shuffledSubarray(['header', 'baggage', 'subdomain', 'tenant']).map((a) => a.join(',')),
      ),
      { maxKeys: 6 },
    );
    fc.assert(
      fc.property(envArb, (env) => {
        const { value: layer, error } = outcome(() => configFromEnv(env), ExitCode.usage);
        if (error) {
          expect(env.KELSINGRA_SERVICES).toBeDefined();
          expect(error.message).toContain('--service');
          return;
        }
        for (const [name, key] of Object.entries(LIST_VARS)) {
          const items = (env[name] ?? '')
            .split(',')
            .map((v) => v.trim())
            .filter(Boolean);
          if (env[name]) expect(layer?.[key]).toEqual(items);
          else expect(layer?.[key]).toBeUndefined();
        }
        expect(layer?.port).toBeUndefined();
        const { error: invalid } = outcome(() => validateConfig(layer, 'environment'), ExitCode.config);
        if (invalid) {
          for (const key of namedKeys(invalid, 'environment'))
            expect(Object.keys(layer ?? {})).toContain(key);
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe('mergeLayers', () => {
  const serviceLayerArb = fc.dictionary(
    fc.oneof(fc.constantFrom('billing', 'orders'), objectKeyArb),
    fc.oneof(
      fc.record(
        { upstream: urlArb, hosts: fc.array(labelArb, { maxLength: 1 }) },
        { requiredKeys: ['upstream'] },
      ),
      fc.record({ upstreams: fc.array(urlArb, { minLength: 1, maxLength: 2 }) }),
      fc.record({ stripPrefix: fc.boolean() }),
    ),
    { maxKeys: 3 },
  );
  const layerArb = fc.record(
    {
      port: fc.nat({ max: 65535 }),
      host: fc.constantFrom('127.0.0.1', '0.0.0.0', undefined),
      services: serviceLayerArb,
    },
    { requiredKeys: [] },
  );
  /** Other settings, under any key, special ones included; the last layer to give one wins. */
  const extraArb = fc.dictionary(fc.oneof(objectKeyArb, fc.string({ maxLength: 6 })), fc.nat(), {
    maxKeys: 2,
  });

  it('later layers win per key, and per service for services, whichever name the upstream had', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(layerArb, extraArb), { maxLength: 4 }), (pairs) => {
        const layers = pairs.map(([l]) => l);
        const merged = mergeLayers(
          ...pairs.map(([l, extra]) => ({ ...extra, ...l }) as Record<string, unknown>),
        );
        const extras = new Map(pairs.flatMap(([, extra]) => Object.entries(extra)));
        for (const [key, value] of extras) {
          if (key === 'port' || key === 'host' || key === 'services') continue;
          expect(Object.hasOwn(merged, key), `lost ${key}`).toBe(true);
          expect(merged[key]).toBe(value);
        }
        expect(Object.getPrototypeOf(merged)).toBe(Object.prototype);
        for (const key of ['port', 'host'] as const) {
          const last = layers.map((l) => l[key]).filter((v) => v !== undefined);
          expect(merged[key]).toBe(last.at(-1));
        }
        const names = new Set(layers.flatMap((l) => Object.keys(l.services ?? {})));
        const services = (merged.services ?? {}) as Record<string, Record<string, unknown>>;
        expect(new Set(Object.keys(services))).toEqual(names);
        for (const name of names) {
          const given = layers.map((l) => l.services?.[name]).filter((s) => s !== undefined);
          const lastUpstream = given
            .map((s) => ('upstream' in s ? s.upstream : 'upstreams' in s ? s.upstreams : undefined))
            .filter((u) => u !== undefined)
            .at(-1);
          const svc = services[name] as Record<string, unknown>;
          expect(svc.upstream ?? svc.upstreams).toEqual(lastUpstream);
          expect('upstream' in svc && 'upstreams' in svc).toBe(false);
        }
      }),
      { numRuns: 300 },
    );
  });
});
