/**
 * nginx: the set as a generated http{}-level include (a `map` from "service/key" to a target,
 * and one upstream group per tenant route), written atomically, then the configured reload
 * command. Confirmed when the command exits 0 and, with `versionUrl`, once nginx serves the
 * new file's version there (its new workers have it).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { writeAtomically } from './atomic-file.js';
import { confirmByPolling, type GatewayDriver, GatewayError } from './driver.js';
import { type Entry, hostPort, keyOf, sorted } from './entries.js';

export interface NginxOptions {
  /** The include Kelsingra writes; the nginx configuration includes it inside http{}. */
  file: string;
  /** Run with /bin/sh -c after each write; success is exit code 0 (for example `nginx -s reload`). */
  reload: string;
  /** A URL answering `$kelsingra_gateway_version`: the reload counts once it shows the new version. */
  versionUrl?: string;
  /** The variable the map reads (the recipe builds it as "$service/$key"). */
  source: string;
  /** The variable the map sets: `kelsingra`, an upstream group name, or "" (the base). */
  variable: string;
  confirmTimeoutMs: number;
}

export function nginxUpstreamName(routeId: string): string {
  return `kelsingra_${routeId}`;
}

/** The include for a set: byte-identical for one set, and its version is the hash of the rest. */
export function nginxInclude(entries: Iterable<Entry>, opts: Pick<NginxOptions, 'source' | 'variable'>) {
  const list = sorted(entries);
  const lines: string[] = [];
  const routes = new Map<string, string[]>();
  for (const e of list) if (e.target.kind === 'route') routes.set(e.target.routeId, e.target.targets);
  for (const [id, targets] of [...routes].sort(([a], [b]) => (a < b ? -1 : 1))) {
    lines.push(`upstream ${nginxUpstreamName(id)} {`);
    for (const t of targets) lines.push(`    server ${hostPort(t)};`);
    lines.push('    keepalive 8;', '}');
  }
  lines.push(`map ${opts.source} ${opts.variable} {`, '    default "";');
  for (const e of list) {
    const value = e.target.kind === 'kelsingra' ? 'kelsingra' : nginxUpstreamName(e.target.routeId);
    lines.push(`    "${keyOf(e.service, e.tenant)}" ${value};`);
  }
  lines.push('}');
  const body = lines.join('\n');
  const version = createHash('sha256').update(body).digest('hex').slice(0, 16);
  const text = [
    '# Written by Kelsingra (gateway sync); every change rewrites it and reloads nginx.',
    body,
    `map $host $kelsingra_gateway_version { default "${version}"; }`,
    '',
  ].join('\n');
  return { text, version };
}

export class NginxDriver implements GatewayDriver {
  readonly name = 'nginx';

  constructor(private readonly opts: NginxOptions) {}

  async replaceAll(entries: Entry[]): Promise<void> {
    const { text, version } = nginxInclude(entries, this.opts);
    await writeAtomically(this.opts.file, text);
    await this.reload();
    if (this.opts.versionUrl) await this.served(version);
  }

  apply(_diff: unknown, all: Entry[]): Promise<void> {
    return this.replaceAll(all);
  }

  private reload(): Promise<void> {
    return new Promise((resolve, reject) => {
      execFile(
        '/bin/sh',
        ['-c', this.opts.reload],
        { timeout: this.opts.confirmTimeoutMs },
        (err, _out, stderr) => {
          if (!err) return resolve();
          const code = (err as { code?: unknown }).code;
          reject(
            new GatewayError(
              `the nginx reload command (${this.opts.reload}) failed${typeof code === 'number' ? ` with exit code ${code}` : `: ${err.message}`}${stderr.trim() ? `: ${stderr.trim().slice(0, 300)}` : ''}`,
            ),
          );
        },
      );
    });
  }

  /** Polls versionUrl until the new workers answer with this version. */
  private async served(version: string): Promise<void> {
    const url = this.opts.versionUrl as string;
    await confirmByPolling(
      async () => {
        try {
          const res = await fetch(url, { signal: AbortSignal.timeout(1_000) });
          const last = (await res.text()).trim();
          return { ok: last === version, last };
        } catch (err) {
          return { ok: false, last: (err as Error).message };
        }
      },
      {
        timeoutMs: this.opts.confirmTimeoutMs,
        everyMs: 20,
        timedOut: (last) =>
          `nginx reloaded but ${url} still answers "${last.slice(0, 80)}", not version ${version}`,
      },
    );
  }

  async close(): Promise<void> {}
}
