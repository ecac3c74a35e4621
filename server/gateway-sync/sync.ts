/**
 * The reconcile loop: the writer replica keeps the gateway's set equal to the store's desired
 * set, incrementally as intercepts and routes change, whole when it starts or takes over (so
 * entries of intercepts that ended while no Kelsingra wrote are removed) and every `resync`.
 * Any replica can wait for the gateway to confirm one (service, key): the writer knows at
 * once, the others read what the writer recorded.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { InterceptStore } from '../store/intercept-store.js';
import type { Coordination } from './coordination.js';
import { type GatewayDriver, GatewayError } from './driver.js';
import { desiredEntries, diffEntries, type Entry, keyOf } from './entries.js';

export interface GatewaySyncOptions {
  store: InterceptStore;
  driver: GatewayDriver;
  coordination: Coordination;
  log: Logger;
  confirmTimeoutMs: number;
  resyncMs: number;
  /** How often a replica that is not the writer tries to become it. */
  leadEveryMs?: number;
}

export interface GatewayStatus {
  driver: string;
  /** This replica is the one writing to the gateway. */
  writer: boolean;
  /** Entries the gateway confirmed (on the writer). */
  entries: number;
  lastSyncAt?: string;
  lastError?: string;
}

/** After a failed write, the next try (whole, since the gateway may hold part of it). */
const RETRY_MS = 1_000;

export class GatewaySync {
  private applied = new Map<string, Entry>();
  private whole = true;
  private running = false;
  private again = false;
  private closed = false;
  private lastSyncAt?: number;
  private lastError?: string;
  private lastFullAt = 0;
  private readonly timers: NodeJS.Timeout[] = [];
  private retry?: NodeJS.Timeout;
  /** `synced` after every successful write. */
  private readonly events = new EventEmitter();
  private readonly changed = () => this.schedule();

  constructor(private readonly opts: GatewaySyncOptions) {
    this.events.setMaxListeners(0);
  }

  get driverName(): string {
    return this.opts.driver.name;
  }

  /** Takes the writer's role if it is free, writes the whole set, then follows the store. */
  async start(): Promise<void> {
    const { store } = this.opts;
    for (const event of ['created', 'ended', 'routeSet', 'routeRemoved'] as const)
      store.on(event, this.changed);
    await this.tryLead();
    const timer = setInterval(() => void this.tryLead(), this.opts.leadEveryMs ?? 1_000);
    timer.unref();
    this.timers.push(timer);
  }

  private async tryLead(): Promise<void> {
    if (this.closed) return;
    const was = this.opts.coordination.leading;
    let now: boolean;
    try {
      now = await this.opts.coordination.lead();
    } catch (err) {
      now = false;
      this.noteError(`cannot take or keep the gateway writer lock: ${(err as Error).message}`);
    }
    if (now && !was) {
      this.opts.log.info({ driver: this.driverName }, 'gateway sync: this replica writes to the gateway');
      this.whole = true;
    } else if (!now && was) {
      this.opts.log.warn(
        { driver: this.driverName },
        'gateway sync: this replica no longer writes to the gateway',
      );
    }
    if (now && Date.now() - this.lastFullAt > this.opts.resyncMs) this.whole = true;
    if (now) this.schedule();
  }

  /** Coalesces changes: one write at a time, and one more after it if anything changed meanwhile. */
  private schedule(): void {
    if (this.closed) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    queueMicrotask(() => void this.run());
  }

  private async run(): Promise<void> {
    try {
      do {
        this.again = false;
        if (!this.opts.coordination.leading || this.closed) break;
        await this.write();
      } while (this.again);
    } finally {
      this.running = false;
    }
  }

  private async write(): Promise<void> {
    const { driver, coordination, store, log } = this.opts;
    const desired = desiredEntries(store);
    const all = [...desired.values()];
    const startedAt = Date.now();
    try {
      if (this.whole) {
        await driver.replaceAll(all);
        await coordination.recordAll(all);
        this.whole = false;
        this.lastFullAt = Date.now();
        log.info(
          { driver: driver.name, entries: all.length, ms: Date.now() - startedAt },
          'gateway sync: whole set written',
        );
      } else {
        const diff = diffEntries(this.applied, desired);
        if (diff.set.length === 0 && diff.removed.length === 0) return;
        await driver.apply(diff, all);
        await coordination.record(diff);
        log.debug(
          {
            driver: driver.name,
            set: diff.set.length,
            removed: diff.removed.length,
            ms: Date.now() - startedAt,
          },
          'gateway sync: change written',
        );
      }
      this.applied = desired;
      this.lastSyncAt = Date.now();
      this.lastError = undefined;
      this.events.emit('synced');
    } catch (err) {
      this.whole = true;
      this.noteError((err as Error).message);
      clearTimeout(this.retry);
      this.retry = setTimeout(() => this.schedule(), RETRY_MS);
      this.retry.unref();
    }
  }

  private noteError(message: string): void {
    if (message !== this.lastError)
      this.opts.log.error({ driver: this.driverName, err: message }, 'gateway sync failed');
    this.lastError = message;
  }

  /**
   * Resolves once the gateway sends (service, tenant) to Kelsingra; rejects after the confirm
   * timeout with what went wrong.
   */
  async confirmed(service: string, tenant: string): Promise<void> {
    const key = keyOf(service, tenant);
    const deadline = Date.now() + this.opts.confirmTimeoutMs;
    for (;;) {
      if (this.opts.coordination.leading) {
        if (this.applied.get(key)?.target.kind === 'kelsingra') return;
      } else if (
        (await this.opts.coordination.confirmedTarget(service, tenant).catch(() => undefined)) === 'kelsingra'
      ) {
        return;
      }
      const left = deadline - Date.now();
      if (left <= 0)
        throw new GatewayError(
          `the ${this.driverName} gateway did not confirm ${service} for tenant ${tenant} within ${this.opts.confirmTimeoutMs / 1000} s${this.lastError ? `: ${this.lastError}` : this.opts.coordination.leading ? '' : ' (no replica writes to the gateway right now, or it is behind)'}`,
        );
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.events.off('synced', done);
          resolve();
        };
        const timer = setTimeout(done, Math.min(left, 50));
        this.events.once('synced', done);
      });
    }
  }

  /** The set as the store has it now (for the Traefik endpoint, served by every replica). */
  desired(): Entry[] {
    return [...desiredEntries(this.opts.store).values()];
  }

  status(): GatewayStatus {
    return {
      driver: this.driverName,
      writer: this.opts.coordination.leading,
      entries: this.applied.size,
      ...(this.lastSyncAt ? { lastSyncAt: new Date(this.lastSyncAt).toISOString() } : {}),
      ...(this.lastError ? { lastError: this.lastError } : {}),
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers) clearInterval(t);
    clearTimeout(this.retry);
    const { store } = this.opts;
    for (const event of ['created', 'ended', 'routeSet', 'routeRemoved'] as const)
      store.off(event, this.changed);
    await this.opts.driver.close();
    await this.opts.coordination.close();
  }
}
