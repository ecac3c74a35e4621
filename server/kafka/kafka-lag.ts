/**
 * How far a consumer group is behind on its topics: each partition's end offset minus the
 * group's committed offset, summed per topic. Two admin requests per topic, no consumer.
 */
import type { Admin } from 'kafkajs';

/**
 * `fromBeginning` is where the group starts on a partition it has committed nothing on: the
 * earliest offset (all of it is lag) or the latest (nothing is lag until it commits).
 */
export async function consumerLag(
  admin: Admin,
  groupId: string,
  topics: readonly string[],
  fromBeginning: boolean,
): Promise<Map<string, number>> {
  const lag = new Map<string, number>();
  if (topics.length === 0) return lag;
  const [committed, ends] = await Promise.all([
    admin.fetchOffsets({ groupId, topics: [...topics] }),
    Promise.all(topics.map((topic) => admin.fetchTopicOffsets(topic))),
  ]);
  topics.forEach((topic, i) => {
    const done = committed.find((c) => c.topic === topic)?.partitions ?? [];
    let behind = 0;
    for (const end of ends[i] ?? []) {
      const offset = Number(done.find((p) => p.partition === end.partition)?.offset ?? '-1');
      const high = Number(end.high);
      if (offset >= 0) behind += high - Math.max(Number(end.low), offset);
      else if (fromBeginning) behind += high - Number(end.low);
    }
    lag.set(topic, behind);
  });
  return lag;
}
