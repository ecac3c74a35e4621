/** How every error reaches the user: `Error: …` and `Hint: …` on stderr, or one JSON object with --json. */
// chalkStderr decides on colour by stderr's terminal, not stdout's: `2>file` gets no escape codes.
import { chalkStderr as chalk } from 'chalk';

export interface PrintableError {
  message: string;
  hint?: string;
  exitCode: number;
  details?: Record<string, unknown>;
}

export function printError(e: PrintableError, json: boolean): void {
  if (json) {
    process.stderr.write(
      `${JSON.stringify({ ...e.details, error: e.message, hint: e.hint, exitCode: e.exitCode })}\n`,
    );
    return;
  }
  process.stderr.write(`${chalk.red('Error:')} ${e.message}\n`);
  if (e.hint) process.stderr.write(`${chalk.dim('Hint:')} ${e.hint}\n`);
}

/** `--json` among a command's own arguments (not those of a command after `--`). */
export function wantsJson(argv: readonly string[]): boolean {
  const split = argv.indexOf('--');
  return (split === -1 ? argv : argv.slice(0, split)).includes('--json');
}
