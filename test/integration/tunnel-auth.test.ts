/**
 * The client id works like a credential: whoever presents it receives the intercept's
 * traffic. These check that it is never handed out and that another token cannot take an
 * open tunnel over with it.
 */
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { TunnelClient } from '../../src/client/tunnel/tunnel-client.js';
import { KelsingraError } from '../../src/shared/errors.js';
import { TUNNEL_SUBPROTOCOL } from '../../src/shared/tunnel-wire.js';
import {
  clientEnv,
  run,
  type ServerProcess,
  startServerProcess,
  tempDir,
  waitFor,
} from '../support/helpers.js';

const ALICE = 'alice-token-123456';
const MALLORY = 'mallory-token-123456';

/** A server agent that knows the tokens alice and mallory. */
function startServer(...extra: string[]): Promise<ServerProcess> {
  const tokens = join(tempDir('kelsingra-tokens-'), 'tokens.yaml');
  writeFileSync(
    tokens,
    `tokens:\n  - { name: alice, token: ${ALICE}, tenants: ['*'] }\n  - { name: mallory, token: ${MALLORY}, tenants: ['*'] }\n`,
  );
  return startServerProcess(['--service', 'billing=http://127.0.0.1:1', '--tokens-file', tokens, ...extra]);
}

function openTunnel(
  server: ServerProcess,
  token: string,
  clientId: string,
): Promise<{ ws?: WebSocket; status?: number }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${server.control.replace('http', 'ws')}/v1/tunnel`, TUNNEL_SUBPROTOCOL, {
      headers: {
        authorization: `Bearer ${token}`,
        'x-kelsingra-client': clientId,
        'x-kelsingra-holder': 'test',
      },
    });
    ws.once('unexpected-response', (_req, res) => {
      res.resume();
      resolve({ status: res.statusCode });
    });
    ws.once('message', () => resolve({ ws }));
    ws.once('error', () => resolve({}));
  });
}

describe('tunnel ownership', () => {
  let server: ServerProcess;
  beforeAll(async () => {
    server = await startServer();
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('refuses a tunnel that presents another token’s open client id, and never shows client ids', async () => {
    const clientId = 'c_alice_client_1';
    const alice = await openTunnel(server, ALICE, clientId);
    expect(alice.ws, 'alice could not open her tunnel').toBeDefined();
    const res = await fetch(`${server.control}/v1/intercepts`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ALICE}`, 'content-type': 'application/json' },
      body: JSON.stringify({ service: 'billing', tenant: 't1', clientId, localPort: 3000 }),
    });
    expect(res.status).toBe(201);

    const mallory = await openTunnel(server, MALLORY, clientId);
    expect(mallory.status).toBe(409);
    expect(alice.ws?.readyState).toBe(WebSocket.OPEN);

    // Nor may another token register intercepts on alice's tunnel.
    const steal = await fetch(`${server.control}/v1/intercepts`, {
      method: 'POST',
      headers: { authorization: `Bearer ${MALLORY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ service: 'billing', tenant: 't2', clientId, localPort: 3000 }),
    });
    expect(steal.status).toBe(403);

    for (const path of ['/v1/intercepts', '/status']) {
      const text = await (
        await fetch(`${server.control}${path}`, { headers: { authorization: `Bearer ${ALICE}` } })
      ).text();
      expect(text).not.toContain(clientId);
      expect(text).toContain('t_');
    }
    expect(server.logs()).not.toContain(clientId);
    alice.ws?.close();
  });
});

describe('the limit on tunnels per token', () => {
  let server: ServerProcess;
  beforeAll(async () => {
    server = await startServer('--max-tunnels-per-token', '2');
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('refuses one tunnel more than the limit with 429, which the CLI names; reconnects and other tokens are not held back', async () => {
    const first = await openTunnel(server, ALICE, 'c_alice_limit_1');
    const second = await openTunnel(server, ALICE, 'c_alice_limit_2');
    expect(first.ws && second.ws, 'alice could not open her first two tunnels').toBeTruthy();

    expect((await openTunnel(server, ALICE, 'c_alice_limit_3')).status).toBe(429);
    const cli = await run(
      ['intercept', 'billing', '--tenant', 't1', '--port', '3999'],
      clientEnv(server, ALICE, { KELSINGRA_HOLDER: 'alice@laptop' }),
    );
    expect(cli.exitCode, cli.stderr).toBe(1);
    expect(cli.stderr).toContain(
      'the server refused the tunnel (HTTP 429): token "alice" already holds 2 tunnels open on this server agent, its limit (maxTunnelsPerToken)',
    );
    expect(cli.stderr).toMatch(/Hint: stop kelsingra intercepts this token runs elsewhere/);
    expect(cli.stderr).not.toMatch(/unexpected|is --server the Kelsingra control port/);

    // A client coming back replaces its own tunnel: no more are open, so it gets in.
    const again = await openTunnel(server, ALICE, 'c_alice_limit_1');
    expect(again.ws, 'a reconnect was refused').toBeDefined();
    const mallory = await openTunnel(server, MALLORY, 'c_mallory_limit_1');
    expect(mallory.ws, 'another token was held back by alice’s limit').toBeDefined();

    // A tunnel closed frees its place.
    second.ws?.close();
    const third = await waitFor(
      async () => (await openTunnel(server, ALICE, 'c_alice_limit_3')).ws,
      10_000,
      'a place freed by a closed tunnel',
    );
    for (const ws of [first.ws, again.ws, mallory.ws, third]) ws?.close();
  });
});

describe('tunnel protocol versions', () => {
  let server: ServerProcess;
  beforeAll(async () => {
    server = await startServer();
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('a client of the old protocol (Kelsingra 0.1) is refused with 426, naming both protocols and what to upgrade', async () => {
    const refused = await new Promise<{ status?: number; body: string; code?: string }>((resolve) => {
      const ws = new WebSocket(`${server.control.replace('http', 'ws')}/v1/tunnel`, 'kelsingra.h2.v1', {
        headers: {
          authorization: `Bearer ${ALICE}`,
          'x-kelsingra-client': 'c_old_client_1',
          'x-kelsingra-version': '0.1.0',
        },
      });
      ws.once('unexpected-response', (_req, res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c));
        res.on('end', () =>
          resolve({ status: res.statusCode, body, code: res.headers['x-kelsingra-error'] as string }),
        );
      });
      ws.once('open', () => resolve({ body: 'opened' }));
    });
    expect(refused.status).toBe(426);
    expect(refused.code).toBe('tunnel-version');
    const body = JSON.parse(refused.body) as { error: string; hint: string };
    expect(body.error).toMatch(
      /speaks tunnel protocol kelsingra\.tunnel\.v2; the client \(Kelsingra 0\.1\.0\) offered kelsingra\.h2\.v1/,
    );
    expect(body.hint).toMatch(/upgrade the kelsingra CLI/);
  });

  it('the client agent meeting a server agent of the old protocol fails at once, saying to upgrade the server', async () => {
    // The 0.1 server agent's tunnel endpoint as far as a handshake goes: it accepted only its own
    // subprotocol, and upgraded without one for any other offer.
    const old = new WebSocketServer({
      host: '127.0.0.1',
      port: 0,
      handleProtocols: (protocols) => (protocols.has('kelsingra.h2.v1') ? 'kelsingra.h2.v1' : false),
    });
    await once(old, 'listening');
    try {
      const client = new TunnelClient({
        server: `http://127.0.0.1:${(old.address() as AddressInfo).port}`,
        token: ALICE,
        clientId: 'c_new_client_1',
        holder: 'test',
        onStream: () => undefined,
      });
      const started = Date.now();
      const err = (await client.start().then(
        () => undefined,
        (e: unknown) => e,
      )) as KelsingraError;
      client.close();
      expect(err).toBeInstanceOf(KelsingraError);
      expect(err.message).toMatch(/older tunnel protocol than this client \(kelsingra\.tunnel\.v2/);
      expect(err.hint).toMatch(/upgrade the server agent/);
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      old.close();
    }
  });
});
