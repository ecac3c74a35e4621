/**
 * Topic names and topic housekeeping for the server agent's Kafka side: the per-intercept
 * topic, the split topic, and checking at start-up that what the config names exists.
 */
import { createHash } from 'node:crypto';
import type { Admin } from 'kafkajs';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';
import type { KafkaConfig, KafkaTopicConfig } from '../config/config.js';

/**
 * `kelsingra-<service>-<tenant>-<hash>`, one partition so the tenant's messages keep their
 * order. The hash of the exact (service, tenant) pair makes every pair's topic its own:
 * names are readable, but two pairs that Kafka would spell alike (`a.b` and `a_b`, or
 * `orders-api`/`acme` and `orders`/`api-acme`) never share a topic.
 */
export function interceptTopic(service: string, tenant: string): string {
  const hash = createHash('sha256').update(`${service}\u0000${tenant}`).digest('hex').slice(0, 10);
  // Kafka treats "." and "_" as the same in topic names: only "_" is used.
  const safe = `${service}-${tenant}`.replace(/[^A-Za-z0-9-]/g, '_').slice(0, 200);
  return `kelsingra-${safe}-${hash}`;
}

export function splitTopicOf(topic: string, config: KafkaTopicConfig): string {
  return config.splitTopic ?? `${topic}.base`;
}

/** Fails with exit 7 naming every configured topic that does not exist; creates missing split topics. */
export async function checkTopics(admin: Admin, config: KafkaConfig, brokers: string): Promise<void> {
  let existing: Set<string>;
  try {
    existing = new Set(await admin.listTopics());
  } catch (err) {
    throw new KelsingraError(
      `cannot reach Kafka at ${brokers}: ${(err as Error).message}`,
      ExitCode.config,
      'check kafka.brokers in the config, and that the brokers are running',
    );
  }
  const missing = Object.keys(config.topics).filter((t) => !existing.has(t));
  if (missing.length) {
    throw new KelsingraError(
      `Kafka topic${missing.length > 1 ? 's' : ''} ${missing.join(', ')} named in kafka.topics ${missing.length > 1 ? 'do' : 'does'} not exist on ${brokers}`,
      ExitCode.config,
      'create them first (kafka-topics.sh --create, or scripts/kafka topics create <name> <partitions> here), or fix the names',
    );
  }
  const metadata = await admin.fetchTopicMetadata({ topics: Object.keys(config.topics) });
  const toCreate = [];
  for (const t of metadata.topics) {
    const cfg = config.topics[t.name] as KafkaTopicConfig;
    const split = splitTopicOf(t.name, cfg);
    // The split topic gets the source's partition count: each message keeps its partition, so per-key order holds.
    if (cfg.mode === 'split' && !existing.has(split))
      toCreate.push({ topic: split, numPartitions: t.partitions.length });
  }
  if (toCreate.length) await admin.createTopics({ topics: toCreate, waitForLeaders: true });
}
