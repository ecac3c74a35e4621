#!/usr/bin/env node
/**
 * Kelsingra at scale (see docs/BENCHMARKS.md, "Scale"): 100 services × 10 000 tenants with
 * 50 000 intercepts and tenant routes covering another 50 000 (service, tenant) pairs.
 *
 *   npm run bench:scale
 *   node scripts/bench/scale.ts --rounds 1 --lookup-rounds 3 --duration 3 --json scale.json
 *   node scripts/bench/scale.ts --skip-server        # the in-process lookup only (no PostgreSQL)
 *
 * Measures, in one run:
 *
 *   1. Route lookup, in process, from the built modules (dist/server): a MemoryInterceptStore
 *      holding the intercepts (created through its own create(), lease of a day) and the tenant
 *      routes (through its setRoute()). A full routing decision, as the data plane's `decide`
 *      makes it — store.find(service, key), then store.findRoute(service, key), else the
 *      base — is timed over a random mix of keys (intercept hits, route hits, misses), against
 *      a plain Map.get of a precomputed string key over the same key sequence in the same loop
 *      shape, in the same run. Each loop is its own compiled function (new Function), warmed
 *      up, then timed over every sample once per round; rounds interleave; medians are
 *      reported. Every loop counts its hits, and the counts must match the data set (so
 *      nothing is optimised away and every lookup is right). Two shapes: independent lookups,
 *      and chained ones (the next index depends on data read from the previous answer, so
 *      lookups cannot overlap, as between two requests). A variant gives every sample a
 *      fresh tenant string (no cached hash, as a request's header value has none).
 *   2. The server agent, as `bin/run.js server --config … --database-url …` processes (100
 *      services on one nginx upstream): a fresh PostgreSQL database is migrated (the server's
 *      own migrations, from dist), the 50 000 intercepts (expiring in a day, random client keys,
 *      no tunnel) and the routes (a few hundred rows naming hundreds of tenants each) are
 *      inserted with SQL, and a second database is left empty. The loaded one is also opened
 *      in this process with PgInterceptStore: load time, heap, lookups, and the cost of the
 *      periodic full and incremental reconciliations. Then one server agent per database, same config:
 *      start-up time, a sample of data-port requests checked (intercepted tenants answer 502
 *      tunnel-disconnected, routed tenants reach the route target, others the base), GET
 *      /v1/routes counted once, RSS after a settling pause, pass-through req/s with wrk -t1
 *      (Lua script cycling over 1000 (service, tenant) pairs: a "miss" mix that hits neither
 *      an intercept nor a route, and a "route" mix) against the loaded and the empty server,
 *      alternating, rounds interleaved, medians; server CPU per request; idle CPU; peak RSS.
 *
 * Options: --services N (100), --tenants N (10000), --intercepts N (50000), --routed N (50000
 * pairs), --routes-per-service N (2), --samples N (524288 lookups per round), --lookup-rounds
 * N (5), --rounds N (5, wrk), --duration S (5), --warmup S (2), --conns N (50), --settle S (5),
 * --idle S (15), --seed N, --skip-server, --profile DIR (server agents run with --cpu-prof),
 * --json FILE (raw results). PostgreSQL: postgres://postgres@127.0.0.1:5432/postgres, or
 * KELSINGRA_BENCH_PG; databases kelsingra_bench_scale_<random>[_empty] are created and dropped.
 * Every process is stopped on exit, Ctrl-C or failure.
 *
 * Over 400 lines on purpose: its three parts (lookups in process, a PostgreSQL reload, server
 * agents under load) share the data set it generates and the report that compares them.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import v8 from 'node:v8';
import vm from 'node:vm';
import pg from 'pg';
import type { Route } from '../../server/routing/route-table.ts';
import type { Intercept, InterceptStore } from '../../server/store/intercept-store.ts';
import type { WrkResult } from './lib.ts';
import {
  children,
  cleanupAndExit,
  createDatabase,
  ensureTools,
  fmt,
  freePort,
  log,
  machineInfo,
  median,
  memOf,
  onCleanup,
  parseOptions,
  ROOT,
  reportFailure,
  requireBuild,
  sleep,
  smallBodyServer,
  start,
  startNginx,
  stopAll,
  table,
  wrk,
} from './lib.ts';

const BIN = join(ROOT, 'bin', 'run.js');
const NODE = process.execPath;
const RUN_ID = randomBytes(4).toString('hex');
const TOKEN = `bench-${randomBytes(8).toString('hex')}`;

type WrkRun = WrkResult & { cpuUsPerReq: number };
interface WrkSummary {
  rps: number;
  p50: number;
  p99: number;
  cpuUsPerReq: number;
  rounds: WrkRun[];
}
type Shape = 'independent' | 'chained';
type Side = 'loaded' | 'empty';
type Mix = 'miss' | 'route';
type MemInfo = ReturnType<typeof memOf>;
type Db = Awaited<ReturnType<typeof createDatabase>>;
/** The lookups the routing decision makes. */
type LookupStore = Pick<InterceptStore, 'find' | 'findRoute'>;
/** One timed loop: `run` returns its hit count, which must be `hits`; `n` lookups per run. */
interface Loop {
  prepare?: () => void;
  run: () => number;
  hits: number;
  n: number;
}
/** ns per lookup of one loop over the rounds. */
interface LoopNs {
  median: number;
  min: number;
  cpuMedian: number;
  wall: number[];
  cpu: number[];
}
type DataSet = ReturnType<typeof makeDataSet>;
type Sample = ReturnType<typeof samplesOf>;
type PlainMap = ReturnType<typeof plainMapOf>;
type Lookup = Awaited<ReturnType<typeof benchLookup>>;
type PgStoreResult = Awaited<ReturnType<typeof benchPgStore>>;
type Server = Awaited<ReturnType<typeof startServer>>;
type Check = Awaited<ReturnType<typeof checkSample>>;
interface ServerResult {
  loadSqlMs: number;
  loaded: { intercepts: number; routes: number };
  pgStore: PgStoreResult;
  check: Record<Side, Check>;
  idleMem: Record<Side, MemInfo>;
  afterLoadMem: Record<Side, MemInfo>;
  idleCpuPct: Record<Side, number>;
  endMem: Record<Side, MemInfo>;
  start: Record<Side, { ms: number; cpuS: number }>;
  wrk: Record<Side, Record<Mix, WrkSummary>>;
}
type LoadSummary = ReturnType<ReturnType<typeof sampleLoad>['stop']>;
type Results = ReturnType<typeof machineInfo> & {
  opts: typeof opts;
  lookup?: Omit<Lookup, 'samples'> & { samples?: undefined };
  server?: ServerResult;
  seconds?: number;
  machineLoad?: LoadSummary;
};

/** xs[i], where the caller knows there is one (an index into the data set, a field of /proc). */
function nth<T>(xs: ArrayLike<T>, i: number): T {
  const x = xs[i];
  if (x === undefined) throw new Error(`no element ${i} in a list of ${xs.length}`);
  return x;
}

/** r[k], where the caller knows it is set (a loop this run timed). */
function get<V>(r: Record<string, V>, k: string): V {
  const v = r[k];
  if (v === undefined) throw new Error(`nothing under ${k}`);
  return v;
}

// ---------------------------------------------------------------- options

const opts = parseOptions(
  process.argv.slice(2),
  {
    services: 100,
    tenants: 10_000,
    intercepts: 50_000,
    routed: 50_000,
    'routes-per-service': 2,
    samples: 1 << 19,
    'lookup-rounds': 5,
    rounds: 5,
    duration: 5,
    warmup: 2,
    conns: 50,
    settle: 5,
    idle: 15,
    seed: 4,
    'skip-server': false,
    profile: '',
    json: '',
  },
  'scale.ts [--services N] [--tenants N] [--intercepts N] [--routed N] [--routes-per-service N] [--samples N] [--lookup-rounds N] [--rounds N] [--duration S] [--warmup S] [--conns N] [--settle S] [--idle S] [--seed N] [--skip-server] [--profile DIR] [--json FILE]',
);
if (opts.intercepts + opts.routed > opts.services * opts.tenants) {
  console.error('--intercepts + --routed must not exceed --services × --tenants');
  process.exit(2);
}
if (opts.profile) {
  opts.profile = resolve(opts.profile);
  mkdirSync(opts.profile, { recursive: true });
}

requireBuild('npm run bench:scale', [
  'commands/server.js',
  'server/store/memory-store.js',
  'server/store/pg-store.js',
]);

/** A built module from dist/, typed by its source (`M`: `typeof import()` of the .ts file). */
const dist = <M>(p: string) => import(pathToFileURL(join(ROOT, 'dist', p)).href) as Promise<M>;
const { MemoryInterceptStore } = await dist<typeof import('../../server/store/memory-store.ts')>(
  'server/store/memory-store.js',
);
const { PgInterceptStore } =
  await dist<typeof import('../../server/store/pg-store.ts')>('server/store/pg-store.js');
const { migrate } = await dist<typeof import('../../server/store/pg-migrations.ts')>(
  'server/store/pg-migrations.js',
);
const { routeIdOf } = await dist<typeof import('../../server/routing/route-table.ts')>(
  'server/routing/route-table.js',
);
/** The baseline's key: one string per (service, tenant), as a single flat Map would need. */
const interceptKey = (service: string, tenant: string) => `${service}\u0000${tenant}`;
const { createLogger } = await dist<typeof import('../../server/observability/logger.ts')>(
  'server/observability/logger.js',
);

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;
/** Heap in use after two full collections, in MiB. */
function heapMiB() {
  gc();
  gc();
  return process.memoryUsage().heapUsed / 2 ** 20;
}

const WORK = mkdtempSync(join(os.tmpdir(), 'kelsingra-bench-scale-'));
chmodSync(WORK, 0o755); // nginx workers drop to an unprivileged user
onCleanup(() => rmSync(WORK, { recursive: true, force: true }));

// ---------------------------------------------------------------- the data set

/** A small seeded generator (mulberry32), so every run loads the same table. */
function rng(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const MISS = 0;
const INTERCEPT = 1;
const ROUTE = 2;

/**
 * Services svc-000…, tenants tenant-0000…; `intercepts` random (service, tenant) pairs are
 * intercepted, another `routed` pairs are in tenant routes: per service, its routed tenants are
 * split into `routes-per-service` routes (versions v2, v3, …), each a few hundred tenants.
 */
function makeDataSet() {
  const random = rng(opts.seed);
  const pad = (n: number, w: number) => String(n).padStart(w, '0');
  const services = Array.from({ length: opts.services }, (_, i) => `svc-${pad(i, 3)}`);
  const tw = String(opts.tenants - 1).length;
  const tenants = Array.from({ length: opts.tenants }, (_, i) => `tenant-${pad(i, tw)}`);
  const total = opts.services * opts.tenants;
  const order = new Int32Array(total);
  for (let i = 0; i < total; i++) order[i] = i;
  const picked = opts.intercepts + opts.routed;
  for (let i = 0; i < picked; i++) {
    const j = i + Math.floor(random() * (total - i));
    const t = nth(order, i);
    order[i] = nth(order, j);
    order[j] = t;
  }
  const kind = new Uint8Array(total);
  const byKind: number[][] = [[], [], []];
  for (let i = 0; i < picked; i++) {
    const pair = nth(order, i);
    kind[pair] = i < opts.intercepts ? INTERCEPT : ROUTE;
  }
  for (let pair = 0; pair < total; pair++) if (kind[pair] !== MISS) nth(byKind, nth(kind, pair)).push(pair);
  const perService = opts['routes-per-service'];
  const routeGroups = services.map(() => Array.from({ length: perService }, (): number[] => []));
  let n = 0;
  for (const pair of nth(byKind, ROUTE))
    nth(nth(routeGroups, Math.floor(pair / opts.tenants)), n++ % perService).push(pair);
  /** Route rows for targets `base`/v2, `base`/v3…: { service, tenants, targets }. */
  const routes = (base: string) =>
    routeGroups.flatMap((groups, s) =>
      groups
        .filter((g) => g.length > 0)
        .map((g, v) => ({
          service: nth(services, s),
          tenants: g.map((pair) => nth(tenants, pair % opts.tenants)),
          targets: [`${base}/v${v + 2}`],
        })),
    );
  const missPair = () => {
    for (;;) {
      const pair = Math.floor(random() * total);
      if (kind[pair] === MISS) return pair;
    }
  };
  const pick = (k: number) => {
    const pairs = nth(byKind, k);
    return k === MISS ? missPair() : nth(pairs, Math.floor(random() * pairs.length));
  };
  return {
    services,
    tenants,
    kind,
    intercepted: nth(byKind, INTERCEPT),
    routes,
    random,
    pick,
    serviceOf: (pair: number) => nth(services, Math.floor(pair / opts.tenants)),
    tenantOf: (pair: number) => nth(tenants, pair % opts.tenants),
  };
}

// ---------------------------------------------------------------- 1. in-process lookup

/** The mix of the headline figure: a quarter intercept hits, a quarter route hits, half misses. */
const MIX: [number, number][] = [
  [INTERCEPT, 0.25],
  [ROUTE, 0.25],
  [MISS, 0.5],
];

function samplesOf(ds: DataSet, n: number, mix: [number, number][]) {
  const services = new Array<string>(n);
  const tenants = new Array<string>(n);
  const pairs = new Int32Array(n);
  let hits = 0;
  for (let i = 0; i < n; i++) {
    let r = ds.random();
    let k = MISS;
    for (const [kind, w] of mix) {
      if (r < w) {
        k = kind;
        break;
      }
      r -= w;
    }
    const pair = ds.pick(k);
    pairs[i] = pair;
    services[i] = ds.serviceOf(pair);
    tenants[i] = ds.tenantOf(pair);
    if (k !== MISS) hits++;
  }
  // The chained loops read the sample the previous answer points to: (i + x) % n, where x
  // comes from the answer and is always 0 (so every loop visits the same samples), but the CPU
  // cannot know that before the previous lookup has finished.
  return { services, tenants, pairs, hits, n };
}

// Each loop is compiled on its own (new Function), so no two share type feedback; all have the
// same shape: one lookup per sample, a miss falls back to BASE, hits are counted. In the
// "chained" shape the next sample's index depends on data read from the previous answer (its
// service name's length, masked to 0), so one lookup's memory reads cannot overlap the next
// one's, as they cannot between two requests; in the independent shape the CPU may run
// several lookups' reads at once.
const LOOP_SRC = (pick: string, lookup: string) => `
  let hits = 0;
  let x = 0;
  for (let i = 0; i < n; i++) {
    const j = ${pick};
    ${lookup}
    x = r.service.length & 0x40000000;
    if (r !== BASE) hits++;
  }
  return hits;`;
const PICK: Record<Shape, string> = { independent: 'i', chained: '(i + x) % n' };
const PLAIN = 'const r = map.get(keys[j]) ?? BASE;';
const DECIDE = `const s = services[j];
    const t = tenants[j];
    const r = store.find(s, t) ?? store.findRoute(s, t) ?? BASE;`;
/** The base service's decision: a miss. Has a `service` as intercepts and routes do. */
const BASE = Object.freeze({ kind: 'base', service: 'base' });

function plainLoop(map: Map<string, Intercept | Route>, keys: string[], shape: Shape) {
  const fn = new Function('map', 'keys', 'n', 'BASE', LOOP_SRC(PICK[shape], PLAIN));
  return (): number => fn(map, keys, keys.length, BASE);
}

function decideLoop(store: LookupStore, services: string[], tenants: () => string[], shape: Shape) {
  const fn = new Function('store', 'services', 'tenants', 'n', 'BASE', LOOP_SRC(PICK[shape], DECIDE));
  return (): number => fn(store, services, tenants(), services.length, BASE);
}

/** A fresh string equal to `t`, whose hash V8 has not computed yet. */
const freshCopy = (t: string) => `${t} `.slice(0, -1);

/**
 * Times each loop over all its samples once per round, after `warm` untimed rounds; rounds
 * interleave the loops. Returns ns per lookup (median, min) per loop.
 */
async function timeLoops(
  loops: Record<string, Loop>,
  rounds: number,
  warm = 2,
): Promise<Record<string, LoopNs>> {
  const ns = Object.fromEntries(
    Object.keys(loops).map((k) => [k, { wall: [] as number[], cpu: [] as number[] }]),
  );
  for (let round = -warm; round < rounds; round++) {
    for (const [name, l] of Object.entries(loops)) {
      l.prepare?.();
      const c0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      const hits = l.run();
      const elapsed = Number(process.hrtime.bigint() - t0);
      const cpu = process.cpuUsage(c0);
      if (hits !== l.hits) throw new Error(`${name}: ${hits} hits, expected ${l.hits}: a lookup is wrong`);
      if (round >= 0) {
        get(ns, name).wall.push(elapsed / l.n);
        get(ns, name).cpu.push(((cpu.user + cpu.system) * 1000) / l.n);
      }
    }
    await sleep(0); // let timers (the memory store's lease sweep) run between rounds, not inside them
  }
  // Wall time is the figure; CPU time of this process (all its threads, so GC helpers too)
  // shows how much of it was this work rather than waiting for a core on a shared machine.
  return Object.fromEntries(
    Object.entries(ns).map(([k, v]) => [
      k,
      {
        median: median(v.wall),
        min: Math.min(...v.wall),
        cpuMedian: median(v.cpu),
        wall: v.wall,
        cpu: v.cpu,
      },
    ]),
  );
}

/** The plain Map the baseline reads: the same pairs, each under one precomputed string key. */
function plainMapOf(ds: DataSet, store: LookupStore) {
  const map = new Map<string, Intercept | Route>();
  const keyOf = new Map<number, string>();
  for (let pair = 0; pair < ds.kind.length; pair++) {
    if (ds.kind[pair] === MISS) continue;
    const s = ds.serviceOf(pair);
    const t = ds.tenantOf(pair);
    const value = store.find(s, t) ?? store.findRoute(s, t);
    if (!value) throw new Error(`the store lost ${s}/${t}`);
    const key = interceptKey(s, t);
    map.set(key, value);
    keyOf.set(pair, key);
  }
  const keysFor = (sample: Sample) =>
    Array.from(sample.pairs, (pair) => {
      let key = keyOf.get(pair);
      if (key === undefined) {
        key = interceptKey(ds.serviceOf(pair), ds.tenantOf(pair));
        keyOf.set(pair, key);
      }
      return key;
    });
  return { map, keysFor };
}

/** One line per shape: the baseline, the decision (and with fresh tenant strings), ratios. */
function logLoops(res: Record<string, LoopNs>, label: string, shapes: Shape[]) {
  const one = (x: LoopNs) => `${fmt(x.median, 1).padStart(6)} ns (CPU ${fmt(x.cpuMedian, 0)})`;
  for (const shape of shapes) {
    const p = get(res, `${label}:${shape}:plain`);
    const d = get(res, `${label}:${shape}:decide`);
    const f = res[`${label}:${shape}:fresh`];
    log(
      `  ${label.padEnd(9)} ${shape.padEnd(11)} plain Map.get ${one(p)}   decision ${one(d)} × ${fmt(d.median / p.median, 2)}${f === undefined ? '' : `   fresh tenant strings ${one(f)} × ${fmt(f.median / p.median, 2)}`}`,
    );
  }
}

/**
 * The loops of one measurement: the baseline and the decision over `store`, on the same
 * samples, in each shape asked for (names `<label>:<shape>:plain|decide|fresh`).
 */
function loopsFor(
  label: string,
  store: LookupStore,
  plain: PlainMap,
  sample: Sample,
  { fresh = false, shapes = ['independent'] }: { fresh?: boolean; shapes?: Shape[] } = {},
) {
  const keys = plain.keysFor(sample);
  const loops: Record<string, Loop> = {};
  for (const shape of shapes) {
    const hits = sample.hits;
    const name = `${label}:${shape}`;
    loops[`${name}:plain`] = { run: plainLoop(plain.map, keys, shape), hits, n: sample.n };
    loops[`${name}:decide`] = {
      run: decideLoop(store, sample.services, () => sample.tenants, shape),
      hits,
      n: sample.n,
    };
    if (fresh) {
      let freshTenants = sample.tenants;
      loops[`${name}:fresh`] = {
        prepare: () => {
          freshTenants = sample.tenants.map(freshCopy);
        },
        run: decideLoop(store, sample.services, () => freshTenants, shape),
        hits,
        n: sample.n,
      };
    }
  }
  return loops;
}

async function benchLookup(ds: DataSet) {
  log(
    `\n== 1. Route lookup in process: ${opts.services} services × ${opts.tenants} tenants, ${opts.intercepts} intercepts (MemoryInterceptStore), ${opts.routed} routed pairs; ${opts.samples} lookups per round, ${opts['lookup-rounds']} rounds (median)`,
  );
  const heap0 = heapMiB();
  const t0 = performance.now();
  const store = new MemoryInterceptStore(24 * 3600_000);
  for (const pair of ds.intercepted) {
    const r = await store.create({
      service: ds.serviceOf(pair),
      tenant: ds.tenantOf(pair),
      holder: 'bench@scale',
      tokenName: 'default',
      clientKey: randomBytes(32).toString('hex'),
      localPort: 3000 + (pair % 1000),
      kafkaTopics: [],
      replicaId: '',
    });
    if (!r.ok) throw new Error('intercept refused');
  }
  const routes = ds.routes('http://127.0.0.1:9');
  for (const r of routes) await store.setRoute({ ...r, tokenName: 'default' });
  const buildMs = performance.now() - t0;
  const heap1 = heapMiB();
  const plain = plainMapOf(ds, store);
  log(
    `  loaded ${store.list().length} intercepts and ${store.listRoutes().length} routes (${routes.reduce((a, r) => a + r.tenants.length, 0)} tenants) in ${fmt(buildMs, 0)} ms; heap +${fmt(heap1 - heap0, 1)} MiB`,
  );

  const mixed = samplesOf(ds, opts.samples, MIX);
  const quarter = Math.max(1024, opts.samples >> 2);
  const classes = {
    intercept: samplesOf(ds, quarter, [[INTERCEPT, 1]]),
    route: samplesOf(ds, quarter, [[ROUTE, 1]]),
    miss: samplesOf(ds, quarter, [[MISS, 1]]),
  };
  const shapes: Shape[] = ['independent', 'chained'];
  const loops = { ...loopsFor('mixed', store, plain, mixed, { fresh: true, shapes }) };
  for (const [k, s] of Object.entries(classes))
    Object.assign(loops, loopsFor(k, store, plain, s, { shapes }));
  const res = await timeLoops(loops, opts['lookup-rounds']);
  for (const k of ['mixed', 'intercept', 'route', 'miss']) logLoops(res, k, shapes);
  await store.close();
  return {
    buildMs,
    heapMiB: heap1 - heap0,
    intercepts: opts.intercepts,
    routes: routes.length,
    routedTenants: routes.reduce((a, r) => a + r.tenants.length, 0),
    mix: Object.fromEntries(MIX.map(([k, w]) => [nth(['miss', 'intercept', 'route'], k), w])) as Record<
      'miss' | 'intercept' | 'route',
      number
    >,
    ns: res,
    // Samples kept for the PostgreSQL store's lookups (section 2).
    samples: { mixed, plain },
  };
}

// ---------------------------------------------------------------- 2. the server agent

const PG_HINT = 'start it, set KELSINGRA_BENCH_PG, or run with --skip-server';

const silent = createLogger('silent');

/** The server agent's own migrations, then the intercepts and routes, straight into the tables. */
async function loadDatabase(db: Db, ds: DataSet | undefined, routeBase?: string) {
  const pool = new pg.Pool({ connectionString: db.url, max: 1 });
  try {
    await migrate(pool, silent);
    if (!ds) return { intercepts: 0, routes: 0 };
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      // The notify triggers are for live changes; a bulk load skips them (change numbers still
      // come from the column default). Needs a superuser; without, the triggers just run.
      await client.query('SAVEPOINT r');
      await client.query('SET LOCAL session_replication_role = replica').catch(async () => {
        await client.query('ROLLBACK TO SAVEPOINT r');
      });
      const cols = {
        id: [] as string[],
        service: [] as string[],
        tenant: [] as string[],
        client: [] as string[],
        port: [] as number[],
      };
      for (const pair of ds.intercepted) {
        cols.id.push(`icp_${randomBytes(6).toString('hex')}`);
        cols.service.push(ds.serviceOf(pair));
        cols.tenant.push(ds.tenantOf(pair));
        cols.client.push(randomBytes(32).toString('hex'));
        cols.port.push(3000 + (pair % 1000));
      }
      for (let i = 0; i < cols.id.length; i += 10_000) {
        const part = <T>(a: T[]) => a.slice(i, i + 10_000);
        await client.query(
          `INSERT INTO kelsingra_intercepts
             (id, service, tenant, holder, token_name, client_key, local_port, replica_id, expires_at)
           SELECT id, service, tenant, 'bench@scale', 'default', client_key, local_port, '', now() + interval '1 day'
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[])
             AS u(id, service, tenant, client_key, local_port)`,
          [part(cols.id), part(cols.service), part(cols.tenant), part(cols.client), part(cols.port)],
        );
      }
      if (routeBase === undefined) throw new Error("loadDatabase: a data set needs the routes' target");
      const routes = ds.routes(routeBase);
      for (const r of routes) {
        await client.query(
          `INSERT INTO kelsingra_routes (id, service, tenants, targets, token_name) VALUES ($1, $2, $3, $4, 'default')`,
          [routeIdOf(r.service, r.targets), r.service, r.tenants, r.targets],
        );
      }
      await client.query('COMMIT');
      await client.query('ANALYZE kelsingra_intercepts');
      await client.query('ANALYZE kelsingra_routes');
      return { intercepts: cols.id.length, routes: routes.length };
    } finally {
      client.release();
    }
  } finally {
    await pool.end();
  }
}

/** The PostgreSQL store in this process: load time and heap, lookups, reconciliation cost. */
async function benchPgStore(db: Db, lookup: Lookup) {
  const heap0 = heapMiB();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const store = await PgInterceptStore.open({
    databaseUrl: db.url,
    replicaId: `ks-bench-${RUN_ID}`,
    ttlMs: 30_000,
    log: silent,
  });
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await store.close();
  };
  onCleanup(close, { beforeStop: true });
  const openMs = performance.now() - t0;
  const openCpuMs = cpuMs(process.cpuUsage(cpu0));
  const heap1 = heapMiB();
  const res: {
    openMs: number;
    openCpuMs: number;
    heapMiB: number;
    intercepts: number;
    routes: number;
    ns?: Record<string, LoopNs>;
  } = {
    openMs,
    openCpuMs,
    heapMiB: heap1 - heap0,
    intercepts: store.list().length,
    routes: store.listRoutes().length,
  };
  if (lookup) {
    const { mixed, plain } = lookup.samples;
    const shapes: Shape[] = ['independent', 'chained'];
    res.ns = await timeLoops(
      loopsFor('pg', store, plain, mixed, { fresh: true, shapes }),
      opts['lookup-rounds'],
    );
  }
  // The periodic repairs (private in TypeScript, callable here): what the 5 s incremental
  // reconciliation and the full comparison (every 12th) cost with the table loaded.
  const timed = async (fn: () => Promise<void>) => {
    const xs: number[] = [];
    const cpu: number[] = [];
    for (let i = 0; i < 3; i++) {
      const c0 = process.cpuUsage();
      const t = performance.now();
      await fn();
      xs.push(performance.now() - t);
      cpu.push(cpuMs(process.cpuUsage(c0)));
    }
    return { ms: median(xs), cpuMs: median(cpu) };
  };
  // biome-ignore lint/complexity/useLiteralKeys: reload is private; TypeScript allows it through brackets only
  const reload = await timed(() => store['reload']());
  // biome-ignore lint/complexity/useLiteralKeys: reconcile is private; TypeScript allows it through brackets only
  const reconcile = await timed(() => store['reconcile']());
  await close();
  return { ...res, reload, reconcile };
}

const cpuMs = (u: NodeJS.CpuUsage) => (u.user + u.system) / 1000;

/** CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat. */
function cpuSeconds(pid: number | undefined) {
  const fields = nth(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') '), 1).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** One nginx for the base service and the routes' target, each saying which it is. */
function startUpstreams(basePort: number, routePort: number) {
  return startNginx(
    WORK,
    'nginx',
    `${smallBodyServer(basePort, 'add_header x-served-by base; ')}\n${smallBodyServer(routePort, 'add_header x-served-by route; ')}`,
    [`http://127.0.0.1:${basePort}/`, `http://127.0.0.1:${routePort}/v2/`],
  );
}

function profileArgs(name: string) {
  return opts.profile
    ? ['--cpu-prof', `--cpu-prof-dir=${opts.profile}`, `--cpu-prof-name=${name}-${Date.now()}.cpuprofile`]
    : [];
}

/** A server agent on ports the OS picks (read from its "server agent listening" line). */
async function startServer(label: string, configPath: string, db: Db) {
  const t0 = performance.now();
  const proc = await start(
    `server agent (${label})`,
    NODE,
    [...profileArgs(`server-${label}`), BIN, 'server', '--config', configPath, '--database-url', db.url],
    { ready: /"msg":"server agent listening"[^\n]*\n/, timeoutMs: 120_000 },
  );
  const startMs = performance.now() - t0;
  const line = proc
    .output()
    .split('\n')
    .find((l) => l.includes('"msg":"server agent listening"'));
  if (line === undefined) throw new Error(`${proc.name}: no "server agent listening" line`);
  const info = JSON.parse(line) as { controlPort: number; proxyPort: number };
  return {
    label,
    proc,
    pid: proc.pid,
    startMs,
    startCpuS: cpuSeconds(proc.pid),
    control: `http://127.0.0.1:${info.controlPort}`,
    data: `http://127.0.0.1:${info.proxyPort}`,
  };
}

/** A wrk Lua script cycling over requests for these (service, tenant) pairs. */
function wrkScript(name: string, pairs: [string, string][]) {
  const path = join(WORK, `${name}.lua`);
  const list = pairs.map(([s, t]) => `{${JSON.stringify(s)},${JSON.stringify(t)}}`).join(',\n');
  writeFileSync(
    path,
    `local pairs_ = {
${list}
}
local reqs = {}
local n = 0
init = function(args)
  for i, p in ipairs(pairs_) do
    reqs[i] = wrk.format("GET", "/", { ["x-kelsingra-service"] = p[1], ["x-tenant-id"] = p[2] })
  end
end
request = function()
  n = n + 1
  if n > #reqs then n = 1 end
  return reqs[n]
end
`,
  );
  return path;
}

/** One wrk run (-t1) with a Lua script; requests/s and latency percentiles in ms. */

/**
 * Checks a sample of the data set on a server's data port: intercepted tenants answer 502
 * tunnel-disconnected (their intercept is loaded, and has no tunnel), routed tenants reach the
 * route target, the rest the base. On the empty server everything reaches the base.
 */
async function checkSample(server: Server, ds: DataSet, loaded: boolean, n = 100) {
  const counts = { intercept: 0, route: 0, miss: 0 };
  for (const [kind, name] of [
    [INTERCEPT, 'intercept'],
    [ROUTE, 'route'],
    [MISS, 'miss'],
  ] as const) {
    for (let i = 0; i < n; i++) {
      const pair = ds.pick(kind);
      const headers = { 'x-kelsingra-service': ds.serviceOf(pair), 'x-tenant-id': ds.tenantOf(pair) };
      const r = await fetch(`${server.data}/`, { headers });
      const text = await r.text();
      const servedBy = r.headers.get('x-served-by');
      const ok = !loaded
        ? r.status === 200 && servedBy === 'base'
        : kind === INTERCEPT
          ? r.status === 502 && r.headers.get('x-kelsingra-error') === 'tunnel-disconnected'
          : r.status === 200 && servedBy === (kind === ROUTE ? 'route' : 'base');
      if (!ok)
        throw new Error(
          `${server.label} server: ${name} ${headers['x-kelsingra-service']}/${headers['x-tenant-id']} answered HTTP ${r.status} (x-served-by ${servedBy}): ${text.slice(0, 300)}`,
        );
      counts[name]++;
    }
  }
  const r = await fetch(`${server.control}/v1/routes`, { headers: { authorization: `Bearer ${TOKEN}` } });
  if (r.status !== 200) throw new Error(`GET /v1/routes: HTTP ${r.status}`);
  const routes = (await r.json()) as { tenants: string[] }[];
  return {
    checked: counts,
    routes: routes.length,
    routedTenants: routes.reduce((a, x) => a + x.tenants.length, 0),
  };
}

async function benchServer(ds: DataSet, lookup: Lookup): Promise<ServerResult> {
  log(
    `\n== 2. Server agent on PostgreSQL: ${opts.services} services, ${opts.intercepts} intercepts + ${opts.routed} routed pairs loaded vs an empty table; wrk -t1 -c${opts.conns}, ${opts.duration} s, ${opts.rounds} rounds (median), alternating`,
  );
  const basePort = await freePort();
  const routePort = await freePort();
  await startUpstreams(basePort, routePort);
  const routeBase = `http://127.0.0.1:${routePort}`;

  const full = await createDatabase(`kelsingra_bench_scale_${RUN_ID}`, { hint: PG_HINT });
  const empty = await createDatabase(`kelsingra_bench_scale_${RUN_ID}_empty`, { hint: PG_HINT });
  let t0 = performance.now();
  const loaded = await loadDatabase(full, ds, routeBase);
  await loadDatabase(empty, undefined);
  // Filled in below, one measurement after the other; complete when returned.
  const res: Partial<ServerResult> & Pick<ServerResult, 'loadSqlMs' | 'loaded'> = {
    loadSqlMs: performance.now() - t0,
    loaded,
  };
  log(
    `  databases ${full.name} (${loaded.intercepts} intercepts, ${loaded.routes} routes, inserted in ${fmt(res.loadSqlMs, 0)} ms) and ${empty.name} (empty)`,
  );

  res.pgStore = await benchPgStore(full, lookup);
  const p = res.pgStore;
  log(
    `  PgInterceptStore in this process: open ${fmt(p.openMs, 0)} ms (${fmt(p.openCpuMs, 0)} ms CPU), heap +${fmt(p.heapMiB, 1)} MiB for ${p.intercepts} intercepts and ${p.routes} routes; full reconciliation ${fmt(p.reload.ms, 0)} ms (${fmt(p.reload.cpuMs, 0)} ms CPU), incremental ${fmt(p.reconcile.ms, 1)} ms (${fmt(p.reconcile.cpuMs, 1)} ms CPU)`,
  );
  if (p.ns) {
    log('  PgInterceptStore lookups (mixed keys, the same samples as section 1):');
    logLoops(p.ns, 'pg', ['independent', 'chained']);
  }

  // One config for both server agents; only the database differs.
  const config = join(WORK, 'kelsingra.json');
  writeFileSync(
    config,
    JSON.stringify(
      {
        port: 0,
        proxyPort: 0,
        token: TOKEN,
        logLevel: 'info',
        services: Object.fromEntries(
          ds.services.map((s) => [s, { upstream: `http://127.0.0.1:${basePort}` }]),
        ),
      },
      null,
      2,
    ),
  );
  const servers: Record<Side, Server> = {
    empty: await startServer('empty', config, empty),
    loaded: await startServer('loaded', config, full),
  };
  for (const s of Object.values(servers))
    log(
      `  ${s.label.padEnd(6)} server agent pid ${s.pid}: listening ${fmt(s.startMs / 1000, 2)} s after spawn (${fmt(s.startCpuS, 2)} s CPU), data ${s.data}`,
    );

  t0 = performance.now();
  res.check = {
    loaded: await checkSample(servers.loaded, ds, true),
    empty: await checkSample(servers.empty, ds, false),
  };
  if (res.check.loaded.routes !== loaded.routes || res.check.loaded.routedTenants !== opts.routed)
    throw new Error(
      `the loaded server lists ${res.check.loaded.routes} routes naming ${res.check.loaded.routedTenants} tenants; expected ${loaded.routes} and ${opts.routed}`,
    );
  if (res.check.empty.routes !== 0)
    throw new Error(`the empty server lists ${res.check.empty.routes} routes`);
  log(
    `  checked 300 data-port requests per server (intercepted → 502 tunnel-disconnected, routed → route target, others → base) and GET /v1/routes: ${res.check.loaded.routes} routes, ${res.check.loaded.routedTenants} tenants (${fmt(performance.now() - t0, 0)} ms)`,
  );

  await sleep(opts.settle * 1000);
  res.idleMem = { loaded: memOf(servers.loaded.pid), empty: memOf(servers.empty.pid) };
  log(
    `  after ${opts.settle} s idle: RSS loaded ${fmt(res.idleMem.loaded.rssMiB, 0)} MiB (peak ${fmt(res.idleMem.loaded.hwmMiB, 0)}), empty ${fmt(res.idleMem.empty.rssMiB, 0)} MiB (peak ${fmt(res.idleMem.empty.hwmMiB, 0)})`,
  );

  // Two request mixes, 1000 (service, tenant) pairs each, the same pairs for both servers.
  const pairsOf = (kind: number) =>
    Array.from({ length: 1000 }, (): [string, string] => {
      const pair = ds.pick(kind);
      return [ds.serviceOf(pair), ds.tenantOf(pair)];
    });
  const mixes = { miss: wrkScript('miss', pairsOf(MISS)), route: wrkScript('route', pairsOf(ROUTE)) };
  const runs: Record<Side, Record<Mix, WrkRun[]>> = {
    loaded: { miss: [], route: [] },
    empty: { miss: [], route: [] },
  };
  for (let round = 1; round <= opts.rounds; round++) {
    const order: Side[] = round % 2 ? ['empty', 'loaded'] : ['loaded', 'empty'];
    for (const [mix, script] of Object.entries(mixes) as [Mix, string][]) {
      for (const which of order) {
        const s = servers[which];
        await wrk(`${s.data}/`, { script, conns: opts.conns, seconds: opts.warmup });
        const c0 = cpuSeconds(s.pid);
        const w = await wrk(`${s.data}/`, {
          script,
          conns: opts.conns,
          seconds: opts.duration,
        });
        const r: WrkRun = Object.assign(w, { cpuUsPerReq: ((cpuSeconds(s.pid) - c0) / w.requests) * 1e6 });
        runs[which][mix].push(r);
        log(
          `  round ${round} ${mix.padEnd(5)} ${which.padEnd(6)} ${fmt(r.rps, 0).padStart(7)} req/s  p50 ${fmt(r.p50, 2)} ms  p99 ${fmt(r.p99, 2)} ms  server CPU ${fmt(r.cpuUsPerReq, 1)} µs/req${r.errors ? `  socket errors ${r.errors}` : ''}`,
        );
      }
    }
  }
  res.afterLoadMem = { loaded: memOf(servers.loaded.pid), empty: memOf(servers.empty.pid) };

  const c0 = { loaded: cpuSeconds(servers.loaded.pid), empty: cpuSeconds(servers.empty.pid) };
  await sleep(opts.idle * 1000);
  res.idleCpuPct = {
    loaded: ((cpuSeconds(servers.loaded.pid) - c0.loaded) / opts.idle) * 100,
    empty: ((cpuSeconds(servers.empty.pid) - c0.empty) / opts.idle) * 100,
  };
  res.endMem = { loaded: memOf(servers.loaded.pid), empty: memOf(servers.empty.pid) };
  log(
    `  idle CPU over ${opts.idle} s: loaded ${fmt(res.idleCpuPct.loaded, 2)} %, empty ${fmt(res.idleCpuPct.empty, 2)} %; RSS loaded ${fmt(res.endMem.loaded.rssMiB, 0)} MiB (peak ${fmt(res.endMem.loaded.hwmMiB, 0)}), empty ${fmt(res.endMem.empty.rssMiB, 0)} MiB (peak ${fmt(res.endMem.empty.hwmMiB, 0)})`,
  );
  res.start = Object.fromEntries(
    Object.entries(servers).map(([k, s]) => [k, { ms: s.startMs, cpuS: s.startCpuS }]),
  ) as ServerResult['start'];
  // Both sides and both mixes are filled in just below.
  res.wrk = {} as ServerResult['wrk'];
  for (const which of ['loaded', 'empty'] as const) {
    res.wrk[which] = {} as ServerResult['wrk'][Side];
    for (const mix of Object.keys(mixes) as Mix[]) {
      const r = runs[which][mix];
      res.wrk[which][mix] = {
        rps: median(r.map((x) => x.rps)),
        p50: median(r.map((x) => x.p50)),
        p99: median(r.map((x) => x.p99)),
        cpuUsPerReq: median(r.map((x) => x.cpuUsPerReq)),
        rounds: r,
      };
    }
  }
  await stopAll();
  return res as ServerResult;
}

// ---------------------------------------------------------------- machine load

/** Busy jiffies of the whole machine, from /proc/stat. */
function machineBusy() {
  const f = nth(readFileSync('/proc/stat', 'utf8').split('\n'), 0).trim().split(/\s+/).slice(1).map(Number);
  return nth(f, 0) + nth(f, 1) + nth(f, 2) + nth(f, 5) + nth(f, 6) + nth(f, 7); // user nice system irq softirq steal
}

function jiffiesOf(pid: number | undefined) {
  try {
    const fields = nth(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') '), 1).split(' ');
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return 0;
  }
}

/**
 * Every 5 s: the load average, and how much CPU (% of one core) went to processes this run did
 * not start (other sessions, PostgreSQL's own background work) — what makes a round noisy.
 */
function sampleLoad() {
  const samples: { load1: number; othersPct: number }[] = [];
  let last: { busy: number; ours: number; at: number } | undefined;
  const ours = () =>
    [process.pid, ...[...children].map((c) => c.pid)].reduce((a: number, pid) => a + jiffiesOf(pid), 0);
  const tick = () => {
    const now = { busy: machineBusy(), ours: ours(), at: performance.now() };
    if (last) {
      const secs = (now.at - last.at) / 1000;
      // A child that exited in between takes its jiffies with it: never below zero.
      const others = Math.max(0, now.busy - last.busy - Math.max(0, now.ours - last.ours)) / secs;
      samples.push({ load1: os.loadavg()[0] ?? Number.NaN, othersPct: others });
    }
    last = now;
  };
  tick();
  const timer = setInterval(tick, 5000);
  timer.unref();
  return {
    stop() {
      clearInterval(timer);
      tick();
      const o = samples.map((x) => x.othersPct);
      const l = samples.map((x) => x.load1);
      return {
        samples,
        othersPctMedian: median(o),
        othersPctMax: Math.max(...o),
        load1Median: median(l),
        load1Max: Math.max(...l),
      };
    },
  };
}

// ---------------------------------------------------------------- report

const ok = (pass: boolean) => (pass ? 'met' : 'MISSED');

function report(results: Results) {
  const goals = [['Goal', 'Figure', 'Target', 'Result']];
  const l = results.lookup;
  if (l) {
    log(
      `\nRoute lookup in process (ns per lookup, median of ${opts['lookup-rounds']} rounds of ${opts.samples} (mixed) or ${Math.max(1024, opts.samples >> 2)} (per kind) lookups; mix ${Math.round(l.mix.intercept * 100)} % intercept hits, ${Math.round(l.mix.route * 100)} % route hits, ${Math.round(l.mix.miss * 100)} % misses):`,
    );
    const rows = [
      [
        'Keys',
        'store',
        'lookups',
        'plain Map.get (ns)',
        'decision (ns)',
        'fresh tenant strings (ns)',
        'decision ÷ plain',
        'fresh ÷ plain',
      ],
    ];
    const pgs = results.server?.pgStore?.ns;
    const decisions: number[] = [];
    const row = (ns: Record<string, LoopNs>, label: string, key: string, store: string, shape: Shape) => {
      const p = get(ns, `${key}:${shape}:plain`);
      const d = get(ns, `${key}:${shape}:decide`);
      const f = ns[`${key}:${shape}:fresh`];
      if (key === 'mixed' || key === 'pg') decisions.push(d.median, ...(f ? [f.median] : []));
      rows.push([
        label,
        store,
        shape,
        fmt(p.median, 1),
        fmt(d.median, 1),
        f ? fmt(f.median, 1) : '—',
        fmt(d.median / p.median, 2),
        f ? fmt(f.median / p.median, 2) : '—',
      ]);
    };
    for (const shape of ['independent', 'chained'] as const) {
      row(l.ns, 'mixed', 'mixed', 'memory', shape);
      if (pgs) row(pgs, 'mixed', 'pg', 'PostgreSQL', shape);
    }
    for (const [key, label] of [
      ['intercept', 'intercept hits'],
      ['route', 'route hits'],
      ['miss', 'misses (→ base)'],
    ] as const)
      for (const shape of ['independent', 'chained'] as const) row(l.ns, label, key, 'memory', shape);
    log(table(rows));
    log(
      '(independent: each lookup on its own, the CPU may overlap their memory reads; chained: the index of the next sample depends on data read from the previous answer, so lookups run one at a time, as between two requests. Fresh tenant strings: a new string per lookup, hash not yet computed, as a request header value.)',
    );
    const worst = Math.max(...decisions);
    goals.push([
      '1. route lookup per request, worst mixed variant (ns)',
      fmt(worst, 0),
      '≤ 1000',
      ok(worst <= 1000),
    ]);
  }
  const s = results.server;
  if (s) {
    const w = s.wrk;
    log(
      `\nServer agent, ${opts.intercepts} intercepts + ${opts.routed} routed pairs loaded vs empty (wrk -t1 -c${opts.conns}, medians of ${opts.rounds}; MiB = 2^20 bytes):`,
    );
    const mem = (k: Side) =>
      `${fmt(s.idleMem[k].rssMiB, 0)} / ${fmt(s.afterLoadMem[k].rssMiB, 0)} / ${fmt(s.endMem[k].hwmMiB, 0)}`;
    log(
      table([
        [
          'Server agent',
          'start → listening (s)',
          'RSS idle / after load / peak (MiB)',
          'idle CPU (%)',
          'miss mix req/s',
          'route mix req/s',
          'CPU µs/req (miss, route)',
        ],
        ...(['empty', 'loaded'] as const).map((k) => [
          k,
          fmt(s.start[k].ms / 1000, 2),
          mem(k),
          fmt(s.idleCpuPct[k], 2),
          fmt(w[k].miss.rps, 0),
          fmt(w[k].route.rps, 0),
          `${fmt(w[k].miss.cpuUsPerReq, 1)}, ${fmt(w[k].route.cpuUsPerReq, 1)}`,
        ]),
        [
          'loaded ÷ empty',
          fmt(s.start.loaded.ms / s.start.empty.ms, 2),
          fmt(s.endMem.loaded.hwmMiB / s.endMem.empty.hwmMiB, 2),
          '',
          fmt(w.loaded.miss.rps / w.empty.miss.rps, 3),
          fmt(w.loaded.route.rps / w.empty.route.rps, 3),
          `${fmt(w.loaded.miss.cpuUsPerReq / w.empty.miss.cpuUsPerReq, 2)}, ${fmt(w.loaded.route.cpuUsPerReq / w.empty.route.cpuUsPerReq, 2)}`,
        ],
      ]),
    );
    const p = s.pgStore;
    log(
      `PgInterceptStore in this process: heap +${fmt(p.heapMiB, 1)} MiB for the loaded table; open ${fmt(p.openMs, 0)} ms; full reconciliation ${fmt(p.reload.ms, 0)} ms (${fmt(p.reload.cpuMs, 0)} ms CPU, every 60 s), incremental ${fmt(p.reconcile.ms, 1)} ms (every 5 s).`,
    );
    const peakMB = (s.endMem.loaded.hwmMiB * 2 ** 20) / 1e6;
    goals.push(['2. server agent peak RSS, loaded (MB)', fmt(peakMB, 0), '≤ 300', ok(peakMB <= 300)]);
    const ratio = w.loaded.miss.rps / w.empty.miss.rps;
    goals.push([
      '2. pass-through req/s, loaded ÷ empty (miss mix)',
      fmt(ratio, 3),
      '≥ 0.95',
      ok(ratio >= 0.95),
    ]);
    const rr = w.loaded.route.rps / w.empty.route.rps;
    goals.push(['   (route mix: routed ÷ base pass-through, for scale)', fmt(rr, 3), '—', '—']);
  }
  const m = results.machineLoad;
  log(
    `\nSummary (${os.cpus().length} cores, ${os.cpus()[0]?.model ?? 'unknown CPU'}, Node ${process.versions.node}; load average at start ${results.loadStart}, at end ${os.loadavg()[0]?.toFixed(2)}, median ${fmt(m?.load1Median, 2)}; processes this run did not start (PostgreSQL among them) used ${fmt(m?.othersPctMedian, 0)} % of a core in the median 5 s sample, ${fmt(m?.othersPctMax, 0)} % at most):`,
  );
  log(table(goals));
}

/** One line with the headline figures, for scripts. */
function summaryLine(results: Results) {
  const l = results.lookup;
  const s = results.server;
  return JSON.stringify({
    bench: 'scale',
    lookupNs:
      l &&
      Object.fromEntries(
        [...Object.entries(l.ns), ...Object.entries(s?.pgStore?.ns ?? {})]
          .filter(([k]) => k.startsWith('mixed:') || k.startsWith('pg:'))
          .map(([k, v]) => [k, Math.round(v.median * 10) / 10]),
      ),
    server: s && {
      peakRssMiB: s.endMem.loaded.hwmMiB,
      idleRssMiB: s.idleMem.loaded.rssMiB,
      emptyPeakRssMiB: s.endMem.empty.hwmMiB,
      missRps: { loaded: s.wrk.loaded.miss.rps, empty: s.wrk.empty.miss.rps },
      routeRps: { loaded: s.wrk.loaded.route.rps, empty: s.wrk.empty.route.rps },
      ratio: s.wrk.loaded.miss.rps / s.wrk.empty.miss.rps,
      pgStoreHeapMiB: s.pgStore.heapMiB,
      fullReconcileMs: s.pgStore.reload.ms,
    },
    seconds: results.seconds,
  });
}

// ---------------------------------------------------------------- main

if (!opts['skip-server']) ensureTools(['wrk', 'nginx']);
const results: Results = { opts, ...machineInfo() };
let exitCode = 0;
try {
  const t0 = Date.now();
  log(
    `Kelsingra scale benchmark: ${opts.services} services × ${opts.tenants} tenants, ${opts.intercepts} intercepts, ${opts.routed} routed pairs (${os.cpus().length} cores, Node ${process.versions.node})`,
  );
  const sampler = sampleLoad();
  const ds = makeDataSet();
  const lookup = await benchLookup(ds);
  results.lookup = { ...lookup, samples: undefined };
  if (!opts['skip-server']) results.server = await benchServer(ds, lookup);
  results.seconds = (Date.now() - t0) / 1000;
  results.machineLoad = sampler.stop();
  report(results);
  log(`\n(${fmt(results.seconds, 0)} s)`);
  log(summaryLine(results));
  if (opts.json) writeFileSync(opts.json, `${JSON.stringify(results, null, 2)}\n`);
  if (opts.profile)
    log(`\nCPU profiles in ${opts.profile} (summarise: node scripts/bench/cpuprofile-top.ts <file>)`);
} catch (err) {
  exitCode = reportFailure(err);
}
await cleanupAndExit(exitCode);
