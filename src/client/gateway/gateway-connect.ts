/**
 * CONNECT tunnels into the gateway. Node's fetch with NODE_USE_ENV_PROXY (undici's proxy agent)
 * tunnels even plain http:// calls, so a tunnel is accepted and the HTTP inside it is handed to
 * the gateway's own HTTP server, which serves it like any request with the tunnel's host as the
 * target. TLS inside a tunnel (https://, HTTPS_PROXY) cannot be served: the gateway could not
 * add the tenant, and the dev host is not reachable from here anyway.
 */
import type http from 'node:http';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { type Duplex, duplexPair } from 'node:stream';
import { writeRaw } from './gateway-errors.js';
import type { GatewayRecord } from './gateway-record.js';

export interface TunnelOptions {
  /** Longest silence, both directions together, before a tunnel is closed. */
  idleMs: number;
  onRequest?: (record: GatewayRecord) => void;
}

export interface Tunnels {
  /** The host:port named by the tunnel whose HTTP arrives on `connection`, if it is one. */
  hostOf(connection: object): string | undefined;
  /** Ends every open tunnel (the gateway is closing). */
  destroyAll(): void;
}

/** Serves CONNECT requests on `server`: plain HTTP inside is fed back to `server` itself. */
export function acceptTunnels(server: http.Server, opts: TunnelOptions): Tunnels {
  const hosts = new WeakMap<object, string>();
  const open = new Set<Duplex>();

  server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const startedAt = Date.now();
    const t0 = performance.now();
    const authority = req.url ?? '';
    let pair: [Duplex, Duplex] | undefined;
    // A failure on either side ends the whole tunnel: a half left open would hold the client's
    // connection, and the request being served inside it, until someone noticed.
    const teardown = () => {
      open.delete(socket);
      socket.destroy();
      if (pair) for (const side of pair) side.destroy();
    };
    open.add(socket);
    socket.on('error', teardown);
    socket.once('close', teardown);
    // Nothing else bounds a tunnel's life: inside it, the HTTP server's keep-alive and header
    // timeouts cannot act (they need a real socket), and before the first byte nothing reads.
    // Reads and writes both count as activity, so a slow streamed body keeps its tunnel.
    (socket as Socket).setTimeout(opts.idleMs, teardown);

    const refuse = (how: 'answer' | 'drop') => {
      const message = `the gateway cannot carry HTTPS (a CONNECT tunnel to ${authority} with TLS inside). Call the dev service with http:// through the gateway: the server agent reaches the upstream with its own scheme (https when the service is configured so). Leave HTTPS_PROXY unset, or list the host in NO_PROXY.`;
      if (how === 'answer') writeRaw(socket, 501, 'connect-not-supported', message);
      else teardown();
      opts.onRequest?.({
        startedAt,
        method: 'CONNECT',
        host: authority,
        path: '',
        status: 501,
        durationMs: performance.now() - t0,
        bytesOut: how === 'answer' ? Buffer.byteLength(message) : 0,
        error: 'HTTPS cannot go through the gateway',
      });
    };
    // Port 443 is TLS: say so in an HTTP answer, while the client still reads one.
    if (/:443$/.test(authority)) {
      refuse('answer');
      return;
    }
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    const start = (first: Buffer) => {
      // A TLS record starts with 0x16 (handshake).
      if (first[0] === 0x16) {
        refuse('drop');
        return;
      }
      const [inner, outer] = duplexPair();
      pair = [inner, outer];
      hosts.set(inner, authority);
      server.emit('connection', inner);
      outer.write(first);
      socket.pipe(outer).pipe(socket);
      outer.on('error', teardown);
      // The HTTP server destroying its side (an aborted response) reaches the client only as
      // an end of stream; tearing down makes it a reset, as on a direct connection. An orderly
      // end (Connection: close) is left to the pipe, which flushes before it ends the socket.
      inner.once('close', () => {
        if (!inner.writableFinished) teardown();
      });
    };
    if (head.length > 0) start(head);
    else
      socket.once('data', (chunk: Buffer) => {
        socket.pause();
        start(chunk);
        socket.resume();
      });
  });

  return {
    hostOf: (connection) => hosts.get(connection),
    destroyAll: () => {
      for (const socket of open) socket.destroy();
    },
  };
}
