/**
 * Upgrade requests (WebSocket) on the data port: passed through to the upstream for tenants
 * nobody intercepts, refused clearly for an intercepted tenant (the tunnel carries plain
 * HTTP only), and held to the same routing errors as any request.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import {
  type Cleanup,
  clientEnv,
  closeServer,
  interceptDetached,
  listen,
  type ServerProcess,
  startServerProcess,
  textService,
} from './helpers.js';

const TOKEN = 'upgrade-test-token-1';

/** Opens a WebSocket through the data port; resolves with the echo of `hello`, or the refusal status. */
function exchange(
  server: ServerProcess,
  headers: Record<string, string>,
): Promise<{ echo?: string; status?: number; upstreamHeaders?: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${server.data.replace('http', 'ws')}/chat?room=1`, { headers });
    ws.once('open', () => ws.send('hello'));
    ws.once('message', (data) => {
      resolve({ echo: data.toString() });
      ws.close();
    });
    ws.once('unexpected-response', (_req, res) => {
      res.resume();
      resolve({ status: res.statusCode });
    });
    ws.once('error', reject);
  });
}

describe('upgrades on the data port', () => {
  let server: ServerProcess;
  let upstream: Awaited<ReturnType<typeof listen>>;
  const seen: Record<string, string | undefined>[] = [];
  const cleanups: Cleanup[] = [];

  beforeAll(async () => {
    upstream = await listen((_req, res) => res.end('plain'));
    const wss = new WebSocketServer({ server: upstream.server });
    wss.on('connection', (ws, req) => {
      seen.push({
        url: req.url,
        tenant: req.headers['x-tenant-id'] as string,
        hop: req.headers['x-kelsingra-hop'] as string,
        via: req.headers.via as string,
      });
      ws.on('message', (data) => ws.send(`echo:${data}`));
    });
    server = await startServerProcess(['--service', `chat=${upstream.url}`, '--token', TOKEN]);
    const local = await textService('local', cleanups);
    await interceptDetached(
      clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'upgrade-test' }),
      'chat',
      't1',
      local.port,
      cleanups,
    );
  });

  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
    await server?.stop();
    await closeServer(upstream);
  });

  it('passes a WebSocket through to the upstream for a tenant nobody intercepts, with this hop’s headers', async () => {
    const r = await exchange(server, { 'x-kelsingra-service': 'chat', 'x-tenant-id': 't2' });
    expect(r.echo).toBe('echo:hello');
    expect(seen.at(-1)).toMatchObject({ url: '/chat?room=1', tenant: 't2', via: '1.1 kelsingra' });
    expect(seen.at(-1)?.hop).toBeTruthy();
  });

  it('refuses an upgrade for an intercepted tenant with 501 rather than sending it elsewhere', async () => {
    const before = seen.length;
    const r = await exchange(server, { 'x-kelsingra-service': 'chat', 'x-tenant-id': 't1' });
    expect(r.status).toBe(501);
    expect(seen.length).toBe(before);
  });

  it('answers unknown services and loops as it does for plain requests', async () => {
    expect((await exchange(server, { 'x-kelsingra-service': 'nope' })).status).toBe(404);
    expect(
      (await exchange(server, { 'x-kelsingra-service': 'chat', 'x-kelsingra-hop': 'ks-x' })).status,
    ).toBe(508);
  });
});
