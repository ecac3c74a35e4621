/**
 * Creates Kafka topics before anything produces to or subscribes to them (kafkajs cannot
 * subscribe to a topic KRaft has not made yet), and remembers what exists. Used by both
 * agents: the server for per-intercept topics, the client for the developer's local ones.
 */
import type { Admin } from 'kafkajs';

/** Creates the topic if it is not there yet (one partition); remembers what it made. */
export class TopicMaker {
  private readonly known = new Set<string>();
  constructor(private readonly admin: Admin) {}

  async ensure(topics: string[]): Promise<void> {
    const wanted = topics.filter((t) => !this.known.has(t));
    if (wanted.length === 0) return;
    const existing = new Set(await this.admin.listTopics());
    const create = wanted.filter((t) => !existing.has(t));
    if (create.length)
      await this.admin.createTopics({
        topics: create.map((topic) => ({ topic, numPartitions: 1 })),
        waitForLeaders: true,
      });
    for (const t of wanted) this.known.add(t);
  }

  /** Whether the topic exists (answers from what it already knows when it can). */
  async exists(topic: string): Promise<boolean> {
    if (this.known.has(topic)) return true;
    const found = (await this.admin.listTopics()).includes(topic);
    if (found) this.known.add(topic);
    return found;
  }

  forget(topic: string): void {
    this.known.delete(topic);
  }
}
