/**
 * An Upgrade request (a WebSocket, mostly) of an intercepted tenant, through the tunnel: the
 * request goes as a stream, the local service's 101 comes back, and from then on the stream
 * carries the connection's bytes both ways, untouched and flow-controlled. One record per
 * connection (how long, bytes each way, who closed it with which code) reaches logs and views.
 */
import { type IncomingMessage, STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { writeRawError } from '../../src/shared/http/error-response.js';
import { isWebSocketUpgrade, WebSocketFrameTracker } from '../../src/shared/http/ws-frames.js';
import type { UpgradeInfo } from '../../src/shared/protocol.js';
import { drainInto, pumpInto } from '../../src/shared/tunnel-mux.js';
import type { RequestRecord } from '../observability/event-bus.js';
import type { Intercept } from '../store/intercept-store.js';
import {
  interceptName,
  type Refuse,
  refuseOverStreamLimit,
  tunnelHeaders,
  tunnelRecord,
} from './tunnel-forward.js';
import type { ClientTunnel } from './tunnel-hub.js';

export function upgradeThroughTunnel(
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  tunnel: ClientTunnel,
  intercept: Intercept,
  path: string,
  headers: string[],
  timeoutMs: number,
  publish: (record: RequestRecord) => void,
  requestId: string,
  log: Logger,
): void {
  const startedAt = Date.now();
  const t0 = performance.now();
  const fail: Refuse = (...refusal) => writeRawError(socket, ...refusal);
  if (refuseOverStreamLimit(tunnel, intercept, fail)) return;
  const name = interceptName(intercept);
  const protocol = String(req.headers.upgrade ?? '');
  const { list, authority } = tunnelHeaders(headers, intercept.service);
  // Hop-by-hop, yet exactly what the local service must see to upgrade.
  list.push('connection', 'Upgrade', 'upgrade', protocol);
  const stream = tunnel.request({
    kind: 'http',
    method: req.method ?? 'GET',
    path,
    authority,
    headers: list,
    intercept: intercept.id,
    http2: false,
    upgrade: true,
    body: true,
  });
  tunnel.probe();

  const websocket = isWebSocketUpgrade(protocol);
  const fromCaller = websocket ? new WebSocketFrameTracker() : undefined;
  const fromLocal = websocket ? new WebSocketFrameTracker() : undefined;
  let status = 0;
  let bytesIn = 0;
  let bytesOut = 0;
  let closedBy: UpgradeInfo['closedBy'] | undefined;
  /** Which side sent the first close frame: the one that started the closing handshake. */
  let closeFrom: UpgradeInfo['closeFrom'];

  const timer = setTimeout(() => {
    closedBy = 'timeout';
    fail(
      504,
      'local-timeout',
      `${name}: the local service on port ${intercept.localPort} did not answer the upgrade within ${timeoutMs} ms`,
      {
        intercept: intercept.id,
      },
    );
    stream.reset('cancel', 'no response in time');
  }, timeoutMs);

  stream.onHead = (response) => {
    clearTimeout(timer);
    status = response.status;
    let text = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\n`;
    // Names and values came through a schema but not through an HTTP parser: no CR or LF may pass.
    for (let i = 0; i < response.headers.length; i += 2) {
      const n = response.headers[i] as string;
      const v = response.headers[i + 1] as string;
      if (!/[\r\n]/.test(n + v)) text += `${n}: ${v}\r\n`;
    }
    // A refused upgrade ends with its body; the connection is not reused.
    if (status !== 101) text += 'connection: close\r\n';
    socket.write(`${text}\r\n`);
    drainInto(stream, socket, (chunk) => {
      bytesOut += chunk.length;
      fromLocal?.feed(chunk);
      if (fromLocal?.closeCode !== undefined) closeFrom ??= 'local';
    });
  };
  // The local service closed its side: so does the caller's connection, once the bytes are out.
  stream.onEnd = () => {
    closedBy ??= 'local';
    socket.end();
  };
  stream.onReset = (reason) => {
    clearTimeout(timer);
    if (status === 0) {
      closedBy ??= 'tunnel';
      fail(
        502,
        tunnel.missedHeartbeat ? 'tunnel-disconnected' : 'tunnel-reset',
        tunnel.missedHeartbeat
          ? `${name}: the client stopped answering heartbeats with this upgrade in flight`
          : `${name}: the tunnel stream was reset before the upgrade was answered (${reason.message ?? reason.code})`,
        { intercept: intercept.id },
      );
      return;
    }
    closedBy ??= reason.code === 'cancel' ? 'local' : 'tunnel';
    socket.destroy();
  };

  const fromTheCaller = (chunk: Buffer) => {
    bytesIn += chunk.length;
    fromCaller?.feed(chunk);
    if (fromCaller?.closeCode !== undefined) closeFrom ??= 'caller';
  };
  if (head.length > 0) {
    fromTheCaller(head);
    stream.write(head);
  }
  pumpInto(socket, stream, undefined, fromTheCaller);
  socket.once('end', () => {
    closedBy ??= 'caller';
  });
  socket.on('error', (err) => {
    log.debug({ err: err.message, intercept: intercept.id }, 'upgraded caller connection failed');
  });
  socket.once('close', () => {
    clearTimeout(timer);
    closedBy ??= 'caller';
    if (!stream.closed) stream.reset('cancel', 'the caller went away');
    publish(
      tunnelRecord(intercept, requestId, req.method, path, startedAt, t0, {
        status,
        bytesOut,
        error: status === 0 ? 'no answer to the upgrade' : undefined,
        upgrade: {
          protocol,
          bytesIn,
          closedBy,
          code: closeFrom === 'caller' ? fromCaller?.closeCode : fromLocal?.closeCode,
          reason: closeFrom === 'caller' ? fromCaller?.closeReason : fromLocal?.closeReason,
          closeFrom,
          messagesIn: fromCaller?.messages,
          messagesOut: fromLocal?.messages,
        },
      }),
    );
  });
}
