/**
 * Wires up a server agent: control port and data port over a shared intercept store
 * and tunnel hub.
 *
 * Over 400 lines on purpose: it is the wiring, in start-up order (store, hub, planes, Kafka,
 * gateway sync) and the reverse on stop; each part it wires is its own module.
 */
import { randomBytes } from 'node:crypto';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import type { Logger } from 'pino';
import { ExitCode, KelsingraError } from '../src/shared/errors.js';
import { serveHttp2 } from '../src/shared/http/dual-protocol.js';
import { AuditLog, interceptField } from './auth/audit-log.js';
import { TokenAuthority, tokenRecords } from './auth/auth.js';
import { AuthFailureLimiter } from './auth/auth-limiter.js';
import type { ServerConfig } from './config/config.js';
import { loadTls, serveTls, type TlsPort } from './config/tls.js';
import { createControlPlane } from './control-plane/control-plane.js';
import { interceptView } from './control-plane/intercept-api.js';
import { ClientAddresses } from './data-plane/client-address.js';
import { answerClientErrors, ClientErrorLog } from './data-plane/client-errors.js';
import { createDataPlane } from './data-plane/data-plane.js';
import { Drain, type DrainResult } from './data-plane/drain.js';
import { PassThroughProxy, type UpstreamTarget } from './data-plane/pass-through.js';
import { createGatewaySync } from './gateway-sync/index.js';
import type { KafkaAgent } from './kafka/kafka-agent.js';
import { EventBus } from './observability/event-bus.js';
import { createLogger } from './observability/logger.js';
import { ServerMetrics } from './observability/metrics.js';
import type { Route } from './routing/route-table.js';
import { RouteTargetPolicy } from './routing/route-targets.js';
import { ServiceResolver } from './routing/service-resolver.js';
import type { InterceptStore } from './store/intercept-store.js';
import { LapsedLeases } from './store/lapsed-leases.js';
import { MemoryInterceptStore } from './store/memory-store.js';
import { PgInterceptStore } from './store/pg-store.js';
import { TunnelHub } from './tunnel/tunnel-hub.js';

export interface RunningServer {
  controlPort: number;
  proxyPort: number;
  replicaId: string;
  log: Logger;
  /**
   * Leaves rotation, moves tunnel clients to other replicas and lets requests in flight
   * finish, for up to `timeoutMs`; close() then ends what is left.
   */
  drain(timeoutMs: number): Promise<DrainResult>;
  /** Stops at once, cutting what is in flight. Safe to call more than once. */
  close(): Promise<void>;
}

function listen(server: Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

/**
 * Why a listen address fails, by error code: each is a mistake in the host setting, not in
 * Kelsingra (a name that does not resolve, `999.999.999.999`, another machine's address).
 */
const HOST_PROBLEMS: Readonly<Record<string, string>> = {
  ENOTFOUND: 'it is neither an IP address nor a host name that resolves',
  EAI_AGAIN: 'the host name could not be resolved (DNS did not answer)',
  EADDRNOTAVAIL: "it is not one of this machine's addresses",
  EINVAL: 'it is not an address this machine can listen on (an IPv6 link-local address needs its %interface)',
  EAFNOSUPPORT: 'this machine does not support that address family',
};

/** A wildcard address is no use to a peer: it gets this machine's name instead. */
function advertisedHost(host: string): string {
  if (host === '0.0.0.0' || host === '::') return os.hostname();
  return host.includes(':') ? `[${host}]` : host;
}

export async function startServer(
  config: ServerConfig,
  log: Logger = createLogger(config.logLevel),
): Promise<RunningServer> {
  const replicaId = `ks-${randomBytes(4).toString('hex')}`;
  // Before anything opens: a bad certificate is a configuration error, not a half-started server.
  const tls = await loadTls(config.tls);
  const configured = tokenRecords(config.token, config.tokens);
  const auth = new TokenAuthority(configured);
  const plainTokens = config.tokens.filter((t) => t.token !== undefined).map((t) => t.name);
  if (plainTokens.length)
    log.warn(
      { tokenNames: plainTokens },
      'tokens configured with their secrets (token:); keep only the SHA-256 instead (tokenSha256:, printed by kelsingra token hash) so the file gives nothing away',
    );
  const audit = AuditLog.open(log, config.auditLog, replicaId);
  let store: InterceptStore;
  let pgStore: PgInterceptStore | undefined;
  if (config.databaseUrl) {
    pgStore = await PgInterceptStore.open({
      databaseUrl: config.databaseUrl,
      replicaId,
      ttlMs: config.leaseTtl * 1000,
      log,
    });
    store = pgStore;
    await pgStore.syncTokens(configured);
    auth.replace(await pgStore.loadTokens());
    if (auth.size === 0) {
      await pgStore.close();
      throw new KelsingraError(
        'the server agent needs a token: none is configured here and the database holds none',
        ExitCode.config,
        'pass --token <secret>, set KELSINGRA_TOKEN, or give a tokens file with --tokens-file',
      );
    }
  } else {
    store = new MemoryInterceptStore(config.leaseTtl * 1000);
  }
  const hub = new TunnelHub(
    store,
    replicaId,
    config.heartbeatInterval * 1000,
    log,
    config.maxTunnelStreams,
    config.maxTunnelsPerToken,
  );
  // The shared token set changed (another replica started with a new one): a token removed or
  // narrowed stops the tunnels and intercepts it already opened, not only new calls.
  store.on('tokens', (tokens) => {
    auth.replace(tokens);
    for (const intercept of hub.tokensChanged((was) => auth.successor(was)))
      audit.record({
        action: 'intercept.end',
        outcome: 'ended',
        reason: 'token-revoked',
        actor: { system: true },
        intercept: interceptField(intercept),
      });
  });
  let kafka: KafkaAgent | undefined;
  if (config.kafka) {
    try {
      // Loaded only here, so an agent without Kafka does not load kafkajs (about 2 MiB of RSS measured).
      const { startKafka } = await import('./kafka/kafka-agent.js');
      kafka = await startKafka(config.kafka, { store, hub, tenantHeader: config.tenantHeader, log });
    } catch (err) {
      hub.close();
      await store.close();
      throw err;
    }
  }
  const resolver = new ServiceResolver(config.services, config.previewUrl);
  const passThrough = new PassThroughProxy(config.upstreamTimeout * 1000, log, {
    maxBodyBytes: config.maxBodyBytes,
    bodyIdleMs: config.bodyIdleTimeout * 1000,
  });
  for (const name of resolver.names) passThrough.register(resolver.get(name) as UpstreamTarget);

  // A route's targets never change (its id is derived from them): one pool per route, from
  // when any replica sets it until it is deleted.
  const routeTargets = new Map<string, UpstreamTarget>();
  const routeTarget = (route: Route): UpstreamTarget => {
    let target = routeTargets.get(route.id);
    if (!target) {
      target = {
        name: `${route.service} route ${route.id}`,
        upstreams: route.targets.map((u) => new URL(u)),
        healthCheck: resolver.get(route.service)?.healthCheck ?? false,
        http2: resolver.get(route.service)?.http2 ?? true,
      };
      routeTargets.set(route.id, target);
      passThrough.register(target);
    }
    return target;
  };
  for (const route of store.listRoutes()) routeTarget(route);
  const routeTargetPolicy = new RouteTargetPolicy(config.routeTargets);
  for (const route of store.listRoutes()) {
    const outside = routeTargetPolicy.outside(route.targets);
    // Set before routeTargets was tightened: still routed, so the operator decides what goes.
    if (outside.length)
      log.warn(
        { route: route.id, service: route.service, targets: outside },
        'route sends to targets routeTargets no longer allows; kelsingra route delete removes it',
      );
  }
  store.on('routeSet', routeTarget);
  store.on('routeRemoved', (route) => {
    const target = routeTargets.get(route.id);
    if (!target) return;
    routeTargets.delete(route.id);
    passThrough.release(target);
  });

  const gateway = config.gateway
    ? createGatewaySync(config.gateway, {
        store,
        log,
        databaseUrl: config.databaseUrl,
        tenantHeader: config.tenantHeader,
        bases: new Map(Object.entries(config.services).map(([name, s]) => [name, s.upstream])),
      })
    : undefined;

  const bus = new EventBus();
  const lapses = new LapsedLeases((i) => (store.findRoute(i.service, i.tenant) ? 'route' : 'base'));
  store.on('created', (intercept) => {
    const view = interceptView(intercept, true);
    bus.publish({ type: 'intercept', action: 'created', intercept: view, at: Date.now() });
    const lapse = lapses.resumed(intercept);
    if (!lapse) return;
    log.info(
      {
        intercept: intercept.id,
        service: intercept.service,
        tenant: intercept.tenant,
        holder: intercept.holder,
        lapsedAt: new Date(lapse.lapsedAt).toISOString(),
        fallback: lapse.fallback,
        fallbackMs: lapse.fallbackMs,
      },
      'intercept resumed under its own id after its lease had lapsed',
    );
    bus.publish({ type: 'intercept', action: 'lapsed', intercept: view, ...lapse, at: Date.now() });
  });
  const metrics = new ServerMetrics({
    services: resolver.names,
    openTunnels: () => hub.list().filter((t) => t.open).length,
    intercepts: () => store.list(),
    routes: () => store.listRoutes(),
    backends: function* () {
      const services = resolver.names.map((n) => resolver.get(n)).filter((t) => t !== undefined);
      for (const b of passThrough.upstreams(services))
        yield { service: b.service, pool: 'base', state: b.state };
      for (const route of store.listRoutes())
        for (const b of passThrough.upstreams([routeTarget(route)]))
          yield { service: route.service, pool: 'route', state: b.state };
    },
    kafka,
  });
  // Once per expiry across replicas (every replica hears `ended`): the audit line, and the
  // counter, which a dashboard sums over replicas.
  store.on('expired', (intercept) => {
    metrics.leaseExpired(intercept.service);
    audit.record({
      action: 'intercept.end',
      outcome: 'ended',
      reason: 'expired',
      actor: { system: true },
      intercept: interceptField(intercept),
    });
  });
  store.on('ended', (intercept, reason) => {
    lapses.ended(intercept, reason);
    if (reason === 'expired') {
      log.info(
        { intercept: intercept.id, service: intercept.service, tenant: intercept.tenant },
        'intercept lease expired',
      );
    }
    bus.publish({
      type: 'intercept',
      action: 'ended',
      reason,
      intercept: interceptView(intercept, false),
      at: Date.now(),
    });
  });

  const data = createDataPlane({
    resolver,
    store,
    hub,
    passThrough,
    tenantHeader: config.tenantHeader,
    keys: { order: config.routingKeys, tenantHeader: config.tenantHeader, baggageKey: config.baggageKey },
    routeTarget,
    replicaId,
    timeoutMs: config.upstreamTimeout * 1000,
    bus,
    log,
    metrics,
    relaySecret: () => pgStore?.relaySecret,
    maxBodyBytes: config.maxBodyBytes,
    draining: () => drain.draining,
    bodyIdleMs: config.bodyIdleTimeout * 1000,
    tenantConcurrency: config.tenantConcurrency,
  });
  const control = createControlPlane({
    auth,
    store,
    hub,
    resolver,
    passThrough,
    replicaId,
    tenantHeader: config.tenantHeader,
    baggageKey: config.baggageKey,
    previewUrl: config.previewUrl,
    serveGateway: data.serveGateway,
    routeTarget,
    routeTargetPolicy,
    bus,
    lapses,
    log,
    metrics,
    audit,
    authLimiter: new AuthFailureLimiter({
      failures: config.authFailureLimit,
      windowMs: config.authFailureWindow * 1000,
    }),
    clientAddresses: new ClientAddresses(config.trustedProxies),
    kafka,
    kafkaTopicsOf: (service) =>
      Object.entries(config.kafka?.topics ?? {})
        .filter(([, t]) => t.service === service)
        .map(([name]) => name),
    draining: () => drain.draining,
    gateway: gateway?.sync,
    traefik: gateway?.traefik,
  });
  const clientErrors = new ClientErrorLog(log);
  answerClientErrors(control, 'control', clientErrors);
  answerClientErrors(data.server, 'data', clientErrors);
  // The control port's HTTP/2 side is for the gateway's gRPC calls; every endpoint answers there alike.
  const controlHttp2 = serveHttp2(control, (req, res) => control.emit('request', req, res));
  const tlsPorts: TlsPort[] = [];
  if (tls?.ports.includes('control'))
    tlsPorts.push(serveTls(control, 'control', tls, clientErrors, controlHttp2));
  if (tls?.ports.includes('data'))
    tlsPorts.push(serveTls(data.server, 'data', tls, clientErrors, data.http2));
  const drain = new Drain({
    control,
    data: data.server,
    dataInFlight: data.inFlight,
    hub,
    http2: [data.http2, controlHttp2],
    peersAlive: () => store.health().replicas?.some((r) => !r.self && r.alive) ?? false,
    peerDiscoveryMs: pgStore ? 2 * pgStore.heartbeatMs : 0,
    log,
  });
  let controlPort: number;
  let proxyPort: number;
  try {
    controlPort = await listen(control, config.port, config.host);
    proxyPort = await listen(data.server, config.proxyPort, config.host);
  } catch (err) {
    control.close();
    hub.close();
    await kafka?.close();
    await store.close();
    const e = err as NodeJS.ErrnoException & { port?: number; address?: string };
    const hostProblem = HOST_PROBLEMS[e.code ?? ''];
    if (hostProblem)
      throw new KelsingraError(
        `cannot listen on ${config.host} (--host, KELSINGRA_HOST, host: in the config file): ${hostProblem} (${e.code})`,
        ExitCode.config,
        'set --host to an address of this machine: 127.0.0.1 (the default), 0.0.0.0 for every IPv4 interface, :: for every interface',
      );
    if (e.code === 'EADDRINUSE' || e.code === 'EACCES') {
      const which =
        e.port === config.port
          ? 'control port (--port, KELSINGRA_PORT)'
          : 'data port (--proxy-port, KELSINGRA_PROXY_PORT)';
      throw new KelsingraError(
        `cannot listen on ${e.address ?? config.host}:${e.port}: ${e.code === 'EADDRINUSE' ? 'the address is already in use' : 'permission denied'}`,
        ExitCode.config,
        `is another server agent running? choose another ${which}`,
      );
    }
    throw err;
  }
  if (pgStore) {
    const scheme = tls?.ports.includes('data') ? 'https' : 'http';
    const advertised = config.advertiseUrl ?? `${scheme}://${advertisedHost(config.host)}:${proxyPort}`;
    await pgStore.announce(advertised);
  }
  // Once the data port listens: the gateway may send intercepted tenants here from now on.
  await gateway?.sync.start();
  log.info(
    {
      controlPort,
      proxyPort,
      services: resolver.names,
      tenantHeader: config.tenantHeader,
      serverId: replicaId,
      store: store.health().kind,
      tls: tls?.ports ?? [],
    },
    'server agent listening',
  );

  // A second signal stops at once while a drain is still under way; the drain's own close follows.
  let closing: Promise<void> | undefined;
  return {
    controlPort,
    proxyPort,
    replicaId,
    log,
    drain: (timeoutMs) => drain.drain(timeoutMs),
    close() {
      closing ??= (async () => {
        await gateway?.sync.close();
        hub.close();
        await kafka?.close();
        await store.close();
        control.closeAllConnections();
        data.server.closeAllConnections();
        data.http2.closeAll();
        controlHttp2.closeAll();
        for (const port of tlsPorts) port.closePending();
        clientErrors.stop();
        await Promise.all([
          new Promise((r) => control.close(r)),
          new Promise((r) => data.server.close(r)),
          passThrough.close(),
        ]);
        audit.close();
      })();
      return closing;
    },
  };
}
