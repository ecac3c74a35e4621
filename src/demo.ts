/**
 * `kelsingra demo`: a whole dev environment on this machine. Two base services (billing,
 * orders), a server agent in front of them, a "laptop" copy of billing intercepted for
 * tenant t1, then requests for t1 and t2 showing where each went.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { validateConfig } from '../server/config.js';
import { createLogger } from '../server/logger.js';
import { startServer } from '../server/server.js';
import { InterceptSession } from './intercept-session.js';
import { formatRequestLine } from './request-log.js';

function serve(label: string): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ servedBy: label, path: req.url, tenant: req.headers['x-tenant-id'] ?? null }));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

const portOf = (s: http.Server) => (s.address() as AddressInfo).port;

export async function runDemo(out: (line: string) => void): Promise<void> {
  const token = `demo-${Math.random().toString(36).slice(2, 12)}`;
  const billing = await serve('billing (dev environment)');
  const orders = await serve('orders (dev environment)');
  const laptop = await serve('billing (your laptop)');
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
  const server = await startServer(config, createLogger('warn'));
  const control = `http://127.0.0.1:${server.controlPort}`;
  const data = `http://127.0.0.1:${server.proxyPort}`;
  out(`1. Server agent up: control ${control}, data ${data}`);
  out(`   dev environment: billing on :${portOf(billing)}, orders on :${portOf(orders)}; your laptop's billing on :${portOf(laptop)}`);

  const session = await InterceptSession.start({ server: control, token, holder: 'you@laptop', configDir: '' }, { service: 'billing', tenant: 't1', port: portOf(laptop) });
  session.on('event', (e) => {
    if (e.kind === 'http') out(`   [tunnel] ${formatRequestLine(e)}`);
  });
  out(`2. kelsingra intercept billing --tenant t1 --port ${portOf(laptop)}   → ${session.intercept.id}`);
  out('3. Requests through the data port (as the dev reverse proxy would send them):');
  try {
    for (const [service, tenant] of [
      ['billing', 't1'],
      ['billing', 't2'],
      ['orders', 't1'],
      ['billing', 't1'],
    ] as const) {
      const res = await request(`${data}/invoices/42`, { headers: { host: `${service}.dev.example.com`, 'x-tenant-id': tenant } });
      const body = (await res.body.json()) as { servedBy: string };
      out(`   ${service.padEnd(8)} tenant ${tenant}  → ${res.statusCode} served by ${body.servedBy}`);
    }
    out('4. kelsingra leave billing --tenant t1');
    await session.leave();
    const res = await request(`${data}/invoices/42`, { headers: { host: 'billing.dev.example.com', 'x-tenant-id': 't1' } });
    const body = (await res.body.json()) as { servedBy: string };
    out(`   billing  tenant t1  → ${res.statusCode} served by ${body.servedBy}`);
    out('Done: only tenant t1 on billing reached the laptop while the intercept was live.');
  } finally {
    await session.leave().catch(() => undefined);
    await server.close();
    for (const s of [billing, orders, laptop]) s.close();
  }
}
