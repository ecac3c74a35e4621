/**
 * "Did you mean" for a mistyped command. In a terminal (stdin and stdout TTYs, no --json)
 * @oclif/plugin-not-found asks "Did you mean intercept?" and runs it on yes. Anywhere else
 * (scripts, CI, pipes) nothing waits for an answer: the suggestion is printed and the
 * command exits 2 (usage), like every other usage error.
 */
import { Errors, type Hook, type Interfaces, loadHelpClass, toConfiguredId } from '@oclif/core';
import pluginNotFound from '@oclif/plugin-not-found';
import { ExitCode } from '../shared/errors.js';
import { closestCommand } from './closest.js';
import { printError, wantsJson } from './print-error.js';

export { closestCommand };

const hook: Hook.CommandNotFound = async function (opts) {
  const argv = opts.argv ?? [];
  const json = wantsJson(argv);
  const [first, ...rest] = opts.id.split(':');
  if (first === 'help') {
    // `kelsingra help [command]`, as people type it: the same as `kelsingra [command] --help`.
    const help = new (await loadHelpClass(opts.config))(opts.config);
    return help.showHelp([...rest, ...argv]);
  }
  if (!json && process.stdin.isTTY && process.stdout.isTTY) {
    try {
      return await pluginNotFound.call(this, opts);
    } catch (err) {
      // Declined or timed out: the plugin gives up with exit 127, which is not ours; say it
      // below. Anything else came from the suggested command the user chose to run.
      const declined =
        err instanceof Errors.CLIError && !(err instanceof Errors.ExitError) && err.oclif?.exit === 127;
      if (!declined) throw err;
    }
  }
  reportUnknownCommand(opts.config, opts.id, json);
};

/** Prints "X is not a kelsingra command; did you mean Y?" (or JSON) and exits 2. */
export function reportUnknownCommand(config: Interfaces.Config, id: string, json: boolean): never {
  const hidden = new Set(config.commands.filter((c) => c.hidden).map((c) => c.id));
  const ids = [...config.commandIDs, ...config.commands.flatMap((c) => c.aliases)].filter(
    (c) => !hidden.has(c),
  );
  // With spaces between topics, `kelsingra interecpt billing` arrives as "interecpt:billing":
  // try the longest prefix first (topics: "autocomplete scirpt"), then shorter ones.
  const parts = id.split(':');
  let typedId = parts[0] as string;
  let suggestion: string | undefined;
  for (let n = parts.length; n >= 1 && !suggestion; n--) {
    const prefix = parts.slice(0, n).join(':');
    suggestion = closestCommand(
      prefix,
      ids.filter((c) => c.split(':').length === n),
    );
    if (suggestion) typedId = prefix;
  }
  const typed = toConfiguredId(typedId, config);
  const named = suggestion ? toConfiguredId(suggestion, config) : undefined;
  const bin = config.bin;
  printError(
    {
      message: `${typed} is not a ${bin} command${named ? `; did you mean ${named}?` : ''}`,
      hint: named
        ? `${bin} ${named} --help shows how to use it; ${bin} --help lists every command`
        : `${bin} --help lists every command`,
      exitCode: ExitCode.usage,
      details: { command: typed, ...(named ? { suggestion: named } : {}) },
    },
    json,
  );
  return Errors.exit(ExitCode.usage);
}

export default hook;
