/**
 * oclif's help, except that `kelsingra lgos --help` (or `kelsingra help lgos`) suggests the
 * command meant, like a mistyped command does, instead of only "Command lgos not found"; and a
 * command that takes one argument shows one.
 */
import { type Command, Errors, Help } from '@oclif/core';
import { reportUnknownCommand } from './not-found.js';
import { wantsJson } from './print-error.js';

export default class KelsingraHelp extends Help {
  /**
   * `intercept` is not strict only so that the words after `--` stay the command's; its help
   * must not read as if it took several services (oclif shows a non-strict argument as SERVICE...).
   */
  override formatCommand(command: Command.Loadable): string {
    return super.formatCommand({ ...command, strict: true });
  }

  override async showHelp(argv: string[]): Promise<void> {
    try {
      await super.showHelp(argv);
    } catch (err) {
      const unknown = err instanceof Errors.CLIError && /^Command (.+) not found\.$/.exec(err.message);
      if (!unknown) throw err;
      reportUnknownCommand(this.config, (unknown[1] as string).replaceAll(' ', ':'), wantsJson(argv));
    }
  }
}
