/**
 * HAProxy over its Runtime API (the stats socket, unix or TCP): map entries are added, changed
 * and removed live, no reload. The map file is rewritten after every change as well, so an
 * HAProxy that restarts loads the set it had. A whole set goes in as a new map version
 * (`prepare map`, `add map @<version>`, `commit map`): requests see the old set or the new,
 * never half of it.
 */
import net from 'node:net';
import { writeAtomically } from './atomic-file.js';
import { type GatewayDriver, GatewayError } from './driver.js';
import { type Diff, type Entry, hostPort, keyOf, sorted } from './entries.js';

export interface HaproxyOptions {
  /** The stats socket: a unix socket path, or host:port for `stats socket ipv4@…`. */
  socket: string;
  /** The map as HAProxy names it: the path in `map(…)` of its configuration. */
  map: string;
  /** Where Kelsingra writes the map file (default: `map`; set it when HAProxy sees another mount). */
  mapFile?: string;
}

/** Lines per `add map` payload: each command must fit HAProxy's buffer (16 KiB by default). */
const PAYLOAD_LINES = 200;
/** Commands sent on one connection, separated by `;`. */
const BATCH = 100;
const TIMEOUT_MS = 5_000;

/** What the map holds for an entry: `kelsingra`, or the route's first target as host:port. */
export function haproxyValue(entry: Entry): string {
  return entry.target.kind === 'kelsingra' ? 'kelsingra' : hostPort(entry.target.targets[0] as string);
}

export function haproxyMapFile(entries: Iterable<Entry>): string {
  const lines = ['# Written by Kelsingra (gateway sync): (service/routing key) -> kelsingra or host:port.'];
  for (const e of sorted(entries)) lines.push(`${keyOf(e.service, e.tenant)} ${haproxyValue(e)}`);
  return `${lines.join('\n')}\n`;
}

export class HaproxyDriver implements GatewayDriver {
  readonly name = 'haproxy';
  /** What the map holds now, as this driver last wrote it: `add map` on a present key would add a twin. */
  private readonly current = new Map<string, Entry>();

  constructor(private readonly opts: HaproxyOptions) {}

  /** One connection: the commands, then HAProxy's whole answer (it closes after a non-interactive request). */
  command(text: string): Promise<string> {
    const { socket } = this.opts;
    const tcp = /^(.+):(\d+)$/.exec(socket);
    return new Promise((resolve, reject) => {
      const conn = tcp
        ? net.connect(Number(tcp[2]), (tcp[1] as string).replace(/^\[|\]$/g, ''))
        : net.connect(socket);
      let out = '';
      conn.setEncoding('utf8');
      conn.setTimeout(TIMEOUT_MS, () => conn.destroy(new Error(`no answer within ${TIMEOUT_MS / 1000} s`)));
      conn.on('data', (chunk: string) => (out += chunk));
      conn.on('error', (err) =>
        reject(new GatewayError(`HAProxy's Runtime API at ${socket} failed: ${err.message}`)),
      );
      conn.on('close', () => resolve(out));
      conn.end(`${text}\n`);
    });
  }

  /** Runs commands, failing on any answer but success (an empty line; "Key not found." when removing). */
  private async run(commands: string[]): Promise<void> {
    for (let i = 0; i < commands.length; i += BATCH) {
      const answer = await this.command(commands.slice(i, i + BATCH).join(';'));
      const problems = answer
        .split('\n')
        .map((l) => l.trim())
        .filter((l) => l && l !== 'Key not found.');
      if (problems.length)
        throw new GatewayError(
          `HAProxy refused a map change on ${this.opts.map}: ${problems.slice(0, 3).join(' / ')}`,
        );
    }
  }

  async replaceAll(entries: Entry[]): Promise<void> {
    const { map } = this.opts;
    const prepared = await this.command(`prepare map ${map}`);
    const version = /New version created: (\d+)/.exec(prepared)?.[1];
    if (!version)
      throw new GatewayError(
        `HAProxy did not prepare a new version of map ${map}: ${prepared.trim() || 'no answer'} (is it the path written in map(...) of haproxy.cfg, and is the socket "level admin"?)`,
      );
    const lines = sorted(entries).map((e) => `${keyOf(e.service, e.tenant)} ${haproxyValue(e)}`);
    for (let i = 0; i < lines.length; i += PAYLOAD_LINES) {
      const answer = await this.command(
        `add map @${version} ${map} <<\n${lines.slice(i, i + PAYLOAD_LINES).join('\n')}\n`,
      );
      if (answer.trim())
        throw new GatewayError(`HAProxy refused entries for map ${map}: ${answer.trim().slice(0, 200)}`);
    }
    const committed = await this.command(`commit map @${version} ${map}`);
    if (committed.trim())
      throw new GatewayError(`HAProxy did not commit map ${map}: ${committed.trim().slice(0, 200)}`);
    this.current.clear();
    for (const e of entries) this.current.set(keyOf(e.service, e.tenant), e);
    await this.writeFile();
  }

  async apply(diff: Diff): Promise<void> {
    const { map } = this.opts;
    const commands: string[] = [];
    for (const e of diff.removed) commands.push(`del map ${map} ${keyOf(e.service, e.tenant)}`);
    for (const e of diff.set) {
      const key = keyOf(e.service, e.tenant);
      commands.push(`${this.current.has(key) ? 'set' : 'add'} map ${map} ${key} ${haproxyValue(e)}`);
    }
    await this.run(commands);
    for (const e of diff.removed) this.current.delete(keyOf(e.service, e.tenant));
    for (const e of diff.set) this.current.set(keyOf(e.service, e.tenant), e);
    await this.writeFile();
  }

  /** The entries HAProxy's map holds now (`show map`), for checks and the reconcile after a restart. */
  async show(): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    const answer = await this.command(`show map ${this.opts.map}`);
    for (const line of answer.split('\n')) {
      const [, key, value] = line.trim().split(/\s+/);
      if (key && value) out.set(key, value);
    }
    return out;
  }

  private writeFile(): Promise<void> {
    return writeAtomically(this.opts.mapFile ?? this.opts.map, haproxyMapFile(this.current.values()));
  }

  async close(): Promise<void> {}
}
