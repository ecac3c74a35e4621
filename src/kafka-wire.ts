/**
 * Kafka records as they cross the tunnel and the REST API: keys, values and header values
 * are bytes, so they travel base64-encoded in JSON. Shared by both agents.
 */
import type { IHeaders, Message } from 'kafkajs';

/** Tunnel path on which the server delivers one Kafka message to the client agent. */
export const KAFKA_DELIVER_PATH = '/.kelsingra/kafka';
/** Describes the delivered message (topic, key, headers); the stream body is its value. */
export const KAFKA_META_HEADER = 'x-kelsingra-kafka';
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
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(m.headers ?? {})) {
    // kafkajs gives repeated headers as an array; the last one wins, as for most consumers.
    const one = Array.isArray(v) ? v[v.length - 1] : v;
    if (one !== undefined) headers[k] = b64(one) ?? '';
  }
  return { key: b64(m.key), value: b64(m.value), headers, timestamp: m.timestamp };
}

export function fromWire(w: WireMessage): Message {
  const headers: IHeaders = {};
  for (const [k, v] of Object.entries(w.headers ?? {})) headers[k] = Buffer.from(v, 'base64');
  return {
    key: w.key === null ? null : Buffer.from(w.key, 'base64'),
    value: w.value === null ? null : Buffer.from(w.value, 'base64'),
    headers,
  };
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
