/**
 * `kelsingra dashboard` in a terminal (Ink): a table of intercepts with live rate, error
 * rate, p50/p99 and last request, the server's upstream health, and one intercept's live
 * request log on `enter`. Reads a DashboardModel; re-renders at most every `throttleMs`
 * and only when the model changed (or while requests are still in the sliding window),
 * so an idle dashboard does no work.
 */
import { Box, Text, useApp, useInput, useStdout } from 'ink';
import Spinner from 'ink-spinner';
import { useEffect, useReducer, useRef, useState } from 'react';
import {
  type DashboardModel,
  type DashboardSnapshot,
  formatLastRequest,
  formatUpstream,
  formatWindowRate,
  type InterceptStats,
  interceptRow,
  TABLE_COLUMNS,
  type UpstreamStatus,
  upstreamColour,
} from '../client/dashboard/dashboard-model.js';
import { formatRecordLine, statusColour } from '../client/intercept/request-log.js';
import type { RequestRecord } from '../shared/protocol.js';

export interface DashboardProps {
  model: DashboardModel;
  /** What is in view, e.g. "your intercepts (alice)" or "all intercepts". */
  scope: string;
  server?: string;
  /** Shown when no intercept is in view. */
  emptyHint?: string;
  /** Replays an intercept's recent requests when its log opens (`?history=1`). */
  loadHistory?: (interceptId: string) => Promise<readonly RequestRecord[]>;
  onQuit?: () => void;
  throttleMs?: number;
  now?: () => number;
}

/** Re-renders when the model changes, at most every `throttleMs`; ticks once a second while traffic is in the window. */
function useThrottledModel(model: DashboardModel, throttleMs: number, now: () => number): void {
  const [, setTick] = useState(0);
  useEffect(() => {
    let timer: NodeJS.Timeout | undefined;
    let slide: NodeJS.Timeout | undefined;
    let lastRender = 0;
    let renderedVersion = model.version;
    const flush = () => {
      timer = undefined;
      lastRender = Date.now();
      renderedVersion = model.version;
      setTick((t) => t + 1);
      if (slide) clearTimeout(slide);
      slide = undefined;
      // Rates and percentiles move as requests leave the window, even without new events.
      if (model.hasRecentTraffic(now())) slide = setTimeout(schedule, 1000);
    };
    const schedule = () => {
      if (timer) return;
      timer = setTimeout(flush, Math.max(0, lastRender + throttleMs - Date.now()));
    };
    const onChange = () => {
      if (model.version !== renderedVersion) schedule();
    };
    model.on('change', onChange);
    if (model.hasRecentTraffic(now())) slide = setTimeout(schedule, 1000);
    return () => {
      model.off('change', onChange);
      if (timer) clearTimeout(timer);
      if (slide) clearTimeout(slide);
    };
  }, [model, throttleMs, now]);
}

interface ViewState {
  selectedId?: string;
  openId?: string;
  help: boolean;
}

type ViewAction =
  | { type: 'move'; delta: number; list: InterceptStats[] }
  | { type: 'open'; list: InterceptStats[] }
  | { type: 'back' }
  | { type: 'help' };

function selectedIndex(list: InterceptStats[], id: string | undefined): number {
  return Math.max(0, id ? list.findIndex((i) => i.id === id) : 0);
}

function reduce(state: ViewState, action: ViewAction): ViewState {
  switch (action.type) {
    case 'help':
      return { ...state, help: !state.help };
    case 'back':
      return state.help ? { ...state, help: false } : { ...state, openId: undefined };
    case 'move': {
      if (state.openId || state.help || action.list.length === 0) return state;
      const index = selectedIndex(action.list, state.selectedId);
      const next = action.list[Math.min(action.list.length - 1, Math.max(0, index + action.delta))];
      return { ...state, selectedId: next?.id };
    }
    case 'open': {
      if (state.openId || state.help) return state;
      const target = action.list[selectedIndex(action.list, state.selectedId)];
      return target ? { ...state, selectedId: target.id, openId: target.id } : state;
    }
  }
}

const KEYS: [string, string][] = [
  ['↑/↓  k/j', 'select an intercept'],
  ['enter', "open the selected intercept's live request log"],
  ['esc', 'back to the table (or close this help)'],
  ['?', 'show or hide the keys'],
  ['q, ctrl-c', 'quit'],
];

export function Dashboard({
  model,
  scope,
  server,
  emptyHint,
  loadHistory,
  onQuit,
  throttleMs = 250,
  now = Date.now,
}: DashboardProps) {
  useThrottledModel(model, throttleMs, now);
  const { exit } = useApp();
  const { stdout } = useStdout();
  const [view, dispatch] = useReducer(reduce, { help: false });
  const snapshot = model.snapshot(now());
  const list = snapshot.intercepts;
  // Keys are handled against the latest list, even before the next render commits.
  const listRef = useRef(list);
  listRef.current = list;
  const selected = list[selectedIndex(list, view.selectedId)];
  const { openId, help } = view;

  useEffect(() => {
    if (!openId || !loadHistory) return;
    loadHistory(openId).then(
      (records) => model.backfill(openId, records),
      () => undefined, // the live lines still come; history is a convenience
    );
  }, [openId, loadHistory, model]);

  useInput((input, key) => {
    if (input === 'q' || (key.ctrl && input === 'c')) {
      onQuit?.();
      exit();
    } else if (input === '?') dispatch({ type: 'help' });
    else if (key.escape) dispatch({ type: 'back' });
    else if (key.upArrow || input === 'k') dispatch({ type: 'move', delta: -1, list: listRef.current });
    else if (key.downArrow || input === 'j') dispatch({ type: 'move', delta: 1, list: listRef.current });
    else if (key.return) dispatch({ type: 'open', list: listRef.current });
  });

  const rows = stdout?.rows || 24;
  return (
    <Box flexDirection="column">
      <Header snapshot={snapshot} scope={scope} server={server} model={model} />
      {help ? (
        <Help />
      ) : openId ? (
        <LogView model={model} id={openId} now={now} maxLines={Math.max(5, rows - 5)} />
      ) : (
        <>
          <Table list={list} selectedId={selected?.id} emptyHint={emptyHint} />
          <Upstreams upstreams={snapshot.upstreams} />
        </>
      )}
      <Box marginTop={1}>
        <Text dimColor>
          {openId
            ? 'esc back · q quit · ? keys'
            : `rates and latency over the last ${snapshot.windowSeconds} s · ↑/↓ select · enter live log · q quit · ? keys`}
        </Text>
      </Box>
    </Box>
  );
}

function Header({
  snapshot,
  scope,
  server,
  model,
}: {
  snapshot: DashboardSnapshot;
  scope: string;
  server?: string;
  model: DashboardModel;
}) {
  const live = snapshot.connection === 'live';
  return (
    <Box flexDirection="column">
      <Text wrap="truncate-end">
        <Text bold>Kelsingra dashboard</Text>
        <Text dimColor> · </Text>
        {scope}
        {server ? <Text dimColor> · {server}</Text> : null}
        <Text dimColor> · </Text>
        {live ? (
          <Text color="green">● live</Text>
        ) : (
          <Text color="yellow">
            <Spinner type="dots" /> {snapshot.connection}…
          </Text>
        )}
      </Text>
      {!live && model.lastConnectionError ? (
        <Text color="yellow" wrap="truncate-end">
          {model.lastConnectionError}; the numbers below are from before
        </Text>
      ) : null}
    </Box>
  );
}

function Help() {
  return (
    <Box flexDirection="column" marginTop={1} borderStyle="single" paddingX={1} alignSelf="flex-start">
      <Text bold>Keys</Text>
      {KEYS.map(([k, what]) => (
        <Box key={k}>
          <Box width={12}>
            <Text color="cyan">{k}</Text>
          </Box>
          <Text>{what}</Text>
        </Box>
      ))}
    </Box>
  );
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** The table's cells but the last (LAST REQUEST), which the view draws itself, in colour. */
function cells(s: InterceptStats): string[] {
  return interceptRow(s).slice(0, -1);
}

function Table({
  list,
  selectedId,
  emptyHint,
}: {
  list: InterceptStats[];
  selectedId?: string;
  emptyHint?: string;
}) {
  if (list.length === 0) {
    return (
      <Box marginTop={1}>
        <Text dimColor>{emptyHint ?? 'No intercepts.'}</Text>
      </Box>
    );
  }
  const head = TABLE_COLUMNS.slice(0, -1);
  const widths = head.map(
    (h, i) => Math.min(24, Math.max(h.length, ...list.map((s) => (cells(s)[i] ?? '').length))) + 2,
  );
  return (
    <Box flexDirection="column" marginTop={1}>
      <Box>
        <Text> </Text>
        {head.map((h, i) => (
          <Box key={h} width={widths[i]}>
            <Text bold dimColor>
              {h}
            </Text>
          </Box>
        ))}
        <Text bold dimColor>
          LAST REQUEST
        </Text>
      </Box>
      {list.map((s) => {
        const isSelected = s.id === selectedId;
        const row = cells(s);
        return (
          <Box key={s.id}>
            <Text color="cyan">{isSelected ? '›' : ' '}</Text>
            {row.map((cell, i) => (
              <Box key={TABLE_COLUMNS[i]} width={widths[i]}>
                <Text
                  wrap="truncate-end"
                  bold={isSelected && i < 3}
                  inverse={isSelected && i === 0}
                  color={i === 4 && s.errorRate ? 'red' : undefined}
                >
                  {cell}
                </Text>
              </Box>
            ))}
            <Box flexGrow={1}>
              <Text
                wrap="truncate-end"
                color={s.lastRequest ? statusColour(s.lastRequest.status, s.lastRequest.error) : undefined}
              >
                {formatLastRequest(s.lastRequest)}
              </Text>
            </Box>
          </Box>
        );
      })}
    </Box>
  );
}

function Upstreams({ upstreams }: { upstreams: UpstreamStatus[] }) {
  if (upstreams.length === 0) return null;
  const nameWidth = Math.min(24, Math.max(8, ...upstreams.map((u) => u.service.length))) + 2;
  const urlWidth = Math.min(40, Math.max(...upstreams.map((u) => u.url.length))) + 2;
  return (
    <Box flexDirection="column" marginTop={1}>
      <Text bold dimColor>
        UPSTREAMS
      </Text>
      {upstreams.map((u) => (
        <Box key={`${u.service} ${u.url}`}>
          <Text> </Text>
          <Box width={nameWidth}>
            <Text wrap="truncate-end">{u.service}</Text>
          </Box>
          <Box width={urlWidth}>
            <Text wrap="truncate-end" dimColor>
              {u.url}
            </Text>
          </Box>
          <Text wrap="truncate-end" color={upstreamColour(u.state)}>
            {formatUpstream(u)}
          </Text>
        </Box>
      ))}
    </Box>
  );
}

function LogView({
  model,
  id,
  now,
  maxLines,
}: {
  model: DashboardModel;
  id: string;
  now: () => number;
  maxLines: number;
}) {
  const stats = model.intercept(id, now());
  const lines = model.log(id).slice(-maxLines);
  return (
    <Box flexDirection="column" marginTop={1}>
      <Box>
        <Text bold>{stats ? `${stats.service} · tenant ${stats.tenant} · ${stats.holder}` : id}</Text>
        <Text dimColor> · {id}</Text>
        {stats && !stats.ended ? (
          <Text dimColor>
            {' '}
            · {formatWindowRate(stats)} req/s · {plural(stats.requests, 'request')},{' '}
            {plural(stats.errors, 'error')}
          </Text>
        ) : null}
      </Box>
      {lines.length === 0 ? <Text dimColor>No requests yet; they appear here as they complete.</Text> : null}
      {lines.map((r, i) => (
        // Lines only ever append (or get trimmed at the top): position from the end is stable enough.
        // biome-ignore lint/suspicious/noArrayIndexKey: request records have no id of their own
        <Text key={`${r.at}-${i}`} wrap="truncate-end">
          {formatRecordLine(r)}
        </Text>
      ))}
      {stats?.ended ? (
        <Text color="yellow">
          intercept ended
          {stats.ended.reason === 'expired'
            ? ': lease expired'
            : stats.ended.reason
              ? `: ${stats.ended.reason}`
              : ''}
        </Text>
      ) : null}
    </Box>
  );
}
