/** Builds the gateway sync a server's `gateway:` settings ask for. */
import type { Logger } from 'pino';
import type { InterceptStore } from '../store/intercept-store.js';
import { CaddyDriver } from './caddy.js';
import type { GatewayConfig } from './config.js';
import { type Coordination, LocalCoordination, PgCoordination } from './coordination.js';
import type { GatewayDriver } from './driver.js';
import { HaproxyDriver } from './haproxy.js';
import { KongDriver } from './kong.js';
import { NginxDriver } from './nginx.js';
import { GatewaySync } from './sync.js';
import { TraefikDriver } from './traefik.js';

export { GatewayError } from './driver.js';
export type { GatewaySync } from './sync.js';
export type { TraefikDriver } from './traefik.js';

export interface GatewaySyncDeps {
  store: InterceptStore;
  log: Logger;
  /** With a database, replicas share one writer and what it confirmed. */
  databaseUrl?: string;
  tenantHeader: string;
  /** Each service's base upstream URLs (Traefik's fallback). */
  bases: ReadonlyMap<string, string[]>;
}

export function createGatewaySync(
  config: GatewayConfig,
  deps: GatewaySyncDeps,
): { sync: GatewaySync; traefik?: TraefikDriver } {
  const confirmTimeoutMs = config.confirmTimeout * 1000;
  const coordination: Coordination = deps.databaseUrl
    ? new PgCoordination(deps.databaseUrl, deps.log)
    : new LocalCoordination();
  let driver: GatewayDriver;
  let traefik: TraefikDriver | undefined;
  switch (config.driver) {
    case 'haproxy':
      driver = new HaproxyDriver(config);
      break;
    case 'nginx':
      driver = new NginxDriver({ ...config, confirmTimeoutMs });
      break;
    case 'caddy':
      driver = new CaddyDriver({
        ...config,
        services: config.services ?? [...deps.bases.keys()],
        tenantHeader: deps.tenantHeader,
        confirmTimeoutMs,
      });
      break;
    case 'traefik':
      traefik = new TraefikDriver(
        { ...config, tenantHeader: deps.tenantHeader, confirmTimeoutMs },
        deps.bases,
        coordination.versions,
      );
      driver = traefik;
      break;
    case 'kong':
      driver = new KongDriver({ ...config, tenantHeader: deps.tenantHeader, confirmTimeoutMs });
      break;
  }
  const sync = new GatewaySync({
    store: deps.store,
    driver,
    coordination,
    log: deps.log,
    confirmTimeoutMs,
    resyncMs: config.resync * 1000,
  });
  return { sync, traefik };
}
