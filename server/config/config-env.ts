/** The settings a server agent takes from its environment; each variable's name matches its flag. */
import { servicesFromFlags } from './service-flags.js';
import { tlsFromEnv } from './tls.js';

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
