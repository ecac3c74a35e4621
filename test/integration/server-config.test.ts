/**
 * `kelsingra server` configuration as operators write it: a YAML/JSON file, environment
 * variables, flags (flags > environment > file), and clear errors for bad input.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  cleanupsAfterEach,
  cli,
  clientEnv,
  closeServer,
  freePort,
  interceptDetached,
  listen,
  rawRequest,
  type ServerProcess,
  spawnServerProcess,
  startServerProcess,
  tempDir,
  waitFor,
} from '../support/helpers.js';

const TOKEN = 'config-test-secret-token-0c4d';
const EXIT_CONFIG = 7; // ExitCode.config in src/shared/errors.ts

const cleanups = cleanupsAfterEach();

function file(name: string, text: string): string {
  const path = join(tempDir('kelsingra-config-'), name);
  writeFileSync(path, text);
  return path;
}

/** An upstream that says who it is and which path and tenant header it got. */
async function upstream(name: string) {
  const svc = await listen((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({
        name,
        path: req.url,
        host: req.headers.host,
        org: req.headers['x-org'],
        tenant: req.headers['x-tenant-id'],
      }),
    );
  });
  cleanups.push(() => closeServer(svc));
  return svc;
}

/** A request to a data port with its body as text, Host header included (fetch does not let us set Host). */
async function request(port: number, path: string, headers: Record<string, string>) {
  const res = await rawRequest(`http://127.0.0.1:${port}${path}`, { headers });
  return { status: res.status, body: res.body.toString('utf8') };
}

async function json(port: number, path: string, headers: Record<string, string>) {
  const res = await request(port, path, headers);
  expect(res.status, res.body).toBe(200);
  return JSON.parse(res.body);
}

/**
 * Starts `kelsingra server` with exactly these arguments and environment (no --port added:
 * the ports may come from a file or the environment) and waits for /healthz on `controlPort`.
 */
async function spawnServer(args: string[], env: Record<string, string>, controlPort: number) {
  const server = await spawnServerProcess(args, env, controlPort);
  cleanups.push(server.stop);
  return server;
}

/** Runs a server that must refuse to start; ports 0 so a wrongly accepted config cannot take a fixed port. */
async function failingServer(args: string[], env: Record<string, string> = {}) {
  const r = await cli(['server', ...args], env, { timeout: 20_000 });
  expect(r.timedOut, 'the server started although its configuration is bad').toBe(false);
  return { exitCode: r.exitCode, stderr: String(r.stderr), stdout: String(r.stdout) };
}

async function statusOf(env: Record<string, string>) {
  const r = await cli(['status', '--json'], env);
  expect(r.exitCode, String(r.stderr)).toBe(0);
  return JSON.parse(String(r.stdout));
}

describe('kelsingra server --config', () => {
  it('serves the services of a YAML file: hosts, path prefixes, tenant header, ports', async () => {
    const billing = await upstream('billing');
    const orders = await upstream('orders');
    const [port, proxyPort] = [await freePort(), await freePort()];
    const config = file(
      'kelsingra.yaml',
      `# Kelsingra server agent
port: ${port}
proxyPort: ${proxyPort}
token: ${TOKEN}
tenantHeader: X-Org
leaseTtl: 20
services:
  billing:
    upstream: ${billing.url}
    hosts: [billing.dev.example.com, invoices.example.com]
  orders:
    upstream: ${orders.url}
    pathPrefix: /api/orders
    stripPrefix: true
`,
    );
    const server = await spawnServer(['--config', config], {}, port);

    // By configured host (any of them), by path prefix (stripped), by first DNS label.
    expect(
      await json(proxyPort, '/inv/1', { host: 'billing.dev.example.com', 'x-org': 'acme' }),
    ).toMatchObject({ name: 'billing', path: '/inv/1', org: 'acme' });
    expect(await json(proxyPort, '/inv/2', { host: 'invoices.example.com:8080' })).toMatchObject({
      name: 'billing',
      path: '/inv/2',
    });
    expect(await json(proxyPort, '/api/orders/7?x=1', { host: 'gateway.example.com' })).toMatchObject({
      name: 'orders',
      path: '/7?x=1',
    });
    expect(await json(proxyPort, '/o', { host: 'orders.anything.internal' })).toMatchObject({
      name: 'orders',
      path: '/o',
    });
    const unknown = await request(proxyPort, '/nope', { host: 'gateway.example.com' });
    expect(unknown.status).toBe(404);
    expect(unknown.body).toMatch(/known services: billing, orders/);

    const env = clientEnv({ control: server.control } as ServerProcess, TOKEN, { KELSINGRA_HOLDER: 'ops' });
    const status = await statusOf(env);
    expect(status.tenantHeader).toBe('x-org');
    expect(status.services).toEqual([
      { name: 'billing', upstream: `${billing.url}/` },
      { name: 'orders', upstream: `${orders.url}/` },
    ]);

    // The configured tenant header decides which requests an intercept takes.
    const local = await listen((req, res) => res.end(`local ${req.url}`));
    cleanups.push(() => closeServer(local));
    await interceptDetached(env, 'billing', 'acme', local.port, cleanups);
    expect(await request(proxyPort, '/inv/3', { host: 'billing.dev.example.com', 'x-org': 'acme' })).toEqual({
      status: 200,
      body: 'local /inv/3',
    });
    expect(
      await json(proxyPort, '/inv/3', { host: 'billing.dev.example.com', 'x-org': 'other' }),
    ).toMatchObject({ name: 'billing' });
    // x-tenant-id is not this server's tenant header: it does not select the intercept.
    expect(
      await json(proxyPort, '/inv/4', { host: 'billing.dev.example.com', 'x-tenant-id': 'acme' }),
    ).toMatchObject({ name: 'billing' });
    // The lease length from the file reaches the intercept.
    const [icp] = (await statusOf(env)).intercepts;
    const ttl = (Date.parse(icp.expiresAt) - Date.parse(icp.createdAt)) / 1000;
    expect(ttl).toBe(20);
    expect((await cli(['leave', '--all'], env)).exitCode).toBe(0);

    expect(server.logs()).not.toContain(TOKEN);
  });

  it('reads a JSON config file too', async () => {
    const billing = await upstream('billing');
    const port = await freePort();
    const proxyPort = await freePort();
    const config = file(
      'kelsingra.json',
      JSON.stringify({ port, proxyPort, token: TOKEN, services: { billing: { upstream: billing.url } } }),
    );
    await spawnServer(['--config', config], {}, port);
    expect(await json(proxyPort, '/x', { 'x-kelsingra-service': 'billing' })).toMatchObject({
      name: 'billing',
      path: '/x',
    });
  });

  it('a flag adds a service to the ones from the file', async () => {
    const billing = await upstream('billing');
    const orders = await upstream('orders');
    const config = file(
      'kelsingra.yaml',
      `token: ${TOKEN}\nservices:\n  billing:\n    upstream: ${billing.url}\n`,
    );
    const server = await startServerProcess(['--config', config, '--service', `orders=${orders.url}`]);
    cleanups.push(() => server.stop());
    const status = await statusOf(clientEnv(server, TOKEN));
    expect(status.services.map((s: { name: string }) => s.name)).toEqual(['billing', 'orders']);
    expect(await json(server.proxyPort, '/', { 'x-kelsingra-service': 'orders' })).toMatchObject({
      name: 'orders',
    });
  });
});

describe('a bad configuration stops the server with a message naming the problem', () => {
  it.each([
    [
      'a bad upstream URL',
      `services:\n  billing:\n    upstream: not-a-url\n`,
      /services\.billing\.upstream: must be a URL/,
    ],
    [
      'an upstream that is not http(s)',
      `services:\n  billing:\n    upstream: ftp://files.example.com\n`,
      /services\.billing\.upstream: must start with http/,
    ],
    [
      'an unknown top-level key',
      `colour: blue\nservices:\n  billing:\n    upstream: http://127.0.0.1:9001\n`,
      /colour/,
    ],
    [
      'an unknown service key',
      `services:\n  billing:\n    upstream: http://127.0.0.1:9001\n    prefix: /billing\n`,
      /services\.billing: .*"prefix"/,
    ],
    [
      'a wrong type',
      `leaseTtl: soon\nservices:\n  billing:\n    upstream: http://127.0.0.1:9001\n`,
      /leaseTtl: /,
    ],
    [
      'hosts given as a string',
      `services:\n  billing:\n    upstream: http://127.0.0.1:9001\n    hosts: billing.example.com\n`,
      /services\.billing\.hosts: /,
    ],
    [
      'a bad service name',
      `services:\n  Billing_Service:\n    upstream: http://127.0.0.1:9001\n`,
      /services\.Billing_Service: .*DNS label/,
    ],
    [
      'a path prefix without /',
      `services:\n  billing:\n    upstream: http://127.0.0.1:9001\n    pathPrefix: billing\n`,
      /services\.billing\.pathPrefix: must start with \//,
    ],
    [
      'a tenant header that is not a header name',
      `tenantHeader: x tenant\nservices:\n  billing:\n    upstream: http://127.0.0.1:9001\n`,
      /tenantHeader: must be a header name/,
    ],
    [
      'a lease of zero seconds',
      `leaseTtl: 0\nservices:\n  billing:\n    upstream: http://127.0.0.1:9001\n`,
      /leaseTtl: /,
    ],
  ])('%s', async (_what, yaml, expected) => {
    const config = file('kelsingra.yaml', `token: ${TOKEN}\n${yaml}`);
    const r = await failingServer(['--config', config, '--port', '0', '--proxy-port', '0']);
    expect(r.exitCode).toBe(EXIT_CONFIG);
    expect(r.stderr).toMatch(expected);
    expect(r.stderr).toContain(config);
    expect(r.stderr).toMatch(/Hint: /);
    expect(r.stderr).not.toContain(TOKEN);
    // A config error is not a crash: no stack trace.
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('a port out of range in the file', async () => {
    const config = file(
      'kelsingra.yaml',
      `token: ${TOKEN}\nproxyPort: 70000\nservices:\n  billing:\n    upstream: http://127.0.0.1:9001\n`,
    );
    const r = await failingServer(['--config', config, '--port', '0']);
    expect(r.exitCode).toBe(EXIT_CONFIG);
    expect(r.stderr).toMatch(/proxyPort: /);
  });

  it('names every bad key at once', async () => {
    const config = file(
      'kelsingra.yaml',
      `token: ${TOKEN}\nleaseTtl: -1\nservices:\n  billing:\n    upstream: nope\n  orders:\n    upstream: http://127.0.0.1:1\n    extra: 1\n`,
    );
    const r = await failingServer(['--config', config, '--port', '0', '--proxy-port', '0']);
    expect(r.exitCode).toBe(EXIT_CONFIG);
    expect(r.stderr).toMatch(/leaseTtl/);
    expect(r.stderr).toMatch(/services\.billing\.upstream/);
    expect(r.stderr).toMatch(/services\.orders: .*"extra"/);
  });

  it('invalid YAML says so, with the place', async () => {
    const config = file(
      'kelsingra.yaml',
      `token: ${TOKEN}\nservices:\n  billing: [unclosed\n    upstream: http://127.0.0.1:9001\n`,
    );
    const r = await failingServer(['--config', config, '--port', '0', '--proxy-port', '0']);
    expect(r.exitCode).toBe(EXIT_CONFIG);
    expect(r.stderr).toMatch(/is not valid YAML/);
    expect(r.stderr).toContain(config);
    expect(r.stderr).toMatch(/line \d+/);
  });

  it('invalid JSON says so', async () => {
    const config = file('kelsingra.json', `{"token": "${TOKEN}", "services": {`);
    const r = await failingServer(['--config', config, '--port', '0', '--proxy-port', '0']);
    expect(r.exitCode).toBe(EXIT_CONFIG);
    expect(r.stderr).toMatch(/is not valid JSON/);
  });

  it('a config file that is a list, not a mapping, says so', async () => {
    const config = file('kelsingra.yaml', '- billing\n- orders\n');
    const r = await failingServer(['--config', config, '--port', '0', '--proxy-port', '0']);
    expect(r.exitCode).toBe(EXIT_CONFIG);
    expect(r.stderr).toMatch(/mapping/);
  });

  it('a missing config file names the path', async () => {
    const missing = join(tempDir(), 'nope.yaml');
    const r = await failingServer(['--config', missing, '--port', '0', '--proxy-port', '0']);
    expect(r.exitCode).toBe(EXIT_CONFIG);
    expect(r.stderr).toContain(`cannot read config file ${missing}`);
    expect(r.stderr).toMatch(/Hint: check the --config path/);
  });

  it('no token: says clients need one and how to give it', async () => {
    const r = await failingServer([
      '--service',
      'billing=http://127.0.0.1:9001',
      '--port',
      '0',
      '--proxy-port',
      '0',
    ]);
    expect(r.exitCode).toBe(EXIT_CONFIG);
    expect(r.stderr).toMatch(/needs a token/);
    expect(r.stderr).toMatch(/Hint: .*--token.*KELSINGRA_TOKEN/);
  });

  it('a token that is too short is refused', async () => {
    const r = await failingServer([
      '--service',
      'billing=http://127.0.0.1:9001',
      '--token',
      'short',
      '--port',
      '0',
      '--proxy-port',
      '0',
    ]);
    expect(r.exitCode).toBe(EXIT_CONFIG);
    expect(r.stderr).toMatch(/token: tokens must be at least 8 characters/);
    expect(r.stderr).not.toContain('short\n');
  });

  it('no services: says how to add one', async () => {
    const r = await failingServer(['--token', TOKEN, '--port', '0', '--proxy-port', '0']);
    expect(r.exitCode).toBe(EXIT_CONFIG);
    expect(r.stderr).toMatch(/no services configured/);
    expect(r.stderr).toMatch(/--service billing=/);
  });

  it('a --service without NAME=URL is a usage error', async () => {
    const r = await failingServer([
      '--token',
      TOKEN,
      '--service',
      'billing',
      '--port',
      '0',
      '--proxy-port',
      '0',
    ]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/--service "billing" is not NAME=URL/);
  });

  it('a bad tokens file names the bad entry', async () => {
    const tokens = file(
      'tokens.yaml',
      'tokens:\n  - name: team-a\n    token: short\n    tenants: [team-a-*]\n',
    );
    const r = await failingServer([
      '--tokens-file',
      tokens,
      '--service',
      'billing=http://127.0.0.1:9001',
      '--port',
      '0',
      '--proxy-port',
      '0',
    ]);
    expect(r.exitCode).toBe(EXIT_CONFIG);
    expect(r.stderr).toContain(tokens);
    expect(r.stderr).toMatch(/tokens\.0\.token: tokens must be at least 8 characters/);
  });

  it('a bad value in the environment is named too', async () => {
    const r = await failingServer(['--service', 'billing=http://127.0.0.1:9001', '--port', '0'], {
      KELSINGRA_TOKEN: TOKEN,
      KELSINGRA_PROXY_PORT: 'eighty',
    });
    expect(r.exitCode).toBe(EXIT_CONFIG);
    expect(r.stderr).toContain(
      'KELSINGRA_PROXY_PORT (the value of --proxy-port): Expected an integer but received: eighty',
    );
    expect(r.stderr).toContain('fix or unset KELSINGRA_PROXY_PORT');
  });

  it('a bad value given as the flag itself is a usage error that names the flag', async () => {
    const r = await failingServer(['--service', 'billing=http://127.0.0.1:9001', '--proxy-port', 'eighty'], {
      KELSINGRA_TOKEN: TOKEN,
      KELSINGRA_PROXY_PORT: 'ninety',
    });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain('Parsing --proxy-port: Expected an integer but received: eighty');
  });

  it('a port already in use is a clear error, not a hang', async () => {
    const taken = await listen(() => undefined);
    cleanups.push(() => closeServer(taken));
    const r = await failingServer([
      '--token',
      TOKEN,
      '--service',
      'billing=http://127.0.0.1:9001',
      '--port',
      String(taken.port),
      '--proxy-port',
      '0',
    ]);
    expect(r.exitCode).toBe(EXIT_CONFIG);
    expect(r.stderr).toContain(`cannot listen on 127.0.0.1:${taken.port}: the address is already in use`);
    expect(r.stderr).toMatch(/Hint: .*control port \(--port/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  // 10.255.255.1 is never connected to: binding an address this machine lacks fails at once.
  it.each([
    ['a name that does not resolve', 'no.such.host.invalid', /neither an IP address nor a host name/],
    ['an IPv4 address out of range', '999.999.999.999', /neither an IP address nor a host name/],
    ["another machine's address", '10.255.255.1', /not one of this machine's addresses/],
  ])('a --host that cannot be listened on (%s) names the flag', async (_what, host, reason) => {
    const r = await failingServer([
      '--token',
      TOKEN,
      '--service',
      'billing=http://127.0.0.1:9001',
      '--host',
      host,
      '--port',
      '0',
      '--proxy-port',
      '0',
    ]);
    expect(r.exitCode, r.stderr).toBe(EXIT_CONFIG);
    expect(r.stderr).toContain(`cannot listen on ${host} (--host, KELSINGRA_HOST`);
    expect(r.stderr).toMatch(reason);
    expect(r.stderr).toMatch(/Hint: set --host to an address of this machine/);
    expect(r.stderr).not.toMatch(/unexpected|report it|\n\s+at /);
  });
});

describe('environment and flags', () => {
  it('KELSINGRA_PORT, KELSINGRA_PROXY_PORT, KELSINGRA_SERVICES and KELSINGRA_TOKEN configure a server with no flags', async () => {
    const billing = await upstream('billing');
    const orders = await upstream('orders');
    const [port, proxyPort] = [await freePort(), await freePort()];
    const server = await spawnServer(
      [],
      {
        KELSINGRA_PORT: String(port),
        KELSINGRA_PROXY_PORT: String(proxyPort),
        KELSINGRA_SERVICES: `billing=${billing.url}, orders=${orders.url}`,
        KELSINGRA_TOKEN: TOKEN,
        KELSINGRA_TENANT_HEADER: 'x-org',
      },
      port,
    );
    const status = await statusOf(clientEnv({ control: server.control } as ServerProcess, TOKEN));
    expect(status.services.map((s: { name: string }) => s.name)).toEqual(['billing', 'orders']);
    expect(status.tenantHeader).toBe('x-org');
    expect(await json(proxyPort, '/b', { 'x-kelsingra-service': 'billing' })).toMatchObject({
      name: 'billing',
      path: '/b',
    });
    expect(await json(proxyPort, '/o', { 'x-kelsingra-service': 'orders' })).toMatchObject({
      name: 'orders',
      path: '/o',
    });
    const wrong = await cli(
      ['status'],
      clientEnv({ control: server.control } as ServerProcess, 'some-other-token'),
    );
    expect(wrong.exitCode).toBe(3);
    expect(server.logs()).not.toContain(TOKEN);
  });

  it('KELSINGRA_CONFIG names the config file', async () => {
    const billing = await upstream('billing');
    const [port, proxyPort] = [await freePort(), await freePort()];
    const path = file(
      'via-env.yaml',
      `port: ${port}\nproxyPort: ${proxyPort}\ntoken: ${TOKEN}\nservices:\n  billing:\n    upstream: ${billing.url}\n`,
    );
    const server = await spawnServer([], { KELSINGRA_CONFIG: path }, port);
    const status = await statusOf(clientEnv({ control: server.control } as ServerProcess, TOKEN));
    expect(status.services.map((s: { name: string }) => s.name)).toEqual(['billing']);
  });

  it('flags win over the environment, which wins over the file', async () => {
    const a = await upstream('a');
    const b = await upstream('b');
    const c = await upstream('c');
    const [port, fileProxyPort, envProxyPort] = [await freePort(), await freePort(), await freePort()];
    const config = file(
      'kelsingra.yaml',
      `port: ${port}\nproxyPort: ${fileProxyPort}\ntoken: file-token-aaaaaaaa\nservices:\n  billing:\n    upstream: ${a.url}\n  orders:\n    upstream: ${a.url}\n`,
    );
    const server = await spawnServer(
      ['--config', config, '--token', 'flag-token-cccccccc', '--service', `orders=${c.url}`],
      {
        KELSINGRA_PROXY_PORT: String(envProxyPort),
        KELSINGRA_TOKEN: 'env-token-bbbbbbbb',
        KELSINGRA_SERVICES: `billing=${b.url}`,
      },
      port,
    );
    const as = (token: string) => clientEnv({ control: server.control } as ServerProcess, token);
    // Control port from the file; the flag's token, not the environment's or the file's.
    expect((await cli(['status'], as('flag-token-cccccccc'))).exitCode).toBe(0);
    expect((await cli(['status'], as('env-token-bbbbbbbb'))).exitCode).toBe(3);
    expect((await cli(['status'], as('file-token-aaaaaaaa'))).exitCode).toBe(3);
    // Data port from the environment, not the file.
    await expect(request(fileProxyPort, '/', { 'x-kelsingra-service': 'billing' })).rejects.toThrow(
      /ECONNREFUSED/,
    );
    // billing's upstream from the environment, orders' from the flag.
    expect(await json(envProxyPort, '/', { 'x-kelsingra-service': 'billing' })).toMatchObject({ name: 'b' });
    expect(await json(envProxyPort, '/', { 'x-kelsingra-service': 'orders' })).toMatchObject({ name: 'c' });
    for (const secret of ['flag-token-cccccccc', 'env-token-bbbbbbbb', 'file-token-aaaaaaaa'])
      expect(server.logs()).not.toContain(secret);
  });

  it('--proxy-port and --port win over KELSINGRA_PROXY_PORT and KELSINGRA_PORT', async () => {
    const billing = await upstream('billing');
    const [envPort, envProxyPort] = [await freePort(), await freePort()];
    const server = await startServerProcess(['--service', `billing=${billing.url}`, '--token', TOKEN], {
      KELSINGRA_PORT: String(envPort),
      KELSINGRA_PROXY_PORT: String(envProxyPort),
    });
    cleanups.push(() => server.stop());
    expect(await json(server.proxyPort, '/', { 'x-kelsingra-service': 'billing' })).toMatchObject({
      name: 'billing',
    });
    await expect(request(envProxyPort, '/', { 'x-kelsingra-service': 'billing' })).rejects.toThrow(
      /ECONNREFUSED/,
    );
    await expect(fetch(`http://127.0.0.1:${envPort}/healthz`)).rejects.toThrow();
  });

  it('SIGTERM shuts the server down cleanly', async () => {
    const billing = await upstream('billing');
    const server = await startServerProcess(['--service', `billing=${billing.url}`, '--token', TOKEN]);
    cleanups.push(() => server.stop());
    server.child.kill('SIGTERM');
    await waitFor(
      () => server.child.exitCode !== null || server.child.signalCode !== null,
      10_000,
      'the server to exit',
    );
    expect(server.child.signalCode).toBe(null);
    expect(server.child.exitCode).toBe(0);
    expect(server.logs()).toMatch(/shutting down/);
  });
});
