/**
 * Kafka intercepts against the real broker (scripts/kafka): a server agent splitting a
 * configured dev topic in each mode, a detached client producing the tenant's messages into
 * a local topic, a client killed and restarted mid-stream, forwarding back to dev, a replica
 * killed under the tunnel, and a config naming a topic that does not exist. Dev and "local"
 * broker are the same broker here, so every test maps the dev topic to a local topic of
 * another name, and all names are fresh (other files and sessions share the broker).
 *
 * Over 400 lines on purpose: it is the list of Kafka interception's cases, each one self-contained; split,
 * one capability would be spread over several files.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Message } from 'kafkajs';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { createTenantFilter } from '../../src/client/kafka/kafka-filter.js';
import { tcpBalancer } from '../support/balancer.js';
import {
  cleanupsAfterEach,
  clientEnv,
  type DetachedIntercept,
  exited,
  killPid,
  killQuietly,
  run,
  type ServerProcess,
  sleep,
  startServerProcess,
  tempDir,
  textService,
  waitFor,
} from '../support/helpers.js';
import {
  BROKER,
  closeProducer,
  collect,
  createTopic,
  deleteTopics,
  ensureKafka,
  type KafkaRecord,
  kafkaClient,
  listTopics,
  produce,
  type TopicWatch,
  uniqueName,
  watchTopic,
} from '../support/kafka-helpers.js';
import { freshDatabase } from '../support/postgres.js';

const TOKEN = 'kafka-token-1';
const TENANT_HEADER = 'x-tenant-id';
const cleanups = cleanupsAfterEach();
afterAll(() => closeProducer());

type Mode = 'split' | 'filter' | 'mirror';

/** Writes a server config file with one service and its Kafka topics; returns its path. */
function configFile(service: string, upstream: string, topics: { [topic: string]: { mode: Mode } }): string {
  const file = join(tempDir(), 'kelsingra.yaml');
  writeFileSync(
    file,
    stringify({
      token: TOKEN,
      services: { [service]: { upstream } },
      kafka: {
        brokers: [BROKER],
        // Its own consumer groups: other tests and sessions run splitters on the same broker.
        clientId: uniqueName('kelsingra'),
        topics: Object.fromEntries(Object.entries(topics).map(([t, c]) => [t, { service, ...c }])),
      },
    }),
  );
  return file;
}

interface World {
  service: string;
  topic: string;
  partitions: number;
  splitTopic: string;
  localTopic: string;
  localPort: number;
  server: ServerProcess;
  /** Every replica (one unless asked for more); `server` is the first. */
  replicas: ServerProcess[];
}

async function serverProcess(args: string[]): Promise<ServerProcess> {
  const server = await startServerProcess(args);
  // SIGTERM would wait for the server's Kafka consumers to leave their groups (about 10 s);
  // every group here is the test's own, so nobody waits for it to leave.
  cleanups.push(async () => {
    killQuietly(server.child.pid);
    await exited(server.child);
  });
  return server;
}

/**
 * A fresh dev topic, a service (a fresh name, so its per-intercept topics are fresh too) and a
 * server agent splitting the topic in `mode`, started once the splitter has joined its group.
 */
async function world(
  mode: Mode,
  {
    partitions = 3,
    replicas = 1,
    databaseUrl,
    leaseTtl,
  }: { partitions?: number; replicas?: number; databaseUrl?: string; leaseTtl?: number } = {},
): Promise<World> {
  ensureKafka();
  const service = uniqueName('billing');
  const topic = uniqueName('orders');
  // Registered first, so it runs last: after the servers and clients that use the topics.
  // The dev, split and local topics share the dev topic's name; the intercepts' topics the service's.
  cleanups.push(() => deleteTopics([topic, `kelsingra-${service}-`]));
  await createTopic(topic, partitions);
  const base = await textService('base', cleanups);
  const local = await textService('local', cleanups);
  const file = configFile(service, base.url, { [topic]: { mode } });
  const args = [
    '--config',
    file,
    ...(databaseUrl ? ['--database-url', databaseUrl] : []),
    ...(leaseTtl ? ['--lease-ttl', String(leaseTtl), '--heartbeat-interval', '1'] : []),
  ];
  const servers = await Promise.all(Array.from({ length: replicas }, () => serverProcess(args)));
  for (const server of servers) {
    expect(server.logs()).toContain('kafka splitter ready');
    await waitFor(
      () => server.logs().includes('kafka splitter joined its group'),
      20_000,
      'the splitter to join its group',
    );
  }
  const server = servers[0] as ServerProcess;
  return {
    service,
    topic,
    partitions,
    splitTopic: `${topic}.base`,
    localTopic: `${topic}.local`,
    localPort: local.port,
    server,
    replicas: servers,
  };
}

/** `intercept --detach --json` with Kafka, the dev topic mapped to the world's local topic. */
async function interceptKafka(
  w: World,
  tenant: string,
  env: Record<string, string>,
  extra: string[] = [],
): Promise<DetachedIntercept> {
  const r = await run(
    [
      'intercept',
      w.service,
      '--tenant',
      tenant,
      '--port',
      String(w.localPort),
      '--detach',
      '--json',
      '--kafka-local',
      BROKER,
      '--kafka-topic',
      `${w.topic}=${w.localTopic}`,
      ...extra,
    ],
    env,
  );
  expect(r.exitCode, `intercept --detach failed:\n${r.stderr}`).toBe(0);
  const doc = JSON.parse(r.stdout) as DetachedIntercept;
  cleanups.push(() => killPid(doc.agentPid));
  return doc;
}

const isProbe = (r: KafkaRecord) => r.key === 'probe';
const notProbe = (r: KafkaRecord) => r.key !== 'probe';
const valuesOf = (records: KafkaRecord[]) => records.map((r) => r.value ?? '').sort();

/**
 * The splitter starts at the latest offsets, resolved when it first fetches: messages produced
 * before that are the base's past. Probes for the intercepted `tenant`, one per partition,
 * until one from every partition has reached the developer's local topic.
 */
async function untilSplitterReads(w: World, tenant: string, local: TopicWatch): Promise<void> {
  let round = 0;
  await waitFor(
    async () => {
      const seen = new Set(local.records.filter(isProbe).map((r) => r.value?.split(':')[2]));
      if (seen.size === w.partitions) return true;
      if (round++ % 10 === 0)
        await produce(
          w.topic,
          Array.from({ length: w.partitions }, (_, p) => ({
            key: 'probe',
            value: `probe:${round}:${p}`,
            partition: p,
            headers: { [TENANT_HEADER]: tenant },
          })),
        );
      return false;
    },
    30_000,
    'the splitter to read every partition (probes to arrive in the local topic)',
  );
}

/** Whether any process, a zombie included, has this pid. */
function exists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A small deterministic PRNG (mulberry32), so a failure can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * `count` messages over tenants t0..t<tenants-1> and keys k0..k<keys-1>; the value
 * `<key>:<sequence of that key>:<tenant>:<index>` carries a per-key sequence number.
 */
function tenantMessages(count: number, tenants: number, keys: number, seed = 1): Message[] {
  const random = prng(seed);
  const seq = new Map<string, number>();
  return Array.from({ length: count }, (_, i) => {
    const tenant = `t${Math.floor(random() * tenants)}`;
    const key = `k${Math.floor(random() * keys)}`;
    const s = seq.get(key) ?? 0;
    seq.set(key, s + 1);
    return {
      key,
      value: `${key}:${s}:${tenant}:${i}`,
      headers: { [TENANT_HEADER]: tenant, 'x-test-index': String(i) },
    };
  });
}

const tenantOf = (m: Message) => String(m.value).split(':')[2];
const sortedValues = (messages: Message[]) => messages.map((m) => String(m.value)).sort();

/** Per key, the sequence numbers in the order the records are in (partition by partition, offset order). */
function sequencesByKey(records: KafkaRecord[]): Map<string, { partitions: Set<number>; seqs: number[] }> {
  const byKey = new Map<string, { partitions: Set<number>; seqs: number[] }>();
  const ordered = [...records].sort((a, b) => a.partition - b.partition || a.offset - b.offset);
  for (const r of ordered) {
    const [key, seq] = (r.value ?? '').split(':');
    const entry = byKey.get(key as string) ?? { partitions: new Set(), seqs: [] };
    entry.partitions.add(r.partition);
    entry.seqs.push(Number(seq));
    byKey.set(key as string, entry);
  }
  return byKey;
}

function expectPerKeyOrder(records: KafkaRecord[], where: string): void {
  for (const [key, { partitions, seqs }] of sequencesByKey(records)) {
    expect(partitions.size, `${where}: key ${key} in one partition`).toBe(1);
    expect(seqs, `${where}: key ${key} in order`).toEqual([...seqs].sort((a, b) => a - b));
  }
}

/**
 * After a restart, repeats are allowed but order is not to be lost: read in arrival order,
 * each message seen for the first time comes after every earlier first-seen message of its key.
 */
function expectFirstSeenInKeyOrder(records: KafkaRecord[]): void {
  const seen = new Set<string>();
  const last = new Map<string, number>();
  for (const r of records) {
    const value = r.value ?? '';
    if (seen.has(value)) continue;
    seen.add(value);
    const n = Number(value.split(':')[1]);
    const key = r.key ?? '';
    expect(n, `key ${key}: ${value} after m:${last.get(key)}`).toBeGreaterThan(last.get(key) ?? -1);
    last.set(key, n);
  }
}

/** Stops a watch at the end of the test. */
async function watched(topic: string): Promise<TopicWatch> {
  const watch = await watchTopic(topic);
  cleanups.push(() => watch.stop());
  return watch;
}

describe('kafka intercepts', () => {
  it('split: exactly the tenant’s messages reach the local topic, every other one the split topic, per-key order and headers kept', async () => {
    const w = await world('split');
    const env = clientEnv(w.server, TOKEN);
    const held = await interceptKafka(w, 't7', env);
    const local = await watched(w.localTopic);
    await untilSplitterReads(w, 't7', local);

    const messages = tenantMessages(10_000, 50, 20);
    const mine = messages.filter((m) => tenantOf(m) === 't7');
    const others = messages.filter((m) => tenantOf(m) !== 't7');
    expect(mine.length).toBeGreaterThan(100);
    const split = await watched(w.splitTopic);
    await produce(w.topic, messages);

    await waitFor(
      () => local.records.filter(notProbe).length >= mine.length && split.records.length >= others.length,
      30_000,
      'every message to reach the local or the split topic',
    );
    // The dev topic as produced, for the partition each message had there.
    const source = await collect(w.topic, { until: (r) => r.filter(notProbe).length >= messages.length });
    const arrived = local.records.filter(notProbe);

    expect(valuesOf(arrived)).toEqual(sortedValues(mine));
    for (const r of arrived) {
      expect(r.headers[TENANT_HEADER]).toBe('t7');
      expect(r.headers['x-test-index']).toBe(r.value?.split(':')[3]);
    }
    expectPerKeyOrder(arrived, 'local topic');

    expect(valuesOf(split.records)).toEqual(sortedValues(others));
    expect(split.records.filter((r) => r.headers[TENANT_HEADER] === 't7')).toEqual([]);
    for (const r of split.records) {
      expect(r.headers[TENANT_HEADER]).toBe(r.value?.split(':')[2]);
      expect(r.headers['x-test-index']).toBe(r.value?.split(':')[3]);
    }
    expectPerKeyOrder(split.records, 'split topic');
    // Each message keeps the partition it had in the dev topic.
    const sourcePartition = new Map(source.map((r) => [r.value, r.partition]));
    expect(split.records.filter((r) => sourcePartition.get(r.value) !== r.partition)).toEqual([]);

    // What the developer and the platform team see: the messages in the agent's log, the
    // topic in `list`, split counts and the delivery (with nothing left waiting) in `status`.
    const log = readFileSync(held.logFile, 'utf8');
    expect(log).toContain(`KAFKA   ${w.topic} → local ${w.localTopic}`);
    const listed = JSON.parse((await run(['list', '--json'], env)).stdout) as { kafkaTopics: string[] }[];
    expect(listed[0]?.kafkaTopics).toEqual([w.topic]);
    const status = await waitFor(
      async () => {
        const s = JSON.parse((await run(['status', '--json'], env)).stdout) as {
          kafka: {
            topics: Record<string, { diverted: number; passed: number }>;
            deliveries: { lag: number; delivered: number }[];
          };
        };
        return s.kafka.deliveries[0]?.lag === 0 ? s : undefined;
      },
      10_000,
      'the delivery lag to reach 0 in status',
    );
    expect(status.kafka.topics[w.topic]?.diverted).toBeGreaterThanOrEqual(mine.length);
    expect(status.kafka.topics[w.topic]?.passed).toBeGreaterThanOrEqual(others.length);
    expect(status.kafka.deliveries[0]?.delivered).toBeGreaterThanOrEqual(mine.length);
  });

  it('filter: a base consumer with createTenantFilter processes every other tenant’s message and none of the intercepted one’s', async () => {
    const w = await world('filter');
    await interceptKafka(w, 't7', clientEnv(w.server, TOKEN));
    const filter = await createTenantFilter({
      server: w.server.control,
      token: TOKEN,
      service: w.service,
      topic: w.topic,
    });
    cleanups.push(() => filter.close());
    await waitFor(() => filter.intercepted().includes('t7'), 10_000, 'the filter to know the intercept');
    const local = await watched(w.localTopic);
    await untilSplitterReads(w, 't7', local);

    const processed: string[] = [];
    const skipped: string[] = [];
    const base = kafkaClient().consumer({ groupId: uniqueName('base'), maxWaitTimeInMs: 100 });
    cleanups.push(() => base.disconnect());
    await base.connect();
    await base.subscribe({ topics: [w.topic], fromBeginning: true });
    await base.run({
      eachMessage: async ({ message }) => {
        if (message.key?.toString() === 'probe') return;
        (filter.shouldProcess(message) ? processed : skipped).push(String(message.value));
      },
    });

    const messages = tenantMessages(2_000, 10, 20, 2);
    const mine = messages.filter((m) => tenantOf(m) === 't7');
    await produce(w.topic, messages);
    await waitFor(
      () =>
        processed.length + skipped.length >= messages.length &&
        local.records.filter(notProbe).length >= mine.length,
      30_000,
      'the base consumer to see every message and the local topic the tenant’s',
    );

    expect(filter.intercepted()).toEqual(['t7']);
    expect([...processed].sort()).toEqual(sortedValues(messages.filter((m) => tenantOf(m) !== 't7')));
    expect([...skipped].sort()).toEqual(sortedValues(mine));
    expect(valuesOf(local.records.filter(notProbe))).toEqual(sortedValues(mine));
    // Filter mode leaves the dev topic as it is: no split topic.
    expect(await listTopics()).not.toContain(w.splitTopic);
  });

  it('mirror: the developer gets a copy of the tenant’s messages and a plain base consumer still gets every message', async () => {
    const w = await world('mirror');
    await interceptKafka(w, 't3', clientEnv(w.server, TOKEN));
    const local = await watched(w.localTopic);
    await untilSplitterReads(w, 't3', local);
    const base = await watched(w.topic);

    const messages = tenantMessages(1_000, 10, 20, 3);
    const mine = messages.filter((m) => tenantOf(m) === 't3');
    await produce(w.topic, messages);
    await waitFor(
      () =>
        base.records.filter(notProbe).length >= messages.length &&
        local.records.filter(notProbe).length >= mine.length,
      30_000,
      'the base consumer to see every message and the local topic the tenant’s',
    );

    expect(valuesOf(base.records.filter(notProbe))).toEqual(sortedValues(messages));
    expect(valuesOf(local.records.filter(notProbe))).toEqual(sortedValues(mine));
    expectPerKeyOrder(local.records.filter(notProbe), 'local topic');
    expect(await listTopics()).not.toContain(w.splitTopic);
  });

  it('a client killed mid-stream and restarted within the lease takes its intercept back, and nothing is lost', async ({
    annotate,
  }) => {
    const w = await world('split');
    const env = clientEnv(w.server, TOKEN, { KELSINGRA_HOLDER: uniqueName('dev') });
    const first = await interceptKafka(w, 't1', env);
    const local = await watched(w.localTopic);
    await untilSplitterReads(w, 't1', local);

    const batch = (from: number, count: number): Message[] =>
      Array.from({ length: count }, (_, i) => ({
        key: `k${(from + i) % 20}`,
        value: `m:${from + i}`,
        headers: { [TENANT_HEADER]: 't1' },
      }));
    const arrivedValues = () => new Set(local.records.filter(notProbe).map((r) => r.value));
    await produce(w.topic, batch(0, 2_000));
    await waitFor(() => arrivedValues().size >= 100, 20_000, 'the first hundred messages to arrive');
    process.kill(first.agentPid, 'SIGKILL');
    // Gone for good, reaped too, as a crashed laptop's agent would be by the time it restarts.
    await waitFor(() => !exists(first.agentPid), 10_000, 'the agent to die and be reaped');
    // Let the watch catch up with what the agent produced before it died.
    await sleep(1_000);
    const atKill = arrivedValues().size;
    // Mid-stream, or the test proves nothing.
    expect(atKill).toBeLessThan(2_000);

    // Produced while no client is there: they wait in the intercept's topic.
    await produce(w.topic, batch(2_000, 500));
    // The same client comes back: same config dir, holder and token.
    const again = await interceptKafka(w, 't1', env);
    expect(again.id).toBe(first.id);

    const expected = batch(0, 2_500).map((m) => String(m.value));
    await waitFor(
      () => arrivedValues().size >= expected.length,
      45_000,
      'every message of the tenant to arrive after the restart',
    );
    const arrived = local.records.filter(notProbe);
    expect([...arrivedValues()].sort()).toEqual([...expected].sort());
    // At least once: repeats only for what was delivered but not yet committed when the client died.
    const duplicates = arrived.length - expected.length;
    await annotate(`${atKill} delivered before the kill, ${duplicates} duplicates after the restart`);
    // Only what was delivered before the kill can come again.
    expect(duplicates).toBeLessThanOrEqual(atKill);
    expectFirstSeenInKeyOrder(arrived);
  });

  it('forwards a local topic back to dev as the tenant, with a hop header, and does not divert it back to the developer', async () => {
    const w = await world('split');
    const out = uniqueName('laptop-out');
    cleanups.push(() => deleteTopics([out]));
    const held = await interceptKafka(w, 't5', clientEnv(w.server, TOKEN), [
      '--forward-topic',
      `${out}=${w.topic}`,
    ]);
    const local = await watched(w.localTopic);
    await untilSplitterReads(w, 't5', local);
    const dev = await watched(w.topic);
    const split = await watched(w.splitTopic);
    // Kelsingra's own topics cannot be written through a forward (another tenant's deliveries live there).
    for (const topic of [`kelsingra-${w.service}-victim`, w.splitTopic]) {
      const refused = await fetch(`${w.server.control}/v1/kafka/forward`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({
          intercept: held.id,
          topic,
          messages: [{ key: null, value: 'eA==', headers: {} }],
        }),
      });
      expect(refused.status, topic).toBe(403);
      expect(((await refused.json()) as { code: string }).code).toBe('topic-forbidden');
    }
    // A dev topic that does not exist is named, not created.
    const missing = uniqueName('no-such-topic');
    const unknown = await fetch(`${w.server.control}/v1/kafka/forward`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        intercept: held.id,
        topic: missing,
        messages: [{ key: null, value: 'eA==', headers: {} }],
      }),
    });
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as { error: string }).error).toContain(missing);
    expect(await listTopics()).not.toContain(missing);

    const forwarded: Message[] = Array.from({ length: 50 }, (_, i) => ({
      key: `f${i % 5}`,
      value: `fwd:${i}`,
      // Whatever tenant the local service wrote, in any spelling a consumer folds into the
      // tenant header (`x_tenant_id`), dev gets the intercepted one alone.
      headers: {
        'x-origin': 'laptop',
        ...(i % 10 === 0 ? { [TENANT_HEADER]: 'someone-else' } : {}),
        ...(i % 10 === 1
          ? { [TENANT_HEADER.replaceAll('-', '_')]: 'someone-else', X_Kelsingra_Hop: 'x' }
          : {}),
      },
    }));
    await produce(out, forwarded);
    const isForwarded = (r: KafkaRecord) => r.value?.startsWith('fwd:');
    await waitFor(
      () =>
        dev.records.filter(isForwarded).length >= forwarded.length &&
        split.records.filter(isForwarded).length >= forwarded.length,
      10_000,
      'the forwarded messages in the dev topic and (not intercepted) in the split topic',
    ).catch((err: Error) => {
      throw new Error(
        `${err.message}: ${dev.records.filter(isForwarded).length} of ${forwarded.length} in the dev topic, ${split.records.filter(isForwarded).length} in the split topic\nagent log:\n${readFileSync(held.logFile, 'utf8').slice(-3_000)}`,
      );
    });
    // A later message for the tenant reaching the developer shows the splitter is past the forwarded ones.
    await produce(w.topic, [{ key: 'marker', value: 'marker', headers: { [TENANT_HEADER]: 't5' } }]);
    await waitFor(() => local.records.some((r) => r.value === 'marker'), 20_000, 'the marker to arrive');

    const inDev = dev.records.filter(isForwarded);
    expect(valuesOf(inDev)).toEqual(sortedValues(forwarded));
    for (const r of inDev) {
      expect(r.headers[TENANT_HEADER]).toBe('t5');
      expect(Object.keys(r.headers).filter((k) => k.includes('_'))).toEqual([]);
      expect(r.headers['x-kelsingra-hop']).toBeTruthy();
      expect(r.headers['x-origin']).toBe('laptop');
      expect(r.key).toBe(`f${Number(r.value?.slice(4)) % 5}`);
    }
    expect(new Set(inDev.map((r) => r.headers['x-kelsingra-hop']))).toEqual(new Set([held.id]));
    expect(valuesOf(split.records.filter(isForwarded))).toEqual(sortedValues(forwarded));
    expect(local.records.filter(isForwarded)).toEqual([]);
  });

  it('a forwarding client killed -9 mid-stream and restarted keeps its lease past two leases, and nothing is lost', async ({
    annotate,
  }) => {
    const leaseS = 6;
    const w = await world('split', { leaseTtl: leaseS });
    const out = uniqueName('laptop-out');
    cleanups.push(() => deleteTopics([out]));
    await createTopic(out);
    const env = clientEnv(w.server, TOKEN, { KELSINGRA_HOLDER: uniqueName('dev') });
    const forward = ['--forward-topic', `${out}=${w.topic}`];
    const first = await interceptKafka(w, 't1', env, forward);
    const dev = await watched(w.topic);
    const forwardedValues = () =>
      new Set(dev.records.filter((r) => r.value?.startsWith('fwd:')).map((r) => r.value));

    const total = 5_000;
    await produce(
      out,
      Array.from({ length: total }, (_, i) => ({ key: `f${i % 7}`, value: `fwd:${i}` })),
    );
    await waitFor(() => forwardedValues().size >= 200, 30_000, 'the first forwarded messages in dev');
    process.kill(first.agentPid, 'SIGKILL');
    await waitFor(() => !exists(first.agentPid), 10_000, 'the agent to die and be reaped');
    const atKill = forwardedValues().size;
    expect(atKill).toBeLessThan(total);

    const again = await interceptKafka(w, 't1', env, forward);
    expect(again.id).toBe(first.id);
    const restartedAt = Date.now();
    // Two whole leases and then some: renewals must not have waited for the forward group.
    await sleep(leaseS * 2 * 1000 + 2_000);
    expect(exists(again.agentPid), readFileSync(again.logFile, 'utf8').slice(-2_000)).toBe(true);
    const list = JSON.parse((await run(['list', '--json'], env)).stdout) as { id: string }[];
    expect(list.map((i) => i.id)).toContain(first.id);
    const audit = w.server
      .logs()
      .split('\n')
      .filter((line) => line.includes('"audit":true') && line.includes(first.id));
    expect(audit.some((line) => line.includes('"reason":"expired"'))).toBe(false);
    expect(audit.filter((line) => line.includes('"outcome":"renewed"')).length).toBeGreaterThanOrEqual(1);

    await waitFor(
      () => forwardedValues().size >= total,
      60_000,
      'every forwarded message in dev after the restart',
    ).catch((err: Error) => {
      throw new Error(
        `${err.message}: ${forwardedValues().size} of ${total}\nagent log:\n${readFileSync(again.logFile, 'utf8').slice(-3_000)}`,
      );
    });
    await annotate(
      `${atKill} forwarded before the kill; all ${total} in dev ${((Date.now() - restartedAt) / 1000).toFixed(1)} s after the restart`,
    );
    expect(exists(again.agentPid)).toBe(true);
    // Two leases of waiting, the dead member's 10 s session, then the rest of the stream.
  }, 120_000);

  it('a replica killed under the tunnel mid-stream: the client moves to the other replica and nothing is lost', async ({
    annotate,
  }) => {
    const w = await world('split', { replicas: 2, databaseUrl: await freshDatabase(cleanups) });
    const up = new Set(w.replicas);
    const lb = await tcpBalancer(() => [...up].map((r) => r.controlPort), cleanups);
    const env = clientEnv(w.server, TOKEN, { KELSINGRA_SERVER: lb.url });
    const held = await interceptKafka(w, 't2', env);
    const local = await watched(w.localTopic);
    // Probes on every partition: both replicas' splitters read their share.
    await untilSplitterReads(w, 't2', local);
    const holder = await waitFor(
      async () => {
        for (const r of w.replicas) {
          const res = await fetch(`${r.control}/status`, { headers: { authorization: `Bearer ${TOKEN}` } });
          const status = (await res.json()) as { clients: unknown[] };
          if (status.clients.length > 0) return r;
        }
        return undefined;
      },
      5_000,
      'the replica holding the tunnel',
    );

    const batch = (from: number, count: number): Message[] =>
      Array.from({ length: count }, (_, i) => ({
        key: `k${(from + i) % 20}`,
        value: `m:${from + i}`,
        headers: { [TENANT_HEADER]: 't2' },
      }));
    const arrivedValues = () => new Set(local.records.filter(notProbe).map((r) => r.value));
    await produce(w.topic, batch(0, 2_000));
    await waitFor(() => arrivedValues().size >= 100, 20_000, 'the first hundred messages to arrive');
    holder.child.kill('SIGKILL');
    up.delete(holder);
    // Delivery waits for the dead replica's Kafka session to time out (6 s); by 1 s the watch
    // has seen everything delivered before the kill.
    await sleep(1_000);
    const atKill = arrivedValues().size;
    expect(atKill).toBeLessThan(2_000);
    // Some of these land on partitions the dead replica's splitter held.
    await produce(w.topic, batch(2_000, 500));

    const expected = batch(0, 2_500).map((m) => String(m.value));
    // The dead replica's consumers keep their partitions until their Kafka sessions time out.
    await waitFor(
      () => arrivedValues().size >= expected.length,
      80_000,
      'every message of the tenant to arrive through the other replica',
    ).catch((err: Error) => {
      const survivor = [...up][0] as ServerProcess;
      throw new Error(
        `${err.message}: ${arrivedValues().size} of ${expected.length} arrived\nagent log:\n${readFileSync(held.logFile, 'utf8').slice(-3_000)}\nsurviving replica:\n${survivor.logs().slice(-6_000)}`,
      );
    });
    expect([...arrivedValues()].sort()).toEqual([...expected].sort());
    const duplicates = local.records.filter(notProbe).length - expected.length;
    await annotate(`${atKill} delivered before the kill, ${duplicates} duplicates`);
    expect(duplicates).toBeLessThanOrEqual(atKill);
    expectFirstSeenInKeyOrder(local.records.filter(notProbe));
  }, 120_000);

  it('refuses to start when a configured topic does not exist, naming it (exit 7)', async () => {
    ensureKafka();
    const service = uniqueName('billing');
    const present = uniqueName('orders');
    const missing = uniqueName('missing');
    cleanups.push(() => deleteTopics([present]));
    await createTopic(present, 1);
    const file = configFile(service, 'http://127.0.0.1:1', {
      [present]: { mode: 'split' },
      [missing]: { mode: 'filter' },
    });
    const r = await run(['server', '--port', '0', '--proxy-port', '0', '--config', file], {});
    expect(r.exitCode, r.stderr).toBe(7);
    expect(r.stderr).toContain(missing);
    expect(r.stderr).not.toContain(present);
    // Checking is not creating: the missing topic is still missing.
    expect(await listTopics()).not.toContain(missing);
  });
});
