/**
 * Measuring targets with wrk for run.ts's benchmarks: req/s at many connections, latency at
 * one, CPU and syscalls per request in the processes under test; and what the benchmarks' parts
 * of the report share (the tunnel table, met or MISSED).
 */
import { readFileSync } from 'node:fs';
import { fmt, ioOf, log, median, table, wrk } from '../lib.ts';
import { opts } from './setup.ts';

// ---------------------------------------------------------------- wrk

/** A wrk target; `pids`: the processes under test, whose CPU and syscalls per request are read. */
export interface Target<K extends string> {
  key: K;
  label: string;
  url: string;
  headers: Record<string, string>;
  pids?: Record<string, number>;
}

/** Per request, in one process under test. */
interface RequestCost {
  reads: number;
  writes: number;
  cpuUs: number;
}

/** One round of one target. */
interface Round {
  rps: number;
  p99: number;
  p50c1: number;
  p99c1: number;
  rpsc1: number;
  errors: number;
  syscalls: Record<string, RequestCost>;
  /** Never set here (wrk's output is not kept); --json still deletes it. */
  raw?: string;
}

/** A target's medians over the rounds, and the rounds. */
export interface Measured {
  label: string;
  rps: number;
  p99: number;
  p50c1: number;
  p99c1: number;
  cpuUs: Record<string, number>;
  rounds: Round[];
}

/**
 * Measures each target `rounds` times, interleaved so drift on a shared machine hits all of
 * them alike: a warm-up, throughput at `conns` connections, then latency at one connection.
 */
export async function measure<K extends string>(targets: readonly Target<K>[]): Promise<Record<K, Measured>> {
  const runs = Object.fromEntries(targets.map((t): [K, Round[]] => [t.key, []])) as Record<K, Round[]>;
  for (let round = 1; round <= opts.rounds; round++) {
    for (const t of targets) {
      await wrk(t.url, { conns: opts.conns, seconds: opts.warmup, headers: t.headers });
      const before = Object.fromEntries(
        Object.entries(t.pids ?? {}).map(([k, pid]) => [k, { ...ioOf(pid), cpu: cpuSeconds(pid) }]),
      );
      const load = await wrk(t.url, { conns: opts.conns, seconds: opts.duration, headers: t.headers });
      // Syscalls per request in each process under test (from /proc/<pid>/io): on a VM where
      // a syscall is expensive, this is what most of the proxy's CPU time goes to.
      const syscalls = Object.fromEntries(
        Object.entries(t.pids ?? {}).map(([k, pid]) => {
          const now = ioOf(pid);
          const b = before[k];
          if (!b) throw new Error(`no figures for ${k} before the load`);
          return [
            k,
            {
              reads: (now.syscr - b.syscr) / load.requests,
              writes: (now.syscw - b.syscw) / load.requests,
              cpuUs: ((cpuSeconds(pid) - b.cpu) / load.requests) * 1e6,
            },
          ];
        }),
      );
      const one = await wrk(t.url, { conns: 1, seconds: opts.duration, headers: t.headers });
      runs[t.key].push({
        rps: load.rps,
        p99: load.p99,
        p50c1: one.p50,
        p99c1: one.p99,
        rpsc1: one.rps,
        errors: load.errors + one.errors,
        syscalls,
      });
      const sys = Object.entries(syscalls)
        .map(
          ([k, v]) =>
            `  ${k} CPU ${fmt(v.cpuUs, 1)} µs/req syscalls/req r ${fmt(v.reads, 1)} w ${fmt(v.writes, 1)}`,
        )
        .join('');
      log(
        `  round ${round} ${t.label.padEnd(34)} ${fmt(load.rps, 0).padStart(7)} req/s @${opts.conns}  p50@1 ${fmt(one.p50, 3)} ms  p99@1 ${fmt(one.p99, 3)} ms${load.errors + one.errors ? `  socket errors ${load.errors + one.errors}` : ''}${sys}`,
      );
    }
  }
  // Filled for every target below.
  const out = {} as Record<K, Measured>;
  for (const t of targets) {
    const r = runs[t.key];
    out[t.key] = {
      label: t.label,
      rps: median(r.map((x) => x.rps)),
      p99: median(r.map((x) => x.p99)),
      p50c1: median(r.map((x) => x.p50c1)),
      p99c1: median(r.map((x) => x.p99c1)),
      cpuUs: Object.fromEntries(
        Object.keys(t.pids ?? {}).map((k) => [k, median(r.map((x) => x.syscalls[k]?.cpuUs ?? Number.NaN))]),
      ),
      rounds: r,
    };
  }
  return out;
}

/** CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1];
  if (stat === undefined) throw new Error(`/proc/${pid}/stat: no ") " after the command name`);
  const fields = stat.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** One row per tunnel target: req/s and its ratio to direct, latency, CPU per request on each side. */
export function tunnelTable<K extends string>(
  res: Partial<Record<K, Measured>> & { direct: Measured },
  keys: readonly K[],
): string {
  const d = res.direct;
  return table([
    [
      'Target',
      `req/s @${opts.conns} conns`,
      '÷ direct',
      `p99 @${opts.conns} (ms)`,
      'p50 @1 conn (ms)',
      'p50 added (ms)',
      'server side CPU/req (µs)',
      'client side CPU/req (µs)',
    ],
    ...keys.flatMap((k) => {
      const r: Measured | undefined = res[k];
      if (!r) return [];
      return [
        [
          r.label,
          fmt(r.rps, 0),
          fmt(r.rps / d.rps, 2),
          fmt(r.p99, 2),
          fmt(r.p50c1, 3),
          k === 'direct' ? '—' : fmt(r.p50c1 - d.p50c1, 3),
          k === 'direct' ? '—' : fmt(r.cpuUs.server, 1),
          k === 'direct' ? '—' : fmt(r.cpuUs.client, 1),
        ],
      ];
    }),
  ]);
}

export const ok = (pass: boolean) => (pass ? 'met' : 'MISSED');
