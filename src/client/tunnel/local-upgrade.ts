/**
 * An upgraded connection (a WebSocket, mostly) between a tunnel stream and the local
 * service: the Upgrade request is made with Node's HTTP client, the 101 goes back, and the
 * bytes flow both ways untouched, each direction held back by the other side's pace. On a
 * leave it closes a WebSocket cleanly — a close frame (1001) to each side, between two frames,
 * never inside one — instead of cutting it.
 */
import http from 'node:http';
import type { Socket } from 'node:net';
import { forwardableResponseHeaders, lowerCaseNames, objectToRaw } from '../../shared/http/http-headers.js';
import { closeFrame, isWebSocketUpgrade, WebSocketFrameTracker } from '../../shared/http/ws-frames.js';
import { drainInto, type TunnelStream } from '../../shared/tunnel-mux.js';
import type { OpenHead } from '../../shared/tunnel-wire.js';
import type { WebSocketEvent } from '../intercept/events.js';

/** How long a leave waits for both ends to answer its close frames before cutting the connection. */
const CLOSE_WAIT_MS = 1_000;
const GOING_AWAY = 1001;
const LEAVE_REASON = 'kelsingra intercept ended';

/** One direction of the connection, which can be closed with a frame of our own at a boundary. */
class Direction {
  /** Close at the next frame boundary. */
  private closing = false;
  /** Our close frame went out: what the source sends after it is not passed on (only read). */
  private shut = false;
  constructor(
    readonly tracker: WebSocketFrameTracker | undefined,
    private readonly write: (bytes: Buffer) => boolean,
    private readonly closeWith: Buffer,
  ) {}

  /** Passes bytes on (or drops them once shut); false while the destination wants a pause. */
  pass(chunk: Buffer): boolean {
    if (this.shut) {
      this.tracker?.feed(chunk);
      return true;
    }
    if (!this.closing || !this.tracker) {
      this.tracker?.feed(chunk);
      return this.write(chunk);
    }
    const at = this.tracker.feed(chunk, true);
    if (at > 0) this.write(chunk.subarray(0, at));
    this.shutNow();
    this.tracker.feed(chunk.subarray(at));
    return true;
  }

  close(): void {
    if (this.shut) return;
    if (this.tracker?.atBoundary) this.shutNow();
    else this.closing = true;
  }

  private shutNow(): void {
    this.shut = true;
    this.write(this.closeWith);
  }
}

export class LocalUpgrade {
  private readonly startedAt = performance.now();
  private socket?: Socket;
  private toLocal?: Direction;
  private toCaller?: Direction;
  private status = 0;
  private bytesIn = 0;
  private bytesOut = 0;
  private closedBy?: WebSocketEvent['closedBy'];
  private closeFrom?: 'caller' | 'local';
  private error?: string;
  private reported = false;
  private readonly websocket: boolean;
  private goingAway?: Promise<void>;

  constructor(
    private readonly target: { host?: string; port: number },
    private readonly stream: TunnelStream,
    private readonly head: OpenHead,
    private readonly onDone: (
      event: Omit<WebSocketEvent, 'requestId' | 'interceptId' | 'startedAt' | 'path'>,
    ) => void,
  ) {
    const upgrade = head.headers.find((_v, i, list) => i % 2 === 1 && list[i - 1] === 'upgrade');
    this.websocket = isWebSocketUpgrade(upgrade);
  }

  start(unreachable: (err: Error) => void): void {
    const { stream, head } = this;
    // Bytes the caller sent right after its request wait for the local service's 101.
    const early: Buffer[] = [];
    stream.onData = (chunk) => {
      this.bytesIn += chunk.length;
      early.push(chunk);
    };
    const req = http.request({
      host: this.target.host ?? '127.0.0.1',
      port: this.target.port,
      method: head.method,
      path: head.path,
      headers: [...head.headers, 'host', head.authority],
    });
    stream.onReset = () => {
      this.closedBy ??= 'caller';
      req.destroy();
      this.socket?.destroy();
    };
    stream.onEnd = () => {
      // The caller ended its side before the upgrade: nothing more will come.
      if (!this.socket) req.end();
    };
    req.on('error', (err) => {
      if (this.socket) return;
      if (!stream.closed) unreachable(err);
      this.error = err.message;
      this.report();
    });
    req.on('response', (res) => {
      // The local service refused the upgrade: its answer goes back as it is, and that is all.
      this.status = res.statusCode ?? 502;
      stream.respond({
        status: this.status,
        headers: objectToRaw(forwardableResponseHeaders(res.headers)),
        body: true,
      });
      res.on('data', (chunk: Buffer) => {
        this.bytesOut += chunk.length;
        if (!stream.write(chunk)) res.pause();
      });
      stream.onDrain = () => res.resume();
      res.on('end', () => {
        stream.end();
        this.closedBy = 'local';
        this.report();
      });
      res.on('error', (err) => {
        stream.reset('error', err.message);
        this.error = err.message;
        this.report();
      });
    });
    req.on('upgrade', (res, socket, rest) => {
      this.socket = socket;
      this.status = 101;
      // Connection and Upgrade are hop-by-hop, yet exactly what the 101 must carry.
      stream.respond({
        status: 101,
        headers: lowerCaseNames(res.rawHeaders),
        body: true,
      });
      const fromCaller = this.websocket ? new WebSocketFrameTracker() : undefined;
      const fromLocal = this.websocket ? new WebSocketFrameTracker() : undefined;
      this.toLocal = new Direction(
        fromCaller,
        (b) => socket.write(b),
        closeFrame(GOING_AWAY, LEAVE_REASON, true),
      );
      this.toCaller = new Direction(
        fromLocal,
        (b) => stream.write(b),
        closeFrame(GOING_AWAY, LEAVE_REASON, false),
      );
      const toLocal = this.toLocal;
      const toCaller = this.toCaller;
      const noteClose = () => {
        if (fromCaller?.closeCode !== undefined) this.closeFrom ??= 'caller';
        if (fromLocal?.closeCode !== undefined) this.closeFrom ??= 'local';
      };
      const fromSocket = (chunk: Buffer) => {
        this.bytesOut += chunk.length;
        const more = toCaller.pass(chunk);
        noteClose();
        return more;
      };
      if (rest.length > 0) fromSocket(rest);
      for (const chunk of early) toLocal.pass(chunk);
      stream.consumed(early.reduce((n, c) => n + c.length, 0));
      noteClose();
      drainInto(
        stream,
        {
          write: (chunk) => {
            const more = toLocal.pass(chunk);
            noteClose();
            return more;
          },
          once: (event, listener) => socket.once(event, listener),
        },
        (chunk) => {
          this.bytesIn += chunk.length;
        },
      );
      stream.onEnd = () => {
        this.closedBy ??= 'caller';
        socket.end();
      };
      socket.on('data', (chunk: Buffer) => {
        if (!fromSocket(chunk)) socket.pause();
      });
      stream.onDrain = () => socket.resume();
      socket.on('end', () => {
        this.closedBy ??= 'local';
        stream.end();
      });
      socket.on('error', (err) => {
        this.error ??= err.message;
      });
      socket.on('close', () => {
        this.closedBy ??= 'local';
        if (!stream.closed) stream.reset('cancel', 'the local service closed the connection');
        this.report(fromCaller, fromLocal);
      });
      if (early.length === 0 && stream.gotEnd) socket.end();
    });
    req.end();
  }

  /** Closes the connection cleanly for a leave (WebSocket: 1001 both ways), within about a second. */
  goAway(): Promise<void> {
    this.goingAway ??= new Promise<void>((resolve) => {
      const socket = this.socket;
      if (!socket || socket.destroyed) {
        this.destroy();
        resolve();
        return;
      }
      this.closedBy = 'leave';
      const done = () => {
        clearTimeout(timer);
        socket.end();
        this.stream.end();
        // Whatever did not finish its closing handshake in time is cut.
        setTimeout(() => socket.destroy(), 200).unref();
        resolve();
      };
      const timer = setTimeout(done, CLOSE_WAIT_MS);
      if (!this.websocket) {
        done();
        return;
      }
      this.toLocal?.close();
      this.toCaller?.close();
      // Both sides have answered with close frames of their own: the handshake is over.
      const check = setInterval(() => {
        if (
          this.toLocal?.tracker?.closeCode !== undefined &&
          this.toCaller?.tracker?.closeCode !== undefined
        ) {
          clearInterval(check);
          done();
        }
      }, 20);
      check.unref();
      socket.once('close', () => {
        clearInterval(check);
        done();
      });
    });
    return this.goingAway;
  }

  destroy(): void {
    this.socket?.destroy();
    if (!this.stream.closed) this.stream.reset('cancel', 'the client agent is stopping');
  }

  private report(fromCaller?: WebSocketFrameTracker, fromLocal?: WebSocketFrameTracker): void {
    if (this.reported) return;
    this.reported = true;
    const from = this.closeFrom === 'caller' ? fromCaller : fromLocal;
    this.onDone({
      kind: 'websocket',
      protocol: this.websocket ? 'websocket' : 'upgrade',
      status: this.status,
      durationMs: performance.now() - this.startedAt,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      messagesIn: fromCaller?.messages,
      messagesOut: fromLocal?.messages,
      closedBy: this.closedBy,
      closeFrom: this.closeFrom,
      code: from?.closeCode,
      reason: from?.closeReason,
      error: this.error,
    });
  }
}
