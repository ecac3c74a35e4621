/**
 * HTTP/2 connections to upstreams, one per origin, for calls that arrived over HTTP/2 (gRPC).
 * An `http://` origin is spoken to as prior-knowledge h2c, an `https://` one offers h2 by ALPN.
 * An origin that turns out to speak HTTP/1.1 only (ALPN picks http/1.1, or it answers the h2c
 * preface with anything but HTTP/2 SETTINGS) is remembered as such for a while, and its calls
 * go over HTTP/1.1 meanwhile: most services behind Kelsingra speak only HTTP/1.1.
 *
 * A session is usable once the peer's SETTINGS arrived: until then nothing of a call is
 * written to it, so a call can still go over HTTP/1.1 when the origin turns out not to speak h2.
 */
import http2 from 'node:http2';
import tls from 'node:tls';

/** How long an origin found to speak HTTP/1.1 only is not asked again. */
const HTTP1_MEMORY_MS = 5 * 60_000;
/** How long an h2c origin that closed the connection on the preface is taken to speak HTTP/1.1. */
const HTTP1_GUESS_MS = 10_000;
/** A session with no stream open is closed after this long, as the HTTP/1 pool's keep-alive. */
const IDLE_MS = 30_000;

export type SessionResult =
  | { kind: 'h2'; session: http2.ClientHttp2Session }
  | { kind: 'http1' }
  | { kind: 'error'; error: Error };

interface Entry {
  session: http2.ClientHttp2Session;
  ready: boolean;
  waiting: ((r: SessionResult) => void)[];
}

export class Http2Sessions {
  private readonly sessions = new Map<string, Entry>();
  private readonly http1Until = new Map<string, number>();

  constructor(private readonly connectTimeoutMs: number) {}

  /** Whether `url`'s origin is known to speak HTTP/1.1 only. */
  http1Only(url: URL): boolean {
    const until = this.http1Until.get(url.origin);
    if (until === undefined) return false;
    if (Date.now() < until) return true;
    this.http1Until.delete(url.origin);
    return false;
  }

  /** A ready session to `url`'s origin (synchronously when one is open), or why there is none. */
  acquire(url: URL, done: (r: SessionResult) => void): void {
    if (this.http1Only(url)) {
      done({ kind: 'http1' });
      return;
    }
    let entry = this.sessions.get(url.origin);
    if (entry && (entry.session.closed || entry.session.destroyed)) {
      this.sessions.delete(url.origin);
      entry = undefined;
    }
    if (entry?.ready) {
      done({ kind: 'h2', session: entry.session });
      return;
    }
    if (!entry) entry = this.open(url);
    entry.waiting.push(done);
  }

  close(): void {
    for (const { session } of this.sessions.values()) session.destroy();
    this.sessions.clear();
  }

  private open(url: URL): Entry {
    const origin = url.origin;
    let connected = false;
    let negotiated: string | false | null | undefined;
    const session = http2.connect(origin, {
      // Offered with http/1.1 too, so an HTTP/1 server still completes the handshake and
      // says what it speaks, instead of failing it.
      ...(url.protocol === 'https:' && {
        createConnection: () => {
          const socket = tls.connect({
            host: url.hostname.replace(/^\[|\]$/g, ''),
            port: Number(url.port || 443),
            servername: /^[\d.]+$|:/.test(url.hostname) ? undefined : url.hostname,
            ALPNProtocols: ['h2', 'http/1.1'],
          });
          socket.once('secureConnect', () => {
            negotiated = socket.alpnProtocol;
          });
          return socket;
        },
      }),
    });
    const entry: Entry = { session, ready: false, waiting: [] };
    this.sessions.set(origin, entry);
    const settle = (r: SessionResult) => {
      clearTimeout(timer);
      const waiting = entry.waiting;
      entry.waiting = [];
      for (const w of waiting) w(r);
    };
    const timer = setTimeout(() => {
      const error = Object.assign(new Error(`no HTTP/2 connection within ${this.connectTimeoutMs} ms`), {
        code: 'UND_ERR_CONNECT_TIMEOUT',
      });
      session.destroy(error);
    }, this.connectTimeoutMs);
    session.once('connect', () => {
      connected = true;
    });
    session.once('remoteSettings', () => {
      entry.ready = true;
      settle({ kind: 'h2', session });
    });
    const gone = (err?: Error) => {
      if (this.sessions.get(origin) === entry) this.sessions.delete(origin);
      if (entry.ready) return;
      // Connected (TCP, and TLS with no h2 chosen) but no HTTP/2 came back: the origin speaks HTTP/1.1.
      // Over h2c: a protocol error is an HTTP/1 answer to the preface. A connection closed
      // without a word is most likely an HTTP/1 server refusing it too, but might be an h2c
      // server restarting: that guess is kept only briefly.
      const protocolError = (err as NodeJS.ErrnoException | undefined)?.code === 'ERR_HTTP2_ERROR';
      const spokeOther =
        (url.protocol === 'https:' && negotiated !== undefined && negotiated !== 'h2') ||
        (url.protocol === 'http:' && connected);
      if (spokeOther) {
        const sure = url.protocol === 'https:' || protocolError;
        this.http1Until.set(origin, Date.now() + (sure ? HTTP1_MEMORY_MS : HTTP1_GUESS_MS));
        settle({ kind: 'http1' });
      } else settle({ kind: 'error', error: err ?? new Error('the HTTP/2 connection closed') });
    };
    session.on('error', (err) => gone(err));
    session.once('close', () => gone());
    // After GOAWAY no new stream may start here; the next call opens a new connection.
    session.once('goaway', () => {
      if (this.sessions.get(origin) === entry) this.sessions.delete(origin);
    });
    // Node keeps no public count of a session's open streams: track() counts them.
    session.setTimeout(IDLE_MS, () => {
      if ((openStreams.get(session) ?? 0) === 0) session.close();
    });
    return entry;
  }
}

/** Streams open per session, counted by whoever opens them (see track()). */
const openStreams = new WeakMap<http2.ClientHttp2Session, number>();

/** Counts `stream` as open on `session` until it closes, for the idle close. */
export function track(session: http2.ClientHttp2Session, stream: http2.ClientHttp2Stream): void {
  openStreams.set(session, (openStreams.get(session) ?? 0) + 1);
  stream.once('close', () => openStreams.set(session, (openStreams.get(session) ?? 1) - 1));
}
