/**
 * The server agent's configuration schema: every setting, its default and its rule, so a bad
 * file, variable or flag names the bad key.
 */
import { z } from 'zod';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';
import { TOKEN_ROLES } from '../../src/shared/token-hash.js';
import { proxyProblem } from '../data-plane/client-address.js';
import { gatewayConfigSchema } from '../gateway-sync/config.js';
import { validPreviewTemplate } from '../routing/routing-keys.js';
import { tlsConfigSchema } from './tls.js';

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
export const tokenSchema = z
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

export function formatIssues(error: z.ZodError, source: string): string {
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
