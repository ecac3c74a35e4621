/**
 * One developer's intercept from the laptop's side: opens the tunnel, registers the
 * intercept, keeps its lease renewed, re-asserts it after a reconnect, and leaves cleanly.
 * Emits a general event stream (requests, tunnel state, end) that views subscribe to.
 */
import { EventEmitter } from 'node:events';
import pRetry from 'p-retry';
import { ExitCode, hasErrorCode, KelsingraError } from '../../shared/errors.js';
import type { InterceptView, LeaseLapse } from '../../shared/protocol.js';
import { ApiClient } from '../api/api-client.js';
import type { ClientSettings } from '../api/settings.js';
import type { KafkaBridge } from '../kafka/kafka-bridge.js';
import type { KafkaOptions } from '../kafka/kafka-options.js';
import { LocalForwarder } from '../tunnel/local-forwarder.js';
import { TunnelClient } from '../tunnel/tunnel-client.js';
import { claimClientId, releaseClientId } from './client-identity.js';
import { describeEnd, type EndReason } from './end-reason.js';
import type { SessionEvent } from './events.js';

/**
 * On leaving, requests already on their way through the tunnel get this long to be answered
 * (new ones go elsewhere at once). Short: a developer pressing Ctrl-C is waiting for it.
 */
const LEAVE_GRACE_MS = 5_000;

export type { SessionEvent } from './events.js';

export interface InterceptRequest {
  service: string;
  tenant: string;
  port: number;
  /** Whether request events carry headers (default true); plain line output does not need them. */
  withHeaders?: boolean;
  /** Take the tenant's Kafka messages too (--kafka-local …). */
  kafka?: KafkaOptions;
}

export class InterceptSession extends EventEmitter<{ event: [SessionEvent] }> {
  intercept!: InterceptView;
  private readonly api: ApiClient;
  private readonly tunnel: TunnelClient;
  /** Stable across reconnects and restarts, so the server knows a returning tunnel is the same holder. */
  readonly clientId: string;
  private forwarder?: LocalForwarder;
  private kafka?: KafkaBridge;
  private renewTimer?: NodeJS.Timeout;
  private endedReason?: EndReason;
  private leaving = false;
  private registering = false;
  /** Until when the server has confirmed the lease, by this machine's clock. */
  private leaseUntil = 0;
  readonly ended: Promise<EndReason>;
  private resolveEnded!: (reason: EndReason) => void;

  private readonly settings: ClientSettings;

  private constructor(
    settings: ClientSettings,
    private readonly want: InterceptRequest,
  ) {
    super();
    this.settings = settings;
    this.clientId = claimClientId(settings.configDir, settings.server, want.service, want.tenant);
    this.api = new ApiClient(settings.server, settings.token, settings.holder);
    this.ended = new Promise((resolve) => {
      this.resolveEnded = resolve;
    });
    this.tunnel = new TunnelClient({
      server: settings.server,
      token: settings.token,
      clientId: this.clientId,
      holder: settings.holder,
      onStream: (stream, head) => {
        if (head.kind === 'kafka' && this.kafka && head.intercept === this.intercept?.id) {
          this.kafka.deliver(stream, head);
        } else if (head.kind === 'http' && this.forwarder && head.intercept === this.intercept?.id) {
          this.forwarder.serve(stream, head);
        } else {
          // Only this session's intercept is served; anything else is a stale route.
          stream.respond({ status: 421, headers: ['content-type', 'text/plain'], body: true });
          stream.write(Buffer.from('Kelsingra: this client does not hold that intercept any more\n'));
          stream.end();
        }
      },
    });
    this.tunnel.on('state', (state, extra) => {
      this.emit('event', { kind: 'tunnel', state, ...extra, at: Date.now() });
      // Reconnecting stopped for good (the token was revoked): nothing holds the intercept any more.
      if (state === 'closed' && extra.error) this.end({ kind: 'tunnel-closed', detail: extra.error });
    });
    this.tunnel.on('control', (message) => {
      if (message.type === 'intercept-ended' && message.id === this.intercept?.id && !this.leaving) {
        // A lapse this client lived through (it was stopped, or its renewals did not get
        // through): it takes the intercept back if nobody else has, as after a reconnect.
        if (message.reason === 'expired') this.reassert('lease expired');
        else
          this.end(
            message.reason === 'left'
              ? { kind: 'left-elsewhere' }
              : message.reason === 'token-revoked'
                ? { kind: 'token-revoked' }
                : { kind: 'ended-by-server', detail: message.reason },
          );
      } else if (message.type === 'renewed' && this.intercept) {
        if (message.missing.includes(this.intercept.id)) {
          this.reassert('lease lost: the server no longer has this intercept');
        } else if (message.ids.includes(this.intercept.id)) {
          const now = Date.now();
          this.leaseUntil = now + this.tunnel.leaseTtlMs;
          this.emit('event', {
            kind: 'lease',
            interceptId: this.intercept.id,
            expiresAt: now + this.tunnel.leaseTtlMs,
            at: now,
          });
        }
      }
    });
    this.tunnel.on('reconnected', () => {
      this.register(true).catch((err: Error) => this.end({ kind: 'reassert-failed', detail: err.message }));
    });
  }

  /** The server no longer holds the lease: asks for it again (a conflict, a refusal or an error ends the session). */
  private reassert(why: string): void {
    if (this.registering || this.endedReason !== undefined) return;
    this.register(true).catch((err: Error) =>
      this.end({ kind: 'lease-lost', detail: `${why}; could not take it back: ${err.message}` }),
    );
  }

  static async start(settings: ClientSettings, want: InterceptRequest): Promise<InterceptSession> {
    const session = new InterceptSession(settings, want);
    try {
      if (want.kafka) {
        // Loaded only here, so an HTTP-only intercept does not load kafkajs (about 2 MiB of RSS measured).
        const { KafkaBridge } = await import('../kafka/kafka-bridge.js');
        session.kafka = new KafkaBridge(
          want.kafka,
          `kelsingra-forward-${want.service}-${want.tenant}`,
          (event) => session.emit('event', event),
        );
        await session.kafka.start().catch((err: Error) => {
          throw new KelsingraError(
            `cannot use the local Kafka at ${want.kafka?.local}: ${err.message}`,
            ExitCode.unreachable,
            'is your broker running there? --kafka-local names it (host:port)',
          );
        });
      }
      await session.tunnel.start();
      await session.register();
      // Renewing starts as soon as the lease exists: nothing after this point may hold it up.
      session.startRenewing();
      await session.kafka?.startForwarding(session.api, () => session.intercept.id);
    } catch (err) {
      clearInterval(session.renewTimer);
      session.tunnel.close();
      await session.kafka?.close().catch(() => {
        // Failing to start is what the caller hears about; a failed disconnect adds nothing.
      });
      throw err;
    }
    session.forwarder = new LocalForwarder(
      {
        service: want.service,
        tenant: want.tenant,
        port: want.port,
        withHeaders: want.withHeaders ?? true,
      },
      (event) => session.emit('event', event),
    );
    return session;
  }

  private startRenewing(): void {
    const renewEvery = Math.max(250, Math.floor(this.tunnel.leaseTtlMs / 3));
    this.renewTimer = setInterval(() => {
      // While a reconnect re-registers, the old id may be unknown to the server: renewing it
      // then would read as a lost lease.
      if (!this.registering) this.tunnel.send({ type: 'renew', ids: [this.intercept.id] });
    }, renewEvery);
  }

  /** `reassert`: after a reconnect, when the lease is still ours and worth waiting for. */
  private async register(reassert = false): Promise<void> {
    this.registering = true;
    const previous = reassert ? this.intercept : undefined;
    try {
      const body = {
        service: this.want.service,
        tenant: this.want.tenant,
        clientId: this.clientId,
        // Should the lease have lapsed meanwhile, the server brings it back under this id if it is free.
        previousId: previous?.id,
        localPort: this.want.port,
        kafka: this.want.kafka
          ? {
              topics: Object.keys(this.want.kafka.topics).length
                ? Object.keys(this.want.kafka.topics)
                : undefined,
            }
          : undefined,
      };
      // While the server's database is away (or catching up) it cannot decide; the lease holds
      // meanwhile, so re-asserting is worth retrying for about that long.
      const created = await pRetry(() => this.api.create(body), {
        retries: reassert ? 20 : 0,
        minTimeout: 500,
        maxTimeout: 3_000,
        maxRetryTime: this.tunnel.leaseTtlMs,
        shouldRetry: ({ error }) => hasErrorCode(error, 'store-unavailable'),
      });
      const { lapse, ...intercept } = created;
      this.intercept = intercept;
      const now = Date.now();
      if (previous) this.reportLapse(previous.id, lapse, now);
      this.leaseUntil = now + this.tunnel.leaseTtlMs;
    } finally {
      this.registering = false;
    }
  }

  /**
   * After a re-assert: says so if the lease had lapsed meanwhile, from the server's account
   * when it gives one, else from when this client last heard its lease confirmed.
   */
  private reportLapse(previousId: string, lapse: LeaseLapse | undefined, now: number): void {
    const idChanged = this.intercept.id !== previousId;
    if (!lapse && !idChanged && now < this.leaseUntil) return;
    const lapsedAt = lapse?.lapsedAt ?? this.leaseUntil;
    this.emit('event', {
      kind: 'lease-lapsed',
      interceptId: this.intercept.id,
      ...(idChanged ? { previousId } : {}),
      lapsedAt,
      fallback: lapse?.fallback,
      fallbackMs: lapse?.fallbackMs ?? Math.max(0, now - lapsedAt),
      at: now,
    });
  }

  /** Removes the intercept on the server (traffic falls back at once) and closes the tunnel. */
  async leave(reason: EndReason = { kind: 'left' }): Promise<void> {
    if (this.endedReason === undefined) {
      // The server will echo our own removal back as 'intercept-ended'; the reason is ours to give.
      this.leaving = true;
      try {
        await this.api.remove(this.intercept.id);
      } catch (err) {
        // Already gone is fine: leaving is idempotent. Anything else, the lease will end it.
        if (!(err instanceof KelsingraError && err.exitCode === ExitCode.notFound)) {
          this.end({ kind: 'leave-failed', left: reason, detail: (err as Error).message });
          await this.shutdown();
          throw err;
        }
      }
      releaseClientId(this.settings.configDir, this.settings.server, this.want.service, this.want.tenant);
      this.end(reason);
    }
    await this.shutdown();
  }

  private end(reason: EndReason): void {
    if (this.endedReason !== undefined) return;
    this.endedReason = reason;
    clearInterval(this.renewTimer);
    this.emit('event', { kind: 'ended', reason: describeEnd(reason), end: reason, at: Date.now() });
    this.resolveEnded(reason);
  }

  private async shutdown(): Promise<void> {
    clearInterval(this.renewTimer);
    // WebSockets still open are closed cleanly (1001) once the plain requests are answered.
    await this.tunnel.closeWhenIdle(
      LEAVE_GRACE_MS,
      () => this.forwarder?.closeUpgrades() ?? Promise.resolve(),
    );
    await this.forwarder?.close();
    await this.kafka?.close();
  }
}
