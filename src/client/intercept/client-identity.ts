/**
 * The client id an intercept is held under, kept in the config dir per (server, service,
 * tenant). A client that crashed or was killed comes back under the same id and so simply
 * re-asserts its live intercept (the server knows it by that id) instead of being refused
 * as someone else until the lease lapses. The id is a credential: the file is private.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

interface Entry {
  id: string;
  pid: number;
}

const FILE = 'clients.json';

function read(configDir: string): Record<string, Entry> {
  try {
    return JSON.parse(readFileSync(join(configDir, FILE), 'utf8')) as Record<string, Entry>;
  } catch {
    // Missing, unreadable or corrupt: start afresh; the worst case is a new id, which the
    // server refuses as a conflict until the old lease lapses.
    return {};
  }
}

function write(configDir: string, entries: Record<string, Entry>): void {
  const path = join(configDir, FILE);
  writeFileSync(`${path}.tmp`, JSON.stringify(entries), { mode: 0o600 });
  renameSync(`${path}.tmp`, path);
}

/** Whether `pid` is a live process; a zombie (exited, not yet reaped) is not. */
export function processRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  // A killed agent not yet reaped by its parent (a zombie) still answers signal 0; on Linux
  // /proc says it is dead ("Z"). Elsewhere a zombie counts as running: a new id, a 409, and
  // the old lease lapses.
  if (!existsSync('/proc/self/stat')) return true;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    // Gone between the signal and the read.
    return false;
  }
}

const keyOf = (server: string, service: string, tenant: string) => `${server} ${service} ${tenant}`;

/**
 * The id of the last client for this intercept if that client is gone, else a new one. A
 * second client while the first still runs gets its own id, so the server refuses it as a
 * conflict rather than the two taking the tunnel from each other.
 */
export function claimClientId(configDir: string, server: string, service: string, tenant: string): string {
  const entries = read(configDir);
  const key = keyOf(server, service, tenant);
  const previous = entries[key];
  if (previous && previous.pid !== process.pid && processRunning(previous.pid)) {
    return `c_${randomBytes(9).toString('base64url')}`;
  }
  const id = previous?.id ?? `c_${randomBytes(9).toString('base64url')}`;
  entries[key] = { id, pid: process.pid };
  write(configDir, entries);
  return id;
}

/** After a clean leave the next intercept starts afresh. */
export function releaseClientId(configDir: string, server: string, service: string, tenant: string): void {
  const entries = read(configDir);
  const key = keyOf(server, service, tenant);
  if (entries[key]?.pid !== process.pid) return;
  delete entries[key];
  write(configDir, entries);
}
