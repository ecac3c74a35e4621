#!/usr/bin/env node
/**
 * Top self-time functions of a V8 .cpuprofile (from node --cpu-prof).
 *
 *   node scripts/bench/cpuprofile-top.ts <file.cpuprofile> [count=30]
 *
 * Self time per function (name + file + line), and a second table grouped by package/file,
 * both as a share of the non-idle samples.
 */
import { readFileSync } from 'node:fs';

/** The parts of a V8 .cpuprofile this script reads. */
interface CpuProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}
interface CpuProfile {
  nodes: CpuProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const [file, countArg] = process.argv.slice(2);
if (!file) {
  console.error('usage: cpuprofile-top.ts <file.cpuprofile> [count]');
  process.exit(2);
}
const count = Number(countArg ?? 30);
const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const selfUs = new Map<number, number>();
for (let i = 0; i < profile.samples.length; i++) {
  const id = profile.samples[i] as number;
  selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
}

const shortUrl = (url: string): string => {
  if (!url) return '';
  const nm = url.lastIndexOf('node_modules/');
  if (nm !== -1) return url.slice(nm + 'node_modules/'.length);
  const dist = url.lastIndexOf('/dist/');
  if (dist !== -1) return url.slice(dist + 1);
  return url.replace(/^file:\/\//, '');
};

const fns = new Map<string, number>();
const files = new Map<string, number>();
let total = 0;
let idle = 0;
for (const [id, us] of selfUs) {
  const node = byId.get(id);
  if (!node) throw new Error(`sample refers to node ${id}, which is not in the profile`);
  const { callFrame } = node;
  const name = callFrame.functionName || '(anonymous)';
  if (name === '(idle)') {
    idle += us;
    continue;
  }
  total += us;
  const url = shortUrl(callFrame.url);
  const key = `${name}  ${url}${url ? `:${callFrame.lineNumber + 1}` : ''}`;
  fns.set(key, (fns.get(key) ?? 0) + us);
  const group = url.startsWith('node:')
    ? url
    : url
      ? url
          .split('/')
          .slice(0, url.startsWith('@') ? 2 : 1)
          .join('/')
      : name;
  files.set(group, (files.get(group) ?? 0) + us);
}

const print = (title: string, map: Map<string, number>) => {
  console.log(`\n${title}`);
  console.log('  self ms   share  function');
  for (const [k, us] of [...map].sort((a, b) => b[1] - a[1]).slice(0, count)) {
    console.log(
      `${(us / 1000).toFixed(0).padStart(9)}  ${((100 * us) / total).toFixed(1).padStart(5)}%  ${k}`,
    );
  }
};
console.log(`${file}: ${(total / 1000).toFixed(0)} ms busy, ${(idle / 1000).toFixed(0)} ms idle`);
print('Top self time by function:', fns);
print('Self time by package / file:', files);
