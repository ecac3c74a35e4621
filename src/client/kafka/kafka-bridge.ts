/**
 * The client agent's Kafka side. Messages the server delivers through the tunnel are
 * produced into the developer's local broker, and only then acknowledged (so the server
 * moves its offset on only for what is safely local). Local topics named with
 * --forward-topic are consumed and sent back to dev as the intercepted tenant.
 */
import { type Admin, type Consumer, Kafka, logLevel, Partitioners, type Producer } from 'kafkajs';
import { TopicMaker } from '../../shared/kafka-topic-maker.js';
import {
  chunkBySize,
  DeliveryMetaSchema,
  fromWire,
  KAFKA_META_HEADER,
  toWire,
  type WireMessage,
} from '../../shared/kafka-wire.js';
import type { TunnelStream } from '../../shared/tunnel-mux.js';
import type { OpenHead } from '../../shared/tunnel-wire.js';
import type { ApiClient } from '../api/api-client.js';
import type { KafkaEvent } from '../intercept/events.js';
import type { KafkaOptions } from './kafka-options.js';

/** Within the broker's default group.min.session.timeout.ms (6 s) .. max (30 min). */
const FORWARD_SESSION_TIMEOUT_MS = 10_000;

function forwardError(topics: string[], error: string): KafkaEvent {
  return { kind: 'kafka', direction: 'out', from: topics.join(','), to: '', bytes: 0, at: Date.now(), error };
}

export class KafkaBridge {
  private readonly kafka: Kafka;
  private readonly producer: Producer;
  private readonly admin: Admin;
  private consumer?: Consumer;
  private readonly topics: TopicMaker;

  constructor(
    private readonly options: KafkaOptions,
    private readonly group: string,
    private readonly emit: (event: KafkaEvent) => void,
  ) {
    this.kafka = new Kafka({
      clientId: 'kelsingra-client',
      brokers: [options.local],
      // Its own log lines would tear through the live view; failures surface as events.
      logLevel: logLevel.NOTHING,
    });
    this.producer = this.kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      createPartitioner: Partitioners.DefaultPartitioner,
    });
    this.admin = this.kafka.admin();
    this.topics = new TopicMaker(this.admin);
  }

  async start(): Promise<void> {
    await Promise.all([this.producer.connect(), this.admin.connect()]);
    await this.topics.ensure([...Object.values(this.options.topics), ...Object.keys(this.options.forward)]);
  }

  /**
   * Starts sending local topics back to dev; needs the intercept (registered after start).
   * Resolves once subscribed, before the consumer has joined its group: after a kill -9 the
   * join waits for the dead member's session to time out, and nothing else (the lease
   * renewals above all) may wait for that. Forwarding starts when the join lands.
   */
  async startForwarding(api: ApiClient, interceptId: () => string): Promise<void> {
    const topics = Object.keys(this.options.forward);
    if (topics.length === 0) return;
    // One group per intercepted (service, tenant): a restarted client carries on where it
    // stopped. A shorter session than kafkajs' 30 s lets a restart take over from a killed
    // member sooner.
    this.consumer = this.kafka.consumer({
      groupId: this.group,
      sessionTimeout: FORWARD_SESSION_TIMEOUT_MS,
      // How long a rebalance waits for members to rejoin (kafkajs: 60 s): a killed member
      // never does, and the restarted one waits on it that long.
      rebalanceTimeout: FORWARD_SESSION_TIMEOUT_MS * 2,
      heartbeatInterval: FORWARD_SESSION_TIMEOUT_MS / 5,
    });
    this.consumer.on(this.consumer.events.CRASH, ({ payload }) =>
      this.emit(
        forwardError(
          topics,
          `forwarding ${payload.restart ? 'restarts' : 'stopped'}: ${payload.error.message}`,
        ),
      ),
    );
    await this.consumer.connect();
    await this.consumer.subscribe({ topics, fromBeginning: false });
    const running = this.consumer.run({
      eachBatchAutoResolve: false,
      // Every resolved offset is committed at the next commitOffsetsIfNecessary (after each post).
      autoCommitThreshold: 1,
      eachBatch: async ({ batch, resolveOffset, heartbeat, commitOffsetsIfNecessary }) => {
        const devTopic = this.options.forward[batch.topic] as string;
        const messages: WireMessage[] = batch.messages.map((m) => toWire(m));
        // Each post stays under the server's body limit (8 MiB, base64 included) and 500 messages.
        const posts = chunkBySize(
          messages,
          (w) => 64 + (w.key?.length ?? 0) + (w.value?.length ?? 0),
          4 * 1024 * 1024,
        );
        try {
          let posted = 0;
          for (const post of posts) {
            for (let i = 0; i < post.length; i += 500) {
              const part = post.slice(i, i + 500);
              await api.forwardKafka(interceptId(), devTopic, part);
              posted += part.length;
              // A big batch takes many posts: committing and heartbeating after each keeps the
              // member in its group (10 s session), and a client killed mid-batch from leaving
              // its group without an offset (a restart would then start at the latest, past
              // what was never forwarded).
              resolveOffset((batch.messages[posted - 1] as { offset: string }).offset);
              await commitOffsetsIfNecessary();
              await heartbeat();
            }
          }
        } catch (err) {
          // Not committed: kafkajs retries the batch. The developer sees why it is stuck.
          this.emit({
            kind: 'kafka',
            direction: 'out',
            from: batch.topic,
            to: devTopic,
            bytes: 0,
            at: Date.now(),
            error: `forwarding to dev failed: ${(err as Error).message}`,
          });
          throw err;
        }
        resolveOffset(batch.lastOffset());
        await heartbeat();
        for (const m of batch.messages)
          this.emit({
            kind: 'kafka',
            direction: 'out',
            from: batch.topic,
            to: devTopic,
            key: m.key?.toString('utf8'),
            bytes: m.value?.length ?? 0,
            at: Date.now(),
          });
      },
    });
    // A failed join is reported by kafkajs as a crash (the CRASH listener above says why).
    running.catch((err: Error) => this.emit(forwardError(topics, `forwarding stopped: ${err.message}`)));
  }

  /** One delivered message: produce locally, then answer 200 (or 502 saying why). */
  deliver(stream: TunnelStream, head: OpenHead): void {
    const chunks: Buffer[] = [];
    // A message is at most the broker's message size: taken whole, then credited.
    stream.onData = (c) => {
      chunks.push(c);
      stream.consumed(c.length);
    };
    // The server gave up on this delivery (timeout, tunnel closing); it sends the message again.
    stream.onReset = () => undefined;
    stream.onEnd = () => {
      this.produce(head, Buffer.concat(chunks)).then(
        (event) => {
          // The tunnel may have dropped while the local broker answered: the message is local
          // now, and the server, never told, sends it again (a duplicate, not a loss).
          stream.respond({ status: 200, headers: [], body: false });
          this.emit(event);
        },
        (err: Error) => {
          stream.respond({ status: 502, headers: ['content-type', 'text/plain'], body: true });
          stream.write(
            Buffer.from(`local Kafka at ${this.options.local} did not take the message: ${err.message}`),
          );
          stream.end();
          this.emit({
            kind: 'kafka',
            direction: 'in',
            from: '',
            to: '',
            bytes: 0,
            at: Date.now(),
            error: err.message,
          });
        },
      );
    };
  }

  async close(): Promise<void> {
    await this.consumer?.disconnect();
    await Promise.all([this.producer.disconnect(), this.admin.disconnect()]);
  }

  private async produce(head: OpenHead, value: Buffer): Promise<KafkaEvent> {
    const at = head.headers.indexOf(KAFKA_META_HEADER);
    const meta = DeliveryMetaSchema.parse(
      JSON.parse(at >= 0 && at % 2 === 0 ? (head.headers[at + 1] ?? '{}') : '{}'),
    );
    const localTopic = this.options.topics[meta.topic] ?? meta.topic;
    await this.topics.ensure([localTopic]);
    const wire: WireMessage = {
      key: meta.key,
      value: meta.nullValue ? null : value.toString('base64'),
      headers: meta.headers ?? {},
    };
    await this.producer.send({
      topic: localTopic,
      messages: [{ ...fromWire(wire), timestamp: meta.timestamp }],
    });
    return {
      kind: 'kafka',
      direction: 'in',
      from: meta.topic,
      to: localTopic,
      key: meta.key === null ? undefined : Buffer.from(meta.key, 'base64').toString('utf8'),
      bytes: value.length,
      at: Date.now(),
    };
  }
}
