/**
 * The `ssh -R` baseline: a throwaway sshd on 127.0.0.1 (its own host key, one authorised user
 * key, both made here with ssh-keygen in a temp dir) and `ssh -N -R` from the current user,
 * forwarding a port on the sshd side to a local service. It is what a developer without
 * Kelsingra would reach for, and the tunnel's speed goals are stated against it.
 *
 * run.ts installs sshd, ssh and ssh-keygen (openssh-server, openssh-client) as it installs wrk.
 */
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { freePort, log, onCleanup, start, waitHttp, which } from './lib.ts';

const SSHD = ['/usr/sbin/sshd', '/usr/local/sbin/sshd'].find((p) => existsSync(p)) ?? which('sshd');

function keygen(file: string) {
  const r = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'kelsingra-bench', '-f', file], {
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`ssh-keygen failed: ${r.stderr}`);
}

/** Pids whose parent is `pid` (from /proc). */
function childPids(pid: number) {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(d));
    } catch {}
  }
  return out;
}

/**
 * Starts sshd and `ssh -R` in `workDir`, forwarding a fresh 127.0.0.1 port to
 * 127.0.0.1:`localPort`; resolves once a request through it gets `check`'s answer. Returns
 * the forwarded URL and the pids that carry the traffic: `server` is sshd's per-connection
 * process, `client` the ssh client.
 */
export async function startSshReverse(
  workDir: string,
  localPort: number,
  {
    path = '/',
    headers = {},
    check,
  }: {
    path?: string;
    headers?: Record<string, string>;
    check?: Parameters<typeof waitHttp>[2];
  } = {},
) {
  // A directory of its own: a run may start several (one per benchmark).
  const dir = mkdtempSync(join(workDir, 'ssh-'));
  keygen(join(dir, 'host_key'));
  keygen(join(dir, 'user_key'));
  writeFileSync(join(dir, 'authorized_keys'), readFileSync(join(dir, 'user_key.pub')));
  // As root, sshd insists on its privilege-separation directory; a container without a running
  // sshd has none. It is empty and is removed again if this made it.
  const root = process.getuid?.() === 0;
  if (root && !existsSync('/run/sshd')) {
    mkdirSync('/run/sshd', { mode: 0o755 });
    onCleanup(() => rmSync('/run/sshd', { recursive: true, force: true }));
  }
  const sshPort = await freePort();
  const forwardPort = await freePort();
  const config = join(dir, 'sshd_config');
  writeFileSync(
    config,
    `Port ${sshPort}
ListenAddress 127.0.0.1
HostKey ${join(dir, 'host_key')}
PidFile ${join(dir, 'sshd.pid')}
AuthorizedKeysFile ${join(dir, 'authorized_keys')}
PermitRootLogin ${root ? 'yes' : 'no'}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
GatewayPorts no
PermitTTY no
X11Forwarding no
`,
  );
  const sshd = await start('sshd', SSHD, ['-D', '-e', '-f', config], { ready: /Server listening/ });
  const user = os.userInfo().username;
  const ssh = await start('ssh -R', 'ssh', [
    '-N',
    '-T',
    '-i',
    join(dir, 'user_key'),
    '-p',
    String(sshPort),
    '-o',
    'BatchMode=yes',
    '-o',
    'StrictHostKeyChecking=no',
    '-o',
    `UserKnownHostsFile=${join(dir, 'known_hosts')}`,
    '-o',
    'ExitOnForwardFailure=yes',
    '-o',
    'ServerAliveInterval=0',
    '-R',
    `127.0.0.1:${forwardPort}:127.0.0.1:${localPort}`,
    `${user}@127.0.0.1`,
  ]);
  const url = `http://127.0.0.1:${forwardPort}`;
  try {
    await waitHttp(`${url}${path}`, headers, check ?? ((r) => r.status === 200), 'ssh -R forward', 20_000);
  } catch (err) {
    throw new Error(
      `${(err as Error).message}\n--- sshd:\n${sshd.output().slice(-1500)}\n--- ssh:\n${ssh.output().slice(-1500)}`,
    );
  }
  // sshd forks a monitor per connection, and the monitor the unprivileged process that carries
  // the channels once the user is in: the deepest descendant is the one doing the work.
  let server = sshd.pid;
  for (let kids = childPids(server); kids.length; kids = childPids(server)) server = Math.max(...kids);
  log(`  ssh -R: sshd pid ${sshd.pid} (session ${server}), ssh pid ${ssh.pid}, default cipher`);
  return { url, pids: { server, client: ssh.pid } };
}
