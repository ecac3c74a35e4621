/**
 * Server agent configuration: defaults < config file (YAML or JSON) < environment < flags.
 * Everything is validated by one schema so a bad file names the bad key.
 */
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';
import { TOKEN_ROLES } from '../../src/shared/token-hash.js';
import { proxyProblem } from '../data-plane/client-address.js';
import { gatewayConfigSchema } from '../gateway-sync/config.js';
import { validPreviewTemplate } from '../routing/routing-keys.js';
import { tlsConfigSchema, tlsFromEnv } from './tls.js';

const SERVICE_NAME_RULE = 'service names are lowercase letters, digits and dashes (a DNS label)';
const serviceName = z.string().regex(/^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/, SERVICE_NAME_RULE);

const upstreamUrl = z
  .string()
  .url('must be a URL such as http://127.0.0.1:9001')
  .refine((u) => /^https?:\/\//.test(u), 'must start with http:// or https://');

/** One URL, or several (a pool: round robin over the backends that are up); always a list after parsing. */
const upstreamList = z
  .union([upstreamUrl, z.array(upstreamUrl).min(1, 'name at least one upstream URL')], {
    error: 'must be a URL such as http://127.0.0.1:9001, or a list of them',
  })
  .transform((u) => (Array.isArray(u) ? u : [u]));

const checkSeconds = z.coerce.number().positive();
const checkCount = z.coerce.number().int().min(1);

/**
 * Active health checks of each backend: GET `path` every `interval` s, answered within
 * `timeout` s with any status below 500. `false` turns them off; `true` or `{}` takes the defaults.
 */
const healthCheckSchema = z
  .preprocess(
    (v) => (v === true ? {} : v),
    z.union(
      [
        z.literal(false),
        z
          .object({
            path: z.string().startsWith('/', 'must start with /').default('/'),
            interval: checkSeconds.default(5),
            timeout: checkSeconds.default(2),
            unhealthyAfter: checkCount.default(2),
            healthyAfter: checkCount.default(1),
          })
          .strict(),
      ],
      { error: 'must be false, true, or settings such as { path: /healthz, interval: 5 }' },
    ),
  )
  .prefault({});

const serviceSchema = z.preprocess(
  // `upstreams:` is another name for `upstream:`.
  (v, ctx) => {
    if (!v || typeof v !== 'object' || Array.isArray(v) || !('upstreams' in v)) return v;
    const { upstreams, ...rest } = v as Record<string, unknown>;
    if ('upstream' in rest) {
      ctx.addIssue({
        code: 'custom',
        path: ['upstreams'],
        message: 'give upstream or upstreams, not both',
        input: v,
      });
      return rest;
    }
    return { ...rest, upstream: upstreams };
  },
  z
    .object({
      upstream: upstreamList,
      healthCheck: healthCheckSchema,
      hosts: z.array(z.string().min(1)).default([]),
      pathPrefix: z.string().startsWith('/', 'must start with /').optional(),
      stripPrefix: z.boolean().default(false),
      /**
       * A call that arrived over HTTP/2 (gRPC) goes on to this service over HTTP/2 (h2c for an
       * http:// upstream, ALPN for https://); false sends every call on over HTTP/1.1.
       */
      upstreamHttp2: z
        .boolean({
          error:
            'must be true (calls that arrive over HTTP/2 go on over HTTP/2, the default) or false (always HTTP/1.1 to this upstream)',
        })
        .default(true),
    })
    .strict(),
);

/**
 * A token: its secret (`token`), or only the secret's SHA-256 (`tokenSha256`, from `kelsingra
 * token hash`) so the file never holds a secret. An admin uses every tenant, so it takes no tenant list.
 */
const tokenSchema = z
  .object({
    name: z.string().min(1),
    token: z.string().min(8, 'tokens must be at least 8 characters').optional(),
    tokenSha256: z
      .string()
      .regex(/^[0-9a-fA-F]{64}$/, 'must be 64 hex digits, the SHA-256 that kelsingra token hash prints')
      .transform((h) => h.toLowerCase())
      .optional(),
    tenants: z.array(z.string().min(1)).default(['*']),
    role: z.enum(TOKEN_ROLES, { error: 'must be admin or developer' }).default('developer'),
  })
  .strict()
  .superRefine((t, ctx) => {
    if ((t.token === undefined) === (t.tokenSha256 === undefined))
      ctx.addIssue({
        code: 'custom',
        path: ['tokenSha256'],
        message: 'give the secret as tokenSha256 (kelsingra token hash prints it) or token, one of them',
      });
    if (t.role === 'admin' && !(t.tenants.length === 1 && t.tenants[0] === '*'))
      ctx.addIssue({
        code: 'custom',
        path: ['tenants'],
        message: "an admin token uses every tenant: leave tenants out (or ['*']), or make it role: developer",
      });
  });

/** Kafka's own rule for topic names. */
export const topicName = z
  .string()
  .regex(/^[A-Za-z0-9._-]{1,249}$/, 'topic names are letters, digits, ".", "_" and "-" (at most 249)');

const kafkaTopicSchema = z
  .object({
    /** The service whose tenants' messages on this topic can be intercepted. */
    service: serviceName,
    tenantHeader: z
      .string()
      .min(1)
      .transform((h) => h.toLowerCase())
      .default('x-tenant-id'),
    /** The base service's consumer group (for lag and for the filter helper). */
    group: z.string().min(1).optional(),
    /**
     * split: Kelsingra copies every message not intercepted to `splitTopic`, which the base
     * reads instead; filter: the base reads this topic and skips intercepted tenants with the
     * helper; mirror: the developer gets a copy and the base processes everything.
     */
    mode: z.enum(['split', 'filter', 'mirror']).default('split'),
    /** Where split mode puts the messages the base service should process (default `<topic>.base`). */
    splitTopic: topicName.optional(),
  })
  .strict();

const kafkaSchema = z
  .object({
    brokers: z
      .array(z.string().regex(/^[^:\s]+:\d+$/, 'must be host:port'))
      .min(1, 'name at least one broker'),
    clientId: z.string().default('kelsingra'),
    topics: z.record(topicName, kafkaTopicSchema).default({}),
  })
  .strict();

const port = z.coerce.number().int().min(0).max(65535);
const seconds = z.coerce.number().positive();

export const serverConfigSchema = z
  .object({
    port: port.default(7700),
    proxyPort: port.default(7701),
    host: z.string().default('127.0.0.1'),
    tenantHeader: z
      .string()
      .regex(/^[A-Za-z0-9-]+$/, 'must be a header name')
      .transform((h) => h.toLowerCase())
      .default('x-tenant-id'),
    leaseTtl: seconds.default(30),
    heartbeatInterval: seconds.default(10),
    upstreamTimeout: seconds.default(30),
    token: z.string().min(8, 'tokens must be at least 8 characters').optional(),
    tokensFile: z.string().optional(),
    tokens: z.array(tokenSchema).default([]),
    services: z
      .preprocess(
        (v, ctx) => {
          // zod's records skip a `__proto__` key without a word; refuse it like any other bad name.
          if (v && typeof v === 'object' && Object.hasOwn(v, '__proto__'))
            ctx.addIssue({ code: 'custom', path: ['__proto__'], message: SERVICE_NAME_RULE, input: v });
          return v;
        },
        z.record(serviceName, serviceSchema),
      )
      .default({}),
    /**
     * Where a request's routing key (tenant or feature label) comes from, first match wins:
     * the tenant header, an entry of the W3C `baggage` header, or a subdomain label.
     */
    routingKeys: z
      .array(z.enum(['header', 'baggage', 'subdomain']))
      .min(1, 'name at least one of header, baggage, subdomain')
      .refine((a) => new Set(a).size === a.length, 'name each source once')
      .default(['header', 'baggage', 'subdomain']),
    /** The `baggage` entry that carries the routing key. */
    baggageKey: z
      .string()
      .regex(/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/, 'must be a baggage key (a header token, such as tenant)')
      .default('tenant'),
    /**
     * Preview URLs: a template with {key} and {service} in its host, such as
     * https://{key}--{service}.dev.example.com. Requests to such a host route to that service
     * with that key; `intercept` prints the URL for its key.
     */
    previewUrl: z
      .string()
      .refine(
        validPreviewTemplate,
        'must be a URL whose host holds {key} and {service}, such as https://{key}--{service}.dev.example.com',
      )
      .optional(),
    /**
     * Where tenant routes may send traffic: patterns such as `http://*.svc.cluster.local:*`
     * (docs/routing.md). Without them only tokens without a tenant limit may set routes.
     */
    routeTargets: z
      .array(
        z
          .string()
          .regex(
            /^https?:\/\/[^/?#@\s]+$/i,
            'must be a pattern such as http://*.svc.cluster.local:* (scheme, host, optional port; * for any run of host or port characters)',
          ),
      )
      .optional(),
    /** PostgreSQL for several replicas; without it intercepts live in this process's memory. */
    databaseUrl: z
      .string()
      .regex(/^postgres(ql)?:\/\//, 'must be a URL such as postgres://user@db:5432/kelsingra')
      .optional(),
    /** Where other replicas reach this one's data port (default: http://<host>:<proxy-port>). */
    advertiseUrl: upstreamUrl.optional(),
    /** Topics whose tenants' messages can be intercepted (docs/kafka.md). */
    kafka: kafkaSchema.optional(),
    /**
     * Keeps the dev gateway's rules to the (service, key) pairs that need Kelsingra or a tenant
     * route (docs/deploy.md); without it the gateway sends every tenant here (catch-all).
     */
    gateway: gatewayConfigSchema.optional(),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    /**
     * Wrong tokens from one client address within `authFailureWindow` seconds before it gets
     * 429 for that long (0: no limit).
     */
    authFailureLimit: z.coerce.number().int().min(0).default(10),
    authFailureWindow: seconds.default(60),
    /** Proxies (addresses or CIDR blocks) whose X-Forwarded-For names the client address. */
    trustedProxies: z
      .array(
        z.string().superRefine((p, ctx) => {
          const problem = proxyProblem(p);
          if (problem) ctx.addIssue({ code: 'custom', message: problem });
        }),
      )
      .default([]),
    /** A file the audit trail of intercept and route changes is appended to (it is in the log too). */
    auditLog: z.string().min(1).optional(),
    /** TLS on the ports, from certificate files; a CA trusted for relays and upstreams (server/config/tls.ts). */
    tls: tlsConfigSchema.optional(),
    /** Largest request body the data port passes on, in bytes (0: no limit). */
    maxBodyBytes: z.coerce
      .number()
      .int()
      .min(0)
      .default(100 * 1024 * 1024),
    /**
     * Seconds the data port waits between request body bytes before it stops the upload and
     * answers 408 (nginx's client_body_timeout; 0: no limit).
     */
    bodyIdleTimeout: z.coerce.number().min(0).default(30),
    /** Requests one routing key may have in flight to one service; more get 429 (0: no limit). */
    tenantConcurrency: z.coerce.number().int().min(0).default(256),
    /** Requests one tunnel carries at once; past it the data port answers 503 tunnel-streams-exhausted. */
    maxTunnelStreams: z.coerce.number().int().min(1).max(1_000_000).default(10_000),
    /** Seconds a stopping server lets requests in flight finish and tunnels move (0: stop at once). */
    drainTimeout: z.coerce.number().min(0).default(20),
    /**
     * Tunnels one token may hold open on one replica (0: no limit): each costs the replica
     * memory, and a leaked or scripted token could otherwise open thousands.
     */
    maxTunnelsPerToken: z.coerce.number().int().min(0).default(100),
  })
  .strict();

export type ServerConfig = z.output<typeof serverConfigSchema>;
export type ServerConfigInput = z.input<typeof serverConfigSchema>;
export type ServiceConfig = z.output<typeof serviceSchema>;
export type TokenConfig = z.output<typeof tokenSchema>;
export type KafkaConfig = z.output<typeof kafkaSchema>;
export type KafkaTopicConfig = z.output<typeof kafkaTopicSchema>;

/** `billing=http://127.0.0.1:9001` → ['billing', {upstream}] */
export function parseServiceFlag(value: string): [string, { upstream: string }] {
  const eq = value.indexOf('=');
  if (eq <= 0) {
    throw new KelsingraError(
      `--service "${value}" is not NAME=URL`,
      ExitCode.usage,
      'write it as --service billing=http://127.0.0.1:9001',
    );
  }
  return [value.slice(0, eq).trim(), { upstream: value.slice(eq + 1).trim() }];
}

/**
 * `--service` flags (or KELSINGRA_SERVICES entries) as a services layer: a name given more than
 * once gets all its URLs, in order (a pool of backends).
 */
export function servicesFromFlags(
  values: readonly string[],
): Record<string, { upstream: string | string[] }> {
  // A Map, so a name such as `__proto__` stays a name (and validation refuses it) instead of vanishing.
  const out = new Map<string, string | string[]>();
  for (const [name, { upstream }] of values.map(parseServiceFlag)) {
    const prev = out.get(name);
    out.set(name, prev === undefined ? upstream : [prev, upstream].flat());
  }
  return Object.fromEntries([...out].map(([name, upstream]) => [name, { upstream }]));
}

function formatIssues(error: z.ZodError, source: string): string {
  return error.issues
    .map((issue) => {
      const key = issue.path.length ? issue.path.join('.') : '(top level)';
      // A bad record key (a service name) carries its real reason nested; zod's own text is just "Invalid key in record".
      const message =
        issue.code === 'invalid_key'
          ? issue.issues.map((i) => i.message).join('; ') || issue.message
          : issue.message;
      return `  ${key}: ${message}`;
    })
    .join('\n')
    .replace(/^/, `${source} is not valid:\n`);
}

export function validateConfig(input: unknown, source: string): ServerConfig {
  const result = serverConfigSchema.safeParse(input);
  if (!result.success) {
    throw new KelsingraError(
      formatIssues(result.error, source),
      ExitCode.config,
      'fix the keys named above and start again',
    );
  }
  return result.data;
}

export async function readConfigFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new KelsingraError(
      `cannot read config file ${path}: ${(err as Error).message}`,
      ExitCode.config,
      'check the --config path (or --tokens-file), and that you may read the file',
    );
  }
  let data: unknown;
  try {
    data = path.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new KelsingraError(
      `config file ${path} is not valid ${path.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message}`,
      ExitCode.config,
      'fix the syntax at the position named above; kelsingra.example.yaml and tokens.example.yaml show the format',
    );
  }
  if (data === null || data === undefined) return {};
  if (typeof data !== 'object' || Array.isArray(data)) {
    throw new KelsingraError(
      `config file ${path} must hold a mapping of settings at the top level`,
      ExitCode.config,
      'start the file with keys such as port:, proxyPort:, services: (see kelsingra.example.yaml)',
    );
  }
  return data as Record<string, unknown>;
}

/** Environment variables that carry one setting each, as text; names match the flags. */
export const ENV_SETTINGS: Readonly<Record<string, string>> = {
  KELSINGRA_PORT: 'port',
  KELSINGRA_PROXY_PORT: 'proxyPort',
  KELSINGRA_HOST: 'host',
  KELSINGRA_TENANT_HEADER: 'tenantHeader',
  KELSINGRA_LEASE_TTL: 'leaseTtl',
  KELSINGRA_HEARTBEAT_INTERVAL: 'heartbeatInterval',
  KELSINGRA_UPSTREAM_TIMEOUT: 'upstreamTimeout',
  KELSINGRA_TOKEN: 'token',
  KELSINGRA_TOKENS_FILE: 'tokensFile',
  KELSINGRA_LOG_LEVEL: 'logLevel',
  KELSINGRA_DATABASE_URL: 'databaseUrl',
  KELSINGRA_ADVERTISE_URL: 'advertiseUrl',
  KELSINGRA_BAGGAGE_KEY: 'baggageKey',
  KELSINGRA_PREVIEW_URL: 'previewUrl',
  KELSINGRA_AUTH_FAILURE_LIMIT: 'authFailureLimit',
  KELSINGRA_AUTH_FAILURE_WINDOW: 'authFailureWindow',
  KELSINGRA_AUDIT_LOG: 'auditLog',
  KELSINGRA_MAX_BODY_BYTES: 'maxBodyBytes',
  KELSINGRA_MAX_TUNNEL_STREAMS: 'maxTunnelStreams',
  KELSINGRA_DRAIN_TIMEOUT: 'drainTimeout',
  KELSINGRA_MAX_TUNNELS_PER_TOKEN: 'maxTunnelsPerToken',
  KELSINGRA_BODY_IDLE_TIMEOUT: 'bodyIdleTimeout',
  KELSINGRA_TENANT_CONCURRENCY: 'tenantConcurrency',
};

/**
 * KELSINGRA_GATEWAY names the driver, and KELSINGRA_GATEWAY_<OPTION> each option
 * (KELSINGRA_GATEWAY_VERSION_URL is versionUrl): one variable per option, so a value such as
 * a reload command may hold any character.
 */
function gatewayFromEnv(env: NodeJS.ProcessEnv): Record<string, unknown> | undefined {
  const out: Record<string, unknown> = {};
  if (env.KELSINGRA_GATEWAY) out.driver = env.KELSINGRA_GATEWAY;
  for (const [name, value] of Object.entries(env)) {
    const m = /^KELSINGRA_GATEWAY_([A-Z0-9_]+)$/.exec(name);
    if (!m || value === undefined || value === '') continue;
    const key = (m[1] as string).toLowerCase().replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
    out[key] = value;
  }
  return Object.keys(out).length ? out : undefined;
}

/** A comma-separated variable as a list, blanks dropped. */
const commaList = (value: string) =>
  value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);

/** Settings a server takes from the environment; names match the flags. */
export function configFromEnv(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [envName, key] of Object.entries(ENV_SETTINGS)) {
    const value = env[envName];
    if (value !== undefined && value !== '') out[key] = value;
  }
  if (env.KELSINGRA_ROUTING_KEYS) {
    out.routingKeys = commaList(env.KELSINGRA_ROUTING_KEYS);
  }
  if (env.KELSINGRA_ROUTE_TARGETS) {
    out.routeTargets = commaList(env.KELSINGRA_ROUTE_TARGETS);
  }
  if (env.KELSINGRA_TRUSTED_PROXIES) {
    out.trustedProxies = commaList(env.KELSINGRA_TRUSTED_PROXIES);
  }
  const tls = tlsFromEnv(env);
  if (tls) out.tls = tls;
  const gateway = gatewayFromEnv(env);
  if (gateway) out.gateway = gateway;
  if (env.KELSINGRA_SERVICES) {
    out.services = servicesFromFlags(commaList(env.KELSINGRA_SERVICES));
  }
  return out;
}

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
  const configPath = opts.configPath ?? env.KELSINGRA_CONFIG;
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
