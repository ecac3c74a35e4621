/**
 * The live request log of a foreground `kelsingra intercept` (Ink).
 *
 * Completed requests (and notices, and the local command's output) are printed once, like
 * Ink's <Static> but as one pre-formatted write per frame (see live-log-lines.ts); below
 * them, redrawn in place: requests in flight, the open panel (selection,
 * details, keys) and the status bar. Frames are batched: the model may change thousands of
 * times a second, the view renders at most once per `batchMs`, and only while something
 * changed or a countdown runs — idle, there is no timer at all.
 */
import { Box, Text, useInput, useStdin, useStdout } from 'ink';
import { type ReactElement, useEffect, useState } from 'react';
import type { RequestEvent, WebSocketEvent } from '../client/intercept/events.js';
import { maskSecretHeaders } from '../shared/http/http-headers.js';
import {
  clockTime,
  type DetailLine,
  formatBytes,
  formatCount,
  formatDuration,
  formatRate,
  isAbnormalClose,
  padPath,
  statusColour,
  upgradeDetailLines,
  upgradeLineParts,
} from './format.js';
import { formatBatch } from './live-log-lines.js';
import { type LiveLogModel, type LiveLogSnapshot, type LogEntry, pendingParts } from './live-log-model.js';

export interface LiveLogProps {
  model: LiveLogModel;
  /** `q`: leave the intercept. */
  onQuit: () => void;
  /** Ctrl-C (the terminal is in raw mode, so it arrives as a key, not SIGINT). */
  onInterrupt: () => void;
  batchMs?: number;
  /** Filled in with a function that renders pending changes at once (before unmounting). */
  control?: { flush?: () => void };
}

const MAX_IN_FLIGHT_LINES = 5;

export function LiveLog({ model, onQuit, onInterrupt, batchMs = 100, control }: LiveLogProps) {
  const [snap, setSnap] = useState<LiveLogSnapshot>(() => model.snapshot());
  const { isRawModeSupported } = useStdin();
  const { stdout, write } = useStdout();
  const rows = stdout.rows || 24;
  const columns = stdout.columns || 80;

  useEffect(() => {
    let timer: NodeJS.Timeout | undefined;
    let timerAt = Number.POSITIVE_INFINITY;
    let lastFrameAt = 0;

    const wake = (at: number) => {
      if (timer && timerAt <= at) return;
      clearTimeout(timer);
      timerAt = at;
      timer = setTimeout(frame, Math.max(0, at - model.now()));
    };
    const frame = () => {
      clearTimeout(timer);
      timer = undefined;
      timerAt = Number.POSITIVE_INFINITY;
      lastFrameAt = model.now();
      // Printed once, above the live part, in one write per frame (Ink's write() clears the
      // live part, writes, and redraws it). Nothing printed is kept: memory stays flat.
      const text = formatBatch(model.takePrintable());
      if (text !== '') write(text);
      setSnap(model.snapshot(lastFrameAt));
      let next = model.nextChangeAt(lastFrameAt);
      // The spinner of requests in flight turns with the frames: one timer for the whole view
      // (not one per spinner), and only while a recent request is in flight.
      if (model.hasRecentInFlight(lastFrameAt))
        next = Math.min(next ?? Number.POSITIVE_INFINITY, lastFrameAt + batchMs);
      if (next !== undefined) wake(Math.max(next, lastFrameAt + batchMs));
    };
    const unsubscribe = model.subscribe(() => wake(Math.max(model.now(), lastFrameAt + batchMs)));
    if (control) control.flush = frame;
    frame();
    return () => {
      unsubscribe();
      clearTimeout(timer);
      if (control) control.flush = undefined;
    };
  }, [model, batchMs, control, write]);

  useInput(
    (input, key) => {
      if (key.ctrl && input === 'c') onInterrupt();
      else if (input === 'q') onQuit();
      else if (input === 'p') model.togglePause();
      else if (input === '?') model.toggleHelp();
      else if (key.upArrow) model.selectPrevious();
      else if (key.downArrow) model.selectNext();
      else if (key.return) model.openDetails();
      else if (key.escape) model.close();
    },
    { isActive: isRawModeSupported === true },
  );

  // The live part must stay shorter than the terminal: Ink redraws everything past that.
  const panelRows = Math.max(3, rows - 3 - Math.min(snap.inFlight.length, MAX_IN_FLIGHT_LINES + 1));

  return (
    <Box flexDirection="column" width={columns}>
      <InFlight
        snap={snap}
        now={model.now()}
        spinner={SPINNER[Math.floor(model.now() / batchMs) % SPINNER.length] as string}
      />
      {snap.panel === 'select' && <Selection snap={snap} maxRows={panelRows} />}
      {snap.panel === 'details' && snap.details && <Details request={snap.details} maxRows={panelRows} />}
      {snap.panel === 'help' && <Help />}
      <StatusBar snap={snap} />
    </Box>
  );
}

/** `marker`: in the selection list, a `›` before the selected line (visible without colours too). */
export function RequestLine({
  request: r,
  selected = false,
  marker,
}: {
  request: LogEntry;
  selected?: boolean;
  marker?: boolean;
}) {
  if (r.kind === 'websocket') return <WebSocketLine socket={r} selected={selected} marker={marker} />;
  return (
    <Text wrap="truncate-end" inverse={selected}>
      {marker === undefined ? null : marker ? '› ' : '  '}
      <Text dimColor={!selected}>{clockTime(r.startedAt)}</Text>
      {'  '}
      {r.method.padEnd(6)}
      {'  '}
      {padPath(r.path)}
      {'  '}
      <Text color={statusColour(r.status)}>{r.status}</Text>
      {'  '}
      {formatDuration(r.durationMs)}
      {'  '}
      {formatBytes(r.bytesOut)}
      {r.error ? <Text color="red"> ({r.error})</Text> : null}
    </Text>
  );
}

function WebSocketLine({
  socket: w,
  selected,
  marker,
}: {
  socket: WebSocketEvent;
  selected: boolean;
  marker?: boolean;
}) {
  const p = upgradeLineParts(w);
  return (
    <Text wrap="truncate-end" inverse={selected}>
      {marker === undefined ? null : marker ? '› ' : '  '}
      <Text dimColor={!selected}>{clockTime(w.startedAt)}</Text>
      {'  '}
      {p.label}
      {'  '}
      {padPath(w.path)}
      {'  '}
      <Text color={statusColour(w.status, w.error)}>{p.status}</Text>
      {'  '}
      {p.lifetime}
      {'  '}
      {p.bytes}
      {'  '}
      <Text color={isAbnormalClose(w) ? 'yellow' : undefined}>{p.close}</Text>
      {w.error ? <Text color="red"> ({w.error})</Text> : null}
    </Text>
  );
}

const SPINNER = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

function InFlight({ snap, now, spinner }: { snap: LiveLogSnapshot; now: number; spinner: string }) {
  if (snap.inFlight.length === 0) return null;
  const shown = snap.inFlight.slice(-MAX_IN_FLIGHT_LINES);
  const more = snap.inFlight.length - shown.length;
  return (
    <Box flexDirection="column">
      {shown.map((r) => {
        const p = pendingParts(r, now);
        return (
          <Text key={r.requestId} wrap="truncate-end">
            <Text color="cyan">{r.upgrade ? '⇅' : spinner}</Text>{' '}
            <Text dimColor>{clockTime(r.startedAt)}</Text>
            {'  '}
            {p.label}
            {'  '}
            {padPath(p.path)}
            {'  '}
            <Text dimColor>{p.elapsed}</Text>
          </Text>
        );
      })}
      {more > 0 && <Text dimColor> … {formatCount(more)} more in flight</Text>}
    </Box>
  );
}

function Selection({ snap, maxRows }: { snap: LiveLogSnapshot; maxRows: number }) {
  // Two rows of border, one for the hint; on a short terminal, the lines around the selection.
  const room = Math.max(1, maxRows - 3);
  const start = Math.max(0, Math.min(snap.selectedIndex - room + 1, snap.recent.length - room));
  const shown = snap.recent.slice(start, start + room);
  return (
    <Box flexDirection="column" borderStyle="single" borderColor="gray" paddingX={1}>
      <Text dimColor>recent requests · ↑/↓ select · enter details · esc close</Text>
      {shown.map((r, i) => (
        <RequestLine
          key={r.requestId}
          request={r}
          selected={start + i === snap.selectedIndex}
          marker={start + i === snap.selectedIndex}
        />
      ))}
    </Box>
  );
}

/**
 * Request and response headers, masked again here: the view never trusts its input to be.
 * A WebSocket shows its whole life instead: bytes and messages each way, how it closed.
 */
export function detailLines(r: LogEntry): DetailLine[] {
  return r.kind === 'websocket' ? upgradeDetailLines(r) : requestDetailLines(r);
}

function requestDetailLines(r: RequestEvent): DetailLine[] {
  const lines: DetailLine[] = [
    { text: `${r.method} ${r.path} → ${r.status}`, tone: 'title' },
    {
      text: `started ${clockTime(r.startedAt)} · headers ${r.headersMs === undefined ? '–' : formatDuration(r.headersMs)} · total ${formatDuration(r.durationMs)} · sent ${formatBytes(r.bytesIn)} · received ${formatBytes(r.bytesOut)}`,
      tone: 'dim',
    },
  ];
  if (r.error) lines.push({ text: `error: ${r.error}`, tone: 'error' });
  for (const [title, headers] of [
    ['Request headers', r.requestHeaders],
    ['Response headers', r.responseHeaders],
  ] as const) {
    lines.push({ text: title, tone: 'section' });
    const masked = maskSecretHeaders(headers ?? {});
    const names = Object.keys(masked);
    if (names.length === 0) lines.push({ text: '  (none)', tone: 'dim' });
    for (const name of names) lines.push({ text: `  ${name}: ${masked[name]}` });
  }
  return lines;
}

function Details({ request, maxRows }: { request: LogEntry; maxRows: number }) {
  const all = detailLines(request);
  // Two rows of border, one for the hint.
  const room = Math.max(1, maxRows - 3);
  const lines =
    all.length > room
      ? [...all.slice(0, room - 1), { text: `… ${all.length - room + 1} more lines`, tone: 'dim' as const }]
      : all;
  return (
    <Box flexDirection="column" borderStyle="single" borderColor="cyan" paddingX={1}>
      {lines.map((l, i) => (
        <Text
          // biome-ignore lint/suspicious/noArrayIndexKey: lines have no identity but their place
          key={i}
          wrap="truncate-end"
          bold={l.tone === 'title' || l.tone === 'section'}
          dimColor={l.tone === 'dim'}
          color={l.tone === 'error' ? 'red' : undefined}
        >
          {l.text}
        </Text>
      ))}
      <Text dimColor>esc back · ↑/↓ other requests</Text>
    </Box>
  );
}

function Help() {
  const keys: [string, string][] = [
    ['q', 'leave the intercept and exit 0'],
    ['ctrl-c', 'leave the intercept and exit 130 (as an interrupt)'],
    ['p', 'pause / resume the view (traffic keeps flowing; lines wait)'],
    ['↑ ↓', 'select a recent request'],
    ['enter', "open the selected request's details"],
    ['esc', 'close details / selection / this help'],
    ['?', 'show / hide these keys'],
  ];
  return (
    <Box flexDirection="column" borderStyle="single" borderColor="gray" paddingX={1}>
      {keys.map(([k, what]) => (
        <Text key={k}>
          <Text bold>{k.padEnd(6)}</Text> {what}
        </Text>
      ))}
    </Box>
  );
}

function TunnelState({ snap }: { snap: LiveLogSnapshot }) {
  if (snap.ended !== undefined) return <Text color="yellow">ended: {snap.ended}</Text>;
  const t = snap.tunnel;
  let tunnel: ReactElement;
  if (t.state === 'connected') tunnel = <Text color="green">● connected</Text>;
  else if (t.state === 'connecting') tunnel = <Text color="yellow">○ connecting</Text>;
  else if (t.state === 'reconnecting')
    tunnel = (
      <Text color="yellow">
        ○ reconnecting{t.inSeconds ? ` in ${t.inSeconds} s` : '…'}
        {t.error ? <Text dimColor> ({t.error})</Text> : null}
      </Text>
    );
  else tunnel = <Text color="red">✕ closed{t.error ? `: ${t.error}` : ''}</Text>;
  return (
    <Text>
      {tunnel}
      {snap.leaseExpiresInSeconds !== undefined && (
        <Text color="red">
          {' · '}
          {snap.leaseExpiresInSeconds > 0
            ? `lease expiring in ${snap.leaseExpiresInSeconds} s`
            : 'lease expired'}
        </Text>
      )}
    </Text>
  );
}

function plural(n: number, word: string): string {
  return `${formatCount(n)} ${word}${n === 1 ? '' : 's'}`;
}

/**
 * State first (paused, tunnel, in flight, open WebSockets), then who and how much: a narrow
 * terminal truncates the end, and what it cuts must be what matters least.
 */
function StatusBar({ snap }: { snap: LiveLogSnapshot }) {
  const i = snap.info;
  return (
    <Text wrap="truncate-end">
      {snap.paused ? (
        <Text color="yellow" bold>
          PAUSED ({formatCount(snap.buffered)} waiting
          {snap.dropped > 0 ? `, ${formatCount(snap.dropped)} dropped` : ''}) p resumes ·{' '}
        </Text>
      ) : null}
      <TunnelState snap={snap} />
      {snap.inFlight.length > snap.openUpgrades
        ? ` · ${formatCount(snap.inFlight.length - snap.openUpgrades)} in flight`
        : ''}
      {snap.openUpgrades > 0 ? ` · ${plural(snap.openUpgrades, 'WebSocket')} open` : ''}
      {' · '}
      <Text bold>
        {i.service}/{i.tenant}
      </Text>{' '}
      → :{i.localPort} · {formatRate(snap.ratePerSecond)} req/s · {plural(snap.total, 'request')} ·{' '}
      <Text color={snap.errors > 0 ? 'red' : undefined}>{plural(snap.errors, 'error')}</Text>
      <Text dimColor> · ? keys</Text>
    </Text>
  );
}
