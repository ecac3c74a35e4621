/**
 * The outbound gateway as the client commands run it (`intercept`, `gateway`): started against
 * the server agent's /v1/info, its records turned into client events, and the environment
 * that points a local command's HTTP calls at it.
 */

import { ExitCode, KelsingraError } from '../../shared/errors.js';
import type { ServerInfo } from '../../shared/protocol.js';
import { ApiClient } from '../api/api-client.js';
import type { ClientSettings } from '../api/settings.js';
import type { OutboundEvent } from '../intercept/events.js';
import { type GatewayRecord, type OutboundGateway, startOutboundGateway } from './outbound-gateway.js';

export interface ClientGatewayOptions {
  /** 0: any free port. */
  port: number;
  cors: boolean;
  onRequest?: (record: GatewayRecord) => void;
}

/**
 * Asks the server which header and baggage key carry the routing key, then listens. Errors
 * say what to do (a taken port, an old server).
 */
export async function startClientGateway(
  settings: ClientSettings,
  tenant: string,
  opts: ClientGatewayOptions,
): Promise<{ gateway: OutboundGateway; info: ServerInfo }> {
  const api = new ApiClient(settings.server, settings.token);
  let info: ServerInfo;
  try {
    info = await api.info();
  } catch (err) {
    if (err instanceof KelsingraError && err.exitCode === ExitCode.notFound)
      throw new KelsingraError(
        `the server agent at ${settings.server} has no outbound gateway (GET /v1/info: ${err.message})`,
        ExitCode.failure,
        'upgrade the server agent, or run intercept with --no-gateway',
        { code: 'no-gateway' },
      );
    throw err;
  }
  try {
    const gateway = await startOutboundGateway({
      server: settings.server,
      token: settings.token,
      tenant,
      tenantHeader: info.tenantHeader,
      baggageKey: info.baggageKey,
      port: opts.port,
      cors: opts.cors,
      onRequest: opts.onRequest,
    });
    return { gateway, info };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE' || code === 'EACCES')
      throw new KelsingraError(
        `the gateway cannot listen on 127.0.0.1:${opts.port} (${code})`,
        ExitCode.usage,
        'pick another port with --gateway-port (gateway command: --port), or 0 for any free port',
      );
    throw err;
  }
}

/** A gateway record as an event of the client's event stream (live view, plain lines, NDJSON). */
export function outboundEvent(r: GatewayRecord): OutboundEvent {
  return {
    kind: 'outbound',
    startedAt: r.startedAt,
    method: r.method,
    target: r.service ?? r.host ?? '',
    path: r.path,
    status: r.status,
    durationMs: r.durationMs,
    bytesOut: r.bytesOut,
    ...(r.error ? { error: r.error } : {}),
  };
}

/**
 * What the local command (`intercept … -- cmd`) gets so its HTTP calls go through the gateway:
 * `KELSINGRA_GATEWAY` for base URLs, `HTTP_PROXY` for clients that honour it (Node 24's fetch and
 * http with `NODE_USE_ENV_PROXY=1`), and `NO_PROXY` keeping this machine's own addresses direct.
 */
export function gatewayEnv(url: string, env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const noProxy = [
    ...new Set(
      [env.NO_PROXY ?? env.no_proxy ?? '', 'localhost,127.0.0.1,::1']
        .join(',')
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean),
    ),
  ].join(',');
  return {
    KELSINGRA_GATEWAY: url,
    HTTP_PROXY: url,
    http_proxy: url,
    NO_PROXY: noProxy,
    no_proxy: noProxy,
    NODE_USE_ENV_PROXY: '1',
  };
}
