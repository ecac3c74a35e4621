/**
 * Protocol records for tests that drive the dashboard without a server: one builder each,
 * shared by the model tests and the Ink view tests so both feed it the same shapes.
 */
import type { InterceptView, RequestRecord } from '../src/protocol.js';

/** An intercept as the server lists it (billing, tenant t1, held by alice), created at `t0`. */
export function interceptView(id: string, over: Partial<InterceptView> = {}, t0 = Date.now()): InterceptView {
  return {
    id,
    service: 'billing',
    tenant: 't1',
    holder: 'alice',
    tunnelId: 't_c1',
    localPort: 3000,
    createdAt: new Date(t0).toISOString(),
    expiresAt: new Date(t0 + 30_000).toISOString(),
    connected: true,
    replica: 'ks-1',
    kafkaTopics: [],
    ...over,
  };
}

/** A request through `interceptId` (GET /invoices/1 → 200 in 10 ms), made now unless `over.at` says when. */
export function requestRecord(interceptId: string, over: Partial<RequestRecord> = {}): RequestRecord {
  return {
    type: 'request',
    interceptId,
    service: 'billing',
    tenant: 't1',
    holder: 'alice',
    method: 'GET',
    path: '/invoices/1',
    status: 200,
    durationMs: 10,
    bytesOut: 100,
    at: Date.now(),
    ...over,
  };
}
