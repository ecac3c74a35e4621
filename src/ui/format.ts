/**
 * Small formatting helpers shared by the terminal views (live request log, dashboard).
 * Colours are Ink colour names; Ink renders them through chalk, which honours NO_COLOR and
 * FORCE_COLOR.
 */
export { formatBytes, formatDuration } from '../request-log.js';

export type StatusColour = 'green' | 'cyan' | 'yellow' | 'red';

/** 2xx green, 3xx cyan, 4xx yellow, 5xx (and failures reported as 0/5xx) red. */
export function statusColour(status: number): StatusColour {
  if (status >= 500 || status < 100) return 'red';
  if (status >= 400) return 'yellow';
  if (status >= 300) return 'cyan';
  return 'green';
}

/** `14:03:07.218`, local time. */
export function clockTime(at: number): string {
  const d = new Date(at);
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** `0`, `0.4`, `12`, `2.1k` requests per second. */
export function formatRate(perSecond: number): string {
  if (perSecond === 0) return '0';
  if (perSecond < 10) return perSecond.toFixed(1);
  if (perSecond < 10_000) return String(Math.round(perSecond));
  return `${(perSecond / 1000).toFixed(1)}k`;
}

/** Counts with thousands separators, locale-independent: `12,345`. */
export function formatCount(n: number): string {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}
