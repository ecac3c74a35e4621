#!/usr/bin/env node
/**
 * Kelsingra with several replicas sharing PostgreSQL (see docs/BENCHMARKS.md, "Replicas").
 *
 *   npm run bench:replicas
 *   node scripts/bench/replicas.ts --samples 50 --requests 1000 --rounds 1 --skip-kafka --json out.json
 *
 * Measures, in one run, on 3 server agents (`bin/run.js server --database-url …`) sharing one
 * fresh database:
 *
 *   1. Propagation: an intercept created (then deleted) on replica 1, where the tunnel is open;
 *      how long until every replica's data port routes the tenant to the local service (then
 *      back to the base service). Every replica is probed in a tight loop, one probe in flight each.
 *   2. Delivery: sequential keep-alive requests for a tenant whose tunnel is on replica 1, sent
 *      (a) to replica 1, (b) to replica 2, which relays them to replica 1 over one streaming HTTP
 *      hop, (c) straight to the local service; plus wrk -t1 throughput for (a) and (b).
 *   3. The Kafka floor: kafkajs producer → consumer one-way latency on a local broker
 *      (scripts/kafka), the relay path the original design proposed.
 *
 * Options: --samples N (200 propagation samples), --requests N (3000 timed requests per path
 * and round), --warmup N (300), --rounds N (3; medians are reported), --duration S (5; per wrk
 * run), --conns N (50), --messages N (500 Kafka messages per consumer setting), --skip-kafka,
 * --json FILE (raw results). PostgreSQL: postgres://postgres@127.0.0.1:5432/postgres, or
 * KELSINGRA_BENCH_PG; a database kelsingra_bench_<random> is created and dropped.
 *
 * The client side (one tunnel, many intercepts) runs in this process, from the built client
 * library (dist/src/client/tunnel/tunnel-client.js, dist/src/client/tunnel/local-forwarder.js). The base and local services
 * (services.ts) and the replicas are separate processes, all on 127.0.0.1, stopped on exit,
 * Ctrl-C or failure; the database is dropped and a broker this script started is stopped.
 *
 * Over 400 lines on purpose: its measurements share the replicas, the database and the clients
 * it starts once; apart, each would start and stop them again.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { type Dispatcher, Client as HttpClient } from 'undici';
import type { TunnelState } from '../../src/client/tunnel/tunnel-client.ts';
import {
  cleanupAndExit,
  createDatabase,
  ensureTools,
  fmt,
  freePort,
  log,
  machineInfo,
  median,
  onCleanup,
  parseOptions,
  percentile,
  ROOT,
  reportFailure,
  requireBuild,
  sleep,
  start,
  stopAll,
  table,
  waitHttp,
  wrk,
} from './lib.ts';

const BIN = join(ROOT, 'bin', 'run.js');
const SERVICES = join(import.meta.dirname, 'services.ts');
const KAFKA = join(ROOT, 'scripts', 'kafka');
const NODE = process.execPath;
const RUN_ID = randomBytes(4).toString('hex');
const TOKEN = `bench-${randomBytes(8).toString('hex')}`;
const HOLDER = `bench-${process.pid}@${os.hostname()}`;
const REPLICAS = 3;
const VIA = (tenant: string) => ({ 'x-kelsingra-service': 'billing', 'x-tenant-id': tenant });

type ReqHeaders = Record<string, string>;
type Service = Awaited<ReturnType<typeof startService>>;
type Replica = Awaited<ReturnType<typeof startReplica>>;
type BenchClient = Awaited<ReturnType<typeof startClient>>;
type Phase = 'create' | 'delete';
/** One replica probed until it routes the tenant (probeUntil). */
interface Probe {
  ms: number;
  sentMs: number;
  probes: number;
  odd: number;
  lastOdd: string | undefined;
  timedOut?: boolean;
}
/** Percentiles of a propagation figure over the samples that finished (summarize). */
interface Summary {
  n: number;
  failed: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}
/** What lib.ts's get() resolves to, as waitHttp's check sees it. */
interface HttpAnswer {
  status: number;
  headers: Headers;
}
interface PropagationSample {
  tenant: string;
  postMs: number;
  deleteMs: number;
  create: Probe[];
  delete: Probe[];
  createdEvents: number[];
  endedEvents: number[];
}
type Propagation = Awaited<ReturnType<typeof benchPropagation>>;
type PathKey = 'same' | 'cross' | 'direct';
interface Target {
  key: PathKey;
  label: string;
  origin: string;
  headers: ReqHeaders;
}
interface SeqRow {
  p50: number;
  p90: number;
  p99: number;
  max: number;
  wrong: number;
  lastWrong: string | undefined;
}
interface WrkRow {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
}
interface DeliveryPath {
  label: string;
  p50: number;
  p99: number;
  wrong: number;
  rounds: SeqRow[];
  rps?: number;
  wrkP99?: number;
  wrkRounds?: WrkRow[];
}
interface Delivery extends Record<PathKey, DeliveryPath> {
  addedP50: number;
  addedP99: number;
  rpsRatio?: number;
}
type MaxWait = 'default' | 10;
interface KafkaRow {
  maxWait: MaxWait;
  n: number;
  lost: number;
  p50: number;
  p99: number;
  max: number;
  ackP50: number;
  joinMs: number;
}
type KafkaFloor = Partial<Record<MaxWait, KafkaRow>> & { brokerWasRunning?: boolean };
type Results = ReturnType<typeof machineInfo> & {
  opts: typeof opts;
  replicas: number;
  propagation?: Propagation;
  delivery?: Delivery;
  tunnelStates?: BenchClient['states'];
  kafka?: KafkaFloor;
  seconds?: number;
};

/** xs[i], where the caller knows there is one (rows of the same rounds, the replicas started). */
function nth<T>(xs: readonly T[], i: number): T {
  const x = xs[i];
  if (x === undefined) throw new Error(`no element ${i} in a list of ${xs.length}`);
  return x;
}

// ---------------------------------------------------------------- options

const opts = parseOptions(
  process.argv.slice(2),
  {
    samples: 200,
    requests: 3000,
    warmup: 300,
    rounds: 3,
    duration: 5,
    conns: 50,
    messages: 500,
    'skip-kafka': false,
    json: '',
  },
  'replicas.ts [--samples N] [--requests N] [--warmup N] [--rounds N] [--duration S] [--conns N] [--messages N] [--skip-kafka] [--json FILE]',
);

requireBuild('npm run bench:replicas', [
  'commands/server.js',
  'src/client/tunnel/tunnel-client.js',
  'src/client/tunnel/local-forwarder.js',
]);

// kafkajs 2.2 schedules a timer with a negative delay on Node 24, which prints a
// TimeoutNegativeWarning per consumer; it is harmless, and only that one is hidden.
const [printWarning] = process.listeners('warning');
process.removeAllListeners('warning');
process.on('warning', (w) => {
  if (w.name !== 'TimeoutNegativeWarning') printWarning?.(w);
});

const { TunnelClient } = (await import(
  pathToFileURL(join(ROOT, 'dist', 'src', 'client', 'tunnel', 'tunnel-client.js')).href
)) as typeof import('../../src/client/tunnel/tunnel-client.ts');
const { LocalForwarder } = (await import(
  pathToFileURL(join(ROOT, 'dist', 'src', 'client', 'tunnel', 'local-forwarder.js')).href
)) as typeof import('../../src/client/tunnel/local-forwarder.ts');

// ---------------------------------------------------------------- HTTP with keep-alive

/** One keep-alive connection per origin, one request at a time on it. */
const clients = new Map<string, HttpClient>();
function httpClient(origin: string) {
  let c = clients.get(origin);
  if (!c) {
    c = new HttpClient(origin, { pipelining: 1, keepAliveTimeout: 60_000, headersTimeout: 30_000 });
    clients.set(origin, c);
  }
  return c;
}
onCleanup(() => Promise.all([...clients.values()].map((c) => c.destroy())), { beforeStop: true });

async function request(
  origin: string,
  method: Dispatcher.HttpMethod,
  path: string,
  headers: ReqHeaders = {},
  body?: string,
) {
  const r = await httpClient(origin).request({ method, path, headers, body });
  const text = await r.body.text();
  return { status: r.statusCode, headers: r.headers, text };
}

// ---------------------------------------------------------------- the pieces

async function startService(label: string) {
  const port = await freePort();
  await start(`${label} service`, NODE, [SERVICES, 'service', String(port), label], { ready: /ready/ });
  return { port, url: `http://127.0.0.1:${port}` };
}

/** A server agent on ports the OS picks; they are read from its "server agent listening" log line. */
async function startReplica(n: number, baseUrl: string, databaseUrl: string) {
  const proc = await start(
    `replica ${n}`,
    NODE,
    [
      BIN,
      'server',
      '--port',
      '0',
      '--proxy-port',
      '0',
      '--service',
      `billing=${baseUrl}`,
      '--token',
      TOKEN,
      '--database-url',
      databaseUrl,
      '--log-level',
      'info',
    ],
    { ready: /"msg":"server agent listening"[^\n]*\n/, timeoutMs: 30_000 },
  );
  const line = proc
    .output()
    .split('\n')
    .find((l) => l.includes('"msg":"server agent listening"'));
  if (line === undefined) throw new Error(`replica ${n}: no "server agent listening" line`);
  const info = JSON.parse(line) as { serverId: string; controlPort: number; proxyPort: number };
  return {
    n,
    proc,
    serverId: info.serverId,
    control: `http://127.0.0.1:${info.controlPort}`,
    data: `http://127.0.0.1:${info.proxyPort}`,
  };
}

/** The developer's side: one tunnel to replica 1, serving every intercept's streams to the local service. */
async function startClient(control: string, localPort: number) {
  const clientId = `c_${randomBytes(9).toString('base64url')}`;
  const forwarder = new LocalForwarder(
    { service: 'billing', tenant: '(many)', port: localPort, withHeaders: false },
    () => {},
  );
  const tunnel = new TunnelClient({
    server: control,
    token: TOKEN,
    clientId,
    holder: HOLDER,
    onStream: (stream, headers) => forwarder.serve(stream, headers),
  });
  const states: { state: TunnelState; retryInMs?: number; error?: string; at: string }[] = [];
  tunnel.on('state', (state, extra) => {
    states.push({ state, ...extra, at: new Date().toISOString() });
    if (state !== 'connected' && !client.closed)
      log(`  tunnel ${state}${extra.error ? `: ${extra.error}` : ''}`);
  });
  await tunnel.start();
  /** Intercepts that must outlive their lease (the delivery tenant): renewed as the CLI does. */
  const held = new Set<string>();
  const renew = setInterval(
    () => {
      if (held.size) tunnel.send({ type: 'renew', ids: [...held] });
    },
    Math.max(250, Math.floor(tunnel.leaseTtlMs / 3)),
  );
  const auth = { authorization: `Bearer ${TOKEN}` };
  const client = {
    clientId,
    held,
    states,
    /** Sends the create request; resolves with the intercept id (throws unless 201). */
    async create(origin: string, tenant: string): Promise<string> {
      const r = await request(
        origin,
        'POST',
        '/v1/intercepts',
        { ...auth, 'content-type': 'application/json' },
        JSON.stringify({ service: 'billing', tenant, clientId, localPort }),
      );
      if (r.status !== 201) throw new Error(`POST /v1/intercepts (${tenant}): HTTP ${r.status} ${r.text}`);
      return (JSON.parse(r.text) as { id: string }).id;
    },
    async remove(origin: string, id: string) {
      const r = await request(origin, 'DELETE', `/v1/intercepts/${encodeURIComponent(id)}`, auth);
      if (r.status !== 200) throw new Error(`DELETE /v1/intercepts/${id}: HTTP ${r.status} ${r.text}`);
    },
    closed: false,
    async close() {
      if (client.closed) return;
      client.closed = true;
      clearInterval(renew);
      tunnel.close();
      await forwarder.close();
    },
  };
  onCleanup(() => client.close(), { beforeStop: true });
  return client;
}

// ---------------------------------------------------------------- 1. propagation

/**
 * Follows a replica's `GET /v1/events` (server-sent events) and notes when each intercept's
 * `created` and `ended` events arrive: the moment that replica's copy of the table changed,
 * without polling. Only open during the propagation benchmark (it also carries request events).
 */
function watchEvents(replica: Replica) {
  const seen = new Map<string, number>();
  const waiters = new Map<string, (at: number) => void>();
  // Both set by the executor below, which runs at once.
  let resolveLive: () => void = () => {};
  let rejectLive: (err: Error) => void = () => {};
  const live = new Promise<void>((res, rej) => {
    resolveLive = res;
    rejectLive = rej;
  });
  const url = `${replica.control}/v1/events?holder=${encodeURIComponent(HOLDER)}`;
  const req = http.get(url, { headers: { authorization: `Bearer ${TOKEN}` } }, (res) => {
    if (res.statusCode !== 200) {
      rejectLive(new Error(`GET ${url}: HTTP ${res.statusCode}`));
      res.resume();
      return;
    }
    res.setEncoding('utf8');
    let buf = '';
    res.on('data', (c) => {
      const at = performance.now();
      buf += c;
      for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        for (const line of block.split('\n')) {
          if (!line.startsWith('data: ')) continue;
          const ev = JSON.parse(line.slice(6)) as {
            type: string;
            action?: string;
            intercept?: { id: string };
          };
          if (ev.type === 'live') resolveLive();
          if (ev.type !== 'intercept') continue;
          const key = `${ev.action}:${ev.intercept?.id}`;
          if (seen.has(key)) continue;
          seen.set(key, at);
          waiters.get(key)?.(at);
          waiters.delete(key);
        }
      }
    });
  });
  req.on('error', (err) => rejectLive(err));
  return {
    live,
    /** Arrival time of the event, waiting for it up to `timeoutMs` (NaN if it never comes). */
    when(action: string, id: string, timeoutMs = PROBE_LIMIT_MS): Promise<number> {
      const key = `${action}:${id}`;
      const at = seen.get(key);
      if (at !== undefined) return Promise.resolve(at);
      return new Promise<number>((res) => {
        waiters.set(key, res);
        setTimeout(() => res(Number.NaN), timeoutMs).unref();
      });
    },
    close: () => req.destroy(),
  };
}

const PROBE_LIMIT_MS = 10_000;

/**
 * Probes one replica until it answers from `want` (local or base) for the tenant. Returns the
 * time from t0 to the arrival of the first such answer, and to the sending of that probe.
 */
async function probeUntil(origin: string, headers: ReqHeaders, want: string, t0: number): Promise<Probe> {
  let probes = 0;
  let odd = 0;
  let lastOdd: string | undefined;
  for (;;) {
    const sent = performance.now();
    try {
      const r = await request(origin, 'GET', '/', headers);
      probes++;
      const now = performance.now();
      if (r.status === 200 && r.headers['x-served-by'] === want)
        return { ms: now - t0, sentMs: sent - t0, probes, odd, lastOdd };
      if (r.status !== 200) {
        odd++;
        lastOdd = `HTTP ${r.status} ${r.text.slice(0, 300)}`;
      }
    } catch (err) {
      odd++;
      lastOdd = String((err instanceof Error ? err.cause : undefined) ?? err);
      await sleep(10);
    }
    if (performance.now() - t0 > PROBE_LIMIT_MS)
      return { ms: Number.NaN, sentMs: Number.NaN, probes, odd, lastOdd, timedOut: true };
  }
}

async function benchPropagation(replicas: Replica[], client: BenchClient) {
  log(
    `\n== 1. Propagation: ${opts.samples} intercepts created, then deleted, on replica 1; every replica probed until it routes the tenant (one probe in flight per replica)`,
  );
  const r1 = nth(replicas, 0);
  const samples: PropagationSample[] = [];
  const oddities: ({ sample: number; what: Phase; replica: number } & Probe)[] = [];
  const watchers = replicas.map(watchEvents);
  await Promise.all(watchers.map((w) => w.live));
  const eventDelays = (action: string, id: string, t0: number) =>
    Promise.all(watchers.map((w) => w.when(action, id).then((at) => at - t0)));
  for (let n = 1; n <= opts.samples; n++) {
    const tenant = `t${n}-${RUN_ID}`;
    const headers = VIA(tenant);

    let t0 = performance.now();
    const created = client.create(r1.control, tenant).then((id) => ({ id, ms: performance.now() - t0 }));
    const up = await Promise.all(replicas.map((r) => probeUntil(r.data, headers, 'local', t0)));
    const { id, ms: postMs } = await created;
    const createdEvents = await eventDelays('created', id, t0);

    t0 = performance.now();
    const deleted = client.remove(r1.control, id).then(() => performance.now() - t0);
    const down = await Promise.all(replicas.map((r) => probeUntil(r.data, headers, 'base', t0)));
    const deleteMs = await deleted;
    const endedEvents = await eventDelays('ended', id, t0);

    samples.push({ tenant, postMs, deleteMs, create: up, delete: down, createdEvents, endedEvents });
    for (const [what, probes] of [
      ['create', up],
      ['delete', down],
    ] as const)
      probes.forEach((p, i) => {
        if (p.odd || p.timedOut) oddities.push({ sample: n, what, replica: i + 1, ...p });
      });
    if (n % 50 === 0 || n === opts.samples) {
      const all = samples.map((s) => Math.max(...s.create.map((p) => p.ms)));
      log(
        `  ${String(n).padStart(4)} samples: create → all replicas p50 ${fmt(percentile(all, 50), 1)} ms, max ${fmt(Math.max(...all), 1)} ms`,
      );
    }
  }
  for (const w of watchers) w.close();
  if (oddities.length) {
    log(`  ${oddities.length} probe series saw errors or timed out; first: ${JSON.stringify(oddities[0])}`);
  }
  const summarize = (xs: number[]): Summary => {
    const ok = xs.filter(Number.isFinite);
    return {
      n: ok.length,
      failed: xs.length - ok.length,
      p50: percentile(ok, 50),
      p95: percentile(ok, 95),
      p99: percentile(ok, 99),
      max: ok.length ? Math.max(...ok) : Number.NaN,
    };
  };
  const phase = (what: Phase) => ({
    // A replica that never routed makes the sample's "all replicas" figure NaN: counted as failed.
    all: summarize(samples.map((s) => Math.max(...s[what].map((p) => p.ms)))),
    replicas: replicas.map((_, i) => summarize(samples.map((s) => nth(s[what], i).ms))),
    replicasSent: replicas.map((_, i) => summarize(samples.map((s) => nth(s[what], i).sentMs))),
    events: replicas.map((_, i) =>
      summarize(samples.map((s) => nth(what === 'create' ? s.createdEvents : s.endedEvents, i))),
    ),
    api: summarize(samples.map((s) => (what === 'create' ? s.postMs : s.deleteMs))),
    probes: median(samples.flatMap((s) => s[what].map((p) => p.probes))),
  });
  const stats = { create: phase('create'), delete: phase('delete') };
  return { ...stats, oddities, samples };
}

// ---------------------------------------------------------------- 2. delivery

/** `count` sequential requests on one keep-alive connection; latencies in ms, and wrong answers. */
async function sequential(origin: string, headers: ReqHeaders, count: number) {
  const lat = new Array<number>(count);
  let wrong = 0;
  let lastWrong: string | undefined;
  for (let i = 0; i < count; i++) {
    const t = performance.now();
    const r = await request(origin, 'GET', '/', headers);
    lat[i] = performance.now() - t;
    if (r.status !== 200 || r.headers['x-served-by'] !== 'local') {
      wrong++;
      lastWrong = `HTTP ${r.status} served by ${r.headers['x-served-by']}: ${r.text.slice(0, 300)}`;
    }
  }
  return { lat, wrong, lastWrong };
}

async function benchDelivery(replicas: Replica[], client: BenchClient, local: Service): Promise<Delivery> {
  const r1 = nth(replicas, 0);
  const r2 = nth(replicas, 1);
  const tenant = `d-${RUN_ID}`;
  const headers = VIA(tenant);
  const id = await client.create(r1.control, tenant);
  client.held.add(id);
  for (const r of replicas)
    await waitHttp(
      `${r.data}/`,
      headers,
      (x: HttpAnswer) => x.status === 200 && x.headers.get('x-served-by') === 'local',
      `replica ${r.n} for tenant ${tenant}`,
    );
  const targets: [Target, Target, Target] = [
    { key: 'same', label: '(a) replica 1, where the tunnel is', origin: r1.data, headers },
    { key: 'cross', label: '(b) replica 2 → relay hop → replica 1', origin: r2.data, headers },
    { key: 'direct', label: '(c) local service direct (floor)', origin: local.url, headers: {} },
  ];

  log(
    `\n== 2a. Delivery latency: sequential keep-alive requests, ${opts.warmup} warm-up + ${opts.requests} timed per path, ${opts.rounds} rounds (median)`,
  );
  const seq = Object.fromEntries(targets.map((t) => [t.key, [] as SeqRow[]])) as Record<PathKey, SeqRow[]>;
  for (let round = 1; round <= opts.rounds; round++) {
    // Alternate the order so drift on a shared machine does not always favour the same path.
    const order = round % 2 ? targets : [targets[1], targets[0], targets[2]];
    for (const t of order) {
      await sequential(t.origin, t.headers, opts.warmup);
      const r = await sequential(t.origin, t.headers, opts.requests);
      const row: SeqRow = {
        p50: percentile(r.lat, 50),
        p90: percentile(r.lat, 90),
        p99: percentile(r.lat, 99),
        max: Math.max(...r.lat),
        wrong: r.wrong,
        lastWrong: r.lastWrong,
      };
      seq[t.key].push(row);
      log(
        `  round ${round} ${t.label.padEnd(40)} p50 ${fmt(row.p50, 3)} ms  p99 ${fmt(row.p99, 3)} ms${r.wrong ? `  ${r.wrong} wrong answers, last: ${r.lastWrong}` : ''}`,
      );
    }
  }

  let thr: (Partial<Record<PathKey, WrkRow[]>> & { same: WrkRow[]; cross: WrkRow[] }) | undefined;
  if (ensureTools(['wrk'], { required: false }).length === 0) {
    log(
      `\n== 2b. Delivery throughput: wrk -t1 -c${opts.conns}, 1 s warm-up + ${opts.duration} s, (a) vs (b), ${opts.rounds} rounds (median)`,
    );
    thr = { same: [], cross: [] };
    for (let round = 1; round <= opts.rounds; round++) {
      const order = round % 2 ? targets.slice(0, 2) : [targets[1], targets[0]];
      for (const t of order) {
        const url = `${t.origin}/`;
        await wrk(url, { conns: opts.conns, seconds: 1, headers: t.headers });
        const w = await wrk(url, {
          conns: opts.conns,
          seconds: opts.duration,
          headers: t.headers,
        });
        thr[t.key]?.push({ rps: w.rps, p50: w.p50, p99: w.p99, errors: w.errors });
        log(
          `  round ${round} ${t.label.padEnd(40)} ${fmt(w.rps, 0).padStart(7)} req/s  p50 ${fmt(w.p50, 2)} ms  p99 ${fmt(w.p99, 2)} ms${w.errors ? `  socket errors ${w.errors}` : ''}`,
        );
      }
    }
    // Still the local service's answer after the load, not a fallback to base.
    for (const t of targets.slice(0, 2)) {
      const r = await request(t.origin, 'GET', '/', t.headers);
      if (r.headers['x-served-by'] !== 'local')
        throw new Error(`after wrk, ${t.label} answered from ${r.headers['x-served-by']} (HTTP ${r.status})`);
    }
  } else {
    log('\n== 2b. skipped: wrk is not installed (apt-get install -y wrk)');
  }
  client.held.delete(id);
  await client.remove(r1.control, id);

  const med = <K extends string>(rows: Record<K, number>[], k: K) => median(rows.map((x) => x[k]));
  const path = (t: Target) => {
    const p: DeliveryPath = {
      label: t.label,
      p50: med(seq[t.key], 'p50'),
      p99: med(seq[t.key], 'p99'),
      wrong: seq[t.key].reduce((a, x) => a + x.wrong, 0),
      rounds: seq[t.key],
    };
    const w = thr?.[t.key];
    if (w) {
      p.rps = med(w, 'rps');
      p.wrkP99 = med(w, 'p99');
      p.wrkRounds = w;
    }
    return p;
  };
  const out: Delivery = {
    same: path(targets[0]),
    cross: path(targets[1]),
    direct: path(targets[2]),
    // Added latency per round (b − a of that round), then the median of those.
    addedP50: median(seq.cross.map((x, i) => x.p50 - nth(seq.same, i).p50)),
    addedP99: median(seq.cross.map((x, i) => x.p99 - nth(seq.same, i).p99)),
  };
  if (thr) {
    const { same } = thr;
    out.rpsRatio = median(thr.cross.map((x, i) => x.rps / nth(same, i).rps));
  }
  return out;
}

// ---------------------------------------------------------------- 3. Kafka floor

function kafkaCli(args: string[], timeout = 60_000) {
  return spawnSync(KAFKA, args, { cwd: ROOT, encoding: 'utf8', timeout });
}

async function benchKafka() {
  log(
    `\n== 3. Kafka floor: kafkajs producer → consumer one-way latency, ${opts.messages} sequential messages per consumer setting, one local broker`,
  );
  const wasRunning = kafkaCli(['status']).status === 0;
  if (!wasRunning) {
    log('  starting the broker (scripts/kafka start; the first run fetches jars from Maven Central)…');
    onCleanup(() => {
      log('stopping the Kafka broker this run started (scripts/kafka stop)');
      kafkaCli(['stop']);
    });
    const r = kafkaCli(['start'], 300_000);
    if (r.status !== 0)
      throw new Error(`scripts/kafka start failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  } else log('  the broker was already running: it stays running');
  const topic = `kelsingra-bench-${RUN_ID}`;
  const created = kafkaCli(['topics', 'create', topic, '1']);
  if (created.status !== 0)
    throw new Error(`scripts/kafka topics create failed:\n${created.stdout}\n${created.stderr}`);

  const { default: kafkajs } = await import('kafkajs');
  const { Kafka, logLevel, Partitioners } = kafkajs;
  const kafka = new Kafka({
    clientId: 'kelsingra-bench',
    brokers: ['127.0.0.1:9092'],
    logLevel: logLevel.NOTHING,
  });
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  const out: KafkaFloor = {};
  let seq = 0;
  try {
    for (const maxWait of ['default', 10] as const) {
      const consumer = kafka.consumer({
        groupId: `kelsingra-bench-${RUN_ID}-${maxWait}`,
        ...(maxWait === 'default' ? {} : { maxWaitTimeInMs: maxWait }),
      });
      /** Message value → resolve with its arrival time. */
      const waiting = new Map<string, (at: number) => void>();
      const joinStart = performance.now();
      await consumer.connect();
      await consumer.subscribe({ topic, fromBeginning: false });
      await consumer.run({
        eachMessage: async ({ message }) => {
          const at = performance.now();
          const key = String(message.value);
          waiting.get(key)?.(at);
          waiting.delete(key);
        },
      });
      const roundTrip = async (value: string, timeoutMs: number) => {
        const arrived = new Promise<number>((res) => {
          waiting.set(value, res);
          setTimeout(() => res(Number.NaN), timeoutMs).unref();
        });
        const t0 = performance.now();
        await producer.send({ topic, messages: [{ value }] });
        const acked = performance.now() - t0;
        const at = await arrived;
        waiting.delete(value);
        return { ms: at - t0, acked };
      };
      // The group join and the offset lookup take a while: send until a message comes through.
      // How long that takes is what a relay with a topic per service and tenant would pay each
      // time an intercept starts (here the topic already exists).
      const readyBy = Date.now() + 60_000;
      while (!Number.isFinite((await roundTrip(`ready-${seq++}`, 100)).ms)) {
        if (Date.now() > readyBy)
          throw new Error(`kafka consumer (maxWaitTimeInMs ${maxWait}) never received`);
      }
      const joinMs = performance.now() - joinStart;
      for (let i = 0; i < 100; i++) await roundTrip(`warm-${seq++}`, 10_000);
      const lat: number[] = [];
      const acks: number[] = [];
      let lost = 0;
      // A budget, so a setting that waits out its full fetch window cannot blow the run's time.
      const budget = Date.now() + 60_000;
      for (let i = 0; i < opts.messages && Date.now() < budget; i++) {
        const r = await roundTrip(`m-${seq++}`, 10_000);
        if (Number.isFinite(r.ms)) lat.push(r.ms);
        else lost++;
        acks.push(r.acked);
      }
      await consumer.disconnect();
      const row: KafkaRow = {
        maxWait,
        n: lat.length,
        lost,
        p50: percentile(lat, 50),
        p99: percentile(lat, 99),
        max: lat.length ? Math.max(...lat) : Number.NaN,
        ackP50: percentile(acks, 50),
        joinMs,
      };
      out[maxWait] = row;
      log(
        `  maxWaitTimeInMs ${String(maxWait).padEnd(7)} ${row.n} messages: p50 ${fmt(row.p50, 2)} ms  p99 ${fmt(row.p99, 2)} ms  max ${fmt(row.max, 1)} ms  (producer ack p50 ${fmt(row.ackP50, 2)} ms; new consumer → first message ${fmt(joinMs, 0)} ms)${lost ? `  ${lost} not received in 10 s` : ''}`,
      );
    }
  } finally {
    await producer.disconnect().catch(() => undefined);
    kafkaCli(['topics', 'delete', topic]);
  }
  out.brokerWasRunning = wasRunning;
  return out;
}

// ---------------------------------------------------------------- report

const ok = (pass: boolean) => (pass ? 'met' : 'MISSED');

function report(results: Results) {
  const p = results.propagation;
  const goals = [['Goal', 'Figure', 'Target', 'Result']];
  if (p) {
    for (const what of ['create', 'delete'] as const) {
      log(
        `\nPropagation of a ${what === 'create' ? 'new intercept' : 'deletion'} (${opts.samples} samples, ms from just before the ${what === 'create' ? 'POST' : 'DELETE'} to the first probe answer from ${what === 'create' ? 'local' : 'base'}):`,
      );
      const s = p[what];
      const row = (label: string, x: Summary) => [
        label,
        fmt(x.p50, 1),
        fmt(x.p95, 1),
        fmt(x.p99, 1),
        fmt(x.max, 1),
        x.failed ? `${x.failed} never` : '',
      ];
      log(
        table([
          ['Until', 'p50', 'p95', 'p99', 'max', ''],
          row('every replica routes', s.all),
          ...s.replicas.map((x, i) => row(`replica ${i + 1} routes${i === 0 ? ' (changed there)' : ''}`, x)),
          ...s.events.map((x, i) => row(`replica ${i + 1}'s copy changed (event seen)`, x)),
          row(`${what === 'create' ? 'POST' : 'DELETE'} answered (replica 1)`, s.api),
        ]),
      );
      log(`  (median ${s.probes} probes per replica per sample)`);
    }
    goals.push([
      'propagation p99, every replica routes a new intercept (ms)',
      fmt(p.create.all.p99, 1),
      '≤ 200',
      ok(p.create.all.p99 <= 200 && p.create.all.failed === 0),
    ]);
  }
  const d = results.delivery;
  if (d) {
    log(`\nDelivery (sequential keep-alive requests, medians of ${opts.rounds} rounds):`);
    log(
      table([
        ['Path', 'p50 (ms)', 'p99 (ms)', `req/s @${opts.conns} (wrk -t1)`, 'wrong answers'],
        ...(['direct', 'same', 'cross'] as const).map((k) => [
          d[k].label,
          fmt(d[k].p50, 3),
          fmt(d[k].p99, 3),
          k === 'direct' ? '—' : fmt(d[k].rps, 0),
          d[k].wrong,
        ]),
        [
          'added by the relay hop, (b) − (a)',
          fmt(d.addedP50, 3),
          fmt(d.addedP99, 3),
          d.rpsRatio === undefined ? 'n/a' : `(b)/(a) = ${fmt(d.rpsRatio, 2)}`,
          '',
        ],
      ]),
    );
    goals.push(['cross-replica p50 added, (b) − (a) (ms)', fmt(d.addedP50, 3), '≤ 2', ok(d.addedP50 <= 2)]);
  }
  const k = results.kafka;
  if (k) {
    log(`\nKafka one-way floor (kafkajs, 1 partition, local broker, one message at a time):`);
    log(
      table([
        [
          'Consumer maxWaitTimeInMs',
          'p50 (ms)',
          'p99 (ms)',
          'max (ms)',
          'producer ack p50 (ms)',
          'req/resp ≈ 2 × p50',
          'new consumer → first message (ms)',
        ],
        ...(['default', 10] as const).map((w) => {
          const x = k[w];
          if (!x) throw new Error(`no Kafka row for maxWaitTimeInMs ${w}`);
          return [
            w === 'default' ? 'default (5000)' : String(w),
            fmt(x.p50, 2),
            fmt(x.p99, 2),
            fmt(x.max, 1),
            fmt(x.ackP50, 2),
            fmt(2 * x.p50, 2),
            fmt(x.joinMs, 0),
          ];
        }),
      ]),
    );
  }
  log(
    `\nSummary (${REPLICAS} replicas, ${os.cpus().length} cores, ${os.cpus()[0]?.model ?? 'unknown CPU'}, Node ${process.versions.node}; load average at start ${results.loadStart}, at end ${os.loadavg()[0]?.toFixed(2)}):`,
  );
  log(table(goals));
}

// ---------------------------------------------------------------- main

const results: Results = { opts, replicas: REPLICAS, ...machineInfo() };
let exitCode = 0;
try {
  const t0 = Date.now();
  log(
    `Kelsingra replicas benchmark: ${REPLICAS} replicas on PostgreSQL (${os.cpus().length} cores, Node ${process.versions.node})`,
  );
  const db = await createDatabase(`kelsingra_bench_${RUN_ID}`);
  log(`  database ${db.name}`);
  const base = await startService('base');
  const local = await startService('local');
  const replicas: Replica[] = [];
  // One after the other: the first one creates the tables.
  for (let n = 1; n <= REPLICAS; n++) replicas.push(await startReplica(n, base.url, db.url));
  for (const r of replicas)
    log(`  replica ${r.n} ${r.serverId}: control ${r.control}, data ${r.data}, pid ${r.proc.pid}`);
  const client = await startClient(nth(replicas, 0).control, local.port);
  log(`  tunnel open on replica 1 (client ${client.clientId})`);

  // Warm-up: every replica knows its peers and relays to replica 1 before anything is timed.
  const warm = `warm-${RUN_ID}`;
  const warmId = await client.create(nth(replicas, 0).control, warm);
  for (const r of replicas)
    await waitHttp(
      `${r.data}/`,
      VIA(warm),
      (x: HttpAnswer) => x.status === 200 && x.headers.get('x-served-by') === 'local',
      `replica ${r.n} (warm-up tenant)`,
    );
  await client.remove(nth(replicas, 0).control, warmId);

  results.propagation = await benchPropagation(replicas, client);
  results.delivery = await benchDelivery(replicas, client, local);
  results.tunnelStates = client.states;
  await client.close();
  await stopAll();
  if (!opts['skip-kafka']) results.kafka = await benchKafka();
  results.seconds = (Date.now() - t0) / 1000;
  report(results);
  log(`\n(${fmt(results.seconds, 0)} s)`);
  if (opts.json) writeFileSync(opts.json, `${JSON.stringify(results, null, 2)}\n`);
} catch (err) {
  exitCode = reportFailure(err);
}
await cleanupAndExit(exitCode);
