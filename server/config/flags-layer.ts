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

export function flagsLayer(flags: ServerFlagValues): Record<string, unknown> {
  const service = list(flags.service);
  return {
    port: flags.port,
    proxyPort: flags['proxy-port'],
    host: flags.host,
    token: flags.token,
    tokensFile: flags['tokens-file'],
    leaseTtl: flags['lease-ttl'],
    tenantHeader: flags['tenant-header'],
    upstreamTimeout: flags['upstream-timeout'],
    heartbeatInterval: flags['heartbeat-interval'],
    logLevel: flags['log-level'],
    databaseUrl: flags['database-url'],
    advertiseUrl: flags['advertise-url'],
    previewUrl: flags['preview-url'],
    routingKeys: str(flags['routing-keys'])
      ?.split(',')
      .map((k) => k.trim()),
    baggageKey: flags['baggage-key'],
    routeTargets: list(flags['route-target']),
    authFailureLimit: flags['auth-failure-limit'],
    authFailureWindow: flags['auth-failure-window'],
    trustedProxies: list(flags['trusted-proxy']),
    auditLog: flags['audit-log'],
    tls: tlsLayer(flags),
    gateway: gatewayLayer(str(flags.gateway), list(flags['gateway-option'])),
    maxBodyBytes: flags['max-body-bytes'],
    maxTunnelStreams: flags['max-tunnel-streams'],
    drainTimeout: flags['drain-timeout'],
    maxTunnelsPerToken: flags['max-tunnels-per-token'],
    bodyIdleTimeout: flags['body-idle-timeout'],
    tenantConcurrency: flags['tenant-concurrency'],
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
      ports: str(flags['tls-ports'])
        ?.split(',')
        .map((p) => p.trim()),
    }).filter(([, v]) => v !== undefined),
  );
  return Object.keys(layer).length ? layer : undefined;
}
