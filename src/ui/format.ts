/**
 * Small formatting helpers shared by the terminal views (live request log, dashboard).
 * Colours are Ink colour names; Ink renders them through chalk, which honours NO_COLOR and
 * FORCE_COLOR.
 */
import {
  clockTime,
  describeClose,
  formatBytes,
  formatLifetime,
  isAbnormalClose,
  isWebSocket,
  type UpgradeLine,
  upgradeLabel,
} from '../client/intercept/request-log.js';

export {
  clockTime,
  formatBytes,
  formatDuration,
  formatLifetime,
  formatRate,
  isAbnormalClose,
  isFailure,
  padPath,
  type StatusColour,
  statusColour,
  upgradeLineParts,
} from '../client/intercept/request-log.js';

/** Counts with thousands separators, locale-independent: `12,345`. */
export function formatCount(n: number): string {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

export type DetailTone = 'title' | 'section' | 'dim' | 'error';
export interface DetailLine {
  text: string;
  tone?: DetailTone;
}

function amount(bytes: number, messages: number | undefined): string {
  const text = formatBytes(bytes);
  return messages === undefined
    ? text
    : `${text} in ${formatCount(messages)} message${messages === 1 ? '' : 's'}`;
}

const SIDE: Record<string, string> = { caller: 'the caller', local: 'the local service' };

/** Every field of a closed WebSocket (or other upgraded connection), for the details pane. */
export function upgradeDetailLines(u: UpgradeLine): DetailLine[] {
  const lines: DetailLine[] = [
    { text: `${upgradeLabel(u.protocol)} ${u.path} → ${u.status}`, tone: 'title' },
    {
      text: `opened ${clockTime(u.startedAt)} · open for ${formatLifetime(u.durationMs)} · ${isWebSocket(u.protocol) ? 'WebSocket' : `upgrade (${u.protocol})`}`,
      tone: 'dim',
    },
    { text: `from the caller: ${amount(u.bytesIn, u.messagesIn)}` },
    { text: `from the local service: ${amount(u.bytesOut, u.messagesOut)}` },
    { text: describeClose(u), tone: isAbnormalClose(u) ? 'error' : undefined },
  ];
  // The close frame says who meant to close; whose end of the connection went first is a detail.
  if (u.closeFrom && u.closedBy && u.closedBy !== u.closeFrom && SIDE[u.closedBy])
    lines.push({ text: `connection ended first by ${SIDE[u.closedBy]}`, tone: 'dim' });
  if (u.error) lines.push({ text: `error: ${u.error}`, tone: 'error' });
  return lines;
}
