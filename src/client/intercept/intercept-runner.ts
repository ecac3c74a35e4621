/**
 * Runs an intercept in the foreground: shows the request log (the live Ink view on a
 * terminal, plain lines in a pipe, NDJSON with --json), runs the optional local command, and
 * leaves on Ctrl-C / `q`, on the command's exit, or when the intercept ends elsewhere.
 * Returns the exit code for the CLI.
 */
import os from 'node:os';
import { ExitCode, hasErrorCode } from '../../shared/errors.js';
import { childNodeWarning } from '../../shared/node-version.js';
import type { InterceptView } from '../../shared/protocol.js';
import type { LiveLogModel } from '../../ui/live-log-model.js';
import type { LiveView } from '../../ui/live-view.js';
import type { ClientSettings } from '../api/settings.js';
import { gatewayEnv, outboundEvent, startClientGateway } from '../gateway/gateway-client.js';
import type { OutboundGateway } from '../gateway/outbound-gateway.js';
import { type EndReason, exitCodeOfEnd } from './end-reason.js';
import type { OutboundEvent, SessionEvent } from './events.js';
import { type InterceptRequest, InterceptSession } from './intercept-session.js';
import {
  formatKafkaLine,
  formatLapseLine,
  formatOutboundLine,
  formatRequestLine,
  formatUpgradeLine,
} from './request-log.js';

export type ViewKind = 'live' | 'plain' | 'json';

export interface RunOptions {
  json: boolean;
  /** Default: chosen by `chooseView`. The detached agent asks for 'plain'. */
  view?: ViewKind;
  command?: string[];
  /** The outbound gateway (default port 0: any free one); undefined: none (--no-gateway). */
  gateway?: { port: number; cors: boolean };
  /** Called once the intercept is live (the detached agent reports to its parent here). */
  onLive?: (intercept: InterceptView, extra: { gateway?: string }) => void;
  out?: (line: string) => void;
}

/**
 * The live view needs a terminal on both ends (it draws on stdout and reads keys from
 * stdin); anything else — a pipe, a file, CI, `--json` — gets lines a script can read.
 */
export function chooseView(opts: {
  json: boolean;
  stdoutIsTTY: boolean | undefined;
  stdinIsTTY: boolean | undefined;
  env?: NodeJS.ProcessEnv;
}): ViewKind {
  if (opts.json) return 'json';
  if (!opts.stdoutIsTTY || !opts.stdinIsTTY) return 'plain';
  // TERM=dumb cannot move the cursor.
  if (opts.env?.TERM === 'dumb') return 'plain';
  return 'live';
}

function describe(event: SessionEvent): string | undefined {
  switch (event.kind) {
    case 'http':
      return formatRequestLine(event);
    case 'websocket':
      // One line per WebSocket, once it closed: the http-start of its request printed nothing.
      return formatUpgradeLine(event);
    case 'tunnel':
      if (event.state === 'reconnecting')
        return `tunnel lost; reconnecting${event.retryInMs ? ` in ${(event.retryInMs / 1000).toFixed(1)} s` : ''}${event.error ? ` (${event.error})` : ''}`;
      if (event.state === 'connected') return 'tunnel connected';
      if (event.state === 'closed' && event.error) return `tunnel closed: ${event.error}`;
      return undefined;
    case 'lease-lapsed':
      return formatLapseLine(event);
    case 'ended':
      return `intercept ended: ${event.reason}`;
    case 'kafka':
      return formatKafkaLine(event);
    case 'outbound':
      return formatOutboundLine(event);
    default:
      // Request starts and lease renewals only matter to the live view.
      return undefined;
  }
}

/**
 * Lines written together once per event-loop turn: under load that is one write for many
 * requests rather than one each (stdout to a file or a pipe is a synchronous write).
 */
function batchedStdout(): { write: (line: string) => void; flush: () => void } {
  let pending = '';
  const flush = () => {
    if (pending === '') return;
    const text = pending;
    pending = '';
    process.stdout.write(text);
  };
  return {
    write: (line) => {
      if (pending === '') setImmediate(flush);
      pending += `${line}\n`;
    },
    flush,
  };
}

export async function runIntercept(
  settings: ClientSettings,
  want: InterceptRequest,
  opts: RunOptions,
): Promise<number> {
  const view =
    opts.view ??
    (opts.out
      ? opts.json
        ? 'json'
        : 'plain'
      : chooseView({
          json: opts.json,
          stdoutIsTTY: process.stdout.isTTY,
          stdinIsTTY: process.stdin.isTTY,
          env: process.env,
        }));
  // Loaded only for a terminal: plain and NDJSON output never pay for React and Ink.
  const ui = view === 'live' ? await loadLiveView() : undefined;
  const stdout = batchedStdout();
  const out = opts.out ?? stdout.write;
  // The gateway listens before the intercept exists: a taken port fails before anything changes in dev.
  let emitOutbound: (event: OutboundEvent) => void = () => undefined;
  const gateway = opts.gateway
    ? await startGateway(settings, want.tenant, opts.gateway, (e) => emitOutbound(e))
    : undefined;
  let session: InterceptSession;
  try {
    session = await InterceptSession.start(settings, { ...want, withHeaders: view !== 'plain' });
  } catch (err) {
    await gateway?.close();
    throw err;
  }
  emitOutbound = (event) => session.emit('event', event);
  const icp = session.intercept;

  let exitCode: number = ExitCode.ok;
  let leaving = false;
  const finished: Promise<EndReason>[] = [session.ended];
  let leaveFromView: ((reason: EndReason) => void) | undefined;
  finished.push(new Promise<EndReason>((resolve) => (leaveFromView = resolve)));

  let model: LiveLogModel | undefined;
  let liveView: LiveView | undefined;
  if (ui) {
    model = new ui.LiveLogModel({
      service: icp.service,
      tenant: icp.tenant,
      localPort: want.port,
      server: settings.server,
      interceptId: icp.id,
      leaseTtlMs: leaseTtlOf(icp),
      gateway: gateway?.url,
      previewUrl: icp.previewUrl,
    });
    const m = model;
    session.on('event', (event) => m.apply(event));
    liveView = ui.startLiveView(m, {
      // `q` is a deliberate, clean leave: exit code 0. Ctrl-C keeps the shell's 130, as SIGINT would.
      onQuit: () => leaveFromView?.({ kind: 'left', detail: 'q' }),
      onInterrupt: () => {
        exitCode = 130;
        leaveFromView?.({ kind: 'left', detail: 'Ctrl-C' });
      },
    });
  } else {
    if (view === 'json') out(JSON.stringify({ kind: 'intercept', ...icp, gateway: gateway?.url }));
    else {
      out(
        `Intercepting ${icp.service} for tenant ${icp.tenant} → localhost:${want.port} (intercept ${icp.id}, server ${settings.server}). Ctrl-C to leave.`,
      );
      if (gateway) out(`gateway: ${gateway.url}`);
      if (icp.previewUrl) out(`preview: ${icp.previewUrl}`);
    }
    session.on('event', (event) => {
      if (view === 'json' && (event.kind === 'http-start' || event.kind === 'lease')) return;
      const line = view === 'json' ? JSON.stringify(event) : describe(event);
      if (line) out(line);
    });
  }
  opts.onLive?.(icp, { gateway: gateway?.url });

  const onSignal = (signal: NodeJS.Signals) => {
    exitCode = signal === 'SIGINT' ? 130 : 143;
    leaveFromView?.({ kind: 'left', detail: signal });
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const childEnv = {
    KELSINGRA_TENANT: want.tenant,
    KELSINGRA_SERVICE: want.service,
    KELSINGRA_INTERCEPT: icp.id,
    PORT: String(want.port),
    ...(gateway ? gatewayEnv(gateway.url) : {}),
  };
  if (opts.command?.length && gateway) {
    const warning = await childNodeWarning(opts.command, { ...process.env, ...childEnv }, gateway.url);
    if (warning && model) model.output('stderr', warning);
    else if (warning) process.stderr.write(warning);
  }
  // execa is loaded only for a command: the --detach agent never runs one, and it is about
  // 4.5 MiB of its resident memory (issue 15's per-agent RSS goal).
  const [file, ...args] = opts.command ?? [];
  const child = file
    ? (await import('execa')).execa(file, args, {
        // Under the live view the keys belong to the view and the command's output is printed
        // above it line by line (inherited, it would tear the redrawn part); elsewhere the
        // command shares this terminal or pipe as it is — except that with --json its stdout goes
        // to stderr, so stdout stays one JSON event per line.
        stdio: model ? ['ignore', 'pipe', 'pipe'] : view === 'json' ? ['inherit', 2, 'inherit'] : 'inherit',
        buffer: false,
        reject: false,
        env: childEnv,
      })
    : undefined;
  if (child && model) {
    const m = model;
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => m.output('stdout', chunk));
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => m.output('stderr', chunk));
  }
  if (child) {
    finished.push(
      child.then((result) => {
        // The command's exit code becomes ours when its exit is what ends the intercept; once
        // we are leaving for another reason (Ctrl-C, q), the SIGTERM we send it must not
        // replace that reason's code.
        if (leaving) return { kind: 'command-exited' } as const;
        exitCode =
          result.exitCode ??
          (result.signal ? 128 + (os.constants.signals[result.signal] ?? 15) : ExitCode.failure);
        if (result.failed && result.exitCode === undefined && !result.signal) {
          const message = `Error: could not run ${opts.command?.join(' ')}: ${result.shortMessage ?? result.message}`;
          if (model) model.output('stderr', `${message}\n`);
          else process.stderr.write(`${message}\n`);
        }
        return {
          kind: 'command-exited',
          detail: String(result.exitCode ?? result.signal ?? 'could not start'),
        } as const;
      }),
    );
  }

  const reason = await Promise.race(finished);
  leaving = true;
  if (child && child.exitCode === null) child.kill('SIGTERM');
  let warning: string | undefined;
  try {
    await session.leave(reason);
  } catch (err) {
    warning = `Warning: ${(err as Error).message}\n`;
  }
  if (child) await child.catch(() => undefined);
  await gateway?.close();
  // The terminal is given back (raw mode off, cursor shown) before anything else is written.
  await liveView?.stop();
  if (warning) process.stderr.write(warning);
  stdout.flush();
  return exitCodeOfEnd(reason) ?? exitCode;
}

/** The outbound gateway; against a server agent without one, the intercept goes on without it (said on stderr). */
async function startGateway(
  settings: ClientSettings,
  tenant: string,
  opts: { port: number; cors: boolean },
  emit: (event: OutboundEvent) => void,
): Promise<OutboundGateway | undefined> {
  try {
    const { gateway } = await startClientGateway(settings, tenant, {
      ...opts,
      onRequest: (record) => emit(outboundEvent(record)),
    });
    return gateway;
  } catch (err) {
    if (hasErrorCode(err, 'no-gateway')) {
      process.stderr.write(`Warning: ${err.message}; going on without it\n`);
      return undefined;
    }
    throw err;
  }
}

type LiveModules = typeof import('../../ui/live-log-model.js') & typeof import('../../ui/live-view.js');

async function loadLiveView(): Promise<LiveModules> {
  // React's development build (what an unset NODE_ENV selects) costs several times the CPU
  // per frame. It is chosen when React loads, so NODE_ENV is set only around that: the
  // `-- cmd` child inherits this environment and must not be switched to production.
  const nodeEnv = process.env.NODE_ENV;
  process.env.NODE_ENV ??= 'production';
  try {
    const [model, view] = await Promise.all([
      import('../../ui/live-log-model.js'),
      import('../../ui/live-view.js'),
    ]);
    return { ...model, ...view };
  } finally {
    if (nodeEnv === undefined) delete process.env.NODE_ENV;
  }
}

/** The lease length the server granted, from the intercept's own timestamps (no clock skew). */
function leaseTtlOf(icp: InterceptView): number | undefined {
  const ttl = Date.parse(icp.expiresAt) - Date.parse(icp.createdAt);
  return Number.isFinite(ttl) && ttl > 0 ? ttl : undefined;
}
