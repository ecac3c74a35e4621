/**
 * Client settings: saved by `kelsingra connect` (conf), overridden by the environment so
 * scripts and tests can run isolated clients side by side.
 */
import os from 'node:os';
import { dirname } from 'node:path';
import Conf from 'conf';
import { ExitCode, KelsingraError } from '../../shared/errors.js';
import { trustCa } from './tls-trust.js';

interface Saved {
  server?: string;
  token?: string;
  /** PEM file of the CA that signed the server agent's certificate (a private CA). */
  ca?: string;
}

export interface ClientSettings {
  server: string;
  token: string;
  holder: string;
  configDir: string;
  /** The CA file trusted for the server, when it has a private one. */
  ca?: string;
}

function store(env: NodeJS.ProcessEnv): Conf<Saved> {
  return new Conf<Saved>({
    projectName: 'kelsingra',
    projectSuffix: '',
    cwd: env.KELSINGRA_CONFIG_DIR || undefined,
    // The file holds a token: readable by its owner only.
    configFileMode: 0o600,
  });
}

export function configDir(env: NodeJS.ProcessEnv = process.env): string {
  const path = store(env).path;
  return dirname(path);
}

export function saveSettings(values: Saved, env: NodeJS.ProcessEnv = process.env): string {
  const conf = store(env);
  if (values.server !== undefined) conf.set('server', values.server);
  if (values.token !== undefined) conf.set('token', values.token);
  // An empty CA forgets the saved one (a server that moved to a public certificate).
  if (values.ca === '') conf.delete('ca');
  else if (values.ca !== undefined) conf.set('ca', values.ca);
  return conf.path;
}

/** Who holds an intercept, as shown to anyone it conflicts with. */
export function holderName(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KELSINGRA_HOLDER) return env.KELSINGRA_HOLDER;
  let user = 'unknown';
  try {
    user = os.userInfo().username;
  } catch {
    // No passwd entry (some containers): the host name still tells people where to look.
  }
  return `${user}@${os.hostname()}`;
}

export function normaliseServerUrl(raw: string): string {
  const withScheme = /^[a-z]+:\/\//i.test(raw) ? raw : `http://${raw}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new KelsingraError(
      `"${raw}" is not a server URL`,
      ExitCode.usage,
      'use the control port URL, e.g. http://kelsingra.dev.example.com:7700',
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new KelsingraError(
      `server URL must be http:// or https://, not ${url.protocol}`,
      ExitCode.usage,
      'use the control port URL, e.g. http://kelsingra.dev.example.com:7700',
    );
  }
  return url.origin + url.pathname.replace(/\/+$/, '');
}

export function loadSettings(
  overrides: Partial<Saved> = {},
  env: NodeJS.ProcessEnv = process.env,
): ClientSettings {
  const conf = store(env);
  const server = overrides.server ?? env.KELSINGRA_SERVER ?? conf.get('server');
  const token = overrides.token ?? env.KELSINGRA_TOKEN ?? conf.get('token');
  if (!server) {
    throw new KelsingraError(
      'no server configured',
      ExitCode.usage,
      'run kelsingra connect --server http://<host>:<control-port> --token <secret>, or set KELSINGRA_SERVER',
    );
  }
  if (!token) {
    throw new KelsingraError(
      'no token configured',
      ExitCode.usage,
      'run kelsingra connect --token <secret>, or set KELSINGRA_TOKEN',
    );
  }
  // Trusted before any command connects: every connection to the server (API, tunnel, event
  // stream, gateway) then accepts its certificate.
  const ca = overrides.ca ?? (env.KELSINGRA_CA || conf.get('ca'));
  if (ca) trustCa(ca);
  const path = conf.path;
  return {
    server: normaliseServerUrl(server),
    token,
    holder: holderName(env),
    configDir: dirname(path),
    ca: ca || undefined,
  };
}
