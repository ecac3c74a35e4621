/**
 * A real foreground `kelsingra intercept` in a real terminal: tmux runs the built CLI on a
 * pseudo-terminal, the test sends requests through the server agent's data port, reads the
 * screen (capture-pane) and presses keys (send-keys). Needs tmux (.ci/run installs it).
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import type http from 'node:http';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  BIN,
  cli,
  clientEnv,
  listen,
  type ServerProcess,
  startServerProcess,
  tempDir,
  viaProxy,
  waitFor,
} from '../support/helpers.js';

const TOKEN = 'terminal-test-secret-7c2d';
const SOCKET = `kelsingra-test-${process.pid}`;
const tmux = (...args: string[]) => execa('tmux', ['-L', SOCKET, ...args], { reject: false });

let server: ServerProcess;
let local: { server: http.Server; port: number };
let upstream: { server: http.Server; url: string };
const work = tempDir('kelsingra-terminal-');

beforeAll(async () => {
  const version = await execa('tmux', ['-V'], { reject: false }).catch(() => undefined);
  if (version?.exitCode !== 0) {
    throw new Error(
      'tmux is not installed: this test drives the CLI in a terminal through tmux (apt-get install -y tmux; .ci/run does it)',
    );
  }
  local = await listen((req, res) => {
    req.resume();
    req.on('end', () => {
      const status = req.url?.startsWith('/fail') ? 503 : 200;
      res.writeHead(status, { 'content-type': 'text/plain', 'set-cookie': 'sid=super-secret-cookie' });
      res.end(`local ${req.method} ${req.url}`);
    });
  });
  upstream = await listen((req, res) => {
    req.resume();
    res.end(`upstream ${req.method} ${req.url}`);
  });
  server = await startServerProcess(['--service', `billing=${upstream.url}`, '--token', TOKEN]);
});

afterEach(async () => {
  await tmux('kill-session', '-t', 'live');
});

afterAll(async () => {
  await tmux('kill-server');
  // tmux leaves its socket file behind.
  rmSync(join(process.env.TMUX_TMPDIR ?? '/tmp', `tmux-${process.getuid?.() ?? 0}`, SOCKET), { force: true });
  await server?.stop();
  for (const s of [local?.server, upstream?.server]) {
    s?.closeAllConnections();
    await new Promise((r) => (s ? s.close(r) : r(undefined)));
  }
});

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** Starts the CLI in a tmux session (120×40 unless told); its exit code lands in a file when it ends. */
async function startInTmux(args: string[], env: Record<string, string>, size = { x: 120, y: 40 }) {
  const exitFile = join(work, `exit-${Date.now()}`);
  // CI=0: Ink (is-in-ci) would otherwise print only the last frame when the suite runs in CI.
  const vars = Object.entries({ ...env, CI: '0', TERM: 'xterm-256color' }).map(
    ([k, v]) => `${k}=${quote(v)}`,
  );
  const command = `env ${vars.join(' ')} ${quote(process.execPath)} ${quote(BIN)} ${args.map(quote).join(' ')}; echo $? > ${quote(exitFile)}`;
  const started = await tmux(
    'new-session',
    '-d',
    '-s',
    'live',
    '-x',
    String(size.x),
    '-y',
    String(size.y),
    command,
  );
  expect(started.exitCode, String(started.stderr)).toBe(0);
  const screen = async () => String((await tmux('capture-pane', '-p', '-t', 'live', '-S', '-200')).stdout);
  const until = async (check: (s: string) => boolean, what: string, timeoutMs = 20_000) => {
    let last = '';
    await waitFor(
      async () => {
        last = await screen();
        return check(last);
      },
      timeoutMs,
      what,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\nscreen:\n${last}\nserver logs:\n${server.logs().slice(-2000)}`);
    });
    return last;
  };
  const exitCode = () => {
    try {
      return Number(readFileSync(exitFile, 'utf8').trim());
    } catch {
      return undefined;
    }
  };
  return { screen, until, exitCode, keys: (...keys: string[]) => tmux('send-keys', '-t', 'live', ...keys) };
}

const sessionGone = async () => (await tmux('has-session', '-t', 'live')).exitCode !== 0;

describe('the live request log in a terminal', () => {
  it('at 80×24 the status bar keeps the state (paused, tunnel) and truncates the counts', async () => {
    const env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice' });
    const term = await startInTmux(
      ['intercept', 'billing', '--tenant', 't1', '--port', String(local.port)],
      env,
      { x: 80, y: 24 },
    );
    await term.until((s) => s.includes('● connected'), 'the live view');
    await term.keys('p');
    const screen = await term.until((s) => s.includes('PAUSED'), 'paused');
    const bar = screen.split('\n').find((l) => l.includes('PAUSED')) ?? '';
    expect(bar.length).toBeLessThanOrEqual(80);
    expect(bar).toMatch(/^PAUSED \(0 waiting\) p resumes · ● connected · billing\/t1/);
    await term.keys('q');
    await waitFor(sessionGone, 20_000, 'the CLI to exit and the tmux session to end');
    expect(term.exitCode()).toBe(0);
  });

  it('shows requests as they come, details with masked secrets, and q leaves the intercept', async () => {
    const env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'alice' });
    const term = await startInTmux(
      ['intercept', 'billing', '--tenant', 't1', '--port', String(local.port)],
      env,
    );
    await term.until(
      (s) => s.includes('Intercepting billing for tenant t1') && s.includes('● connected'),
      'the live view',
    );
    expect(await term.screen()).toMatch(
      /● connected · billing\/t1 → :\d+ · 0 req\/s · 0 requests · 0 errors/,
    );

    const first = await viaProxy(server, 'billing', 't1', '/invoices/42', {
      headers: { authorization: 'Bearer tok-very-secret' },
    });
    expect(await first.text()).toBe('local GET /invoices/42');
    const second = await viaProxy(server, 'billing', 't1', '/fail/now', {
      method: 'POST',
      body: 'x'.repeat(100),
    });
    expect(second.status).toBe(503);
    await second.arrayBuffer();
    const screen = await term.until(
      (s) =>
        /GET\s+\/invoices\/42\s+200\s+[\d.]+ m?s/.test(s) &&
        /POST\s+\/fail\/now\s+503/.test(s) &&
        s.includes('1 error'),
      'both request lines and the error count',
    );
    expect(screen).toMatch(/2 requests · 1 error/);

    // ↑ ↑ selects the older request, enter opens its details, masked.
    await term.keys('Up');
    await term.until((s) => s.includes('recent requests'), 'the selection list');
    await term.keys('Up');
    await term.until((s) => /› \S+\s+GET\s+\/invoices\/42/.test(s), 'the first request selected');
    await term.keys('Enter');
    const details = await term.until((s) => s.includes('Request headers'), 'the details');
    expect(details).toContain('GET /invoices/42 → 200');
    expect(details).toContain('authorization: ***');
    expect(details).toContain('set-cookie: ***');
    expect(details).not.toContain('tok-very-secret');
    expect(details).not.toContain('super-secret-cookie');
    await term.keys('Escape');
    await term.keys('Escape');
    await term.until(
      (s) => !s.includes('recent requests') && !s.includes('Request headers'),
      'the panels closed',
    );

    // p pauses the view: traffic still flows, its line waits.
    await term.keys('p');
    await term.until((s) => s.includes('PAUSED'), 'paused');
    expect((await viaProxy(server, 'billing', 't1', '/during-pause')).status).toBe(200);
    await term.until((s) => s.includes('PAUSED (1 waiting)'), 'the buffered line counted');
    expect(await term.screen()).not.toContain('/during-pause');
    await term.keys('p');
    await term.until((s) => s.includes('/during-pause') && !s.includes('PAUSED'), 'resumed');

    await term.keys('q');
    await waitFor(sessionGone, 20_000, 'the CLI to exit and the tmux session to end');
    expect(term.exitCode()).toBe(0);
    const list = await cli(['list', '--json'], env);
    expect(JSON.parse(String(list.stdout))).toEqual([]);
    // Traffic falls back to the base service at once.
    expect(await (await viaProxy(server, 'billing', 't1', '/after')).text()).toBe('upstream GET /after');
  });

  it('Ctrl-C leaves with 130; the local command runs with its output above the view', async () => {
    const env = clientEnv(server, TOKEN, { KELSINGRA_HOLDER: 'bob' });
    const script = join(work, 'child.mjs');
    writeFileSync(script, "console.log('child ready on', process.env.PORT); setInterval(() => {}, 1000);\n");
    const term = await startInTmux(
      [
        'intercept',
        'billing',
        '--tenant',
        't2',
        '--port',
        String(local.port),
        '--',
        process.execPath,
        script,
      ],
      env,
    );
    await term.until(
      (s) => s.includes('● connected') && s.includes(`child ready on ${local.port}`),
      'the view and the child output',
    );
    expect((await viaProxy(server, 'billing', 't2', '/x')).status).toBe(200);
    await term.until((s) => /GET\s+\/x\s+200/.test(s), 'the request line');
    await term.keys('C-c');
    await waitFor(sessionGone, 20_000, 'the CLI to exit after Ctrl-C');
    // Ctrl-C is a key in raw mode; the CLI treats it as SIGINT would be: leave, exit 130.
    expect(term.exitCode()).toBe(130);
    const list = await cli(['list', '--json'], env);
    expect(JSON.parse(String(list.stdout))).toEqual([]);
  });
});
