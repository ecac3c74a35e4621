/**
 * Follows the frames of one direction of a WebSocket connection that Kelsingra relays as
 * bytes, without buffering or changing them: where each frame ends (so a close frame of our
 * own can be put between two frames, never inside one) and the close code a side sent.
 */
import { randomBytes } from 'node:crypto';

const OP_CLOSE = 0x8;

export class WebSocketFrameTracker {
  /** Bytes of the current frame's head seen so far (at most 14). */
  private readonly head = Buffer.alloc(14);
  private headBytes = 0;
  /** Payload bytes of the current frame still to come. */
  private remaining = 0;
  private inPayload = false;
  private opcode = 0;
  private mask?: Buffer;
  /** The start of a close frame's payload (code and reason), unmasked. */
  private closePayload?: Buffer;
  private closeAt = 0;
  /** Data messages seen (a fragmented message counts once). */
  messages = 0;
  /** The code of the close frame this side sent, once it has (1005: none given). */
  closeCode?: number;
  closeReason?: string;

  /** Between two frames: a frame of our own may go here. */
  get atBoundary(): boolean {
    return !this.inPayload && this.headBytes === 0;
  }

  /**
   * Reads `chunk`. With `stopAtBoundary`, stops at the first frame boundary and returns the
   * offset there (0 when already at one); otherwise reads it all and returns its length.
   */
  feed(chunk: Buffer, stopAtBoundary = false): number {
    let at = 0;
    if (stopAtBoundary && this.atBoundary) return 0;
    while (at < chunk.length) {
      if (!this.inPayload) {
        at = this.readHead(chunk, at);
        if (!this.inPayload) continue;
        if (this.remaining === 0) {
          this.frameDone();
          if (stopAtBoundary) return at;
        }
        continue;
      }
      const take = Math.min(this.remaining, chunk.length - at);
      if (this.closePayload && this.closeAt < this.closePayload.length) {
        const part = Math.min(take, this.closePayload.length - this.closeAt);
        for (let i = 0; i < part; i++) {
          const byte = chunk[at + i] as number;
          const index = this.closeAt + i;
          this.closePayload[index] = this.mask ? byte ^ (this.mask[index % 4] as number) : byte;
        }
        this.closeAt += part;
      }
      at += take;
      this.remaining -= take;
      if (this.remaining === 0) {
        this.frameDone();
        if (stopAtBoundary) return at;
      }
    }
    return at;
  }

  private readHead(chunk: Buffer, start: number): number {
    let at = start;
    while (at < chunk.length && this.headBytes < this.headLength()) {
      this.head[this.headBytes++] = chunk[at++] as number;
    }
    if (this.headBytes < 2 || this.headBytes < this.headLength()) return at;
    const b0 = this.head[0] as number;
    const b1 = this.head[1] as number;
    const len7 = b1 & 0x7f;
    let offset = 2;
    let length = len7;
    if (len7 === 126) {
      length = this.head.readUInt16BE(2);
      offset = 4;
    } else if (len7 === 127) {
      length = Number(this.head.readBigUInt64BE(2));
      offset = 10;
    }
    this.mask = b1 & 0x80 ? Buffer.from(this.head.subarray(offset, offset + 4)) : undefined;
    this.opcode = b0 & 0x0f;
    if (this.opcode === OP_CLOSE) {
      this.closePayload = Buffer.alloc(Math.min(length, 125));
      this.closeAt = 0;
    }
    // A data frame with FIN that is not a continuation ends a message; so does a final continuation.
    if (b0 & 0x80 && this.opcode < OP_CLOSE) this.messages++;
    this.remaining = length;
    this.inPayload = true;
    this.headBytes = 0;
    return at;
  }

  /** The head's full length, once its second byte says it (2 until then). */
  private headLength(): number {
    if (this.headBytes < 2) return 2;
    const b1 = this.head[1] as number;
    const len7 = b1 & 0x7f;
    return 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (b1 & 0x80 ? 4 : 0);
  }

  private frameDone(): void {
    this.inPayload = false;
    if (this.opcode === OP_CLOSE && this.closePayload && this.closeCode === undefined) {
      const payload = this.closePayload.subarray(0, this.closeAt);
      this.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      this.closeReason = payload.length > 2 ? payload.subarray(2).toString('utf8') : undefined;
    }
    this.closePayload = undefined;
  }
}

/**
 * A close frame. Frames toward a server must be masked (RFC 6455 §5.3), frames toward a
 * client must not be.
 */
export function closeFrame(code: number, reason: string, masked: boolean): Buffer {
  const payload = Buffer.alloc(2 + Buffer.byteLength(reason));
  payload.writeUInt16BE(code, 0);
  payload.write(reason, 2);
  if (payload.length > 125) throw new RangeError('a close reason of at most 123 bytes');
  const head = Buffer.from([0x80 | OP_CLOSE, (masked ? 0x80 : 0) | payload.length]);
  if (!masked) return Buffer.concat([head, payload]);
  const mask = randomBytes(4);
  for (let i = 0; i < payload.length; i++) payload[i] = (payload[i] as number) ^ (mask[i % 4] as number);
  return Buffer.concat([head, mask, payload]);
}

/** Whether an upgrade request is for a WebSocket (whose frames Kelsingra can follow). */
export function isWebSocketUpgrade(upgrade: string | undefined): boolean {
  return upgrade?.toLowerCase() === 'websocket';
}
