/**
 * The nginx recipe (deploy/reverse-proxy/nginx.conf) for real: a real nginx runs the shipped
 * file, only its addresses, listen port and control host name substituted, in front of a real
 * `kelsingra server`, a base upstream and a developer's local service. Kelsingra's upstream for
 * the service is this nginx (as when services call each other through the ingress), so the
 * hop rule is all that keeps a passed-on request from going round again.
 *
 * nginx must be installed (.ci/run installs Debian's): without it these tests fail, they do
 * not skip.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Cleanup,
  cli,
  clientEnv,
  closeServer,
  exited,
  freePort,
  interceptDetached,
  isHealthCheck,
  listen,
  type RawResponse,
  ROOT,
  rawRequest,
  type ServerProcess,
  sleep,
  startServerProcess,
  tempDir,
  waitFor,
} from '../support/helpers.js';

const TOKEN = 'nginx-recipe-test-token-4c1d';
const RECIPE_PATH = join(ROOT, 'deploy', 'reverse-proxy', 'nginx.conf');
const BILLING_HOST = 'billing.dev.example.com';

/** The recipe's addresses, as shipped (they match deploy/k8s; test/integration/deploy-manifests.test.ts checks that). */
const SHIPPED = {
  data: 'kelsingra-data.kelsingra.svc.cluster.local:7701',
  control: 'kelsingra-control.kelsingra.svc.cluster.local:7700',
  base: 'billing.dev.svc.cluster.local:8080',
  listen: 'listen 80;',
  controlHost: 'server_name kelsingra.dev.example.com;',
};

function nginxBinary(): string {
  const dirs = [
    ...(process.env.PATH ?? '').split(':'),
    '/usr/sbin',
    '/usr/local/sbin',
    '/usr/local/nginx/sbin',
  ];
  for (const dir of dirs.filter(Boolean)) {
    const candidate = join(dir, 'nginx');
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  throw new Error(
    'nginx is not installed, and test/integration/nginx-recipe.test.ts runs deploy/reverse-proxy/nginx.conf in a real nginx: ' +
      'install it (Debian: apt-get install -y nginx; .ci/run does this when it is missing)',
  );
}

/** `text` with every `from` replaced; a `from` the recipe no longer holds fails loudly rather than testing something else. */
function substitute(text: string, pairs: [from: string, to: string][]): string {
  let out = text;
  for (const [from, to] of pairs) {
    if (!out.includes(from)) {
      throw new Error(
        `${RECIPE_PATH} no longer contains "${from}": update test/integration/nginx-recipe.test.ts to match`,
      );
    }
    out = out.split(from).join(to);
  }
  return out;
}

/** The recipe with its tenant-set variant in place of the every-tenant map, both as shipped. */
function tenantSetVariant(text: string): string {
  const active = /^map \$kelsingra_key \$kelsingra_wanted \{\n[^}]*\n\}\n/m;
  const commented = /^# map \$kelsingra_key \$kelsingra_wanted \{\n(?:#.*\n)*?# \}\n/m;
  const variant = text.match(commented)?.[0];
  if (!active.test(text) || !variant) {
    throw new Error(`${RECIPE_PATH}: cannot find the every-tenant map and its commented tenant-set variant`);
  }
  const uncommented = variant.replace(/^# ?/gm, '');
  return text.replace(active, '').replace(commented, uncommented);
}

interface Hit {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}

/** An HTTP service that says who it is (`<name> <METHOD> <url>`) and records the requests it got (not health checks). */
async function recorder(name: string, cleanups: Cleanup[]) {
  const hits: Hit[] = [];
  const svc = await listen((req, res) => {
    if (isHealthCheck(req)) return void res.end('ok');
    hits.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`${name} ${req.method} ${req.url}`);
    });
  });
  cleanups.push(() => closeServer(svc));
  return { ...svc, hits, at: (url: string) => hits.filter((h) => h.url === url) };
}

interface Nginx {
  port: number;
  url: string;
  /** One line per request: `<host> <uri> key=<key> hop=<hop header> upstream=<addr> status=<status>`. */
  accessLog: () => string[];
  stop: () => Promise<void>;
}

/** Runs `recipe` (an http{}-level file) in a foreground nginx of its own, listening on `port`. */
async function startNginx(recipe: string, port: number): Promise<Nginx> {
  const bin = nginxBinary();
  const dir = tempDir('kelsingra-nginx-');
  writeFileSync(join(dir, 'kelsingra.conf'), recipe);
  const accessLog = join(dir, 'access.log');
  const conf = join(dir, 'nginx.conf');
  writeFileSync(
    conf,
    [
      // As root, nginx would run its workers as nobody, who may not use this private directory.
      process.getuid?.() === 0 ? 'user root;' : '',
      'worker_processes 1;',
      `pid ${join(dir, 'nginx.pid')};`,
      'error_log stderr warn;',
      'events { worker_connections 256; }',
      'http {',
      '  log_format kelsingra_test "$host $request_uri key=$kelsingra_key hop=$http_x_kelsingra_hop upstream=$upstream_addr status=$status";',
      `  access_log ${accessLog} kelsingra_test;`,
      ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `  ${t}_temp_path ${join(dir, t)};`),
      `  include ${join(dir, 'kelsingra.conf')};`,
      '}',
      '',
    ].join('\n'),
  );
  const args = ['-p', dir, '-c', conf, '-e', 'stderr'];
  const check = await execa(bin, ['-t', ...args], { reject: false, all: true });
  if (check.exitCode !== 0)
    throw new Error(`nginx rejects the recipe:\n${check.all}\n--- recipe ---\n${recipe}`);

  const child: ChildProcess = spawn(bin, [...args, '-g', 'daemon off;'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (output += c.toString()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await Promise.race([exited(child), sleep(5_000)]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const accepts = () =>
    new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
  try {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`nginx exited (${child.exitCode}):\n${output}`);
        return accepts();
      },
      10_000,
      `nginx to listen on ${port}`,
    );
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    accessLog: () =>
      existsSync(accessLog) ? readFileSync(accessLog, 'utf8').split('\n').filter(Boolean) : [],
    stop,
  };
}

/**
 * A server agent whose upstream for billing is the nginx in front of it, that nginx running
 * `recipe` (the shipped file unless a test changes it), a base and a developer's local service.
 */
async function stack(cleanups: Cleanup[], transform: (recipe: string) => string = (r) => r) {
  const base = await recorder('base', cleanups);
  const local = await recorder('local', cleanups);
  const port = await freePort();
  const server: ServerProcess = await startServerProcess([
    '--token',
    TOKEN,
    '--service',
    `billing=http://127.0.0.1:${port}`,
    '--preview-url',
    'http://{key}--{service}.dev.example.com',
  ]);
  cleanups.push(() => server.stop());
  const recipe = substitute(transform(readFileSync(RECIPE_PATH, 'utf8')), [
    [SHIPPED.data, `127.0.0.1:${server.proxyPort}`],
    [SHIPPED.control, `127.0.0.1:${server.controlPort}`],
    [SHIPPED.base, `127.0.0.1:${base.port}`],
    [SHIPPED.listen, `listen 127.0.0.1:${port};`],
    // The developer's client reaches the control block by the proxy's address in this test.
    [SHIPPED.controlHost, 'server_name kelsingra.dev.example.com 127.0.0.1;'],
  ]);
  const nginx = await startNginx(recipe, port);
  cleanups.push(() => nginx.stop());

  /** A request to nginx as a caller in the dev environment would send it. */
  const send = (
    path: string,
    headers: Record<string, string> = {},
    host = BILLING_HOST,
  ): Promise<RawResponse> => rawRequest(`${nginx.url}${path}`, { headers: { host, ...headers } });
  /** The developer's client, talking to the control port through nginx (tunnel WebSocket and REST). */
  const env = clientEnv(server, TOKEN, { KELSINGRA_SERVER: nginx.url, KELSINGRA_HOLDER: 'dev-alice' });
  const intercept = (tenant: string) => interceptDetached(env, 'billing', tenant, local.port, cleanups);
  /** nginx's access-log lines for `path`, once it has written `count` of them. */
  const logged = (path: string, count: number) =>
    waitFor(
      () => {
        const lines = nginx.accessLog().filter((l) => l.split(' ')[1] === path);
        return lines.length >= count ? lines : undefined;
      },
      5_000,
      `${count} access-log line(s) for ${path}`,
    );
  return { base, local, server, nginx, send, env, intercept, logged };
}

const text = (r: RawResponse) => r.body.toString('utf8');

describe('deploy/reverse-proxy/nginx.conf in a real nginx, every tenant through Kelsingra', () => {
  const cleanups: Cleanup[] = [];
  let s: Awaited<ReturnType<typeof stack>>;
  let kelsingraData: string;

  beforeAll(async () => {
    s = await stack(cleanups);
    kelsingraData = `upstream=127.0.0.1:${s.server.proxyPort}`;
    // Through nginx's control block: REST and the tunnel's WebSocket upgrade.
    await s.intercept('t1');
  });
  afterAll(async () => {
    for (const cleanup of cleanups.splice(0).reverse())
      await Promise.resolve(cleanup()).catch(() => undefined);
  });

  it('a request without a tenant goes straight to the base and never reaches Kelsingra', async () => {
    const r = await s.send('/no-tenant');
    expect(r.status).toBe(200);
    expect(text(r)).toBe('base GET /no-tenant');
    const [hit] = s.base.at('/no-tenant');
    expect(s.base.at('/no-tenant')).toHaveLength(1);
    expect(hit?.headers['x-kelsingra-hop']).toBeUndefined();
    expect(hit?.headers.via).toBeUndefined();
    const lines = await s.logged('/no-tenant', 1);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(`upstream=127.0.0.1:${s.base.port}`);
  });

  it("an intercepted tenant reaches the developer's local service", async () => {
    const r = await s.send('/intercepted', { 'x-tenant-id': 't1' });
    expect(text(r)).toBe('local GET /intercepted');
    expect(r.status).toBe(200);
    expect(s.local.at('/intercepted')[0]?.headers['x-tenant-id']).toBe('t1');
    expect(s.base.at('/intercepted')).toEqual([]);
    expect((await s.logged('/intercepted', 1))[0]).toContain(kelsingraData);
  });

  it('a tenant nobody intercepts goes to Kelsingra, comes back marked, and the hop rule sends it to the base: no loop, no 508', async () => {
    const r = await s.send('/passed-on', { 'x-tenant-id': 't2' });
    expect(text(r)).toBe('base GET /passed-on');
    expect(r.status).toBe(200);
    const hits = s.base.at('/passed-on');
    expect(hits).toHaveLength(1);
    expect(hits[0]?.headers['x-tenant-id']).toBe('t2');
    const hop = hits[0]?.headers['x-kelsingra-hop'];
    expect(hop, 'the base got the request from Kelsingra, marked').toMatch(/\S/);
    // Twice through nginx: first to Kelsingra (no marker), then, marked, to the base.
    const lines = await s.logged('/passed-on', 2);
    expect(lines).toHaveLength(2);
    // (nginx logs an empty variable as "-".)
    expect(lines.find((l) => l.includes('hop=- '))).toContain(kelsingraData);
    expect(lines.find((l) => l.includes(`hop=${hop} `))).toContain(`upstream=127.0.0.1:${s.base.port}`);
    expect(s.local.at('/passed-on')).toEqual([]);
  });

  it('a POST with a body takes the same ways', async () => {
    const r = await rawRequest(`${s.nginx.url}/upload`, {
      method: 'POST',
      headers: { host: BILLING_HOST, 'x-tenant-id': 't1', 'content-type': 'text/plain' },
      body: 'x'.repeat(200_000),
    });
    expect(text(r)).toBe('local POST /upload');
    const passed = await rawRequest(`${s.nginx.url}/upload-base`, {
      method: 'POST',
      headers: { host: BILLING_HOST, 'x-tenant-id': 't2', 'content-type': 'text/plain' },
      body: 'y'.repeat(200_000),
    });
    expect(text(passed)).toBe('base POST /upload-base');
    expect(s.base.at('/upload-base')).toHaveLength(1);
  });

  it('a key in W3C baggage, without the tenant header, is routed like the header', async () => {
    const r = await s.send('/baggage', { baggage: 'userId=42, tenant=t1' });
    expect(text(r)).toBe('local GET /baggage');
    const passed = await s.send('/baggage-base', { baggage: 'tenant=t2' });
    expect(text(passed)).toBe('base GET /baggage-base');
    // Kelsingra turned the baggage key into the tenant header for the services down the chain.
    expect(s.base.at('/baggage-base')[0]?.headers['x-tenant-id']).toBe('t2');
  });

  it('preview hosts go to Kelsingra; what it passes on comes back to the base by the hop rule', async () => {
    const r = await s.send('/preview', {}, 't1--billing.dev.example.com');
    expect(text(r)).toBe('local GET /preview');
    const passed = await s.send('/preview-base', {}, 't2--billing.dev.example.com');
    expect(passed.status).toBe(200);
    expect(text(passed)).toBe('base GET /preview-base');
    const hits = s.base.at('/preview-base');
    expect(hits).toHaveLength(1);
    expect(hits[0]?.headers['x-tenant-id']).toBe('t2');
    expect(hits[0]?.headers['x-kelsingra-hop']).toMatch(/\S/);
    expect(await s.logged('/preview-base', 2)).toHaveLength(2);
  });

  it('kelsingra status and list work through the control block', async () => {
    const list = await cli(['list', '--json'], s.env);
    expect(list.exitCode, String(list.stderr)).toBe(0);
    expect(JSON.parse(String(list.stdout))).toMatchObject([{ service: 'billing', tenant: 't1' }]);
    const status = await cli(['status', '--json'], s.env);
    expect(status.exitCode, String(status.stderr)).toBe(0);
  });

  // Last: it stops the server agent.
  it('with no Kelsingra replica answering, tenant traffic falls back to the base', async () => {
    await s.server.stop();
    const r = await s.send('/kelsingra-down', { 'x-tenant-id': 't2' });
    expect(r.status).toBe(200);
    expect(text(r)).toBe('base GET /kelsingra-down');
    expect(s.base.at('/kelsingra-down')[0]?.headers['x-kelsingra-hop']).toBeUndefined();
  });
});

describe('deploy/reverse-proxy/nginx.conf, the tenant-set variant as shipped', () => {
  const cleanups: Cleanup[] = [];
  afterAll(async () => {
    for (const cleanup of cleanups.splice(0).reverse())
      await Promise.resolve(cleanup()).catch(() => undefined);
  });

  it('tenants outside the set skip Kelsingra; t1 (intercepted) and t2 (passed on) take the same ways as before', async () => {
    const s = await stack(cleanups, tenantSetVariant);
    await s.intercept('t1');

    const outside = await s.send('/t3', { 'x-tenant-id': 't3' });
    expect(text(outside)).toBe('base GET /t3');
    expect(s.base.at('/t3')[0]?.headers['x-kelsingra-hop']).toBeUndefined();
    expect(await s.logged('/t3', 1)).toHaveLength(1);

    expect(text(await s.send('/t1', { 'x-tenant-id': 't1' }))).toBe('local GET /t1');

    const passed = await s.send('/t2', { 'x-tenant-id': 't2' });
    expect(text(passed)).toBe('base GET /t2');
    expect(s.base.at('/t2')[0]?.headers['x-kelsingra-hop']).toMatch(/\S/);
    expect(await s.logged('/t2', 2)).toHaveLength(2);
  });
});

describe('the same topology without the hop rule', () => {
  const cleanups: Cleanup[] = [];
  afterAll(async () => {
    for (const cleanup of cleanups.splice(0).reverse())
      await Promise.resolve(cleanup()).catch(() => undefined);
  });

  it('loops back into Kelsingra, which stops it with 508: the rule is what keeps it out', async () => {
    const hopCheck = '"$kelsingra_wanted:$http_x_kelsingra_hop"';
    const s = await stack(cleanups, (recipe) => {
      if (!recipe.includes(hopCheck)) throw new Error(`${RECIPE_PATH} no longer contains ${hopCheck}`);
      return recipe.replace(hopCheck, '"$kelsingra_wanted:"');
    });
    const r = await s.send('/loop', { 'x-tenant-id': 't2' });
    expect(r.status).toBe(508);
    expect(text(r)).toMatch(/loop-detected/);
    expect(s.base.at('/loop')).toEqual([]);
  });
});
