/**
 * An upstream that sends an informational answer first (103 Early Hints) and then its real one:
 * the caller of the data port gets the real answer, whole, with the upstream's status.
 */
import type http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeServer, listen, type ServerProcess, startServerProcess, viaProxy } from '../support/helpers.js';

describe('pass-through of informational answers', () => {
  let upstream: { server: http.Server; url: string };
  let server: ServerProcess;
  beforeAll(async () => {
    upstream = await listen((req, res) => {
      if (req.url === '/hints') res.writeEarlyHints({ link: '</app.css>; rel=preload; as=style' });
      res.writeHead(201, { 'content-type': 'text/plain' }).end(`made ${req.url}`);
    });
    server = await startServerProcess([
      '--service',
      `billing=${upstream.url}`,
      '--token',
      'informational-token-1',
    ]);
  });
  afterAll(async () => {
    await server?.stop();
    await closeServer(upstream);
  });

  it('103 Early Hints before the answer: the caller gets the 201 and its body', async () => {
    const res = await viaProxy(server, 'billing', 't1', '/hints');
    expect(res.status).toBe(201);
    expect(await res.text()).toBe('made /hints');
    // The same connection still serves the next request.
    const next = await viaProxy(server, 'billing', 't1', '/plain');
    expect(next.status).toBe(201);
    expect(await next.text()).toBe('made /plain');
  });
});
