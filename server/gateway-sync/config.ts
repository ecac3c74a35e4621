/**
 * The `gateway:` settings: which driver keeps the dev gateway's rules in step, and its
 * options. Without them the gateway sends every tenant to Kelsingra (catch-all mode).
 */
import { z } from 'zod';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';

const seconds = z.coerce.number().positive();
const httpUrl = z
  .string()
  .url('must be a URL such as http://127.0.0.1:2019')
  .refine((u) => /^https?:\/\//.test(u), 'must start with http:// or https://');
/** A list, or (from a flag or the environment) one text with the items separated by commas. */
const list = z.preprocess(
  (v) =>
    typeof v === 'string'
      ? v
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : v,
  z.array(z.string().min(1)),
);
const withService = (example: string) =>
  z.string().refine((s) => s.includes('{service}'), `must hold {service}, such as ${example}`);

const common = {
  /** How long `intercept` waits for the gateway to confirm before it fails. */
  confirmTimeout: seconds.default(10),
  /** How often the whole set is written again, repairing anything changed behind Kelsingra's back. */
  resync: seconds.default(60),
};

const haproxy = z
  .object({
    driver: z.literal('haproxy'),
    ...common,
    socket: z.string().min(1, 'give the stats socket: a unix socket path or host:port'),
    map: z
      .string()
      .startsWith('/', 'must be the absolute path of the map file, as in map(...) of haproxy.cfg'),
    mapFile: z.string().startsWith('/', 'must be an absolute path').optional(),
  })
  .strict();

const nginx = z
  .object({
    driver: z.literal('nginx'),
    ...common,
    file: z.string().startsWith('/', 'must be the absolute path of the include nginx.conf includes'),
    reload: z.string().min(1, 'give the command that reloads nginx, such as nginx -s reload'),
    versionUrl: httpUrl.optional(),
    source: z.string().startsWith('$', 'must be an nginx variable').default('$kelsingra_service_key'),
    variable: z.string().startsWith('$', 'must be an nginx variable').default('$kelsingra_target'),
  })
  .strict();

const caddy = z
  .object({
    driver: z.literal('caddy'),
    ...common,
    adminUrl: httpUrl.default('http://127.0.0.1:2019'),
    idPrefix: z
      .string()
      .regex(/^[A-Za-z0-9_-]+$/, 'letters, digits, _ and -')
      .default('kelsingra_'),
    /** Services with a map handler in Caddy's config (default: every configured service). */
    services: list.optional(),
  })
  .strict();

const traefik = z
  .object({
    driver: z.literal('traefik'),
    ...common,
    kelsingraUrl: httpUrl,
    healthPort: z.coerce.number().int().min(1).max(65535).default(7700),
    serviceRule: withService('Host(`{service}.dev.example.com`)'),
    priority: z.coerce.number().int().min(1).default(1000),
    ruleSyntax: z.enum(['v2', 'v3']).default('v3'),
    entryPoints: list.optional(),
  })
  .strict();

const kong = z
  .object({
    driver: z.literal('kong'),
    ...common,
    adminUrl: httpUrl.default('http://127.0.0.1:8001'),
    kelsingraService: z.string().min(1).default('kelsingra-{service}'),
    serviceExpression: withService('http.host == "{service}.dev.example.com"'),
    priority: z.coerce.number().int().min(1).default(200),
  })
  .strict();

export const GATEWAY_DRIVERS = ['haproxy', 'nginx', 'caddy', 'traefik', 'kong'] as const;

export const gatewayConfigSchema = z.discriminatedUnion('driver', [haproxy, nginx, caddy, traefik, kong], {
  error: (issue) =>
    issue.code === 'invalid_union' ? `must be one of ${GATEWAY_DRIVERS.join(', ')}` : undefined,
});

export type GatewayConfig = z.output<typeof gatewayConfigSchema>;

/**
 * `--gateway haproxy --gateway-option socket=/run/haproxy/admin.sock` (or KELSINGRA_GATEWAY and
 * KELSINGRA_GATEWAY_OPTIONS=socket=…,map=…) as a `gateway` layer; undefined when none is given.
 */
export function gatewayLayer(
  driver: string | undefined,
  options: readonly string[] = [],
  source = '--gateway-option',
): Record<string, unknown> | undefined {
  const layer: Record<string, unknown> = {};
  if (driver) layer.driver = driver;
  for (const option of options) {
    const eq = option.indexOf('=');
    if (eq <= 0)
      throw new KelsingraError(
        `${source} "${option}" is not KEY=VALUE`,
        ExitCode.usage,
        'write it as socket=/run/haproxy/admin.sock (one option each; see docs/deploy.md for each driver)',
      );
    layer[option.slice(0, eq).trim()] = option.slice(eq + 1).trim();
  }
  return Object.keys(layer).length ? layer : undefined;
}
