/**
 * The tunnel's frames (docs/protocol.md): one binary WebSocket message per frame, a 5-byte
 * head (type, stream id) and a payload. Request and response heads are JSON checked against
 * a schema on arrival; a frame that does not fit is a protocol error, never a cast.
 */
import { z } from 'zod';

/**
 * Offered by the client, accepted by the server only if it speaks it. The number changes
 * whenever an agent of one version cannot talk to the other.
 */
export const TUNNEL_SUBPROTOCOL = 'kelsingra.tunnel.v2';
/** What Kelsingra 0.1 clients offered (HTTP/2 over the WebSocket): refused with a message saying which to upgrade. */
export const LEGACY_SUBPROTOCOL = 'kelsingra.h2.v1';

export const FrameType = {
  /** server → client: a request (or an Upgrade, or a Kafka delivery) on a new stream. */
  Open: 1,
  /** client → server: the response head. */
  Head: 2,
  /** either way: body bytes (after a 101, the upgraded connection's bytes). */
  Data: 3,
  /** either way: no more body from this side; the payload, if any, is the trailers. */
  End: 4,
  /** either way: the stream is abandoned (the caller left, the local service failed). */
  Reset: 5,
  /** either way: the sender may send this many more body bytes on the stream. */
  Credit: 6,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export const FRAME_HEAD_BYTES = 5;
/** Body bytes one side may send on a stream before the other credits them back. */
export const STREAM_WINDOW = 256 * 1024;
/**
 * Larger writes go as several frames (slices, not copies). Small frames mostly fit inside one
 * socket read at the other end, where ws hands them on as slices; a 64 KiB frame nearly
 * always spans two reads and is copied. Measured over 1 GiB each way: 16 KiB frames carried
 * 180–266 MB/s at 142–162 MiB peak RSS, 256 KiB ones 140–192 MB/s at 181–199 MiB.
 */
export const MAX_DATA_FRAME = 16 * 1024;

/** Flat header list `[name, value, name, value…]`, as Node's rawHeaders. */
const rawHeaders = z
  .array(z.string())
  .max(2_000)
  .refine((list) => list.length % 2 === 0, 'a header list has an even length');

export const OpenHeadSchema = z.object({
  /** What the stream is for: a data-plane request, or a Kafka message for the local broker. */
  kind: z.enum(['http', 'kafka']),
  method: z.string().min(1).max(64),
  path: z.string().min(1),
  authority: z.string(),
  headers: rawHeaders,
  intercept: z.string().min(1),
  /** The caller spoke HTTP/2 (gRPC): the local service is spoken to over HTTP/2 too. */
  http2: z.boolean(),
  /** An Upgrade request: after a 101 head, Data frames carry the upgraded connection's bytes. */
  upgrade: z.boolean(),
  /** Body frames follow (Data…, End); false: the request ends with its head. */
  body: z.boolean(),
  /** The request announced trailers (HTTP/1.1 `Trailer`): the local request must be able to send them. */
  trailers: z.boolean().optional(),
});
export type OpenHead = z.infer<typeof OpenHeadSchema>;

export const ResponseHeadSchema = z.object({
  status: z.number().int().min(100).max(599),
  headers: rawHeaders,
  /** Body frames follow; false: the response ends with its head. */
  body: z.boolean(),
});
export type ResponseHead = z.infer<typeof ResponseHeadSchema>;

export const TrailersSchema = z.object({ trailers: rawHeaders });

export const ResetSchema = z.object({
  /** cancel: the other side's end went away; error: this side failed; refused: never started. */
  code: z.enum(['cancel', 'error', 'refused']),
  message: z.string().max(2_000).optional(),
});
export type ResetReason = z.infer<typeof ResetSchema>;

export interface Frame {
  type: FrameType;
  id: number;
  payload: Buffer;
}

export class TunnelProtocolError extends Error {}

export function encodeFrame(type: FrameType, id: number, payload?: Buffer | string): Buffer {
  const size =
    payload === undefined ? 0 : typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
  const frame = Buffer.allocUnsafe(FRAME_HEAD_BYTES + size);
  frame[0] = type;
  frame.writeUInt32BE(id, 1);
  if (typeof payload === 'string') frame.write(payload, FRAME_HEAD_BYTES);
  else payload?.copy(frame, FRAME_HEAD_BYTES);
  return frame;
}

export function encodeJson(type: FrameType, id: number, value: unknown): Buffer {
  return encodeFrame(type, id, JSON.stringify(value));
}

export function encodeCredit(id: number, bytes: number): Buffer {
  const frame = Buffer.allocUnsafe(FRAME_HEAD_BYTES + 4);
  frame[0] = FrameType.Credit;
  frame.writeUInt32BE(id, 1);
  frame.writeUInt32BE(bytes, FRAME_HEAD_BYTES);
  return frame;
}

export function decodeFrame(message: Buffer): Frame {
  if (message.length < FRAME_HEAD_BYTES) throw new TunnelProtocolError(`a ${message.length}-byte frame`);
  const type = message[0] as FrameType;
  if (type < FrameType.Open || type > FrameType.Credit)
    throw new TunnelProtocolError(`unknown frame type ${type}`);
  return { type, id: message.readUInt32BE(1), payload: message.subarray(FRAME_HEAD_BYTES) };
}

/** A JSON payload checked against its schema; anything else is the peer's protocol error. */
export function decodeJson<T>(schema: z.ZodType<T>, frame: Frame): T {
  let value: unknown;
  try {
    value = JSON.parse(frame.payload.toString('utf8'));
  } catch {
    throw new TunnelProtocolError(`frame type ${frame.type} on stream ${frame.id} is not JSON`);
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success)
    throw new TunnelProtocolError(
      `frame type ${frame.type} on stream ${frame.id}: ${parsed.error.issues.map((i) => `${i.path.join('.')} ${i.message}`).join('; ')}`,
    );
  return parsed.data;
}

export function decodeCredit(frame: Frame): number {
  if (frame.payload.length !== 4)
    throw new TunnelProtocolError(`a credit frame of ${frame.payload.length} bytes`);
  return frame.payload.readUInt32BE(0);
}
