/**
 * Kafka records as they cross the tunnel and the REST API: keys, values and header values
 * are bytes, so they travel base64-encoded in JSON. Shared by both agents.
 */
import type { IHeaders, Message } from 'kafkajs';
import { z } from 'zod';

/** The path of a Kafka delivery's stream (kind `kafka`): for logs only, routing is by kind. */
export const KAFKA_DELIVER_PATH = '/.kelsingra/kafka';
/** Describes the delivered message (topic, key, headers); the stream body is its value. */
export const KAFKA_META_HEADER = 'x-kelsingra-kafka';

/** What KAFKA_META_HEADER carries, checked on arrival. */
export const DeliveryMetaSchema = z.object({
  topic: z.string(),
  key: z.string().nullable(),
  headers: z.record(z.string(), z.string()).optional(),
  timestamp: z.string().optional(),
  // A null value (a tombstone) and an empty one mean different things to compacted topics.
  nullValue: z.boolean().optional(),
});
export type DeliveryMeta = z.infer<typeof DeliveryMetaSchema>;
/** On messages Kelsingra forwarded from a developer: never intercepted again, so nothing loops. */
export const KAFKA_HOP_HEADER = 'x-kelsingra-hop';
/** On messages in a per-intercept topic: the dev topic they came from. */
export const KAFKA_SOURCE_HEADER = 'x-kelsingra-topic';

export interface WireMessage {
  key: string | null;
  value: string | null;
  headers: Record<string, string>;
  timestamp?: string;
}

const b64 = (v: Buffer | string | null | undefined): string | null =>
  v === null || v === undefined ? null : Buffer.from(v).toString('base64');

export function toWire(m: {
  key?: Buffer | string | null;
  value?: Buffer | string | null;
  headers?: IHeaders;
  timestamp?: string;
}): WireMessage {
  // fromEntries, not assignment: a header named `__proto__` must stay a header.
  const headers: Record<string, string> = Object.fromEntries(
    Object.entries(m.headers ?? {}).flatMap(([k, v]) => {
      // kafkajs gives repeated headers as an array; the last one wins, as for most consumers.
      const one = Array.isArray(v) ? v[v.length - 1] : v;
      return one === undefined ? [] : [[k, b64(one) ?? '']];
    }),
  );
  return { key: b64(m.key), value: b64(m.value), headers, timestamp: m.timestamp };
}

/** A field of a wire message as bytes: base64 text, or null where allowed; else an error naming it. */
function wireBytes(v: unknown, field: string, nullable: boolean): Buffer | null {
  if (v === null && nullable) return null;
  if (typeof v !== 'string') {
    const got = v === undefined ? 'missing' : v === null ? 'null' : typeof v;
    throw new TypeError(
      `Kafka wire message: ${field} must be base64 text${nullable ? ' or null' : ''}, not ${got}`,
    );
  }
  return Buffer.from(v, 'base64');
}

/**
 * The record a wire message (JSON from the other agent) stands for. Anything not of its shape
 * fails with an error that names the field, not a TypeError from deep inside Buffer.
 */
export function fromWire(w: WireMessage): Message {
  if (typeof w !== 'object' || w === null)
    throw new TypeError('Kafka wire message: must be an object with key, value and headers');
  const raw: unknown = w.headers ?? {};
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new TypeError('Kafka wire message: headers must be an object of base64 text');
  const headers: IHeaders = Object.fromEntries(
    Object.entries(raw).map(([k, v]) => [k, wireBytes(v, `header ${k}`, false) as Buffer]),
  );
  return { key: wireBytes(w.key, 'key', true), value: wireBytes(w.value, 'value', true), headers };
}

/** A header's value as text (tenant ids are text), whatever form kafkajs gave it in. */
export function headerText(headers: IHeaders | undefined, name: string): string | undefined {
  if (!headers) return undefined;
  const v = headers[name] ?? Object.entries(headers).find(([k]) => k.toLowerCase() === name)?.[1];
  const one = Array.isArray(v) ? v[v.length - 1] : v;
  return one === undefined ? undefined : Buffer.from(one).toString('utf8');
}

/**
 * Produce requests kept under the broker's default message size limit (1 MB per record
 * batch): a backlog fetched in one go must not come back as one request the broker refuses.
 */
export const MAX_PRODUCE_BYTES = 512 * 1024;

export function messageBytes(m: {
  key?: Buffer | string | null;
  value?: Buffer | string | null;
  headers?: IHeaders;
}): number {
  let size = 64 + (m.key?.length ?? 0) + (m.value?.length ?? 0);
  for (const [k, v] of Object.entries(m.headers ?? {}))
    size += k.length + (Array.isArray(v) ? v.join('').length : (v?.length ?? 0));
  return size;
}

/** Consecutive runs of `items` of at most `max` bytes each (one item alone may exceed it). */
export function chunkBySize<T>(items: T[], size: (item: T) => number, max = MAX_PRODUCE_BYTES): T[][] {
  const chunks: T[][] = [];
  let current: T[] = [];
  let bytes = 0;
  for (const item of items) {
    const n = size(item);
    if (current.length > 0 && bytes + n > max) {
      chunks.push(current);
      current = [];
      bytes = 0;
    }
    current.push(item);
    bytes += n;
  }
  if (current.length) chunks.push(current);
  return chunks;
}
