/**
 * Every setting of `kelsingra server` can come from the environment under one predictable
 * name: a flag that takes one value names KELSINGRA_<FLAG> on the flag itself (oclif reads it
 * and --help shows it); the lists and the gateway family are read by config-env.ts.
 */
import { describe, expect, it } from 'vitest';
import Server from '../../commands/server.js';
import { configFromEnv } from '../../server/config/config.js';
import { flagsLayer } from '../../server/config/flags-layer.js';
import { envFlags } from '../support/server-env.js';

const envName = (flag: string) => `KELSINGRA_${flag.toUpperCase().replaceAll('-', '_')}`;

/** Flags whose variable is not theirs alone: a comma list for a repeatable flag, or a family. */
const LAYER_VARIABLES: Record<string, string> = {
  service: 'KELSINGRA_SERVICES',
  'route-target': 'KELSINGRA_ROUTE_TARGETS',
  'trusted-proxy': 'KELSINGRA_TRUSTED_PROXIES',
  gateway: 'KELSINGRA_GATEWAY',
  'gateway-option': 'KELSINGRA_GATEWAY_<OPTION>',
};

describe('kelsingra server: environment variables', () => {
  const flags = Object.entries(Server.flags) as [string, { env?: string; multiple?: boolean }][];

  it('a flag of one value names KELSINGRA_<FLAG> as its variable', () => {
    const own = flags.filter(([name]) => !(name in LAYER_VARIABLES));
    expect(own.length).toBeGreaterThan(20);
    for (const [name, flag] of own) expect(flag.env, `--${name}`).toBe(envName(name));
  });

  it('the others are read into the environment layer, not by oclif', () => {
    for (const [name, flag] of flags.filter(([n]) => n in LAYER_VARIABLES))
      expect(flag.env, `--${name}`).toBeUndefined();
    const layer = configFromEnv({
      KELSINGRA_SERVICES: 'billing=http://127.0.0.1:1',
      KELSINGRA_ROUTE_TARGETS: 'http://*.svc:*',
      KELSINGRA_TRUSTED_PROXIES: '10.0.0.1',
      KELSINGRA_GATEWAY: 'nginx',
      KELSINGRA_GATEWAY_RELOAD_COMMAND: 'nginx -s reload',
    });
    expect(layer).toMatchObject({
      services: { billing: { upstream: 'http://127.0.0.1:1' } },
      routeTargets: ['http://*.svc:*'],
      trustedProxies: ['10.0.0.1'],
      gateway: { driver: 'nginx', reloadCommand: 'nginx -s reload' },
    });
  });

  it('the TLS variables are the --tls-* flags, and make one tls setting', () => {
    const layer = flagsLayer(
      envFlags({
        KELSINGRA_TLS_CERT: 'cert.pem',
        KELSINGRA_TLS_KEY: 'key.pem',
        KELSINGRA_TLS_CA: 'ca.pem',
        KELSINGRA_TLS_PORTS: 'data',
      }),
    );
    expect(layer.tls).toEqual({ cert: 'cert.pem', key: 'key.pem', ca: 'ca.pem', ports: ['data'] });
  });
});
