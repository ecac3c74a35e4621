/**
 * Many streams over one tunnel WebSocket, with credit-based flow control per stream: a side
 * sends at most STREAM_WINDOW body bytes its peer has not yet passed on, so a slow reader
 * holds a stream's sender back and never anyone else's. The server agent opens streams; the
 * client agent answers them. Text messages are the JSON control channel, handed on as they are.
 */
import type { Readable, Writable } from 'node:stream';
import WebSocket from 'ws';
import {
  decodeCredit,
  decodeFrame,
  decodeJson,
  encodeCredit,
  encodeFrame,
  encodeJson,
  FRAME_HEAD_BYTES,
  type Frame,
  FrameType,
  MAX_DATA_FRAME,
  type OpenHead,
  OpenHeadSchema,
  type ResetReason,
  ResetSchema,
  type ResponseHead,
  ResponseHeadSchema,
  STREAM_WINDOW,
  TrailersSchema,
  TunnelProtocolError,
} from './tunnel-wire.js';

const noop = () => undefined;
/** Credit goes back in batches: one frame per half window rather than one per chunk. */
const CREDIT_BATCH = STREAM_WINDOW / 2;
/** What a peer may have in flight on a stream beyond its window: the one frame that crossed zero. */
const OVERSHOOT = MAX_DATA_FRAME;

export class TunnelStream {
  /** The response head (server side). */
  onHead: (head: ResponseHead) => void = noop;
  onData: (chunk: Buffer) => void = noop;
  /** The peer sent all it will; trailers if it had any. */
  onEnd: (trailers: string[] | undefined) => void = noop;
  /** The peer abandoned the stream, or the tunnel closed under it. */
  onReset: (reason: ResetReason) => void = noop;
  /** Credit came back after a write returned false. */
  onDrain: () => void = noop;
  /** Done both ways or reset: the last callback, once. */
  onClose: () => void = noop;

  private credit = STREAM_WINDOW;
  /** Bytes written past the credit, sent as credit comes back. */
  private readonly queued: Buffer[] = [];
  /** end() was called with bytes still queued: it happens once they are out. */
  private endWith?: { trailers?: string[] };
  /** Bytes passed on and not yet credited back to the peer. */
  private owed = 0;
  /** Bytes received and not yet passed on. */
  private held = 0;
  sentEnd = false;
  gotEnd = false;
  closed = false;
  /** Why it closed, if not by both sides ending. */
  reason?: ResetReason;

  constructor(
    private readonly mux: TunnelMux,
    readonly id: number,
  ) {}

  /**
   * Sends body bytes; false once the peer's credit is used up (wait for onDrain). What a large
   * write has past the credit waits here, so the peer never has more than a window and a frame
   * in flight, however large the writes.
   */
  write(chunk: Buffer): boolean {
    if (this.closed || this.sentEnd) return false;
    if (this.queued.length > 0) this.queued.push(chunk);
    else {
      const rest = this.sendWithin(chunk);
      if (rest) this.queued.push(rest);
    }
    return this.credit > 0 && this.queued.length === 0;
  }

  /** Sends what the credit allows, in frames of at most MAX_DATA_FRAME; returns the rest. */
  private sendWithin(chunk: Buffer): Buffer | undefined {
    let at = 0;
    while (at < chunk.length && this.credit > 0) {
      const part =
        at === 0 && chunk.length <= MAX_DATA_FRAME ? chunk : chunk.subarray(at, at + MAX_DATA_FRAME);
      this.mux.sendData(this.id, part);
      this.credit -= part.length;
      at += part.length;
    }
    return at < chunk.length ? chunk.subarray(at) : undefined;
  }

  /** No more body from this side, with trailers if there are any (after what is queued). */
  end(trailers?: string[]): void {
    if (this.closed || this.sentEnd) return;
    if (this.queued.length > 0) {
      this.endWith = { trailers };
      return;
    }
    this.sentEnd = true;
    this.mux.send(
      trailers && trailers.length > 0
        ? encodeJson(FrameType.End, this.id, { trailers })
        : encodeFrame(FrameType.End, this.id),
    );
    if (this.gotEnd) this.finish();
  }

  /** The response head, on a stream the peer opened (client agent); without a body it also ends. */
  respond(head: ResponseHead): void {
    if (this.closed || this.sentEnd) return;
    this.mux.send(encodeJson(FrameType.Head, this.id, head));
    if (!head.body) this.end();
  }

  /** Abandons the stream; the peer hears why. */
  reset(code: ResetReason['code'], message?: string): void {
    if (this.closed) return;
    this.mux.send(encodeJson(FrameType.Reset, this.id, message ? { code, message } : { code }));
    this.finish({ code, message });
  }

  /** `bytes` of what onData delivered have been passed on: the peer may send that much more. */
  consumed(bytes: number): void {
    this.held -= bytes;
    this.owed += bytes;
    if (this.owed >= CREDIT_BATCH && !this.closed && !this.gotEnd) {
      this.mux.send(encodeCredit(this.id, this.owed));
      this.owed = 0;
    }
  }

  /** @internal */
  receive(frame: Frame): void {
    if (this.closed) return;
    switch (frame.type) {
      case FrameType.Head: {
        const head = decodeJson(ResponseHeadSchema, frame);
        this.onHead(head);
        if (!head.body) this.receiveEnd(undefined);
        return;
      }
      case FrameType.Data:
        if (this.gotEnd) throw new TunnelProtocolError(`data on stream ${this.id} after its end`);
        this.held += frame.payload.length;
        if (this.held > STREAM_WINDOW + OVERSHOOT) {
          this.reset('error', `the peer sent ${this.held} bytes past its credit`);
          return;
        }
        this.onData(frame.payload);
        return;
      case FrameType.End:
        this.receiveEnd(frame.payload.length > 0 ? decodeJson(TrailersSchema, frame).trailers : undefined);
        return;
      case FrameType.Reset:
        this.receiveReset(decodeJson(ResetSchema, frame));
        return;
      case FrameType.Credit: {
        const wasBlocked = this.credit <= 0 || this.queued.length > 0;
        this.credit += decodeCredit(frame);
        while (this.queued.length > 0 && this.credit > 0) {
          const rest = this.sendWithin(this.queued.shift() as Buffer);
          if (rest) this.queued.unshift(rest);
        }
        if (this.queued.length > 0) return;
        if (this.endWith) {
          const { trailers } = this.endWith;
          this.endWith = undefined;
          this.end(trailers);
          return;
        }
        if (wasBlocked && this.credit > 0) this.onDrain();
        return;
      }
      default:
        throw new TunnelProtocolError(`frame type ${frame.type} on an open stream ${this.id}`);
    }
  }

  /** @internal */
  receiveEnd(trailers: string[] | undefined): void {
    if (this.gotEnd || this.closed) return;
    this.gotEnd = true;
    this.onEnd(trailers);
    if (this.sentEnd) this.finish();
  }

  /** @internal */
  receiveReset(reason: ResetReason): void {
    if (this.closed) return;
    this.finish(reason);
    this.onReset(reason);
  }

  private finish(reason?: ResetReason): void {
    if (this.closed) return;
    this.closed = true;
    this.reason = reason;
    this.mux.forget(this);
    // onReset, called after this for a peer's reset, may still look at `reason`; onClose is last.
    queueMicrotask(() => {
      this.onClose();
      this.mux.closed(this);
    });
  }
}

export interface MuxHandlers {
  /** A stream the peer opened (client agent). Absent: the peer may not open streams (server agent). */
  onOpen?: (stream: TunnelStream, head: OpenHead) => void;
  /** A text message: the JSON control channel. */
  onControl: (text: string) => void;
  /** The peer broke the protocol; the tunnel is closed with 1002 after this. */
  onProtocolError: (err: TunnelProtocolError) => void;
  /** A stream closed (after its own onClose): for counting what is in flight. */
  onStreamClosed?: (stream: TunnelStream) => void;
}

export class TunnelMux {
  private readonly streams = new Map<number, TunnelStream>();
  private lastId = 0;
  private corked = false;
  private readonly socket?: { cork(): void; uncork(): void; write(data: Buffer): boolean };
  private readonly uncork = () => {
    this.corked = false;
    this.socket?.uncork();
  };

  constructor(
    private readonly ws: WebSocket,
    private readonly handlers: MuxHandlers,
    /** The WebSocket client's end (the client agent): frames it sends must be masked. */
    private readonly masked: boolean,
  ) {
    // ws keeps its socket private. Through it the frames of one round of I/O leave in one
    // write, and body bytes leave without being copied into a frame (see sendData); without
    // it frames go out one by one through ws, which is only slower.
    this.socket = (ws as unknown as { _socket?: TunnelMux['socket'] })._socket;
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) {
        handlers.onControl(data.toString('utf8'));
        return;
      }
      try {
        this.receive(decodeFrame(data));
      } catch (err) {
        if (!(err instanceof TunnelProtocolError)) throw err;
        handlers.onProtocolError(err);
        ws.close(1002, 'tunnel protocol error');
      }
    });
    ws.on('close', () => {
      for (const stream of [...this.streams.values()])
        stream.receiveReset({ code: 'error', message: 'the tunnel closed' });
    });
  }

  /** Streams open now. */
  get size(): number {
    return this.streams.size;
  }

  /** Opens a stream with a request head (server agent). */
  open(head: OpenHead): TunnelStream {
    let id = this.lastId;
    do id = id >= 0xffffffff ? 1 : id + 1;
    while (this.streams.has(id));
    this.lastId = id;
    const stream = new TunnelStream(this, id);
    this.streams.set(id, stream);
    this.send(encodeJson(FrameType.Open, id, head));
    if (!head.body) stream.sentEnd = true;
    return stream;
  }

  /** @internal */
  send(frame: Buffer): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    this.corkUntilIdle();
    this.ws.send(frame, { binary: true });
  }

  /**
   * A Data frame written as a WebSocket message of its own, head and payload side by side in
   * the (corked) socket, so body bytes are never copied on the way out. Safe beside ws's own
   * writes: without compression ws writes each message to the socket at once, whole, so
   * messages never interleave. A mask of zeros (client side) leaves the payload as it is.
   */
  sendData(id: number, chunk: Buffer): void {
    if (!this.socket) {
      this.send(encodeFrame(FrameType.Data, id, chunk));
      return;
    }
    if (this.ws.readyState !== WebSocket.OPEN) return;
    const length = FRAME_HEAD_BYTES + chunk.length;
    const extended = length < 126 ? 0 : length < 0x10000 ? 2 : 8;
    const head = Buffer.allocUnsafe(2 + extended + (this.masked ? 4 : 0) + FRAME_HEAD_BYTES);
    head[0] = 0x82; // FIN, binary
    head[1] = (this.masked ? 0x80 : 0) | (extended === 0 ? length : extended === 2 ? 126 : 127);
    let at = 2;
    if (extended === 2) head.writeUInt16BE(length, at);
    else if (extended === 8) {
      head.writeUInt32BE(0, at);
      head.writeUInt32BE(length, at + 4);
    }
    at += extended;
    if (this.masked) {
      head.writeUInt32BE(0, at);
      at += 4;
    }
    head[at] = FrameType.Data;
    head.writeUInt32BE(id, at + 1);
    this.corkUntilIdle();
    this.socket.write(head);
    this.socket.write(chunk);
  }

  private corkUntilIdle(): void {
    if (this.corked || !this.socket) return;
    this.corked = true;
    this.socket.cork();
    // After the poll phase: frames for every request whose data arrived in this round of
    // I/O leave together, one write for many requests under load, as HTTP/2 coalesces them.
    setImmediate(this.uncork);
  }

  /** @internal */
  forget(stream: TunnelStream): void {
    if (this.streams.get(stream.id) === stream) this.streams.delete(stream.id);
  }

  /** @internal */
  closed(stream: TunnelStream): void {
    this.handlers.onStreamClosed?.(stream);
  }

  private receive(frame: Frame): void {
    if (frame.type === FrameType.Open) {
      if (!this.handlers.onOpen) throw new TunnelProtocolError('the peer may not open streams');
      if (frame.id === 0 || this.streams.has(frame.id))
        throw new TunnelProtocolError(`stream ${frame.id} opened twice`);
      const head = decodeJson(OpenHeadSchema, frame);
      const stream = new TunnelStream(this, frame.id);
      this.streams.set(frame.id, stream);
      this.handlers.onOpen(stream, head);
      if (!head.body) stream.receiveEnd(undefined);
      return;
    }
    // A frame for a stream already closed here crossed our own reset or end on the wire.
    this.streams.get(frame.id)?.receive(frame);
  }
}

/**
 * Sends a readable's bytes on a stream, pausing it while the peer has no credit left, and
 * ends the stream when it ends (with the trailers `trailers` gives then).
 */
export function pumpInto(
  source: Readable,
  stream: TunnelStream,
  trailers?: () => string[] | undefined,
  onChunk?: (chunk: Buffer) => void,
): void {
  source.on('data', (chunk: Buffer) => {
    onChunk?.(chunk);
    if (!stream.write(chunk)) source.pause();
  });
  stream.onDrain = () => source.resume();
  source.once('end', () => stream.end(trailers?.()));
}

/** Where drainInto writes: a Writable, or anything that says when it has taken its writes. */
export type Sink = Pick<Writable, 'write'> & { once(event: 'drain', listener: () => void): unknown };

/** Writes a stream's body into `dest`, crediting the peer as `dest` takes it. */
export function drainInto(stream: TunnelStream, dest: Sink, onChunk?: (chunk: Buffer) => void): void {
  let waiting = 0;
  stream.onData = (chunk) => {
    onChunk?.(chunk);
    if (waiting === 0 && dest.write(chunk)) stream.consumed(chunk.length);
    else {
      if (waiting === 0) dest.once('drain', credit);
      if (waiting > 0) dest.write(chunk);
      waiting += chunk.length;
    }
  };
  const credit = () => {
    const bytes = waiting;
    waiting = 0;
    stream.consumed(bytes);
  };
}
