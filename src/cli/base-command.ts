/**
 * What every command shares: `--json`, and turning errors into a clear message with a hint
 * on stderr and the documented exit code (src/shared/errors.ts, README "Exit codes").
 */
import { Command, Errors, Flags } from '@oclif/core';
import { ExitCode, KelsingraError } from '../shared/errors.js';
import { closestCommand } from './closest.js';
import { printError, wantsJson } from './print-error.js';
import { type Spinner, startSpinner } from './spinner.js';

/** `--json` for commands that stream: one JSON value per line (NDJSON), not one document. */
export function ndjsonFlag(
  description = 'print JSON on stdout and nothing else: one JSON object per line (NDJSON)',
) {
  return { json: Flags.boolean({ description, default: false }) };
}

export abstract class BaseCommand extends Command {
  static override baseFlags = {
    json: Flags.boolean({
      description: 'print JSON on stdout (one document) and nothing else',
      default: false,
    }),
  };

  protected printJson(value: unknown): void {
    process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  }

  /** True when the user asked for JSON, even before (or when) flags failed to parse. */
  protected get jsonRequested(): boolean {
    return wantsJson(this.argv);
  }

  /** Runs a slow step with a spinner on stderr (only in a terminal, never with --json). */
  protected async spin<T>(text: string, work: Promise<T>): Promise<T> {
    const spinner: Spinner = startSpinner(text, { enabled: !this.jsonRequested });
    try {
      return await work;
    } finally {
      spinner.stop();
    }
  }

  protected override async catch(
    err: Error & { exitCode?: number; oclif?: { exit?: number } },
  ): Promise<unknown> {
    // `this.exit(code)` throws an ExitError on purpose: let it through untouched.
    if (err instanceof Errors.ExitError) throw err;
    const e = this.explain(err);
    printError(e, this.jsonRequested);
    if (process.env.KELSINGRA_DEBUG && err.stack) process.stderr.write(`${err.stack}\n`);
    return this.exit(e.exitCode);
  }

  /** The command's flag nearest to a mistyped one (`--prot` → `--port`), from oclif's message. */
  private flagGuess(message: string): string | undefined {
    const typed = /Nonexistent flags?: (--?[\w-]+)/.exec(message)?.[1];
    if (!typed) return undefined;
    const ctor = this.constructor as typeof Command;
    const names = Object.entries({ ...ctor.baseFlags, ...ctor.flags })
      .filter(([, f]) => !f.hidden)
      .map(([name]) => `--${name}`);
    return closestCommand(typed.startsWith('--') ? typed : `-${typed}`, names);
  }

  /**
   * A bad value oclif read from a flag's environment variable (the flag itself was not given):
   * the message should name the variable the user set, not a flag they never typed.
   */
  private envOfBadFlag(message: string): { flag: string; env: string } | undefined {
    const m = /^(?:Parsing --([\w-]+)|Expected --([\w-]+)=)/.exec(message);
    const flag = m?.[1] ?? m?.[2];
    if (!flag) return undefined;
    const ctor = this.constructor as typeof Command;
    const env = ({ ...ctor.baseFlags, ...ctor.flags } as Record<string, { env?: string }>)[flag]?.env;
    if (!env || !process.env[env]) return undefined;
    const given = this.argv.some((a) => a === `--${flag}` || a.startsWith(`--${flag}=`));
    return given ? undefined : { flag, env };
  }

  private explain(err: Error & { oclif?: { exit?: number }; parse?: unknown }): {
    message: string;
    hint?: string;
    exitCode: number;
    details?: Record<string, unknown>;
  } {
    if (err instanceof KelsingraError)
      return { message: err.message, hint: err.hint, exitCode: err.exitCode, details: err.details };
    const help = `${this.config.bin} ${this.id ? `${this.id.replaceAll(':', ' ')} ` : ''}--help`;
    const isParseError = err.parse !== undefined;
    if (err instanceof Errors.CLIError && (isParseError || err.oclif?.exit === ExitCode.usage)) {
      // oclif's own parse errors (unknown flag, missing argument, bad value): a usage error.
      const message = oneLine(
        withoutMultipleNote(err.message.replace(/\n*See more help with --help\s*$/, '')),
      );
      const fromEnv = this.envOfBadFlag(message);
      if (fromEnv)
        return {
          message: message
            .replace(`Parsing --${fromEnv.flag}`, `${fromEnv.env} (the value of --${fromEnv.flag})`)
            .replace(
              /^Expected --[\w-]+=(\S*)/,
              `Expected ${fromEnv.env}=$1 (the value of --${fromEnv.flag})`,
            ),
          hint: `fix or unset ${fromEnv.env}, or pass --${fromEnv.flag}, which wins over it`,
          exitCode: ExitCode.config,
        };
      const guess = this.flagGuess(message);
      return {
        message,
        hint: guess
          ? `did you mean ${guess}? ${help} shows the usage`
          : `${help} shows the usage and examples`,
        exitCode: ExitCode.usage,
      };
    }
    if (err instanceof Errors.CLIError) {
      return {
        message: err.message,
        hint: `${help} shows the usage and examples`,
        exitCode: err.oclif?.exit ?? ExitCode.failure,
      };
    }
    return {
      message: err.message || String(err),
      hint: 'this is unexpected; run again with KELSINGRA_DEBUG=1 for the stack trace and report it',
      exitCode: ExitCode.failure,
    };
  }
}

/** oclif's multi-line parse messages as one line: "Missing required flag server; Missing required flag token". */
function oneLine(message: string): string {
  const lines = message
    .split('\n')
    .map((l) => l.trim().replace(/\s{2,}/g, ' — '))
    .filter((l) => l && !/^The following errors? occurred:$/.test(l));
  const [first = '', ...rest] = lines;
  if (first.endsWith(':')) return `${first} ${rest.join('; ')}`;
  return first.startsWith('Parsing ') ? `${first}: ${rest.join('; ')}` : [first, ...rest].join('; ');
}

/**
 * oclif appends a note about flags that take several values to a missing-argument error; it is
 * about how oclif parses, not what went wrong, and buries the one thing the user needs.
 */
function withoutMultipleNote(message: string): string {
  return message
    .replace(
      /\n*\s*Note: [^\n]*allow multiple values[^\n]*(\n[^\n]*Alternatively, you can use "--"[^\n]*)?/g,
      '',
    )
    .replace(/\n*\s*Alternatively, you can use "--" to signify[^\n]*/g, '');
}
