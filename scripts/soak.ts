#!/usr/bin/env node
/**
 * Soak test: Kelsingra under steady load while clients come and go, a replica drains and
 * restarts, a local service flaps, one tenant trickles slow uploads, a laptop sleeps and some
 * requests try to smuggle another tenant (see docs/BENCHMARKS.md, "Soak"). Run it through `scripts/soak` or
 * `npm run soak`, which build first:
 *
 *   scripts/soak                         # 60 s of load, about 75 s in all (plus the build)
 *   scripts/soak --duration 30 --rate 100 --json soak.json
 *   scripts/soak --crash                 # replica 2 is killed with SIGKILL, not drained
 *   scripts/soak --no-trickle --no-freeze --no-smuggle   # only the joins, leaves, flaps, restart
 *
 * Everything is a real process on 127.0.0.1:
 *   - PostgreSQL at 127.0.0.1:5432 (KELSINGRA_BENCH_PG, default postgres://postgres@127.0.0.1:5432/postgres):
 *     a fresh database kelsingra_soak_<random>, dropped at the end;
 *   - two `kelsingra server` replicas sharing it, on fixed free ports so that a restarted replica
 *     comes back at the same address, `--lease-ttl` 10 s and `--upstream-timeout` 5 s;
 *   - the base `billing` service, and one "laptop" service per intercepting developer (each its
 *     own process, answering with `x-served-by: laptop-<tenant>`);
 *   - one `kelsingra intercept billing --tenant tN --port P --json` process per developer,
 *     reaching the control ports through a small TCP load balancer in this process, with
 *     affinity: t1, t3, t5 prefer replica 2 (the one restarted), t2, t4 replica 1; a replica out
 *     of rotation or refusing connections is skipped;
 *   - a load generator in this process (undici, keep-alive, bounded rate and concurrency, a
 *     timeout per request) sending to both replicas' data ports as a load balancer would: round
 *     robin over the replicas in rotation, and a request whose connection is refused goes to the
 *     other replica (nothing reached the first one). Mix: 70 % for t1–t5, 25 % for p1–p3 (never
 *     intercepted), 5 % without a tenant; 20 % POST of 1–16 KiB, 10 % GET of 64 KiB, the rest
 *     GET of 200 B, and one GET in ten answered 50–500 ms late, so that requests are in flight
 *     whenever a fault strikes. 3 % (a tenant's GET of 200 B, through node:http on a connection of
 *     its own) also carry a smuggling attempt: an underscore twin `x_tenant_id: <another tenant>`,
 *     the same with `Connection: x-tenant-id`, or that `Connection` line alone.
 *   - every service echoes the tenant it believes it serves, read plainly (x-tenant-id) and as a
 *     CGI-style service reads it (`-` and `_` in names are one, repeats joined: WSGI, PHP).
 *
 * Schedule, as fractions of --duration (D), after t1 and t2 joined before the load starts:
 *   0.08 D t3 joins · 0.10–0.35 D the trickle: --trickle slow uploads for tenant s1 (never
 *   intercepted, same service) to replica 1, each announcing 1 MiB and sending a byte every
 *   --trickle-interval s; whatever is still open at 0.35 D is closed · 0.15 D t1's local service
 *   starts flapping (stops listening and drops its connections for 2 s, listens again for 2 s, 3
 *   times) · 0.22 D t4 joins · 0.25–0.92 D t5 joins and leaves in a loop (4 s in, 2 s out) ·
 *   0.40 D replica 2, holding t1's and t3's tunnels, drains under load: SIGTERM while in rotation,
 *   out of rotation once its /healthz says draining (polled every 100 ms), started again
 *   --restart-down seconds after it exited (--crash: SIGKILL, left in rotation) · 0.45 D t4's
 *   laptop sleeps: SIGSTOP of its intercept process for --freeze s, then SIGCONT; it must hold its
 *   intercept again, same id · 0.55 D t2 leaves (SIGTERM to its CLI) · 0.62 D t3's laptop vanishes
 *   (SIGKILL; its lease lapses) · 0.78 D t2 joins again · 0.88 D t4 leaves · end: the load stops,
 *   in-flight requests settle, everyone leaves.
 *
 * Every request carries a sequence number that the answering service echoes with the tenant it
 * was asked for; each request is classified:
 *   - answered: from one of the services, whole (body length), its own answer (sequence number,
 *     tenant) and from the right party: base for tenants nobody intercepts, the tenant's own
 *     laptop while its intercept is up (either one within 1.5 s of a join or leave, and from a
 *     sleep until 1.5 s after the woken client holds its intercept again); anything else is
 *     "misrouted", as is an answer whose service saw no tenant header;
 *   - cross-tenant: the answering service believed (plainly or CGI-style) it served a tenant
 *     other than the one Kelsingra routed;
 *   - refused: a smuggling attempt answered with Kelsingra's 400 (the right answer);
 *   - failed clean: a response made by Kelsingra (`x-kelsingra-error` header and a JSON body whose
 *     `error` starts with "Kelsingra:"), counted by status and code, with the faults in progress
 *     for that tenant (or "NO FAULT IN PROGRESS": worth a look); the drain excuses nothing: a
 *     clean failure nothing else explains from its SIGTERM to 5 s after the restart is "failed
 *     during the drain";
 *   - failed unclean: connection reset or closed, timeout, a truncated body, a 5xx that is not
 *     Kelsingra's;
 *   - lost: still without any outcome once the load stopped and --timeout + 5 s passed.
 * The slow uploads are judged apart (refused by Kelsingra with 408/413/429/503, completed, cut
 * without an answer, or held open to the end), with the load's rate during the trickle against
 * before it.
 * The run fails (exit 1) if any request was lost, failed uncleanly, was misrouted, cross-tenant
 * or failed during the drain, if the load's rate during the trickle fell below 80 % of before,
 * if a client could not join or leave, exited by itself, did not hold its intercept again (same
 * id) after its sleep, or a replica did not stop. With --crash,
 * requests cut at the socket because of the kill (in flight at that moment, or sent to the dead
 * replica on a keep-alive connection not yet seen closed) are reported apart ("cut by the
 * crash": no software on that replica can answer them) and do not fail the run.
 *
 * KELSINGRA_SOAK_INJECT=hang,reset,plain500,wrong,foreign,cut,steal is a self-check of the classifier,
 * not a soak: laptop-t2 misbehaves on some GETs and t4's intercept is deleted behind its back;
 * each shows up in the report as what it is (504/502 clean, unclean, misrouted, cross-tenant, a
 * finding).
 *
 * Options: --duration S (60), --rate N (150 requests/s at most), --concurrency N (32 in flight at
 * most), --timeout S (10, per request), --lease-ttl S (10), --restart-down S (3), --crash,
 * --trickle N (600 slow uploads), --trickle-interval S (5), --freeze S (--lease-ttl + 5),
 * --no-trickle, --no-restart, --no-freeze, --no-smuggle (phases off), --json FILE (every figure, and the timeline), --logs DIR (the end of each replica's and
 * client's output). Every process is stopped on exit, Ctrl-C or
 * failure; the database is dropped.
 *
 * Over 400 lines on purpose: one scenario whose phases (load, joins and leaves, the drain and
 * restart, the flapping service, the trickle, the sleeping laptop, the smuggled tenant ids) share
 * the clock, the processes and the ledger of every request; split, each part would need them all.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import { join } from 'node:path';
import { Pool } from 'undici';
import {
  children,
  cleanupAndExit,
  createDatabase,
  fmt,
  freePort,
  log,
  machineInfo,
  onCleanup,
  parseOptions,
  percentile,
  ROOT,
  reportFailure,
  requireBuild,
  sleep,
  start,
  table,
} from './bench/lib.ts';

/** A process started by bench/lib.ts's `start`. */
type Proc = Awaited<ReturnType<typeof start>>;
/** How a child process ended: its exit code, else the signal that ended it. */
type ExitStatus = number | NodeJS.Signals | null;

/** A `kelsingra server` replica: its fixed ports, and once started its process. */
interface Replica {
  n: number;
  controlPort: number;
  dataPort: number;
  inRotation: boolean;
  proc?: Proc;
  serverId?: string;
  data?: string;
  stopping?: boolean;
  killedAt?: number;
  upAt?: number;
}

/** Something in progress that may explain clean failures of its tenants (`codes`: only those). */
interface Fault {
  kind: string;
  tenants: Set<string>;
  start: number;
  end?: number;
  codes?: string[];
  excuses?: boolean;
}
/** A laptop's sleep (SIGSTOP … SIGCONT) and whether it held its intercept again. */
interface Freeze extends Fault {
  tenant: string;
  idBefore: string | undefined;
  lapsedAt?: number;
  contAt?: number;
  heldAt?: number;
  idAfter?: string;
}
/** A replica's drain (or crash) under load. */
interface Drain extends Fault {
  excuses: boolean;
  replica: number;
  held: string[];
  outAt?: number;
  exitedAt?: number;
  exit?: ExitStatus | string;
}

/** One join of a tenant: its client process and its times, for the judge. */
interface Session {
  tenant: string;
  joinStart: number;
  liveAt: number | undefined;
  leaveStart: number | undefined;
  goneAt: number | undefined;
  freezes: Freeze[];
  proc?: Proc;
  failedAt?: number;
  id?: string;
  tunnelReplica?: number | undefined;
  exit?: ExitStatus | string;
  thawed?: Promise<void>;
  how?: 'leave' | 'vanish';
}
/** A session whose client process runs (every one in `active`). */
interface LiveSession extends Session {
  proc: Proc;
}

/** An intercept as the control port lists it (GET /v1/intercepts), the fields read here. */
interface InterceptView {
  id: string;
  tenant: string;
  service: string;
}

/** One request of the load, and how it was judged. */
interface Rec {
  seq: number;
  tenant: string | undefined;
  method: 'GET' | 'POST';
  size: number;
  delay: number;
  t0: number;
  replica: number | undefined;
  tries: number;
  smuggle: string | undefined;
  smuggledTenant?: string;
  t1?: number;
  status?: number | undefined;
  outcome?: string;
  detail?: string;
  message?: string;
  lbRetry?: boolean;
  by?: string | undefined;
  during?: string | undefined;
}

/** One slow upload of the trickle. */
interface Trickle {
  i: number;
  t0: number;
  sentBytes: number;
  status?: number;
  outcome?: string;
  detail?: string;
  t1?: number;
}
/** A response head read off the socket. */
interface Head {
  status: number;
  headers: Record<string, string>;
}

/** What went wrong besides requests, with when. */
interface Finding {
  at: number;
  what: string;
  detail?: string | undefined;
}

/** A request to a replica's data port, through node:http or undici. */
interface RequestArgs {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: Buffer | undefined;
}
/** Its answer. Every header the judge reads is sent once, so none of them is an array. */
interface Reply {
  statusCode: number | undefined;
  headers: Record<string, string | undefined>;
  body: Buffer;
}

/** What errorCode reads of an error: node's, undici's (with a cause) or a DOMException. */
interface ErrorLike {
  code?: unknown;
  cause?: { code?: string };
  name?: string;
  message?: string;
}

const SELF = import.meta.filename;
const BIN = join(ROOT, 'bin', 'run.js');
const NODE = process.execPath;

// ==================================================================== service role (a child)

/**
 * `node soak.ts service <label> <port>`: one HTTP service on 127.0.0.1. GET /r?size=N[&delay=MS]
 * answers N bytes (MS milliseconds later); POST /r answers JSON with the byte count it read.
 * Every answer says who served it (x-served-by), echoes the request's x-soak-seq and the tenant
 * it was asked for. IPC messages {cmd:'down'} / {cmd:'up'} stop listening (idle connections are
 * closed at once, busy ones 200 ms later) and listen again on the same port: the flapping local
 * service.
 */
async function serviceMain(label: string, port: number) {
  /**
   * The tenant as a CGI-style service reads it (WSGI, PHP, CGI): `-` and `_` in header names
   * are one character there, so `x_tenant_id` lands in the same HTTP_X_TENANT_ID variable and
   * repeated headers are joined with commas. A smuggled twin shows up here.
   */
  const cgiTenant = (raw: string[]) => {
    const values: (string | undefined)[] = [];
    for (let i = 0; i < raw.length; i += 2)
      if (raw[i]?.toLowerCase().replaceAll('_', '-') === 'x-tenant-id') values.push(raw[i + 1]);
    return values.join(',');
  };
  const chunk = Buffer.alloc(16 * 1024, 'k');
  // Self-check of the classifier (KELSINGRA_SOAK_INJECT, see main): laptop-t2 misbehaves on
  // one GET in 50 per listed fault.
  const inject =
    label === 'laptop-t2' ? (process.env.KELSINGRA_SOAK_INJECT ?? '').split(',').filter(Boolean) : [];
  const server = http.createServer({ keepAliveTimeout: 30_000 }, (req, res) => {
    const head: Record<string, string> = {
      'x-served-by': label,
      'x-soak-seq': String(req.headers['x-soak-seq'] ?? ''),
      'x-soak-tenant': String(req.headers['x-tenant-id'] ?? ''),
      'x-soak-cgi-tenant': cgiTenant(req.rawHeaders),
    };
    const fault = req.method === 'GET' && inject.length && Math.random() < inject.length / 50;
    if (fault) {
      req.resume();
      const what = inject[Math.floor(Math.random() * inject.length)];
      if (what === 'hang') return; // never answers: Kelsingra's --upstream-timeout answers 504
      if (what === 'reset') return void req.socket.destroy(); // before any answer: a clean 502
      if (what === 'plain500') return void res.writeHead(500, head).end('oops'); // not Kelsingra's
      if (what === 'wrong') {
        const size = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('size') ?? 0) || 0;
        res.writeHead(200, { ...head, 'x-served-by': 'laptop-t9', 'content-length': size });
        return void res.end(Buffer.alloc(size, 'w'));
      }
      if (what === 'foreign') {
        // A whole, right-party answer, but the service believed it served someone else.
        const size = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('size') ?? 0) || 0;
        res.writeHead(200, { ...head, 'x-soak-cgi-tenant': 't9', 'content-length': size });
        return void res.end(Buffer.alloc(size, 'f'));
      }
      if (what === 'cut') {
        // Headers and half the body, then the connection dies: the caller must not see a whole body.
        res.writeHead(200, { ...head, 'content-length': 65536 });
        res.write(Buffer.alloc(32768, 'c'));
        setTimeout(() => req.socket.destroy(), 20);
        return;
      }
    }
    if (req.method === 'POST') {
      let bytes = 0;
      req.on('data', (c: Buffer) => (bytes += c.length));
      req.on('end', () => {
        const body = JSON.stringify({ by: label, bytes });
        res.writeHead(200, {
          ...head,
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
        });
        res.end(body);
      });
      return;
    }
    req.resume();
    const params = new URL(req.url ?? '/', 'http://x').searchParams;
    const size = Number(params.get('size') ?? 0) || 0;
    const delay = Number(params.get('delay') ?? 0) || 0;
    if (delay > 0) {
      const t = setTimeout(() => answer(res, head, size), delay);
      res.once('close', () => clearTimeout(t));
    } else answer(res, head, size);
  });
  const answer = (res: http.ServerResponse, head: Record<string, string>, size: number) => {
    res.writeHead(200, { ...head, 'content-type': 'application/octet-stream', 'content-length': size });
    let sent = 0;
    const pump = () => {
      while (sent < size) {
        const n = Math.min(chunk.length, size - sent);
        sent += n;
        if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
          res.once('drain', pump);
          return;
        }
      }
      res.end();
    };
    pump();
  };
  const listen = () =>
    new Promise<void>((res, rej) => {
      server.once('error', rej);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', rej);
        res();
      });
    });
  await listen();
  process.on('message', async (message) => {
    const m = message as { cmd: 'down' | 'up' };
    try {
      if (m.cmd === 'down') {
        await new Promise<void>((r) => {
          server.close(() => r());
          // close() stops accepting and drops idle keep-alive connections; busy ones end when
          // their response is done, or here.
          setTimeout(() => server.closeAllConnections(), 200).unref();
        });
      } else if (m.cmd === 'up') {
        await listen();
      }
      process.send?.({ ok: m.cmd });
    } catch (err) {
      process.send?.({ error: String(err) });
    }
  });
  // The soak script went away without stopping us: so do we.
  process.on('disconnect', () => process.exit(0));
  process.send?.({ ready: true });
}

if (process.argv[2] === 'service') {
  const label = process.argv[3];
  if (!label) throw new Error('usage: soak.ts service <label> <port>');
  await serviceMain(label, Number(process.argv[4]));
} else {
  await main();
}

// ==================================================================== the soak

async function main() {
  const opts = parseOptions(
    process.argv.slice(2),
    {
      duration: 60,
      rate: 150,
      concurrency: 32,
      timeout: 10,
      'lease-ttl': 10,
      'restart-down': 3,
      crash: false,
      trickle: 600,
      'trickle-interval': 5,
      freeze: 0,
      'no-trickle': false,
      'no-restart': false,
      'no-freeze': false,
      'no-smuggle': false,
      json: '',
      logs: '',
    },
    'scripts/soak [--duration S] [--rate N] [--concurrency N] [--timeout S] [--lease-ttl S] [--restart-down S] [--crash] [--trickle N] [--trickle-interval S] [--freeze S] [--no-trickle] [--no-restart] [--no-freeze] [--no-smuggle] [--json FILE] [--logs DIR]',
  );
  // Each slow upload holds a socket here and about two in the replica (its own, and one to the
  // upstream); Node lifts the soft limit to the hard one, which a child shell reports.
  const fdLimit = Number(spawnSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).stdout.trim());
  if (!opts['no-trickle'] && Number.isFinite(fdLimit) && opts.trickle * 2 + 1000 > fdLimit) {
    console.error(
      `--trickle ${opts.trickle} needs about ${opts.trickle * 2 + 1000} open files, and ulimit -n is ${fdLimit}: raise it or lower --trickle`,
    );
    process.exit(2);
  }
  requireBuild('scripts/soak or npm run soak');

  const RUN_ID = randomBytes(4).toString('hex');
  const TOKEN = `soak-${randomBytes(12).toString('hex')}`;
  const D = opts.duration * 1000;
  const TIMEOUT_MS = opts.timeout * 1000;
  const LEASE_MS = opts['lease-ttl'] * 1000;
  /** How long after a change (join, leave, restart) every replica may still route by the old state. */
  const PROPAGATION_GRACE_MS = 1500;
  const INTERCEPTED = ['t1', 't2', 't3', 't4', 't5'];
  const PLAIN = ['p1', 'p2', 'p3'];
  /** The slow uploads' tenant: never intercepted, on the same service as the load's tenants. */
  const TRICKLE_TENANT = 's1';
  /** What each slow upload announces; at a byte every few seconds none of them gets there. */
  const TRICKLE_BYTES = 1024 * 1024;
  /** The trickle runs from 0.10 D to this fraction of D: over before the replica restart. */
  const TRICKLE_END = 0.35;
  const FREEZE_MS = (opts.freeze || opts['lease-ttl'] + 5) * 1000;
  /** Share of the load's tenant requests that also carry a smuggling attempt. */
  const SMUGGLE_SHARE = opts['no-smuggle'] ? 0 : 0.03;
  /**
   * Ways to make a CGI-style service read another tenant than the one Kelsingra routed: an
   * underscore twin of the tenant header, the same with `Connection` naming the real header
   * (a proxy drops hop-by-hop headers), and `Connection` alone.
   */
  const SMUGGLES = ['twin', 'twin+connection', 'connection'];
  /**
   * Self-check of the classifier, never for a real run: KELSINGRA_SOAK_INJECT=hang,reset,plain500,wrong,foreign,cut
   * makes laptop-t2 misbehave on one GET in 50 per fault listed; steal deletes t4's intercept
   * behind its client's back. Each must show up in the report as what it is.
   */
  const INJECT = (process.env.KELSINGRA_SOAK_INJECT ?? '').split(',').filter(Boolean);

  let T0 = performance.now();
  const now = () => performance.now() - T0;
  const timeline: ({ at: number; what: string } & Record<string, unknown>)[] = [];
  /** Before the load starts (the first joins) lines say "setup"; their times end up negative. */
  let loadStarted = false;
  const event = (what: string, extra: Record<string, unknown> = {}) => {
    const at = now();
    timeline.push({ at, what, ...extra });
    log(`  ${loadStarted ? fmtT(at) : '  setup'}  ${what}`);
    return at;
  };
  /** [key, count] pairs of a list, most frequent first. */
  const by = <T, K>(list: readonly T[], key: (x: T) => K): [K, number][] => {
    const m = new Map<K, number>();
    for (const r of list) m.set(key(r), (m.get(key(r)) ?? 0) + 1);
    return [...m.entries()].sort((a, b) => b[1] - a[1]);
  };
  const fmtT = (ms: number) => `${ms < 0 ? '-' : '+'}${(Math.abs(ms) / 1000).toFixed(1).padStart(5)} s`;

  const t0Wall = Date.now();
  const results = { opts, ...machineInfo() };
  let exitCode = 0;
  /** What went wrong besides requests: clients or replicas that exited by themselves, failed joins… */
  const findings: Finding[] = [];
  /** Ctrl-C or SIGTERM: bench/lib.ts stops everything; processes exiting then are no finding. */
  let interrupted = false;
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => (interrupted = true));
  /** Set once the load is over and the judging starts: processes stop on purpose from then on. */
  let finished = false;
  try {
    log(
      `Kelsingra soak: ${opts.duration} s of load at ≤ ${opts.rate} req/s, ≤ ${opts.concurrency} in flight, 2 replicas on PostgreSQL (${os.cpus().length} cores, Node ${process.versions.node})`,
    );

    // ------------------------------------------------------------ database
    const { name: dbName, url: dbUrl } = await createDatabase(`kelsingra_soak_${RUN_ID}`, {
      hint: 'start it, or set KELSINGRA_BENCH_PG',
    });
    log(`  database ${dbName}`);

    const configRoot = mkdtempSync(join(os.tmpdir(), 'kelsingra-soak-'));
    onCleanup(() => rmSync(configRoot, { recursive: true, force: true }));

    // ------------------------------------------------------------ services
    /** A service process with an IPC channel (for flapping), tracked like every other child. */
    const startService = async (label: string) => {
      const port = await freePort();
      const child = spawn(NODE, [SELF, 'service', label, String(port)], {
        cwd: ROOT,
        stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      });
      let output = '';
      // Both are pipes (stdio above): never null.
      child.stdout?.on('data', (c: Buffer) => (output = (output + c).slice(-8192)));
      child.stderr?.on('data', (c: Buffer) => (output = (output + c).slice(-8192)));
      const proc = { name: `${label} service`, child, pid: child.pid, output: () => output };
      children.add(proc);
      child.once('exit', () => children.delete(proc));
      await new Promise<void>((res, rej) => {
        const t = setTimeout(() => rej(new Error(`${label} service did not start:\n${output}`)), 15_000);
        child.once('message', () => {
          clearTimeout(t);
          res();
        });
        child.once('exit', (code) => rej(new Error(`${label} service exited (${code}):\n${output}`)));
      });
      const command = (cmd: 'down' | 'up') =>
        new Promise<void>((res, rej) => {
          child.once('message', (message) => {
            const m = message as { ok?: string; error?: string };
            return m.error ? rej(new Error(m.error)) : res();
          });
          child.send({ cmd });
        });
      return { label, port, url: `http://127.0.0.1:${port}`, proc, command };
    };
    const base = await startService('base');
    const laptops: Record<string, Awaited<ReturnType<typeof startService>>> = {};
    /** The laptop service of an intercepted tenant (each of INTERCEPTED has one). */
    const laptopOf = (tenant: string) => {
      const laptop = laptops[tenant];
      if (!laptop) throw new Error(`no laptop service for tenant ${tenant}`);
      return laptop;
    };
    for (const t of INTERCEPTED) laptops[t] = await startService(`laptop-${t}`);
    log(
      `  base service ${base.url}; laptop services ${INTERCEPTED.map((t) => `${t}:${laptopOf(t).port}`).join(' ')}`,
    );

    // ------------------------------------------------------------ replicas
    const replicas: Replica[] = [];
    /** The replica at `i` (0 or 1): both exist from here on. */
    const replicaAt = (i: number) => {
      const r = replicas[i];
      if (!r) throw new Error(`no replica ${i + 1}`);
      return r;
    };
    for (let n = 1; n <= 2; n++) {
      replicas.push({ n, controlPort: await freePort(), dataPort: await freePort(), inRotation: false });
    }
    const replicaProcs: { n: number; proc: Proc; errors: number; lastErrors: string[] }[] = [];
    const startReplica = async (r: Replica) => {
      r.proc = await start(
        `replica ${r.n}`,
        NODE,
        [
          BIN,
          'server',
          '--port',
          String(r.controlPort),
          '--proxy-port',
          String(r.dataPort),
          '--service',
          `billing=${base.url}`,
          '--token',
          TOKEN,
          '--database-url',
          dbUrl,
          '--advertise-url',
          `http://127.0.0.1:${r.dataPort}`,
          '--lease-ttl',
          String(opts['lease-ttl']),
          '--upstream-timeout',
          '5',
          '--log-level',
          'info',
        ],
        { ready: /"msg":"server agent listening"[^\n]*\n/, timeoutMs: 30_000 },
      );
      const line = r.proc
        .output()
        .split('\n')
        .find((l) => l.includes('"msg":"server agent listening"'));
      if (line === undefined) throw new Error(`replica ${r.n}: no "server agent listening" line`);
      r.serverId = (JSON.parse(line) as { serverId: string }).serverId;
      r.data = `http://127.0.0.1:${r.dataPort}`;
      r.inRotation = true;
      // Error-level log lines (pino level 50 and up), counted as they come: the kept output is only a tail.
      const seen = { n: r.n, proc: r.proc, errors: 0, lastErrors: [] as string[] };
      let partial = '';
      const scan = (chunk: Buffer) => {
        const lines = (partial + chunk).split('\n');
        partial = lines.pop() ?? '';
        for (const l of lines) {
          if (!/"level":(50|60)\b/.test(l)) continue;
          seen.errors++;
          seen.lastErrors = [...seen.lastErrors.slice(-4), l.slice(0, 600)];
        }
      };
      r.proc.child.stdout.on('data', scan);
      r.proc.child.stderr.on('data', scan);
      replicaProcs.push(seen);
      // A replica that exits when nobody stopped it is a finding.
      r.proc.child.once('exit', (code, signal) => {
        if (!r.stopping && !interrupted && !finished)
          findings.push({
            at: now(),
            what: `replica ${r.n} exited by itself (${code ?? signal})`,
            detail: r.proc?.output().slice(-2000),
          });
      });
      return r;
    };
    // One after the other: the first one creates the tables.
    for (const r of replicas) {
      await startReplica(r);
      log(
        `  replica ${r.n} ${r.serverId}: control :${r.controlPort}, data :${r.dataPort}, pid ${r.proc?.pid}`,
      );
    }

    // ------------------------------------------------------------ control-port load balancer
    /**
     * A TCP balancer in front of the control ports, one listener per preferred replica (a load
     * balancer with affinity): a connection goes to the preferred replica while it is in
     * rotation, else to the other one; a refused connection tries the next. Tunnels of t1, t3
     * and t5 start on replica 2 (the one restarted), those of t2 and t4 on replica 1.
     */
    const lbSockets = new Set<net.Socket>();
    const lbServers: net.Server[] = [];
    const balancer = async (preferred: Replica) => {
      const lb = net.createServer((client) => {
        lbSockets.add(client);
        client.on('close', () => lbSockets.delete(client));
        client.on('error', () => undefined);
        client.pause();
        const order = [preferred, ...replicas.filter((r) => r !== preferred)].filter((r) => r.inRotation);
        const attempt = (i: number) => {
          if (client.destroyed) return;
          if (i >= order.length) {
            client.destroy();
            return;
          }
          // i < order.length: checked above.
          const up = net.connect((order[i] as Replica).controlPort, '127.0.0.1');
          let connected = false;
          up.once('connect', () => {
            connected = true;
            if (client.destroyed) {
              up.destroy();
              return;
            }
            lbSockets.add(up);
            up.on('close', () => {
              lbSockets.delete(up);
              client.destroy();
            });
            client.on('close', () => up.destroy());
            client.pipe(up);
            up.pipe(client);
            client.resume();
          });
          up.on('error', () => {
            if (!connected) attempt(i + 1);
            else client.destroy();
          });
        };
        attempt(0);
      });
      lbServers.push(lb);
      await new Promise<void>((r) => lb.listen(0, '127.0.0.1', r));
      // A TCP listener's address is an AddressInfo.
      return `http://127.0.0.1:${(lb.address() as net.AddressInfo).port}`;
    };
    onCleanup(
      () => {
        for (const lb of lbServers) lb.close();
        for (const s of lbSockets) s.destroy();
      },
      { beforeStop: true },
    );
    const viaReplica = [await balancer(replicaAt(0)), await balancer(replicaAt(1))];
    const controlUrlOf = (tenant: string) => viaReplica[['t1', 't3', 't5'].includes(tenant) ? 1 : 0];
    const controlUrl = viaReplica[0];
    log(
      `  control-port load balancer: ${viaReplica[0]} (prefers replica 1), ${viaReplica[1]} (prefers replica 2)`,
    );

    // ------------------------------------------------------------ clients (intercept processes)
    /** Every join, with its times: the judge of who should answer a tenant's request. */
    const sessions: Session[] = [];
    const active = new Map<string, LiveSession>();
    const joinTenant = async (tenant: string) => {
      const s: Session = {
        tenant,
        joinStart: now(),
        liveAt: undefined,
        leaveStart: undefined,
        goneAt: undefined,
        freezes: [],
      };
      sessions.push(s);
      try {
        s.proc = await start(
          `intercept ${tenant}`,
          NODE,
          [
            BIN,
            'intercept',
            'billing',
            '--tenant',
            tenant,
            '--port',
            String(laptopOf(tenant).port),
            '--json',
            '--no-gateway',
          ],
          {
            env: {
              KELSINGRA_SERVER: controlUrlOf(tenant),
              KELSINGRA_TOKEN: TOKEN,
              KELSINGRA_CONFIG_DIR: join(configRoot, `${tenant}-${sessions.length}`),
              KELSINGRA_HOLDER: `soak-${tenant}@${os.hostname()}`,
            },
            ready: /"kind":"intercept"[^\n]*\n/,
            timeoutMs: 30_000,
          },
        );
      } catch (e) {
        const err = e as Error;
        s.failedAt = now();
        s.goneAt = s.failedAt;
        findings.push({
          at: s.failedAt,
          what: `${tenant} could not join`,
          detail: err.message.slice(0, 2000),
        });
        event(`${tenant} could not join: ${err.message.split('\n').slice(0, 3).join(' | ')}`);
        return undefined;
      }
      s.liveAt = now();
      const { proc } = s;
      const line = proc
        .output()
        .split('\n')
        .find((l) => l.includes('"kind":"intercept"'));
      if (line === undefined) throw new Error(`${tenant}: no "kind":"intercept" line`);
      const view = JSON.parse(line) as { id: string; replica: string };
      s.id = view.id;
      const on = replicas.find((r) => r.serverId === view.replica);
      s.tunnelReplica = on?.n;
      // Its proc is set above.
      active.set(tenant, s as LiveSession);
      event(
        `${tenant} joined (intercept ${s.id}, tunnel on ${on ? `replica ${on.n}` : view.replica || '?'}, live after ${((s.liveAt - s.joinStart) / 1000).toFixed(1)} s)`,
      );
      // A client that exits by itself (lost lease, crash) is a finding.
      proc.child.once('exit', (code, signal) => {
        s.exit = code ?? signal;
        if (s.leaveStart === undefined && !interrupted) {
          s.leaveStart = now();
          s.goneAt = s.leaveStart;
          active.delete(tenant);
          findings.push({
            at: s.leaveStart,
            what: `${tenant}'s intercept process exited by itself (${s.exit})`,
            detail: tailOf(proc),
          });
          event(`${tenant}'s intercept process exited by itself (${s.exit})`);
        }
      });
      return s;
    };
    /** The end of a client's output without its per-request lines. */
    const tailOf = (proc: Proc) =>
      proc
        .output()
        .split('\n')
        .filter((l) => l.trim() && !l.includes('"kind":"http'))
        .slice(-8)
        .join('\n');
    const leaveTenant = async (tenant: string) => {
      const s = active.get(tenant);
      if (!s) return;
      // A stopped process only sees SIGTERM once continued: wait for the sleep to be over.
      await s.thawed;
      if (active.get(tenant) !== s) return;
      active.delete(tenant);
      s.leaveStart = now();
      s.how = 'leave';
      const exited = new Promise<ExitStatus>((r) =>
        s.proc.child.once('exit', (code, signal) => r(code ?? signal)),
      );
      s.proc.child.kill('SIGTERM');
      const code = await Promise.race([exited, sleep(15_000).then(() => 'still running after 15 s')]);
      s.goneAt = now();
      s.exit = code;
      if (code !== 143) {
        findings.push({
          at: s.goneAt,
          what: `${tenant} left with exit code ${code} (expected 143 on SIGTERM)`,
          detail: tailOf(s.proc),
        });
        s.proc.child.kill('SIGKILL');
      }
      event(`${tenant} left (exit ${code}, ${((s.goneAt - s.leaveStart) / 1000).toFixed(1)} s)`);
    };
    /** The laptop vanishes: SIGKILL. Its intercept lives on until the lease lapses; polled until gone. */
    const vanish = async (tenant: string) => {
      const s = active.get(tenant);
      if (!s) return;
      active.delete(tenant);
      s.leaveStart = now();
      s.how = 'vanish';
      s.proc.child.kill('SIGKILL');
      event(
        `${tenant}'s laptop vanished (SIGKILL of its intercept process); its lease lapses within ${opts['lease-ttl']} s`,
      );
      const deadline = Date.now() + LEASE_MS + 15_000;
      for (;;) {
        const list = await listIntercepts();
        if (list && !list.some((i) => i.id === s.id)) break;
        if (Date.now() > deadline) {
          findings.push({
            at: now(),
            what: `${tenant}'s intercept still listed ${LEASE_MS / 1000 + 15} s after its client vanished`,
          });
          break;
        }
        await sleep(250);
      }
      s.goneAt = now();
      faults.push({
        kind: `${tenant} vanished`,
        tenants: new Set([tenant]),
        start: s.leaveStart,
        end: s.goneAt,
      });
      event(
        `${tenant}'s lease lapsed: intercept ${s.id} gone after ${((s.goneAt - s.leaveStart) / 1000).toFixed(1)} s`,
      );
    };

    /** The intercepts as the control port lists them, or undefined when it could not answer. */
    const listIntercepts = async () => {
      try {
        const r = await fetch(`${controlUrl}/v1/intercepts`, {
          headers: { authorization: `Bearer ${TOKEN}` },
          signal: AbortSignal.timeout(5000),
        });
        const list: unknown = await r.json();
        return r.ok && Array.isArray(list) ? (list as InterceptView[]) : undefined;
      } catch {
        return undefined;
      }
    };
    /** Stopped intercept processes: continued before anything tries to stop them. */
    const frozen = new Set<Proc['child']>();
    onCleanup(
      () => {
        for (const c of frozen) c.kill('SIGCONT');
      },
      { beforeStop: true },
    );
    const freezes: Freeze[] = [];
    /**
     * The laptop sleeps: SIGSTOP of the tenant's intercept process for longer than its lease,
     * then SIGCONT. Meanwhile its requests must end cleanly and well within the request timeout
     * (502 tunnel-disconnected, base once the lease lapsed); then the same process must hold
     * the tenant's intercept again, under the same id if nobody took the tenant meanwhile.
     */
    const freeze = async (tenant: string) => {
      const s = active.get(tenant);
      if (!s) {
        event(`${tenant} is not intercepting (yet): its laptop's sleep is skipped`);
        return;
      }
      const f: Freeze = {
        kind: `${tenant} asleep`,
        tenants: new Set([tenant]),
        start: now(),
        tenant,
        idBefore: s.id,
      };
      faults.push(f);
      freezes.push(f);
      s.freezes.push(f);
      let thaw: (() => void) | undefined;
      s.thawed = new Promise<void>((r) => (thaw = r));
      frozen.add(s.proc.child);
      s.proc.child.kill('SIGSTOP');
      event(
        `${tenant}'s laptop sleeps (SIGSTOP of its intercept process for ${FREEZE_MS / 1000} s, lease ${LEASE_MS / 1000} s)`,
      );
      const wakeAt = Date.now() + FREEZE_MS;
      while (Date.now() < wakeAt) {
        const list = await listIntercepts();
        if (list && f.lapsedAt === undefined && !list.some((i) => i.id === s.id)) {
          f.lapsedAt = now();
          event(`${tenant}'s intercept ${s.id} lapsed while its laptop sleeps`);
        }
        await sleep(Math.max(0, Math.min(500, wakeAt - Date.now())));
      }
      s.proc.child.kill('SIGCONT');
      frozen.delete(s.proc.child);
      f.contAt = now();
      event(`${tenant}'s laptop wakes (SIGCONT)`);
      // Held again: listed for this tenant, and (if the old one lapsed) not just the old listing.
      const deadline = Date.now() + LEASE_MS + 15_000;
      while (Date.now() < deadline && s.exit === undefined) {
        const mine = (await listIntercepts())?.find((i) => i.tenant === tenant && i.service === 'billing');
        if (mine) {
          f.heldAt = now();
          f.idAfter = mine.id;
          s.id = mine.id;
          break;
        }
        await sleep(250);
      }
      f.end = f.heldAt ?? now();
      // A leave scheduled meanwhile waits for this: a SIGTERM straight after SIGCONT would
      // test something else.
      // Set by the Promise above, which runs its executor at once.
      thaw?.();
      // Nobody else takes this tenant in the soak: the woken client has no reason for a new id.
      if (f.idAfter !== undefined && f.idAfter !== f.idBefore)
        findings.push({
          // Set with idAfter.
          at: f.heldAt ?? now(),
          what: `${tenant} came back under a new intercept id (${f.idBefore} → ${f.idAfter}) although nobody took the tenant while it slept`,
        });
      if (f.heldAt === undefined) {
        findings.push({
          at: now(),
          what: `${tenant} did not hold its intercept again within ${LEASE_MS / 1000 + 15} s of waking${s.exit !== undefined ? ` (its process exited: ${s.exit})` : ''}`,
          detail: tailOf(s.proc),
        });
        event(`${tenant} does not hold its intercept again`);
      } else
        event(
          `${tenant} holds its intercept again after ${((f.heldAt - f.contAt) / 1000).toFixed(1)} s, ${f.idAfter === f.idBefore ? `same id ${f.idAfter}` : `under a NEW id ${f.idAfter} (was ${f.idBefore})`}`,
        );
    };

    // ------------------------------------------------------------ faults
    const faults: Fault[] = [];
    const flap = async (tenant: string, times: number, downMs: number, upMs: number) => {
      for (let i = 1; i <= times && !stopping; i++) {
        // A local service that is down is unreachable; it says nothing about the tunnel.
        const f: Fault = {
          kind: `flap ${tenant}`,
          tenants: new Set([tenant]),
          start: now(),
          codes: ['local-unreachable'],
        };
        faults.push(f);
        await laptopOf(tenant).command('down');
        event(`${tenant}'s local service stopped listening (flap ${i}/${times})`);
        await sleep(downMs);
        await laptopOf(tenant).command('up');
        f.end = now();
        event(`${tenant}'s local service listens again`);
        await sleep(upMs);
      }
    };
    /** The drain under load (a restart without --crash), for the judge and the report. */
    let drain: Drain | undefined;
    const restartReplica = async (r: Replica) => {
      const held = [...active.values()].filter((x) => x.tunnelReplica === r.n).map((x) => x.tenant);
      // A crash excuses the failures it causes; a drain is meant to cost nothing, so it excuses none.
      const f: Drain = {
        kind: `replica ${r.n} ${opts.crash ? 'crash' : 'drain'}`,
        tenants: new Set(INTERCEPTED),
        start: now(),
        excuses: opts.crash,
        replica: r.n,
        held,
      };
      faults.push(f);
      if (!opts.crash) drain = f;
      const { proc } = r;
      if (!proc) throw new Error(`replica ${r.n} was never started`);
      r.stopping = true;
      const exited = new Promise<ExitStatus>((res) =>
        proc.child.once('exit', (code, signal) => res(code ?? signal)),
      );
      r.killedAt = now();
      if (opts.crash) {
        proc.child.kill('SIGKILL');
        event(`replica ${r.n} killed (SIGKILL); the balancers send on what it refuses`);
      } else {
        // SIGTERM while in rotation, as a Kubernetes pod gets it: the load keeps going through
        // both replicas until the balancer's health check (every 100 ms) sees /healthz say
        // draining; meanwhile the other replica relays to the tunnels this one holds.
        proc.child.kill('SIGTERM');
        event(
          `replica ${r.n} stopped (SIGTERM) while in rotation, holding the tunnels of ${held.join(' ') || 'nobody'}`,
        );
        void (async () => {
          while (r.stopping && r.inRotation) {
            try {
              const res = await fetch(`http://127.0.0.1:${r.controlPort}/healthz`, {
                signal: AbortSignal.timeout(1000),
              });
              await res.arrayBuffer();
              if (res.status !== 200) break;
            } catch {
              break;
            }
            await sleep(100);
          }
          if (!r.stopping || !r.inRotation) return;
          r.inRotation = false;
          f.outAt = now();
          event(`replica ${r.n} out of rotation (its /healthz says draining)`);
        })();
      }
      const code = await Promise.race([exited, sleep(15_000).then(() => 'timeout')]);
      if (code === 'timeout') {
        findings.push({ at: now(), what: `replica ${r.n} did not exit within 15 s of its signal` });
        proc.child.kill('SIGKILL');
        await exited;
      }
      if (!opts.crash) r.inRotation = false;
      f.exitedAt = now();
      f.exit = code;
      for (const x of active.values()) if (x.tunnelReplica === r.n) x.tunnelReplica = undefined;
      event(`replica ${r.n} exited (${code})`);
      await sleep(opts['restart-down'] * 1000);
      r.stopping = false;
      await startReplica(r);
      r.upAt = now();
      f.end = r.upAt + 5000;
      event(`replica ${r.n} restarted (${r.serverId}, pid ${r.proc?.pid}), back in rotation`);
    };

    // ------------------------------------------------------------ trickle
    /**
     * Slow uploads on one tenant, as a slowloris would send them: each announces 1 MiB and
     * sends one byte every --trickle-interval seconds, all to replica 1 (the one not restarted),
     * while the load's tenants of the same service go on. Kelsingra may refuse or cut them (a
     * Kelsingra 408/413/429/503) or let them finish; other tenants must keep their answers.
     * Their outcomes are kept apart from the load's; those still open when the phase ends are
     * closed here ("held").
     */
    const trickles: Trickle[] = [];
    let trickleWindow: { start: number; replica: number; end?: number } | undefined;
    const judgeTrickle = (
      t: Trickle,
      head: Head,
      body: Buffer,
      settle: (outcome: string, detail: string) => void,
    ) => {
      t.status = head.status;
      const code = head.headers['x-kelsingra-error'];
      if (code) {
        let json: { error?: unknown } | undefined;
        try {
          json = JSON.parse(body.toString());
        } catch {}
        const ours = typeof json?.error === 'string' && json.error.startsWith('Kelsingra:');
        if (ours && [408, 413, 429, 503].includes(head.status))
          return settle('refused', `${head.status} ${code}`);
        return settle('other', `${head.status} ${code}${ours ? '' : " without Kelsingra's JSON body"}`);
      }
      const by = head.headers['x-served-by'];
      if (head.status < 300 && by) return settle('completed', `${head.status} from ${by}`);
      settle('other', `${head.status} from ${by ?? 'neither a service nor Kelsingra'}`);
    };
    const parseHead = (text: string): Head => {
      const [statusLine = '', ...lines] = text.split('\r\n');
      const headers: Record<string, string> = {};
      for (const l of lines) {
        const i = l.indexOf(':');
        if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
      }
      return { status: Number(statusLine.split(' ')[1]), headers };
    };
    const trickleOne = (i: number, r: Replica, endAt: number) =>
      new Promise<Trickle>((resolve) => {
        const t: Trickle = { i, t0: now(), sentBytes: 0 };
        trickles.push(t);
        const sock = net.connect(r.dataPort, '127.0.0.1');
        let head: Head | undefined;
        let buf = Buffer.alloc(0);
        let drip: NodeJS.Timeout | undefined;
        const settle = (outcome: string, detail: string) => {
          if (t.outcome) return;
          t.outcome = outcome;
          t.detail = detail;
          t.t1 = now();
          clearInterval(drip);
          clearTimeout(phaseEnd);
          sock.destroy();
          resolve(t);
        };
        const phaseEnd = setTimeout(
          () => settle('held', 'still open when the trickle ended'),
          Math.max(0, endAt - now()),
        );
        sock.on('connect', () => {
          sock.write(
            `POST /r HTTP/1.1\r\nhost: billing.dev.example.com\r\nx-tenant-id: ${TRICKLE_TENANT}\r\nx-soak-seq: trickle-${i}\r\ncontent-type: application/octet-stream\r\ncontent-length: ${TRICKLE_BYTES}\r\n\r\n`,
          );
          drip = setInterval(() => {
            if (t.sentBytes >= TRICKLE_BYTES) return;
            sock.write('x');
            t.sentBytes++;
          }, opts['trickle-interval'] * 1000);
        });
        sock.on('data', (c: Buffer) => {
          buf = Buffer.concat([buf, c]);
          if (!head) {
            const end = buf.indexOf('\r\n\r\n');
            if (end < 0) return;
            head = parseHead(buf.subarray(0, end).toString('latin1'));
            buf = buf.subarray(end + 4);
          }
          const len = Number(head.headers['content-length']);
          if (Number.isFinite(len) && buf.length >= len) judgeTrickle(t, head, buf.subarray(0, len), settle);
        });
        // Closed by the other end: with a head, whatever body came; without, cut unanswered.
        sock.on('end', () =>
          head ? judgeTrickle(t, head, buf, settle) : settle('cut', 'closed without an answer'),
        );
        sock.on('error', (err: NodeJS.ErrnoException) =>
          settle('cut', `${err.code ?? err.message}${head ? ` after a ${head.status} head` : ''}`),
        );
        sock.on('close', () => settle('cut', 'closed without an answer'));
      });
    const trickle = async () => {
      const r = replicaAt(0);
      const endAt = TRICKLE_END * D;
      trickleWindow = { start: now(), replica: r.n };
      event(
        `trickle starts: ${opts.trickle} slow uploads for tenant ${TRICKLE_TENANT} to replica ${r.n}, a byte every ${opts['trickle-interval']} s`,
      );
      const all: Promise<Trickle>[] = [];
      for (let i = 0; i < opts.trickle && !stopping && now() < endAt; i++) {
        all.push(trickleOne(i, r, endAt));
        if (i % 50 === 49) await sleep(100);
      }
      const outcomes = (await Promise.all(all)).map((t) => t.outcome);
      trickleWindow.end = now();
      event(
        `trickle ends: ${by(
          outcomes.map((o) => ({ o })),
          (x) => x.o,
        )
          .map(([o, n]) => `${n} ${o}`)
          .join(', ')}`,
      );
    };

    // ------------------------------------------------------------ load generator
    const pools = new Map<string, Pool>();
    const poolOf = (r: Replica) => {
      const { data } = r;
      if (!data) throw new Error(`replica ${r.n} has not started`);
      let p = pools.get(data);
      if (!p) {
        p = new Pool(data, {
          connections: opts.concurrency,
          keepAliveTimeout: 30_000,
          headersTimeout: TIMEOUT_MS,
          bodyTimeout: TIMEOUT_MS,
          connectTimeout: 5_000,
        });
        pools.set(data, p);
      }
      return p;
    };
    onCleanup(() => Promise.all([...pools.values()].map((p) => p.destroy())), { beforeStop: true });

    const records: Rec[] = [];
    let rr = 0;
    let stopping = false;
    const pending = new Set<Rec>();
    const bigBody = randomBytes(16 * 1024);

    const pickReplica = (exclude?: Replica) => {
      const live = replicas.filter((r) => r.inRotation && r !== exclude);
      return live.length ? live[rr++ % live.length] : undefined;
    };

    /**
     * A smuggling attempt goes out through node:http, which sends headers as given: undici
     * refuses a `Connection` header other than close or keep-alive. One connection each.
     */
    const rawRequest = (target: Replica, { method, path, headers }: RequestArgs) =>
      new Promise<Reply>((resolve, reject) => {
        const req = http.request(
          {
            host: '127.0.0.1',
            port: target.dataPort,
            method,
            path,
            headers,
            agent: false,
            signal: AbortSignal.timeout(TIMEOUT_MS + 1000),
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () =>
              resolve({
                statusCode: res.statusCode,
                headers: res.headers as Reply['headers'],
                body: Buffer.concat(chunks),
              }),
            );
            res.on('error', reject);
          },
        );
        req.on('error', reject);
        req.end();
      });
    const pooledRequest = async (
      target: Replica,
      { method, path, headers, body }: RequestArgs,
    ): Promise<Reply> => {
      const res = await poolOf(target).request({
        method,
        path,
        headers,
        body,
        signal: AbortSignal.timeout(TIMEOUT_MS + 1000),
      });
      return {
        statusCode: res.statusCode,
        headers: res.headers as Reply['headers'],
        body: Buffer.from(await res.body.arrayBuffer()),
      };
    };

    // A DOMException's code is a number (23 for AbortSignal.timeout's TimeoutError): its name says more.
    const errorCode = (err: ErrorLike) =>
      (typeof err.code === 'string' ? err.code : undefined) ?? err.cause?.code ?? err.name ?? 'error';

    const sendOne = async (seq: number) => {
      const roll = Math.random();
      const tenant =
        roll < 0.7
          ? INTERCEPTED[Math.floor(Math.random() * INTERCEPTED.length)]
          : roll < 0.95
            ? PLAIN[Math.floor(Math.random() * PLAIN.length)]
            : undefined;
      const smuggle =
        tenant && Math.random() < SMUGGLE_SHARE / 0.95
          ? SMUGGLES[Math.floor(Math.random() * SMUGGLES.length)]
          : undefined;
      const kind = smuggle ? 0.5 : Math.random();
      const method = kind < 0.2 ? 'POST' : 'GET';
      const size =
        method === 'POST' ? 1024 + Math.floor(Math.random() * 15 * 1024) : kind < 0.3 ? 64 * 1024 : 200;
      // One GET in ten waits 50–500 ms for its answer: there are always requests in flight when a fault strikes.
      const delay = method === 'GET' && kind > 0.9 ? 50 + Math.floor(Math.random() * 450) : 0;
      const rec: Rec = { seq, tenant, method, size, delay, t0: now(), replica: undefined, tries: 0, smuggle };
      records.push(rec);
      pending.add(rec);
      const headers: Record<string, string> = { host: 'billing.dev.example.com', 'x-soak-seq': String(seq) };
      if (tenant) headers['x-tenant-id'] = tenant;
      if (smuggle) {
        const others = [...INTERCEPTED, ...PLAIN].filter((t) => t !== tenant);
        // An index below others.length: always set.
        const smuggledTenant = others[Math.floor(Math.random() * others.length)] as string;
        rec.smuggledTenant = smuggledTenant;
        if (smuggle !== 'connection') headers.x_tenant_id = smuggledTenant;
        if (smuggle !== 'twin') headers.connection = 'x-tenant-id';
      }
      const send = smuggle ? rawRequest : pooledRequest;
      let target = pickReplica();
      try {
        for (;;) {
          if (!target) throw Object.assign(new Error('no replica in rotation'), { code: 'SOAK_NO_REPLICA' });
          rec.replica = target.n;
          rec.tries++;
          try {
            const res = await send(target, {
              method,
              path: method === 'POST' ? '/r' : `/r?size=${size}${delay ? `&delay=${delay}` : ''}`,
              headers:
                method === 'POST' ? { ...headers, 'content-type': 'application/octet-stream' } : headers,
              body: method === 'POST' ? bigBody.subarray(0, size) : undefined,
            });
            const body = res.body;
            rec.t1 = now();
            rec.status = res.statusCode;
            judgeResponse(rec, res.headers, body);
            break;
          } catch (err) {
            const code = errorCode(err as ErrorLike);
            // The connection was refused: nothing reached that replica. A load balancer tries another.
            if (code === 'ECONNREFUSED' && rec.tries === 1) {
              rec.lbRetry = true;
              target = pickReplica(target);
              continue;
            }
            throw err;
          }
        }
      } catch (err) {
        rec.t1 = now();
        const code = errorCode(err as ErrorLike);
        rec.outcome = 'unclean';
        rec.detail = /TIMEOUT|TimeoutError|AbortError|ABORT_ERR/i.test(code) ? `timeout (${code})` : code;
        rec.message = String((err as ErrorLike).message ?? err).slice(0, 300);
      } finally {
        pending.delete(rec);
      }
    };

    /** Who answered, and whether the response is whole; who *should* have answered is judged at the end. */
    const judgeResponse = (rec: Rec, headers: Reply['headers'], body: Buffer) => {
      const errorCode = headers['x-kelsingra-error'];
      if (errorCode !== undefined) {
        let json: { error?: unknown; code?: unknown } | undefined;
        try {
          json = JSON.parse(body.toString());
        } catch {}
        if (
          json &&
          typeof json.error === 'string' &&
          json.error.startsWith('Kelsingra:') &&
          json.code === errorCode
        ) {
          // A smuggling attempt refused for what it is: the right answer, not a failure.
          rec.outcome = rec.smuggle && rec.status === 400 ? 'refused' : 'clean';
          rec.detail = `${rec.status} ${errorCode}`;
          rec.message = json.error.slice(0, 300);
        } else {
          rec.outcome = 'unclean';
          rec.detail = `${rec.status} ${errorCode} without Kelsingra's JSON body`;
          rec.message = body.toString().slice(0, 300);
        }
        return;
      }
      const by = headers['x-served-by'];
      if ((rec.status !== undefined && rec.status >= 500) || by === undefined) {
        rec.outcome = 'unclean';
        rec.detail =
          by === undefined
            ? `${rec.status} from neither a service nor Kelsingra`
            : `${rec.status} from ${by}, not Kelsingra's`;
        rec.message = body.toString().slice(0, 300);
        return;
      }
      rec.by = by;
      const whole =
        rec.method === 'POST'
          ? (JSON.parse(body.toString()) as { bytes?: unknown }).bytes === rec.size
          : body.length === rec.size;
      // Every tenant the service believes it serves, read plainly and CGI-style.
      const believed = [headers['x-soak-tenant'] ?? '', headers['x-soak-cgi-tenant'] ?? '']
        .flatMap((v) => v.split(','))
        .map((v) => v.trim())
        .filter(Boolean);
      const foreign = [...new Set(believed.filter((t) => t !== rec.tenant))];
      const party = by === 'base' ? 'base' : 'a laptop';
      const smuggled = rec.smuggle ? ` (smuggled: ${rec.smuggle})` : '';
      if (headers['x-soak-seq'] !== String(rec.seq)) {
        rec.outcome = 'misrouted';
        rec.detail = `answer for another request (seq ${headers['x-soak-seq']}, tenant ${headers['x-soak-tenant']})`;
      } else if (foreign.length) {
        rec.outcome = 'cross-tenant';
        rec.detail = `${party} served it as another tenant${smuggled}`;
        rec.message = `${by} served ${rec.tenant ?? '(none)'} as ${foreign.join(' and ')}`;
      } else if ((headers['x-soak-tenant'] ?? '') !== (rec.tenant ?? '')) {
        rec.outcome = 'misrouted';
        rec.detail = `${party} saw the tenant header missing or altered${smuggled}`;
        rec.message = `${by} saw x-tenant-id "${headers['x-soak-tenant'] ?? ''}" for ${rec.tenant}`;
      } else if (!whole) {
        rec.outcome = 'unclean';
        rec.detail = 'body of the wrong length';
        rec.message = `${body.length} bytes (content-length ${headers['content-length']}), ${rec.size} asked for`;
      } else rec.outcome = 'answered';
    };

    // Paced workers: request n may start at T0 + n / rate, and at most `concurrency` are in flight.
    let seq = 0;
    const worker = async () => {
      while (!stopping) {
        const n = seq++;
        const due = (n * 1000) / opts.rate;
        const wait = due - now();
        if (wait > 0) await sleep(wait);
        if (stopping || now() >= D) break;
        await sendOne(n);
      }
    };

    // ------------------------------------------------------------ run
    log('\nTimeline (seconds from the start of the load):');
    T0 = performance.now();
    await joinTenant('t1');
    await joinTenant('t2');
    // The load's clock starts now; the joins above show as negative times.
    const shift = performance.now() - T0;
    T0 += shift;
    for (const e of timeline) e.at -= shift;
    for (const s of sessions) {
      s.joinStart -= shift;
      // A join that failed has no liveAt: NaN then, which overlaps nothing.
      s.liveAt = Number(s.liveAt) - shift;
    }
    loadStarted = true;
    event(`load starts: ≤ ${opts.rate} req/s, ≤ ${opts.concurrency} in flight, to both replicas' data ports`);

    const tasks: Promise<void>[] = [];
    const at = (fraction: number, what: () => Promise<unknown>) => {
      tasks.push(
        (async () => {
          const wait = fraction * D - now();
          if (wait > 0) await sleep(wait);
          if (stopping) return;
          await what();
        })().catch((err: Error) => {
          findings.push({ at: now(), what: `scheduled step failed: ${err.message}`, detail: err.stack });
          event(`scheduled step failed: ${err.message}`);
        }),
      );
    };
    at(0.08, () => joinTenant('t3'));
    if (!opts['no-trickle']) at(0.1, trickle);
    at(0.15, () => flap('t1', 3, 2000, 2000));
    at(0.22, () => joinTenant('t4'));
    at(0.25, async () => {
      while (!stopping && now() < 0.92 * D) {
        await joinTenant('t5');
        await sleep(4000);
        await leaveTenant('t5');
        await sleep(2000);
      }
    });
    if (!opts['no-restart']) at(0.4, () => restartReplica(replicaAt(1)));
    if (!opts['no-freeze']) at(0.45, () => freeze('t4'));
    at(0.55, () => leaveTenant('t2'));
    at(0.62, () => vanish('t3'));
    at(0.78, () => joinTenant('t2'));
    at(0.88, () => leaveTenant('t4'));
    if (INJECT.includes('steal')) {
      // Self-check: t4's intercept deleted behind its client's back; base answers t4 while this
      // script believes the intercept is up (misrouted), and the client exits by itself (finding).
      at(0.3, async () => {
        const s = active.get('t4');
        if (!s) return;
        await fetch(`${controlUrl}/v1/intercepts/${s.id}`, {
          method: 'DELETE',
          headers: { authorization: `Bearer ${TOKEN}` },
        });
        event(`self-check: t4's intercept deleted behind its client's back`);
      });
    }

    const workers = Array.from({ length: opts.concurrency }, worker);
    await Promise.all(workers);
    const loadEnd = event(`load stops: ${records.length} requests sent, ${pending.size} still in flight`);
    const settleBy = Date.now() + TIMEOUT_MS + 5000;
    while (pending.size && Date.now() < settleBy) await sleep(50);
    stopping = true;
    const lost = [...pending];
    for (const rec of lost) {
      rec.outcome = 'lost';
      rec.detail = 'no answer and no error';
    }
    event(`in-flight requests settled${lost.length ? ` (${lost.length} never did)` : ''}`);
    await Promise.all(tasks);
    for (const t of [...active.keys()]) await leaveTenant(t);

    // ------------------------------------------------------------ judge
    finished = true;
    // Error-level log lines of every replica process, the restarted one's too.
    for (const { n, proc, errors, lastErrors } of replicaProcs) {
      if (errors)
        findings.push({
          at: now(),
          what: `replica ${n} (pid ${proc.pid}) logged ${errors} lines at level error or fatal`,
          detail: lastErrors.join('\n'),
        });
    }
    // An unset time is NaN here, which compares false as undefined did.
    const within = (x: number | undefined, a: number, b: number | undefined) =>
      (x ?? Number.NaN) >= a && (x ?? Number.NaN) <= (b ?? Number.NaN);
    const overlaps = (rec: { t0: number; t1?: number | undefined }, a: number, b: number) =>
      rec.t0 <= b && (rec.t1 ?? Number.NaN) >= a;
    const sessionsOf = (tenant: string) => sessions.filter((s) => s.tenant === tenant);
    const end = (s: Session) => s.goneAt ?? Number.POSITIVE_INFINITY;
    for (const rec of records) {
      if (rec.outcome === 'lost') continue;
      const mine = rec.tenant ? sessionsOf(rec.tenant) : [];
      // Around a join or a leave, either target may answer; a tenant's intercept counts as up
      // from PROPAGATION_GRACE_MS after it was live until its client started leaving.
      // A sleeping laptop's tenant may be answered by base once its lease lapsed, and by its
      // laptop again once it woke.
      const transition = mine.some(
        (s) =>
          overlaps(rec, s.joinStart, (s.liveAt ?? s.failedAt ?? Number.NaN) + PROPAGATION_GRACE_MS) ||
          (s.leaveStart !== undefined && overlaps(rec, s.leaveStart, end(s) + PROPAGATION_GRACE_MS)) ||
          s.freezes.some((f) => overlaps(rec, f.start, (f.end ?? now()) + PROPAGATION_GRACE_MS)),
      );
      // The same, for the report: a vanished laptop is a fault of its own, not a leave.
      const joiningOrLeaving = mine.some(
        (s) =>
          overlaps(rec, s.joinStart, (s.liveAt ?? s.failedAt ?? Number.NaN) + PROPAGATION_GRACE_MS) ||
          (s.leaveStart !== undefined &&
            s.how !== 'vanish' &&
            overlaps(rec, s.leaveStart, end(s) + PROPAGATION_GRACE_MS)),
      );
      const up = mine.some(
        (s) =>
          s.liveAt !== undefined &&
          rec.t0 >= s.liveAt + PROPAGATION_GRACE_MS &&
          (rec.t1 ?? Number.NaN) <= (s.leaveStart ?? Number.POSITIVE_INFINITY),
      );
      if (rec.outcome === 'answered') {
        if (rec.by === 'base') {
          if (up && !transition) {
            rec.outcome = 'misrouted';
            rec.detail = `base answered tenant ${rec.tenant} while its intercept was up`;
          }
        } else if (rec.by !== `laptop-${rec.tenant}`) {
          rec.outcome = 'misrouted';
          rec.detail = `${rec.by} answered tenant ${rec.tenant ?? '(none)'}`;
        } else if (!mine.some((s) => overlaps(rec, s.joinStart, end(s) + PROPAGATION_GRACE_MS))) {
          rec.outcome = 'misrouted';
          rec.detail = `${rec.by} answered tenant ${rec.tenant} while it had no intercept`;
        }
      } else if (rec.outcome === 'clean') {
        const hit = (f: Fault) =>
          rec.tenant &&
          f.tenants.has(rec.tenant) &&
          (!f.codes || f.codes.some((c) => rec.detail?.endsWith(` ${c}`))) &&
          overlaps(rec, f.start, (f.end ?? now()) + PROPAGATION_GRACE_MS);
        // Every explanation in progress: the tenant's own faults (a flap, a vanished laptop), its
        // join or leave, then faults of every intercepted tenant (the restart).
        const excuses = faults.filter((f) => f.excuses !== false);
        const why = [
          ...excuses.filter((f) => f.tenants.size === 1 && hit(f)).map((f) => f.kind),
          ...(joiningOrLeaving ? [`${rec.tenant} joining or leaving`] : []),
          ...excuses.filter((f) => f.tenants.size > 1 && hit(f)).map((f) => f.kind),
        ];
        rec.during = why.length ? [...new Set(why)].join(' + ') : undefined;
        // Nothing else explains it and a drain was under way: the drain lost it.
        if (!rec.during && drain && overlaps(rec, drain.start, (drain.end ?? now()) + PROPAGATION_GRACE_MS))
          rec.outcome = 'drain';
      } else if (rec.outcome === 'unclean' && opts.crash) {
        // Cut at the socket (not a timeout, not a bad answer) by the crash: in flight at the kill
        // (sent to the killed replica, or relayed to it with the response already started), or
        // sent to it on a keep-alive connection not yet known dead before it was back.
        const r = replicaAt(1);
        const socketError = /^(UND_ERR_SOCKET|ECONNRESET|EPIPE|UND_ERR_RES_CONTENT_LENGTH_MISMATCH)$/.test(
          String(rec.detail),
        );
        const inFlightAtKill = within(r.killedAt, rec.t0, rec.t1);
        const sentToTheDead =
          rec.replica === r.n && rec.t0 >= (r.killedAt ?? Number.NaN) && rec.t0 <= (r.upAt ?? now());
        if (socketError && (inFlightAtKill || sentToTheDead)) rec.outcome = 'cut';
      }
    }

    // ------------------------------------------------------------ report
    const count = (pred: (r: Rec) => unknown) => records.filter(pred).length;
    const sent = records.length;
    const answered = records.filter((r) => r.outcome === 'answered');
    const clean = records.filter((r) => r.outcome === 'clean');
    const unclean = records.filter((r) => r.outcome === 'unclean');
    const misrouted = records.filter((r) => r.outcome === 'misrouted');
    const cut = records.filter((r) => r.outcome === 'cut');
    const crossTenant = records.filter((r) => r.outcome === 'cross-tenant');
    const refused = records.filter((r) => r.outcome === 'refused');
    const drainFailed = records.filter((r) => r.outcome === 'drain');
    const unexplained = clean.filter((r) => !r.during);
    // Requests the services answer at once; the delayed ones (one GET in ten) only measure their delay.
    const latAnswered = answered.filter((r) => !r.delay).map((r) => (r.t1 ?? Number.NaN) - r.t0);
    const latAll = records
      .filter((r) => r.t1 !== undefined && !r.delay)
      .map((r) => (r.t1 ?? Number.NaN) - r.t0);
    const seconds = opts.duration;
    const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
    const outcomesOf = (list: Rec[]) =>
      by(list, (x) => (x.outcome === 'answered' ? `answered by ${x.by}` : `${x.outcome} ${x.detail}`))
        .map(([o, n]) => `${n} ${o}`)
        .join(', ') || 'none';

    /** The trickle, the drain, the sleeping laptop and the smuggling attempts, each on its own. */
    const phases: Record<string, unknown> = {};
    const reportPhases = () => {
      if (trickleWindow) {
        const tw = trickleWindow;
        const te = tw.end ?? now();
        // Every request of the load counts: the trickle's tenant is not among them.
        const served = (x: Rec) => x.outcome !== 'unclean' && x.outcome !== 'lost';
        const rateIn = ([a, b]: [number, number], pred: (x: Rec) => boolean) =>
          count((x) => x.t0 >= a && x.t0 < b && pred(x)) / Math.max(0.001, (b - a) / 1000);
        const p99In = ([a, b]: [number, number]) =>
          percentile(
            answered.filter((x) => x.t0 >= a && x.t0 < b && !x.delay).map((x) => (x.t1 ?? Number.NaN) - x.t0),
            99,
          );
        // Before: from 1 s into the load to the trickle's start; during: from 2 s after it (the
        // uploads are all open by then) to its end.
        const before: [number, number] = [1000, tw.start];
        const during: [number, number] = [tw.start + 2000, te];
        const t: {
          uploads: number;
          outcomes: Record<string, number>;
          sentPerSecBefore: number;
          sentPerSecDuring: number;
          servedPerSecBefore: number;
          servedPerSecDuring: number;
          answeredP99MsBefore: number;
          answeredP99MsDuring: number;
          held?: number | undefined;
        } = {
          uploads: trickles.length,
          outcomes: Object.fromEntries(by(trickles, (x) => `${x.outcome}: ${x.detail}`)),
          sentPerSecBefore: rateIn(before, () => true),
          sentPerSecDuring: rateIn(during, () => true),
          servedPerSecBefore: rateIn(before, served),
          servedPerSecDuring: rateIn(during, served),
          answeredP99MsBefore: p99In(before),
          answeredP99MsDuring: p99In(during),
        };
        // Above --rate, the window before was catching up on a slow start: the rate is the mark then.
        const mark = Math.min(t.servedPerSecBefore, opts.rate);
        t.held = mark ? t.servedPerSecDuring / mark : undefined;
        phases.trickle = t;
        log(
          `\nTrickle: ${trickles.length} slow uploads for ${TRICKLE_TENANT} to replica ${tw.replica} (1 MiB announced, a byte every ${opts['trickle-interval']} s), ${fmtT(tw.start)} – ${fmtT(te)}:`,
        );
        log(
          table([
            ['outcome', 'uploads', 'median time to it'],
            ...by(trickles, (x) => `${x.outcome}: ${x.detail}`).map(([o, n]) => {
              const ts = trickles
                .filter((x) => `${x.outcome}: ${x.detail}` === o)
                .map((x) => (x.t1 ?? Number.NaN) - x.t0);
              return [o, n, secs(percentile(ts, 50))];
            }),
          ]),
        );
        log(
          `The load's tenants during the trickle: ${fmt(t.servedPerSecDuring, 0)} req/s answered or refused by Kelsingra (of ${fmt(t.sentPerSecDuring, 0)} sent), ${fmt(t.servedPerSecBefore, 0)} (of ${fmt(t.sentPerSecBefore, 0)}) before it: held at ${t.held === undefined ? '?' : `${fmt(t.held * 100, 0)} %`}; answered p99 ${fmt(t.answeredP99MsDuring, 1)} ms, ${fmt(t.answeredP99MsBefore, 1)} ms before.`,
        );
        // The bench's goal is ≤ 5 % lost; a fifth leaves room for two shared cores.
        if (t.held !== undefined && t.held < 0.8)
          findings.push({
            at: tw.start,
            what: `the load's rate fell to ${fmt(t.held * 100, 0)} % of what it was before the trickle`,
          });
      }
      if (drain) {
        const { replica, held } = drain;
        const r = replicas.find((x) => x.n === replica);
        if (!r) throw new Error(`no replica ${replica}`);
        const w: [number, number] = [drain.start, drain.exitedAt ?? now()];
        const onIt = records.filter((x) => x.replica === r.n && overlaps(x, ...w));
        const relayed = records.filter(
          (x) => x.replica !== r.n && x.tenant !== undefined && held.includes(x.tenant) && overlaps(x, ...w),
        );
        phases.drain = {
          heldTunnelsOf: drain.held,
          sigtermAt: drain.start,
          outOfRotationAt: drain.outAt,
          exitedAt: drain.exitedAt,
          exit: drain.exit,
          upAt: r.upAt,
          onDrainingReplica: Object.fromEntries(by(onIt, (x) => x.outcome)),
          relayedFromOther: Object.fromEntries(by(relayed, (x) => x.outcome)),
          failed: drainFailed.length,
        };
        log(
          `\nDrain under load: replica ${r.n} got SIGTERM at ${fmtT(drain.start)} holding the tunnels of ${drain.held.join(' ') || 'nobody'}, left rotation ${drain.outAt === undefined ? 'when it exited' : `at ${fmtT(drain.outAt)}`}, exited (${drain.exit}) at ${fmtT(w[1])}, back ${r.upAt === undefined ? 'never' : `at ${fmtT(r.upAt)}`}.`,
        );
        log(`  Sent to replica ${r.n} while it drained: ${onIt.length} (${outcomesOf(onIt)}).`);
        log(
          `  For the tenants of its tunnels through the other replica meanwhile (relayed to it, or to the moved tunnel): ${relayed.length} (${outcomesOf(relayed)}).`,
        );
        log(
          `  Failed from SIGTERM to 5 s after the restart, with nothing but the drain to explain it: ${drainFailed.length}.`,
        );
      }
      for (const f of freezes) {
        const asleep: [number, number] = [f.start, f.contAt ?? now()];
        const mine = records.filter((x) => x.tenant === f.tenant && overlaps(x, f.start, f.end ?? now()));
        const longest = Math.max(
          0,
          ...records
            .filter((x) => x.tenant === f.tenant && !x.delay && overlaps(x, ...asleep))
            .map((x) => (x.t1 ?? Number.NaN) - x.t0),
        );
        phases.freeze = {
          tenant: f.tenant,
          stoppedAt: f.start,
          continuedAt: f.contAt,
          lapsedAt: f.lapsedAt,
          heldAgainAt: f.heldAt,
          idBefore: f.idBefore,
          idAfter: f.idAfter,
          requests: Object.fromEntries(
            by(mine, (x) => (x.outcome === 'answered' ? `answered by ${x.by}` : `${x.outcome} ${x.detail}`)),
          ),
          longestMs: longest,
        };
        log(
          `\n${f.tenant}'s laptop asleep (SIGSTOP) ${fmtT(f.start)} – ${fmtT(asleep[1])}, lease ${LEASE_MS / 1000} s: its intercept ${f.lapsedAt === undefined ? 'was not seen to lapse' : `lapsed ${secs(f.lapsedAt - f.start)} in`}; after SIGCONT ${f.heldAt === undefined ? 'it did NOT hold its intercept again' : `it held it again ${secs(f.heldAt - asleep[1])} later, ${f.idAfter === f.idBefore ? 'same id' : `under a NEW id (${f.idBefore} → ${f.idAfter})`}`}.`,
        );
        log(
          `  Its requests until then: ${mine.length} (${outcomesOf(mine)}); the longest while asleep took ${secs(longest)} (request timeout ${opts.timeout} s).`,
        );
      }
      const smuggled = records.filter((x) => x.smuggle);
      if (smuggled.length) {
        log(
          '\nSmuggling attempts (x_tenant_id twin of another tenant, Connection: x-tenant-id), by outcome:',
        );
        log(
          table([
            ['attempt', 'requests', 'refused (400)', 'answered as routed', 'cross-tenant', 'other'],
            ...SMUGGLES.map((v) => {
              const list = smuggled.filter((x) => x.smuggle === v);
              const n = (o: string) => list.filter((x) => x.outcome === o).length;
              return [
                v,
                list.length,
                n('refused'),
                n('answered'),
                n('cross-tenant'),
                list.length - n('refused') - n('answered') - n('cross-tenant'),
              ];
            }),
          ]),
        );
      }
    };

    log(`\nRequests (${fmt(sent / seconds, 0)} req/s over ${seconds} s):`);
    log(
      table([
        [
          'sent',
          'answered',
          'failed clean (Kelsingra 5xx)',
          'failed unclean',
          'lost',
          'misrouted',
          'cross-tenant',
          'smuggling refused (400)',
          ...(drain ? ['failed during the drain'] : []),
          ...(opts.crash ? ['cut by the crash'] : []),
        ],
        [
          sent,
          answered.length,
          clean.length,
          unclean.length,
          lost.length,
          misrouted.length,
          crossTenant.length,
          refused.length,
          ...(drain ? [drainFailed.length] : []),
          ...(opts.crash ? [cut.length] : []),
        ],
      ]),
    );
    log('\nAnswered, by whom:');
    log(
      table([
        ['answered by', 'requests', 'tenants asked'],
        ...by(answered, (r) => r.by).map(([who, n]) => [
          who,
          n,
          by(
            answered.filter((r) => r.by === who),
            (r) => r.tenant ?? '(none)',
          )
            .map(([t]) => t)
            .sort()
            .join(' '),
        ]),
      ]),
    );
    if (clean.length) {
      log('\nFailed clean, by status and code, and the fault in progress:');
      const rows: (string | number | undefined)[][] = [
        ['status code', 'during', 'requests', 'tenants', 'first – last failure'],
      ];
      for (const [d] of by(clean, (r) => r.detail)) {
        const ofCode = clean.filter((r) => r.detail === d);
        for (const [w, n] of by(ofCode, (r) => r.during ?? 'NO FAULT IN PROGRESS')) {
          const list = ofCode.filter((r) => (r.during ?? 'NO FAULT IN PROGRESS') === w);
          rows.push([
            d,
            w,
            n,
            [...new Set(list.map((r) => r.tenant ?? '(none)'))].sort().join(' '),
            `${fmtT(Math.min(...list.map((r) => r.t0)))} – ${fmtT(Math.max(...list.map((r) => r.t1 ?? Number.NaN)))}`,
          ]);
        }
      }
      log(table(rows));
    }
    for (const [label, list] of [
      ['Failed unclean', unclean],
      ['Misrouted', misrouted],
      ['Cross-tenant (a service acted for another tenant than the one routed)', crossTenant],
      ['Failed during the drain (a Kelsingra error nothing but the drain explains)', drainFailed],
      [
        'Cut by the crash (in flight at the kill, or sent to the dead replica on a stale keep-alive connection)',
        cut,
      ],
      ['Lost', lost],
    ] as const) {
      if (!list.length) continue;
      log(`\n${label}:`);
      log(
        table([
          ['what', 'requests', 'first (time, tenant, replica, message)'],
          ...by(list, (r) => r.detail).map(([d, n]) => {
            const first = list.find((r) => r.detail === d);
            if (!first) throw new Error(`no request with the detail ${d}`);
            return [
              d,
              n,
              `${fmtT(first.t0)} ${first.tenant ?? '(none)'} r${first.replica} ${first.message ?? ''}`.slice(
                0,
                160,
              ),
            ];
          }),
        ]),
      );
    }
    log(
      `\nLatency (ms; requests without a service delay): answered p50 ${fmt(percentile(latAnswered, 50), 1)}, p99 ${fmt(percentile(latAnswered, 99), 1)}, max ${fmt(Math.max(...latAnswered), 1)}; every request p50 ${fmt(percentile(latAll, 50), 1)}, p99 ${fmt(percentile(latAll, 99), 1)}, max ${fmt(Math.max(...latAll), 1)}`,
    );
    log(
      `Per replica (first try): ${replicas.map((r) => `replica ${r.n} ${count((x) => x.replica === r.n && !x.lbRetry)}`).join(', ')}; sent on to the other replica after a refused connection: ${count((x) => x.lbRetry)}`,
    );
    if (unexplained.length)
      log(
        `Clean failures with no fault in progress for their tenant: ${unexplained.length} (see the table above)`,
      );
    reportPhases();
    const accounted =
      answered.length +
      clean.length +
      unclean.length +
      misrouted.length +
      cut.length +
      lost.length +
      crossTenant.length +
      refused.length +
      drainFailed.length;
    if (accounted !== sent) {
      findings.push({ at: now(), what: `bookkeeping: ${sent} requests sent but ${accounted} classified` });
    }
    if (findings.length) {
      findings.sort((a, b) => a.at - b.at);
      log('\nFindings:');
      for (const f of findings)
        log(`  ${fmtT(f.at)}  ${f.what}${f.detail ? `\n${f.detail.replace(/^/gm, '      ')}` : ''}`);
    }
    const failed =
      lost.length +
      unclean.length +
      misrouted.length +
      crossTenant.length +
      drainFailed.length +
      findings.length;
    log(
      `\nVerdict: ${failed ? 'FAILED' : 'passed'} — ${lost.length} lost, ${unclean.length} failed uncleanly, ${misrouted.length} misrouted, ${crossTenant.length} cross-tenant, ${drainFailed.length} failed during the drain, ${findings.length} client/process findings; ${clean.length} clean Kelsingra errors (${unexplained.length} with no fault in progress). ${os.cpus().length} cores, load average ${os.loadavg()[0]?.toFixed(2)}, ${fmt((Date.now() - t0Wall) / 1000, 0)} s in all.`,
    );

    Object.assign(results, {
      sent,
      answered: answered.length,
      answeredBy: Object.fromEntries(by(answered, (r) => r.by)),
      failedClean: Object.fromEntries(by(clean, (r) => r.detail)),
      failedCleanUnexplained: unexplained.length,
      failedUnclean: Object.fromEntries(by(unclean, (r) => r.detail)),
      misrouted: Object.fromEntries(by(misrouted, (r) => r.detail)),
      crossTenant: crossTenant.length,
      crossTenantBy: Object.fromEntries(by(crossTenant, (r) => r.detail)),
      smuggling: Object.fromEntries(
        SMUGGLES.map((v) => [
          v,
          Object.fromEntries(
            by(
              records.filter((r) => r.smuggle === v),
              (r) => r.outcome,
            ),
          ),
        ]),
      ),
      failedDuringDrain: drainFailed.length,
      phases,
      cut: cut.length,
      lost: lost.length,
      latencyMs: {
        answered: {
          p50: percentile(latAnswered, 50),
          p99: percentile(latAnswered, 99),
          max: Math.max(...latAnswered),
        },
        all: { p50: percentile(latAll, 50), p99: percentile(latAll, 99), max: Math.max(...latAll) },
      },
      lbRetries: count((x) => x.lbRetry),
      timeline,
      findings,
      loadEndMs: loadEnd,
      seconds: (Date.now() - t0Wall) / 1000,
      samples: [...crossTenant, ...drainFailed, ...unclean, ...misrouted, ...lost, ...unexplained].slice(
        0,
        200,
      ),
    });
    if (opts.json) writeFileSync(opts.json, `${JSON.stringify(results, null, 2)}\n`);
    if (opts.logs) {
      // The last 32–64 KiB of each process's output (the replicas' JSON logs, the clients' events).
      mkdirSync(opts.logs, { recursive: true });
      const procs = [
        ...replicaProcs.map(({ n, proc }): [string, Proc] => [`replica-${n}-${proc.pid}`, proc]),
        ...sessions
          .filter((x): x is LiveSession => x.proc !== undefined)
          .map((x): [string, Proc] => [`intercept-${x.tenant}-${x.proc.pid}`, x.proc]),
      ];
      for (const [name, proc] of procs) writeFileSync(join(opts.logs, `${name}.log`), proc.output());
      log(`Process output in ${opts.logs}/`);
    }
    exitCode = failed ? 1 : 0;
  } catch (err) {
    exitCode = reportFailure(err);
  }
  await cleanupAndExit(exitCode);
}
