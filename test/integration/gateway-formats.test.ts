/**
 * The gateway settings, and the drivers whose gateways are not installable here, checked
 * against their documented formats: Traefik's HTTP provider (dynamic configuration JSON, polled
 * from the control port; the poller below does what Traefik's providers.http does), and Kong's
 * Admin API with route expressions (a small Admin API server that keeps what it is sent, as
 * Kong does). Neither was run against the real Traefik or Kong.
 */
import type { IncomingMessage } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { GATEWAY_TOKEN, recorder } from '../support/gateways.js';
import {
  type Cleanup,
  cli,
  clientEnv,
  closeServer,
  interceptDetached,
  listen,
  run,
  sleep,
  startServerProcess,
  waitFor,
} from '../support/helpers.js';

const EXIT_CONFIG = 7;
const cleanups: Cleanup[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await Promise.resolve(c()).catch(() => undefined);
});

describe('gateway settings', () => {
  const failing = async (args: string[], env: Record<string, string> = {}) => {
    const r = await cli(
      [
        'server',
        '--port',
        '0',
        '--proxy-port',
        '0',
        '--token',
        GATEWAY_TOKEN,
        '--service',
        'billing=http://127.0.0.1:9',
        ...args,
      ],
      env,
      { timeout: 20_000 },
    );
    return { exitCode: r.exitCode, stderr: String(r.stderr) };
  };

  it('an unknown driver is named with the ones there are', async () => {
    const r = await failing(['--gateway', 'envoy']);
    expect(r.exitCode).toBe(EXIT_CONFIG);
    expect(r.stderr).toMatch(/gateway\.driver: must be one of haproxy, nginx, caddy, traefik, kong/);
  });

  it("a driver's missing or bad option is named by its key, from flags and from the environment", async () => {
    const flags = await failing(['--gateway', 'haproxy', '--gateway-option', 'map=relative.map']);
    expect(flags.exitCode).toBe(EXIT_CONFIG);
    expect(flags.stderr).toMatch(/gateway\.socket: /);
    expect(flags.stderr).toMatch(/gateway\.map: must be the absolute path/);
    const env = await failing([], {
      KELSINGRA_GATEWAY: 'nginx',
      KELSINGRA_GATEWAY_FILE: '/tmp/x.conf',
      KELSINGRA_GATEWAY_VERSION_URL: 'nope',
    });
    expect(env.exitCode).toBe(EXIT_CONFIG);
    expect(env.stderr).toMatch(/gateway\.reload: /);
    expect(env.stderr).toMatch(/gateway\.versionUrl: /);
    const unknown = await failing([
      '--gateway',
      'kong',
      '--gateway-option',
      'serviceExpression=true',
      '--gateway-option',
      'colour=blue',
    ]);
    expect(unknown.stderr).toMatch(/gateway\.serviceExpression: must hold \{service\}/);
    expect(unknown.stderr).toMatch(/gateway: .*"colour"/);
  });

  it('a --gateway-option that is not KEY=VALUE is a usage error', async () => {
    const r = await failing(['--gateway', 'haproxy', '--gateway-option', 'socket']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/--gateway-option "socket" is not KEY=VALUE/);
  });
});

describe('Traefik: the HTTP provider served from the control port', () => {
  const TRAEFIK = [
    '--gateway',
    'traefik',
    '--gateway-option',
    'kelsingraUrl=http://kelsingra-data.kelsingra.svc.cluster.local:7701',
    '--gateway-option',
    'serviceRule=Host(`{service}.dev.example.com`)',
    '--gateway-option',
    'confirmTimeout=5',
  ];

  it('intercept answers once a poll was served the new document; the router goes on leave', async () => {
    const local = await recorder('local', cleanups);
    const server = await startServerProcess([
      '--token',
      GATEWAY_TOKEN,
      '--service',
      'billing=http://billing.dev.svc.cluster.local:8080',
      ...TRAEFIK,
    ]);
    cleanups.push(() => server.stop());
    const endpoint = `${server.control}/v1/traefik/dynamic`;
    type Doc = {
      http: { routers: Record<string, Record<string, unknown>>; services: Record<string, unknown> };
    };
    let polling = false;
    let stopped = false;
    let last: Doc | undefined;
    // What Traefik's providers.http does: GET the endpoint every pollInterval, with the headers configured.
    const poller = (async () => {
      while (!stopped) {
        if (polling) {
          const res = await fetch(endpoint, { headers: { authorization: `Bearer ${GATEWAY_TOKEN}` } }).catch(
            () => undefined,
          );
          if (res?.ok) last = (await res.json()) as Doc;
        }
        await sleep(200);
      }
    })();
    cleanups.push(() => {
      stopped = true;
      return poller;
    });
    const env = clientEnv(server, GATEWAY_TOKEN);
    const pending = run(
      ['intercept', 'billing', '--tenant', 't1', '--port', String(local.port), '--detach', '--json'],
      env,
    );
    let settled = false;
    void pending.then(() => (settled = true));
    await sleep(1_500);
    expect(settled, 'intercept answered before any poll served it').toBe(false);
    polling = true;
    const r = await pending;
    expect(r.exitCode, r.stderr).toBe(0);
    const icp = JSON.parse(r.stdout) as { id: string; agentPid: number };
    cleanups.push(() => process.kill(icp.agentPid, 'SIGKILL'));
    const doc = last as Doc;
    expect(doc.http.routers['kelsingra-billing-kelsingra']).toEqual({
      rule: '(Host(`billing.dev.example.com`)) && (Header(`x-tenant-id`, `t1`)) && !HeaderRegexp(`X-Kelsingra-Hop`, `.+`)',
      service: 'kelsingra-billing',
      priority: 1000,
    });
    expect(doc.http.services['kelsingra-billing']).toEqual({
      failover: { service: 'kelsingra-billing-data', fallback: 'kelsingra-billing-base' },
    });
    expect(doc.http.services['kelsingra-billing-data']).toEqual({
      loadBalancer: {
        servers: [{ url: 'http://kelsingra-data.kelsingra.svc.cluster.local:7701' }],
        passHostHeader: true,
        healthCheck: { path: '/healthz', port: 7700, interval: '1s', timeout: '1s' },
      },
    });
    expect(doc.http.services['kelsingra-billing-base']).toEqual({
      loadBalancer: { servers: [{ url: 'http://billing.dev.svc.cluster.local:8080' }], passHostHeader: true },
    });
    const left = await run(['leave', icp.id], env);
    expect(left.exitCode, left.stderr).toBe(0);
    await waitFor(
      () => last && Object.keys(last.http.routers).length === 0,
      1_000,
      'the router gone from the next poll',
    );
  });

  it('serves the document only to a token that may see every tenant', async () => {
    const server = await startServerProcess([
      '--token',
      GATEWAY_TOKEN,
      '--service',
      'billing=http://127.0.0.1:9',
      ...TRAEFIK,
    ]);
    cleanups.push(() => server.stop());
    const none = await fetch(`${server.control}/v1/traefik/dynamic`);
    expect(none.status).toBe(401);
    const ok = await fetch(`${server.control}/v1/traefik/dynamic`, {
      headers: { authorization: `Bearer ${GATEWAY_TOKEN}` },
    });
    expect(await ok.json()).toEqual({ http: { routers: {}, services: {} } });
  });
});

/** Kong's Admin API as documented: PUT/DELETE /routes/{name} and /services/{name}, GET ?tags= pages. */
async function fakeKong() {
  const objects = {
    routes: new Map<string, Record<string, unknown>>(),
    services: new Map<string, Record<string, unknown>>(),
  };
  const calls: string[] = [];
  const body = (req: IncomingMessage) =>
    new Promise<Record<string, unknown>>((resolve) => {
      let text = '';
      req.on('data', (c: Buffer) => (text += c.toString()));
      req.on('end', () => resolve(text ? JSON.parse(text) : {}));
    });
  const kong = await listen(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://kong');
    const [, kind, name] = url.pathname.split('/') as [string, 'routes' | 'services', string | undefined];
    const store = objects[kind];
    calls.push(`${req.method} ${url.pathname}`);
    const send = (status: number, value?: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(value === undefined ? '' : JSON.stringify(value));
    };
    if (!store) return send(404, { message: 'Not found' });
    if (req.method === 'GET' && !name) {
      const tag = url.searchParams.get('tags');
      const data = [...store.values()].filter((o) => !tag || (o.tags as string[] | undefined)?.includes(tag));
      return send(200, { data, next: null });
    }
    if (req.method === 'PUT' && name) {
      const o = { id: `id-${name}`, ...(await body(req)), name };
      const service = (o as { service?: { name: string } }).service?.name;
      if (kind === 'routes' && (!service || !objects.services.has(service)))
        return send(400, { message: `service ${service} does not exist` });
      store.set(name, o);
      return send(200, o);
    }
    if (req.method === 'DELETE' && name) {
      const had = store.delete(name);
      return send(had ? 204 : 404);
    }
    send(405, { message: 'Method not allowed' });
  });
  cleanups.push(() => closeServer(kong));
  return { url: `http://127.0.0.1:${kong.port}`, ...objects, calls };
}

describe('Kong: route expressions with tenant sets through the Admin API', () => {
  it('writes one route per service and target naming its tenants, removes what ended, reconciles on start', async () => {
    const kong = await fakeKong();
    // Kelsingra's Kong service for billing (the operator makes it), and a route Kelsingra wrote before it restarted.
    kong.services.set('kelsingra-billing', { name: 'kelsingra-billing', url: 'http://kelsingra-data:7701' });
    kong.routes.set('kelsingra-billing-kelsingra', {
      name: 'kelsingra-billing-kelsingra',
      tags: ['kelsingra'],
      expression: 'stale',
    });
    const local = await recorder('local', cleanups);
    const server = await startServerProcess(
      [
        '--token',
        GATEWAY_TOKEN,
        '--service',
        'billing=http://127.0.0.1:9',
        '--route-target',
        'http://10.0.0.*:*',
      ],
      {
        KELSINGRA_GATEWAY: 'kong',
        KELSINGRA_GATEWAY_ADMIN_URL: kong.url,
        KELSINGRA_GATEWAY_SERVICE_EXPRESSION: 'http.host == "{service}.dev.example.com"',
      },
    );
    cleanups.push(() => server.stop());
    await waitFor(
      () => !kong.routes.has('kelsingra-billing-kelsingra'),
      5_000,
      'the stale route removed at start',
    );
    const env = clientEnv(server, GATEWAY_TOKEN);
    await interceptDetached(env, 'billing', 't1', local.port, cleanups);
    const t2 = await interceptDetached(env, 'billing', 't2', local.port, cleanups);
    const route = kong.routes.get('kelsingra-billing-kelsingra');
    expect(route).toMatchObject({
      name: 'kelsingra-billing-kelsingra',
      expression:
        '(http.host == "billing.dev.example.com") && (http.headers.x_tenant_id == "t1" || http.headers.x_tenant_id == "t2") && !(http.headers.x_kelsingra_hop ~ r#"."#)',
      priority: 200,
      service: { name: 'kelsingra-billing' },
      preserve_host: true,
      strip_path: false,
      tags: ['kelsingra'],
    });
    const set = await run(
      ['route', 'set', 'billing', '--tenants', 't3,t4', '--to', 'http://10.0.0.7:8080', '--json'],
      env,
    );
    expect(set.exitCode, set.stderr).toBe(0);
    const routeId = (JSON.parse(set.stdout) as { route: { id: string } }).route.id;
    await waitFor(
      () => kong.routes.get(`kelsingra-billing-${routeId}`),
      2_000,
      'the tenant route in Kong',
    ).catch((err: Error) => {
      throw new Error(
        `${err.message}\nKong was called: ${kong.calls.join(', ')}\n${set.stdout}\n${server.logs()}`,
      );
    });
    expect(kong.services.get(`kelsingra-${routeId}`)).toMatchObject({
      url: 'http://10.0.0.7:8080',
      tags: ['kelsingra'],
    });
    expect(kong.routes.get(`kelsingra-billing-${routeId}`)?.expression).toContain(
      '(http.headers.x_tenant_id == "t3" || http.headers.x_tenant_id == "t4")',
    );
    const left = await run(['leave', t2.id], env);
    expect(left.exitCode, left.stderr).toBe(0);
    await waitFor(
      () => !String(kong.routes.get('kelsingra-billing-kelsingra')?.expression).includes('"t2"'),
      1_000,
      't2 out of the expression',
    );
    const del = await run(['route', 'delete', routeId], env);
    expect(del.exitCode, del.stderr).toBe(0);
    await waitFor(
      () => !kong.routes.has(`kelsingra-billing-${routeId}`) && !kong.services.has(`kelsingra-${routeId}`),
      1_000,
      'the tenant route and its Kong service gone',
    );
  });
});
