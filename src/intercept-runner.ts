/**
 * Runs an intercept in the foreground: prints the request log (plain lines, or NDJSON with
 * --json), runs the optional local command, and leaves on Ctrl-C, on the command's exit,
 * or when the intercept ends elsewhere. Returns the exit code for the CLI.
 */
import os from 'node:os';
import { execa } from 'execa';
import { ExitCode } from './errors.js';
import type { SessionEvent } from './events.js';
import { InterceptSession, type InterceptRequest } from './intercept-session.js';
import type { InterceptView } from './protocol.js';
import { formatRequestLine } from './request-log.js';
import type { ClientSettings } from './settings.js';

export interface RunOptions {
  json: boolean;
  command?: string[];
  /** Called once the intercept is live (the detached agent reports to its parent here). */
  onLive?: (intercept: InterceptView) => void;
  out?: (line: string) => void;
}

function describe(event: SessionEvent): string | undefined {
  switch (event.kind) {
    case 'http':
      return formatRequestLine(event);
    case 'tunnel':
      if (event.state === 'reconnecting') return `tunnel lost; reconnecting${event.retryInMs ? ` in ${(event.retryInMs / 1000).toFixed(1)} s` : ''}${event.error ? ` (${event.error})` : ''}`;
      if (event.state === 'connected') return 'tunnel connected';
      if (event.state === 'closed' && event.error) return `tunnel closed: ${event.error}`;
      return undefined;
    case 'ended':
      return `intercept ended: ${event.reason}`;
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

export async function runIntercept(settings: ClientSettings, want: InterceptRequest, opts: RunOptions): Promise<number> {
  const stdout = batchedStdout();
  const out = opts.out ?? stdout.write;
  const session = await InterceptSession.start(settings, want);
  const icp = session.intercept;

  if (opts.json) out(JSON.stringify({ kind: 'intercept', ...icp }));
  else out(`Intercepting ${icp.service} for tenant ${icp.tenant} → localhost:${want.port} (intercept ${icp.id}, server ${settings.server}). Ctrl-C to leave.`);
  session.on('event', (event) => {
    if (opts.json && (event.kind === 'http-start' || event.kind === 'lease')) return;
    const line = opts.json ? JSON.stringify(event) : describe(event);
    if (line) out(line);
  });
  opts.onLive?.(icp);

  let exitCode: number = ExitCode.ok;
  const finished: Promise<string>[] = [session.ended];
  const signals = new Promise<string>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      exitCode = signal === 'SIGINT' ? 130 : 143;
      resolve(`left (${signal})`);
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  });
  finished.push(signals);

  const child = opts.command?.length
    ? execa(opts.command[0] as string, opts.command.slice(1), {
        stdio: 'inherit',
        reject: false,
        env: { KELSINGRA_TENANT: want.tenant, KELSINGRA_SERVICE: want.service, KELSINGRA_INTERCEPT: icp.id, PORT: String(want.port) },
      })
    : undefined;
  if (child) {
    finished.push(
      child.then((result) => {
        exitCode = result.exitCode ?? (result.signal ? 128 + (os.constants.signals[result.signal] ?? 15) : ExitCode.failure);
        if (result.failed && result.exitCode === undefined && !result.signal) {
          process.stderr.write(`Error: could not run ${opts.command?.join(' ')}: ${result.shortMessage ?? result.message}\n`);
        }
        return `local command exited (${result.exitCode ?? result.signal ?? 'could not start'})`;
      }),
    );
  }

  const reason = await Promise.race(finished);
  if (child && child.exitCode === null) child.kill('SIGTERM');
  try {
    await session.leave(reason);
  } catch (err) {
    process.stderr.write(`Warning: ${(err as Error).message}\n`);
  }
  if (child) await child.catch(() => undefined);
  stdout.flush();
  if (reason.startsWith('lease') || reason.startsWith('could not re-assert')) return ExitCode.failure;
  return exitCode;
}
