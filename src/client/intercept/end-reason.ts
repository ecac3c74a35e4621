/**
 * Why an intercept session ended. The kind decides what follows (the exit code); the detail
 * is only for people. One function turns it into the sentence logs and views print.
 */
import { ExitCode } from '../../shared/errors.js';

export type EndReason =
  /** This shell left: `q`, Ctrl-C, a signal (the detail names which), or a plain leave. */
  | { kind: 'left'; detail?: string }
  /** `kelsingra leave` from another shell. */
  | { kind: 'left-elsewhere' }
  | { kind: 'token-revoked' }
  /** The server ended it for a reason of its own (the detail is the server's word). */
  | { kind: 'ended-by-server'; detail: string }
  /** The lease lapsed or vanished and could not be taken back. */
  | { kind: 'lease-lost'; detail: string }
  /** The tunnel came back but the intercept could not be asserted again. */
  | { kind: 'reassert-failed'; detail: string }
  /** The tunnel stopped reconnecting for good (its token was revoked). */
  | { kind: 'tunnel-closed'; detail: string }
  /** The `-- command` exited (the detail: its exit code or signal, when it ended the intercept). */
  | { kind: 'command-exited'; detail?: string }
  /** Leaving, removing the intercept failed: it lapses with its lease. */
  | { kind: 'leave-failed'; left: EndReason; detail: string };

export function describeEnd(reason: EndReason): string {
  switch (reason.kind) {
    case 'left':
      return reason.detail ? `left (${reason.detail})` : 'left';
    case 'left-elsewhere':
      return 'left from another shell';
    case 'token-revoked':
      return 'its token was removed, or no longer covers this tenant (ask the platform team)';
    case 'ended-by-server':
      return `ended by the server (${reason.detail})`;
    case 'lease-lost':
      return reason.detail;
    case 'reassert-failed':
      return `could not re-assert the intercept after reconnecting: ${reason.detail}`;
    case 'tunnel-closed':
      return `tunnel closed: ${reason.detail}`;
    case 'command-exited':
      return reason.detail ? `local command exited (${reason.detail})` : 'local command exited';
    case 'leave-failed':
      return `${describeEnd(reason.left)}; removing the intercept failed (${reason.detail}); it lapses with its lease`;
  }
}

/** An intercept taken away rather than left is a failure, whatever else the exit code would say. */
export function exitCodeOfEnd(reason: EndReason): ExitCode | undefined {
  return reason.kind === 'lease-lost' || reason.kind === 'reassert-failed' ? ExitCode.failure : undefined;
}
