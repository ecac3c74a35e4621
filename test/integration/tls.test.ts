/**
 * TLS on the server agent's ports, with a throwaway CA made by openssl: a real intercept over
 * https and wss with `connect --ca`, trust through KELSINGRA_CA or NODE_EXTRA_CA_CERTS, clear
 * errors for a client without the CA and for plain HTTP on a TLS port, and replicas relaying
 * to each other's data port over https.
 */

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { StoreHealth } from '../../src/shared/protocol.js';
import {
  bodyJson,
  cleanupsAfterEach,
  interceptDetached,
  type RawResponse,
  rawRequest,
  run,
  type ServerProcess,
  startServerProcess,
  tempDir,
  textService,
  waitFor,
} from '../support/helpers.js';
import { freshDatabase } from '../support/postgres.js';
import { serverConfigFrom } from '../support/server-env.js';
import { makePki, type TestPki } from '../support/tls-fixtures.js';

const TOKEN = 'tls-token-1';
const cleanups = cleanupsAfterEach();
let pki: TestPki;

beforeAll(() => {
  pki = makePki();
});

/** A request over https that trusts the test CA, as a reverse proxy configured with it would send. */
function httpsRequest(url: string, headers: Record<string, string>): Promise<RawResponse> {
  return rawRequest(url, { headers, ca: readFileSync(pki.ca) });
}

/** A server agent for billing on `base` with the test certificate on its ports. */
async function startTlsServer(base: string, args: string[] = []): Promise<ServerProcess> {
  const server = await startServerProcess([
    '--service',
    `billing=${base}`,
    '--token',
    TOKEN,
    '--tls-cert',
    pki.cert,
    '--tls-key',
    pki.key,
    ...args,
  ]);
  cleanups.push(() => server.stop());
  return server;
}

async function tlsServer(args: string[] = []) {
  const base = await textService('base', cleanups);
  const local = await textService('local', cleanups);
  const server = await startTlsServer(base.url, args);
  return { server, base, local, control: `https://127.0.0.1:${server.controlPort}` };
}

/** `kelsingra server` with TLS flags that must stop it before it starts. */
function serverStart(tlsFlags: string[]) {
  return run(
    [
      'server',
      '--port',
      '0',
      '--proxy-port',
      '0',
      '--service',
      'b=http://127.0.0.1:1',
      '--token',
      TOKEN,
      ...tlsFlags,
    ],
    {},
  );
}

const tenant = (t: string) => ({ 'x-kelsingra-service': 'billing', 'x-tenant-id': t });

describe('TLS on the ports', () => {
  it('connect --ca saves the CA, and a real intercept runs over https and wss end to end', async () => {
    const { server, local, control } = await tlsServer();
    expect(server.logs()).toContain('"tls":["control","data"]');
    const env = { KELSINGRA_CONFIG_DIR: tempDir('kelsingra-client-') };

    const connected = await run(
      ['connect', '--server', control, '--token', TOKEN, '--ca', pki.ca, '--json'],
      env,
    );
    expect(connected.exitCode, connected.stderr).toBe(0);
    expect(JSON.parse(connected.stdout)).toMatchObject({ server: control });

    // Everything after connect reads the saved server, token and CA: the detached agent's tunnel too.
    const held = await interceptDetached(env, 'billing', 't1', local.port, cleanups);
    expect(held).toMatchObject({ service: 'billing', tenant: 't1' });
    const data = `https://127.0.0.1:${server.proxyPort}`;
    const mine = await httpsRequest(`${data}/invoices`, tenant('t1'));
    expect(`${mine.status} ${mine.body}`).toBe('200 local GET /invoices');
    const theirs = await httpsRequest(`${data}/invoices`, tenant('t2'));
    expect(`${theirs.status} ${theirs.body}`).toBe('200 base GET /invoices');

    // The outbound gateway reaches the server's /v1/gateway over https too, and comes back to the laptop.
    const gateway = (held as unknown as { gateway?: string }).gateway;
    expect(gateway).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const out = await fetch(`${gateway}/billing/through-gateway`);
    expect(`${out.status} ${await out.text()}`).toBe('200 local GET /through-gateway');

    const listed = await run(['list', '--json'], env);
    expect(listed.exitCode, listed.stderr).toBe(0);
    expect(JSON.parse(listed.stdout)).toMatchObject([{ id: held.id, connected: true }]);
  });

  it('without the CA the error says how to give it; KELSINGRA_CA or NODE_EXTRA_CA_CERTS make it work', async () => {
    const { control } = await tlsServer();
    const env = {
      KELSINGRA_SERVER: control,
      KELSINGRA_TOKEN: TOKEN,
      KELSINGRA_CONFIG_DIR: tempDir('kelsingra-client-'),
    };
    const untrusted = await run(['status'], env);
    expect(untrusted.exitCode).toBe(6);
    expect(untrusted.stderr).toMatch(/UNABLE_TO_VERIFY_LEAF_SIGNATURE/);
    expect(untrusted.stderr).toMatch(/--ca <ca\.pem>.*KELSINGRA_CA.*NODE_EXTRA_CA_CERTS/);

    expect((await run(['status'], { ...env, KELSINGRA_CA: pki.ca })).exitCode).toBe(0);
    expect((await run(['status'], { ...env, NODE_EXTRA_CA_CERTS: pki.ca })).exitCode).toBe(0);

    const missing = await run(['status'], { ...env, KELSINGRA_CA: `${pki.dir}/nope.pem` });
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr).toMatch(/cannot read the CA file .*nope\.pem/);
  });

  it('plain HTTP on a TLS port gets a clear answer, the CLI says to use https://, and the log has a line', async () => {
    const { server } = await tlsServer();
    const env = {
      KELSINGRA_SERVER: `http://127.0.0.1:${server.controlPort}`,
      KELSINGRA_TOKEN: TOKEN,
      KELSINGRA_CONFIG_DIR: tempDir('kelsingra-client-'),
    };
    const status = await run(['status'], env);
    expect(status.exitCode).toBe(6);
    expect(status.stderr).toMatch(/speaks HTTPS \(TLS\) only; use https:\/\/ instead of http:\/\//);

    const res = await rawRequest(`http://127.0.0.1:${server.proxyPort}/invoices`, { headers: tenant('t1') });
    expect(res.status).toBe(400);
    expect(res.headers['x-kelsingra-error']).toBe('https-required');
    expect(String(bodyJson(res).error)).toMatch(/^Kelsingra: this is the data port .* speaks HTTPS/);

    // One line for each port, naming the address and why.
    for (const port of ['control', 'data'])
      await waitFor(
        () =>
          server
            .logs()
            .includes(`"port":"${port}","remoteAddress":"127.0.0.1","code":"PLAIN_HTTP_ON_TLS_PORT"`),
        5_000,
        `the ${port} port's log line`,
      );
  });

  it('--tls-ports data: the control port stays plain HTTP while the data port speaks TLS', async () => {
    const { server } = await tlsServer(['--tls-ports', 'data']);
    expect(server.logs()).toContain('"tls":["data"]');
    expect((await fetch(`${server.control}/healthz`)).status).toBe(200);
    const res = await httpsRequest(`https://127.0.0.1:${server.proxyPort}/x`, tenant('t2'));
    expect(`${res.status} ${res.body}`).toBe('200 base GET /x');
  });

  it('a certificate that cannot be read, or a key without its certificate, stops the start with exit 7', async () => {
    const unreadable = await serverStart(['--tls-cert', `${pki.dir}/missing.pem`, '--tls-key', pki.key]);
    expect(unreadable.exitCode).toBe(7);
    expect(unreadable.stderr).toMatch(/cannot read the TLS certificate .*missing\.pem/);
    const half = await serverStart(['--tls-key', pki.key]);
    expect(half.exitCode).toBe(7);
    expect(half.stderr).toMatch(/tls\.cert: give the certificate and its key together/);
  });

  it('replicas with https advertise URLs relay to each other over TLS, trusting the CA given with --tls-ca', async () => {
    const db = await freshDatabase(cleanups);
    const base = await textService('base', cleanups);
    const local = await textService('local', cleanups);
    const replica = () => startTlsServer(base.url, ['--database-url', db, '--tls-ca', pki.ca]);
    const [r1, r2] = (await Promise.all([replica(), replica()])) as [ServerProcess, ServerProcess];
    const env = {
      KELSINGRA_SERVER: `https://127.0.0.1:${r1.controlPort}`,
      KELSINGRA_TOKEN: TOKEN,
      KELSINGRA_CA: pki.ca,
      KELSINGRA_CONFIG_DIR: tempDir('kelsingra-client-'),
    };
    await interceptDetached(env, 'billing', 't1', local.port, cleanups);

    // The default advertise URL follows the data port's scheme.
    const status = await run(['status', '--json'], {
      ...env,
      KELSINGRA_SERVER: `https://127.0.0.1:${r2.controlPort}`,
    });
    const replicas = (JSON.parse(status.stdout) as { store: StoreHealth }).store.replicas ?? [];
    expect(replicas.map((r) => r.url).sort()).toEqual(
      [r1, r2].map((r) => `https://127.0.0.1:${r.proxyPort}`).sort(),
    );

    // Arriving at r2, the tunnel is on r1: one https hop between them.
    const relayed = await httpsRequest(`https://127.0.0.1:${r2.proxyPort}/relayed`, tenant('t1'));
    expect(`${relayed.status} ${relayed.body}`).toBe('200 local GET /relayed');
  });
});

describe('TLS settings', () => {
  it("merge per key: a flag replaces the file's certificate alone, the environment adds the CA", async () => {
    const path = join(tempDir('kelsingra-config-'), 'kelsingra.yaml');
    writeFileSync(
      path,
      `token: ${TOKEN}\nservices: { billing: { upstream: http://127.0.0.1:9001 } }\ntls: { cert: file.pem, key: file.key, ports: [control] }\n`,
    );
    const config = await serverConfigFrom({ KELSINGRA_TLS_CA: 'ca.pem' }, { 'tls-cert': 'flag.pem' }, path);
    expect(config.tls).toEqual({ cert: 'flag.pem', key: 'file.key', ca: 'ca.pem', ports: ['control'] });
    expect(config.maxBodyBytes).toBe(100 * 1024 * 1024);
    expect(config.drainTimeout).toBe(20);
  });
});
