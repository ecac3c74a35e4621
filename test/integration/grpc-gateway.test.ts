/**
 * gRPC from the laptop into dev through the outbound gateway: a real grpc-js client dials the
 * gateway (h2c), which carries the call over HTTP/2 to a real server agent's /v1/gateway, which
 * passes it on over HTTP/2 to a grpc-js service, with the tenant added on the way.
 */
import { describe, expect, it } from 'vitest';
import { startClientGateway } from '../../src/client/gateway/gateway-client.js';
import { echoClient, type GrpcError, GrpcStatus, startEchoServer } from '../support/grpc-fixtures.js';
import { CLOSED_PORT, cleanupsAfterEach, startServerProcess, tempDir } from '../support/helpers.js';

const TOKEN = 'grpc-gateway-token-123';
const cleanups = cleanupsAfterEach();

async function setUp() {
  const echo = await startEchoServer('dev-echo');
  cleanups.push(() => echo.close());
  const server = await startServerProcess([
    '--service',
    `echo=${echo.url}`,
    '--service',
    `down=http://127.0.0.1:${CLOSED_PORT}`,
    '--token',
    TOKEN,
  ]);
  cleanups.push(() => server.stop());
  const settings = {
    server: server.control,
    token: TOKEN,
    holder: 'grpc-gw',
    configDir: tempDir('kelsingra-gw-'),
  };
  const { gateway } = await startClientGateway(settings, 't1', { port: 0, cors: false });
  cleanups.push(() => gateway.close());
  return { echo, gateway };
}

describe('gRPC through the outbound gateway', () => {
  it('carries unary and streaming calls into dev with the tenant added, addressed by :authority', async () => {
    const { echo, gateway } = await setUp();
    const c = echoClient(`127.0.0.1:${gateway.port}`, 'echo');
    cleanups.push(() => c.close());
    const trailers: Record<string, string> = {};
    const one = await c.unary({ message: 'from laptop' }, { trailers });
    expect(one.servedBy).toBe('dev-echo');
    expect(one.metadata['x-tenant-id']).toBe('t1');
    expect(one.metadata.baggage).toBe('tenant=t1');
    expect(one.metadata['x-kelsingra-token']).toBeUndefined();
    expect(trailers['x-served-by']).toBe('dev-echo');

    const own = await c.unary({ message: 'x' }, { metadata: { 'x-tenant-id': 't9' } });
    expect(own.metadata['x-tenant-id']).toBe('t9');

    const streamed = await c.bidi([{ message: 'a' }, { message: 'b' }]);
    expect(streamed.map((r) => r.message)).toEqual(['echo:a', 'echo:b']);
    const many = await c.serverStream({ message: 's', count: 3 });
    expect(many).toHaveLength(3);
    expect(echo.calls).toEqual(['Unary', 'Unary', 'Bidi', 'ServerStream']);
  });

  it('carries a gRPC client that uses the gateway as its proxy (grpc_proxy: a CONNECT tunnel with h2c inside)', async () => {
    const { gateway } = await setUp();
    // grpc-js reads the proxy from the environment when the channel first connects.
    const saved = process.env.grpc_proxy;
    process.env.grpc_proxy = gateway.url;
    try {
      const c = echoClient('echo.dev.example.test:80');
      cleanups.push(() => c.close());
      const r = await c.unary({ message: 'proxied' });
      expect(r.servedBy).toBe('dev-echo');
      expect(r.metadata['x-tenant-id']).toBe('t1');
      const streamed = await c.bidi([{ message: 'p' }]);
      expect(streamed.map((x) => x.message)).toEqual(['echo:p']);
    } finally {
      if (saved === undefined) delete process.env.grpc_proxy;
      else process.env.grpc_proxy = saved;
    }
  });

  it("passes Kelsingra's gRPC status back from dev (an upstream that is down is UNAVAILABLE)", async () => {
    const { gateway } = await setUp();
    const c = echoClient(`127.0.0.1:${gateway.port}`, 'down');
    cleanups.push(() => c.close());
    const err = (await c.unary({ message: 'x' }).catch((e) => e)) as GrpcError;
    expect(err.code).toBe(GrpcStatus.UNAVAILABLE);
    expect(err.details).toMatch(/^Kelsingra: (could not reach|no healthy backend for) the down upstream/);
  });
});
