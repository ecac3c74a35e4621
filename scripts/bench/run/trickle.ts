/**
 * Benchmark 5, one tenant's slow uploads: another tenant's req/s and server CPU per request on
 * a server agent holding many uploads that send a byte every 10 s, against an identical calm one.
 */
import net from 'node:net';
import {
  fmt,
  freePort,
  log,
  median,
  SMALL_BODY,
  sleep,
  startNginx,
  stopAll,
  table,
  waitHttp,
  wrk,
} from '../lib.ts';
import { cpuSeconds, ok } from './measure.ts';
import { type Kelsingra, opts, startKelsingra, VIA, WORK } from './setup.ts';

// ---------------------------------------------------------------- 5. one tenant's slow uploads

/**
 * `n` uploads of `tenant` to `url` announcing 1 MB and sending a byte every 10 s, each on its
 * own connection, opened in batches the listen backlog takes. Each records how it ended.
 */
async function trickles(url: string, tenant: string, n: number) {
  const { hostname, port } = new URL(url);
  const state = { answered: new Map<string, number>(), ended: 0, list: [] as net.Socket[] };
  for (let i = 0; i < n; i++) {
    const socket = net.connect(Number(port), hostname);
    let timer: NodeJS.Timeout | undefined;
    let head = '';
    let ended = false;
    const end = () => {
      clearInterval(timer);
      if (!ended) state.ended++;
      ended = true;
    };
    socket.on('connect', () => {
      socket.write(
        `POST /upload HTTP/1.1\r\nhost: billing\r\nx-kelsingra-service: billing\r\nx-tenant-id: ${tenant}\r\ncontent-length: 1000000\r\n\r\nx`,
      );
      timer = setInterval(() => socket.write('x'), 10_000);
    });
    socket.on('data', (c: Buffer) => {
      if (head.includes('\r\n\r\n')) return;
      head += c.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      end();
      const what =
        `${head.split(' ')[1]} ${/^x-kelsingra-error: (.*)$/im.exec(head)?.[1]?.trim() ?? ''}`.trim();
      state.answered.set(what, (state.answered.get(what) ?? 0) + 1);
    });
    socket.on('error', () => undefined);
    socket.on('close', end);
    state.list.push(socket);
    if (i % 100 === 99) await sleep(50);
  }
  return {
    state,
    held: () => n - state.ended,
    close: () => {
      for (const s of state.list) s.destroy();
    },
  };
}

/**
 * Two identical server agents on one upstream, loaded at once by one wrk each as tenant
 * "quiet"; in each round one of them (alternating) also has the slow uploads of tenant "hog".
 * Loaded together, whatever else the machine does hits both alike: the ratio of their req/s is
 * what the slow uploads cost, where two runs one after the other would differ by more.
 */
export async function benchTrickle() {
  log(
    `\n== 5. Slow uploads: another tenant's req/s (wrk -t1 -c${opts.conns}, ${opts.duration} s) on two server agents loaded at once, one of them also with ${opts.trickles} uploads of one tenant sending a byte every 10 s; ${opts.rounds} rounds (median)`,
  );
  // nginx holds an upload until it has the whole body (request buffering), as a service would.
  const upPort = await freePort();
  await startNginx(
    WORK,
    'nginx-upstream-trickle',
    `  server {
    listen 127.0.0.1:${upPort};
    location / { default_type text/plain; return 200 "${SMALL_BODY.replace('\n', '\\n')}"; }
    location /upload { proxy_pass http://127.0.0.1:${upPort}/; }
  }`,
    [`http://127.0.0.1:${upPort}/`],
  );
  const headers = VIA('quiet');
  const agents: { ks: Kelsingra; url: string }[] = [];
  for (const name of ['a', 'b']) {
    const ks = await startKelsingra(`trickle-${name}`, `http://127.0.0.1:${upPort}`);
    await waitHttp(`${ks.data}/`, headers, (r) => r.status === 200 && r.text === SMALL_BODY, `agent ${name}`);
    agents.push({ ks, url: `${ks.data}/` });
  }
  const load = (seconds: number) =>
    Promise.all(
      agents.map(async ({ ks, url }) => {
        const cpu = cpuSeconds(ks.proc.pid);
        const r = await wrk(url, { conns: opts.conns, seconds, headers });
        return { ...r, cpuPerReq: (cpuSeconds(ks.proc.pid) - cpu) / r.requests };
      }),
    );
  await load(opts.warmup);
  const rounds = [];
  for (let round = 1; round <= opts.rounds; round++) {
    const slow = round % 2;
    const slowAgent = agents[slow];
    if (!slowAgent) throw new Error(`no agent ${slow}`);
    const hog = await trickles(slowAgent.ks.data, 'hog', opts.trickles);
    // Until each upload is either held (and has sent its first byte) or refused.
    await sleep(2_000);
    const results = await load(opts.duration);
    const held = hog.held();
    const answered = Object.fromEntries(hog.state.answered);
    hog.close();
    await sleep(1_000);
    const [calm, trickled] = slow ? results : [results[1], results[0]];
    if (!calm || !trickled) throw new Error('one result per agent expected');
    const r = {
      calm: calm.rps,
      trickled: trickled.rps,
      ratio: trickled.rps / calm.rps,
      cpuRatio: trickled.cpuPerReq / calm.cpuPerReq,
      p99Calm: calm.p99,
      p99Trickled: trickled.p99,
      held,
      answered,
    };
    rounds.push(r);
    log(
      `  round ${round} calm agent ${fmt(r.calm, 0)} req/s, agent with the slow uploads ${fmt(r.trickled, 0)} req/s: ratio ${fmt(r.ratio, 3)}  CPU/req ratio ${fmt(r.cpuRatio, 3)}  p99 ${fmt(r.p99Calm, 2)} / ${fmt(r.p99Trickled, 2)} ms  slow uploads held ${held}, answered ${JSON.stringify(answered)}`,
    );
  }
  const res = {
    calm: median(rounds.map((r) => r.calm)),
    trickled: median(rounds.map((r) => r.trickled)),
    ratio: median(rounds.map((r) => r.ratio)),
    cpuRatio: median(rounds.map((r) => r.cpuRatio)),
    rounds,
  };
  await stopAll();
  return res;
}

/** Its table in the report, and its rows in the summary. */
export function reportTrickle(k: Awaited<ReturnType<typeof benchTrickle>>, rows: string[][]) {
  log(
    `\nSlow uploads (${opts.trickles} of one tenant; another tenant's req/s, wrk -t1 -c${opts.conns}, medians of ${opts.rounds}):`,
  );
  log(
    table([
      ['Tenant "quiet" on', 'req/s'],
      ['the calm agent', fmt(k.calm, 0)],
      [`the agent with ${opts.trickles} slow uploads of tenant "hog"`, fmt(k.trickled, 0)],
    ]),
  );
  rows.push([
    "5. another tenant's req/s with the slow uploads / without",
    fmt(k.ratio, 2),
    '≥ 0.95',
    ok(k.ratio >= 0.95),
  ]);
  // On a loaded machine req/s drifts more than the slow uploads cost; CPU per request does not.
  rows.push([
    '5. server CPU per request with the slow uploads / without',
    fmt(k.cpuRatio, 2),
    '≤ 1.05',
    ok(k.cpuRatio <= 1.05),
  ]);
}
