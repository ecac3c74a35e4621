/**
 * gRPC through an intercept, end to end: a real grpc-js client calls the data port (h2c), a
 * real `kelsingra server` sends the intercepted tenant's calls through the tunnel of a real
 * client agent to a grpc-js server on the "laptop", over HTTP/2 all the way. Every kind of
 * call, metadata and trailers, deadlines, a local service that is down, and a call relayed
 * between two replicas on PostgreSQL.
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
  type Cleanup,
  clientEnv,
  interceptDetached,
  type ServerProcess,
  startServerProcess,
  waitFor,
} from '../support/helpers.js';
import { freshDatabase } from '../support/postgres.js';

const TOKEN = 'grpc-tunnel-token-123';
const tenant = (t: string) => ({ metadata: { 'x-tenant-id': t } });

describe('gRPC through an intercept', () => {
  let base: EchoServer;
  let local: EchoServer;
  let server: ServerProcess;
  let interceptId: string;
  const cleanups: Cleanup[] = [];

  beforeAll(async () => {
    base = await startEchoServer('base');
    local = await startEchoServer('local');
    server = await startServerProcess([
      '--service',
      `echo=${base.url}`,
      '--token',
      TOKEN,
      '--upstream-timeout',
      '5',
    ]);
    const env = clientEnv(server, TOKEN);
    interceptId = (await interceptDetached(env, 'echo', 't1', local.port, cleanups)).id;
    // Nothing listens on the laptop for this one.
    await interceptDetached(env, 'echo', 't-down', CLOSED_PORT, cleanups);
  }, 60_000);

  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
    await server?.stop();
    await base?.close();
    await local?.close();
  });

  const client = () => echoClient(`127.0.0.1:${server.proxyPort}`, 'echo');

  it('carries unary, server-, client- and bidi-streaming calls of the intercepted tenant to the local service, and the others to the base', async () => {
    const c = client();
    try {
      const trailers: Record<string, string> = {};
      const one = await c.unary(
        { message: 'hi' },
        { metadata: { 'x-tenant-id': 't1', 'x-extra': 'v' }, trailers },
      );
      expect(one).toMatchObject({ message: 'hi', servedBy: 'local' });
      expect(one.metadata).toMatchObject({
        'x-tenant-id': 't1',
        'x-extra': 'v',
        'x-kelsingra-intercept': interceptId,
      });
      expect(trailers['x-served-by']).toBe('local');

      const many = await c.serverStream({ message: 's', count: 5 }, tenant('t1'));
      expect(many.map((r) => `${r.servedBy}:${r.message}`)).toEqual(
        [0, 1, 2, 3, 4].map((i) => `local:s#${i}`),
      );

      const joined = await c.clientStream(
        [{ message: 'a' }, { message: 'b' }, { message: 'c' }],
        tenant('t1'),
      );
      expect(joined).toMatchObject({ servedBy: 'local' });
      expect(joined.message).toContain('a');
      expect(joined.message).toContain('c');

      const talk = await c.bidi(
        Array.from({ length: 20 }, (_, i) => ({ message: `m${i}` })),
        tenant('t1'),
      );
      expect(talk.map((r) => r.message)).toEqual(Array.from({ length: 20 }, (_, i) => `echo:m${i}`));
      expect(new Set(talk.map((r) => r.servedBy))).toEqual(new Set(['local']));

      expect((await c.unary({ message: 'other' }, tenant('t2'))).servedBy).toBe('base');
      expect((await c.bidi([{ message: 'x' }], tenant('t2')))[0]?.servedBy).toBe('base');
    } finally {
      c.close();
    }
  });

  it('passes the local service’s own error status and message on untouched', async () => {
    const c = client();
    try {
      const err = (await c
        .unary({ message: 'x', failWith: GrpcStatus.NOT_FOUND }, tenant('t1'))
        .catch((e) => e)) as GrpcError;
      expect(err.code).toBe(GrpcStatus.NOT_FOUND);
      expect(err.details).not.toMatch(/Kelsingra/);
    } finally {
      c.close();
    }
  });

  it('a deadline reaches the caller as DEADLINE_EXCEEDED and the local service sees the call cancelled', async () => {
    const c = client();
    try {
      const before = local.cancelled.length;
      const err = (await c
        .unary({ message: 'slow', delayMs: 3_000 }, { ...tenant('t1'), deadlineMs: 400 })
        .catch((e) => e)) as GrpcError;
      expect(err.code).toBe(GrpcStatus.DEADLINE_EXCEEDED);
      await waitFor(() => local.cancelled.length > before, 10_000, 'the local service to see the cancel');
      expect(local.cancelled.at(-1)).toBe('Unary');
    } finally {
      c.close();
    }
  });

  it('a local gRPC service that is down: the caller gets UNAVAILABLE with Kelsingra’s message naming the intercept', async () => {
    const c = client();
    const baseCalls = base.calls.length;
    try {
      const err = (await c.unary({ message: 'x' }, tenant('t-down')).catch((e) => e)) as GrpcError;
      expect(err.code).toBe(GrpcStatus.UNAVAILABLE);
      expect(err.details).toMatch(
        /^Kelsingra: intercept icp_\w+ \(echo, tenant t-down\) could not reach the local service/,
      );
      // The base service was not asked instead.
      expect(base.calls.length).toBe(baseCalls);
    } finally {
      c.close();
    }
  });
});

describe('gRPC relayed between replicas on PostgreSQL', () => {
  const cleanups: Cleanup[] = [];
  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  it('a call to the replica without the tunnel reaches the local service through the one with it', async () => {
    const base = await startEchoServer('base');
    const local = await startEchoServer('local');
    cleanups.push(
      () => base.close(),
      () => local.close(),
    );
    const db = await freshDatabase(cleanups);
    const [r1, r2] = (await Promise.all(
      [1, 2].map(() =>
        startServerProcess(['--service', `echo=${base.url}`, '--token', TOKEN, '--database-url', db]),
      ),
    )) as [ServerProcess, ServerProcess];
    cleanups.push(
      () => r1.stop(),
      () => r2.stop(),
    );
    await interceptDetached(clientEnv(r1, TOKEN), 'echo', 't1', local.port, cleanups);
    const c = echoClient(`127.0.0.1:${r2.proxyPort}`, 'echo');
    try {
      await waitFor(
        async () => (await c.unary({ message: 'probe' }, tenant('t1'))).servedBy === 'local',
        10_000,
        'r2 to route t1 to the tunnel on r1',
      );
      const talk = await c.bidi(
        Array.from({ length: 10 }, (_, i) => ({ message: `r${i}` })),
        tenant('t1'),
      );
      expect(talk.map((r) => `${r.servedBy}:${r.message}`)).toEqual(
        Array.from({ length: 10 }, (_, i) => `local:echo:r${i}`),
      );
      const many = await c.serverStream({ message: 's', count: 3 }, tenant('t1'));
      expect(many.map((r) => r.servedBy)).toEqual(['local', 'local', 'local']);
    } finally {
      c.close();
    }
  }, 60_000);
});
