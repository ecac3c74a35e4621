/**
 * One line per finished request for the plain (non-TTY) view, e.g.
 * `14:03:07.218  GET  /invoices/42  200  12.4 ms  1.2 KiB` (the path padded to a column), and one per WebSocket once it
 * closed: `14:03:07.218  WS  /chat  101  12.3 s  ↑1.2 KiB ↓3.4 KiB  closed by caller 1000`.
 */
import chalk from 'chalk';
import type { RequestRecord } from '../../shared/protocol.js';
import type { KafkaEvent, LeaseLapsedEvent, OutboundEvent } from './events.js';

/** Binary units, named as such (KiB, not kB: these are powers of 1024). */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

/** Paths are padded so statuses and durations line up in a column; a longer one just pushes on. */
export const PATH_WIDTH = 20;

export function padPath(path: string): string {
  return path.padEnd(PATH_WIDTH);
}

export function formatDuration(ms: number): string {
  return ms < 1000 ? `${ms.toFixed(1)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

/**
 * How long a connection lasted or has been open: `850.0 ms`, `12.3 s`, `4m 05s`, `2h 03m`.
 * WebSockets live for minutes or hours, where `3725.00 s` would not read.
 */
export function formatLifetime(ms: number): string {
  if (ms < 1000) return formatDuration(ms);
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${(ms / 1000).toFixed(1)} s`;
  const pad = (n: number) => String(n).padStart(2, '0');
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${pad(Math.floor(s / 60) % 60)}m`;
}

/** `0`, `0.4`, `12`, `2.1k` requests per second. */
export function formatRate(perSecond: number): string {
  if (perSecond === 0) return '0';
  if (perSecond < 10) return perSecond.toFixed(1);
  if (perSecond < 10_000) return String(Math.round(perSecond));
  return `${(perSecond / 1000).toFixed(1)}k`;
}

/** `14:03:07.218`, local time. */
export function clockTime(at: number): string {
  const d = new Date(at);
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/**
 * A request that failed: a 5xx, or any transport error (the caller went away, a reset).
 * Error counts, error rates and red lines in every view use this one rule.
 */
export function isFailure(r: { status: number; error?: string }): boolean {
  return r.status >= 500 || Boolean(r.error);
}

export type StatusColour = 'green' | 'cyan' | 'yellow' | 'red';

/** 2xx green, 3xx cyan, 4xx yellow, failures red. Names work for chalk and for Ink. */
export function statusColour(status: number, error?: string): StatusColour {
  if (isFailure({ status, error }) || status < 100) return 'red';
  if (status >= 400) return 'yellow';
  if (status >= 300) return 'cyan';
  return 'green';
}

/** What a request line shows; both the client's own events and the server's records have it. */
export interface RequestLine {
  startedAt: number;
  method: string;
  path: string;
  status: number;
  durationMs: number;
  bytesOut: number;
  error?: string;
}

export function formatRequestLine(e: RequestLine): string {
  const parts = [
    chalk.dim(clockTime(e.startedAt)),
    e.method.padEnd(6),
    padPath(e.path),
    chalk[statusColour(e.status, e.error)](String(e.status)),
    formatDuration(e.durationMs),
    formatBytes(e.bytesOut),
  ];
  if (e.error) parts.push(chalk.red(`(${e.error})`));
  return parts.join('  ');
}

/**
 * One upgraded connection (a WebSocket) as a whole: a client `WebSocketEvent` is one as it
 * is; a server record gives one through `recordUpgradeLine`.
 */
export interface UpgradeLine {
  startedAt: number;
  path: string;
  /** The Upgrade token: `websocket`; client events say `upgrade` for any other. */
  protocol: string;
  /** 101 upgraded; another: the local service refused; 0: nobody answered. */
  status: number;
  durationMs: number;
  /** From the caller, and from the local service. */
  bytesIn: number;
  bytesOut: number;
  messagesIn?: number;
  messagesOut?: number;
  /** Whose end of the connection went first (caller, local, leave, tunnel, timeout). */
  closedBy?: string;
  /** Which side sent the first close frame, with its code and reason. */
  closeFrom?: 'caller' | 'local';
  code?: number;
  reason?: string;
  error?: string;
}

export function isWebSocket(protocol: string | undefined): boolean {
  return protocol?.toLowerCase() === 'websocket';
}

/** The method column of an upgraded connection: `WS`, or `UPGRADE` for another protocol. */
export function upgradeLabel(protocol: string | undefined): string {
  return isWebSocket(protocol) ? 'WS' : 'UPGRADE';
}

/** The server's record of an upgraded connection; undefined for a plain request. */
export function recordUpgradeLine(r: RequestRecord): UpgradeLine | undefined {
  const u = r.upgrade;
  if (!u) return undefined;
  return {
    startedAt: r.at,
    path: r.path,
    protocol: u.protocol,
    status: r.status,
    durationMs: r.durationMs,
    bytesIn: u.bytesIn,
    bytesOut: r.bytesOut,
    messagesIn: u.messagesIn,
    messagesOut: u.messagesOut,
    closedBy: u.closedBy,
    closeFrom: u.closeFrom,
    code: u.code,
    reason: u.reason,
    error: r.error,
  };
}

/** `↑1.2 KiB ↓3.4 KiB`: from the caller, from the local service. */
export function formatBytesEachWay(u: Pick<UpgradeLine, 'bytesIn' | 'bytesOut'>): string {
  return `↑${formatBytes(u.bytesIn)} ↓${formatBytes(u.bytesOut)}`;
}

/**
 * How it ended, in a few words: `closed by caller 1000`, `closed by local 1011 "boom"` (the
 * local service),
 * `closed on leave 1001`, `dropped by caller (no close frame)`, `refused`. The close frame
 * names who meant to close (the other end then drops the connection); without one, whose
 * end went first.
 */
export function describeClose(u: UpgradeLine): string {
  if (u.status !== 101) return u.status === 0 ? 'not answered' : 'refused by local';
  const frame = u.code === undefined ? '' : ` ${u.code}${u.reason ? ` "${u.reason}"` : ''}`;
  // Kelsingra's own doing first: those are what a user would not expect.
  if (u.closedBy === 'leave') return `closed on leave${frame}`;
  if (u.closedBy === 'timeout') return `timed out${frame}`;
  if (u.closedBy === 'tunnel' && u.closeFrom === undefined) return 'cut by the tunnel';
  if (u.closeFrom) return `closed by ${u.closeFrom}${frame}`;
  const by = u.closedBy;
  if (!isWebSocket(u.protocol)) return by ? `closed by ${by}` : 'closed';
  return by ? `dropped by ${by} (no close frame)` : 'dropped (no close frame)';
}

/** A close that is not a clean goodbye (1000 normal, 1001 going away): shown in yellow. */
export function isAbnormalClose(u: UpgradeLine): boolean {
  if (u.status !== 101 || !isWebSocket(u.protocol)) return false;
  if (u.closedBy === 'timeout' || (u.closedBy === 'tunnel' && u.closeFrom === undefined)) return true;
  return u.code === undefined || (u.code !== 1000 && u.code !== 1001);
}

/** The words of an upgrade's line, in order, for the plain line and the Ink view alike. */
export function upgradeLineParts(u: UpgradeLine): {
  label: string;
  status: string;
  lifetime: string;
  bytes: string;
  close: string;
} {
  return {
    label: upgradeLabel(u.protocol).padEnd(6),
    status: String(u.status),
    lifetime: formatLifetime(u.durationMs),
    bytes: formatBytesEachWay(u),
    close: describeClose(u),
  };
}

export function formatUpgradeLine(u: UpgradeLine): string {
  const p = upgradeLineParts(u);
  const parts = [
    chalk.dim(clockTime(u.startedAt)),
    p.label,
    padPath(u.path),
    chalk[statusColour(u.status, u.error)](p.status),
    p.lifetime,
    p.bytes,
    isAbnormalClose(u) ? chalk.yellow(p.close) : p.close,
  ];
  if (u.error) parts.push(chalk.red(`(${u.error})`));
  return parts.join('  ');
}

/** A server record as `logs` and the dashboard print it: a request, or a WebSocket as a whole. */
export function formatRecordLine(r: RequestRecord): string {
  const upgrade = recordUpgradeLine(r);
  return upgrade ? formatUpgradeLine(upgrade) : formatRequestLine({ ...r, startedAt: r.at });
}

/** One Kafka message, as plain lines and the live view print it. */
export function formatKafkaLine(e: KafkaEvent): string {
  const arrow = e.direction === 'in' ? `${e.from} → local ${e.to}` : `local ${e.from} → ${e.to}`;
  const parts = [chalk.dim(clockTime(e.at)), 'KAFKA ', e.error ? '' : arrow];
  if (e.key !== undefined) parts.push(`key ${e.key}`);
  if (!e.error) parts.push(formatBytes(e.bytes));
  else parts.push(chalk.red(`(${e.error})`));
  return parts.filter(Boolean).join('  ');
}

/** A call through the outbound gateway: `14:03:07.218  → out  GET  inventory /items  200  12.0 ms  20 B`. */
export function formatOutboundLine(e: OutboundEvent): string {
  const parts = [
    chalk.dim(clockTime(e.startedAt)),
    chalk.magenta('→ out'),
    e.method.padEnd(6),
    `${e.target}${e.path ? ` ${e.path}` : ''}`,
    chalk[statusColour(e.status, e.error)](String(e.status)),
    formatDuration(e.durationMs),
    formatBytes(e.bytesOut),
  ];
  if (e.error) parts.push(chalk.red(`(${e.error})`));
  return parts.join('  ');
}

/**
 * A lease that lapsed and came back, for every view (plain lines, the live view, `logs`):
 * when, where the tenant's traffic went meanwhile and for how long, and under which id.
 */
export function formatLapseLine(
  lapse: Pick<LeaseLapsedEvent, 'interceptId' | 'previousId' | 'lapsedAt' | 'fallback' | 'fallbackMs'>,
): string {
  const where =
    lapse.fallback === 'route'
      ? 'its tenant route'
      : lapse.fallback === 'base'
        ? 'the base service'
        : 'the base service (or its tenant route)';
  const back =
    lapse.previousId && lapse.previousId !== lapse.interceptId
      ? `the intercept is back under a new id, ${lapse.interceptId} (it was ${lapse.previousId})`
      : `the intercept is back as ${lapse.interceptId} (same id)`;
  return `lease lapsed at ${clockTime(lapse.lapsedAt)}: the tenant's traffic went to ${where} for ${formatDuration(lapse.fallbackMs)}; ${back}`;
}
