import { describe, expect, it } from 'vitest';
import type { ServiceConfig } from '../../server/config/config.js';
import { ServiceRouter } from '../../server/routing/routing.js';

const svc = (upstream: string, extra: Partial<ServiceConfig> = {}): ServiceConfig => ({
  upstream: [upstream],
  healthCheck: false,
  hosts: [],
  stripPrefix: false,
  upstreamHttp2: true,
  ...extra,
});

function router(): ServiceRouter {
  return new ServiceRouter({
    billing: svc('http://127.0.0.1:9001', { pathPrefix: '/billing', hosts: ['pay.example.test'] }),
    'billing-admin': svc('http://127.0.0.1:9002', { pathPrefix: '/billing/admin/', stripPrefix: true }),
    orders: svc('http://127.0.0.1:9003', { hosts: ['Shop.Example.Test'] }),
    search: svc('http://127.0.0.1:9004', { pathPrefix: '/api/search', stripPrefix: true }),
  });
}

const name = (r: ReturnType<ServiceRouter['route']>) => r?.service.name;

describe('ServiceRouter', () => {
  it('knows its services by name with parsed upstreams', () => {
    const r = router();
    expect(r.names.sort()).toEqual(['billing', 'billing-admin', 'orders', 'search']);
    expect(r.get('orders')?.upstream).toBeInstanceOf(URL);
    expect(r.get('orders')?.upstream.port).toBe('9003');
    expect(r.get('nope')).toBeUndefined();
    // A trailing slash on the prefix is normalised away.
    expect(r.get('billing-admin')?.pathPrefix).toBe('/billing/admin');
  });

  describe('explicit X-Kelsingra-Service header', () => {
    it('wins over host and path, case- and whitespace-insensitively, path untouched', () => {
      const r = router().route(
        { 'x-kelsingra-service': '  ORDERS ', host: 'pay.example.test' },
        '/billing/x?y=1',
      );
      expect(name(r)).toBe('orders');
      expect(r?.path).toBe('/billing/x?y=1');
    });

    it('naming an unknown service does not fall back to host or path', () => {
      expect(
        router().route({ 'x-kelsingra-service': 'ghost', host: 'pay.example.test' }, '/billing'),
      ).toBeUndefined();
    });
  });

  describe('host', () => {
    it('matches a configured host, case-insensitively', () => {
      expect(name(router().route({ host: 'pay.example.test' }, '/'))).toBe('billing');
      expect(name(router().route({ host: 'shop.example.TEST' }, '/'))).toBe('orders');
    });

    it('ignores the port of the Host header', () => {
      const r = router().route({ host: 'pay.example.test:8443' }, '/anything');
      expect(name(r)).toBe('billing');
      expect(r?.path).toBe('/anything');
    });

    it('configured host beats path prefix', () => {
      expect(name(router().route({ host: 'shop.example.test' }, '/billing/x'))).toBe('orders');
    });

    it('falls back to the first DNS label of Host, with or without a port', () => {
      expect(name(router().route({ host: 'orders.dev.example.com' }, '/x'))).toBe('orders');
      expect(name(router().route({ host: 'search.dev.example.com:8080' }, '/x'))).toBe('search');
      expect(name(router().route({ host: 'orders' }, '/x'))).toBe('orders');
      expect(name(router().route({ host: 'orders:80' }, '/x'))).toBe('orders');
    });

    it('only the first label counts', () => {
      expect(router().route({ host: 'dev.orders.example.com' }, '/x')).toBeUndefined();
    });

    it('does not mistake an IPv6 literal for a label', () => {
      expect(router().route({ host: '[::1]:7701' }, '/x')).toBeUndefined();
    });
  });

  describe('path prefix', () => {
    it('matches the prefix exactly, followed by /, ? or #', () => {
      const r = router();
      expect(name(r.route({ host: 'gw.example.test' }, '/billing'))).toBe('billing');
      expect(name(r.route({ host: 'gw.example.test' }, '/billing/invoices/7'))).toBe('billing');
      expect(name(r.route({ host: 'gw.example.test' }, '/billing?page=2'))).toBe('billing');
      expect(name(r.route({ host: 'gw.example.test' }, '/billing#top'))).toBe('billing');
    });

    it('respects the segment boundary: /billingx is not /billing', () => {
      expect(router().route({ host: 'gw.example.test' }, '/billingx')).toBeUndefined();
      expect(router().route({ host: 'gw.example.test' }, '/billing-old/x')).toBeUndefined();
      expect(router().route({ host: 'gw.example.test' }, '/bill')).toBeUndefined();
    });

    it('longest prefix wins regardless of configuration order', () => {
      const r = router().route({ host: 'gw.example.test' }, '/billing/admin/users');
      expect(name(r)).toBe('billing-admin');
      // /billing/administrator is not under /billing/admin, so it belongs to /billing.
      expect(name(router().route({ host: 'gw.example.test' }, '/billing/administrator'))).toBe('billing');
      // Same with the services configured the other way round.
      const reversed = new ServiceRouter({
        a: svc('http://127.0.0.1:1', { pathPrefix: '/a/b/c' }),
        b: svc('http://127.0.0.1:2', { pathPrefix: '/a' }),
        c: svc('http://127.0.0.1:3', { pathPrefix: '/a/b' }),
      });
      expect(name(reversed.route({}, '/a/b/c/d'))).toBe('a');
      expect(name(reversed.route({}, '/a/b/x'))).toBe('c');
      expect(name(reversed.route({}, '/a/x'))).toBe('b');
    });

    it('keeps the path unless stripPrefix is set', () => {
      expect(router().route({}, '/billing/invoices?x=1')?.path).toBe('/billing/invoices?x=1');
    });

    it('stripPrefix removes the prefix and keeps a leading slash and the query', () => {
      const r = router();
      expect(r.route({}, '/api/search/q?term=a')?.path).toBe('/q?term=a');
      expect(r.route({}, '/api/search')?.path).toBe('/');
      expect(r.route({}, '/api/search/')?.path).toBe('/');
      expect(r.route({}, '/api/search?term=a')?.path).toBe('/?term=a');
      expect(r.route({}, '/billing/admin/users/1')?.path).toBe('/users/1');
    });

    it('path prefix beats the first-label fallback', () => {
      expect(name(router().route({ host: 'orders.example.test' }, '/api/search/x'))).toBe('search');
    });
  });

  describe('unknown', () => {
    it('returns undefined when nothing matches', () => {
      expect(router().route({ host: 'unknown.example.test' }, '/x')).toBeUndefined();
      expect(router().route({}, '/x')).toBeUndefined();
    });

    it('a root prefix is not a catch-all', () => {
      const r = new ServiceRouter({ root: svc('http://127.0.0.1:1', { pathPrefix: '/' }) });
      expect(r.get('root')?.pathPrefix).toBeUndefined();
      expect(r.route({ host: 'x.example.test' }, '/anything')).toBeUndefined();
    });
  });
});
