/**
 * Delivers an intercept's Kafka messages to the developer: the replica holding the
 * intercept's tunnel consumes its per-intercept topic and sends each message through the
 * tunnel; the client agent answers only once its local produce is acknowledged, and only
 * then does the offset move on. At least once: a message whose answer was lost (tunnel
 * dropped, replica died) is sent again.
 */
import type { Admin, Consumer, Kafka } from 'kafkajs';
import type { Logger } from 'pino';
import type { TopicMaker } from '../../src/shared/kafka-topic-maker.js';
import {
  headerText,
  KAFKA_DELIVER_PATH,
  KAFKA_META_HEADER,
  KAFKA_SOURCE_HEADER,
  toWire,
} from '../../src/shared/kafka-wire.js';
import type { Intercept, InterceptStore } from '../store/intercept-store.js';
import type { ClientTunnel, TunnelHub } from '../tunnel/tunnel-hub.js';
import { consumerLag } from './kafka-lag.js';
import { interceptTopic } from './kafka-topics.js';

/** How long the client agent may take to produce one message locally. */
const DELIVERY_TIMEOUT_MS = 30_000;

export interface DeliveryLag {
  intercept: string;
  topic: string;
  /** Delivered since this replica started delivering. */
  delivered: number;
  /** Waiting in the topic, not yet acknowledged by the developer's client. */
  lag: number;
}

interface Running {
  consumer: Consumer;
  topic: string;
  delivered: number;
}

export class KafkaDelivery {
  private readonly running = new Map<string, Running>();
  private readonly timer: NodeJS.Timeout;
  private reconciling = Promise.resolve();

  constructor(
    private readonly kafka: Kafka,
    private readonly topics: TopicMaker,
    private readonly store: InterceptStore,
    private readonly hub: TunnelHub,
    private readonly groupPrefix: string,
    private readonly log: Logger,
  ) {
    // Tunnels come and go and intercepts move between replicas; a periodic pass catches every case.
    this.timer = setInterval(() => this.reconcile(), 1_000);
    this.timer.unref();
  }

  /** Runs a consumer for each Kafka intercept whose tunnel is here, and stops the others. */
  reconcile(): Promise<void> {
    this.reconciling = this.reconciling
      .then(() => this.pass())
      .catch((err: Error) => {
        this.log.warn({ err: err.message }, 'kafka delivery could not start or stop a consumer');
      });
    return this.reconciling;
  }

  /** Per delivery on this replica: messages waiting in its topic (end offset − committed offset). */
  async lag(admin: Admin): Promise<DeliveryLag[]> {
    return Promise.all(
      [...this.running].map(async ([intercept, r]) => {
        // The delivery reads its topic from the beginning: before any commit, all of it waits.
        const lag = await consumerLag(admin, this.groupOf(r.topic), [r.topic], true);
        return { intercept, topic: r.topic, delivered: r.delivered, lag: lag.get(r.topic) ?? 0 };
      }),
    );
  }

  private groupOf(topic: string): string {
    return `${this.groupPrefix}-deliver-${topic}`;
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.reconciling;
    await Promise.all([...this.running.values()].map((r) => r.consumer.disconnect()));
    this.running.clear();
  }

  private async pass(): Promise<void> {
    const wanted = new Map<string, Intercept>();
    for (const i of this.store.list()) {
      if (i.kafkaTopics.length > 0 && this.hub.get(i.clientKey)) wanted.set(i.id, i);
    }
    for (const [id, r] of this.running) {
      if (wanted.has(id)) continue;
      this.running.delete(id);
      await r.consumer.disconnect();
      this.log.info({ intercept: id, topic: r.topic }, 'kafka delivery stopped');
    }
    for (const [id, intercept] of wanted) {
      if (!this.running.has(id)) await this.startFor(intercept);
    }
  }

  private async startFor(intercept: Intercept): Promise<void> {
    const topic = interceptTopic(intercept.service, intercept.tenant);
    await this.topics.ensure([topic]);
    // One group per (service, tenant): its committed offset survives tunnels moving between
    // replicas and clients restarting, so nothing is skipped and little is repeated.
    // A replica that dies keeps the partition until its session times out: keep that short
    // (the broker's minimum is 6 s by default), so another replica resumes delivery soon.
    const consumer = this.kafka.consumer({
      groupId: this.groupOf(topic),
      sessionTimeout: 6_000,
      heartbeatInterval: 1_000,
    });
    const running: Running = { consumer, topic, delivered: 0 };
    this.running.set(intercept.id, running);
    // A consumer kafkajs gives up on is dropped here, so the next pass starts a new one.
    consumer.on(consumer.events.CRASH, ({ payload }) => {
      if (payload.restart) return;
      this.log.error(
        { intercept: intercept.id, err: payload.error },
        'kafka delivery crashed; starting it again',
      );
      if (this.running.get(intercept.id) === running) this.running.delete(intercept.id);
      consumer
        .disconnect()
        .catch((err: Error) =>
          this.log.warn({ err: err.message }, 'could not disconnect a crashed delivery'),
        );
    });
    try {
      await consumer.connect();
      await consumer.subscribe({ topics: [topic], fromBeginning: true });
      await consumer.run({
        autoCommitInterval: 500,
        eachMessage: async ({ message }) => {
          const tunnel = this.hub.get(intercept.clientKey);
          if (!tunnel)
            throw new Error(`the tunnel of intercept ${intercept.id} is not on this replica any more`);
          await deliver(tunnel, intercept, message);
          running.delivered++;
        },
      });
    } catch (err) {
      // Not marked running: the next pass (a second later) tries again.
      this.running.delete(intercept.id);
      await consumer.disconnect().catch(() => {
        // It never connected; the start's own error is the one reported.
      });
      throw err;
    }
    this.log.info({ intercept: intercept.id, topic }, 'kafka delivery started');
  }
}

function deliver(
  tunnel: ClientTunnel,
  intercept: Intercept,
  message: { key: Buffer | null; value: Buffer | null; headers?: Record<string, unknown>; timestamp: string },
): Promise<void> {
  const { [KAFKA_SOURCE_HEADER]: _source, ...headers } = (message.headers ?? {}) as Record<string, Buffer>;
  const source = headerText(message.headers as Record<string, Buffer>, KAFKA_SOURCE_HEADER) ?? '';
  const wire = toWire({ key: message.key, headers, timestamp: message.timestamp });
  return new Promise((resolve, reject) => {
    const value = message.value ?? Buffer.alloc(0);
    const stream = tunnel.request({
      kind: 'kafka',
      method: 'POST',
      path: KAFKA_DELIVER_PATH,
      authority: intercept.service,
      headers: [
        KAFKA_META_HEADER,
        JSON.stringify({
          topic: source,
          key: wire.key,
          headers: wire.headers,
          timestamp: wire.timestamp,
          // A null value (a tombstone) and an empty one mean different things to compacted topics.
          nullValue: message.value === null,
        }),
      ],
      intercept: intercept.id,
      http2: false,
      upgrade: false,
      body: true,
    });
    const timer = setTimeout(() => stream.reset('cancel', 'no answer in time'), DELIVERY_TIMEOUT_MS);
    let status = 0;
    let body = '';
    stream.onHead = (head) => {
      status = head.status;
    };
    stream.onData = (c) => {
      body += c.toString('utf8');
      stream.consumed(c.length);
    };
    stream.onClose = () => {
      clearTimeout(timer);
      if (status === 200 && !stream.reason) resolve();
      else
        reject(
          new Error(
            `the client agent did not take the message (${status ? `HTTP ${status}: ${body.slice(0, 200)}` : 'no answer'})`,
          ),
        );
    };
    // A message is one broker record, far below the stream's window: it goes in one write.
    stream.write(value);
    stream.end();
  });
}
