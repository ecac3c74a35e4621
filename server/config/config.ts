/**
 * Server agent configuration: defaults < config file (YAML or JSON) < environment < flags,
 * merged here and validated by one schema (config-schema.ts), so a bad file names the bad key.
 * A flag's own variable (KELSINGRA_PORT…) reaches here as that flag, read by oclif when the
 * flag is not given; the environment layer holds the lists and families (config-env.ts).
 */
import { z } from 'zod';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';
import { configFromEnv } from './config-env.js';
import { readConfigFile } from './config-file.js';
import { formatIssues, type ServerConfig, tokenSchema, validateConfig } from './config-schema.js';

export { configFromEnv } from './config-env.js';
export { readConfigFile } from './config-file.js';
export {
  type KafkaConfig,
  type KafkaTopicConfig,
  type ServerConfig,
  type ServiceConfig,
  topicName,
  validateConfig,
} from './config-schema.js';
export { parseServiceFlag, servicesFromFlags } from './service-flags.js';

/**
 * Shallow merge, except services, which merge per service so a flag can add one to a file's
 * list, and tls, which merges per key so a flag can replace the file's certificate alone.
 */
export function mergeLayers(...layers: Record<string, unknown>[]): Record<string, unknown> {
  // Maps, not objects: a `__proto__` key in a file must reach validation (which names it), not
  // become the prototype of the merged settings.
  const out = new Map<string, unknown>();
  for (const layer of layers) {
    for (const [key, value] of Object.entries(layer)) {
      if (value === undefined) continue;
      const services = out.get('services');
      if (key === 'services' && typeof services === 'object' && services) {
        const merged = new Map(Object.entries(services));
        for (const [name, svc] of Object.entries(value as Record<string, unknown>)) {
          const prev = merged.get(name);
          // A later layer's upstream replaces an earlier one's, whichever name (upstream/upstreams) each used.
          const renamed = (o: object) => {
            const { upstreams, ...rest } = o as Record<string, unknown>;
            return upstreams === undefined || 'upstream' in rest ? o : { ...rest, upstream: upstreams };
          };
          merged.set(
            name,
            prev && typeof prev === 'object' && svc && typeof svc === 'object'
              ? { ...renamed(prev), ...renamed(svc) }
              : svc,
          );
        }
        out.set('services', Object.fromEntries(merged));
      } else if ((key === 'tls' || key === 'gateway') && isObject(out.get(key)) && isObject(value)) {
        const defined = Object.entries(value).filter(([, v]) => v !== undefined);
        out.set(key, { ...(out.get(key) as object), ...Object.fromEntries(defined) });
      } else {
        out.set(key, value);
      }
    }
  }
  return Object.fromEntries(out);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export async function loadServerConfig(opts: {
  configPath?: string;
  env?: NodeJS.ProcessEnv;
  flags?: Record<string, unknown>;
}): Promise<ServerConfig> {
  const env = opts.env ?? process.env;
  // --config (or KELSINGRA_CONFIG, which oclif reads for it).
  const configPath = opts.configPath;
  const fileLayer = configPath ? await readConfigFile(configPath) : {};
  const merged = mergeLayers(fileLayer, configFromEnv(env), opts.flags ?? {});
  const config = validateConfig(
    merged,
    configPath ? `config (${configPath} with environment and flags)` : 'config',
  );
  if (config.tokensFile) {
    const tokens = await readConfigFile(config.tokensFile);
    const parsed = z
      .object({ tokens: z.array(tokenSchema) })
      .strict()
      .safeParse(tokens);
    if (!parsed.success) {
      throw new KelsingraError(
        formatIssues(parsed.error, `tokens file ${config.tokensFile}`),
        ExitCode.config,
        'fix the entries named above (tokens.example.yaml shows the format)',
      );
    }
    config.tokens.push(...parsed.data.tokens);
  }
  // Intercepts and routes name the token that made them, and a developer token ends its own
  // intercepts by that name: two tokens of one name would be one another's.
  const names = [...(config.token ? ['default'] : []), ...config.tokens.map((t) => t.name)];
  const twice = names.filter((n, i) => names.indexOf(n) !== i);
  if (twice.length)
    throw new KelsingraError(
      `token name${twice.length > 1 ? 's' : ''} ${[...new Set(twice)].join(', ')} ${twice.length > 1 ? 'are' : 'is'} used twice${twice.includes('default') && config.token ? ' ("default" is the name of --token)' : ''}`,
      ExitCode.config,
      'give every token its own name',
    );
  // With a database, the tokens other replicas stored will do; that is checked once it is open.
  if (!config.token && config.tokens.length === 0 && !config.databaseUrl) {
    throw new KelsingraError(
      'the server agent needs a token: clients authenticate with it',
      ExitCode.config,
      'pass --token <secret>, set KELSINGRA_TOKEN, or give a tokens file with --tokens-file',
    );
  }
  for (const [topic, t] of Object.entries(config.kafka?.topics ?? {})) {
    if (!config.services[t.service]) {
      throw new KelsingraError(
        `kafka.topics.${topic}.service: "${t.service}" is not a configured service (${Object.keys(config.services).join(', ') || 'none'})`,
        ExitCode.config,
        'name one of the services: section, or add the service',
      );
    }
  }
  if (config.gateway?.driver === 'caddy') {
    const unknown = (config.gateway.services ?? []).filter((s) => !config.services[s]);
    if (unknown.length)
      throw new KelsingraError(
        `gateway.services: ${unknown.join(', ')} ${unknown.length > 1 ? 'are' : 'is'} not a configured service (${Object.keys(config.services).join(', ') || 'none'})`,
        ExitCode.config,
        'name services of the services: section, or leave gateway.services out for all of them',
      );
  }
  if (Object.keys(config.services).length === 0) {
    throw new KelsingraError(
      'no services configured',
      ExitCode.config,
      'add --service billing=http://127.0.0.1:9001 or a services: section in the config file',
    );
  }
  return config;
}
