/**
 * `intercept --detach`: the intercept needs a process that holds the tunnel after the
 * command returns, so the CLI starts itself again as a background agent and waits until
 * that agent reports the intercept live (or why it failed).
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { ExitCode, KelsingraError } from '../../shared/errors.js';
import type { InterceptView } from '../../shared/protocol.js';

export const AGENT_FLAG = '--agent';

export type AgentMessage =
  | { type: 'ready'; intercept: InterceptView; pid: number; logFile: string; gateway?: string }
  | { type: 'error'; message: string; exitCode: number; hint?: string; details?: Record<string, unknown> };

export function agentLogFile(configDir: string, service: string, tenant: string): string {
  const dir = join(configDir, 'logs');
  mkdirSync(dir, { recursive: true });
  return join(dir, `${service}-${tenant.replace(/[^A-Za-z0-9_.-]/g, '_')}.log`);
}

export function startDetachedAgent(
  binScript: string,
  argv: string[],
  logFile: string,
  timeoutMs = 30_000,
): Promise<AgentMessage & { type: 'ready' }> {
  const log = openSync(logFile, 'a');
  // The same young-generation size bin/run.js gives agents (see there for why).
  const child = spawn(
    process.execPath,
    ['--max-semi-space-size=2', '--disable-warning=TimeoutNegativeWarning', binScript, ...argv, AGENT_FLAG],
    {
      detached: true,
      stdio: ['ignore', log, log, 'ipc'],
      env: { ...process.env, FORCE_COLOR: '0' },
    },
  );
  // The child has its own copy of the descriptor.
  closeSync(log);
  return new Promise((resolve, reject) => {
    const onExit = (code: number | null) => {
      clearTimeout(timer);
      reject(
        new KelsingraError(
          `the background agent exited (code ${code}) before the intercept was live`,
          ExitCode.failure,
          `see its log: ${logFile}`,
        ),
      );
    };
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new KelsingraError(`could not start the background agent: ${err.message}`, ExitCode.failure));
    });
    const timer = setTimeout(() => {
      child.kill();
      reject(
        new KelsingraError(
          `the background agent did not report in ${timeoutMs / 1000} s`,
          ExitCode.failure,
          `see its log: ${logFile}`,
        ),
      );
    }, timeoutMs);
    child.once('message', (message: AgentMessage) => {
      clearTimeout(timer);
      child.off('exit', onExit);
      child.disconnect();
      child.unref();
      if (message.type === 'ready') resolve(message);
      else
        reject(
          new KelsingraError(message.message, message.exitCode as ExitCode, message.hint, message.details),
        );
    });
    child.once('exit', onExit);
  });
}
