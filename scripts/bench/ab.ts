#!/usr/bin/env node
/**
 * Server agents of different commits (or V8 settings) side by side on the pass-through path,
 * for finding what a change cost (docs/BENCHMARKS.md, "Re-checked after issue 7").
 *
 *   git worktree add /tmp/ks-before <commit> && ln -s "$PWD/node_modules" /tmp/ks-before/
 *   (cd /tmp/ks-before && npx tsc -p tsconfig.json)
 *   npm run build && node scripts/bench/ab.ts before=/tmp/ks-before now=. now@8=.
 *
 * Each argument is `name=dir`: a checkout with `bin/run.js` and a built `dist/`. `name@N`
 * runs that agent with `--max-semi-space-size=N` (MiB) instead of bin/run.js's own. The
 * first is the baseline.
 *
 * On this kind of shared 2-core machine one agent's throughput drifts by ±10 % from one run
 * to the next, far more than most changes cost. So every agent is loaded at the same time
 * (one `wrk -t1 -c50` each, against one nginx upstream), all agents share one core and wrk
 * and nginx the other (taskset, when present): whatever the machine does then hits every
 * agent alike, and each one's share of the core shows what a request costs it. Per round,
 * each agent's req/s is divided by the baseline's; the medians of those ratios are reported.
 * Even so, the same tree run twice differs by up to ±8 %: name it twice to see the spread.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import {
  cleanupAndExit,
  ensureTools,
  fmt,
  freePort,
  log,
  median,
  onCleanup,
  reportFailure,
  requireBuild,
  SMALL_BODY,
  smallBodyServer,
  start,
  startNginx,
  table,
  waitHttp,
  which,
  wrk,
} from './lib.ts';

const USAGE = 'ab.ts name=dir[ name@MiB=dir ...] [--rounds N] [--duration S]';
const { values, positionals } = parseArgs({
  options: { rounds: { type: 'string', default: '10' }, duration: { type: 'string', default: '4' } },
  allowPositionals: true,
});
const rounds = Number(values.rounds);
const seconds = Number(values.duration);
/** One server agent under test; `url` and `rps` are filled in once it runs. */
interface Variant {
  name: string;
  /** --max-semi-space-size (MiB), if given. */
  semiSpace: string | undefined;
  dir: string;
  url: string;
  /** req/s, one per round. */
  rps: number[];
}

const variants = positionals.map((arg): Variant => {
  const m = /^([\w.-]+?)(?:@(\d+))?=(.+)$/.exec(arg);
  // The name and the dir are always there when the expression matches.
  if (!m || m[1] === undefined || m[3] === undefined) {
    console.error(`${arg}: expected name=dir or name@MiB=dir\nusage: ${USAGE}`);
    process.exit(2);
  }
  return { name: m[1] + (m[2] ? `@${m[2]}` : ''), semiSpace: m[2], dir: resolve(m[3]), url: '', rps: [] };
});
if (variants.length < 2 || !(rounds > 0) || !(seconds > 0)) {
  console.error(`two or more agents, positive --rounds and --duration\nusage: ${USAGE}`);
  process.exit(2);
}
requireBuild('npm run build, then node scripts/bench/ab.ts …');
ensureTools(['wrk', 'nginx']);

const HEADERS = { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't2' };
const pin: (cpu: number, cmd: string, args: string[]) => [string, string[]] = which('taskset')
  ? (cpu, cmd, args) => ['taskset', ['-c', String(cpu), cmd, ...args]]
  : (_, c, a) => [c, a];

async function main() {
  const work = mkdtempSync(join(tmpdir(), 'kelsingra-ab-'));
  onCleanup(() => rmSync(work, { recursive: true, force: true }));
  const upstream = await freePort();
  await startNginx(work, 'nginx', smallBodyServer(upstream), [`http://127.0.0.1:${upstream}/`], { cpu: 0 });

  for (const v of variants) {
    const control = await freePort();
    const data = await freePort();
    const [cmd, args] = pin(1, process.execPath, [
      ...(v.semiSpace ? [`--max-semi-space-size=${v.semiSpace}`] : []),
      join(v.dir, 'bin', 'run.js'),
      'server',
      '--port',
      String(control),
      '--proxy-port',
      String(data),
      '--service',
      `billing=http://127.0.0.1:${upstream}`,
      '--token',
      'ab-benchmark-token',
    ]);
    await start(`server agent ${v.name}`, cmd, args, { ready: /server agent listening/ });
    v.url = `http://127.0.0.1:${data}/`;
    await waitHttp(v.url, HEADERS, (r) => r.status === 200 && r.text === SMALL_BODY, v.name);
    v.rps = [];
  }
  log(
    `${variants.length} server agents, all loaded at once, ${rounds} rounds of ${seconds} s (after 2 s of warm-up)`,
  );
  await Promise.all(variants.map((v) => wrk(v.url, { conns: 50, seconds: 2, headers: HEADERS })));
  for (let round = 1; round <= rounds; round++) {
    const results = await Promise.all(
      variants.map((v) => wrk(v.url, { conns: 50, seconds, headers: HEADERS })),
    );
    // One result per variant, in their order.
    for (const [i, r] of results.entries()) variants[i]?.rps.push(r.rps);
    log(
      `  round ${round}: ${variants.map((v) => `${v.name} ${Math.round(v.rps.at(-1) ?? Number.NaN)}`).join(', ')}`,
    );
  }
  const base = variants[0];
  if (!base) throw new Error('no baseline agent');
  log(`\nreq/s ÷ ${base.name}, median of the rounds' ratios:`);
  log(
    table([
      ['Server agent', 'req/s (median)', `÷ ${base.name}`],
      ...variants.map((v) => [
        v.name,
        String(Math.round(median(v.rps))),
        fmt(median(v.rps.map((x, i) => x / (base.rps[i] ?? Number.NaN))), 3),
      ]),
    ]),
  );
}

main().then(
  () => cleanupAndExit(0),
  (err) => cleanupAndExit(reportFailure(err)),
);
