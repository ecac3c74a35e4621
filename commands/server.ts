import { Flags } from '@oclif/core';
import { BaseCommand } from '../src/cli/base-command.js';

export default class Server extends BaseCommand {
  static override summary = 'Run the server agent in the dev environment (data port + control port).';
  static override description =
    'Settings come from flags, the environment and a YAML/JSON file given with --config (or KELSINGRA_CONFIG). Each flag that takes one value has its variable, shown beside it below ([env: KELSINGRA_PORT]). Lists are comma-separated: KELSINGRA_SERVICES=a=url,b=url, KELSINGRA_ROUTE_TARGETS, KELSINGRA_TRUSTED_PROXIES; the gateway driver is KELSINGRA_GATEWAY, each of its options KELSINGRA_GATEWAY_<OPTION>. Flags win over the environment, which wins over the file.';
  static override examples = [
    '<%= config.bin %> server --port 7700 --proxy-port 7701 --service billing=http://127.0.0.1:9001 --token s3cret-token',
    '<%= config.bin %> server --config kelsingra.yaml',
    '<%= config.bin %> server --config kelsingra.yaml --host 0.0.0.0 --database-url postgres://kelsingra@db:5432/kelsingra --advertise-url http://10.0.3.7:7701',
  ];

  static override flags = {
    port: Flags.integer({
      env: 'KELSINGRA_PORT',
      description: 'control port: tunnel, REST API, /healthz, /status',
    }),
    'proxy-port': Flags.integer({
      env: 'KELSINGRA_PROXY_PORT',
      description: 'data port: where the reverse proxy sends tenant traffic',
    }),
    host: Flags.string({
      env: 'KELSINGRA_HOST',
      description: 'address to listen on (default 127.0.0.1; 0.0.0.0 in a cluster)',
    }),
    service: Flags.string({
      description:
        'NAME=URL of a service and its normal upstream (repeatable; repeat a name for a pool of backends)',
      multiple: true,
    }),
    token: Flags.string({
      env: 'KELSINGRA_TOKEN',
      description: 'secret clients must present (or use --tokens-file)',
    }),
    'tokens-file': Flags.string({
      env: 'KELSINGRA_TOKENS_FILE',
      description: 'YAML/JSON file of tokens, each optionally limited to tenant patterns',
    }),
    'lease-ttl': Flags.integer({
      env: 'KELSINGRA_LEASE_TTL',
      description: 'seconds an intercept lives without renewal (default 30)',
    }),
    'tenant-header': Flags.string({
      env: 'KELSINGRA_TENANT_HEADER',
      description: 'header that carries the tenant (default x-tenant-id)',
    }),
    'upstream-timeout': Flags.integer({
      env: 'KELSINGRA_UPSTREAM_TIMEOUT',
      description: 'seconds to wait for an upstream or local service to answer (default 30)',
    }),
    'heartbeat-interval': Flags.integer({
      env: 'KELSINGRA_HEARTBEAT_INTERVAL',
      description: 'seconds between tunnel heartbeats (default 10)',
    }),
    'log-level': Flags.string({
      env: 'KELSINGRA_LOG_LEVEL',
      options: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
    }),
    'database-url': Flags.string({
      env: 'KELSINGRA_DATABASE_URL',
      description:
        'PostgreSQL URL: run several replicas sharing intercepts (default: in memory, one process)',
    }),
    'advertise-url': Flags.string({
      env: 'KELSINGRA_ADVERTISE_URL',
      description:
        "URL at which other replicas reach this one's data port (default http://<host>:<proxy-port>)",
    }),
    'preview-url': Flags.string({
      env: 'KELSINGRA_PREVIEW_URL',
      description:
        'preview URL template with {key} and {service} in its host, e.g. https://{key}--{service}.dev.example.com',
    }),
    'routing-keys': Flags.string({
      env: 'KELSINGRA_ROUTING_KEYS',
      description: 'where the routing key comes from, in order (default header,baggage,subdomain)',
    }),
    'baggage-key': Flags.string({
      env: 'KELSINGRA_BAGGAGE_KEY',
      description: 'W3C baggage entry holding the routing key (default tenant)',
    }),
    'route-target': Flags.string({
      description:
        'URL pattern tenant routes may send to, e.g. http://*.svc.cluster.local:* (repeatable; default: only admin tokens set routes, to any URL)',
      multiple: true,
    }),
    'auth-failure-limit': Flags.integer({
      env: 'KELSINGRA_AUTH_FAILURE_LIMIT',
      description:
        'wrong tokens from one client address before it gets 429 for a while (default 10; 0: no limit)',
    }),
    'auth-failure-window': Flags.integer({
      env: 'KELSINGRA_AUTH_FAILURE_WINDOW',
      description: 'seconds those wrong tokens are counted over, and how long the 429s last (default 60)',
    }),
    'trusted-proxy': Flags.string({
      description:
        'address or CIDR of a proxy in front of the control port whose X-Forwarded-For names the client (repeatable)',
      multiple: true,
    }),
    'audit-log': Flags.string({
      env: 'KELSINGRA_AUDIT_LOG',
      description: 'file to append the audit trail of intercept and route changes to (it is in the log too)',
    }),
    'tls-cert': Flags.string({
      env: 'KELSINGRA_TLS_CERT',
      description: 'PEM certificate (chain) file: the ports serve HTTPS and the tunnel WSS (with --tls-key)',
    }),
    'tls-key': Flags.string({
      env: 'KELSINGRA_TLS_KEY',
      description: 'PEM private key file of --tls-cert',
    }),
    'tls-ca': Flags.string({
      env: 'KELSINGRA_TLS_CA',
      description:
        'PEM CA file trusted besides the system CAs: other replicas (https advertise URLs), https upstreams',
    }),
    'tls-ports': Flags.string({
      env: 'KELSINGRA_TLS_PORTS',
      description: 'which ports serve TLS: control,data (default both)',
    }),
    'max-body-bytes': Flags.integer({
      env: 'KELSINGRA_MAX_BODY_BYTES',
      description:
        'largest request body the data port passes on, in bytes (default 104857600 = 100 MiB; 0: no limit)',
    }),
    'body-idle-timeout': Flags.integer({
      env: 'KELSINGRA_BODY_IDLE_TIMEOUT',
      description:
        'seconds the data port waits between request body bytes before it stops the upload with 408 (default 30; 0: no limit)',
    }),
    'tenant-concurrency': Flags.integer({
      env: 'KELSINGRA_TENANT_CONCURRENCY',
      description:
        'requests one routing key (tenant) may have in flight to one service; more get 429 (default 256; 0: no limit)',
    }),
    'max-tunnel-streams': Flags.integer({
      env: 'KELSINGRA_MAX_TUNNEL_STREAMS',
      description:
        'requests one developer tunnel carries at once; past it the data port answers 503 tunnel-streams-exhausted (default 10000)',
    }),
    'drain-timeout': Flags.integer({
      env: 'KELSINGRA_DRAIN_TIMEOUT',
      description:
        'seconds a stopping server (SIGTERM) lets requests in flight finish and tunnels move to another replica (default 20; 0: stop at once)',
    }),
    'max-tunnels-per-token': Flags.integer({
      env: 'KELSINGRA_MAX_TUNNELS_PER_TOKEN',
      description:
        'tunnels one token may hold open on this replica; one more is refused with 429 (default 100; 0: no limit)',
    }),
    gateway: Flags.string({
      description:
        "keep the dev gateway's rules in step with intercepts and routes: haproxy, nginx, caddy, traefik or kong (docs/deploy.md; default: none, the gateway sends every tenant here)",
    }),
    'gateway-option': Flags.string({
      description:
        'KEY=VALUE option of the gateway driver, e.g. socket=/run/haproxy/admin.sock (repeatable; env KELSINGRA_GATEWAY_<KEY>)',
      multiple: true,
    }),
    config: Flags.string({ env: 'KELSINGRA_CONFIG', char: 'c', description: 'YAML or JSON config file' }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Server);
    // Imported here, not at the top: oclif loads every command module to list commands, and
    // the client agent should not carry the server's dependencies in its memory.
    const { loadServerConfig } = await import('../server/config/config.js');
    const { flagsLayer } = await import('../server/config/flags-layer.js');
    const { startServer } = await import('../server/server.js');
    const config = await loadServerConfig({ configPath: flags.config, flags: flagsLayer(flags) });
    const server = await startServer(config);
    await new Promise<void>((resolve) => {
      let drainingSince: number | undefined;
      const stop = (signal: string) => {
        // signal-exit (loaded by dependencies) re-sends a signal it thinks nobody handles, so
        // the first one may arrive twice at once; that echo is no second signal.
        if (drainingSince !== undefined && Date.now() - drainingSince < SIGNAL_ECHO_MS) return;
        // A second signal means "now": whoever sent it will not wait for the drain.
        if (drainingSince !== undefined || config.drainTimeout === 0) {
          server.log.info({ signal }, 'shutting down');
          server.close().then(resolve, resolve);
          return;
        }
        drainingSince = Date.now();
        server.log.info({ signal, drainTimeout: config.drainTimeout }, 'shutting down gracefully');
        server
          .drain(config.drainTimeout * 1000)
          .then(() => server.close())
          .then(() => server.log.info('stopped'))
          .then(resolve, resolve);
      };
      process.on('SIGINT', stop);
      process.on('SIGTERM', stop);
    });
  }
}

const SIGNAL_ECHO_MS = 1_000;
