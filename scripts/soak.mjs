#!/usr/bin/env node
/**
 * Soak test: Kelsingra under steady load while clients come and go, a replica restarts and a
 * local service flaps (see docs/BENCHMARKS.md, "Soak"). Run it through `scripts/soak` or
 * `npm run soak`, which build first:
 *
 *   scripts/soak                         # 60 s of load, about 75 s in all (plus the build)
 *   scripts/soak --duration 30 --rate 100 --json soak.json
 *   scripts/soak --crash                 # replica 2 is killed with SIGKILL, not drained
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
 *     whenever a fault strikes.
 *
 * Schedule, as fractions of --duration (D), after t1 and t2 joined before the load starts:
 *   0.08 D t3 joins · 0.15 D t1's local service starts flapping (stops listening and drops its
 *   connections for 2 s, listens again for 2 s, 3 times) · 0.22 D t4 joins · 0.25–0.92 D t5 joins
 *   and leaves in a loop (4 s in, 2 s out) · 0.40 D replica 2 restarts: out of rotation, SIGTERM
 *   1 s later (--crash: SIGKILL at once, left in rotation), started again --restart-down seconds
 *   after it exited · 0.55 D t2 leaves (SIGTERM to its CLI) · 0.62 D t3's laptop vanishes
 *   (SIGKILL; its lease lapses) · 0.78 D t2 joins again · 0.88 D t4 leaves · end: the load stops,
 *   in-flight requests settle, everyone leaves.
 *
 * Every request carries a sequence number that the answering service echoes with the tenant it
 * was asked for; each request is classified:
 *   - answered: from one of the services, whole (body length), its own answer (sequence number,
 *     tenant) and from the right party: base for tenants nobody intercepts, the tenant's own
 *     laptop while its intercept is up (either one within 1.5 s of a join or leave); anything
 *     else is "misrouted";
 *   - failed clean: a response made by Kelsingra (`x-kelsingra-error` header and a JSON body whose
 *     `error` starts with "Kelsingra:"), counted by status and code, with the faults in progress
 *     for that tenant (or "NO FAULT IN PROGRESS": worth a look);
 *   - failed unclean: connection reset or closed, timeout, a truncated body, a 5xx that is not
 *     Kelsingra's;
 *   - lost: still without any outcome once the load stopped and --timeout + 5 s passed.
 * The run fails (exit 1) if any request was lost, failed uncleanly or was misrouted, or if a
 * client could not join or leave, exited by itself, or a replica did not stop. With --crash,
 * requests cut at the socket because of the kill (in flight at that moment, or sent to the dead
 * replica on a keep-alive connection not yet seen closed) are reported apart ("cut by the
 * crash": no software on that replica can answer them) and do not fail the run.
 *
 * KELSINGRA_SOAK_INJECT=hang,reset,plain500,wrong,cut,steal is a self-check of the classifier,
 * not a soak: laptop-t2 misbehaves on some GETs and t4's intercept is deleted behind its back;
 * each shows up in the report as what it is (504/502 clean, unclean, misrouted, a finding).
 *
 * Options: --duration S (60), --rate N (150 requests/s at most), --concurrency N (32 in flight at
 * most), --timeout S (10, per request), --lease-ttl S (10), --restart-down S (3), --crash,
 * --json FILE (every figure, and the timeline), --logs DIR (the end of each replica's and
 * client's output). Every process is stopped on exit, Ctrl-C or
 * failure; the database is dropped.
 */
import { spawn } from 'node:child_process';
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
} from './bench/lib.mjs';

const SELF = import.meta.filename;
const BIN = join(ROOT, 'bin', 'run.js');
const NODE = process.execPath;

// ==================================================================== service role (a child)

/**
 * `node soak.mjs service <label> <port>`: one HTTP service on 127.0.0.1. GET /r?size=N[&delay=MS]
 * answers N bytes (MS milliseconds later); POST /r answers JSON with the byte count it read.
 * Every answer says who served it (x-served-by), echoes the request's x-soak-seq and the tenant
 * it was asked for. IPC messages {cmd:'down'} / {cmd:'up'} stop listening (idle connections are
 * closed at once, busy ones 200 ms later) and listen again on the same port: the flapping local
 * service.
 */
async function serviceMain(label, port) {
  const chunk = Buffer.alloc(16 * 1024, 'k');
  // Self-check of the classifier (KELSINGRA_SOAK_INJECT, see main): laptop-t2 misbehaves on
  // one GET in 50 per listed fault.
  const inject =
    label === 'laptop-t2' ? (process.env.KELSINGRA_SOAK_INJECT ?? '').split(',').filter(Boolean) : [];
  const server = http.createServer({ keepAliveTimeout: 30_000 }, (req, res) => {
    const head = {
      'x-served-by': label,
      'x-soak-seq': String(req.headers['x-soak-seq'] ?? ''),
      'x-soak-tenant': String(req.headers['x-tenant-id'] ?? ''),
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
      req.on('data', (c) => (bytes += c.length));
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
  const answer = (res, head, size) => {
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
    new Promise((res, rej) => {
      server.once('error', rej);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', rej);
        res();
      });
    });
  await listen();
  process.on('message', async (m) => {
    try {
      if (m.cmd === 'down') {
        await new Promise((r) => {
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
  await serviceMain(process.argv[3], Number(process.argv[4]));
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
      json: '',
      logs: '',
    },
    'scripts/soak [--duration S] [--rate N] [--concurrency N] [--timeout S] [--lease-ttl S] [--restart-down S] [--crash] [--json FILE] [--logs DIR]',
  );
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
  /**
   * Self-check of the classifier, never for a real run: KELSINGRA_SOAK_INJECT=hang,reset,plain500,wrong,cut
   * makes laptop-t2 misbehave on one GET in 50 per fault listed; steal deletes t4's intercept
   * behind its client's back. Each must show up in the report as what it is.
   */
  const INJECT = (process.env.KELSINGRA_SOAK_INJECT ?? '').split(',').filter(Boolean);

  let T0 = performance.now();
  const now = () => performance.now() - T0;
  const timeline = [];
  /** Before the load starts (the first joins) lines say "setup"; their times end up negative. */
  let loadStarted = false;
  const event = (what, extra = {}) => {
    const at = now();
    timeline.push({ at, what, ...extra });
    log(`  ${loadStarted ? fmtT(at) : '  setup'}  ${what}`);
    return at;
  };
  const fmtT = (ms) => `${ms < 0 ? '-' : '+'}${(Math.abs(ms) / 1000).toFixed(1).padStart(5)} s`;

  const t0Wall = Date.now();
  const results = { opts, ...machineInfo() };
  let exitCode = 0;
  /** What went wrong besides requests: clients or replicas that exited by themselves, failed joins… */
  const findings = [];
  /** Ctrl-C or SIGTERM: bench/lib.mjs stops everything; processes exiting then are no finding. */
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
    const startService = async (label) => {
      const port = await freePort();
      const child = spawn(NODE, [SELF, 'service', label, String(port)], {
        cwd: ROOT,
        stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      });
      let output = '';
      child.stdout.on('data', (c) => (output = (output + c).slice(-8192)));
      child.stderr.on('data', (c) => (output = (output + c).slice(-8192)));
      const proc = { name: `${label} service`, child, pid: child.pid, output: () => output };
      children.add(proc);
      child.once('exit', () => children.delete(proc));
      await new Promise((res, rej) => {
        const t = setTimeout(() => rej(new Error(`${label} service did not start:\n${output}`)), 15_000);
        child.once('message', () => {
          clearTimeout(t);
          res();
        });
        child.once('exit', (code) => rej(new Error(`${label} service exited (${code}):\n${output}`)));
      });
      const command = (cmd) =>
        new Promise((res, rej) => {
          child.once('message', (m) => (m.error ? rej(new Error(m.error)) : res()));
          child.send({ cmd });
        });
      return { label, port, url: `http://127.0.0.1:${port}`, proc, command };
    };
    const base = await startService('base');
    const laptops = {};
    for (const t of INTERCEPTED) laptops[t] = await startService(`laptop-${t}`);
    log(
      `  base service ${base.url}; laptop services ${INTERCEPTED.map((t) => `${t}:${laptops[t].port}`).join(' ')}`,
    );

    // ------------------------------------------------------------ replicas
    const replicas = [];
    for (let n = 1; n <= 2; n++) {
      replicas.push({ n, controlPort: await freePort(), dataPort: await freePort(), inRotation: false });
    }
    const replicaProcs = [];
    const startReplica = async (r) => {
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
      r.serverId = JSON.parse(line).serverId;
      r.data = `http://127.0.0.1:${r.dataPort}`;
      r.inRotation = true;
      // Error-level log lines (pino level 50 and up), counted as they come: the kept output is only a tail.
      const seen = { n: r.n, proc: r.proc, errors: 0, lastErrors: [] };
      let partial = '';
      const scan = (chunk) => {
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
            detail: r.proc.output().slice(-2000),
          });
      });
      return r;
    };
    // One after the other: the first one creates the tables.
    for (const r of replicas) {
      await startReplica(r);
      log(
        `  replica ${r.n} ${r.serverId}: control :${r.controlPort}, data :${r.dataPort}, pid ${r.proc.pid}`,
      );
    }

    // ------------------------------------------------------------ control-port load balancer
    /**
     * A TCP balancer in front of the control ports, one listener per preferred replica (a load
     * balancer with affinity): a connection goes to the preferred replica while it is in
     * rotation, else to the other one; a refused connection tries the next. Tunnels of t1, t3
     * and t5 start on replica 2 (the one restarted), those of t2 and t4 on replica 1.
     */
    const lbSockets = new Set();
    const lbServers = [];
    const balancer = async (preferred) => {
      const lb = net.createServer((client) => {
        lbSockets.add(client);
        client.on('close', () => lbSockets.delete(client));
        client.on('error', () => undefined);
        client.pause();
        const order = [preferred, ...replicas.filter((r) => r !== preferred)].filter((r) => r.inRotation);
        const attempt = (i) => {
          if (client.destroyed) return;
          if (i >= order.length) {
            client.destroy();
            return;
          }
          const up = net.connect(order[i].controlPort, '127.0.0.1');
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
      await new Promise((r) => lb.listen(0, '127.0.0.1', r));
      return `http://127.0.0.1:${lb.address().port}`;
    };
    onCleanup(
      () => {
        for (const lb of lbServers) lb.close();
        for (const s of lbSockets) s.destroy();
      },
      { beforeStop: true },
    );
    const viaReplica = [await balancer(replicas[0]), await balancer(replicas[1])];
    const controlUrlOf = (tenant) => viaReplica[['t1', 't3', 't5'].includes(tenant) ? 1 : 0];
    const controlUrl = viaReplica[0];
    log(
      `  control-port load balancer: ${viaReplica[0]} (prefers replica 1), ${viaReplica[1]} (prefers replica 2)`,
    );

    // ------------------------------------------------------------ clients (intercept processes)
    /** Every join, with its times: the judge of who should answer a tenant's request. */
    const sessions = [];
    const active = new Map();
    const joinTenant = async (tenant) => {
      const s = { tenant, joinStart: now(), liveAt: undefined, leaveStart: undefined, goneAt: undefined };
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
            String(laptops[tenant].port),
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
      } catch (err) {
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
      const line = s.proc
        .output()
        .split('\n')
        .find((l) => l.includes('"kind":"intercept"'));
      const view = JSON.parse(line);
      s.id = view.id;
      const on = replicas.find((r) => r.serverId === view.replica);
      active.set(tenant, s);
      event(
        `${tenant} joined (intercept ${s.id}, tunnel on ${on ? `replica ${on.n}` : view.replica || '?'}, live after ${((s.liveAt - s.joinStart) / 1000).toFixed(1)} s)`,
      );
      // A client that exits by itself (lost lease, crash) is a finding.
      s.proc.child.once('exit', (code, signal) => {
        s.exit = code ?? signal;
        if (s.leaveStart === undefined && !interrupted) {
          s.leaveStart = now();
          s.goneAt = s.leaveStart;
          active.delete(tenant);
          findings.push({
            at: s.leaveStart,
            what: `${tenant}'s intercept process exited by itself (${s.exit})`,
            detail: tailOf(s.proc),
          });
          event(`${tenant}'s intercept process exited by itself (${s.exit})`);
        }
      });
      return s;
    };
    /** The end of a client's output without its per-request lines. */
    const tailOf = (proc) =>
      proc
        .output()
        .split('\n')
        .filter((l) => l.trim() && !l.includes('"kind":"http'))
        .slice(-8)
        .join('\n');
    const leaveTenant = async (tenant) => {
      const s = active.get(tenant);
      if (!s) return;
      active.delete(tenant);
      s.leaveStart = now();
      s.how = 'leave';
      const exited = new Promise((r) => s.proc.child.once('exit', (code, signal) => r(code ?? signal)));
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
    const vanish = async (tenant) => {
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
        try {
          const r = await fetch(`${controlUrl}/v1/intercepts`, {
            headers: { authorization: `Bearer ${TOKEN}` },
          });
          const list = await r.json();
          if (r.ok && !list.some((i) => i.id === s.id)) break;
        } catch {}
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

    // ------------------------------------------------------------ faults
    const faults = [];
    const flap = async (tenant, times, downMs, upMs) => {
      for (let i = 1; i <= times && !stopping; i++) {
        const f = { kind: `flap ${tenant}`, tenants: new Set([tenant]), start: now() };
        faults.push(f);
        await laptops[tenant].command('down');
        event(`${tenant}'s local service stopped listening (flap ${i}/${times})`);
        await sleep(downMs);
        await laptops[tenant].command('up');
        f.end = now();
        event(`${tenant}'s local service listens again`);
        await sleep(upMs);
      }
    };
    const restartReplica = async (r) => {
      const f = { kind: `replica ${r.n} restart`, tenants: new Set(INTERCEPTED), start: now() };
      faults.push(f);
      // Drained: out of rotation first. Crashed: the balancers find out from refused connections.
      if (!opts.crash) r.inRotation = false;
      r.stopping = true;
      const exited = new Promise((res) => r.proc.child.once('exit', (code, signal) => res(code ?? signal)));
      if (opts.crash) {
        r.killedAt = now();
        r.proc.child.kill('SIGKILL');
        event(`replica ${r.n} killed (SIGKILL); the balancers send on what it refuses`);
      } else {
        event(`replica ${r.n} out of rotation (load balancer drains it)`);
        await sleep(1000);
        r.killedAt = now();
        r.proc.child.kill('SIGTERM');
        event(`replica ${r.n} stopped (SIGTERM)`);
      }
      const code = await Promise.race([exited, sleep(15_000).then(() => 'timeout')]);
      if (code === 'timeout') {
        findings.push({ at: now(), what: `replica ${r.n} did not exit within 15 s of its signal` });
        r.proc.child.kill('SIGKILL');
        await exited;
      }
      event(`replica ${r.n} exited (${code})`);
      await sleep(opts['restart-down'] * 1000);
      r.stopping = false;
      await startReplica(r);
      r.upAt = now();
      f.end = r.upAt + 5000;
      event(`replica ${r.n} restarted (${r.serverId}, pid ${r.proc.pid}), back in rotation`);
    };

    // ------------------------------------------------------------ load generator
    const pools = new Map();
    const poolOf = (r) => {
      let p = pools.get(r.data);
      if (!p) {
        p = new Pool(r.data, {
          connections: opts.concurrency,
          keepAliveTimeout: 30_000,
          headersTimeout: TIMEOUT_MS,
          bodyTimeout: TIMEOUT_MS,
          connectTimeout: 5_000,
        });
        pools.set(r.data, p);
      }
      return p;
    };
    onCleanup(() => Promise.all([...pools.values()].map((p) => p.destroy())), { beforeStop: true });

    const records = [];
    let rr = 0;
    let stopping = false;
    const pending = new Set();
    const bigBody = randomBytes(16 * 1024);

    const pickReplica = (exclude) => {
      const live = replicas.filter((r) => r.inRotation && r !== exclude);
      return live.length ? live[rr++ % live.length] : undefined;
    };

    const sendOne = async (seq) => {
      const roll = Math.random();
      const tenant =
        roll < 0.7
          ? INTERCEPTED[Math.floor(Math.random() * INTERCEPTED.length)]
          : roll < 0.95
            ? PLAIN[Math.floor(Math.random() * PLAIN.length)]
            : undefined;
      const kind = Math.random();
      const method = kind < 0.2 ? 'POST' : 'GET';
      const size =
        method === 'POST' ? 1024 + Math.floor(Math.random() * 15 * 1024) : kind < 0.3 ? 64 * 1024 : 200;
      // One GET in ten waits 50–500 ms for its answer: there are always requests in flight when a fault strikes.
      const delay = method === 'GET' && kind > 0.9 ? 50 + Math.floor(Math.random() * 450) : 0;
      const rec = { seq, tenant, method, size, delay, t0: now(), replica: undefined, tries: 0 };
      records.push(rec);
      pending.add(rec);
      const headers = { host: 'billing.dev.example.com', 'x-soak-seq': String(seq) };
      if (tenant) headers['x-tenant-id'] = tenant;
      let target = pickReplica();
      try {
        for (;;) {
          if (!target) throw Object.assign(new Error('no replica in rotation'), { code: 'SOAK_NO_REPLICA' });
          rec.replica = target.n;
          rec.tries++;
          try {
            const res = await poolOf(target).request({
              method,
              path: method === 'POST' ? '/r' : `/r?size=${size}${delay ? `&delay=${delay}` : ''}`,
              headers:
                method === 'POST' ? { ...headers, 'content-type': 'application/octet-stream' } : headers,
              body: method === 'POST' ? bigBody.subarray(0, size) : undefined,
              signal: AbortSignal.timeout(TIMEOUT_MS + 1000),
            });
            const body = Buffer.from(await res.body.arrayBuffer());
            rec.t1 = now();
            rec.status = res.statusCode;
            judgeResponse(rec, res.headers, body);
            break;
          } catch (err) {
            const code = err.code ?? err.cause?.code ?? err.name;
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
        const code = err.code ?? err.cause?.code ?? err.name ?? 'error';
        rec.outcome = 'unclean';
        rec.detail = /TIMEOUT|TimeoutError/i.test(code) ? `timeout (${code})` : code;
        rec.message = String(err.message ?? err).slice(0, 300);
      } finally {
        pending.delete(rec);
      }
    };

    /** Who answered, and whether the response is whole; who *should* have answered is judged at the end. */
    const judgeResponse = (rec, headers, body) => {
      const errorCode = headers['x-kelsingra-error'];
      if (errorCode !== undefined) {
        let json;
        try {
          json = JSON.parse(body.toString());
        } catch {}
        if (
          json &&
          typeof json.error === 'string' &&
          json.error.startsWith('Kelsingra:') &&
          json.code === errorCode
        ) {
          rec.outcome = 'clean';
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
      if (rec.status >= 500 || by === undefined) {
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
        rec.method === 'POST' ? JSON.parse(body.toString()).bytes === rec.size : body.length === rec.size;
      if (
        headers['x-soak-seq'] !== String(rec.seq) ||
        (headers['x-soak-tenant'] ?? '') !== (rec.tenant ?? '')
      ) {
        rec.outcome = 'misrouted';
        rec.detail = `answer for another request (seq ${headers['x-soak-seq']}, tenant ${headers['x-soak-tenant']})`;
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
      s.liveAt -= shift;
    }
    loadStarted = true;
    event(`load starts: ≤ ${opts.rate} req/s, ≤ ${opts.concurrency} in flight, to both replicas' data ports`);

    const tasks = [];
    const at = (fraction, what) => {
      tasks.push(
        (async () => {
          const wait = fraction * D - now();
          if (wait > 0) await sleep(wait);
          if (stopping) return;
          await what();
        })().catch((err) => {
          findings.push({ at: now(), what: `scheduled step failed: ${err.message}`, detail: err.stack });
          event(`scheduled step failed: ${err.message}`);
        }),
      );
    };
    at(0.08, () => joinTenant('t3'));
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
    at(0.4, () => restartReplica(replicas[1]));
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
    const within = (x, a, b) => x >= a && x <= b;
    const overlaps = (rec, a, b) => rec.t0 <= b && rec.t1 >= a;
    const sessionsOf = (tenant) => sessions.filter((s) => s.tenant === tenant);
    const end = (s) => s.goneAt ?? Number.POSITIVE_INFINITY;
    for (const rec of records) {
      if (rec.outcome === 'lost') continue;
      const mine = rec.tenant ? sessionsOf(rec.tenant) : [];
      // Around a join or a leave, either target may answer; a tenant's intercept counts as up
      // from PROPAGATION_GRACE_MS after it was live until its client started leaving.
      const transition = mine.some(
        (s) =>
          overlaps(rec, s.joinStart, (s.liveAt ?? s.failedAt) + PROPAGATION_GRACE_MS) ||
          (s.leaveStart !== undefined && overlaps(rec, s.leaveStart, end(s) + PROPAGATION_GRACE_MS)),
      );
      // The same, for the report: a vanished laptop is a fault of its own, not a leave.
      const joiningOrLeaving = mine.some(
        (s) =>
          overlaps(rec, s.joinStart, (s.liveAt ?? s.failedAt) + PROPAGATION_GRACE_MS) ||
          (s.leaveStart !== undefined &&
            s.how !== 'vanish' &&
            overlaps(rec, s.leaveStart, end(s) + PROPAGATION_GRACE_MS)),
      );
      const up = mine.some(
        (s) =>
          s.liveAt !== undefined &&
          rec.t0 >= s.liveAt + PROPAGATION_GRACE_MS &&
          rec.t1 <= (s.leaveStart ?? Number.POSITIVE_INFINITY),
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
        const hit = (f) =>
          rec.tenant &&
          f.tenants.has(rec.tenant) &&
          overlaps(rec, f.start, (f.end ?? now()) + PROPAGATION_GRACE_MS);
        // Every explanation in progress: the tenant's own faults (a flap, a vanished laptop), its
        // join or leave, then faults of every intercepted tenant (the restart).
        const why = [
          ...faults.filter((f) => f.tenants.size === 1 && hit(f)).map((f) => f.kind),
          ...(joiningOrLeaving ? [`${rec.tenant} joining or leaving`] : []),
          ...faults.filter((f) => f.tenants.size > 1 && hit(f)).map((f) => f.kind),
        ];
        rec.during = why.length ? [...new Set(why)].join(' + ') : undefined;
      } else if (rec.outcome === 'unclean' && opts.crash) {
        // Cut at the socket (not a timeout, not a bad answer) by the crash: in flight at the kill
        // (sent to the killed replica, or relayed to it with the response already started), or
        // sent to it on a keep-alive connection not yet known dead before it was back.
        const r = replicas[1];
        const socketError = /^(UND_ERR_SOCKET|ECONNRESET|EPIPE|UND_ERR_RES_CONTENT_LENGTH_MISMATCH)$/.test(
          rec.detail,
        );
        const inFlightAtKill = within(r.killedAt, rec.t0, rec.t1);
        const sentToTheDead = rec.replica === r.n && rec.t0 >= r.killedAt && rec.t0 <= (r.upAt ?? now());
        if (socketError && (inFlightAtKill || sentToTheDead)) rec.outcome = 'cut';
      }
    }

    // ------------------------------------------------------------ report
    const count = (pred) => records.filter(pred).length;
    const by = (list, key) => {
      const m = new Map();
      for (const r of list) m.set(key(r), (m.get(key(r)) ?? 0) + 1);
      return [...m.entries()].sort((a, b) => b[1] - a[1]);
    };
    const sent = records.length;
    const answered = records.filter((r) => r.outcome === 'answered');
    const clean = records.filter((r) => r.outcome === 'clean');
    const unclean = records.filter((r) => r.outcome === 'unclean');
    const misrouted = records.filter((r) => r.outcome === 'misrouted');
    const cut = records.filter((r) => r.outcome === 'cut');
    const unexplained = clean.filter((r) => !r.during);
    // Requests the services answer at once; the delayed ones (one GET in ten) only measure their delay.
    const latAnswered = answered.filter((r) => !r.delay).map((r) => r.t1 - r.t0);
    const latAll = records.filter((r) => r.t1 !== undefined && !r.delay).map((r) => r.t1 - r.t0);
    const seconds = opts.duration;

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
          ...(opts.crash ? ['cut by the crash'] : []),
        ],
        [
          sent,
          answered.length,
          clean.length,
          unclean.length,
          lost.length,
          misrouted.length,
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
      const rows = [['status code', 'during', 'requests', 'tenants', 'first – last failure']];
      for (const [d] of by(clean, (r) => r.detail)) {
        const ofCode = clean.filter((r) => r.detail === d);
        for (const [w, n] of by(ofCode, (r) => r.during ?? 'NO FAULT IN PROGRESS')) {
          const list = ofCode.filter((r) => (r.during ?? 'NO FAULT IN PROGRESS') === w);
          rows.push([
            d,
            w,
            n,
            [...new Set(list.map((r) => r.tenant ?? '(none)'))].sort().join(' '),
            `${fmtT(Math.min(...list.map((r) => r.t0)))} – ${fmtT(Math.max(...list.map((r) => r.t1)))}`,
          ]);
        }
      }
      log(table(rows));
    }
    for (const [label, list] of [
      ['Failed unclean', unclean],
      ['Misrouted', misrouted],
      [
        'Cut by the crash (in flight at the kill, or sent to the dead replica on a stale keep-alive connection)',
        cut,
      ],
      ['Lost', lost],
    ]) {
      if (!list.length) continue;
      log(`\n${label}:`);
      log(
        table([
          ['what', 'requests', 'first (time, tenant, replica, message)'],
          ...by(list, (r) => r.detail).map(([d, n]) => {
            const first = list.find((r) => r.detail === d);
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
    const accounted =
      answered.length + clean.length + unclean.length + misrouted.length + cut.length + lost.length;
    if (accounted !== sent) {
      findings.push({ at: now(), what: `bookkeeping: ${sent} requests sent but ${accounted} classified` });
    }
    if (findings.length) {
      log('\nFindings:');
      for (const f of findings)
        log(`  ${fmtT(f.at)}  ${f.what}${f.detail ? `\n${f.detail.replace(/^/gm, '      ')}` : ''}`);
    }
    const failed = lost.length + unclean.length + misrouted.length + findings.length;
    log(
      `\nVerdict: ${failed ? 'FAILED' : 'passed'} — ${lost.length} lost, ${unclean.length} failed uncleanly, ${misrouted.length} misrouted, ${findings.length} client/process findings; ${clean.length} clean Kelsingra errors (${unexplained.length} with no fault in progress). ${os.cpus().length} cores, load average ${os.loadavg()[0].toFixed(2)}, ${fmt((Date.now() - t0Wall) / 1000, 0)} s in all.`,
    );

    Object.assign(results, {
      sent,
      answered: answered.length,
      answeredBy: Object.fromEntries(by(answered, (r) => r.by)),
      failedClean: Object.fromEntries(by(clean, (r) => r.detail)),
      failedCleanUnexplained: unexplained.length,
      failedUnclean: Object.fromEntries(by(unclean, (r) => r.detail)),
      misrouted: Object.fromEntries(by(misrouted, (r) => r.detail)),
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
      samples: [...unclean, ...misrouted, ...lost, ...unexplained].slice(0, 200),
    });
    if (opts.json) writeFileSync(opts.json, `${JSON.stringify(results, null, 2)}\n`);
    if (opts.logs) {
      // The last 32–64 KiB of each process's output (the replicas' JSON logs, the clients' events).
      mkdirSync(opts.logs, { recursive: true });
      const procs = [
        ...replicaProcs.map(({ n, proc }) => [`replica-${n}-${proc.pid}`, proc]),
        ...sessions.filter((x) => x.proc).map((x) => [`intercept-${x.tenant}-${x.proc.pid}`, x.proc]),
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
