/**
 * Keeps the dashboard's model fed from the server's event stream: the first connection must
 * go live (a server that refuses or never goes live is the user's error to see at once), and a
 * stream that breaks after that is reconnected with p-retry's backoff while the model says
 * `reconnecting`. A refused token is never retried: it will not get better on its own.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import pRetry, { AbortError } from 'p-retry';
import { ExitCode, KelsingraError } from '../../shared/errors.js';
import type { StreamEvent } from '../../shared/protocol.js';
import type { DashboardModel } from './dashboard-model.js';

/** The wait after a live stream breaks; failed reconnects then wait twice as long each, up to the maximum. */
export const RETRY_MS = 500;
export const RETRY_MAX_MS = 10_000;

export interface DashboardFeed {
  /** Resolves once the first stream is live. */
  live: Promise<void>;
  /** Resolves when the signal aborts; rejects if the first connection fails or the token is refused. */
  done: Promise<void>;
}

export interface FeedOptions {
  /** Opens one event stream (in the product, `followEvents` on the control port). */
  open: (signal: AbortSignal) => AsyncIterable<StreamEvent>;
  /** Named in the error when the first stream closes before it is live. */
  server: string;
  signal: AbortSignal;
  retryMs?: number;
  retryMaxMs?: number;
}

export function followDashboard(model: DashboardModel, opts: FeedOptions): DashboardFeed {
  const { signal } = opts;
  const retryMs = opts.retryMs ?? RETRY_MS;
  let markLive = () => {};
  const live = new Promise<void>((resolve) => {
    markLive = resolve;
  });
  let connected = false;

  /** One stream. Returns why it ended once it had been live; throws if it broke before that. */
  const stream = async (): Promise<string> => {
    let wentLive = false;
    try {
      for await (const event of opts.open(signal)) {
        model.apply(event);
        if (event.type === 'live') {
          connected = wentLive = true;
          markLive();
        }
      }
    } catch (err) {
      if (signal.aborted) return 'stopped';
      const refused = err instanceof KelsingraError && err.exitCode === ExitCode.auth;
      if (!connected || refused) throw new AbortError(err as Error);
      if (wentLive) return (err as Error).message;
      throw err;
    }
    if (signal.aborted) return 'stopped';
    // Closed before it ever went live: not a server worth retrying silently.
    if (!connected)
      throw new AbortError(
        new KelsingraError(
          `${opts.server} closed the event stream before it was live`,
          ExitCode.unreachable,
          'is KELSINGRA_SERVER the Kelsingra control port? kelsingra status checks it',
        ),
      );
    if (wentLive) return 'the server closed the event stream';
    throw new Error('the server closed the event stream before it was live again');
  };

  const done = (async () => {
    while (!signal.aborted) {
      const reason = await pRetry(stream, {
        retries: Number.POSITIVE_INFINITY,
        // The first reconnect waits retryMs below; each failed one after it waits twice as long.
        minTimeout: retryMs * 2,
        maxTimeout: opts.retryMaxMs ?? RETRY_MAX_MS,
        factor: 2,
        randomize: false,
        signal,
        onFailedAttempt: ({ error }) => model.setConnection('reconnecting', error.message),
      }).catch((err: unknown) => {
        if (signal.aborted) return 'stopped';
        throw err;
      });
      if (signal.aborted) return;
      model.setConnection('reconnecting', reason);
      await sleep(retryMs, undefined, { signal }).catch(() => undefined);
    }
  })();
  return { live, done };
}
