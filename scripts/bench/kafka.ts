#!/usr/bin/env node
/**
 * Kelsingra's Kafka intercept against plain kafkajs (see docs/BENCHMARKS.md, "Kafka").
 *
 *   npm run bench:kafka
 *   node scripts/bench/kafka.ts --messages 20000 --rounds 1 --latency-messages 100 --json out.json
 *
 * Measures, in one run, on one local broker (scripts/kafka, started if it is not running and
 * then stopped again):
 *
 *   1. Delivery latency: messages for an intercepted tenant sent one at a time to a dev topic
 *      (mode split) reach the developer's local topic through the server agent (splitter →
 *      per-intercept topic → delivery over the tunnel → `intercept --detach --kafka-local`
 *      client agent → local produce). In the same run, a plain kafkajs consumer reads the dev
 *      topic directly; both consumers are in this process, which also sends. Every message
 *      carries its send time; latency is arrival − send, per path, and the added latency per
 *      message is (Kelsingra arrival − plain arrival).
 *   2. Splitting throughput (backlog): N small messages over 50 tenants are produced once to a
 *      3-partition topic. Each round, a fresh server agent (new consumer group, its offsets set
 *      to the start of the topic) splits them into `<topic>.base`; then a plain kafkajs
 *      consume-and-produce loop (a separate Node process: eachBatch → sendBatch in requests of
 *      ≤ 512 KiB like the splitter's, same producer settings) copies them into `<topic>.copy`,
 *      also from a fresh group at the start. All topics keep the broker's default limits. Timed from the group join (the server's "kafka splitter joined its group" log line,
 *      the loop's GROUP_JOIN event) until the output topic's end offsets have grown by N
 *      (polled every 20 ms). The order alternates between rounds; medians are reported.
 *   3. Splitting throughput (live): the same, but the consumer waits at the end of an empty
 *      topic and this process produces the N messages as fast as it can; timed from the first
 *      produce until the output has all of them. Bounded by this process's producer.
 *
 * Options: --messages N (100000 per throughput run), --rounds N (3), --latency-messages N (300
 * timed), --warmup N (50), --skip-live, --json FILE (raw results). Topics and consumer groups
 * are named kbench-<random>… and deleted at the end; the intercepted tenant is kb-<random>.
 * Every process is stopped on exit, Ctrl-C or failure, the detached client agent with
 * `leave --all` and then its pid.
 *
 * Over 400 lines on purpose: both measurements run the same topics, consumer groups and
 * processes against plain kafkajs in one run, and share the code that sets those up and tears them down.
 */
import { execFile, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import { join } from 'node:path';
import kafkajs, { type Consumer, type Message } from 'kafkajs';
import YAML from 'yaml';
import type { Proc } from './lib.ts';
import {
  alive,
  cleanupAndExit,
  fmt,
  freePort,
  log,
  median,
  onCleanup,
  orphanPids,
  parseOptions,
  percentile,
  ROOT,
  reportFailure,
  requireBuild,
  sleep,
  start,
  stop,
  stopPid,
  table,
} from './lib.ts';

const { Kafka, logLevel, Partitioners } = kafkajs;
const BIN = join(ROOT, 'bin', 'run.js');
const KAFKA = join(ROOT, 'scripts', 'kafka');
const SELF = import.meta.filename;
const NODE = process.execPath;
const BROKERS: [string, ...string[]] = ['127.0.0.1:9092'];
const TENANT_HEADER = 'x-tenant-id';

type System = 'kelsingra' | 'plain';
type Mode = 'backlog' | 'live';
interface Stats {
  p50: number;
  p90: number;
  p99: number;
  max: number;
}
interface LatencySample {
  local: number;
  direct: number;
  ack: number;
}
interface Latency {
  n: number;
  lost: number;
  leakedToBase: number;
  duplicates: { local: number; direct: number };
  firstMessageMs: number;
  local: Stats;
  direct: Stats;
  addedPerMessage: Stats;
  ack: Stats;
  samples: LatencySample[];
  addedP50: number;
  addedP99: number;
}
/** CPU % by kind of process over a window (see startMonitor). */
interface CpuShare {
  own: number;
  broker: number;
  others: number;
}
interface ThroughputRow {
  system: System;
  mode: Mode;
  round: number;
  ms: number;
  rate: number;
  producedMs: number | undefined;
  extra: number;
  cpu: CpuShare & { processSeconds: number };
}
interface Throughput {
  rows: ThroughputRow[];
  kelsingra: number;
  plain: number;
  ratio: number;
  kelsingraCpu: number;
  plainCpu: number;
  cpuRatio: number;
  producedMs: number | undefined;
}
interface MonitorSample {
  at: string;
  load1: number;
  own: number;
  broker: number;
  others: number;
}
interface MonitorSummary {
  samples: MonitorSample[];
  maxLoad1: number;
  maxOthersCpu: number;
  medianOthersCpu: number;
  otherProcesses: { cmd: string; maxCpu: number }[];
}
type Opts = ReturnType<typeof options>;
interface Results {
  opts: Opts;
  runId: string;
  node: string;
  cores: number;
  cpu: string | undefined;
  startedAt: string;
  loadStart: string[];
  brokerWasRunning?: boolean;
  serverArgv?: string[];
  latency?: Latency;
  backlog?: Throughput;
  live?: Throughput;
  seconds?: number;
  loadEnd?: string[];
  monitor?: MonitorSummary;
}
interface CopySpec {
  from: string;
  to: string;
  groupId: string;
}

// kafkajs 2.2 schedules a timer with a negative delay on Node 24, which prints a
// TimeoutNegativeWarning per consumer; it is harmless, and only that one is hidden.
const [printWarning] = process.listeners('warning');
process.removeAllListeners('warning');
process.on('warning', (w) => {
  if (w.name !== 'TimeoutNegativeWarning') printWarning?.(w);
});

// ---------------------------------------------------------------- the plain loop (child process)

/** The splitter's produce size limit and size estimate (src/shared/kafka-wire.ts), for the same requests. */
const MAX_PRODUCE_BYTES = 512 * 1024;
const messageBytes = (m: Message) => {
  let size = 64 + (m.key?.length ?? 0) + (m.value?.length ?? 0);
  for (const [k, v] of Object.entries(m.headers ?? {}))
    size += k.length + (Array.isArray(v) ? v.join('').length : (v?.length ?? 0));
  return size;
};

/**
 * `kafka.ts --copy-worker '{"from":…,"to":…,"groupId":…}'`: the baseline. A kafkajs consumer
 * that copies every message of `from` to the same partition of `to`: each fetched batch as
 * sendBatch requests of at most 512 KiB, in order, offsets resolved once all are acknowledged.
 * That is what the splitter does, minus deciding where each message goes. Same producer
 * settings as the splitter (idempotent, one request in flight). Prints {"joined":<epoch ms>}
 * when it has joined its group.
 */
async function copyWorker({ from, to, groupId }: CopySpec) {
  const kafka = new Kafka({
    clientId: 'kbench-copy',
    brokers: BROKERS,
    logLevel: logLevel.NOTHING,
    retry: { retries: 5 },
  });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  const consumer = kafka.consumer({ groupId });
  onCleanup(
    async () => {
      await consumer.disconnect();
      await producer.disconnect();
    },
    { beforeStop: true },
  );
  await producer.connect();
  consumer.on(consumer.events.GROUP_JOIN, () =>
    process.stdout.write(`${JSON.stringify({ joined: Date.now() })}\n`),
  );
  consumer.on(consumer.events.CRASH, ({ payload }) =>
    process.stdout.write(`${JSON.stringify({ crash: payload.error?.message ?? String(payload.error) })}\n`),
  );
  await consumer.connect();
  await consumer.subscribe({ topics: [from], fromBeginning: false });
  await consumer.run({
    eachBatchAutoResolve: false,
    eachBatch: async ({ batch, resolveOffset, heartbeat, isRunning, isStale }) => {
      const messages = batch.messages.map((m) => ({
        key: m.key,
        value: m.value,
        timestamp: m.timestamp,
        headers: m.headers,
        partition: batch.partition,
      }));
      if (!isRunning() || isStale()) return;
      let chunk: Message[] = [];
      let bytes = 0;
      for (const m of messages) {
        const n = messageBytes(m);
        if (chunk.length && bytes + n > MAX_PRODUCE_BYTES) {
          await producer.sendBatch({ topicMessages: [{ topic: to, messages: chunk }] });
          chunk = [];
          bytes = 0;
        }
        chunk.push(m);
        bytes += n;
      }
      if (chunk.length) await producer.sendBatch({ topicMessages: [{ topic: to, messages: chunk }] });
      resolveOffset(batch.lastOffset());
      await heartbeat();
    },
  });
}

if (process.argv[2] === '--copy-worker') {
  const spec = process.argv[3];
  if (spec === undefined) throw new Error('--copy-worker needs its JSON argument');
  await copyWorker(JSON.parse(spec) as CopySpec);
} else {
  await main();
}

// ---------------------------------------------------------------- options

function options() {
  return parseOptions(
    process.argv.slice(2),
    {
      messages: 100_000,
      rounds: 3,
      'latency-messages': 300,
      warmup: 50,
      'skip-live': false,
      json: '',
    },
    'kafka.ts [--messages N] [--rounds N] [--latency-messages N] [--warmup N] [--skip-live] [--json FILE]',
  );
}

// ---------------------------------------------------------------- main

async function main() {
  const opts = options();
  requireBuild('npm run bench:kafka');

  const RUN_ID = randomBytes(4).toString('hex');
  const P = `kbench-${RUN_ID}`;
  const TOKEN = `bench-${randomBytes(8).toString('hex')}`;
  const TENANT = `kb-${RUN_ID}`;
  const T = {
    lat: `${P}-lat`,
    latLocal: `${P}-lat-local`,
    latBase: `${P}-lat.base`,
    thr: `${P}-thr`,
    thrBase: `${P}-thr.base`,
    thrCopy: `${P}-thr.copy`,
    live: `${P}-live`,
    liveBase: `${P}-live.base`,
    liveCopy: `${P}-live.copy`,
  };
  const WORK = mkdtempSync(join(os.tmpdir(), 'kelsingra-kbench-'));
  onCleanup(() => rmSync(WORK, { recursive: true, force: true }));

  const results: Results = {
    opts,
    runId: RUN_ID,
    node: process.versions.node,
    cores: os.cpus().length,
    cpu: os.cpus()[0]?.model,
    startedAt: new Date().toISOString(),
    loadStart: os.loadavg().map((x) => x.toFixed(2)),
  };
  const monitor = startMonitor();
  let exitCode = 0;
  const t0 = Date.now();
  try {
    log(
      `Kelsingra Kafka benchmark (${os.cpus().length} cores, Node ${process.versions.node}, load average ${results.loadStart.join(' ')}), run ${RUN_ID}`,
    );

    // ------------------------------------------------------------ broker, clients, topics
    const kafkaCli = (args: string[], timeout = 60_000) =>
      spawnSync(KAFKA, args, { cwd: ROOT, encoding: 'utf8', timeout });
    const wasRunning = kafkaCli(['status']).status === 0;
    results.brokerWasRunning = wasRunning;
    if (!wasRunning) {
      log('  starting the broker (scripts/kafka start; the first run fetches jars from Maven Central)…');
      const r = kafkaCli(['start'], 300_000);
      if (r.status !== 0)
        throw new Error(`scripts/kafka start failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
    } else log('  the broker was already running: it stays running');

    const kafka = new Kafka({
      clientId: P,
      brokers: BROKERS,
      logLevel: logLevel.NOTHING,
      retry: { retries: 5 },
    });
    const admin = kafka.admin();
    const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
    await Promise.all([admin.connect(), producer.connect()]);
    const consumers: Consumer[] = [];
    onCleanup(
      async () => {
        await Promise.all(consumers.map((c) => c.disconnect().catch(() => undefined)));
        await producer.disconnect().catch(() => undefined);
        await admin.disconnect().catch(() => undefined);
      },
      { beforeStop: true },
    );
    // After every process has stopped: our topics and groups go, then the broker if we started it.
    onCleanup(async () => {
      const a = new Kafka({ clientId: `${P}-cleanup`, brokers: BROKERS, logLevel: logLevel.NOTHING }).admin();
      try {
        await a.connect();
        const topics = (await a.listTopics()).filter(
          (t) => t.startsWith(P) || t === `kelsingra-billing-${TENANT}`,
        );
        if (topics.length) await a.deleteTopics({ topics, timeout: 30_000 });
        const groups = (await a.listGroups()).groups.map((g) => g.groupId).filter((g) => g.includes(RUN_ID));
        let kept = 0;
        if (groups.length)
          await a.deleteGroups(groups).catch((err) => {
            kept = err.groups?.filter((g: { errorCode: number }) => g.errorCode).length ?? groups.length;
          });
        log(
          `deleted ${topics.length} topics and ${groups.length - kept} consumer groups of this run${kept ? ` (${kept} still had members and were left to expire)` : ''}`,
        );
      } finally {
        await a.disconnect().catch(() => undefined);
      }
      if (!wasRunning) {
        log('stopping the Kafka broker this run started (scripts/kafka stop)');
        kafkaCli(['stop']);
      }
    });

    // Created before anyone subscribes (kafkajs cannot subscribe to a topic KRaft has not made yet).
    await admin.createTopics({
      waitForLeaders: true,
      topics: [
        { topic: T.lat, numPartitions: 3 },
        { topic: T.latBase, numPartitions: 3 },
        { topic: T.latLocal, numPartitions: 1 },
        // All with the broker's default limits (max.message.bytes 1 MB).
        ...[T.thr, T.thrBase, T.thrCopy, T.live, T.liveBase, T.liveCopy].map((topic) => ({
          topic,
          numPartitions: 3,
        })),
      ],
    });

    // The "base service" and the developer's local service: HTTP is not what is measured here.
    const httpPort = await freePort();
    const httpServer = http.createServer((_req, res) => res.end('ok\n'));
    await new Promise<void>((r) => httpServer.listen(httpPort, '127.0.0.1', r));
    onCleanup(() => new Promise((r) => httpServer.close(r)));
    const upstream = `http://127.0.0.1:${httpPort}`;

    // ------------------------------------------------------------ helpers

    let serverN = 0;
    /** A server agent for `topics` (all mode split, service billing), its groups named after `clientId`. */
    async function startServer(clientId: string, topics: string[]) {
      const file = join(WORK, `server-${++serverN}.yaml`);
      writeFileSync(
        file,
        YAML.stringify({
          services: { billing: { upstream } },
          token: TOKEN,
          logLevel: 'info',
          kafka: {
            brokers: BROKERS,
            clientId,
            topics: Object.fromEntries(topics.map((t) => [t, { service: 'billing', mode: 'split' }])),
          },
        }),
      );
      const spawnedAt = Date.now();
      const proc = await start(
        `server agent (${clientId})`,
        NODE,
        [BIN, 'server', '--config', file, '--port', '0', '--proxy-port', '0'],
        {
          ready: /"msg":"server agent listening"[^\n]*\n/,
          timeoutMs: 60_000,
        },
      );
      // bin/run.js re-executes itself with its V8 flags: record the command line it runs with.
      results.serverArgv ??= readFileSync(`/proc/${proc.pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
      const listening = proc
        .output()
        .split('\n')
        .find((l) => l.includes('"msg":"server agent listening"'));
      if (listening === undefined) throw new Error(`${proc.name}: no "server agent listening" line`);
      const info = JSON.parse(listening) as { controlPort: number };
      return { proc, spawnedAt, control: `http://127.0.0.1:${info.controlPort}` };
    }

    /** Epoch ms of the first line of `proc`'s output that matches `re` and holds JSON with a time. */
    async function waitLine(proc: Proc, re: RegExp, field: string, what: string, timeoutMs = 60_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const line = proc
          .output()
          .split('\n')
          .find((l) => re.test(l));
        if (line) {
          const at = (JSON.parse(line) as Record<string, unknown>)[field];
          if (typeof at !== 'number') throw new Error(`${proc.name}: no numeric "${field}" in ${line}`);
          return at;
        }
        if (proc.child.exitCode !== null)
          throw new Error(`${proc.name} exited before ${what}:\n${proc.output()}`);
        if (Date.now() > deadline)
          throw new Error(`${proc.name}: no ${what} in ${timeoutMs} ms:\n${proc.output()}`);
        await sleep(10);
      }
    }

    async function endOffsets(topic: string) {
      const parts = await admin.fetchTopicOffsets(topic);
      return parts.reduce((a, p) => a + Number(p.high), 0);
    }

    /** Commits offsets for a group that has no member yet: `where` = 'low' (start) or 'high' (end). */
    async function placeGroup(groupId: string, topic: string, where: 'low' | 'high') {
      const parts = await admin.fetchTopicOffsets(topic);
      await admin.setOffsets({
        groupId,
        topic,
        partitions: parts.map((p) => ({ partition: p.partition, offset: p[where] })),
      });
    }

    /** Until `topic` holds `want` more messages than `before`; epoch ms when seen (polled every 20 ms). */
    async function waitFilled(topic: string, before: number, want: number, timeoutMs: number, proc?: Proc) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const n = (await endOffsets(topic)) - before;
        if (n >= want) return { at: Date.now(), n };
        // A crashed consumer restarts, but its round would time the crash and the restart: stop.
        const crash = proc
          ?.output()
          .split('\n')
          .find((l) => /"msg":"kafka splitter crashed"|"msg":"kafka: Crash|^\{"crash"/.test(l));
        if (crash || Date.now() > deadline)
          throw new Error(
            `${topic}: ${n} of ${want} messages after ${fmt(timeoutMs - (deadline - Date.now()), 0)} ms${crash ? `; ${proc?.name}'s consumer crashed:\n${crash}` : ''}`,
          );
        await sleep(20);
      }
    }

    /** N small messages over 50 tenants, 1000 keys; sendBatch of 2000, 4 in flight. */
    async function produceMany(topic: string, n: number) {
      const CHUNK = 2000;
      const pad = 'x'.repeat(80);
      let next = 0;
      const worker = async () => {
        while (next < n) {
          const from = next;
          next = Math.min(n, next + CHUNK);
          const messages: Message[] = [];
          for (let i = from; i < next; i++)
            messages.push({
              key: `k${i % 1000}`,
              value: `{"i":${i},"pad":"${pad}"}`,
              headers: { [TENANT_HEADER]: `tenant-${i % 50}` },
            });
          await producer.send({ topic, messages });
        }
      };
      await Promise.all([worker(), worker(), worker(), worker()]);
    }

    // ------------------------------------------------------------ 1. latency

    async function benchLatency() {
      log(
        `\n== 1. Delivery latency: ${opts.warmup} warm-up + ${opts['latency-messages']} timed messages for tenant ${TENANT}, one at a time, dev topic → local topic through Kelsingra vs a plain consumer of the dev topic`,
      );
      const server = await startServer(`${P}-lat`, [T.lat]);
      await waitLine(server.proc, /"msg":"kafka splitter joined its group"/, 'time', 'splitter group join');

      // This process's consumers: the developer's local topic, the dev topic itself, the split topic.
      const track = async (name: string, topic: string) => {
        const seen = new Map<string, number>();
        const waiting = new Map<string, (at: number) => void>();
        const t = {
          seen,
          dups: 0,
          wait: (id: string, timeoutMs: number): Promise<number> =>
            seen.has(id)
              ? Promise.resolve(seen.get(id) ?? Number.NaN)
              : new Promise<number>((res) => {
                  waiting.set(id, res);
                  setTimeout(() => {
                    if (waiting.get(id) === res) {
                      waiting.delete(id);
                      res(Number.NaN);
                    }
                  }, timeoutMs).unref();
                }),
        };
        const consumer = kafka.consumer({ groupId: `${P}-lat-${name}` });
        consumers.push(consumer);
        await consumer.connect();
        await consumer.subscribe({ topics: [topic], fromBeginning: true });
        await consumer.run({
          eachMessage: async ({ message }) => {
            const at = performance.now();
            const { id } = JSON.parse(String(message.value)) as { id: string };
            if (seen.has(id)) {
              t.dups++;
              return;
            }
            seen.set(id, at);
            waiting.get(id)?.(at);
            waiting.delete(id);
          },
        });
        return t;
      };
      const [local, direct, base] = await Promise.all([
        track('local', T.latLocal),
        track('direct', T.lat),
        track('base', T.latBase),
      ]);
      const trackers = { local, direct, base };

      const env = {
        ...process.env,
        NO_COLOR: '1',
        KELSINGRA_SERVER: server.control,
        KELSINGRA_TOKEN: TOKEN,
        KELSINGRA_CONFIG_DIR: mkdtempSync(join(WORK, 'client-')),
        KELSINGRA_HOLDER: `${P}@bench`,
      };
      const run = (args: string[], timeout: number) =>
        new Promise<{ code: number | string; stdout: string; stderr: string }>((res) => {
          execFile(
            NODE,
            [BIN, ...args],
            { cwd: ROOT, env, encoding: 'utf8', timeout },
            (err, stdout, stderr) => res({ code: err ? (err.code ?? 1) : 0, stdout, stderr }),
          );
        });
      const r = await run(
        [
          'intercept',
          'billing',
          '--tenant',
          TENANT,
          '--port',
          String(httpPort),
          '--detach',
          '--json',
          '--kafka-local',
          BROKERS[0],
          '--kafka-topic',
          `${T.lat}=${T.latLocal}`,
        ],
        60_000,
      );
      if (r.code !== 0) throw new Error(`intercept --detach failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
      const ready = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { id: string; agentPid: number };
      orphanPids.add(ready.agentPid);
      let left = false;
      const leave = async () => {
        if (left) return;
        left = true;
        await run(['leave', '--all'], 30_000);
        const deadline = Date.now() + 10_000;
        while (alive(ready.agentPid) && Date.now() < deadline) await sleep(50);
        await stopPid(ready.agentPid);
        orphanPids.delete(ready.agentPid);
      };
      onCleanup(leave, { beforeStop: true });
      log(`  intercept ${ready.id}: client agent pid ${ready.agentPid}, server agent pid ${server.proc.pid}`);

      let n = 0;
      const send = async (id: string, tenant: string) => {
        const sent = performance.now();
        await producer.send({
          topic: T.lat,
          messages: [
            {
              key: `k${n++ % 10}`,
              value: JSON.stringify({ id, sentAt: Date.now() }),
              headers: { [TENANT_HEADER]: tenant },
            },
          ],
        });
        return { sent, ack: performance.now() - sent };
      };

      // The splitter starts at the end of the topic: a probe for another tenant must come out on
      // the split topic (and on the plain consumer) before anything counts.
      const other = `other-${RUN_ID}`;
      const readyBy = Date.now() + 60_000;
      for (let i = 0; ; i++) {
        const id = `probe-${i}`;
        await send(id, other);
        const [b, d] = await Promise.all([trackers.base.wait(id, 1000), trackers.direct.wait(id, 1000)]);
        if (Number.isFinite(b) && Number.isFinite(d)) break;
        if (Date.now() > readyBy) throw new Error('the split topic never received a probe');
      }
      // The first intercepted message also waits for the delivery consumer to start.
      const firstSent = performance.now();
      await send('first', TENANT);
      const firstAt = await trackers.local.wait('first', 60_000);
      if (!Number.isFinite(firstAt))
        throw new Error('the first intercepted message never reached the local topic');
      log(`  first intercepted message reached the local topic after ${fmt(firstAt - firstSent, 0)} ms`);

      const one = async (id: string): Promise<LatencySample> => {
        const { sent, ack } = await send(id, TENANT);
        const [l, d] = await Promise.all([trackers.local.wait(id, 15_000), trackers.direct.wait(id, 15_000)]);
        return { local: l - sent, direct: d - sent, ack };
      };
      for (let i = 0; i < opts.warmup; i++) await one(`w-${i}`);
      const samples = [];
      for (let i = 0; i < opts['latency-messages']; i++) samples.push(await one(`m-${i}`));
      // Anything of the tenant's that the base path saw would be a leak.
      await sleep(500);
      const leaked = [...trackers.base.seen.keys()].filter((id) => !id.startsWith('probe-')).length;

      await leave();
      await stop(server.proc);

      const ok = samples.filter((s) => Number.isFinite(s.local) && Number.isFinite(s.direct));
      const stats = (xs: number[]): Stats => ({
        p50: percentile(xs, 50),
        p90: percentile(xs, 90),
        p99: percentile(xs, 99),
        max: xs.length ? Math.max(...xs) : Number.NaN,
      });
      const measured = {
        n: ok.length,
        lost: samples.length - ok.length,
        leakedToBase: leaked,
        duplicates: { local: trackers.local.dups, direct: trackers.direct.dups },
        firstMessageMs: firstAt - firstSent,
        local: stats(ok.map((s) => s.local)),
        direct: stats(ok.map((s) => s.direct)),
        addedPerMessage: stats(ok.map((s) => s.local - s.direct)),
        ack: stats(samples.map((s) => s.ack)),
        samples,
      };
      const out: Latency = {
        ...measured,
        addedP50: measured.local.p50 - measured.direct.p50,
        addedP99: measured.local.p99 - measured.direct.p99,
      };
      log(
        `  plain consumer p50 ${fmt(out.direct.p50, 2)} ms p99 ${fmt(out.direct.p99, 2)} ms; through Kelsingra p50 ${fmt(out.local.p50, 2)} ms p99 ${fmt(out.local.p99, 2)} ms; added p50 ${fmt(out.addedP50, 2)} ms${out.lost ? `; ${out.lost} lost` : ''}${leaked ? `; ${leaked} leaked to the base path` : ''}`,
      );
      return out;
    }

    // ------------------------------------------------------------ 2./3. throughput

    /**
     * One timed run of `system` ('kelsingra' or 'plain') over `source`: the consumer group is set
     * at the start ('backlog') or at the end ('live') of the topic before the process starts.
     */
    async function throughputRun(system: System, mode: Mode, round: number): Promise<ThroughputRow> {
      const source = mode === 'backlog' ? T.thr : T.live;
      const out = system === 'kelsingra' ? `${source}.base` : `${source}.copy`;
      const name = `${P}-${mode}-${system === 'kelsingra' ? 'k' : 'p'}${round}`;
      const groupId = system === 'kelsingra' ? `${name}-splitter` : name;
      await placeGroup(groupId, source, mode === 'backlog' ? 'low' : 'high');
      const before = await endOffsets(out);
      let proc: Proc;
      let joined: number;
      if (system === 'kelsingra') {
        ({ proc } = await startServer(name, [source]));
        joined = await waitLine(
          proc,
          /"msg":"kafka splitter joined its group"/,
          'time',
          'splitter group join',
        );
      } else {
        proc = await start(`plain loop (${name})`, NODE, [
          SELF,
          '--copy-worker',
          JSON.stringify({ from: source, to: out, groupId }),
        ]);
        joined = await waitLine(proc, /^\{"joined":\d+\}$/, 'joined', 'group join');
      }
      // From (just after) the join to the end: the machine's CPU by kind, and the process's own.
      const endWindow = monitor.window();
      const cpu0 = cpuSeconds(proc.pid);
      const limit = Math.max(60_000, opts.messages);
      let t0 = joined;
      let producedMs: number | undefined;
      let done: { at: number; n: number };
      if (mode === 'live') {
        await sleep(200);
        t0 = Date.now();
        const filled = waitFilled(out, before, opts.messages, limit, proc);
        await produceMany(source, opts.messages);
        producedMs = Date.now() - t0;
        done = await filled;
      } else {
        done = await waitFilled(out, before, opts.messages, limit, proc);
      }
      const cpu = { ...endWindow(), processSeconds: cpuSeconds(proc.pid) - cpu0 };
      // Anything more than N would be duplicates (there should be none without failures).
      await sleep(100);
      const extra = (await endOffsets(out)) - before - opts.messages;
      await stop(proc);
      const ms = done.at - t0;
      const row: ThroughputRow = {
        system,
        mode,
        round,
        ms,
        rate: (opts.messages / ms) * 1000,
        producedMs,
        extra,
        cpu,
      };
      log(
        `  round ${round} ${mode.padEnd(7)} ${(system === 'kelsingra' ? 'Kelsingra splitter' : 'plain kafkajs loop').padEnd(19)} ${fmt(row.rate, 0).padStart(7)} msg/s  (${fmt(ms, 0)} ms${producedMs !== undefined ? `, producer done after ${fmt(producedMs, 0)} ms` : ''}; its CPU ${fmt(cpu.processSeconds, 2)} s, broker ${fmt(cpu.broker, 0)} %, other sessions ${fmt(cpu.others, 0)} %)${extra ? `  ${extra} extra messages` : ''}`,
      );
      return row;
    }

    async function benchThroughput(mode: Mode): Promise<Throughput> {
      if (mode === 'backlog') {
        log(
          `\n== 2. Splitting throughput, backlog: ${opts.messages} messages over 50 tenants in a 3-partition topic, read from the start by a fresh group; ${opts.rounds} rounds, order alternating`,
        );
        const t = Date.now();
        await produceMany(T.thr, opts.messages);
        log(`  produced ${opts.messages} messages in ${Date.now() - t} ms`);
      } else {
        log(
          `\n== 3. Splitting throughput, live: consumer at the end of the topic, then ${opts.messages} messages produced as fast as this process can; ${opts.rounds} rounds, order alternating`,
        );
      }
      const rows: ThroughputRow[] = [];
      for (let round = 1; round <= opts.rounds; round++) {
        const order: System[] = round % 2 ? ['kelsingra', 'plain'] : ['plain', 'kelsingra'];
        for (const system of order) rows.push(await throughputRun(system, mode, round));
      }
      const of = (s: System) => rows.filter((r) => r.system === s);
      const k = of('kelsingra');
      const p = of('plain');
      /** The plain row of the same round as k[i]. */
      const plainAt = (i: number) => {
        const row = p[i];
        if (!row) throw new Error(`no plain-loop row ${i + 1} of ${mode}`);
        return row;
      };
      return {
        rows,
        kelsingra: median(k.map((r) => r.rate)),
        plain: median(p.map((r) => r.rate)),
        ratio: median(k.map((r, i) => r.rate / plainAt(i).rate)),
        kelsingraCpu: median(k.map((r) => r.cpu.processSeconds)),
        plainCpu: median(p.map((r) => r.cpu.processSeconds)),
        cpuRatio: median(k.map((r, i) => plainAt(i).cpu.processSeconds / r.cpu.processSeconds)),
        producedMs: mode === 'live' ? median(rows.map((r) => r.producedMs ?? Number.NaN)) : undefined,
      };
    }

    results.latency = await benchLatency();
    results.backlog = await benchThroughput('backlog');
    if (!opts['skip-live']) results.live = await benchThroughput('live');
    results.seconds = (Date.now() - t0) / 1000;
    results.loadEnd = os.loadavg().map((x) => x.toFixed(2));
    results.monitor = monitor.summary();
    report(results, opts);
    log(`\n(${fmt(results.seconds, 0)} s)`);
    if (opts.json) writeFileSync(opts.json, `${JSON.stringify(results, null, 2)}\n`);
  } catch (err) {
    exitCode = reportFailure(err);
  }
  monitor.stop();
  await cleanupAndExit(exitCode);
}

// ---------------------------------------------------------------- machine load

/** User + system CPU time a process has used so far, in seconds. */
function cpuSeconds(pid: number | undefined) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

/**
 * Every 5 s: the load average, and each process's CPU share since the last sample (from
 * /proc/<pid>/stat), split into this run's processes, the broker, and everything else.
 */
function startMonitor() {
  const hz = 100;
  type Ticks = Map<number, { ppid: number; ticks: number }>;
  let last: Ticks = new Map();
  let lastAt = performance.now();
  const samples: MonitorSample[] = [];
  const others = new Map<string, number>();
  const ticksOf = () => {
    const m: Ticks = new Map();
    for (const d of readdirSync('/proc')) {
      if (!/^\d+$/.test(d)) continue;
      try {
        const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
        const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        m.set(Number(d), { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) });
      } catch {}
    }
    return m;
  };
  const cmdOf = (pid: number) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim();
    } catch {
      return '?';
    }
  };
  const ours = (pid: number, m: Ticks) => {
    for (let p = pid, hops = 0; p > 1 && hops < 20; p = m.get(p)?.ppid ?? 0, hops++)
      if (p === process.pid || orphanPids.has(p)) return true;
    return false;
  };
  /** CPU % per kind of process between two snapshots; processes not in both are left out. */
  const usage = (prev: Ticks, cur: Ticks, secs: number) => {
    const u = { own: 0, broker: 0, others: 0, named: [] as [string, number][] };
    for (const [pid, { ticks }] of cur) {
      const before = prev.get(pid);
      if (!before) continue;
      const cpu = ((ticks - before.ticks) / hz / secs) * 100;
      if (cpu <= 0) continue;
      if (ours(pid, cur)) u.own += cpu;
      else {
        const cmd = cmdOf(pid);
        if (cmd.includes('kafka.Kafka')) u.broker += cpu;
        else {
          u.others += cpu;
          if (cpu >= 10) u.named.push([cmd.slice(0, 140) || '(exited before it could be named)', cpu]);
        }
      }
    }
    return u;
  };
  const sample = () => {
    const now = performance.now();
    const m = ticksOf();
    const u = usage(last, m, (now - lastAt) / 1000);
    for (const [cmd, cpu] of u.named) others.set(cmd, Math.max(others.get(cmd) ?? 0, cpu));
    samples.push({
      at: new Date().toISOString(),
      load1: os.loadavg()[0] ?? Number.NaN,
      own: u.own,
      broker: u.broker,
      others: u.others,
    });
    last = m;
    lastAt = now;
  };
  last = ticksOf();
  const timer = setInterval(sample, 5_000);
  timer.unref();
  return {
    /** Starts timing a window; the function returned gives the CPU % of each kind over it. */
    window() {
      const from = ticksOf();
      const at = performance.now();
      return (): CpuShare => {
        const { own, broker, others: rest } = usage(from, ticksOf(), (performance.now() - at) / 1000);
        return { own, broker, others: rest };
      };
    },
    stop: () => clearInterval(timer),
    summary: (): MonitorSummary => ({
      samples,
      maxLoad1: Math.max(0, ...samples.map((s) => s.load1)),
      maxOthersCpu: Math.max(0, ...samples.map((s) => s.others)),
      medianOthersCpu: samples.length ? median(samples.map((s) => s.others)) : 0,
      otherProcesses: [...others].map(([cmd, cpu]) => ({ cmd, maxCpu: Math.round(cpu) })),
    }),
  };
}

// ---------------------------------------------------------------- report

function report(results: Results, opts: Opts) {
  const ok = (pass: boolean) => (pass ? 'met' : 'MISSED');
  const { latency: l, backlog, monitor: m, loadEnd } = results;
  if (!l || !backlog || !m || !loadEnd) throw new Error('report: results of this run are missing');
  log(
    `\nDelivery latency, ms from just before the produce to arrival (${l.n} messages one at a time, after ${opts.warmup} warm-up${l.lost ? `; ${l.lost} lost` : ''}):`,
  );
  const row = (label: string, s: Stats) => [
    label,
    fmt(s.p50, 2),
    fmt(s.p90, 2),
    fmt(s.p99, 2),
    fmt(s.max, 1),
  ];
  log(
    table([
      ['Path', 'p50', 'p90', 'p99', 'max'],
      row('plain kafkajs consumer of the dev topic', l.direct),
      row('Kelsingra: dev topic → local topic', l.local),
      row('added per message (Kelsingra − plain)', l.addedPerMessage),
      ['added, p50 − p50 (p99 − p99)', fmt(l.addedP50, 2), '', fmt(l.addedP99, 2), ''],
      row('producer ack', l.ack),
    ]),
  );
  log(
    `  first intercepted message after ${fmt(l.firstMessageMs, 0)} ms; leaked to the base path: ${l.leakedToBase}; duplicates local ${l.duplicates.local}, plain ${l.duplicates.direct}`,
  );
  for (const mode of ['backlog', 'live'] as const) {
    const t = results[mode];
    if (!t) continue;
    log(
      `\nSplitting throughput, ${mode} (${opts.messages} messages, msg/s; the broker's default limits, produces ≤ 512 KiB):`,
    );
    log(
      table([
        [
          'Round',
          'Kelsingra splitter',
          'plain kafkajs loop',
          'ratio',
          'CPU s, Kelsingra / plain',
          'CPU ratio, plain ÷ Kelsingra',
          "other sessions' CPU %, Kelsingra / plain",
        ],
        ...Array.from({ length: opts.rounds }, (_, i) => {
          const k = t.rows.find((r) => r.round === i + 1 && r.system === 'kelsingra');
          const p = t.rows.find((r) => r.round === i + 1 && r.system === 'plain');
          if (!k || !p) throw new Error(`round ${i + 1} of ${mode} is missing a row`);
          return [
            String(i + 1),
            fmt(k.rate, 0),
            fmt(p.rate, 0),
            fmt(k.rate / p.rate, 2),
            `${fmt(k.cpu.processSeconds, 2)} / ${fmt(p.cpu.processSeconds, 2)}`,
            fmt(p.cpu.processSeconds / k.cpu.processSeconds, 2),
            `${fmt(k.cpu.others, 0)} / ${fmt(p.cpu.others, 0)}`,
          ];
        }),
        [
          'median',
          fmt(t.kelsingra, 0),
          fmt(t.plain, 0),
          fmt(t.ratio, 2),
          `${fmt(t.kelsingraCpu, 2)} / ${fmt(t.plainCpu, 2)}`,
          fmt(t.cpuRatio, 2),
          '',
        ],
      ]),
    );
    if (mode === 'live')
      log(
        `  (the producer alone took ${fmt(t.producedMs, 0)} ms, median; bounded by it, this ratio is not one of the goals)`,
      );
  }
  log(
    `\nMachine: ${results.cores} cores, ${results.cpu}, Node ${results.node}; load average at start ${results.loadStart[0]}, at end ${loadEnd[0]}, highest sampled ${fmt(m.maxLoad1, 2)}; other processes' CPU (5 s samples) median ${fmt(m.medianOthersCpu, 0)} %, max ${fmt(m.maxOthersCpu, 0)} %`,
  );
  const argv = results.serverArgv ?? [];
  const v8 = argv.slice(1, Math.max(1, argv.indexOf(BIN)));
  log(
    `  server agents ran with Node flags: ${v8.join(' ') || '(none)'}${process.env.NODE_OPTIONS ? ` and NODE_OPTIONS ${process.env.NODE_OPTIONS}` : ''}; plain loop with none`,
  );
  for (const o of m.otherProcesses) log(`  other process seen at ≥ 10 % CPU: ${o.maxCpu} % ${o.cmd}`);
  log(
    table([
      ['Goal', 'Figure', 'Target', 'Result'],
      [
        'delivery p50 added over a plain consumer (ms)',
        fmt(l.addedP50, 2),
        '≤ 20',
        ok(l.addedP50 <= 20 && l.lost === 0),
      ],
      [
        'splitting throughput ÷ plain consume-and-produce (backlog)',
        fmt(backlog.ratio, 2),
        '≥ 0.8',
        ok(backlog.ratio >= 0.8),
      ],
    ]),
  );
}
