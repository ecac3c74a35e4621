/**
 * Garbage on the ports: the offending connection alone is closed, with a Kelsingra answer,
 * and the log names the address and the parser's error code, at most once per address per
 * window however much garbage arrives.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClientErrorLog } from '../../server/data-plane/client-errors.js';
import {
  closeServer,
  listen,
  rawRequest,
  type ServerProcess,
  startServerProcess,
  viaProxy,
  waitFor,
} from '../support/helpers.js';

const TOKEN = 'client-errors-token-1';

/** Writes `data` on a new connection and reads until the server closes it. */
function garbage(port: number, data: string | Buffer): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', () => undefined);
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    socket.on('connect', () => socket.write(data));
    setTimeout(() => socket.destroy(), 5_000).unref();
  });
}

interface LogLine {
  level: number;
  msg: string;
  port?: string;
  remoteAddress?: string;
  code?: string;
  suppressed?: number;
}

function warnings(server: ServerProcess, port: 'control' | 'data'): LogLine[] {
  return server
    .logs()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as LogLine)
    .filter((l) => l.level === 40 && l.port === port);
}

describe('garbage on every port', () => {
  let server: ServerProcess;
  let upstream: Awaited<ReturnType<typeof listen>>;

  beforeAll(async () => {
    upstream = await listen((req, res) => {
      req.resume();
      res.end(`upstream ${req.url}`);
    });
    server = await startServerProcess(['--service', `billing=${upstream.url}`, '--token', TOKEN]);
  });
  afterAll(async () => {
    await server?.stop();
    await closeServer(upstream);
  });

  for (const port of ['control', 'data'] as const) {
    it(`${port} port: each garbage connection is answered and closed, another connection's requests keep succeeding, and the log has one line per address`, async () => {
      const target = port === 'control' ? server.controlPort : server.proxyPort;
      // Good requests, each on a connection of its own, sent while the garbage flows.
      const good = async (i: number) => {
        const res = await rawRequest(
          port === 'control' ? `${server.control}/healthz` : `${server.data}/good-${i}`,
          {
            headers: port === 'control' ? {} : { 'x-kelsingra-service': 'billing', 'x-tenant-id': 't1' },
          },
        );
        expect(res.status).toBe(200);
      };
      const floods = Array.from({ length: 20 }, (_, i) =>
        garbage(
          target,
          i % 2
            ? Buffer.from([0x00, 0xff, 0x13, 0x37, 0x0d, 0x0a, 0x0d, 0x0a])
            : 'BREW /pot HTCPCP/1.0\r\n\r\n',
        ),
      );
      const goods = Array.from({ length: 10 }, (_, i) => good(i));
      const answers = await Promise.all(floods);
      await Promise.all(goods);
      for (const answer of answers) {
        expect(answer).toMatch(/^HTTP\/1\.1 400 /);
        expect(answer.toLowerCase()).toContain('x-kelsingra-error: malformed-request');
      }
      if (port === 'data')
        expect(await (await viaProxy(server, 'billing', 't1', '/after')).text()).toBe('upstream /after');

      const lines = await waitFor(
        () => {
          const l = warnings(server, port);
          return l.length ? l : undefined;
        },
        5_000,
        `the ${port} port's log line`,
      );
      // Twenty bad connections from one address inside the window: one line.
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatchObject({ port, remoteAddress: '127.0.0.1' });
      expect(lines[0]?.code).toMatch(/^HPE_/);
      expect(lines[0]?.msg).toMatch(
        new RegExp(`malformed request on the ${port} port; closed that connection`),
      );
    });
  }

  it('the control port answers oversized headers with 431 and a Kelsingra error, like the data port', async () => {
    const res = await rawRequest(`${server.control}/healthz`, {
      headers: { 'x-big': 'a'.repeat(40 * 1024) },
    });
    expect(res.status).toBe(431);
    expect(res.headers['x-kelsingra-error']).toBe('headers-too-large');
    expect(JSON.parse(res.body.toString()).error).toMatch(/^Kelsingra: request headers too large/);
  });
});

describe('ClientErrorLog', () => {
  it('writes one line per address per window, then how many more it counted', () => {
    let now = 0;
    const lines: { fields: Record<string, unknown>; msg: string }[] = [];
    const log = {
      warn: (fields: object, msg: string) => lines.push({ fields: fields as Record<string, unknown>, msg }),
    };
    const errors = new ClientErrorLog(log as never, { windowMs: 10_000, maxAddresses: 2, now: () => now });
    for (let i = 0; i < 5; i++) errors.report('data', '10.0.0.1', 'HPE_INVALID_METHOD', 'malformed request');
    errors.report('control', '10.0.0.2', 'HPE_HEADER_OVERFLOW', 'request headers too large');
    // More addresses than it tracks: they share one line (and one count) per window.
    errors.report('data', '10.0.0.3', 'HPE_INVALID_METHOD', 'malformed request');
    errors.report('data', '10.0.0.4', 'HPE_INVALID_METHOD', 'malformed request');
    expect(lines.map((l) => l.fields.remoteAddress)).toEqual(['10.0.0.1', '10.0.0.2', '(other addresses)']);

    now = 5_000;
    errors.sweep();
    expect(lines).toHaveLength(3);
    now = 10_000;
    errors.sweep();
    // The first address's four more and the others' one; the second sent nothing more and is forgotten.
    expect(lines.slice(3).map((l) => l.fields)).toEqual([
      expect.objectContaining({ remoteAddress: '10.0.0.1', suppressed: 4, port: 'data' }),
      expect.objectContaining({ remoteAddress: '(other addresses)', suppressed: 1 }),
    ]);
    // Still within its next window: counted, not written.
    errors.report('data', '10.0.0.1', 'HPE_INVALID_METHOD', 'malformed request');
    expect(lines).toHaveLength(5);
    now = 20_000;
    errors.sweep();
    expect(lines.slice(5).map((l) => l.fields)).toEqual([
      expect.objectContaining({ remoteAddress: '10.0.0.1', suppressed: 1 }),
    ]);
    errors.stop();
  });
});
