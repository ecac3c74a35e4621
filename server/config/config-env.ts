/**
 * The settings of a server agent's environment that are not one flag's value: oclif reads
 * those itself (each flag of `kelsingra server` names its variable with `env:`, shown by
 * --help). What is left here: the lists (KELSINGRA_SERVICES, KELSINGRA_ROUTE_TARGETS,
 * KELSINGRA_TRUSTED_PROXIES, comma-separated where the flags repeat) and the family
 * KELSINGRA_GATEWAY_*.
 */
import { servicesFromFlags } from './service-flags.js';

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

/** The environment's lists and the gateway family as a layer of the configuration. */
export function configFromEnv(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (env.KELSINGRA_ROUTE_TARGETS) {
    out.routeTargets = commaList(env.KELSINGRA_ROUTE_TARGETS);
  }
  if (env.KELSINGRA_TRUSTED_PROXIES) {
    out.trustedProxies = commaList(env.KELSINGRA_TRUSTED_PROXIES);
  }
  const gateway = gatewayFromEnv(env);
  if (gateway) out.gateway = gateway;
  if (env.KELSINGRA_SERVICES) {
    out.services = servicesFromFlags(commaList(env.KELSINGRA_SERVICES));
  }
  return out;
}
