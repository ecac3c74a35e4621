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
 * Largest binary message sent. HTTP/2 can hand over a burst as large as its windows (8 MB and
 * more) in one writev; one message that size would exceed the peer's maxPayload (8 MB) and kill
 * the tunnel with 1009, so bursts go out as several messages (the peer reads them as one stream).
 */
const MAX_MESSAGE = 1 << 20;

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

  const sendAll = (data: Buffer, cb: (err?: Error | null) => void) => {
    let offset = 0;
    if (ws.readyState === WebSocket.OPEN) {
      for (; data.length - offset > MAX_MESSAGE; offset += MAX_MESSAGE)
        ws.send(data.subarray(offset, offset + MAX_MESSAGE), { binary: true });
    }
    // The last piece goes through send(), which holds the callback while the socket is backed up.
    send(offset === 0 ? data : data.subarray(offset), cb);
  };

  const duplex = new Duplex({
    // The HTTP/2 session buffers for itself; a small readable buffer keeps pauses prompt.
    readableHighWaterMark: 256 * 1024,
    writableHighWaterMark: 256 * 1024,
    read() {
      ws.resume();
    },
    write(chunk: Buffer, _enc, cb) {
      sendAll(chunk, cb);
    },
    writev(chunks, cb) {
      sendAll(chunks.length === 1 ? (chunks[0]?.chunk as Buffer) : Buffer.concat(chunks.map((c) => c.chunk as Buffer)), cb);
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
