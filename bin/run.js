#!/usr/bin/env node
// Long-running agents stream bodies through many short-lived buffers. A small young
// generation collects them promptly, which keeps peak memory near the tunnel's flow-control
// windows and is faster too. V8 takes the size only at start-up, so the agent commands
// re-execute themselves with it (unless the user chose one in NODE_OPTIONS).
const AGENTS = new Set(['server', 'intercept']);
const flags = `${process.env.NODE_OPTIONS ?? ''} ${process.execArgv.join(' ')}`;
// (The --detach agent is spawned with the flag already: exec would drop its IPC channel.)
if (
  AGENTS.has(process.argv[2]) &&
  !flags.includes('--max-semi-space-size') &&
  typeof process.execve === 'function'
) {
  process.execve(process.execPath, [
    process.execPath,
    '--max-semi-space-size=2',
    // kafkajs 2.2 sets timers with negative delays, which Node 24 warns about on stderr
    // (tearing the live view); the timers behave as intended.
    '--disable-warning=TimeoutNegativeWarning',
    ...process.execArgv,
    ...process.argv.slice(1),
  ]);
}

// Once per run: not again in the --detach agent (its parent warned already).
if (!process.argv.includes('--agent')) {
  const { cliNodeWarning } = await import('../dist/src/shared/node-version.js');
  const warning = cliNodeWarning();
  if (warning) process.stderr.write(warning);
}

const { execute } = await import('@oclif/core');
await execute({ dir: import.meta.url });
