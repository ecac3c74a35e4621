/**
 * gRPC through the data port, end to end: a real grpc-js client, a real `kelsingra server`
 * process and real grpc-js upstreams. Covers every kind of call for a base tenant and through
 * a tenant route, deadlines, an upstream that is down, and Kelsingra's own errors as gRPC
 * statuses.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type EchoServer,
  echoClient,
  type GrpcError,
  GrpcStatus,
  startEchoServer,
} from '../support/grpc-fixtures.js';
import {
  CLOSED_PORT,
  clientEnv,
  run,
  type ServerProcess,
  startServerProcess,
  waitFor,
} from '../support/helpers.js';

const TOKEN = 'grpc-pass-token-123';

describe('gRPC pass-through', () => {
  let base: EchoServer;
  let routed: EchoServer;
  let server: ServerProcess;

  beforeAll(async () => {
    base = await startEchoServer('base');
    routed = await startEchoServer('routed');
    server = await startServerProcess([
      '--service',
      `echo=${base.url}`,
      '--service',
      `down=http://127.0.0.1:${CLOSED_PORT}`,
      '--token',
      TOKEN,
      '--upstream-timeout',
      '3',
      '--max-body-bytes',
      '4096',
    ]);
  }, 60_000);

  afterAll(async () => {
    await server?.stop();
    await base?.close();
    await routed?.close();
  });

  const client = (service = 'echo') => echoClient(`127.0.0.1:${server.proxyPort}`, service);

  it('carries unary, server-, client- and bidi-streaming calls to the base upstream, metadata and trailers included', async () => {
    const c = client();
    try {
      const trailers: Record<string, string> = {};
      const one = await c.unary(
        { message: 'hi' },
        { metadata: { 'x-tenant-id': 't1', 'x-extra': 'v' }, trailers },
      );
      expect(one.message).toBe('hi');
      expect(one.servedBy).toBe('base');
      expect(one.metadata['x-tenant-id']).toBe('t1');
      expect(one.metadata['x-extra']).toBe('v');
      expect(trailers['x-served-by']).toBe('base');

      const many = await c.serverStream({ message: 's', count: 5 }, { metadata: { 'x-tenant-id': 't1' } });
      expect(many.map((r) => r.message)).toEqual(['s#0', 's#1', 's#2', 's#3', 's#4']);

      const joined = await c.clientStream([{ message: 'a' }, { message: 'b' }, { message: 'c' }]);
      expect(joined.message).toBe('a,b,c');
      expect(joined.index).toBe(3);

      const echoed = await c.bidi([{ message: 'x' }, { message: 'y' }, { message: 'z' }]);
      expect(echoed.map((r) => r.message)).toEqual(['echo:x', 'echo:y', 'echo:z']);
    } finally {
      c.close();
    }
  });

  it("passes the upstream's own gRPC status on", async () => {
    const c = client();
    try {
      const err = (await c
        .unary({ message: 'x', failWith: GrpcStatus.NOT_FOUND })
        .catch((e) => e)) as GrpcError;
      expect(err.code).toBe(GrpcStatus.NOT_FOUND);
      expect(err.details).toBe('echo base failed as asked');
    } finally {
      c.close();
    }
  });

  it('sends a tenant with a route to its route target over HTTP/2', async () => {
    const env = clientEnv(server, TOKEN);
    const set = await run(['route', 'set', 'echo', '-t', 'feature-7', '--to', routed.url], env);
    expect(set.exitCode, set.stderr).toBe(0);
    const c = client();
    try {
      await waitFor(async () => {
        const r = await c.unary({ message: 'r' }, { metadata: { 'x-tenant-id': 'feature-7' } });
        return r.servedBy === 'routed' ? r : undefined;
      });
      const streamed = await c.bidi([{ message: '1' }, { message: '2' }], {
        metadata: { 'x-tenant-id': 'feature-7' },
      });
      expect(streamed.map((r) => r.servedBy)).toEqual(['routed', 'routed']);
      // Other tenants still reach the base.
      expect((await c.unary({ message: 'b' }, { metadata: { 'x-tenant-id': 'other' } })).servedBy).toBe(
        'base',
      );
    } finally {
      c.close();
      await run(['route', 'delete', 'echo', '-t', 'feature-7'], env);
    }
  });

  it('reports DEADLINE_EXCEEDED to the caller and cancels the call upstream', async () => {
    const c = client();
    try {
      const before = base.cancelled.length;
      const err = (await c
        .unary({ message: 'slow', delayMs: 2_000 }, { deadlineMs: 300 })
        .catch((e) => e)) as GrpcError;
      expect(err.code).toBe(GrpcStatus.DEADLINE_EXCEEDED);
      await waitFor(() => base.cancelled.length > before);
      expect(base.cancelled.at(-1)).toBe('Unary');
    } finally {
      c.close();
    }
  });

  it('answers UNAVAILABLE with a Kelsingra message when the upstream is down', async () => {
    const c = client('down');
    try {
      const err = (await c.unary({ message: 'x' }).catch((e) => e)) as GrpcError;
      expect(err.code).toBe(GrpcStatus.UNAVAILABLE);
      // Refused at once, or once its health checks have failed (any order of the tests).
      expect(err.details).toMatch(/^Kelsingra: (could not reach|no healthy backend for) the down upstream/);
      expect(String(err.metadata.get('x-kelsingra-error')[0])).toMatch(
        /^(upstream-unreachable|no-healthy-backend)$/,
      );
    } finally {
      c.close();
    }
  });

  it('stops a call whose messages go past --max-body-bytes with RESOURCE_EXHAUSTED, the upstream seeing it cancelled', async () => {
    const c = client();
    try {
      const small = await c.unary({ message: 'a'.repeat(1000) });
      expect(small.message).toHaveLength(1000);
      const err = (await c
        .clientStream(Array.from({ length: 8 }, () => ({ message: 'b'.repeat(1000) })))
        .catch((e) => e)) as GrpcError;
      expect(err.code).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
      expect(err.details).toMatch(/^Kelsingra: the request body went past 4096 bytes/);
    } finally {
      c.close();
    }
  });

  it("answers Kelsingra's own refusals as gRPC statuses (an unknown service is UNIMPLEMENTED)", async () => {
    const c = client('nosuchservice');
    try {
      const err = (await c.unary({ message: 'x' }).catch((e) => e)) as GrpcError;
      expect(err.code).toBe(GrpcStatus.UNIMPLEMENTED);
      expect(err.details).toMatch(/^Kelsingra: no service matches host "nosuchservice"/);
    } finally {
      c.close();
    }
  });
});
