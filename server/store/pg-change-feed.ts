/**
 * The PostgreSQL store's change feed: one connection that LISTENs for the notices the
 * tables' triggers send, reconnected every second after it is lost, and the shape of those
 * notices, checked before the store acts on one.
 */
import pg from 'pg';
import type { Logger } from 'pino';
import { z } from 'zod';
import { rowSchema } from './pg-rows.js';

const CHANNEL = 'kelsingra';

// Keys a newer version adds are dropped, not refused: replicas of two versions share one database during an upgrade.
const notificationSchema = z.discriminatedUnion('op', [
  z.object({ op: z.literal('upsert'), row: rowSchema }),
  z.object({ op: z.literal('delete'), reason: z.enum(['left', 'expired']), row: rowSchema }),
  z.object({ op: z.literal('route'), id: z.string(), change: z.number(), deleted: z.boolean() }),
  z.object({ op: z.literal('tokens') }),
]);

export type Notification = z.infer<typeof notificationSchema>;

/** The notice a payload carries; undefined, logged, for one that is not JSON or not of a known shape. */
export function parseNotification(payload: string, log: Logger): Notification | undefined {
  let json: unknown;
  try {
    json = JSON.parse(payload);
  } catch {
    log.warn({ payload: payload.slice(0, 200) }, 'unreadable notification ignored');
    return undefined;
  }
  const parsed = notificationSchema.safeParse(json);
  if (parsed.success) return parsed.data;
  log.warn(
    { payload: payload.slice(0, 200), issues: parsed.error.issues.slice(0, 3) },
    'notification of an unknown shape ignored',
  );
  return undefined;
}

export interface ChangeFeedHooks {
  databaseUrl: string;
  log: Logger;
  notified(message: Notification): void;
  /** The connection is gone: notices may be missed from now until the next catch-up. */
  lost(): void;
  closed(): boolean;
  degrade(err: unknown): void;
  /** Run once listening again; the feed retries (reconnecting if need be) until it succeeds. */
  catchUp(): Promise<void>;
}

export class PgChangeFeed {
  private listener?: pg.Client;
  private up = false;

  constructor(private readonly hooks: ChangeFeedHooks) {}

  get listening(): boolean {
    return this.up;
  }

  /** The connection now, so a catch-up can tell whether it was lost again meanwhile. */
  get connection(): pg.Client | undefined {
    return this.listener;
  }

  async connect(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.hooks.databaseUrl,
      connectionTimeoutMillis: 2_000,
      keepAlive: true,
    });
    client.on('notification', (msg) => {
      if (msg.channel !== CHANNEL || !msg.payload) return;
      const message = parseNotification(msg.payload, this.hooks.log);
      if (message) this.hooks.notified(message);
    });
    const lost = (err?: Error) => {
      if (this.listener !== client) return;
      this.listener = undefined;
      this.up = false;
      this.hooks.lost();
      if (this.hooks.closed()) return;
      this.hooks.degrade(err ?? new Error('the notification connection closed'));
      this.schedule();
    };
    client.on('error', lost);
    client.on('end', () => lost());
    this.listener = client;
    try {
      await client.connect();
      await client.query(`LISTEN ${CHANNEL}`);
    } catch (err) {
      this.listener = undefined;
      await client.end().catch(() => {
        // It never connected: nothing to end.
      });
      throw err;
    }
    this.up = true;
  }

  async close(): Promise<void> {
    await this.listener?.end().catch(() => {
      // Already broken: there is nothing left to close.
    });
  }

  /** Every second until both are done: listening again, then caught up. */
  private schedule(): void {
    const timer = setTimeout(async () => {
      if (this.hooks.closed()) return;
      try {
        if (!this.listener) await this.connect();
        await this.hooks.catchUp();
      } catch (err) {
        this.hooks.degrade(err);
        this.schedule();
      }
    }, 1_000);
    timer.unref();
  }
}
