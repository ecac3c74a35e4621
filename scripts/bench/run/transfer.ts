/**
 * Benchmark 3, bulk transfer: MB/s of one large upload and one large download through the
 * tunnel and directly, and the agents' peak RSS (VmHWM) before and after each.
 */
import http from 'node:http';
import { fmt, log, memOf, stopAll, table } from '../lib.ts';
import { ok } from './measure.ts';
import { opts, startIntercept, startInterceptSetup, VIA, waitIntercepted } from './setup.ts';

// ---------------------------------------------------------------- 3. bulk transfer

/** One transfer: how long it took, and MB (10^6 bytes) per second. */
interface Rate {
  seconds: number;
  mbps: number;
}

function upload(url: string, headers: Record<string, string>, bytes: number): Promise<Rate> {
  const chunk = Buffer.alloc(64 * 1024, 'u');
  return new Promise((res, rej) => {
    const t0 = performance.now();
    const req = http.request(url, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/octet-stream', 'content-length': bytes },
    });
    req.setTimeout(300_000, () => req.destroy(new Error('upload timed out')));
    req.on('error', rej);
    req.on('response', (r) => {
      let body = '';
      r.setEncoding('utf8');
      r.on('data', (c: string) => (body += c));
      r.on('end', () => {
        const seconds = (performance.now() - t0) / 1000;
        if (r.statusCode !== 200) return rej(new Error(`upload: HTTP ${r.statusCode} ${body.slice(0, 300)}`));
        const { bytes: got }: { bytes: unknown } = JSON.parse(body);
        if (got !== bytes) return rej(new Error(`upload: local service received ${got} of ${bytes} bytes`));
        res({ seconds, mbps: bytes / 1e6 / seconds });
      });
    });
    let sent = 0;
    const pump = () => {
      while (sent < bytes) {
        const n = Math.min(chunk.length, bytes - sent);
        sent += n;
        if (!req.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
          req.once('drain', pump);
          return;
        }
      }
      req.end();
    };
    pump();
  });
}

function download(url: string, headers: Record<string, string>, bytes: number): Promise<Rate> {
  return new Promise((res, rej) => {
    const t0 = performance.now();
    const req = http.get(`${url}?bytes=${bytes}`, { headers }, (r) => {
      if (r.statusCode !== 200) {
        r.resume();
        return rej(new Error(`download: HTTP ${r.statusCode}`));
      }
      let got = 0;
      r.on('data', (c: Buffer) => (got += c.length));
      r.on('error', rej);
      r.on('end', () => {
        const seconds = (performance.now() - t0) / 1000;
        if (got !== bytes) return rej(new Error(`download: received ${got} of ${bytes} bytes`));
        res({ seconds, mbps: bytes / 1e6 / seconds });
      });
    });
    req.setTimeout(300_000, () => req.destroy(new Error('download timed out')));
    req.on('error', rej);
  });
}

export async function benchTransfer() {
  const gib = opts.bytes / 1024 ** 3;
  log(
    `\n== 3. Bulk transfer through the tunnel: ${fmt(gib, 2)} GiB each way, server and client agents as separate processes`,
  );
  const { localPort, ks } = await startInterceptSetup('transfer');
  const local = `http://127.0.0.1:${localPort}`;
  const agent = await startIntercept(ks, localPort, 'transfer benchmark');
  const headers = VIA('t1');
  await waitIntercepted(ks, 'intercepted route');

  const bytes = opts.bytes;
  const idle = { server: memOf(ks.proc.pid), agent: memOf(agent.pid) };
  const directUpload = await upload(`${local}/upload`, {}, opts.bytes);
  const directDownload = await download(`${local}/download`, {}, opts.bytes);
  log(
    `  direct to local service: upload ${fmt(directUpload.mbps, 0)} MB/s, download ${fmt(directDownload.mbps, 0)} MB/s`,
  );
  const tunnelUpload = await upload(`${ks.data}/upload`, headers, opts.bytes);
  const afterUpload = { server: memOf(ks.proc.pid), agent: memOf(agent.pid) };
  log(
    `  tunnel upload:   ${fmt(tunnelUpload.mbps, 0)} MB/s (${fmt(tunnelUpload.seconds, 1)} s); peak RSS server ${fmt(afterUpload.server.hwmMiB, 0)} MiB, client ${fmt(afterUpload.agent.hwmMiB, 0)} MiB`,
  );
  const tunnelDownload = await download(`${ks.data}/download`, headers, opts.bytes);
  const afterDownload = { server: memOf(ks.proc.pid), agent: memOf(agent.pid) };
  log(
    `  tunnel download: ${fmt(tunnelDownload.mbps, 0)} MB/s (${fmt(tunnelDownload.seconds, 1)} s); peak RSS server ${fmt(afterDownload.server.hwmMiB, 0)} MiB, client ${fmt(afterDownload.agent.hwmMiB, 0)} MiB`,
  );
  await agent.leave();
  await stopAll();
  return {
    bytes,
    idle,
    directUpload,
    directDownload,
    upload: tunnelUpload,
    afterUpload,
    download: tunnelDownload,
    afterDownload,
  };
}

/** Its table in the report, and its rows in the summary. */
export function reportTransfer(t: Awaited<ReturnType<typeof benchTransfer>>, rows: string[][]) {
  const gib = fmt(t.bytes / 1024 ** 3, 2);
  log(`\nBulk transfer (${gib} GiB each way; MB = 10^6 bytes, MiB = 2^20):`);
  log(
    table([
      [
        'Direction',
        'through tunnel (MB/s)',
        'direct (MB/s)',
        'server agent VmHWM (MiB)',
        'client agent VmHWM (MiB)',
      ],
      ['idle, before transfers', '—', '—', fmt(t.idle.server.hwmMiB, 0), fmt(t.idle.agent.hwmMiB, 0)],
      [
        'upload (POST, local discards)',
        fmt(t.upload.mbps, 0),
        fmt(t.directUpload.mbps, 0),
        fmt(t.afterUpload.server.hwmMiB, 0),
        fmt(t.afterUpload.agent.hwmMiB, 0),
      ],
      [
        'download (GET, local streams)',
        fmt(t.download.mbps, 0),
        fmt(t.directDownload.mbps, 0),
        fmt(t.afterDownload.server.hwmMiB, 0),
        fmt(t.afterDownload.agent.hwmMiB, 0),
      ],
    ]),
  );
  for (const [dir, r] of [
    ['upload', t.upload],
    ['download', t.download],
  ] as const)
    rows.push([`3. ${dir} ${gib} GiB through the tunnel (MB/s)`, fmt(r.mbps, 0), '≥ 300', ok(r.mbps >= 300)]);
  for (const [who, k] of [
    ['server', 'server'],
    ['client', 'agent'],
  ] as const) {
    const peak = Math.max(t.afterUpload[k].hwmMiB, t.afterDownload[k].hwmMiB);
    rows.push([
      `3. ${who} agent peak RSS over both transfers (MiB)`,
      fmt(peak, 0),
      '≤ 150 MiB',
      ok(peak <= 150),
    ]);
  }
}
