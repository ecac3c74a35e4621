import { STATUS_CODES } from 'node:http';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES, errorEnvelope, HttpError } from '../../src/shared/error-codes.js';
import { hasErrorCode, KelsingraError } from '../../src/shared/errors.js';

describe('the error vocabulary', () => {
  it('gives every code an HTTP error status and a meaning, in kebab-case', () => {
    for (const [code, { status, meaning }] of Object.entries(ERROR_CODES)) {
      expect(code, code).toMatch(/^[a-z]+(-[a-z0-9]+)*$/);
      expect(status >= 400 && status <= 599 && STATUS_CODES[status] !== undefined, `${code}: ${status}`).toBe(
        true,
      );
      expect(meaning.length, code).toBeGreaterThan(10);
    }
  });

  it('builds the one envelope every agent answers with', () => {
    expect(JSON.parse(errorEnvelope('local-timeout', 'no answer', { intercept: 'icp_1' }))).toEqual({
      error: 'Kelsingra: no answer',
      code: 'local-timeout',
      source: 'kelsingra',
      intercept: 'icp_1',
    });
  });

  it('tells an error by its code, and an HttpError keeps status, code and extra', () => {
    const err = new KelsingraError('no gateway', 1, undefined, { code: 'no-gateway' });
    expect(hasErrorCode(err, 'no-gateway')).toBe(true);
    expect(hasErrorCode(err, 'conflict')).toBe(false);
    expect(hasErrorCode(new Error('no-gateway'), 'no-gateway')).toBe(false);
    const http = new HttpError(413, 'body-too-large', 'too big', { max: 10 });
    expect([http.status, http.code, http.message, http.extra]).toEqual([
      413,
      'body-too-large',
      'too big',
      { max: 10 },
    ]);
  });
});
