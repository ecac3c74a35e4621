/**
 * Protocol records for tests that drive the dashboard without a server: one builder each,
 * shared by the model tests and the Ink view tests so both feed it the same shapes.
 */
import type { InterceptView, RequestRecord, UpgradeInfo } from '../../src/shared/protocol.js';

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

/**
 * A WebSocket through `interceptId` as the server records it when it closes: GET /chat → 101,
 * open 12.3 s, 1.2 KiB from the caller and 3.4 KiB from the local service, the caller closed
 * with 1000.
 */
export function webSocketRecord(
  interceptId: string,
  over: Partial<RequestRecord> = {},
  upgrade: Partial<UpgradeInfo> = {},
): RequestRecord {
  return requestRecord(interceptId, {
    path: '/chat',
    status: 101,
    durationMs: 12_300,
    bytesOut: 3500,
    ...over,
    upgrade: {
      protocol: 'websocket',
      bytesIn: 1200,
      closedBy: 'local',
      closeFrom: 'caller',
      code: 1000,
      messagesIn: 3,
      messagesOut: 5,
      ...upgrade,
    },
  });
}
