/**
 * Small formatting helpers shared by the terminal views (live request log, dashboard).
 * Colours are Ink colour names; Ink renders them through chalk, which honours NO_COLOR and
 * FORCE_COLOR.
 */
export {
  clockTime,
  formatBytes,
  formatDuration,
  isFailure,
  type StatusColour,
  statusColour,
} from '../request-log.js';

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
