/**
 * For base services that cannot change the topic they read (`filter` mode): a helper for
 * their kafkajs consumers that says whether a message is theirs to process, fed live by
 * the server agent's route table. Messages of a tenant whose Kafka traffic a developer has
 * intercepted are skipped: Kelsingra delivers those to the developer.
 *
 *   const filter = await createTenantFilter({ server, token, service: 'billing', topic: 'orders' });
 *   await consumer.run({ eachMessage: async ({ message }) => {
 *     if (!filter.shouldProcess(message)) return;
 *     …
 *   } });
 */

import type { IHeaders } from 'kafkajs';
import pRetry from 'p-retry';
import { headerText, KAFKA_HOP_HEADER } from '../../shared/kafka-wire.js';
import type { InterceptView } from '../../shared/protocol.js';
import { followEvents } from '../api/server-events.js';

export interface TenantFilterOptions {
  /** The server agent's control-port URL. */
  server: string;
  /** A token that sees every tenant (a tenant-limited token would hide other tenants' intercepts). */
  token: string;
  service: string;
  /** The dev topic this consumer reads. */
  topic: string;
  tenantHeader?: string;
  /** Told when the live feed breaks and when it is back (the last known intercepts stay in force meanwhile). */
  onFeedError?: (err: Error) => void;
}

export interface TenantFilter {
  shouldProcess(message: { headers?: IHeaders }): boolean;
  /** Tenants currently intercepted on this service and topic. */
  intercepted(): string[];
  close(): void;
}

export async function createTenantFilter(opts: TenantFilterOptions): Promise<TenantFilter> {
  const tenantHeader = (opts.tenantHeader ?? 'x-tenant-id').toLowerCase();
  const byId = new Map<string, string>();
  /** Tenant → intercept id, derived from byId on each change: changes are rare, lookups per message. */
  let tenants = new Map<string, string>();
  const changed = () => {
    tenants = new Map([...byId].map(([id, tenant]) => [tenant, id]));
  };
  const abort = new AbortController();
  const applies = (i: InterceptView) => i.service === opts.service && i.kafkaTopics?.includes(opts.topic);
  let markReady: () => void = () => {};
  const ready = new Promise<void>((resolve) => {
    markReady = resolve;
  });

  const follow = async () => {
    for await (const event of followEvents({ server: opts.server, token: opts.token }, {}, abort.signal)) {
      if (event.type === 'snapshot') {
        byId.clear();
        for (const i of event.intercepts) if (applies(i)) byId.set(i.id, i.tenant);
        changed();
        markReady();
      } else if (event.type === 'intercept') {
        if (event.action === 'ended') byId.delete(event.intercept.id);
        else if (applies(event.intercept)) byId.set(event.intercept.id, event.intercept.tenant);
        changed();
      }
    }
    if (!abort.signal.aborted) throw new Error('the server agent closed the event stream');
  };
  // The first connection must work (a wrong URL or token should fail loudly); later breaks are retried for ever.
  const first = follow();
  const firstOutcome = await Promise.race([ready.then(() => 'ready' as const), first]);
  if (firstOutcome !== 'ready')
    throw new Error('the server agent closed the event stream before its snapshot');
  first
    .catch((err: Error) => opts.onFeedError?.(err))
    .then(() =>
      pRetry(follow, {
        retries: Number.POSITIVE_INFINITY,
        minTimeout: 500,
        maxTimeout: 10_000,
        signal: abort.signal,
        onFailedAttempt: ({ error }) => opts.onFeedError?.(error),
      }),
    )
    .catch((err: Error) => {
      if (!abort.signal.aborted) opts.onFeedError?.(err);
    });

  return {
    shouldProcess(message) {
      const tenant = headerText(message.headers, tenantHeader);
      if (tenant === undefined) return true;
      const intercept = tenants.get(tenant);
      // What the developer forwarded back from their machine, Kelsingra does not send to them again: the base takes it.
      return intercept === undefined || headerText(message.headers, KAFKA_HOP_HEADER) === intercept;
    },
    intercepted: () => [...tenants.keys()],
    close: () => abort.abort(),
  };
}
