/**
 * Node versions: the CLI's own (package.json `engines`), and that of a `-- cmd` child, whose
 * Node honours HTTP_PROXY only from 24 on (NODE_USE_ENV_PROXY). Both are warnings, never
 * refusals: an older Node mostly works, and the user should know where it does not.
 */
import { basename } from 'node:path';
import { PACKAGE } from './version.js';

/** The first Node major whose fetch and http honour HTTP_PROXY with NODE_USE_ENV_PROXY=1. */
export const ENV_PROXY_MAJOR = 24;

/** Commands that run their script on the `node` found on PATH. */
const NODE_LAUNCHERS = new Set(['node', 'npm', 'npx', 'pnpm', 'yarn', 'tsx', 'ts-node', 'nodemon', 'vite']);

export function majorOf(version: string): number | undefined {
  const m = /^v?(\d+)\./.exec(version.trim());
  return m ? Number(m[1]) : undefined;
}

/** The lowest major an `engines.node` range such as `>=24 <25` allows; undefined if it names none. */
export function engineMinimum(range: string): number | undefined {
  const m = />=\s*v?(\d+)/.exec(range) ?? /\^\s*v?(\d+)/.exec(range);
  return m ? Number(m[1]) : undefined;
}

function enginesRange(): string | undefined {
  return PACKAGE.engines?.node;
}

/** The warning for a CLI run on a Node older than `engines`, or undefined. */
export function cliNodeWarning(
  version = process.version,
  execPath = process.execPath,
  range = enginesRange(),
): string | undefined {
  const min = range ? engineMinimum(range) : undefined;
  const major = majorOf(version);
  if (min === undefined || major === undefined || major >= min) return undefined;
  return `Warning: kelsingra runs on Node ${version} (${execPath}) but needs Node ${range}: it is built and tested for that range only.
Hint: install Node ${min} (e.g. nvm install ${min}), or run it as npm run kelsingra -- <args>, which uses the Node the project pins.
`;
}

/**
 * For a `-- cmd` run with the gateway: the Node that `cmd` runs on (the one on its PATH) if that
 * is older than 24, when it silently ignores HTTP_PROXY. Undefined when all is well or `cmd`
 * is not a Node launcher.
 */
export async function childNodeWarning(
  command: readonly string[],
  env: NodeJS.ProcessEnv,
  gateway: string,
): Promise<string | undefined> {
  const launcher = command[0] ? basename(command[0]) : '';
  if (!NODE_LAUNCHERS.has(launcher)) return undefined;
  // `node` itself may be given as a path; the others find node on PATH.
  const node = launcher === 'node' ? (command[0] as string) : 'node';
  const { execa } = await import('execa');
  const r = await execa(node, ['--version'], { env, reject: false, timeout: 5_000 });
  const major = r.exitCode === 0 ? majorOf(String(r.stdout)) : undefined;
  if (major === undefined || major >= ENV_PROXY_MAJOR) return undefined;
  return `Warning: ${command.join(' ')} runs on Node ${String(r.stdout).trim()}, which ignores HTTP_PROXY and NODE_USE_ENV_PROXY (Node ${ENV_PROXY_MAJOR} honours them): its calls to dev hosts will not go through the gateway and reach no tenant routing.
Hint: run it on Node ${ENV_PROXY_MAJOR}, or call ${gateway}/<service>/<path> (KELSINGRA_GATEWAY) instead of the dev host names.
`;
}
