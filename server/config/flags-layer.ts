/**
 * `kelsingra server`'s parsed flags as the flags layer of the configuration: flag names become
 * setting keys, comma lists and KEY=VALUE options become their structured settings. oclif has
 * already put in a flag's environment variable when the flag itself was not given, so this
 * layer is "flags, or their variables". Tests that load a configuration the way the command
 * does go through here too.
 */
import { gatewayLayer } from '../gateway-sync/config.js';
import { servicesFromFlags } from './service-flags.js';

/** The flags as oclif hands them over (only those that are set), by flag name. */
export type ServerFlagValues = Partial<Record<string, string | number | string[] | boolean | undefined>>;

const str = (v: unknown) => (v === undefined ? undefined : String(v));
const list = (v: unknown) => (Array.isArray(v) ? v.map(String) : undefined);
const commaList = (v: unknown) =>
  str(v)
    ?.split(',')
    .map((item) => item.trim());

/**
 * Flags whose setting is not their value under their own name in camelCase: lists, the TLS and
 * gateway groups, and what is not a setting at all. Every other flag maps by its name, so a
 * new flag needs no line here (and one the schema does not know is named at start-up).
 */
const NOT_BY_NAME = new Set([
  'service',
  'route-target',
  'trusted-proxy',
  'routing-keys',
  'tls-cert',
  'tls-key',
  'tls-ca',
  'tls-ports',
  'gateway',
  'gateway-option',
  'config',
  'json',
]);

const camelCase = (name: string) => name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

export function flagsLayer(flags: ServerFlagValues): Record<string, unknown> {
  const layer: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(flags))
    if (!NOT_BY_NAME.has(name)) layer[camelCase(name)] = value;
  const service = list(flags.service);
  return {
    ...layer,
    routingKeys: commaList(flags['routing-keys']),
    routeTargets: list(flags['route-target']),
    trustedProxies: list(flags['trusted-proxy']),
    tls: tlsLayer(flags),
    gateway: gatewayLayer(str(flags.gateway), list(flags['gateway-option'])),
    services: service ? servicesFromFlags(service) : undefined,
  };
}

/** The --tls-* flags as a `tls` layer, only the keys given, so the file's others stay. */
function tlsLayer(flags: ServerFlagValues): Record<string, unknown> | undefined {
  const layer = Object.fromEntries(
    Object.entries({
      cert: str(flags['tls-cert']),
      key: str(flags['tls-key']),
      ca: str(flags['tls-ca']),
      ports: commaList(flags['tls-ports']),
    }).filter(([, v]) => v !== undefined),
  );
  return Object.keys(layer).length ? layer : undefined;
}
