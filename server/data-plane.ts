/**
 * The data port: every request the dev reverse proxy sends to Kelsingra. It finds the
 * service and tenant, then relays the request either through the intercepting
 * developer's tunnel or on to the service's upstream.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { appendForwarded, appendVia, forwardableRawHeaders } from '../src/http-headers.js';
import { HOP_HEADER } from '../src/protocol.js';
import { sendError } from './error-response.js';
import type { EventBus, RequestRecord } from './event-bus.js';
import type { InterceptStore } from './intercept-store.js';
import type { PassThrough } from './pass-through.js';
import type { ServiceRouter } from './routing.js';
import { forwardThroughTunnel } from './tunnel-forward.js';
import type { TunnelHub } from './tunnel-hub.js';

/**
 * Not forwarded as they came: this hop sets its own Forwarded/Via/loop guard, and Expect was
 * already answered here (Node sends 100 Continue), so repeating it upstream would only stall.
 */
const REWRITTEN = new Set(['forwarded', 'via', 'expect', HOP_HEADER]);

export interface DataPlaneDeps {
  router: ServiceRouter;
  store: InterceptStore;
  hub: TunnelHub;
  passThrough: PassThrough;
  tenantHeader: string;
  serverId: string;
  timeoutMs: number;
  bus: EventBus;
  log: Logger;
}

export function createDataPlane(deps: DataPlaneDeps): http.Server {
  const { router, store, hub, passThrough, tenantHeader, serverId, timeoutMs, bus } = deps;
  const publish = (record: RequestRecord) => bus.publish(record);

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    if (req.headers[HOP_HEADER] !== undefined) {
      sendError(
        res,
        508,
        'loop-detected',
        `this request already passed through Kelsingra (${HOP_HEADER}: ${req.headers[HOP_HEADER]}); check that the reverse proxy rule skips requests carrying ${HOP_HEADER}`,
      );
      return;
    }
    const route = router.route(req.headers, req.url ?? '/');
    if (!route) {
      sendError(
        res,
        404,
        'unknown-service',
        `no service matches host "${req.headers.host ?? ''}" or path "${req.url}"; known services: ${router.names.join(', ')}`,
        {
          services: router.names,
        },
      );
      return;
    }
    const headers = forwardableRawHeaders(req.rawHeaders, REWRITTEN);
    headers.push(
      'forwarded',
      appendForwarded(req.headers.forwarded, req.socket.remoteAddress, req.headers.host),
      'via',
      appendVia(req.headers.via),
    );

    const tenant = req.headers[tenantHeader];
    const intercept =
      typeof tenant === 'string' && tenant !== '' ? store.find(route.service.name, tenant) : undefined;
    if (intercept) {
      const tunnel = hub.get(intercept.clientId);
      if (!tunnel) {
        const seconds = Math.max(0, Math.ceil((intercept.expiresAt - Date.now()) / 1000));
        sendError(
          res,
          502,
          'tunnel-disconnected',
          `intercept ${intercept.id} (${intercept.service}, tenant ${intercept.tenant}) is held by ${intercept.holder}, whose tunnel is disconnected; traffic falls back to the base service if it does not reconnect within ${seconds} s`,
          {
            intercept: intercept.id,
          },
        );
        return;
      }
      forwardThroughTunnel(req, res, tunnel, intercept, route.path, headers, timeoutMs, publish);
      return;
    }
    headers.push(HOP_HEADER, serverId);
    passThrough.forward(req, res, route.service, route.path, headers);
  };

  const server = http.createServer(
    { keepAliveTimeout: 65_000, headersTimeout: 30_000, maxHeaderSize: 32 * 1024 },
    handle,
  );
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    if (!socket.writable) return;
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
    const body = JSON.stringify({
      error: `Kelsingra: ${status === 431 ? 'request headers too large' : 'malformed request'} (${err.code})`,
      source: 'kelsingra',
    });
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
  });
  return server;
}
