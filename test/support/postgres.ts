/**
 * PostgreSQL for integration tests: a fresh database on the machine's server per test, and
 * for the restart test a private server of its own, so stopping it disturbs no other file.
 */
import { execFileSync } from 'node:child_process';
import { chownSync, existsSync, readdirSync } from 'node:fs';
import pg from 'pg';
import { type Cleanup, freePort, tempDir } from './helpers.js';

export const PG_ADMIN_URL = process.env.KELSINGRA_TEST_PG ?? 'postgres://postgres@127.0.0.1:5432/postgres';

async function admin<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** A new, empty database; dropped (connections and all) by the cleanups. Returns its URL. */
export async function freshDatabase(cleanups: Cleanup[], adminUrl = PG_ADMIN_URL): Promise<string> {
  const name = `kelsingra_test_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
  await admin(adminUrl, (c) => c.query(`CREATE DATABASE ${name}`));
  cleanups.push(() => admin(adminUrl, (c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)));
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

/** Runs a query against `url` with a short-lived connection (for asserting on what the store wrote). */
export function query<R extends pg.QueryResultRow>(url: string, text: string, values: unknown[] = []) {
  return admin(url, (c) => c.query<R>(text, values));
}

function pgBin(): string {
  const root = '/usr/lib/postgresql';
  const version = existsSync(root)
    ? readdirSync(root)
        .filter((v) => existsSync(`${root}/${v}/bin/pg_ctl`))
        .sort((a, b) => Number(b) - Number(a))[0]
    : undefined;
  if (!version)
    throw new Error('PostgreSQL server binaries (pg_ctl, initdb) not found under /usr/lib/postgresql');
  return `${root}/${version}/bin`;
}

/**
 * A PostgreSQL server of the test's own on a free port (initdb'd into a temp dir), which
 * the test may stop and start. PostgreSQL refuses to run as root, so as root it runs as the
 * `postgres` user.
 */
export async function privatePostgres(cleanups: Cleanup[]) {
  const bin = pgBin();
  const dir = tempDir('kelsingra-pg-');
  const asRoot = process.getuid?.() === 0;
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim());
    chownSync(dir, uid, gid);
  }
  const pgRun = (cmd: string, args: string[]) =>
    asRoot
      ? execFileSync('runuser', ['-u', 'postgres', '--', `${bin}/${cmd}`, ...args], { stdio: 'pipe' })
      : execFileSync(`${bin}/${cmd}`, args, { stdio: 'pipe' });
  pgRun('initdb', ['-D', `${dir}/data`, '-A', 'trust', '-U', 'postgres', '--no-sync']);
  const port = await freePort();
  const start = () =>
    pgRun('pg_ctl', [
      '-D',
      `${dir}/data`,
      '-l',
      `${dir}/log`,
      '-w',
      '-o',
      `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`,
      'start',
    ]);
  // Fast mode disconnects every client at once, as a restart or a crash of the database would.
  const stop = () => pgRun('pg_ctl', ['-D', `${dir}/data`, '-m', 'fast', '-w', 'stop']);
  start();
  cleanups.push(() => {
    try {
      stop();
    } catch {
      // Already stopped by the test.
    }
  });
  return { url: `postgres://postgres@127.0.0.1:${port}/postgres`, port, start, stop };
}
