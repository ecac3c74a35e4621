/**
 * Follows the server agent's event stream (`GET /v1/events`, server-sent events) for
 * `kelsingra logs` and `kelsingra dashboard`.
 */
import { createParser } from 'eventsource-parser';
import { request } from 'undici';
import { ExitCode, KelsingraError } from '../../shared/errors.js';
import { type StreamEvent, StreamEventSchema } from '../../shared/protocol.js';
import { unreachable } from './api-client.js';
import type { ClientSettings } from './settings.js';

export interface EventQuery {
  intercept?: string;
  holder?: string;
  history?: boolean;
}

/** Yields events until the server closes the stream or `signal` aborts. */
export async function* followEvents(
  settings: Pick<ClientSettings, 'server' | 'token'>,
  query: EventQuery,
  signal?: AbortSignal,
): AsyncGenerator<StreamEvent> {
  const params = new URLSearchParams();
  if (query.intercept) params.set('intercept', query.intercept);
  if (query.holder) params.set('holder', query.holder);
  if (query.history) params.set('history', '1');
  let res: Awaited<ReturnType<typeof request>>;
  try {
    res = await request(`${settings.server}/v1/events?${params}`, {
      headers: { authorization: `Bearer ${settings.token}`, accept: 'text/event-stream' },
      headersTimeout: 10_000,
      // The server sends a keep-alive comment every 15 s; silence beyond this means it is gone.
      bodyTimeout: 45_000,
      signal,
    });
  } catch (err) {
    if (signal?.aborted) return;
    throw unreachable(settings.server, err as Error);
  }
  if (res.statusCode === 401) {
    await res.body.dump();
    throw new KelsingraError(
      'the server rejected the token (401)',
      ExitCode.auth,
      'check KELSINGRA_TOKEN, or run kelsingra connect --token <secret>',
    );
  }
  if (res.statusCode !== 200) {
    const text = await res.body.text();
    throw new KelsingraError(
      `the server refused the event stream (HTTP ${res.statusCode}): ${text.slice(0, 200)}`,
      res.statusCode === 403 ? ExitCode.auth : res.statusCode === 404 ? ExitCode.notFound : ExitCode.failure,
      res.statusCode === 404
        ? 'the server agent may be older than this CLI: compare versions with kelsingra status'
        : "try again; if it persists, check the server agent's log",
    );
  }
  const queue: StreamEvent[] = [];
  const parser = createParser({
    onEvent: (message) => {
      queue.push(streamEventOf(message.data));
    },
  });
  try {
    for await (const chunk of res.body) {
      parser.feed((chunk as Buffer).toString('utf8'));
      while (queue.length) yield queue.shift() as StreamEvent;
    }
  } catch (err) {
    if (signal?.aborted) return;
    throw new KelsingraError(
      `the event stream from ${settings.server} broke: ${(err as Error).message}`,
      ExitCode.unreachable,
      'check that the server agent is still running (kelsingra status), then run the command again',
    );
  }
}

/** One `data:` line of the stream, checked: a server this CLI does not understand is said so, not half-shown. */
export function streamEventOf(data: string): StreamEvent {
  let value: unknown;
  try {
    value = JSON.parse(data);
  } catch {
    throw new KelsingraError(
      `the server sent an event that is not JSON: ${data.slice(0, 200)}`,
      ExitCode.failure,
      'compare the server agent and CLI versions with kelsingra status',
    );
  }
  const parsed = StreamEventSchema.safeParse(value);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  throw new KelsingraError(
    `the server sent an event this CLI does not understand (${issue?.path.join('.') || 'event'}: ${issue?.message}): ${data.slice(0, 200)}`,
    ExitCode.failure,
    'the server agent may be newer or older than this CLI: compare versions with kelsingra status',
  );
}
