/**
 * PassThroughProxy and the connections around it: a caller's keep-alive connection stays usable
 * after Kelsingra answers a request with a body itself, and the pools of targets nobody
 * registered (relays to other replicas) are closed once idle. Real HTTP servers throughout.
 */
import http from 'node:http';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import {
  type PassThroughOptions,
  PassThroughProxy,
  type UpstreamTarget,
} from '../../server/data-plane/pass-through.js';
import {
  CLOSED_PORT,
  type Cleanup,
  cleanupsAfterEach,
  closeServer,
  listen,
  sleep,
  waitFor,
} from '../support/helpers.js';

const cleanups: Cleanup[] = cleanupsAfterEach();

/** PassThroughProxy behind a plain HTTP server, as the data plane uses it; the path picks the target. */
async function front(targets: Record<string, UpstreamTarget>, options: PassThroughOptions = {}) {
  const pt = new PassThroughProxy(5_000, undefined, options);
  const server = await listen((req, res) => {
    const [, name = '', ...rest] = (req.url ?? '/').split('/');
    const target = targets[name];
    if (!target) return void res.writeHead(404).end();
    pt.forward(req, res, target, `/${rest.join('/')}`, []);
  });
  cleanups.push(() => closeServer(server));
  cleanups.push(() => pt.close());
  return { pt, url: server.url };
}

/** A backend that counts its open connections and keeps idle ones for a minute. */
async function backend(name: string, delayMs = 0) {
  let open = 0;
  const b = await listen((req, res) => {
    req.resume();
    setTimeout(() => res.end(`${name} ${req.url}`), req.url?.startsWith('/slow') ? delayMs : 0);
  });
  // Long enough that only Kelsingra closing the pool can close an idle connection in a test.
  b.server.keepAliveTimeout = 60_000;
  b.server.on('connection', (s: Socket) => {
    open++;
    s.once('close', () => open--);
  });
  cleanups.push(() => closeServer(b));
  return { ...b, open: () => open };
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  /** The caller's end of the connection: the same port, the same connection. */
  localPort: number | undefined;
}

/** One request through `agent`, failing after `timeoutMs` instead of hanging the test. */
function send(
  agent: http.Agent,
  url: string,
  method: string,
  body?: Buffer,
  timeoutMs = 5_000,
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, agent }, (res) => {
      const localPort = req.socket?.localPort;
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks).toString(),
          localPort,
        }),
      );
    });
    req.setTimeout(timeoutMs, () =>
      req.destroy(new Error(`${method} ${url}: no answer within ${timeoutMs} ms`)),
    );
    req.on('error', reject);
    req.end(body);
  });
}

describe('PassThroughProxy answering a request with a body itself', () => {
  it('answers a POST to a pool with no healthy backend with 503 and Retry-After, and the next request on that keep-alive connection too', async () => {
    const target: UpstreamTarget = {
      name: 'billing',
      upstreams: [new URL(`http://127.0.0.1:${CLOSED_PORT}`)],
      healthCheck: {
        path: '/healthz',
        intervalMs: 60_000,
        timeoutMs: 500,
        unhealthyAfter: 1,
        healthyAfter: 1,
      },
    };
    const { pt, url } = await front({ billing: target });
    pt.register(target);
    await waitFor(() => pt.upstreams()[0]?.state === 'unhealthy', 5_000, 'the backend unhealthy');

    // One connection, kept alive: the second request can only go where the first went.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    cleanups.push(() => agent.destroy());
    // Far more than the buffers between the caller and Kelsingra hold.
    const upload = Buffer.alloc(8 * 1024 * 1024, 'x');
    const first = await send(agent, `${url}/billing/upload`, 'POST', upload);
    expect(first.status).toBe(503);
    expect(first.headers['x-kelsingra-error']).toBe('no-healthy-backend');
    expect(Number(first.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    const body = JSON.parse(first.body) as { error: string; hint: string };
    expect(body.error).toContain('its only backend is down');
    expect(body.hint).toMatch(/health check \(GET \/healthz/);

    const second = await send(agent, `${url}/billing/after`, 'POST', Buffer.from('small'));
    expect(second.status).toBe(503);
    expect(second.localPort).toBe(first.localPort);
  });
});

describe('PassThroughProxy pools of unregistered targets', () => {
  it('closes the pool of an unregistered target once idle for adHocIdleMs, not while a request is in flight, and never a registered one', async () => {
    const peer = await backend('peer', 600);
    const service = await backend('service');
    const relay: UpstreamTarget = { name: 'replica:r2', upstreams: [new URL(peer.url)], healthCheck: false };
    const registered: UpstreamTarget = {
      name: 'billing',
      upstreams: [new URL(service.url)],
      healthCheck: false,
    };
    const { pt, url } = await front({ relay, billing: registered }, { adHocIdleMs: 200 });
    pt.register(registered);

    expect(await (await fetch(`${url}/relay/a`)).text()).toBe('peer /a');
    expect(await (await fetch(`${url}/billing/b`)).text()).toBe('service /b');
    expect([peer.open(), service.open()]).toEqual([1, 1]);

    // A request that outlasts the idle time is not cut off by the sweep, and idle time counts
    // from its end: the connection stays for the next request.
    const slow = await fetch(`${url}/relay/slow`);
    expect(slow.status).toBe(200);
    expect(await slow.text()).toBe('peer /slow');
    await sleep(20);
    expect(peer.open()).toBe(1);

    await waitFor(() => peer.open() === 0, 3_000, 'the idle relay pool to close its connection');
    await sleep(300);
    expect(service.open()).toBe(1);

    // Used again, the relay gets a new pool.
    expect(await (await fetch(`${url}/relay/c`)).text()).toBe('peer /c');
    expect(peer.open()).toBe(1);
  });
});
