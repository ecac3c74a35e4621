/**
 * Small formatting helpers shared by the terminal views (live request log, dashboard).
 * Colours are Ink colour names; Ink renders them through chalk, which honours NO_COLOR and
 * FORCE_COLOR.
 */
export {
  clockTime,
  formatBytes,
  formatDuration,
  formatRate,
  isFailure,
  type StatusColour,
  statusColour,
} from '../request-log.js';

/** Counts with thousands separators, locale-independent: `12,345`. */
export function formatCount(n: number): string {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}
