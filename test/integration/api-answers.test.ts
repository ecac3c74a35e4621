/**
 * The CLI checks what the control port answers against the REST schemas: an answer of the
 * wrong shape (another release, or another service on that port) is a clear error with a
 * hint, never a crash deep in a command or a wrong figure printed as if it were right.
 */
import type http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeServer, listen, run, tempDir } from '../support/helpers.js';

describe('answers of the control port the CLI does not understand', () => {
  let server: { server: http.Server; url: string };
  beforeAll(async () => {
    server = await listen((req, res) => {
      res.setHeader('content-type', 'application/json');
      if (req.url === '/status') res.end(JSON.stringify({ serverId: 42, version: '9.9.9' }));
      else if (req.url === '/v1/intercepts') res.end(JSON.stringify([{ id: 'icp_1', service: 'billing' }]));
      else res.end('<html>a dev portal</html>');
    });
  });
  afterAll(() => closeServer(server));

  const env = () => ({
    KELSINGRA_SERVER: server.url,
    KELSINGRA_TOKEN: 'dev-token',
    KELSINGRA_CONFIG_DIR: tempDir('kelsingra-client-'),
  });

  it('status: names the fields that do not fit and says to run the same release on both sides', async () => {
    const r = await run(['status'], env());
    expect(r.exitCode).toBe(6);
    expect(r.stderr).toContain(`${server.url} answered GET /status with JSON this CLI does not understand`);
    expect(r.stderr).toContain('serverId');
    expect(r.stderr).toMatch(/same release on both sides/);
  });

  it('list --json: prints no half-read intercepts, only the error', async () => {
    const r = await run(['list', '--json'], env());
    expect(r.exitCode).toBe(6);
    expect(r.stdout).not.toContain('icp_1');
    expect(r.stdout + r.stderr).toContain('does not understand');
  });

  it('an answer that is not JSON at all still says which port to point at', async () => {
    const r = await run(['leave', 'icp_1'], env());
    expect(r.exitCode).toBe(6);
    expect(r.stderr).toContain('not Kelsingra JSON');
  });
});
