/**
 * `kelsingra demo`: a whole dev environment on this machine. Two base services (billing,
 * orders), a server agent in front of them, a "laptop" copy of billing intercepted for
 * tenant t1, then requests for t1 and t2 showing where each went.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { validateConfig } from '../../server/config/config.js';
import { createLogger } from '../../server/observability/logger.js';
import { startServer } from '../../server/server.js';
import { InterceptSession } from '../client/intercept/intercept-session.js';
import { formatRequestLine } from '../client/intercept/request-log.js';

function serve(label: string): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ servedBy: label, path: req.url, tenant: req.headers['x-tenant-id'] ?? null }));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

const portOf = (s: http.Server) => (s.address() as AddressInfo).port;

/** Where one request of the demo went; `demo --json` prints these. */
export interface DemoRequest {
  step: 'while intercepted' | 'after leave';
  service: string;
  tenant: string;
  status: number;
  servedBy: string;
  /** Where it should have gone: only billing for t1, and only while the intercept is live. */
  expected: string;
  ok: boolean;
}

export interface DemoSummary {
  ok: boolean;
  server: { control: string; data: string };
  intercept: { id: string; service: string; tenant: string; localPort: number };
  requests: DemoRequest[];
}

const LAPTOP = 'billing (your laptop)';

/** `serverLogLevel`: the embedded server agent logs JSON on stdout; `demo --json` silences it. */
export async function runDemo(out: (line: string) => void, serverLogLevel = 'warn'): Promise<DemoSummary> {
  const token = `demo-${Math.random().toString(36).slice(2, 12)}`;
  const billing = await serve('billing (dev environment)');
  const orders = await serve('orders (dev environment)');
  const laptop = await serve(LAPTOP);
  const config = validateConfig(
    {
      port: 0,
      proxyPort: 0,
      token,
      services: {
        billing: { upstream: `http://127.0.0.1:${portOf(billing)}` },
        orders: { upstream: `http://127.0.0.1:${portOf(orders)}` },
      },
    },
    'demo config',
  );
  const server = await startServer(config, createLogger(serverLogLevel));
  const control = `http://127.0.0.1:${server.controlPort}`;
  const data = `http://127.0.0.1:${server.proxyPort}`;
  out(`1. Server agent up: control ${control}, data ${data}`);
  out(
    `   dev environment: billing on :${portOf(billing)}, orders on :${portOf(orders)}; your laptop's billing on :${portOf(laptop)}`,
  );

  const requests: DemoRequest[] = [];
  const send = async (step: DemoRequest['step'], service: string, tenant: string) => {
    const res = await request(`${data}/invoices/42`, {
      headers: { host: `${service}.dev.example.com`, 'x-tenant-id': tenant },
    });
    const body = (await res.body.json()) as { servedBy: string };
    const expected =
      step === 'while intercepted' && service === 'billing' && tenant === 't1'
        ? LAPTOP
        : `${service} (dev environment)`;
    requests.push({
      step,
      service,
      tenant,
      status: res.statusCode,
      servedBy: body.servedBy,
      expected,
      ok: res.statusCode === 200 && body.servedBy === expected,
    });
    out(`   ${service.padEnd(8)} tenant ${tenant}  → ${res.statusCode} served by ${body.servedBy}`);
  };

  // The demo's client keeps nothing: its settings dir is thrown away with the demo.
  const configDir = mkdtempSync(join(tmpdir(), 'kelsingra-demo-'));
  const session = await InterceptSession.start(
    { server: control, token, holder: 'you@laptop', configDir },
    { service: 'billing', tenant: 't1', port: portOf(laptop) },
  );
  session.on('event', (e) => {
    if (e.kind === 'http') out(`   [tunnel] ${formatRequestLine(e)}`);
  });
  const intercept = { id: session.intercept.id, service: 'billing', tenant: 't1', localPort: portOf(laptop) };
  out(`2. kelsingra intercept billing --tenant t1 --port ${portOf(laptop)}   → ${session.intercept.id}`);
  out('3. Requests through the data port (as the dev reverse proxy would send them):');
  try {
    for (const [service, tenant] of [
      ['billing', 't1'],
      ['billing', 't2'],
      ['orders', 't1'],
      ['billing', 't1'],
    ] as const) {
      await send('while intercepted', service, tenant);
    }
    out('4. kelsingra leave billing --tenant t1');
    await session.leave();
    await send('after leave', 'billing', 't1');
    const ok = requests.every((r) => r.ok);
    out(
      ok
        ? 'Done: only tenant t1 on billing reached the laptop while the intercept was live.'
        : 'Some requests did not go where they should have (see above).',
    );
    return { ok, server: { control, data }, intercept, requests };
  } finally {
    await session.leave().catch(() => undefined);
    await server.close();
    for (const s of [billing, orders, laptop]) s.close();
    rmSync(configDir, { recursive: true, force: true });
  }
}
