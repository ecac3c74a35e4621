/**
 * State behind `kelsingra dashboard`, fed by the server agent's event stream
 * (`GET /v1/events`): the intercepts in view with their live request rate, error rate,
 * p50/p99 latency and last request, and the server's upstream health. No terminal here:
 * the Ink view, the NDJSON output and the plain table all read `snapshot()`.
 *
 * Rates, error rates and percentiles cover a sliding window (10 s by default); totals
 * count the server's recent records (replayed before `live`) and everything since. Time is injected (`now`)
 * so tests can drive the window.
 *
 * Over 400 lines on purpose: the window, the totals and the snapshot all read one per-intercept
 * state, and split apart each part would reach into the others'.
 */
import { EventEmitter } from 'node:events';
import type { InterceptView, RequestRecord, StreamEvent, UpstreamHealth } from '../../shared/protocol.js';
import {
  describeClose,
  formatRate,
  isFailure,
  recordUpgradeLine,
  upgradeLabel,
} from '../intercept/request-log.js';

export const DEFAULT_WINDOW_MS = 10_000;
/** Request lines kept per intercept for the live log view. */
export const DEFAULT_LOG_LIMIT = 500;
/** Ended intercepts remembered (so an open log view can say it ended). */
const ENDED_KEPT = 20;
const ENDED_IDS_KEPT = 10_000;

export type ConnectionState = 'connecting' | 'live' | 'reconnecting';

export interface LastRequest {
  at: number;
  method: string;
  path: string;
  status: number;
  durationMs: number;
  error?: string;
  /** An upgraded connection (its Upgrade token, `websocket`), and how it closed in words. */
  upgrade?: string;
  close?: string;
}

export interface InterceptStats {
  id: string;
  service: string;
  tenant: string;
  holder: string;
  localPort?: number;
  createdAt?: string;
  /** Requests and errors (status ≥ 500 or a transport error) in the server's recent records (its last 200) and since the dashboard started watching. */
  requests: number;
  errors: number;
  /** Requests in the sliding window. */
  windowRequests: number;
  /** Requests per second over the window. */
  rate: number;
  /** Share (0…1) of the window's requests that failed; null without requests in the window. */
  errorRate: number | null;
  /**
   * Latency percentiles over the window's requests (not WebSockets: their duration is how
   * long they stayed open); null without such requests in the window.
   */
  p50Ms: number | null;
  p99Ms: number | null;
  lastRequest: LastRequest | null;
  /** Set once the intercept has ended (only seen through `intercept()`, never in `snapshot()`). */
  ended?: { at: number; reason?: string };
}

export type UpstreamState = NonNullable<UpstreamHealth['state']>;

/** One backend of a service's upstream (a service with a pool has one row per backend). */
export interface UpstreamStatus {
  service: string;
  url: string;
  /**
   * healthy: its health check passes; unhealthy: its checks fail; ejected: taken out of the
   * rotation after errors; unknown: not checked yet.
   */
  state: UpstreamState;
  lastOkAt?: string;
  lastError?: string;
  lastErrorAt?: string;
  lastCheckAt?: string;
}

export interface DashboardSnapshot {
  at: number;
  connection: ConnectionState;
  windowSeconds: number;
  intercepts: InterceptStats[];
  upstreams: UpstreamStatus[];
}

export interface DashboardModelOptions {
  now?: () => number;
  windowMs?: number;
  logLimit?: number;
}

interface Sample {
  at: number;
  /** Undefined for an upgraded connection: its lifetime is no latency. */
  durationMs?: number;
  failed: boolean;
}

interface Entry {
  info: Omit<
    InterceptStats,
    'requests' | 'errors' | 'windowRequests' | 'rate' | 'errorRate' | 'p50Ms' | 'p99Ms' | 'lastRequest'
  >;
  requests: number;
  errors: number;
  /** Window samples, oldest first. */
  samples: Sample[];
  /** Index of the first sample still in the window (pruned lazily, compacted in bulk). */
  head: number;
  log: RequestRecord[];
  seen: Set<string>;
  lastRequest: LastRequest | null;
}

/** Nearest-rank percentile of ascending `sorted`. */
export function percentile(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1] ?? null;
}

/** The server's word; a server from before upstream pools only says how the last request went. */
export function upstreamState(u: UpstreamHealth): UpstreamState {
  if (u.state) return u.state;
  const ok = u.lastOkAt ? Date.parse(u.lastOkAt) : 0;
  const err = u.lastErrorAt ? Date.parse(u.lastErrorAt) : u.lastError ? 1 : 0;
  if (err > ok) return 'unhealthy';
  if (ok > 0) return 'healthy';
  return 'unknown';
}

function upgradeOf(r: RequestRecord): Pick<LastRequest, 'upgrade' | 'close'> {
  const line = recordUpgradeLine(r);
  return line ? { upgrade: line.protocol, close: describeClose(line) } : {};
}

function recordKey(r: RequestRecord): string {
  return `${r.at}|${r.method}|${r.path}|${r.status}|${r.durationMs}|${r.bytesOut}`;
}

export class DashboardModel extends EventEmitter<{ change: [] }> {
  readonly windowMs: number;
  private readonly now: () => number;
  private readonly logLimit: number;
  private readonly startedAt: number;
  private readonly entries = new Map<string, Entry>();
  private readonly ended = new Map<string, Entry>();
  /**
   * Ids of every intercept seen ending (bounded), beyond the few whose stats are kept: a
   * request record arriving late for one must not bring it back as a live row.
   */
  private readonly endedIds = new Set<string>();
  private upstreamList: UpstreamStatus[] = [];
  private upstreamJson = '[]';
  private connectionState: ConnectionState = 'connecting';
  private connectionError: string | undefined;
  private replaying = false;
  /** Bumped on every change; views re-render only when it moved. */
  version = 0;

  constructor(options: DashboardModelOptions = {}) {
    super();
    this.now = options.now ?? Date.now;
    this.windowMs = options.windowMs ?? DEFAULT_WINDOW_MS;
    this.logLimit = options.logLimit ?? DEFAULT_LOG_LIMIT;
    this.startedAt = this.now();
  }

  get connection(): ConnectionState {
    return this.connectionState;
  }

  /** Why the stream is reconnecting, if it is. */
  get lastConnectionError(): string | undefined {
    return this.connectionError;
  }

  setConnection(state: ConnectionState, error?: string): void {
    if (state === this.connectionState && error === this.connectionError) return;
    this.connectionState = state;
    this.connectionError = error;
    this.changed();
  }

  /** Applies one event from the stream; returns whether anything visible changed. */
  apply(event: StreamEvent): boolean {
    switch (event.type) {
      case 'snapshot': {
        const ids = new Set(event.intercepts.map((i) => i.id));
        for (const id of this.entries.keys()) {
          // Gone while the stream was down: ended without an event.
          if (!ids.has(id)) this.end(id, event.at, undefined);
        }
        for (const view of event.intercepts) this.upsert(view);
        // What comes before `live` is the server's recent history (`?history=1`), not new traffic.
        this.replaying = true;
        this.setUpstreams(event.upstreams);
        this.changed();
        return true;
      }
      case 'live':
        this.replaying = false;
        if (this.connectionState === 'live' && !this.connectionError) return false;
        this.connectionState = 'live';
        this.connectionError = undefined;
        this.changed();
        return true;
      case 'intercept':
        // A lapsed lease reported on resuming: the intercept is live again.
        if (event.action === 'created' || event.action === 'lapsed') this.upsert(event.intercept);
        else if (!this.end(event.intercept.id, event.at, event.reason)) return false;
        this.changed();
        return true;
      case 'upstreams':
        if (!this.setUpstreams(event.upstreams)) return false;
        this.changed();
        return true;
      case 'request':
        this.record(event);
        this.changed();
        return true;
      default:
        return false;
    }
  }

  /** Merges replayed history (`?history=1`) into an intercept's log; duplicates are dropped. */
  backfill(interceptId: string, records: readonly RequestRecord[]): void {
    const entry = this.entries.get(interceptId) ?? this.ended.get(interceptId);
    if (!entry) return;
    let added = false;
    for (const r of records) {
      const key = recordKey(r);
      if (entry.seen.has(key)) continue;
      entry.seen.add(key);
      entry.log.push(r);
      added = true;
    }
    if (!added) return;
    entry.log.sort((a, b) => a.at - b.at);
    this.trimLog(entry);
    this.changed();
  }

  /** Request lines of one intercept, oldest first. */
  log(interceptId: string): readonly RequestRecord[] {
    return (this.entries.get(interceptId) ?? this.ended.get(interceptId))?.log ?? [];
  }

  /** One intercept's stats, including one that ended while the dashboard watched. */
  intercept(interceptId: string, now = this.now()): InterceptStats | undefined {
    const live = this.entries.get(interceptId);
    if (live) return this.stats(live, now);
    const ended = this.ended.get(interceptId);
    return ended ? this.stats(ended, now) : undefined;
  }

  snapshot(now = this.now()): DashboardSnapshot {
    const intercepts = [...this.entries.values()].map((e) => this.stats(e, now));
    intercepts.sort(
      (a, b) =>
        a.service.localeCompare(b.service) ||
        a.tenant.localeCompare(b.tenant) ||
        a.holder.localeCompare(b.holder) ||
        a.id.localeCompare(b.id),
    );
    return {
      at: now,
      connection: this.connectionState,
      windowSeconds: this.windowMs / 1000,
      intercepts,
      upstreams: this.upstreamList.map((u) => ({ ...u })),
    };
  }

  /**
   * True while some intercept has requests in the window: its stats change as time
   * passes, so a view should keep refreshing. False when idle, so an idle view sleeps.
   */
  hasRecentTraffic(now = this.now()): boolean {
    const since = now - this.windowMs;
    for (const entry of this.entries.values()) {
      const newest = entry.samples[entry.samples.length - 1];
      if (newest && newest.at > since) return true;
    }
    return false;
  }

  private changed(): void {
    this.version++;
    this.emit('change');
  }

  private newEntry(info: Entry['info']): Entry {
    return {
      info,
      requests: 0,
      errors: 0,
      samples: [],
      head: 0,
      log: [],
      seen: new Set(),
      lastRequest: null,
    };
  }

  private upsert(view: InterceptView): void {
    const info = {
      id: view.id,
      service: view.service,
      tenant: view.tenant,
      holder: view.holder,
      localPort: view.localPort,
      createdAt: view.createdAt,
    };
    const existing = this.entries.get(view.id);
    if (existing) existing.info = info;
    else this.entries.set(view.id, this.newEntry(info));
    this.ended.delete(view.id);
    this.endedIds.delete(view.id);
  }

  private end(id: string, at: number, reason: string | undefined): boolean {
    const entry = this.entries.get(id);
    if (!entry) return false;
    this.entries.delete(id);
    entry.info = { ...entry.info, ended: { at, reason } };
    this.ended.set(id, entry);
    this.endedIds.add(id);
    if (this.endedIds.size > ENDED_IDS_KEPT)
      this.endedIds.delete(this.endedIds.values().next().value as string);
    while (this.ended.size > ENDED_KEPT) {
      const oldest = this.ended.keys().next().value;
      if (oldest === undefined) break;
      this.ended.delete(oldest);
    }
    return true;
  }

  private record(r: RequestRecord): void {
    let entry = this.entries.get(r.interceptId);
    const late = this.ended.get(r.interceptId);
    if (!entry && late) {
      // Finished just before the intercept ended: belongs in its log, but it stays ended.
      this.appendLog(late, r);
      return;
    }
    if (!entry && this.endedIds.has(r.interceptId)) return;
    if (!entry) {
      // A request can arrive before (or without) the intercept's own event: show it anyway.
      entry = this.newEntry({ id: r.interceptId, service: r.service, tenant: r.tenant, holder: r.holder });
      this.entries.set(r.interceptId, entry);
    }
    // History is replayed again on every reconnect: a record already counted is not counted twice.
    if (this.replaying && entry.seen.has(recordKey(r))) return;
    const failed = isFailure(r);
    entry.requests++;
    if (failed) entry.errors++;
    // The window runs on this machine's clock (when the record arrived), so a server whose
    // clock is off does not skew the rate. History is older than the window: counts and the
    // last request only.
    if (!this.replaying) {
      const now = this.now();
      entry.samples.push({ at: now, durationMs: r.upgrade ? undefined : r.durationMs, failed });
      this.prune(entry, now);
    }
    const last = entry.lastRequest;
    if (!last || r.at >= last.at) {
      entry.lastRequest = {
        at: r.at,
        method: r.method,
        path: r.path,
        status: r.status,
        durationMs: r.durationMs,
        ...(r.error ? { error: r.error } : {}),
        ...upgradeOf(r),
      };
    }
    this.appendLog(entry, r);
  }

  private appendLog(entry: Entry, r: RequestRecord): void {
    const key = recordKey(r);
    if (entry.seen.has(key)) return;
    entry.seen.add(key);
    entry.log.push(r);
    this.trimLog(entry);
  }

  private trimLog(entry: Entry): void {
    if (entry.log.length <= this.logLimit) return;
    for (const dropped of entry.log.splice(0, entry.log.length - this.logLimit))
      entry.seen.delete(recordKey(dropped));
  }

  private prune(entry: Entry, now: number): void {
    const since = now - this.windowMs;
    const samples = entry.samples;
    while (entry.head < samples.length && (samples[entry.head] as Sample).at <= since) entry.head++;
    // Compact in bulk so pruning stays O(1) amortised at thousands of requests per second.
    if (entry.head > 1024 && entry.head * 2 > samples.length) {
      samples.splice(0, entry.head);
      entry.head = 0;
    }
  }

  private stats(entry: Entry, now: number): InterceptStats {
    this.prune(entry, now);
    const since = now - this.windowMs;
    const durations: number[] = [];
    let failures = 0;
    let n = 0;
    for (let i = entry.head; i < entry.samples.length; i++) {
      const s = entry.samples[i] as Sample;
      if (s.at <= since || s.at > now) continue;
      n++;
      if (s.durationMs !== undefined) durations.push(s.durationMs);
      if (s.failed) failures++;
    }
    durations.sort((a, b) => a - b);
    // Until a whole window has passed, the rate is over the time actually watched (≥ 1 s).
    const spanMs = Math.max(1000, Math.min(this.windowMs, now - this.startedAt));
    return {
      ...entry.info,
      requests: entry.requests,
      errors: entry.errors,
      windowRequests: n,
      rate: n / (spanMs / 1000),
      errorRate: n ? failures / n : null,
      p50Ms: percentile(durations, 50),
      p99Ms: percentile(durations, 99),
      lastRequest: entry.lastRequest ? { ...entry.lastRequest } : null,
    };
  }

  private setUpstreams(list: readonly UpstreamHealth[]): boolean {
    const next = list
      .map((u) => ({ ...u, state: upstreamState(u) }))
      .sort((a, b) => a.service.localeCompare(b.service));
    const json = JSON.stringify(next);
    if (json === this.upstreamJson) return false;
    this.upstreamJson = json;
    this.upstreamList = next;
    return true;
  }
}

// ---------------------------------------------------------------------------------------
// Text shared by the Ink view and the plain (non-TTY) table.

const DASH = '–';

/** The window's request rate, or a dash when the window is empty. */
export function formatWindowRate(s: Pick<InterceptStats, 'windowRequests' | 'rate'>): string {
  return s.windowRequests === 0 ? DASH : formatRate(s.rate);
}

export function formatErrorRate(s: Pick<InterceptStats, 'errorRate'>): string {
  if (s.errorRate === null) return DASH;
  if (s.errorRate === 0) return '0%';
  const pct = s.errorRate * 100;
  return pct < 10 ? `${pct.toFixed(1)}%` : `${pct.toFixed(0)}%`;
}

export function formatLatency(ms: number | null): string {
  if (ms === null) return DASH;
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${ms.toFixed(0)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

export function formatClock(at: number): string {
  const d = new Date(at);
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** `14:03:07 GET /invoices 200`; a WebSocket: `14:03:07 WS /chat 101 closed by caller 1000`. */
export function formatLastRequest(last: LastRequest | null): string {
  if (!last) return DASH;
  const method = last.upgrade ? upgradeLabel(last.upgrade) : last.method;
  const status = last.error ? `${last.status} (${last.error})` : String(last.status);
  return `${formatClock(last.at)} ${method} ${last.path} ${status}${last.close ? ` ${last.close}` : ''}`;
}

export function formatUpstream(u: UpstreamStatus): string {
  const at = (iso?: string) => (iso ? ` (${formatClock(Date.parse(iso))})` : '');
  if (u.state === 'healthy')
    return `healthy${u.lastOkAt ? ` (last ok ${formatClock(Date.parse(u.lastOkAt))})` : ''}`;
  if (u.state === 'unhealthy' || u.state === 'ejected') {
    return `${u.state}: ${u.lastError ?? 'no reason given'}${at(u.lastErrorAt)}`;
  }
  return u.lastError ? `not known yet, last error: ${u.lastError}${at(u.lastErrorAt)}` : 'not checked yet';
}

/** Colour of a backend's state in the Ink view. */
export function upstreamColour(state: UpstreamState): 'green' | 'red' | 'yellow' | 'gray' {
  return state === 'healthy'
    ? 'green'
    : state === 'unhealthy'
      ? 'red'
      : state === 'ejected'
        ? 'yellow'
        : 'gray';
}

export const TABLE_COLUMNS = [
  'SERVICE',
  'TENANT',
  'HOLDER',
  'REQ/S',
  'ERR%',
  'P50',
  'P99',
  'LAST REQUEST',
] as const;

export function interceptRow(s: InterceptStats): string[] {
  return [
    s.service,
    s.tenant,
    s.holder,
    formatWindowRate(s),
    formatErrorRate(s),
    formatLatency(s.p50Ms),
    formatLatency(s.p99Ms),
    formatLastRequest(s.lastRequest),
  ];
}

function alignRows(rows: string[][]): string[] {
  const widths: number[] = [];
  for (const row of rows) {
    row.forEach((cell, i) => {
      widths[i] = Math.max(widths[i] ?? 0, cell.length);
    });
  }
  return rows.map((row) =>
    row
      .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd(),
  );
}

/** The plain table printed without a TTY: no colours, no cursor movement. */
export function formatDashboardTable(snapshot: DashboardSnapshot, emptyHint = 'no intercepts'): string {
  const lines = [`${formatClock(snapshot.at)}  (rates over the last ${snapshot.windowSeconds} s)`];
  if (snapshot.intercepts.length === 0) lines.push(emptyHint);
  else lines.push(...alignRows([[...TABLE_COLUMNS], ...snapshot.intercepts.map(interceptRow)]));
  if (snapshot.upstreams.length > 0) {
    lines.push('', 'UPSTREAMS');
    lines.push(...alignRows(snapshot.upstreams.map((u) => [u.service, u.url, formatUpstream(u)])));
  }
  return `${lines.join('\n')}\n`;
}
