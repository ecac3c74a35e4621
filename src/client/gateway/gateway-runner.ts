/**
 * `kelsingra gateway`: the outbound gateway in the foreground, without an intercept. Prints
 * its URL, then one line per request (NDJSON with --json), until Ctrl-C or SIGTERM.
 */

import type { ClientSettings } from '../api/settings.js';
import { formatOutboundLine } from '../intercept/request-log.js';
import { outboundEvent, startClientGateway } from './gateway-client.js';

export interface GatewayRunOptions {
  tenant: string;
  port: number;
  cors: boolean;
  json: boolean;
  out?: (line: string) => void;
}

export async function runGateway(settings: ClientSettings, opts: GatewayRunOptions): Promise<number> {
  const out = opts.out ?? ((line: string) => process.stdout.write(`${line}\n`));
  const { gateway, info } = await startClientGateway(settings, opts.tenant, {
    port: opts.port,
    cors: opts.cors,
    onRequest: (record) => {
      const event = outboundEvent(record);
      out(opts.json ? JSON.stringify(event) : formatOutboundLine(event));
    },
  });
  if (opts.json)
    out(
      JSON.stringify({
        kind: 'gateway',
        url: gateway.url,
        port: gateway.port,
        tenant: opts.tenant,
        server: settings.server,
        cors: opts.cors,
        tenantHeader: info.tenantHeader,
        services: info.services,
      }),
    );
  else {
    out(
      `Gateway for tenant ${opts.tenant} on ${gateway.url} → ${settings.server}${opts.cors ? ' (CORS for localhost pages)' : ''}. Ctrl-C to stop.`,
    );
    if (info.services.length)
      out(
        `Call ${gateway.url}/<service>/<path>, e.g. ${gateway.url}/${info.services[0]}/ (services: ${info.services.join(', ')})`,
      );
  }
  const code = await new Promise<number>((resolve) => {
    process.once('SIGINT', () => resolve(130));
    process.once('SIGTERM', () => resolve(143));
  });
  await gateway.close();
  return code;
}
