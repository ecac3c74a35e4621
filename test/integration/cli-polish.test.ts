/**
 * The CLI around the commands: "did you mean", --version, --help with examples, usage
 * errors (exit 2, JSON on stderr with --json), demo --json, shell completion, the spinner.
 * Real processes, no TTY (as in CI): nothing may wait for an answer.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { startSpinner } from '../../src/cli/spinner.js';
import { CLOSED_PORT, cli, ROOT, tempDir } from '../support/helpers.js';

const EXIT = { usage: 2, unreachable: 6 } as const;
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
// Short: a prompt waiting for an answer would show up as a timeout, not as a hung suite.
const QUICK = { timeout: 20_000 };
const ESC = '\u001b';
const noServer = { KELSINGRA_CONFIG_DIR: tempDir('kelsingra-client-') };

/** stderr of a failed `--json` run: one JSON object. */
function jsonError(stderr: unknown): { error: string; hint?: string; exitCode: number; suggestion?: string } {
  const text = String(stderr).trim();
  expect(text.split('\n')).toHaveLength(1);
  return JSON.parse(text);
}

describe('did you mean', () => {
  it('a mistyped command names the right one, exits 2, and does not wait for an answer', async () => {
    const r = await cli(['interecpt', 'billing', '--tenant', 't1'], noServer, QUICK);
    expect(r.timedOut).toBe(false);
    expect(r.exitCode).toBe(EXIT.usage);
    expect(r.stderr).toMatch(/interecpt is not a kelsingra command; did you mean intercept\?/);
    expect(r.stderr).toMatch(/Hint: kelsingra intercept --help/);
    expect(r.stdout).toBe('');

    const list = await cli(['lsit'], noServer, QUICK);
    expect(list.exitCode).toBe(EXIT.usage);
    expect(list.stderr).toMatch(/did you mean list\?/);
  });

  it('with --json the error is one JSON object on stderr naming the suggestion', async () => {
    const r = await cli(['stauts', '--json'], noServer, QUICK);
    expect(r.exitCode).toBe(EXIT.usage);
    expect(r.stdout).toBe('');
    const err = jsonError(r.stderr);
    expect(err).toMatchObject({ suggestion: 'status', exitCode: EXIT.usage });
  });

  it('something close to nothing gets no suggestion, only where to look', async () => {
    const r = await cli(['frobnicate'], noServer, QUICK);
    expect(r.exitCode).toBe(EXIT.usage);
    expect(r.stderr).not.toMatch(/did you mean/);
    expect(r.stderr).toMatch(/Hint: kelsingra --help lists every command/);
  });

  it('help for a mistyped command suggests too; `help <command>` shows that command', async () => {
    const typo = await cli(['lgos', '--help'], noServer, QUICK);
    expect(typo.exitCode).toBe(EXIT.usage);
    expect(typo.stderr).toMatch(/did you mean logs\?/);
    const help = await cli(['help', 'logs'], noServer, QUICK);
    expect(help.exitCode, String(help.stderr)).toBe(0);
    expect(help.stdout).toMatch(/\$ kelsingra logs TARGET/);
  });
});

describe('version and help', () => {
  it('--version and -v print the version', async () => {
    for (const flag of ['--version', '-v']) {
      const r = await cli([flag], noServer, QUICK);
      expect(r.exitCode).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^kelsingra/${VERSION.replaceAll('.', '\\.')} `));
    }
  });

  it('--help lists every command with a summary, and each command has examples', async () => {
    const root = await cli(['--help'], noServer, QUICK);
    expect(root.exitCode).toBe(0);
    const section = String(root.stdout).split(/^COMMANDS$/m)[1] ?? '';
    const commands = [...section.matchAll(/^ {2}(\S+) {2,}\S/gm)].map((m) => m[1] as string);
    for (const c of [
      'connect',
      'intercept',
      'list',
      'leave',
      'status',
      'logs',
      'server',
      'demo',
      'autocomplete',
    ]) {
      expect(commands).toContain(c);
    }
    for (const c of commands) {
      const r = await cli([c, '--help'], noServer, QUICK);
      expect(r.exitCode, `${c} --help: ${r.stderr}`).toBe(0);
      expect(r.stdout, `${c} --help`).toMatch(/^USAGE$/m);
      expect(r.stdout, `${c} --help has no examples`).toMatch(/^EXAMPLES\n {2}\$ kelsingra /m);
    }
  });
});

describe('usage errors exit 2 and say what to do next', () => {
  it('an unknown flag', async () => {
    const r = await cli(['list', '--bogus'], noServer, QUICK);
    expect(r.exitCode).toBe(EXIT.usage);
    expect(r.stderr).toMatch(/^Error: Nonexistent flag: --bogus$/m);
    expect(r.stderr).toMatch(/^Hint: kelsingra list --help shows the usage and examples$/m);
    expect(r.stdout).toBe('');
  });

  it('an unknown flag with --json: one JSON object on stderr, nothing on stdout', async () => {
    const r = await cli(['status', '--bogus', '--json'], noServer, QUICK);
    expect(r.exitCode).toBe(EXIT.usage);
    expect(r.stdout).toBe('');
    const err = jsonError(r.stderr);
    expect(err.exitCode).toBe(EXIT.usage);
    expect(err.error).toMatch(/--bogus/);
    expect(err.hint).toMatch(/kelsingra status --help/);
  });

  it('a missing argument, a missing flag, a bad flag value', async () => {
    const logs = await cli(['logs', '--json'], noServer, QUICK);
    expect(logs.exitCode).toBe(EXIT.usage);
    expect(jsonError(logs.stderr).error).toMatch(/Missing 1 required arg: target/);
    const connect = await cli(['connect'], noServer, QUICK);
    expect(connect.exitCode).toBe(EXIT.usage);
    expect(connect.stderr).toMatch(/Missing required flag server; Missing required flag token/);
    const port = await cli(['intercept', 'billing', '--tenant', 't1', '--port', 'abc'], noServer, QUICK);
    expect(port.exitCode).toBe(EXIT.usage);
    expect(port.stderr).toMatch(/Expected an integer but received: abc/);
    expect(port.stderr).toMatch(/Hint: kelsingra intercept --help/);
  });

  it('a mistyped flag gets "did you mean"; a missing service says only that', async () => {
    const prot = await cli(['intercept', 'billing', '--tenant', 't1', '--prot', '3000'], noServer, QUICK);
    expect(prot.exitCode).toBe(EXIT.usage);
    expect(prot.stderr).toMatch(/^Error: Nonexistent flag: --prot$/m);
    expect(prot.stderr).toMatch(/^Hint: did you mean --port\? kelsingra intercept --help shows the usage$/m);
    const json = await cli(['status', '--jsno'], noServer, QUICK);
    expect(json.stderr).toMatch(/did you mean --json\?/);
    const asJson = await cli(['intercept', 'billing', '-t', 't1', '--prot', '1', '--json'], noServer, QUICK);
    expect(jsonError(asJson.stderr).hint).toMatch(/^did you mean --port\?/);

    const missing = await cli(['intercept', '--tenant', 't1', '--port', '3000'], noServer, QUICK);
    expect(missing.exitCode).toBe(EXIT.usage);
    expect(missing.stderr).toMatch(/^Error: Missing 1 required arg: service/m);
    expect(missing.stderr).not.toMatch(/multiple values|Alternatively/);
  });

  it('intercept --help shows one SERVICE; streaming commands describe --json as NDJSON', async () => {
    const help = String((await cli(['intercept', '--help'], noServer, QUICK)).stdout);
    expect(help).not.toContain('SERVICE...');
    expect(help).toMatch(/\$ kelsingra intercept SERVICE \(-t <tenant> \| -k <key>\) -p <port>/);
    expect(help).toMatch(/--json\s+print JSON on stdout and nothing else: one event per\s+line \(NDJSON\)/);
    for (const command of ['logs', 'gateway', 'dashboard'])
      expect(String((await cli([command, '--help'], noServer, QUICK)).stdout), command).toMatch(
        /--json\s+[^\n]*\n?[^\n]*NDJSON/,
      );
    expect(String((await cli(['list', '--help'], noServer, QUICK)).stdout)).toMatch(/one document/);
  });

  it('leave checks its arguments before looking for a server', async () => {
    const both = await cli(['leave', '--all', 'billing'], noServer, QUICK);
    expect(both.exitCode).toBe(EXIT.usage);
    expect(both.stderr).toMatch(/--all takes no service/);
    expect(both.stderr).toMatch(/Hint: kelsingra leave <service> --tenant <t>/);
    const none = await cli(['leave', '--json'], noServer, QUICK);
    expect(none.exitCode).toBe(EXIT.usage);
    expect(jsonError(none.stderr).error).toBe('say which intercept to end');
  });

  it('no server configured, and a server that is not there: a hint, no spinner or colour in a pipe', async () => {
    const unset = await cli(['list'], noServer, QUICK);
    expect(unset.exitCode).toBe(EXIT.usage);
    expect(unset.stderr).toMatch(/Hint: run kelsingra connect/);
    const port = CLOSED_PORT;
    for (const command of ['list', 'status', 'logs billing --tenant t1', 'leave --all']) {
      const r = await cli(
        command.split(' '),
        { ...noServer, KELSINGRA_SERVER: `http://127.0.0.1:${port}`, KELSINGRA_TOKEN: 'x' },
        QUICK,
      );
      expect(r.exitCode, command).toBe(EXIT.unreachable);
      expect(r.stderr).toMatch(/^Error: cannot reach the Kelsingra server/m);
      expect(r.stderr).toMatch(/^Hint: check that the server agent is running/m);
      // A spinner in a pipe would leave frames and control codes in logs.
      expect(String(r.stderr)).not.toContain(ESC);
      expect(String(r.stderr)).not.toMatch(/[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]/);
    }
  });
});

describe('kelsingra demo --json', () => {
  it('prints one JSON document saying where each request went', async () => {
    const r = await cli(['demo', '--json'], noServer);
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const doc = JSON.parse(String(r.stdout)) as {
      ok: boolean;
      intercept: { id: string; service: string; tenant: string };
      requests: {
        step: string;
        service: string;
        tenant: string;
        status: number;
        servedBy: string;
        ok: boolean;
      }[];
    };
    expect(doc.ok).toBe(true);
    expect(doc.intercept).toMatchObject({ service: 'billing', tenant: 't1' });
    expect(doc.intercept.id).toMatch(/^icp_/);
    const where = doc.requests.map((q) => `${q.step}: ${q.service}/${q.tenant} ${q.status} ${q.servedBy}`);
    expect(where).toEqual([
      'while intercepted: billing/t1 200 billing (your laptop)',
      'while intercepted: billing/t2 200 billing (dev environment)',
      'while intercepted: orders/t1 200 orders (dev environment)',
      'while intercepted: billing/t1 200 billing (your laptop)',
      'after leave: billing/t1 200 billing (dev environment)',
    ]);
  });
});

describe('shell completion', () => {
  it('autocomplete bash prints setup instructions, offline, and the completion completes', async () => {
    const cache = tempDir('kelsingra-cache-');
    const env = {
      ...noServer,
      KELSINGRA_CACHE_DIR: cache,
      HTTP_PROXY: 'http://127.0.0.1:1',
      HTTPS_PROXY: 'http://127.0.0.1:1',
    };
    const r = await cli(['autocomplete', 'bash'], env, QUICK);
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(r.stdout).toContain('kelsingra autocomplete script bash');
    const script = await cli(['autocomplete', 'script', 'bash'], env, QUICK);
    expect(script.exitCode).toBe(0);
    expect(script.stdout).toContain('KELSINGRA_AC_BASH_SETUP_PATH');

    const functions = join(cache, 'autocomplete', 'functions', 'bash', 'kelsingra.bash');
    expect(existsSync(functions)).toBe(true);
    const complete = async (words: string[]) => {
      const line = words.join(' ');
      const { stdout } = await promisify(execFile)('bash', [
        '-c',
        `source "$1"; COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; COMP_LINE='${line}'; _kelsingra_autocomplete; echo "\${COMPREPLY[@]}"`,
        'bash',
        functions,
      ]);
      return stdout.trim();
    };
    expect(await complete(['kelsingra', 'lo'])).toBe('logs');
    expect(await complete(['kelsingra', 'logs', '--fo'])).toBe('--follow');
  });
});

describe('spinner', () => {
  function fakeStream(isTTY: boolean) {
    const writes: string[] = [];
    const stream = { isTTY, write: (s: string) => writes.push(s) > 0 } as unknown as NodeJS.WriteStream;
    return { stream, writes };
  }
  const withoutCi = async (fn: () => Promise<void>) => {
    const ci = process.env.CI;
    delete process.env.CI;
    try {
      await fn();
    } finally {
      if (ci !== undefined) process.env.CI = ci;
    }
  };

  it('draws on a terminal after a short delay and clears its line when stopped', () =>
    withoutCi(async () => {
      const { stream, writes } = fakeStream(true);
      const spinner = startSpinner('Connecting', { stream });
      await new Promise((r) => setTimeout(r, 600));
      spinner.stop();
      expect(writes.length).toBeGreaterThan(1);
      expect(writes[0]?.startsWith(`\r${ESC}[2K`)).toBe(true);
      expect(writes[0]).toMatch(/^\r.+\[2K. Connecting$/);
      expect(writes.at(-1)).toBe(`\r${ESC}[2K`);
      const count = writes.length;
      await new Promise((r) => setTimeout(r, 200));
      expect(writes.length).toBe(count);
    }));

  it('draws nothing for a fast step, in a pipe, or when disabled (--json)', () =>
    withoutCi(async () => {
      const fast = fakeStream(true);
      startSpinner('fast', { stream: fast.stream }).stop();
      const pipe = fakeStream(false);
      const inPipe = startSpinner('pipe', { stream: pipe.stream });
      const json = fakeStream(true);
      const disabled = startSpinner('json', { stream: json.stream, enabled: false });
      await new Promise((r) => setTimeout(r, 400));
      inPipe.stop();
      disabled.stop();
      expect([fast.writes, pipe.writes, json.writes]).toEqual([[], [], []]);
    }));
});
