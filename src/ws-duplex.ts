/**
 * A byte stream over a WebSocket: binary frames carry the bytes, text frames are handed to
 * `onText` (the tunnel's control channel). Backpressure is real in both directions, so an
 * HTTP/2 session running on top keeps its memory bounded by its flow-control windows.
 */
import { Duplex } from 'node:stream';
import WebSocket from 'ws';

/** Beyond this much unsent data, writes wait for the socket to drain. */
const WRITE_HIGH_WATER = 1 << 20;
/**
 * Largest binary message sent. HTTP/2 can hand over a burst as large as its windows in one
 * writev; one message that size would exceed the peer's maxPayload and kill the tunnel, and
 * a message spanning many TCP reads costs the receiver a copy to reassemble. This holds two
 * full DATA frames (64 KiB payload + 9-byte header each).
 */
const MAX_MESSAGE = 2 * (64 * 1024 + 9);
/** Chunks below this are joined into one message; larger ones are sent without copying. */
const SMALL_CHUNK = 16 * 1024;

export function webSocketDuplex(ws: WebSocket, onText: (text: string) => void): Duplex {
  let pendingCallback: ((err?: Error | null) => void) | undefined;

  const send = (chunk: Buffer, cb: (err?: Error | null) => void) => {
    if (ws.readyState !== WebSocket.OPEN) {
      cb(new Error('tunnel closed'));
      return;
    }
    if (ws.bufferedAmount + chunk.length < WRITE_HIGH_WATER) {
      ws.send(chunk, { binary: true });
      cb();
    } else {
      // Hold the stream's callback until this frame is on the wire: that is what stops the
      // writer (and so the HTTP/2 session) from queueing without bound.
      pendingCallback = cb;
      ws.send(chunk, { binary: true }, (err) => {
        pendingCallback = undefined;
        cb(err ?? null);
      });
    }
  };

  /** Sends every part, splitting oversized ones; only the last send carries the callback. */
  const sendParts = (parts: Buffer[], cb: (err?: Error | null) => void) => {
    const open = ws.readyState === WebSocket.OPEN;
    for (let p = 0; p < parts.length; p++) {
      const data = parts[p] as Buffer;
      let offset = 0;
      for (; data.length - offset > MAX_MESSAGE; offset += MAX_MESSAGE) {
        if (open) ws.send(data.subarray(offset, offset + MAX_MESSAGE), { binary: true });
      }
      const rest = offset === 0 ? data : data.subarray(offset);
      if (p === parts.length - 1) send(rest, cb);
      else if (open) ws.send(rest, { binary: true });
    }
  };

  const coalesce = (chunks: Buffer[]): Buffer[] => {
    const parts: Buffer[] = [];
    let small: Buffer[] = [];
    let smallBytes = 0;
    const flush = () => {
      if (smallBytes === 0) return;
      parts.push(small.length === 1 ? (small[0] as Buffer) : Buffer.concat(small, smallBytes));
      small = [];
      smallBytes = 0;
    };
    for (const chunk of chunks) {
      if (chunk.length >= SMALL_CHUNK) {
        flush();
        parts.push(chunk);
      } else {
        small.push(chunk);
        smallBytes += chunk.length;
        if (smallBytes >= MAX_MESSAGE) flush();
      }
    }
    flush();
    return parts;
  };

  const duplex = new Duplex({
    // The HTTP/2 session buffers for itself; a small readable buffer keeps pauses prompt.
    readableHighWaterMark: 256 * 1024,
    writableHighWaterMark: 256 * 1024,
    read() {
      ws.resume();
    },
    write(chunk: Buffer, _enc, cb) {
      sendParts([chunk], cb);
    },
    writev(chunks, cb) {
      sendParts(coalesce(chunks.map((c) => c.chunk as Buffer)), cb);
    },
    final(cb) {
      ws.close(1000, 'done');
      cb();
    },
    destroy(err, cb) {
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
        if (err) ws.terminate();
        else ws.close(1000, 'done');
      }
      pendingCallback?.(err ?? new Error('tunnel closed'));
      cb(err);
    },
  });

  ws.on('message', (data: Buffer, isBinary: boolean) => {
    if (!isBinary) {
      onText(data.toString('utf8'));
      return;
    }
    if (!duplex.push(data)) ws.pause();
  });
  ws.on('close', () => {
    duplex.push(null);
    duplex.destroy();
  });
  ws.on('error', (err) => duplex.destroy(err));
  return duplex;
}
