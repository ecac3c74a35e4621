/**
 * The state behind the live request log, with no terminal in it: fed the session's event
 * stream (and the local command's output), it answers what the view shows — lines to print
 * once, requests in flight, rate, errors, tunnel and lease state, pause, selection.
 *
 * The view pulls from it at its own pace (`takePrintable`, `snapshot`), so any number of
 * events between two frames cost one render. `nextChangeAt` says when the picture changes
 * by time alone (a countdown, the rate window); when it returns undefined nothing needs a
 * timer, which is what keeps an idle CLI at ≈ 0 % CPU.
 *
 * Over 400 lines on purpose: printable lines, in-flight requests, rate, pause and selection are
 * one state fed by one event stream; the formatting of lines already lives in src/ui/format.
 */
import type {
  HttpStartEvent,
  OutboundEvent,
  RequestEvent,
  SessionEvent,
  TunnelState,
  WebSocketEvent,
} from '../client/intercept/events.js';
import {
  formatKafkaLine,
  formatLapseLine,
  formatLifetime,
  isFailure,
  upgradeLabel,
} from '../client/intercept/request-log.js';

export interface LiveLogInfo {
  service: string;
  tenant: string;
  localPort: number;
  server: string;
  interceptId: string;
  /** Lease length, for noticing a renewal that did not come. */
  leaseTtlMs?: number;
  /** URL of the outbound gateway, when one runs. */
  gateway?: string;
  /** Where the intercepted key can be opened in a browser, when the server has preview URLs. */
  previewUrl?: string;
}

/** A finished entry of the log: a request, or a WebSocket (an upgraded connection) as a whole. */
export type LogEntry = RequestEvent | WebSocketEvent;

export type Printable =
  | { kind: 'banner'; seq: number; info: LiveLogInfo }
  | { kind: 'request'; seq: number; request: LogEntry }
  | { kind: 'outbound'; seq: number; call: OutboundEvent }
  | { kind: 'notice'; seq: number; tone: 'info' | 'warn' | 'error'; text: string; at: number }
  | { kind: 'output'; seq: number; stream: 'stdout' | 'stderr'; text: string };

export type TunnelStatus =
  | { state: 'connecting' }
  | { state: 'connected' }
  | { state: 'reconnecting'; inSeconds?: number; error?: string }
  | { state: 'closed'; error?: string };

export type Panel = 'none' | 'select' | 'details' | 'help';

export interface LiveLogSnapshot {
  info: LiveLogInfo;
  tunnel: TunnelStatus;
  /** Set once a renewal is overdue: seconds until the lease lapses (0 = lapsed). */
  leaseExpiresInSeconds?: number;
  ended?: string;
  ratePerSecond: number;
  total: number;
  errors: number;
  /** Oldest first; open WebSockets among them. */
  inFlight: HttpStartEvent[];
  /** How many of `inFlight` are open WebSockets (or other upgraded connections). */
  openUpgrades: number;
  paused: boolean;
  /** Lines held back while paused (printed on resume). */
  buffered: number;
  /** Lines dropped because the pause buffer was full. */
  dropped: number;
  panel: Panel;
  /** While selecting: a window of recent requests (oldest first) and which one is selected. */
  recent: LogEntry[];
  selectedIndex: number;
  /** The request whose details are open. */
  details?: LogEntry;
}

export interface LiveLogOptions {
  now?: () => number;
  /** Completed requests kept for ↑/↓ and details. */
  historySize?: number;
  rateWindowMs?: number;
  /** Lines kept while paused; older ones are dropped (and counted). */
  maxBuffered?: number;
  /** Requests shown around the selection. */
  selectWindow?: number;
}

const RATE_BUCKETS = 20;

export class LiveLogModel {
  readonly now: () => number;
  private readonly historySize: number;
  private readonly maxBuffered: number;
  private readonly selectWindow: number;
  private readonly bucketMs: number;
  private readonly bucketCounts = new Array<number>(RATE_BUCKETS).fill(0);
  private readonly bucketIds = new Array<number>(RATE_BUCKETS).fill(-1);

  private seq = 0;
  private queue: Printable[] = [];
  private dropped = 0;
  private history: LogEntry[] = [];
  private readonly inFlight = new Map<string, HttpStartEvent>();
  private total = 0;
  private errors = 0;
  private tunnelState: TunnelState = 'connected';
  private retryAt?: number;
  private tunnelError?: string;
  private leaseTtlMs?: number;
  private leaseRenewedAt: number;
  private leaseExpiresAt?: number;
  private ended?: string;
  private paused = false;
  private panel: Panel = 'none';
  private selected?: LogEntry;
  private readonly partial = { stdout: '', stderr: '' };
  private readonly listeners = new Set<() => void>();

  constructor(
    /** Changes only when the intercept comes back under another id after its lease lapsed. */
    public info: LiveLogInfo,
    opts: LiveLogOptions = {},
  ) {
    this.now = opts.now ?? Date.now;
    this.historySize = opts.historySize ?? 1000;
    this.maxBuffered = opts.maxBuffered ?? 10_000;
    this.selectWindow = opts.selectWindow ?? 10;
    this.bucketMs = (opts.rateWindowMs ?? 5000) / RATE_BUCKETS;
    this.leaseRenewedAt = this.now();
    if (info.leaseTtlMs) {
      this.leaseTtlMs = info.leaseTtlMs;
      this.leaseExpiresAt = this.leaseRenewedAt + info.leaseTtlMs;
    }
    this.push({ kind: 'banner', seq: 0, info });
  }

  /** Called after every change; the view batches these into frames. */
  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private changed(): void {
    for (const listener of this.listeners) listener();
  }

  private push(p: Printable): void {
    p.seq = ++this.seq;
    this.queue.push(p);
    if (this.queue.length > this.maxBuffered) {
      const excess = this.queue.length - this.maxBuffered;
      this.queue.splice(0, excess);
      this.dropped += excess;
    }
  }

  private notice(tone: 'info' | 'warn' | 'error', text: string): void {
    this.push({ kind: 'notice', seq: 0, tone, text, at: this.now() });
  }

  apply(event: SessionEvent): void {
    const now = this.now();
    switch (event.kind) {
      case 'http-start':
        this.inFlight.set(event.requestId, event);
        break;
      case 'http':
      case 'websocket': {
        // A WebSocket is one entry, printed when it closes: its request was in flight until then.
        this.inFlight.delete(event.requestId);
        this.total++;
        if (isFailure(event)) this.errors++;
        this.count(now);
        this.history.push(event);
        // Trim in chunks: one splice per 10 % of the history rather than a shift per request.
        if (this.history.length > this.historySize * 1.1)
          this.history.splice(0, this.history.length - this.historySize);
        this.push({ kind: 'request', seq: 0, request: event });
        break;
      }
      case 'tunnel': {
        const was = this.tunnelState;
        this.tunnelState = event.state;
        this.tunnelError = event.error;
        this.retryAt = event.retryInMs !== undefined ? event.at + event.retryInMs : undefined;
        if (event.state === 'reconnecting' && was !== 'reconnecting') {
          this.notice('warn', `tunnel lost${event.error ? ` (${event.error})` : ''}; reconnecting`);
        } else if (event.state === 'connected' && was !== 'connected') {
          this.notice('info', 'tunnel connected');
        } else if (event.state === 'closed' && event.error) {
          // A close without an error is our own leave; the "ended" line says it.
          this.notice('error', `tunnel closed: ${event.error}`);
        }
        break;
      }
      case 'lease':
        this.leaseRenewedAt = now;
        this.leaseTtlMs = Math.max(0, event.expiresAt - event.at);
        this.leaseExpiresAt = now + this.leaseTtlMs;
        break;
      case 'lease-lapsed':
        // Back under another id: the banner and what `leave`/`logs` take must follow it.
        this.info = { ...this.info, interceptId: event.interceptId };
        // Created afresh: a whole lease from now.
        this.leaseRenewedAt = now;
        if (this.leaseTtlMs !== undefined) this.leaseExpiresAt = now + this.leaseTtlMs;
        this.notice('warn', formatLapseLine(event));
        break;
      case 'outbound':
        // Calls the local service made into dev: printed among the requests, not counted with them.
        this.push({ kind: 'outbound', seq: 0, call: event });
        break;
      case 'kafka':
        // Messages are few next to requests; they print as lines of their own among them.
        this.notice(event.error ? 'error' : 'info', formatKafkaLine(event));
        break;
      case 'ended':
        this.ended = event.reason;
        this.inFlight.clear();
        this.notice('info', `intercept ended: ${event.reason}`);
        break;
    }
    this.changed();
  }

  /** Output of the local command (`-- cmd`), printed line by line among the requests. */
  output(stream: 'stdout' | 'stderr', chunk: string): void {
    const text = this.partial[stream] + chunk;
    const cut = text.lastIndexOf('\n');
    if (cut === -1) {
      this.partial[stream] = text;
      return;
    }
    this.partial[stream] = text.slice(cut + 1);
    this.push({ kind: 'output', seq: 0, stream, text: text.slice(0, cut) });
    this.changed();
  }

  /** Prints what the local command wrote without a final newline. */
  flushOutput(): void {
    for (const stream of ['stdout', 'stderr'] as const) {
      if (this.partial[stream] === '') continue;
      this.push({ kind: 'output', seq: 0, stream, text: this.partial[stream] });
      this.partial[stream] = '';
      this.changed();
    }
  }

  private count(now: number): void {
    const id = Math.floor(now / this.bucketMs);
    const i = id % RATE_BUCKETS;
    if (this.bucketIds[i] !== id) {
      this.bucketIds[i] = id;
      this.bucketCounts[i] = 0;
    }
    this.bucketCounts[i] = (this.bucketCounts[i] as number) + 1;
  }

  /** Completed requests per second over the sliding window. */
  rate(now = this.now()): number {
    const current = Math.floor(now / this.bucketMs);
    let sum = 0;
    for (let i = 0; i < RATE_BUCKETS; i++) {
      const id = this.bucketIds[i] as number;
      if (id > current - RATE_BUCKETS && id <= current) sum += this.bucketCounts[i] as number;
    }
    return sum / ((this.bucketMs * RATE_BUCKETS) / 1000);
  }

  /**
   * Whether a request started within `withinMs` is still in flight. Spinners turn only for
   * those: a long-lived stream (server-sent events, a long poll) must not keep the view
   * redrawing ten times a second; its elapsed time still ticks once a second.
   */
  hasRecentInFlight(now: number, withinMs = 5_000): boolean {
    // An open WebSocket is long-lived by nature: it shows as open, without a spinner.
    for (const r of this.inFlight.values()) if (!r.upgrade && now - r.startedAt < withinMs) return true;
    return false;
  }

  private openUpgrades(): number {
    let n = 0;
    for (const r of this.inFlight.values()) if (r.upgrade) n++;
    return n;
  }

  get inFlightCount(): number {
    return this.inFlight.size;
  }

  /** Lines to print since the last call; nothing while paused (they wait). */
  takePrintable(): Printable[] {
    if (this.paused || this.queue.length === 0) return [];
    const out = this.queue;
    this.queue = [];
    return out;
  }

  // --- view actions -------------------------------------------------------------------

  togglePause(): void {
    this.paused = !this.paused;
    if (!this.paused && this.dropped > 0) {
      // Say what went missing, in its place: the dropped lines came before the buffered ones.
      const dropped = this.dropped;
      this.dropped = 0;
      this.queue.unshift({
        kind: 'notice',
        seq: 0,
        tone: 'warn',
        text: `${dropped} lines not shown (pause buffer full)`,
        at: this.now(),
      });
    }
    this.changed();
  }

  toggleHelp(): void {
    this.panel = this.panel === 'help' ? 'none' : 'help';
    this.changed();
  }

  /** ↑: the newest request first, then older ones. */
  selectPrevious(): void {
    if (this.history.length === 0) return;
    const at = this.selected ? this.history.lastIndexOf(this.selected) : -1;
    if (at === -1) this.selected = this.history[this.history.length - 1];
    else if (at > 0) this.selected = this.history[at - 1];
    // Open details follow the selection; otherwise the list opens.
    if (this.panel !== 'details') this.panel = 'select';
    this.changed();
  }

  /** ↓: newer; past the newest the selection closes. */
  selectNext(): void {
    if (!this.selected) return;
    const at = this.history.lastIndexOf(this.selected);
    if (at === -1 || at === this.history.length - 1) {
      this.selected = undefined;
      this.panel = 'none';
    } else {
      this.selected = this.history[at + 1];
      if (this.panel !== 'details') this.panel = 'select';
    }
    this.changed();
  }

  openDetails(): void {
    if (!this.selected) return;
    this.panel = 'details';
    this.changed();
  }

  /** esc: details back to the list, the list or help closed. */
  close(): void {
    if (this.panel === 'details') this.panel = 'select';
    else {
      this.panel = 'none';
      this.selected = undefined;
    }
    this.changed();
  }

  // --- what the view shows ----------------------------------------------------------

  private tunnelStatus(now: number): TunnelStatus {
    switch (this.tunnelState) {
      case 'reconnecting':
        return {
          state: 'reconnecting',
          inSeconds:
            this.retryAt === undefined ? undefined : Math.max(0, Math.ceil((this.retryAt - now) / 1000)),
          error: this.tunnelError,
        };
      case 'closed':
        return { state: 'closed', error: this.tunnelError };
      case 'connecting':
        return { state: 'connecting' };
      default:
        return { state: 'connected' };
    }
  }

  /** Renewals come every ttl/3; one overdue by half an interval means the lease is at risk. */
  private leaseWarnAt(): number | undefined {
    if (this.leaseTtlMs === undefined || this.ended !== undefined) return undefined;
    return this.leaseRenewedAt + this.leaseTtlMs / 2;
  }

  snapshot(now = this.now()): LiveLogSnapshot {
    const warnAt = this.leaseWarnAt();
    let recent: LogEntry[] = [];
    let selectedIndex = -1;
    if (this.selected && this.panel !== 'none') {
      const at = this.history.lastIndexOf(this.selected);
      if (at !== -1) {
        const start = Math.max(
          0,
          Math.min(at - this.selectWindow + 2, this.history.length - this.selectWindow),
        );
        recent = this.history.slice(start, start + this.selectWindow);
        selectedIndex = at - start;
      } else {
        // Fell out of the history: still shown alone, so open details stay readable.
        recent = [this.selected];
        selectedIndex = 0;
      }
    }
    return {
      info: this.info,
      tunnel: this.tunnelStatus(now),
      leaseExpiresInSeconds:
        warnAt !== undefined && now >= warnAt && this.leaseExpiresAt !== undefined
          ? Math.max(0, Math.ceil((this.leaseExpiresAt - now) / 1000))
          : undefined,
      ended: this.ended,
      ratePerSecond: this.rate(now),
      total: this.total,
      errors: this.errors,
      inFlight: [...this.inFlight.values()],
      openUpgrades: this.openUpgrades(),
      paused: this.paused,
      buffered: this.paused ? this.queue.length : 0,
      dropped: this.dropped,
      panel: this.panel,
      recent,
      selectedIndex,
      details: this.panel === 'details' ? this.selected : undefined,
    };
  }

  /**
   * When the snapshot next changes with no event arriving (a countdown second, the rate
   * window sliding, an in-flight request's elapsed time), or undefined: nothing will.
   */
  nextChangeAt(now = this.now()): number | undefined {
    let next = Number.POSITIVE_INFINITY;
    const secondLater = now + 1000;
    if (this.inFlight.size > 0) next = Math.min(next, secondLater);
    if (this.rate(now) > 0) {
      // The window slides bucket by bucket; a second's resolution is plenty for the eye.
      next = Math.min(next, secondLater);
    }
    if (this.tunnelState === 'reconnecting' && this.retryAt !== undefined && this.retryAt > now) {
      next = Math.min(next, now + ((this.retryAt - now) % 1000 || 1000));
    }
    const warnAt = this.leaseWarnAt();
    if (warnAt !== undefined && this.leaseExpiresAt !== undefined) {
      if (now < warnAt) next = Math.min(next, warnAt);
      else if (now < this.leaseExpiresAt)
        next = Math.min(next, now + ((this.leaseExpiresAt - now) % 1000 || 1000));
    }
    return Number.isFinite(next) ? next : undefined;
  }
}

/**
 * A line of the in-flight part: `GET     /slow  3 s`, or for an open WebSocket
 * `WS      /chat  open 12 s` (its time ticks once a second, as a pending request's does).
 */
export function pendingParts(
  r: HttpStartEvent,
  now: number,
): { label: string; path: string; elapsed: string } {
  const ms = Math.max(0, now - r.startedAt);
  if (!r.upgrade) return { label: r.method.padEnd(6), path: r.path, elapsed: `${(ms / 1000).toFixed(0)} s` };
  return {
    label: upgradeLabel(r.upgrade).padEnd(6),
    path: r.path,
    elapsed: `open ${ms < 60_000 ? `${Math.floor(ms / 1000)} s` : formatLifetime(ms)}`,
  };
}
