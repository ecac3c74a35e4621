/**
 * Node versions: the CLI warns (once, on stderr) when it runs on a Node older than its
 * `engines` range, and a `-- cmd` child on a Node that ignores HTTP_PROXY gets a warning
 * naming the gateway URL to call instead. Real CLI processes; the child's old Node is a
 * wrapper that reports an old version and runs the real one.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { cliNodeWarning, engineMinimum, majorOf } from '../../src/shared/node-version.js';
import {
  BIN,
  cleanupsAfterEach,
  cli,
  clientEnv,
  startServerProcess,
  tempDir,
  textService,
} from '../support/helpers.js';

const TOKEN = 'node-version-test-token-5e1a';
const cleanups = cleanupsAfterEach();

describe('the CLI on an old Node', () => {
  it('reads the engines range and compares majors', () => {
    expect(engineMinimum('>=24 <25')).toBe(24);
    expect(engineMinimum('^22.3.0')).toBe(22);
    expect(majorOf('v20.20.2')).toBe(20);
    expect(cliNodeWarning('v20.20.2', '/usr/bin/node', '>=24 <25')).toMatch(
      /runs on Node v20\.20\.2 \(\/usr\/bin\/node\) but needs Node >=24 <25/,
    );
    expect(cliNodeWarning('v24.1.0', '/x/node', '>=24 <25')).toBeUndefined();
    // Newer than the range is not "older": no warning.
    expect(cliNodeWarning('v25.0.0', '/x/node', '>=24 <25')).toBeUndefined();
  });

  it('warns once on stderr under the system Node when it is older; not at all on Node 24', async () => {
    const onPinned = await cli(['--version']);
    expect(onPinned.exitCode).toBe(0);
    expect(String(onPinned.stderr)).not.toMatch(/Warning/);

    // Debian's nodejs, as `npm link` would run it (.ci/run installs it).
    expect(existsSync('/usr/bin/node'), 'Debian nodejs at /usr/bin/node').toBe(true);
    const version = execFileSync('/usr/bin/node', ['--version'], { encoding: 'utf8' }).trim();
    const old = execa('/usr/bin/node', [BIN, 'list', '--json'], {
      reject: false,
      env: { NO_COLOR: '1', KELSINGRA_CONFIG_DIR: tempDir(), KELSINGRA_SERVER: 'http://127.0.0.1:1' },
    });
    const r = await old;
    const warnings = String(r.stderr).match(/Warning: kelsingra runs on Node/g) ?? [];
    expect(warnings.length, String(r.stderr)).toBe((majorOf(version) ?? 0) < 24 ? 1 : 0);
    expect(String(r.stdout)).not.toMatch(/Warning/);
  });
});

describe('a -- cmd child on a Node that ignores HTTP_PROXY', () => {
  it('is warned about, with the gateway URL to call instead; on Node 24 it is not', async () => {
    const upstream = await textService('upstream', cleanups);
    const local = await textService('local', cleanups);
    const server = await startServerProcess(['--service', `billing=${upstream.url}`, '--token', TOKEN]);
    cleanups.push(() => server.stop());
    // A `node` that says it is 20 and runs the real one: PATH puts it first for the child.
    const bin = tempDir('kelsingra-old-node-');
    const wrapper = join(bin, 'node');
    writeFileSync(
      wrapper,
      `#!/bin/sh\nif [ "$1" = "--version" ]; then echo v20.11.1; exit 0; fi\nexec ${process.execPath} "$@"\n`,
    );
    chmodSync(wrapper, 0o755);
    const run = (path: string) =>
      cli(
        [
          'intercept',
          'billing',
          '-t',
          't1',
          '-p',
          String(local.port),
          '--',
          'node',
          '-e',
          'setTimeout(()=>{},300)',
        ],
        { ...clientEnv(server, TOKEN), PATH: path },
      );
    const old = await run(`${bin}:${process.env.PATH}`);
    expect(old.exitCode, String(old.stderr)).toBe(0);
    const gateway = /gateway: (http:\/\/127\.0\.0\.1:\d+)/.exec(String(old.stdout))?.[1];
    expect(gateway, String(old.stdout)).toBeDefined();
    expect(String(old.stderr)).toContain('runs on Node v20.11.1, which ignores HTTP_PROXY');
    expect(String(old.stderr)).toContain(`${gateway}/<service>/<path>`);

    const pinned = join(process.execPath, '..');
    const current = await run(`${pinned}:${process.env.PATH}`);
    expect(current.exitCode, String(current.stderr)).toBe(0);
    expect(String(current.stderr)).not.toMatch(/ignores HTTP_PROXY/);
  }, 90_000);
});
