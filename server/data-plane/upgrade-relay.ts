/**
 * Passes an upgrade request (WebSocket, h2c…) through to the service's upstream: the request
 * head is written as it came, with this hop's headers, and from then on bytes flow both ways
 * untouched. Upgrade and Connection are hop-by-hop, yet they are exactly what an upgrade must
 * carry on to the next hop.
 */

import type { IncomingMessage } from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { ErrorCode } from '../../src/shared/error-codes.js';
import { writeRawError } from '../../src/shared/http/error-response.js';
import type { ServiceMatch } from '../routing/service-resolver.js';

export function relayUpgrade(
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  match: ServiceMatch,
  headers: string[],
  timeoutMs: number,
  log: Logger,
): void {
  const { upstream, name } = match.service;
  const secure = upstream.protocol === 'https:';
  const port = Number(upstream.port) || (secure ? 443 : 80);
  const target = secure
    ? tls.connect({ host: upstream.hostname, port, servername: upstream.hostname })
    : net.connect({ host: upstream.hostname, port });
  let answered = false;
  const fail = (status: number, code: ErrorCode, message: string) => {
    target.destroy();
    if (answered) socket.destroy();
    else writeRawError(socket, status, code, message, { service: name });
  };

  // Until the upstream answers, the wait is bounded like any other request's.
  target.setTimeout(timeoutMs, () =>
    fail(
      504,
      'upstream-timeout',
      `the ${name} upstream (${upstream.origin}) did not answer the upgrade within ${timeoutMs} ms`,
    ),
  );
  target.once(secure ? 'secureConnect' : 'connect', () => {
    const basePath = upstream.pathname === '/' ? '' : upstream.pathname.replace(/\/$/, '');
    let text = `${req.method} ${basePath}${match.path} HTTP/1.1\r\n`;
    for (let i = 0; i < headers.length; i += 2) text += `${headers[i]}: ${headers[i + 1]}\r\n`;
    text += `connection: Upgrade\r\nupgrade: ${req.headers.upgrade}\r\n\r\n`;
    target.write(text);
    if (head.length) target.write(head);
    socket.pipe(target);
    target.pipe(socket);
  });
  target.once('data', () => {
    answered = true;
    target.setTimeout(0);
  });
  target.on('error', (err) =>
    fail(
      502,
      'upstream-unreachable',
      `could not reach the ${name} upstream (${upstream.origin}) for an upgrade: ${err.message}`,
    ),
  );
  socket.on('error', (err) => {
    log.debug({ err, service: name }, 'upgrade caller connection failed');
    target.destroy();
  });
  socket.on('close', () => target.destroy());
  target.on('close', () => socket.destroy());
}
