/**
 * What every command shares: `--json`, and turning errors into a clear message with a hint
 * on stderr and the documented exit code.
 */
import { Command, Flags } from '@oclif/core';
import chalk from 'chalk';
import { KelsingraError } from '../errors.js';

export abstract class BaseCommand extends Command {
  static override baseFlags = {
    json: Flags.boolean({ description: 'print JSON on stdout (one document) and nothing else', default: false }),
  };

  protected printJson(value: unknown): void {
    process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  }

  protected override async catch(err: Error & { exitCode?: number; oclif?: { exit?: number } }): Promise<unknown> {
    const json = this.argv.includes('--json');
    if (err instanceof KelsingraError) {
      if (json) {
        process.stderr.write(`${JSON.stringify({ ...err.details, error: err.message, hint: err.hint, exitCode: err.exitCode })}\n`);
      } else {
        process.stderr.write(`${chalk.red('Error:')} ${err.message}\n`);
        if (err.hint) process.stderr.write(`${chalk.dim('Hint:')} ${err.hint}\n`);
      }
      this.exit(err.exitCode);
    }
    return super.catch(err);
  }
}
