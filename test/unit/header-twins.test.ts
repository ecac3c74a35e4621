import { describe, expect, it } from 'vitest';
import {
  AMBIGUOUS_HEADER,
  ambiguityRefusal,
  cgiName,
  HeaderGuard,
  HTTP_GUARDED,
} from '../../src/shared/http/header-twins.js';
import { forwardableRawHeaders } from '../../src/shared/http/http-headers.js';

const guard = new HeaderGuard([...HTTP_GUARDED, 'x-tenant-id']);

describe('header twins (the CGI reading of a name)', () => {
  it('folds names as a CGI-style server does', () => {
    for (const n of ['x-tenant-id', 'X_TENANT_ID', 'x_Tenant-id', 'X-Tenant_Id'])
      expect(cgiName(n)).toBe('x-tenant-id');
    expect(cgiName('x-tenantid')).not.toBe('x-tenant-id');
  });

  it('finds a twin of a guarded header, alone or beside it, and names it as the request spelled it', () => {
    expect(guard.ambiguity(['X-Tenant-ID', 't1', 'x_tenant_id', 't2'])).toEqual({
      header: 'x_tenant_id',
      twinOf: 'x-tenant-id',
      guarded: true,
    });
    expect(guard.ambiguity(['X_Tenant-Id', 't2'])).toMatchObject({
      header: 'X_Tenant-Id',
      twinOf: 'x-tenant-id',
    });
    // Every Kelsingra header, whatever follows the prefix.
    expect(guard.ambiguity(['x_kelsingra_whatever', '1'])).toMatchObject({ twinOf: 'x-kelsingra-whatever' });
    expect(guard.ambiguity(['x_request_id', 'r'])).toMatchObject({ twinOf: 'x-request-id' });
  });

  it('finds two spellings of any one header; takes one spelling, repeated or in any case, and unrelated underscores', () => {
    expect(guard.ambiguity(['x-role', 'viewer', 'X_ROLE', 'admin'])).toMatchObject({
      header: 'X_ROLE',
      twinOf: 'x-role',
      guarded: false,
    });
    expect(guard.ambiguity(['X-Tenant-ID', 't1', 'x-tenant-id', 't2'])).toBeUndefined();
    expect(
      guard.ambiguity(['my_header', 'a', 'MY_HEADER', 'b', 'cookie', 'a=1', 'Cookie', 'b=2']),
    ).toBeUndefined();
  });

  it('follows the configured tenant header, whatever its spelling', () => {
    const custom = new HeaderGuard(['x_org']);
    expect(custom.ambiguity(['x_org', 'o1'])).toBeUndefined();
    expect(custom.ambiguity(['x-org', 'o1'])).toMatchObject({ header: 'x-org', twinOf: 'x_org' });
    expect(custom.covers('X-ORG')).toBe(true);
    expect(custom.covers('x-kelsingra_hop')).toBe(true);
    expect(custom.covers('traceparent')).toBe(false);
  });

  it('words the refusal with the header, what it is read as, and a hint', () => {
    const a = guard.ambiguity(['x_tenant_id', 't2']);
    expect(a).toBeDefined();
    const { message, extra } = ambiguityRefusal(a as NonNullable<typeof a>);
    expect(AMBIGUOUS_HEADER).toBe('ambiguous-header');
    expect(message).toContain('"x_tenant_id"');
    expect(message).toContain('"x-tenant-id"');
    expect(extra).toMatchObject({ header: 'x_tenant_id', twinOf: 'x-tenant-id' });
    expect(String(extra.hint)).toContain('x-tenant-id');
  });
});

describe('forwardableRawHeaders with a guard', () => {
  it('lets no Connection line remove a guarded header, and still honours it for the rest', () => {
    const raw = [
      'X-Tenant-ID',
      't1',
      'Baggage',
      'k=v',
      'X-Debug',
      '1',
      'Connection',
      'x-tenant-id, baggage, x-debug, x-kelsingra-service',
      'X-Kelsingra-Service',
      'billing',
    ];
    expect(forwardableRawHeaders(raw, undefined, guard)).toEqual([
      'x-tenant-id',
      't1',
      'baggage',
      'k=v',
      'x-kelsingra-service',
      'billing',
    ]);
    // Without one, as before: the caller's Connection line decides.
    expect(forwardableRawHeaders(raw)).toEqual([]);
  });
});
