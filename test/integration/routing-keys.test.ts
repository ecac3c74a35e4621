/**
 * Where a request's routing key comes from: the W3C baggage header, preview-URL hosts, a
 * label in front of a service's host, the configured order of sources, and the config that
 * sets them up.
 */
import { describe, expect, it } from 'vitest';
import { type ServiceConfig, validateConfig } from '../../server/config/config.js';
import {
  baggageValue,
  PreviewHosts,
  type RoutingKeyOptions,
  routingKeyOf,
  validPreviewTemplate,
} from '../../server/routing/routing-keys.js';
import { ServiceResolver } from '../../server/routing/service-resolver.js';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';
import { run } from '../support/helpers.js';
import { serverConfigFrom } from '../support/server-env.js';

describe('baggageValue (W3C baggage)', () => {
  it('finds the key among several members, with properties and optional whitespace', () => {
    expect(baggageValue('tenant=t1', 'tenant')).toBe('t1');
    expect(baggageValue('userId=alice,tenant=t1,isProduction=false', 'tenant')).toBe('t1');
    expect(baggageValue('userId=alice;p=1, tenant=t1;ttl=30;secret, other=x', 'tenant')).toBe('t1');
    expect(baggageValue('  tenant  =  t1  ;prop  , a=b', 'tenant')).toBe('t1');
    // The last member, with a property and nothing after it.
    expect(baggageValue('a=1, tenant=t9;prop', 'tenant')).toBe('t9');
  });

  it('percent-decodes the value; a malformed escape is kept as it came', () => {
    expect(baggageValue('tenant=team%20one', 'tenant')).toBe('team one');
    expect(baggageValue('tenant=caf%C3%A9', 'tenant')).toBe('café');
    expect(baggageValue('tenant=a%2Cb, x=y', 'tenant')).toBe('a,b');
    expect(baggageValue('tenant=100%zz', 'tenant')).toBe('100%zz');
    // "=" is a valid value octet.
    expect(baggageValue('tenant=a=b', 'tenant')).toBe('a=b');
  });

  it('says nothing for a missing key, an empty value, or no header', () => {
    expect(baggageValue(undefined, 'tenant')).toBeUndefined();
    expect(baggageValue('', 'tenant')).toBeUndefined();
    expect(baggageValue('userId=alice, region=eu', 'tenant')).toBeUndefined();
    expect(baggageValue('tenant=', 'tenant')).toBeUndefined();
    expect(baggageValue('tenant= ;prop=1, a=b', 'tenant')).toBeUndefined();
    // A member without "=" does not make the next member's key part of it.
    expect(baggageValue('junk, tenant=t1', 'tenant')).toBe('t1');
  });

  it('matches the whole key, not a key that starts or ends with it, nor a property', () => {
    expect(baggageValue('tenantx=t9', 'tenant')).toBeUndefined();
    expect(baggageValue('xtenant=t9', 'tenant')).toBeUndefined();
    expect(baggageValue('tenantx=t9, tenant=t1', 'tenant')).toBe('t1');
    expect(baggageValue('a=1;tenant=t9', 'tenant')).toBeUndefined();
    expect(baggageValue('a=1;tenant=t9, tenant=t1', 'tenant')).toBe('t1');
  });

  it('reads several baggage headers (an array) as one list; the first entry for the key wins', () => {
    expect(baggageValue(['userId=alice', 'tenant=t2;p'], 'tenant')).toBe('t2');
    expect(baggageValue(['tenant=t1', 'tenant=t2'], 'tenant')).toBe('t1');
    expect(baggageValue(['a=1', 'b=2'], 'tenant')).toBeUndefined();
    expect(baggageValue([], 'tenant')).toBeUndefined();
  });

  it('reads a configured key other than tenant', () => {
    expect(baggageValue('tenant=t1, org=acme', 'org')).toBe('acme');
  });
});

describe('preview URL templates', () => {
  it.each([
    'https://{key}--{service}.dev.example.com',
    'http://{service}-{key}.preview.example.test:8080',
    'https://{key}.{service}.dev.example.com/',
  ])('accepts %s', (template) => {
    expect(validPreviewTemplate(template)).toBe(true);
  });

  it.each([
    ['no {key}', 'https://{service}.dev.example.com'],
    ['no {service}', 'https://{key}.dev.example.com'],
    ['{key} twice', 'https://{key}--{key}--{service}.dev.example.com'],
    ['placeholders in the path', 'https://dev.example.com/{key}/{service}'],
    ['key in the path', 'https://{service}.dev.example.com/{key}'],
    ['not a URL', '{key}--{service}.dev.example.com'],
    ['not http(s)', 'ftp://{key}--{service}.dev.example.com'],
    ['empty', ''],
  ])('refuses a template with %s', (_what, template) => {
    expect(validPreviewTemplate(template)).toBe(false);
  });

  const services = new Set(['billing', 'orders', 'billing-v2']);
  const hosts = (template?: string) => new PreviewHosts(template, (s) => services.has(s));

  it('reads the key and the service from a preview host', () => {
    const p = hosts('https://{key}--{service}.dev.example.com');
    expect(p.configured).toBe(true);
    expect(p.match('t1--billing.dev.example.com')).toEqual({ service: 'billing', key: 't1' });
    expect(p.match('feature-7--orders.dev.example.com')).toEqual({ service: 'orders', key: 'feature-7' });
    // A service with a dash in its name.
    expect(p.match('t1--billing-v2.dev.example.com')).toEqual({ service: 'billing-v2', key: 't1' });
  });

  it('a key with "--" in it: a--b--billing is key a--b when b--billing is no service', () => {
    const p = hosts('https://{key}--{service}.dev.example.com');
    expect(p.match('a--b--billing.dev.example.com')).toEqual({ service: 'billing', key: 'a--b' });
    // When the shorter key leaves a real service, that reading wins.
    const both = new PreviewHosts('https://{key}--{service}.dev.example.com', (s) =>
      ['billing', 'b--billing'].includes(s),
    );
    expect(both.match('a--b--billing.dev.example.com')).toEqual({ service: 'b--billing', key: 'a' });
  });

  it('the service may come first in the template', () => {
    const p = hosts('https://{service}--{key}.dev.example.com');
    expect(p.match('billing--t1.dev.example.com')).toEqual({ service: 'billing', key: 't1' });
    expect(p.match('billing--a--b.dev.example.com')).toEqual({ service: 'billing', key: 'a--b' });
  });

  it('matches no unknown service, no other domain, and nothing without a template', () => {
    const p = hosts('https://{key}--{service}.dev.example.com');
    expect(p.match('t1--ghost.dev.example.com')).toBeUndefined();
    expect(p.match('t1--billing.prod.example.com')).toBeUndefined();
    expect(p.match('t1--billing.dev.example.com.evil.test')).toBeUndefined();
    expect(p.match('x.t1--billing.dev.example.com')).toBeUndefined();
    expect(p.match('billing.dev.example.com')).toBeUndefined();
    // The dots of the domain are literal, not "any character".
    expect(p.match('t1--billing.devXexample.com')).toBeUndefined();
    const none = hosts(undefined);
    expect(none.configured).toBe(false);
    expect(none.match('t1--billing.dev.example.com')).toBeUndefined();
    expect(none.urlFor('billing', 't1')).toBeUndefined();
  });

  it('a port in the template: hosts match without it, and the URL keeps it', () => {
    const p = hosts('http://{key}--{service}.dev.example.test:8080');
    expect(p.match('t1--billing.dev.example.test')).toEqual({ service: 'billing', key: 't1' });
    expect(p.urlFor('billing', 't1')).toBe('http://t1--billing.dev.example.test:8080');
  });

  it('urlFor fills the template, and gives nothing for a key that cannot be a DNS label', () => {
    const p = hosts('https://{key}--{service}.dev.example.com');
    expect(p.urlFor('billing', 't1')).toBe('https://t1--billing.dev.example.com');
    expect(p.urlFor('orders', 'feature-7')).toBe('https://feature-7--orders.dev.example.com');
    expect(p.urlFor('billing', 'a'.repeat(63))).toBe(`https://${'a'.repeat(63)}--billing.dev.example.com`);
    for (const key of ['T1', 'team_a', 'a.b', '-a', 'a-', 'a b', 'a/b', '', 'a'.repeat(64), 'café']) {
      expect(p.urlFor('billing', key), key).toBeUndefined();
    }
  });
});

describe('preview URLs round trip', () => {
  // The URL `intercept` prints for (service, key) must route back to that service and key.
  const services = ['billing', 'billing-v2'];
  const roundTrip = (template: string, service: string, key: string) => {
    const p = new PreviewHosts(template, (s) => services.includes(s));
    const url = p.urlFor(service, key);
    return url === undefined ? undefined : p.match(new URL(url).hostname);
  };

  it('{key}-{service}: a dashed key with a dashed service is found', () => {
    expect(roundTrip('https://{key}-{service}.dev.example.com', 'billing-v2', 'team-a')).toEqual({
      service: 'billing-v2',
      key: 'team-a',
    });
  });

  it('{service}-{key}: billing-v2-t1 is not billing with key v2-t1', () => {
    const back = roundTrip('https://{service}-{key}.dev.example.com', 'billing-v2', 't1');
    // Either the right reading, or no preview URL at all for an ambiguous one.
    expect(back === undefined || (back.service === 'billing-v2' && back.key === 't1')).toBe(true);
  });
});

describe('routingKeyOf', () => {
  const opts = (order: RoutingKeyOptions['order']): RoutingKeyOptions => ({
    order,
    tenantHeader: 'x-tenant-id',
    baggageKey: 'tenant',
  });
  const all = { 'x-tenant-id': 'from-header', baggage: 'tenant=from-baggage' };

  it('by default the tenant header comes before baggage, which comes before the subdomain', () => {
    const order = opts(['header', 'baggage', 'subdomain']);
    expect(routingKeyOf(all, 'from-host', order)).toEqual({ key: 'from-header', source: 'header' });
    expect(routingKeyOf({ baggage: 'tenant=from-baggage' }, 'from-host', order)).toEqual({
      key: 'from-baggage',
      source: 'baggage',
    });
    expect(routingKeyOf({ baggage: 'other=1' }, 'from-host', order)).toEqual({
      key: 'from-host',
      source: 'subdomain',
    });
    expect(routingKeyOf({}, undefined, order)).toBeUndefined();
  });

  it('follows a custom order: subdomain first, then the header', () => {
    const order = opts(['subdomain', 'header']);
    expect(routingKeyOf(all, 'from-host', order)).toEqual({ key: 'from-host', source: 'subdomain' });
    expect(routingKeyOf(all, undefined, order)).toEqual({ key: 'from-header', source: 'header' });
    // Baggage is not in this order: it is ignored.
    expect(routingKeyOf({ baggage: 'tenant=from-baggage' }, undefined, order)).toBeUndefined();
  });

  it('a source left out of the order is never read', () => {
    expect(routingKeyOf(all, 'from-host', opts(['baggage']))).toEqual({
      key: 'from-baggage',
      source: 'baggage',
    });
    expect(routingKeyOf({ 'x-tenant-id': 't1' }, 'from-host', opts(['baggage']))).toBeUndefined();
    expect(routingKeyOf({}, 'from-host', opts(['header', 'baggage']))).toBeUndefined();
  });

  it('an empty tenant header or baggage entry counts as missing', () => {
    const order = opts(['header', 'baggage', 'subdomain']);
    expect(routingKeyOf({ 'x-tenant-id': '', baggage: 'tenant=' }, 'from-host', order)).toEqual({
      key: 'from-host',
      source: 'subdomain',
    });
  });

  it('uses the configured tenant header and baggage key', () => {
    const custom: RoutingKeyOptions = {
      order: ['header', 'baggage'],
      tenantHeader: 'x-org',
      baggageKey: 'org',
    };
    expect(routingKeyOf({ 'x-tenant-id': 't1', 'x-org': 'acme' }, undefined, custom)).toEqual({
      key: 'acme',
      source: 'header',
    });
    expect(routingKeyOf({ 'x-tenant-id': 't1', baggage: 'tenant=t1,org=globex' }, undefined, custom)).toEqual(
      {
        key: 'globex',
        source: 'baggage',
      },
    );
  });
});

describe('ServiceResolver: keys in the host', () => {
  const svc = (upstream: string, extra: Partial<ServiceConfig> = {}): ServiceConfig =>
    ({ upstream: [upstream], hosts: [], stripPrefix: false, healthCheck: false, ...extra }) as ServiceConfig;
  const router = () =>
    new ServiceResolver(
      {
        billing: svc('http://127.0.0.1:9001', { hosts: ['example.test'] }),
        orders: svc('http://127.0.0.1:9002'),
        search: svc('http://127.0.0.1:9003', { pathPrefix: '/api/search' }),
      },
      'http://{key}--{service}.dev.example.test',
    );
  const seen = (host: string, url = '/x') => {
    const r = router().resolve({ host }, url);
    return r && { service: r.service.name, hostKey: r.hostKey, path: r.path };
  };

  it('a preview host names the service and the key, port or no port', () => {
    expect(seen('t1--billing.dev.example.test')).toEqual({ service: 'billing', hostKey: 't1', path: '/x' });
    expect(seen('T1--Orders.Dev.Example.Test:8443')).toEqual({
      service: 'orders',
      hostKey: 't1',
      path: '/x',
    });
    expect(seen('a--b--orders.dev.example.test')).toEqual({ service: 'orders', hostKey: 'a--b', path: '/x' });
  });

  it('a label in front of a configured host is the key for that host’s service', () => {
    expect(seen('feature1.example.test')).toEqual({ service: 'billing', hostKey: 'feature1', path: '/x' });
    expect(seen('feature1.example.test:80')).toEqual({ service: 'billing', hostKey: 'feature1', path: '/x' });
  });

  it('the configured host itself carries no key', () => {
    expect(seen('example.test')).toEqual({ service: 'billing', hostKey: undefined, path: '/x' });
    expect(seen('EXAMPLE.test:8080')).toEqual({ service: 'billing', hostKey: undefined, path: '/x' });
  });

  it('the first-label and path-prefix rules still work, without a key', () => {
    expect(seen('orders.svc.cluster.local')).toEqual({ service: 'orders', hostKey: undefined, path: '/x' });
    expect(seen('orders')).toEqual({ service: 'orders', hostKey: undefined, path: '/x' });
    expect(seen('gateway.internal', '/api/search/q')).toEqual({
      service: 'search',
      hostKey: undefined,
      path: '/api/search/q',
    });
  });

  it('a preview host for an unknown service, or two labels deep, routes nowhere', () => {
    expect(seen('t1--ghost.dev.example.test')).toBeUndefined();
    expect(seen('a.feature1.example.test')).toBeUndefined();
  });

  it('without a preview template, a preview-looking host is just an unknown first label', () => {
    const plain = new ServiceResolver({ billing: svc('http://127.0.0.1:9001') });
    expect(plain.resolve({ host: 't1--billing.dev.example.test' }, '/')).toBeUndefined();
    expect(plain.preview.urlFor('billing', 't1')).toBeUndefined();
  });
});

/** Runs `fn`, expects a KelsingraError, and returns it. */
async function failure(fn: () => unknown): Promise<KelsingraError> {
  try {
    await fn();
  } catch (err) {
    expect(err).toBeInstanceOf(KelsingraError);
    return err as KelsingraError;
  }
  throw new Error('expected a KelsingraError, nothing was thrown');
}

describe('routing key configuration', () => {
  const minimal = { token: 's3cret-token', services: { billing: { upstream: 'http://127.0.0.1:9001' } } };

  it('defaults: header, then baggage, then subdomain; baggage key tenant; no preview URL', () => {
    const c = validateConfig(minimal, 'test');
    expect(c.routingKeys).toEqual(['header', 'baggage', 'subdomain']);
    expect(c.baggageKey).toBe('tenant');
    expect(c.previewUrl).toBeUndefined();
  });

  it('takes an order, a baggage key and a preview template', () => {
    const c = validateConfig(
      {
        ...minimal,
        routingKeys: ['subdomain', 'header'],
        baggageKey: 'org.id',
        previewUrl: 'https://{key}--{service}.dev.example.com',
      },
      'test',
    );
    expect(c.routingKeys).toEqual(['subdomain', 'header']);
    expect(c.baggageKey).toBe('org.id');
    expect(c.previewUrl).toBe('https://{key}--{service}.dev.example.com');
  });

  it.each([
    [
      { routingKeys: ['header', 'cookie'] },
      'routingKeys.1: Invalid option: expected one of "header"|"baggage"|"subdomain"',
    ],
    [{ routingKeys: [] }, 'routingKeys: name at least one of header, baggage, subdomain'],
    [{ routingKeys: ['header', 'baggage', 'header'] }, 'routingKeys: name each source once'],
    [{ baggageKey: 'my tenant' }, 'baggageKey: must be a baggage key'],
    [{ baggageKey: '' }, 'baggageKey: must be a baggage key'],
    [
      { previewUrl: 'https://dev.example.com/{key}/{service}' },
      'previewUrl: must be a URL whose host holds {key} and {service}, such as https://{key}--{service}.dev.example.com',
    ],
    [
      { previewUrl: 'https://{service}.dev.example.com' },
      'previewUrl: must be a URL whose host holds {key} and {service}',
    ],
  ])('refuses %j, naming the key and the reason', async (bad, message) => {
    const err = await failure(() => validateConfig({ ...minimal, ...bad }, 'kelsingra.yaml'));
    expect(err.exitCode).toBe(ExitCode.config);
    expect(err.message).toContain('kelsingra.yaml is not valid');
    expect(err.message).toContain(message);
  });

  it('reads KELSINGRA_ROUTING_KEYS, KELSINGRA_BAGGAGE_KEY and KELSINGRA_PREVIEW_URL; flags win', async () => {
    const env = {
      KELSINGRA_TOKEN: 's3cret-token',
      KELSINGRA_SERVICES: 'billing=http://127.0.0.1:9001',
      KELSINGRA_ROUTING_KEYS: ' subdomain , baggage ',
      KELSINGRA_BAGGAGE_KEY: 'org',
      KELSINGRA_PREVIEW_URL: 'http://{key}--{service}.dev.example.test',
    };
    const fromEnv = await serverConfigFrom(env);
    expect(fromEnv.routingKeys).toEqual(['subdomain', 'baggage']);
    expect(fromEnv.baggageKey).toBe('org');
    expect(fromEnv.previewUrl).toBe('http://{key}--{service}.dev.example.test');
    const flagged = await serverConfigFrom(env, {
      'routing-keys': 'header',
      'baggage-key': 'team',
      'preview-url': 'https://{service}-{key}.x.test',
    });
    expect(flagged.routingKeys).toEqual(['header']);
    expect(flagged.baggageKey).toBe('team');
    expect(flagged.previewUrl).toBe('https://{service}-{key}.x.test');
  });

  it('a bad value from the environment is named too', async () => {
    const err = await failure(() =>
      serverConfigFrom({
        KELSINGRA_TOKEN: 's3cret-token',
        KELSINGRA_SERVICES: 'billing=http://127.0.0.1:9001',
        KELSINGRA_ROUTING_KEYS: 'header,cookies',
      }),
    );
    expect(err.message).toContain('routingKeys.1:');
    expect(err.message).toContain('"header"|"baggage"|"subdomain"');
  });

  it('kelsingra server refuses bad --routing-keys and --preview-url with the config exit code and the reason', async () => {
    const base = [
      'server',
      '--port',
      '0',
      '--proxy-port',
      '0',
      '--service',
      'billing=http://127.0.0.1:9001',
      '--token',
      's3cret-token',
    ];
    const keys = await run([...base, '--routing-keys', 'header,cookie'], {});
    expect(keys.exitCode).toBe(ExitCode.config);
    expect(keys.stderr).toContain(
      'routingKeys.1: Invalid option: expected one of "header"|"baggage"|"subdomain"',
    );
    const preview = await run([...base, '--preview-url', 'https://preview.example.com'], {});
    expect(preview.exitCode).toBe(ExitCode.config);
    expect(preview.stderr).toContain('previewUrl: must be a URL whose host holds {key} and {service}');
  });
});
