/**
 * Kafka for integration tests: the real broker from `scripts/kafka` (KRaft on 127.0.0.1:9092),
 * shared with other test files and other sessions, so every test uses fresh topic names and
 * consumer groups from `uniqueName`.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { type IHeaders, Kafka, logLevel, type Message, type Producer } from 'kafkajs';
import { ROOT, waitFor } from './helpers.js';

export const BROKER = `127.0.0.1:${process.env.KAFKA_PORT ?? '9092'}`;

let started = false;

/** Starts the broker once per process (`scripts/kafka start` is idempotent: a no-op when it runs). */
export function ensureKafka(): void {
  if (started) return;
  try {
    execFileSync(join(ROOT, 'scripts', 'kafka'), ['start'], {
      stdio: 'pipe',
      // The first start on a clean machine fetches the jars from Maven Central.
      timeout: 600_000,
    });
  } catch (err) {
    const e = err as Error & { stdout?: Buffer; stderr?: Buffer };
    throw new Error(
      `scripts/kafka start failed: ${e.message}\n${e.stdout?.toString() ?? ''}${e.stderr?.toString() ?? ''}`,
    );
  }
  started = true;
}

/** A kafkajs client for the test broker, silent (kafkajs logs through its own logger otherwise). */
export function kafkaClient(clientId = 'kelsingra-test'): Kafka {
  return new Kafka({ clientId, brokers: [BROKER], logLevel: logLevel.NOTHING });
}

const shared = kafkaClient();
let counter = 0;

/**
 * A name no other test, file or session uses: lowercase letters, digits and dashes, so it is
 * a valid topic, consumer group and service name (a DNS label) alike.
 */
export function uniqueName(prefix: string): string {
  return `${prefix}-${process.pid.toString(36)}${randomBytes(3).toString('hex')}-${counter++}`;
}

/**
 * Creates a topic and waits for its partitions' leaders. Tests create topics before anyone
 * subscribes: kafkajs cannot subscribe to a topic KRaft has not made yet.
 */
export async function createTopic(name: string, partitions = 1): Promise<void> {
  const admin = shared.admin();
  await admin.connect();
  try {
    await admin.createTopics({ topics: [{ topic: name, numPartitions: partitions }], waitForLeaders: true });
  } finally {
    await admin.disconnect();
  }
}

/**
 * Deletes the topics whose names start with one of `prefixes` (for cleanups: the broker is
 * long-lived, and a test's topics are of no use to anyone after it).
 */
export async function deleteTopics(prefixes: string[]): Promise<void> {
  // The shared producer keeps refreshing metadata for every topic it wrote to: a deleted one
  // would fail each later send (or, were it allowed to, be created again). The next send opens a new one.
  await closeProducer();
  const admin = shared.admin();
  await admin.connect();
  try {
    const topics = (await admin.listTopics()).filter((t) => prefixes.some((p) => t.startsWith(p)));
    if (topics.length) await admin.deleteTopics({ topics });
  } finally {
    await admin.disconnect();
  }
}

/** Every topic on the broker (for "was it created?" checks). */
export async function listTopics(): Promise<string[]> {
  const admin = shared.admin();
  await admin.connect();
  try {
    return await admin.listTopics();
  } finally {
    await admin.disconnect();
  }
}

let producer: Producer | undefined;
let producerConnecting: Promise<void> | undefined;

/** Produces `messages` in order (one request per 1,000), acknowledged by the broker. */
export async function produce(topic: string, messages: Message[]): Promise<void> {
  if (!producer) {
    // Not creating topics on its own: its metadata refreshes would bring deleted topics back.
    producer = shared.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false });
    producerConnecting = producer.connect();
  }
  await producerConnecting;
  for (let i = 0; i < messages.length; i += 1_000) {
    await producer.send({ topic, acks: -1, messages: messages.slice(i, i + 1_000) });
  }
}

/** Disconnects the shared producer (for an afterAll). */
export async function closeProducer(): Promise<void> {
  const p = producer;
  producer = undefined;
  await p?.disconnect();
}

/** A consumed record with its bytes as text. */
export interface KafkaRecord {
  topic: string;
  partition: number;
  offset: number;
  key: string | null;
  value: string | null;
  headers: { [name: string]: string };
}

function headersText(headers: IHeaders | undefined): { [name: string]: string } {
  const out: { [name: string]: string } = {};
  for (const [k, v] of Object.entries(headers ?? {})) {
    const one = Array.isArray(v) ? v[v.length - 1] : v;
    if (one !== undefined) out[k] = Buffer.from(one).toString('utf8');
  }
  return out;
}

export interface TopicWatch {
  /** What arrived so far, in arrival order (each partition in offset order). */
  readonly records: KafkaRecord[];
  stop(): Promise<void>;
}

/** Reads `topic` from the beginning with a fresh group until stopped; `records` fills as messages arrive. */
export async function watchTopic(topic: string): Promise<TopicWatch> {
  const records: KafkaRecord[] = [];
  const consumer = shared.consumer({
    groupId: uniqueName('test-reader'),
    maxWaitTimeInMs: 100,
    allowAutoTopicCreation: false,
  });
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  await consumer.run({
    eachBatch: async ({ batch }) => {
      for (const m of batch.messages)
        records.push({
          topic: batch.topic,
          partition: batch.partition,
          offset: Number(m.offset),
          key: m.key === null ? null : m.key.toString('utf8'),
          value: m.value === null ? null : m.value.toString('utf8'),
          headers: headersText(m.headers),
        });
    },
  });
  let stopped = false;
  return {
    records,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await consumer.disconnect();
    },
  };
}

/**
 * Reads `topic` from the beginning with a fresh group and returns what arrived once `until`
 * holds for it, or when `timeoutMs` passes (then without throwing: the caller's assertions say
 * what is missing). Without `until`, reads for the whole timeout.
 */
export async function collect(
  topic: string,
  { until, timeoutMs = 15_000 }: { until?: (records: KafkaRecord[]) => boolean; timeoutMs?: number } = {},
): Promise<KafkaRecord[]> {
  const watch = await watchTopic(topic);
  try {
    await waitFor(() => until?.(watch.records), timeoutMs, `messages on ${topic}`).catch(() => undefined);
    return [...watch.records];
  } finally {
    await watch.stop();
  }
}
