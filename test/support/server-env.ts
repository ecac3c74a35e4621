/**
 * The configuration `kelsingra server` would load from an environment, without starting it:
 * oclif fills each flag from its own variable (the `env:` of commands/server.ts) when the flag
 * is not given; the flags layer and the environment's lists and families then go to the same
 * loader the command uses.
 */
import Server from '../../commands/server.js';
import { loadServerConfig } from '../../server/config/config.js';
import { flagsLayer, type ServerFlagValues } from '../../server/config/flags-layer.js';

/** The flags oclif would take from `env` alone, by flag name. */
export function envFlags(env: NodeJS.ProcessEnv): ServerFlagValues {
  const out: ServerFlagValues = {};
  for (const [name, flag] of Object.entries(Server.flags) as [string, { env?: string }][]) {
    const value = flag.env ? env[flag.env] : undefined;
    if (value) out[name] = value;
  }
  return out;
}

/** As `kelsingra server [flags]` would configure itself in `env`. */
export function serverConfigFrom(
  env: NodeJS.ProcessEnv,
  flags: ServerFlagValues = {},
  configPath = env.KELSINGRA_CONFIG,
) {
  return loadServerConfig({ configPath, env, flags: flagsLayer({ ...envFlags(env), ...flags }) });
}
