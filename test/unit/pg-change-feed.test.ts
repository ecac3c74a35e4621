/**
 * The store notices a replica reads from PostgreSQL: what the triggers send is read as is, and
 * a notice of another shape is logged and dropped rather than breaking the change feed.
 */
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { parseNotification } from '../../server/store/pg-change-feed.js';

const row = {
  id: 'icp_1',
  service: 'orders',
  tenant: 't1',
  holder: 'dev@host',
  token_name: 'dev',
  client_key: 'k',
  local_port: 3000,
  kafka_topics: [],
  replica_id: 'r1',
  epoch: 1,
  created_at: '2026-01-01T00:00:00Z',
  expires_at: '2026-01-01T00:00:30Z',
  change: 7,
};

function logged() {
  const lines: string[] = [];
  const log = pino({ level: 'warn' }, { write: (line: string) => lines.push(line) });
  return { log, lines };
}

describe('parseNotification', () => {
  it('reads the notices the triggers send', () => {
    const { log, lines } = logged();
    expect(parseNotification(JSON.stringify({ op: 'upsert', row }), log)).toEqual({ op: 'upsert', row });
    expect(parseNotification(JSON.stringify({ op: 'delete', reason: 'left', row }), log)?.op).toBe('delete');
    expect(parseNotification('{"op":"route","id":"rt","change":3,"deleted":true}', log)).toEqual({
      op: 'route',
      id: 'rt',
      change: 3,
      deleted: true,
    });
    expect(parseNotification('{"op":"tokens"}', log)).toEqual({ op: 'tokens' });
    expect(lines).toEqual([]);
  });

  it('logs and ignores a payload that is not JSON or not of a known shape', () => {
    const { log, lines } = logged();
    expect(parseNotification('not json', log)).toBeUndefined();
    expect(parseNotification('{"op":"upsert","row":{"id":1}}', log)).toBeUndefined();
    expect(parseNotification('{"op":"delete","reason":"bored","row":{}}', log)).toBeUndefined();
    expect(parseNotification('{"op":"shrug"}', log)).toBeUndefined();
    expect(lines).toHaveLength(4);
  });
});
