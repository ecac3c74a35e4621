/**
 * Reads every configured dev topic (one consumer group shared by all replicas, so the
 * partitions are spread over them) and decides per message, from the route table: a
 * message for an intercepted tenant goes to that intercept's topic; in split mode every
 * other message goes to the split topic the base service reads.
 */
import type {
  Admin,
  Consumer,
  EachBatchPayload,
  IHeaders,
  Kafka,
  Message,
  Producer,
  TopicMessages,
} from 'kafkajs';
import type { Logger } from 'pino';
import type { TopicMaker } from '../../src/shared/kafka-topic-maker.js';
import {
  chunkBySize,
  headerText,
  KAFKA_HOP_HEADER,
  KAFKA_SOURCE_HEADER,
  messageBytes,
} from '../../src/shared/kafka-wire.js';
import type { KafkaConfig, KafkaTopicConfig } from '../config/config.js';
import type { InterceptStore } from '../store/intercept-store.js';
import { consumerLag } from './kafka-lag.js';
import { interceptTopic, splitTopicOf } from './kafka-topics.js';

export interface SplitCounts {
  diverted: number;
  passed: number;
}

export class KafkaSplitter {
  private consumer?: Consumer;
  private closed = false;
  /** The last time the splitter crashed, for /status. */
  lastCrash?: { at: number; error: string };
  readonly counts = new Map<string, SplitCounts>();

  constructor(
    private readonly kafka: Kafka,
    private readonly producer: Producer,
    private readonly topics: TopicMaker,
    private readonly config: KafkaConfig,
    private readonly store: InterceptStore,
    private readonly log: Logger,
  ) {}

  async start(): Promise<void> {
    const names = Object.keys(this.config.topics);
    if (names.length === 0) return;
    // A dead replica's partitions move to the others once its session times out (10 s, not kafkajs's 30 s).
    this.consumer = this.kafka.consumer({
      groupId: this.groupId,
      sessionTimeout: 10_000,
      heartbeatInterval: 1_000,
    });
    this.consumer.on(this.consumer.events.GROUP_JOIN, ({ payload }) =>
      this.log.info({ assignment: payload.memberAssignment }, 'kafka splitter joined its group'),
    );
    await this.consumer.connect();
    // Only what arrives from now on: on first start, the base service has already handled the past.
    await this.consumer.subscribe({ topics: names, fromBeginning: false });
    // A crash kafkajs will not restart from (a non-retriable error) would stop splitting for
    // good while the server looks healthy: it is logged, shown in /status, and started over.
    this.consumer.on(this.consumer.events.CRASH, ({ payload }) => {
      this.log.error({ err: payload.error, restart: payload.restart }, 'kafka splitter crashed');
      this.lastCrash = { at: Date.now(), error: payload.error.message };
      if (!payload.restart && !this.closed) {
        const timer = setTimeout(() => {
          if (this.closed) return;
          this.consumer
            ?.disconnect()
            .then(() => this.start())
            .catch((err: Error) => this.log.error({ err }, 'kafka splitter could not start again'));
        }, 5_000);
        timer.unref();
      }
    });
    await this.consumer.run({ eachBatchAutoResolve: false, eachBatch: (p) => this.split(p) });
  }

  /** Per configured topic, messages not split yet, by whichever replica holds each partition. */
  async lag(admin: Admin): Promise<Map<string, number>> {
    // The splitter starts at the latest offsets: before its first commit nothing counts as waiting.
    return consumerLag(admin, this.groupId, Object.keys(this.config.topics), false);
  }

  private get groupId(): string {
    return `${this.config.clientId}-splitter`;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.consumer?.disconnect();
  }

  /** Whether this message goes to a developer (and to which topic), from the route table. */
  private destination(
    topic: string,
    cfg: KafkaTopicConfig,
    headers: IHeaders | undefined,
  ): string | undefined {
    const tenant = headerText(headers, cfg.tenantHeader);
    if (!tenant) return undefined;
    const intercept = this.store.find(cfg.service, tenant);
    if (!intercept?.kafkaTopics.includes(topic)) return undefined;
    // What this intercept's developer forwarded back is not sent back to them (no loop); a
    // message another developer forwarded is diverted like any other.
    if (headerText(headers, KAFKA_HOP_HEADER) === intercept.id) return undefined;
    return interceptTopic(cfg.service, tenant);
  }

  private async split({
    batch,
    resolveOffset,
    heartbeat,
    isRunning,
    isStale,
  }: EachBatchPayload): Promise<void> {
    const cfg = this.config.topics[batch.topic] as KafkaTopicConfig;
    const out = new Map<string, Message[]>();
    const push = (topic: string, m: Message) => {
      const list = out.get(topic) ?? [];
      list.push(m);
      out.set(topic, list);
    };
    const perIntercept = new Set<string>();
    let diverted = 0;
    for (const m of batch.messages) {
      const to = this.destination(batch.topic, cfg, m.headers);
      if (to) {
        push(to, {
          key: m.key,
          value: m.value,
          timestamp: m.timestamp,
          headers: { ...m.headers, [KAFKA_SOURCE_HEADER]: batch.topic },
        });
        perIntercept.add(to);
        diverted++;
      }
      // The same partition as the source keeps each key's order for the base service.
      if (cfg.mode === 'split' && !to)
        push(splitTopicOf(batch.topic, cfg), {
          key: m.key,
          value: m.value,
          timestamp: m.timestamp,
          headers: m.headers,
          partition: batch.partition,
        });
    }
    await this.topics.ensure([...perIntercept]);
    // The offsets move on only once every produce of the batch is acknowledged. Each produce
    // stays under the broker's size limit, in order, so per-key order holds. A splitter that
    // lost the partition in a rebalance stops at once: the new owner sends the rest.
    for (const [topic, messages] of out) {
      for (const chunk of chunkBySize(messages, messageBytes)) {
        if (!isRunning() || isStale()) return;
        const topicMessages: TopicMessages[] = [{ topic, messages: chunk }];
        await this.producer.sendBatch({ topicMessages }).catch((err: Error) => {
          // Deleted by an operator meanwhile: made again on the retry.
          if (perIntercept.has(topic)) this.topics.forget(topic);
          throw err;
        });
      }
    }
    if (!isRunning() || isStale()) return;
    const counts = this.counts.get(batch.topic) ?? { diverted: 0, passed: 0 };
    counts.diverted += diverted;
    counts.passed += batch.messages.length - diverted;
    this.counts.set(batch.topic, counts);
    resolveOffset(batch.lastOffset());
    await heartbeat();
  }
}
