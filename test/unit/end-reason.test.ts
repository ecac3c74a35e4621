import { describe, expect, it } from 'vitest';
import { describeEnd, type EndReason, exitCodeOfEnd } from '../../src/client/intercept/end-reason.js';
import { ExitCode } from '../../src/shared/errors.js';

describe('why an intercept ended', () => {
  it('reads as the sentence the views print', () => {
    const cases: [EndReason, string][] = [
      [{ kind: 'left' }, 'left'],
      [{ kind: 'left', detail: 'Ctrl-C' }, 'left (Ctrl-C)'],
      [{ kind: 'left-elsewhere' }, 'left from another shell'],
      [{ kind: 'ended-by-server', detail: 'drained' }, 'ended by the server (drained)'],
      [{ kind: 'command-exited', detail: '3' }, 'local command exited (3)'],
      [{ kind: 'tunnel-closed', detail: 'token revoked' }, 'tunnel closed: token revoked'],
      [
        { kind: 'leave-failed', left: { kind: 'left', detail: 'q' }, detail: 'store down' },
        'left (q); removing the intercept failed (store down); it lapses with its lease',
      ],
    ];
    for (const [reason, sentence] of cases) expect(describeEnd(reason)).toBe(sentence);
  });

  it('fails the exit code only when the intercept was taken away, not when it was left', () => {
    expect(
      exitCodeOfEnd({ kind: 'lease-lost', detail: 'lease expired; could not take it back: conflict' }),
    ).toBe(ExitCode.failure);
    expect(exitCodeOfEnd({ kind: 'reassert-failed', detail: 'conflict' })).toBe(ExitCode.failure);
    expect(exitCodeOfEnd({ kind: 'left', detail: 'q' })).toBeUndefined();
    expect(exitCodeOfEnd({ kind: 'command-exited', detail: '0' })).toBeUndefined();
    // A leave whose detail happens to start with "lease" is still a leave.
    expect(exitCodeOfEnd({ kind: 'ended-by-server', detail: 'lease revoked by admin' })).toBeUndefined();
  });
});
