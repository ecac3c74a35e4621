/**
 * The server agent's Kafka side, started when the config has a `kafka:` section: checks
 * the configured topics, runs the splitter and the deliveries, and produces what
 * developers forward back into dev topics.
 */
import { Kafka, logLevel, Partitioners, type Producer } from 'kafkajs';
import type { Logger } from 'pino';
import { HeaderGuard } from '../../src/shared/http/header-twins.js';
import { TopicMaker } from '../../src/shared/kafka-topic-maker.js';
import {
  chunkBySize,
  fromWire,
  KAFKA_HOP_HEADER,
  messageBytes,
  type WireMessage,
} from '../../src/shared/kafka-wire.js';
import type { KafkaConfig } from '../config/config.js';
import type { Intercept, InterceptStore } from '../store/intercept-store.js';
import type { TunnelHub } from '../tunnel/tunnel-hub.js';
import { ForwardRefused } from './forward-refused.js';
import { type DeliveryLag, KafkaDelivery } from './kafka-delivery.js';
import { KafkaSplitter } from './kafka-splitter.js';
import { checkTopics, splitTopicOf } from './kafka-topics.js';

export interface KafkaStatus {
  /** Per configured topic: its mode, and messages the splitter on this replica sent each way. */
  topics: Record<
    string,
    { mode: string; diverted: number; passed: number; lastCrash?: { at: string; error: string } }
  >;
  deliveries: DeliveryLag[];
}

/** For metrics: lag by configured topic and by service, never by tenant (per-intercept topics name one). */
export interface KafkaLag {
  /** Per configured dev topic: messages the splitter has not handled yet. */
  topics: { topic: string; service: string; lag: number }[];
  /** Per delivery running on this replica: messages its developer's client has not taken yet. */
  deliveries: { service: string; lag: number }[];
}

export interface KafkaAgent {
  /** Produces a developer's messages into a dev topic as the intercept's tenant. */
  forward(intercept: Intercept, topic: string, messages: WireMessage[]): Promise<number>;
  status(): Promise<KafkaStatus>;
  lag(): Promise<KafkaLag>;
  close(): Promise<void>;
}

/** kafkajs logs through pino, quieter than its own default, under the server agent's name. */
function kafkaLogger(log: Logger) {
  return () =>
    ({ level, log: entry }: { level: logLevel; log: { message: string } & Record<string, unknown> }) => {
      const { message, timestamp: _t, logger: _l, ...extra } = entry;
      // Bounded retries are chosen on purpose: a produce must fail rather than hang, and the
      // guarantee given is at least once (docs/kafka.md), not exactly once.
      if (message.startsWith('Limiting retries for the idempotent producer')) return;
      // kafkajs logs at error level what it then retries; our own failures are logged where they are handled.
      if (level <= logLevel.WARN) log.warn({ kafka: extra }, `kafka: ${message}`);
      else log.debug({ kafka: extra }, `kafka: ${message}`);
    };
}

export async function startKafka(
  config: KafkaConfig,
  deps: { store: InterceptStore; hub: TunnelHub; tenantHeader: string; log: Logger },
): Promise<KafkaAgent> {
  const { log } = deps;
  const kafka = new Kafka({
    clientId: config.clientId,
    brokers: config.brokers,
    logLevel: logLevel.WARN,
    logCreator: kafkaLogger(log),
  });
  const admin = kafka.admin();
  // Idempotent, one request in flight: a retried batch is neither duplicated nor reordered.
  const producer: Producer = kafka.producer({
    idempotent: true,
    maxInFlightRequests: 1,
    createPartitioner: Partitioners.DefaultPartitioner,
    // Forwards name topics: a typo must fail, not create a topic in dev.
    allowAutoTopicCreation: false,
  });
  const topics = new TopicMaker(admin);
  await admin.connect();
  try {
    await checkTopics(admin, config, config.brokers.join(','));
    await producer.connect();
  } catch (err) {
    await admin.disconnect();
    throw err;
  }
  const splitTopics = new Set(
    Object.entries(config.topics)
      .filter(([, t]) => t.mode === 'split')
      .map(([name, t]) => splitTopicOf(name, t)),
  );
  const splitter = new KafkaSplitter(kafka, producer, topics, config, deps.store, log);
  await splitter.start();
  const delivery = new KafkaDelivery(kafka, topics, deps.store, deps.hub, config.clientId, log);
  deps.store.on('created', () => void delivery.reconcile());
  deps.store.on('ended', () => void delivery.reconcile());
  log.info({ topics: Object.keys(config.topics), brokers: config.brokers }, 'kafka splitter ready');

  return {
    async forward(intercept, topic, messages) {
      const reserved = topic.startsWith('kelsingra-') || splitTopics.has(topic);
      if (reserved)
        throw new ForwardRefused(`${topic} is Kelsingra's own topic; forward into a dev topic`, 403);
      if (!(await topics.exists(topic)))
        throw new ForwardRefused(
          `there is no topic ${topic} in dev; --forward-topic <local>=<dev> names an existing dev topic`,
          404,
        );
      const tenantHeader = config.topics[topic]?.tenantHeader ?? deps.tenantHeader;
      const guard = new HeaderGuard([tenantHeader]);
      const all = messages.map((w) => {
        const m = fromWire(w);
        // The developer's own copies of the tenant header and of Kelsingra's headers, in any
        // spelling a consumer may fold into one (`x_tenant_id`), would let a message pose as
        // another tenant or as already handled: only the ones set here count.
        const headers = Object.fromEntries(Object.entries(m.headers ?? {}).filter(([k]) => !guard.covers(k)));
        m.headers = { ...headers, [tenantHeader]: intercept.tenant, [KAFKA_HOP_HEADER]: intercept.id };
        return m;
      });
      for (const chunk of chunkBySize(all, messageBytes)) await producer.send({ topic, messages: chunk });
      return messages.length;
    },
    async status() {
      return {
        topics: Object.fromEntries(
          Object.entries(config.topics).map(([name, t]) => [
            name,
            {
              mode: t.mode,
              ...(splitter.counts.get(name) ?? { diverted: 0, passed: 0 }),
              lastCrash: splitter.lastCrash && {
                at: new Date(splitter.lastCrash.at).toISOString(),
                error: splitter.lastCrash.error,
              },
            },
          ]),
        ),
        deliveries: await delivery.lag(admin).catch((err: Error) => {
          log.warn({ err: err.message }, 'could not read Kafka delivery lag');
          return [];
        }),
      };
    },
    async lag() {
      const [split, deliveries] = await Promise.all([splitter.lag(admin), delivery.lag(admin)]);
      return {
        topics: [...split].map(([topic, lag]) => ({
          topic,
          service: config.topics[topic]?.service ?? '',
          lag,
        })),
        deliveries: deliveries.flatMap((d) => {
          const service = deps.store.get(d.intercept)?.service;
          return service === undefined ? [] : [{ service, lag: d.lag }];
        }),
      };
    },
    async close() {
      await delivery.close();
      await splitter.close();
      await producer.disconnect();
      await admin.disconnect();
    },
  };
}
