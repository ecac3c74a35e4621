import { Flags } from '@oclif/core';
import { BaseCommand } from '../src/cli/base-command.js';

export default class Server extends BaseCommand {
  static override summary = 'Run the server agent in the dev environment (data port + control port).';
  static override description =
    'Every flag can also come from the environment (KELSINGRA_PORT, KELSINGRA_PROXY_PORT, KELSINGRA_SERVICES=a=url,b=url, KELSINGRA_TOKEN, KELSINGRA_LEASE_TTL, KELSINGRA_TENANT_HEADER…) or from a YAML/JSON file given with --config. Flags win over the environment, which wins over the file.';
  static override examples = [
    '<%= config.bin %> server --port 7700 --proxy-port 7701 --service billing=http://127.0.0.1:9001 --token s3cret-token',
    '<%= config.bin %> server --config kelsingra.yaml',
    '<%= config.bin %> server --config kelsingra.yaml --host 0.0.0.0 --database-url postgres://kelsingra@db:5432/kelsingra --advertise-url http://10.0.3.7:7701',
  ];

  static override flags = {
    port: Flags.integer({ description: 'control port: tunnel, REST API, /healthz, /status' }),
    'proxy-port': Flags.integer({ description: 'data port: where the reverse proxy sends tenant traffic' }),
    host: Flags.string({ description: 'address to listen on (default 127.0.0.1; 0.0.0.0 in a cluster)' }),
    service: Flags.string({
      description:
        'NAME=URL of a service and its normal upstream (repeatable; repeat a name for a pool of backends)',
      multiple: true,
    }),
    token: Flags.string({ description: 'secret clients must present (or use --tokens-file)' }),
    'tokens-file': Flags.string({
      description: 'YAML/JSON file of tokens, each optionally limited to tenant patterns',
    }),
    'lease-ttl': Flags.integer({ description: 'seconds an intercept lives without renewal (default 30)' }),
    'tenant-header': Flags.string({ description: 'header that carries the tenant (default x-tenant-id)' }),
    'upstream-timeout': Flags.integer({
      description: 'seconds to wait for an upstream or local service to answer (default 30)',
    }),
    'heartbeat-interval': Flags.integer({ description: 'seconds between tunnel heartbeats (default 10)' }),
    'log-level': Flags.string({ options: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] }),
    'database-url': Flags.string({
      description:
        'PostgreSQL URL: run several replicas sharing intercepts (default: in memory, one process)',
    }),
    'advertise-url': Flags.string({
      description:
        "URL at which other replicas reach this one's data port (default http://<host>:<proxy-port>)",
    }),
    'preview-url': Flags.string({
      description:
        'preview URL template with {key} and {service} in its host, e.g. https://{key}--{service}.dev.example.com',
    }),
    'routing-keys': Flags.string({
      description: 'where the routing key comes from, in order (default header,baggage,subdomain)',
    }),
    'baggage-key': Flags.string({
      description: 'W3C baggage entry holding the routing key (default tenant)',
    }),
    'route-target': Flags.string({
      description:
        'URL pattern tenant routes may send to, e.g. http://*.svc.cluster.local:* (repeatable; default: only unlimited tokens set routes, to any URL)',
      multiple: true,
    }),
    config: Flags.string({ char: 'c', description: 'YAML or JSON config file' }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Server);
    // Imported here, not at the top: oclif loads every command module to list commands, and
    // the client agent should not carry the server's dependencies in its memory.
    const { loadServerConfig, servicesFromFlags } = await import('../server/config.js');
    const { startServer } = await import('../server/server.js');
    const config = await loadServerConfig({
      configPath: flags.config,
      flags: {
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
        routingKeys: flags['routing-keys']?.split(',').map((k) => k.trim()),
        baggageKey: flags['baggage-key'],
        routeTargets: flags['route-target'],
        services: flags.service ? servicesFromFlags(flags.service) : undefined,
      },
    });
    const server = await startServer(config);
    await new Promise<void>((resolve) => {
      const stop = (signal: string) => {
        server.log.info({ signal }, 'shutting down');
        server.close().then(resolve, resolve);
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
  }
}
