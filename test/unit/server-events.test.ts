import { describe, expect, it } from 'vitest';
import { streamEventOf } from '../../src/client/api/server-events.js';
import { KelsingraError } from '../../src/shared/errors.js';

const record = {
  type: 'request',
  interceptId: 'icp_1',
  requestId: 'r1',
  service: 'billing',
  tenant: 't1',
  holder: 'dev@laptop',
  method: 'GET',
  path: '/invoices',
  status: 200,
  durationMs: 1.5,
  bytesOut: 12,
  at: 1_700_000_000_000,
  upgrade: { protocol: 'websocket', bytesIn: 3, closedBy: 'caller', code: 1000 },
};

describe('events read off the server stream', () => {
  it('takes each kind the server sends, as it sent it', () => {
    expect(streamEventOf(JSON.stringify(record))).toEqual(record);
    expect(streamEventOf('{"type":"live","at":5}')).toEqual({ type: 'live', at: 5 });
  });

  it('refuses a malformed event with the field that is wrong and a hint about versions', () => {
    const bad = JSON.stringify({ ...record, status: 'ok' });
    expect(() => streamEventOf(bad)).toThrow(KelsingraError);
    try {
      streamEventOf(bad);
    } catch (err) {
      expect((err as KelsingraError).message).toContain('does not understand');
      expect((err as KelsingraError).hint).toContain('kelsingra status');
    }
    expect(() => streamEventOf('not json')).toThrow(/not JSON/);
  });
});
