import { describe, expect, it } from 'vitest';
import type { ServiceConfig } from '../../server/config/config.js';
import { ServiceResolver } from '../../server/routing/service-resolver.js';

const svc = (upstream: string, extra: Partial<ServiceConfig> = {}): ServiceConfig => ({
  upstream: [upstream],
  healthCheck: false,
  hosts: [],
  stripPrefix: false,
  upstreamHttp2: true,
  ...extra,
});

function router(): ServiceResolver {
  return new ServiceResolver({
    billing: svc('http://127.0.0.1:9001', { pathPrefix: '/billing', hosts: ['pay.example.test'] }),
    'billing-admin': svc('http://127.0.0.1:9002', { pathPrefix: '/billing/admin/', stripPrefix: true }),
    orders: svc('http://127.0.0.1:9003', { hosts: ['Shop.Example.Test'] }),
    search: svc('http://127.0.0.1:9004', { pathPrefix: '/api/search', stripPrefix: true }),
  });
}

const name = (r: ReturnType<ServiceResolver['resolve']>) => r?.service.name;

describe('ServiceResolver', () => {
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
      const r = router().resolve(
        { 'x-kelsingra-service': '  ORDERS ', host: 'pay.example.test' },
        '/billing/x?y=1',
      );
      expect(name(r)).toBe('orders');
      expect(r?.path).toBe('/billing/x?y=1');
    });

    it('naming an unknown service does not fall back to host or path', () => {
      expect(
        router().resolve({ 'x-kelsingra-service': 'ghost', host: 'pay.example.test' }, '/billing'),
      ).toBeUndefined();
    });
  });

  describe('host', () => {
    it('matches a configured host, case-insensitively', () => {
      expect(name(router().resolve({ host: 'pay.example.test' }, '/'))).toBe('billing');
      expect(name(router().resolve({ host: 'shop.example.TEST' }, '/'))).toBe('orders');
    });

    it('ignores the port of the Host header', () => {
      const r = router().resolve({ host: 'pay.example.test:8443' }, '/anything');
      expect(name(r)).toBe('billing');
      expect(r?.path).toBe('/anything');
    });

    it('configured host beats path prefix', () => {
      expect(name(router().resolve({ host: 'shop.example.test' }, '/billing/x'))).toBe('orders');
    });

    it('falls back to the first DNS label of Host, with or without a port', () => {
      expect(name(router().resolve({ host: 'orders.dev.example.com' }, '/x'))).toBe('orders');
      expect(name(router().resolve({ host: 'search.dev.example.com:8080' }, '/x'))).toBe('search');
      expect(name(router().resolve({ host: 'orders' }, '/x'))).toBe('orders');
      expect(name(router().resolve({ host: 'orders:80' }, '/x'))).toBe('orders');
    });

    it('only the first label counts', () => {
      expect(router().resolve({ host: 'dev.orders.example.com' }, '/x')).toBeUndefined();
    });

    it('does not mistake an IPv6 literal for a label', () => {
      expect(router().resolve({ host: '[::1]:7701' }, '/x')).toBeUndefined();
    });
  });

  describe('path prefix', () => {
    it('matches the prefix exactly, followed by /, ? or #', () => {
      const r = router();
      expect(name(r.resolve({ host: 'gw.example.test' }, '/billing'))).toBe('billing');
      expect(name(r.resolve({ host: 'gw.example.test' }, '/billing/invoices/7'))).toBe('billing');
      expect(name(r.resolve({ host: 'gw.example.test' }, '/billing?page=2'))).toBe('billing');
      expect(name(r.resolve({ host: 'gw.example.test' }, '/billing#top'))).toBe('billing');
    });

    it('respects the segment boundary: /billingx is not /billing', () => {
      expect(router().resolve({ host: 'gw.example.test' }, '/billingx')).toBeUndefined();
      expect(router().resolve({ host: 'gw.example.test' }, '/billing-old/x')).toBeUndefined();
      expect(router().resolve({ host: 'gw.example.test' }, '/bill')).toBeUndefined();
    });

    it('longest prefix wins regardless of configuration order', () => {
      const r = router().resolve({ host: 'gw.example.test' }, '/billing/admin/users');
      expect(name(r)).toBe('billing-admin');
      // /billing/administrator is not under /billing/admin, so it belongs to /billing.
      expect(name(router().resolve({ host: 'gw.example.test' }, '/billing/administrator'))).toBe('billing');
      // Same with the services configured the other way round.
      const reversed = new ServiceResolver({
        a: svc('http://127.0.0.1:1', { pathPrefix: '/a/b/c' }),
        b: svc('http://127.0.0.1:2', { pathPrefix: '/a' }),
        c: svc('http://127.0.0.1:3', { pathPrefix: '/a/b' }),
      });
      expect(name(reversed.resolve({}, '/a/b/c/d'))).toBe('a');
      expect(name(reversed.resolve({}, '/a/b/x'))).toBe('c');
      expect(name(reversed.resolve({}, '/a/x'))).toBe('b');
    });

    it('keeps the path unless stripPrefix is set', () => {
      expect(router().resolve({}, '/billing/invoices?x=1')?.path).toBe('/billing/invoices?x=1');
    });

    it('stripPrefix removes the prefix and keeps a leading slash and the query', () => {
      const r = router();
      expect(r.resolve({}, '/api/search/q?term=a')?.path).toBe('/q?term=a');
      expect(r.resolve({}, '/api/search')?.path).toBe('/');
      expect(r.resolve({}, '/api/search/')?.path).toBe('/');
      expect(r.resolve({}, '/api/search?term=a')?.path).toBe('/?term=a');
      expect(r.resolve({}, '/billing/admin/users/1')?.path).toBe('/users/1');
    });

    it('path prefix beats the first-label fallback', () => {
      expect(name(router().resolve({ host: 'orders.example.test' }, '/api/search/x'))).toBe('search');
    });
  });

  describe('unknown', () => {
    it('returns undefined when nothing matches', () => {
      expect(router().resolve({ host: 'unknown.example.test' }, '/x')).toBeUndefined();
      expect(router().resolve({}, '/x')).toBeUndefined();
    });

    it('a root prefix is not a catch-all', () => {
      const r = new ServiceResolver({ root: svc('http://127.0.0.1:1', { pathPrefix: '/' }) });
      expect(r.get('root')?.pathPrefix).toBeUndefined();
      expect(r.resolve({ host: 'x.example.test' }, '/anything')).toBeUndefined();
    });
  });
});
