/**
 * Errors a user can act on. Each carries the exit code the CLI uses (see README, "Exit
 * codes") and a hint that says what to do next.
 */
import type { ErrorCode } from './error-codes.js';

export const ExitCode = {
  ok: 0,
  failure: 1,
  usage: 2,
  auth: 3,
  notFound: 4,
  conflict: 5,
  unreachable: 6,
  config: 7,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export class KelsingraError extends Error {
  constructor(
    message: string,
    readonly exitCode: ExitCode = ExitCode.failure,
    readonly hint?: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'KelsingraError';
  }
}

/**
 * Whether `err` is Kelsingra's answer with this code (the server's, the gateway's, or the
 * client's own): the one way the CLI branches on a code, so each is checked against ErrorCode.
 */
export function hasErrorCode(err: unknown, code: ErrorCode): err is KelsingraError {
  return err instanceof KelsingraError && err.details?.code === code;
}
