/**
 * HTTP/1.1 and HTTP/2 on one port. Node's HTTP/1 server keeps every HTTP/1 connection (so
 * upgrades, checkContinue, its timeouts and connection tracking work as before); a connection
 * that opens with the HTTP/2 preface (prior-knowledge h2c, as gRPC clients speak it) or that
 * chose `h2` by ALPN goes to an HTTP/2 server with the same request handler instead.
 *
 * The choice is made once per connection, on its first bytes: nothing changes per request.
 */
import type http from 'node:http';
import http2 from 'node:http2';
import type net from 'node:net';
import type tls from 'node:tls';
import { type InboundRequest, isHttp2, type OutboundResponse } from './http-types.js';

/** What every HTTP/2 connection starts with (RFC 9113 §3.4). */
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
/** How long a new connection may stay silent before it says which protocol it speaks. */
const FIRST_BYTES_TIMEOUT_MS = 10_000;
/**
 * An HTTP/2 connection with no stream open is closed after this long, as the HTTP/1 server's
 * keep-alive timeout closes an idle one; a connection with a stream open (a quiet gRPC stream)
 * is left alone.
 */
const IDLE_SESSION_MS = 65_000;

export type Handler = (req: InboundRequest, res: OutboundResponse) => void;

export interface DualProtocolOptions {
  /** Largest header block accepted, as the HTTP/1 server's maxHeaderSize. */
  maxHeaderSize?: number;
}

export interface DualProtocol {
  /** The HTTP/2 server (compatibility API); its `request` and `checkContinue` events are the handler's. */
  readonly h2: http2.Http2Server;
  /** A TLS connection whose handshake is done: to HTTP/2 or HTTP/1 by what ALPN chose. */
  secure(socket: tls.TLSSocket): void;
  /** Takes a plain connection: sniffs it (undone by serveTls, which sniffs for TLS itself). */
  readonly sniffer: (socket: net.Socket) => void;
  /** Asks every HTTP/2 client to stop opening streams (GOAWAY); streams in flight finish. */
  closeIdle(): void;
  /** Ends every HTTP/2 connection and every connection still being sniffed, at once. */
  closeAll(): void;
  /** Open HTTP/2 connections, for tests and the drain. */
  sessions(): number;
  /**
   * The connection a request came on, as the listener got it (`req.socket` of an HTTP/2
   * request is a proxy of it, so it cannot key a map the way an HTTP/1 one's can).
   */
  connectionOf(req: InboundRequest): object;
}

/**
 * Makes `server` (listening or yet to listen) serve HTTP/2 besides HTTP/1.1 with `handler`.
 * Takes over the server's own `connection` listener, as serveTls does.
 */
export function serveHttp2(
  server: http.Server,
  handler: Handler,
  options: DualProtocolOptions = {},
): DualProtocol {
  const httpListener = server.listeners('connection').find((l) => l.name === 'connectionListener') as
    | ((this: http.Server, socket: net.Socket) => void)
    | undefined;
  if (!httpListener) throw new Error("the HTTP server's connection listener is not where Node keeps it");
  const h2 = http2.createServer(
    {
      maxSessionInvalidFrames: 100,
      settings: {
        maxHeaderListSize: options.maxHeaderSize ?? 32 * 1024,
        // Room for many concurrent gRPC streams per connection, as HTTP/1 allows many connections.
        maxConcurrentStreams: 1000,
      },
    },
    handler,
  );
  const sessions = new Set<http2.ServerHttp2Session>();
  const connections = new WeakMap<http2.Http2Session, object>();
  // Node makes the session of a connection synchronously inside its `connection` event.
  let arriving: net.Socket | undefined;
  h2.on('session', (session: http2.ServerHttp2Session) => {
    sessions.add(session);
    if (arriving) connections.set(session, arriving);
    let open = 0;
    session.on('stream', (stream: http2.ServerHttp2Stream) => {
      open++;
      stream.once('close', () => open--);
    });
    session.setTimeout(IDLE_SESSION_MS, () => {
      if (open === 0) session.close();
    });
    session.once('close', () => sessions.delete(session));
    session.on('error', () => session.destroy());
  });
  // A protocol error or a reset on one connection is that connection's, not the server's.
  h2.on('sessionError', () => undefined);

  const pending = new Set<net.Socket>();
  const toHttp1 = (socket: net.Socket) => httpListener.call(server, socket);
  const toHttp2 = (socket: net.Socket) => {
    arriving = socket;
    try {
      h2.emit('connection', socket);
    } finally {
      arriving = undefined;
    }
  };

  const sniffer = function sniffProtocol(socket: net.Socket) {
    pending.add(socket);
    // A connection may be a stream pair rather than a socket (the gateway's CONNECT tunnels).
    const timed = typeof socket.setTimeout === 'function';
    if (timed) socket.setTimeout(FIRST_BYTES_TIMEOUT_MS, () => socket.destroy());
    const failed = () => {
      pending.delete(socket);
      socket.destroy();
    };
    socket.once('error', failed);
    // The peer ended before its first bytes said which protocol ("P", then nothing): neither
    // server could read a request from it, and this end would otherwise wait for the timeout.
    socket.once('end', failed);
    socket.once('close', () => pending.delete(socket));
    let seen: Buffer | undefined;
    const onData = (chunk: Buffer) => {
      seen = seen ? Buffer.concat([seen, chunk]) : chunk;
      const n = Math.min(seen.length, PREFACE.length);
      const preface = seen.compare(PREFACE, 0, n, 0, n) === 0;
      // A first read shorter than the preface that matches it so far ("P", "PRI *"): wait for more.
      if (preface && n < PREFACE.length) return;
      socket.removeListener('data', onData);
      socket.removeListener('error', failed);
      socket.removeListener('end', failed);
      pending.delete(socket);
      if (timed) socket.setTimeout(0);
      socket.pause();
      // Put back, the chosen server parses the connection from its first byte.
      socket.unshift(seen);
      if (preface) toHttp2(socket);
      else {
        toHttp1(socket);
        // Paused, the socket would not flow into the data listener the HTTP/1 server adds.
        socket.resume();
      }
    };
    socket.on('data', onData);
  };
  server.removeListener('connection', httpListener);
  server.on('connection', sniffer);

  return {
    h2,
    sniffer,
    secure(socket) {
      if (socket.alpnProtocol === 'h2') toHttp2(socket);
      else toHttp1(socket);
    },
    closeIdle() {
      for (const session of sessions) session.close();
    },
    closeAll() {
      for (const session of sessions) session.destroy();
      sessions.clear();
      for (const socket of pending) socket.destroy();
      pending.clear();
    },
    sessions: () => sessions.size,
    connectionOf(req) {
      if (!isHttp2(req)) return req.socket;
      return connections.get(req.stream.session as http2.Http2Session) ?? req.socket;
    },
  };
}
