import { describe, expect, it } from 'vitest';
import {
  appendForwarded,
  appendVia,
  forwardableRawHeaders,
  forwardableResponseHeaders,
  fromHttp2,
  isHopByHop,
  maskSecretHeaders,
  maskSecretQuery,
  rawToObject,
} from '../../src/shared/http/http-headers.js';

describe('isHopByHop', () => {
  it('knows the RFC 9110 connection-specific headers', () => {
    for (const h of [
      'connection',
      'keep-alive',
      'proxy-connection',
      'proxy-authorization',
      'te',
      'trailer',
      'transfer-encoding',
      'upgrade',
    ]) {
      expect(isHopByHop(h), h).toBe(true);
    }
    for (const h of ['host', 'content-length', 'cookie', 'authorization', 'x-tenant-id']) {
      expect(isHopByHop(h), h).toBe(false);
    }
  });
});

describe('forwardableRawHeaders', () => {
  it('drops hop-by-hop headers whatever their case and lowercases the rest', () => {
    const out = forwardableRawHeaders([
      'Host',
      'api.test',
      'Connection',
      'keep-alive',
      'Keep-Alive',
      'timeout=5',
      'Transfer-Encoding',
      'chunked',
      'TE',
      'trailers',
      'Upgrade',
      'h2c',
      'Proxy-Authorization',
      'Basic eA==',
      'X-Tenant-ID',
      't1',
      'Content-Type',
      'text/plain',
    ]);
    expect(out).toEqual(['host', 'api.test', 'x-tenant-id', 't1', 'content-type', 'text/plain']);
  });

  it('drops the headers a Connection header names, case-insensitively', () => {
    const out = forwardableRawHeaders([
      'X-Secret-Hop',
      'a',
      'Connection',
      'close, X-Secret-Hop ,  x-other',
      'X-Other',
      'b',
      'X-Kept',
      'c',
    ]);
    expect(out).toEqual(['x-kept', 'c']);
  });

  it('honours every Connection header line, not just the first', () => {
    const out = forwardableRawHeaders([
      'Connection',
      'keep-alive',
      'Connection',
      'x-hop',
      'X-Hop',
      'secret',
      'X-Kept',
      'c',
    ]);
    expect(out).toEqual(['x-kept', 'c']);
  });

  it('keeps duplicates, in order', () => {
    const out = forwardableRawHeaders([
      'Cookie',
      'a=1',
      'Accept',
      'text/html',
      'Cookie',
      'b=2',
      'X-Forwarded-For',
      '10.0.0.1',
      'X-Forwarded-For',
      '10.0.0.2',
    ]);
    expect(out).toEqual([
      'cookie',
      'a=1',
      'accept',
      'text/html',
      'cookie',
      'b=2',
      'x-forwarded-for',
      '10.0.0.1',
      'x-forwarded-for',
      '10.0.0.2',
    ]);
  });

  it('drops the extra names a caller asks for', () => {
    expect(forwardableRawHeaders(['Expect', '100-continue', 'Host', 'h'], new Set(['expect']))).toEqual([
      'host',
      'h',
    ]);
  });

  it('does not mutate its input', () => {
    const raw = ['Connection', 'x-a', 'X-A', '1'];
    forwardableRawHeaders(raw);
    expect(raw).toEqual(['Connection', 'x-a', 'X-A', '1']);
  });
});

describe('forwardableResponseHeaders', () => {
  it('drops hop-by-hop and Connection-listed headers, keeps array values', () => {
    const out = forwardableResponseHeaders({
      connection: 'keep-alive, x-hop',
      'keep-alive': 'timeout=5',
      'transfer-encoding': 'chunked',
      'x-hop': 'gone',
      'set-cookie': ['a=1', 'b=2'],
      'content-type': 'application/json',
      'x-undefined': undefined,
    });
    expect(out).toEqual({ 'set-cookie': ['a=1', 'b=2'], 'content-type': 'application/json' });
  });

  it('handles several Connection values given as an array', () => {
    expect(
      forwardableResponseHeaders({ connection: ['close', 'x-one'], 'x-one': '1', 'x-two': '2' }),
    ).toEqual({ 'x-two': '2' });
  });
});

describe('Forwarded and Via', () => {
  it('starts a Forwarded header for an IPv4 client', () => {
    expect(appendForwarded(undefined, '10.1.2.3', 'api.test')).toBe(
      'for=10.1.2.3;proto=http;host="api.test"',
    );
  });

  it('quotes and brackets an IPv6 client as RFC 7239 requires', () => {
    expect(appendForwarded(undefined, '::1', undefined)).toBe('for="[::1]";proto=http');
    expect(appendForwarded(undefined, '::ffff:127.0.0.1', 'h')).toBe(
      'for="[::ffff:127.0.0.1]";proto=http;host="h"',
    );
  });

  it('appends to what the caller already sent', () => {
    expect(appendForwarded('for=192.0.2.60;proto=https', '10.0.0.1', 'h:8080')).toBe(
      'for=192.0.2.60;proto=https, for=10.0.0.1;proto=http;host="h:8080"',
    );
  });

  it('says unknown when the address is gone, and cannot be broken out of the quoted host', () => {
    expect(appendForwarded(undefined, undefined, 'a"b')).toBe('for=unknown;proto=http;host="ab"');
  });

  it('Via appends this hop', () => {
    expect(appendVia(undefined)).toBe('1.1 kelsingra');
    expect(appendVia('1.1 traefik')).toBe('1.1 traefik, 1.1 kelsingra');
  });
});

describe('rawToObject', () => {
  it('turns repeated names into arrays in order, single names into strings', () => {
    expect(
      rawToObject(['a', '1', 'set-cookie', 'x=1', 'b', '2', 'set-cookie', 'y=2', 'set-cookie', 'z=3']),
    ).toEqual({
      a: '1',
      b: '2',
      'set-cookie': ['x=1', 'y=2', 'z=3'],
    });
  });

  it('is empty for an empty list', () => {
    expect(rawToObject([])).toEqual({});
  });
});

describe('fromHttp2', () => {
  it('drops pseudo-headers and restores :authority as host', () => {
    expect(
      fromHttp2({
        ':method': 'GET',
        ':path': '/x',
        ':scheme': 'http',
        ':authority': 'api.test:81',
        'x-tenant-id': 't1',
        'set-cookie': ['a=1', 'b=2'],
      }),
    ).toEqual({ host: 'api.test:81', 'x-tenant-id': 't1', 'set-cookie': ['a=1', 'b=2'] });
  });

  it('an explicit host header wins over :authority', () => {
    expect(fromHttp2({ ':authority': 'tunnel', host: 'api.test' })).toEqual({ host: 'api.test' });
  });

  it('no :authority, no host', () => {
    expect(fromHttp2({ ':status': '200' as unknown as string, 'content-type': 'text/plain' })).toEqual({
      'content-type': 'text/plain',
    });
  });
});

describe('maskSecretHeaders', () => {
  it('masks credentials and token-like headers, joins arrays, keeps the rest readable', () => {
    const out = maskSecretHeaders({
      authorization: 'Bearer s3cret',
      'Proxy-Authorization': 'Basic eA==',
      cookie: 'sid=abc',
      'set-cookie': ['a=1', 'b=2'],
      'x-api-key': 'k',
      'x-csrf-token': 't',
      'X-Client-Secret': 's',
      'x-db-password': 'p',
      'x-session-id': 'sess',
      'x-kelsingra-token': 'k',
      'x-tenant-id': 't1',
      accept: ['text/html', 'application/json'],
      'x-missing': undefined,
    });
    expect(out).toEqual({
      authorization: '***',
      'Proxy-Authorization': '***',
      cookie: '***',
      'set-cookie': '***',
      'x-api-key': '***',
      'x-csrf-token': '***',
      'X-Client-Secret': '***',
      'x-db-password': '***',
      'x-session-id': '***',
      'x-kelsingra-token': '***',
      'x-tenant-id': 't1',
      accept: 'text/html, application/json',
    });
  });

  it('never leaks the secret value anywhere in its output', () => {
    const out = JSON.stringify(
      maskSecretHeaders({ authorization: 'Bearer very-secret-value', 'x-auth-token': 'very-secret-value' }),
    );
    expect(out).not.toContain('very-secret-value');
  });

  it('gives the same answer on repeated calls (no stateful regex)', () => {
    for (let i = 0; i < 3; i++) expect(maskSecretHeaders({ 'x-token': 'v' })).toEqual({ 'x-token': '***' });
  });
});

describe('wider credential masking', () => {
  it('masks api-key and auth headers whatever their prefix', () => {
    const out = maskSecretHeaders({
      'x-goog-api-key': 'g',
      apikey: 'a',
      'x-forwarded-authorization': 'Bearer f',
      'x-original-cookie': 'sid=1',
      'x-request-id': 'r-1',
    });
    expect(out).toEqual({
      'x-goog-api-key': '***',
      apikey: '***',
      'x-forwarded-authorization': '***',
      'x-original-cookie': '***',
      'x-request-id': 'r-1',
    });
  });
});

describe('maskSecretQuery', () => {
  it('masks the values of credential-like query parameters and keeps the rest', () => {
    expect(maskSecretQuery('/cb?access_token=abc&page=2&api_key=k#frag')).toBe(
      '/cb?access_token=***&page=2&api_key=***#frag',
    );
    expect(maskSecretQuery('/x?sig=s&X-Amz-Signature=q')).toBe('/x?sig=***&X-Amz-Signature=***');
  });

  it('leaves paths without secrets untouched', () => {
    expect(maskSecretQuery('/invoices/42?page=2')).toBe('/invoices/42?page=2');
    expect(maskSecretQuery('/token-docs')).toBe('/token-docs');
  });
});
