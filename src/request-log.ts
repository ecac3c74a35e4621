/**
 * One line per finished request for the plain (non-TTY) view, e.g.
 * `14:03:07.218  GET  /invoices/42  200  12.4 ms  1.2 kB`.
 */
import chalk from 'chalk';
import type { KafkaEvent, LeaseLapsedEvent, OutboundEvent } from './events.js';

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GB`;
}

export function formatDuration(ms: number): string {
  return ms < 1000 ? `${ms.toFixed(1)} ms` : `${(ms / 1000).toFixed(2)} s`;
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
    e.path,
    chalk[statusColour(e.status, e.error)](String(e.status)),
    formatDuration(e.durationMs),
    formatBytes(e.bytesOut),
  ];
  if (e.error) parts.push(chalk.red(`(${e.error})`));
  return parts.join('  ');
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
