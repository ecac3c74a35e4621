/** Waiting in tests: sleeping, polling until a condition holds (with a deadline), and cleanups after each test. */
import { afterEach } from 'vitest';

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls until `check` returns a truthy value or the timeout passes. */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  timeoutMs = 15_000,
  what = 'condition',
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(50);
  }
}

export type Cleanup = () => unknown | Promise<unknown>;

/**
 * A list of cleanups run after each test, last registered first (agents and foreground CLIs
 * before the servers they talk to), each on its own so one failure does not hide the others.
 * Shared so files that start processes per test need not each keep their own list and hook.
 */
export function cleanupsAfterEach(): Cleanup[] {
  const cleanups: Cleanup[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) {
      try {
        await cleanup();
      } catch {
        // Best effort: one failed cleanup must not hide the others.
      }
    }
  });
  return cleanups;
}
