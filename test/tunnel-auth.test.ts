/**
 * The client id works like a credential: whoever presents it receives the intercept's
 * traffic. These check that it is never handed out and that another token cannot take an
 * open tunnel over with it.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { type ServerProcess, startServerProcess, tempDir } from './helpers.js';

const ALICE = 'alice-token-123456';
const MALLORY = 'mallory-token-123456';

function openTunnel(
  server: ServerProcess,
  token: string,
  clientId: string,
): Promise<{ ws?: WebSocket; status?: number }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${server.control.replace('http', 'ws')}/v1/tunnel`, 'kelsingra.h2.v1', {
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
    const tokens = join(tempDir('kelsingra-tokens-'), 'tokens.yaml');
    writeFileSync(
      tokens,
      `tokens:\n  - { name: alice, token: ${ALICE}, tenants: ['*'] }\n  - { name: mallory, token: ${MALLORY}, tenants: ['*'] }\n`,
    );
    server = await startServerProcess(['--service', 'billing=http://127.0.0.1:1', '--tokens-file', tokens]);
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
