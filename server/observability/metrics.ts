/**
 * Prometheus metrics of one server agent, served at `GET /metrics` on the control port.
 *
 * /metrics needs no token (scrapers seldom carry one), so labels only ever hold what the
 * operator configured (service and topic names) or Kelsingra's own words (decision, status
 * class, error code, backend state): never a tenant, token, holder, path or URL. That also
 * keeps the number of series bounded however many tenants and requests pass.
 *
 * Each server agent has a registry of its own rather than prom-client's global one: tests
 * (and the demo) run several agents in one process.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { KafkaAgent, KafkaLag } from '../kafka/kafka-agent.js';

/** Where a data-plane request went: `base` is the service's own upstream pool. */
export type DecisionLabel = 'tunnel' | 'relay' | 'route' | 'base' | 'error';

/** What the gauges read at scrape time, so nothing on the request path keeps counts for them. */
export interface MetricSources {
  /** Configured services: their gauges show 0 rather than vanish when nothing is live. */
  services: readonly string[];
  openTunnels(): number;
  intercepts(): Iterable<{ service: string }>;
  routes(): Iterable<{ service: string; tenants: readonly string[] }>;
  /** Every backend of the services' pools (`base`) and of the routes' pools (`route`). */
  backends(): Iterable<{ service: string; pool: 'base' | 'route'; state: string }>;
  /** Present when the agent runs Kafka. */
  kafka?: Pick<KafkaAgent, 'lag'>;
}

/** Reading lag asks the brokers: a scrape waits this long at most, and readings are reused this long. */
const KAFKA_LAG_TIMEOUT_MS = 2_000;
const KAFKA_LAG_FRESH_MS = 5_000;

/** From a cache hit (~1 ms) to --upstream-timeout's default (30 s). */
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** `2xx`…`5xx`, or `none` when the caller got no status line (it hung up first, or the connection was cut). */
export function statusClass(status: number | undefined): string {
  return status === undefined ? 'none' : `${Math.floor(status / 100)}xx`;
}

export class ServerMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'decision' | 'service' | 'status_class' | 'code'>;
  private readonly duration: Histogram<'decision'>;
  private readonly expiries: Counter<'service'>;
  private readonly kafkaLagErrors: Counter;
  private kafkaReading?: { at: number; lag: KafkaLag };
  private kafkaPending?: Promise<KafkaLag>;
  private kafkaRound?: Promise<KafkaLag | undefined>;

  constructor(private readonly sources: MetricSources) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.requests = new Counter({
      name: 'kelsingra_requests_total',
      help: 'Data-plane requests (gateway calls included) by where they went, service, status class and, for answers Kelsingra made itself, its error code.',
      labelNames: ['decision', 'service', 'status_class', 'code'],
      registers,
    });
    this.duration = new Histogram({
      name: 'kelsingra_request_duration_seconds',
      help: 'Data-plane request duration, from arrival to the end of the response, by where it went.',
      labelNames: ['decision'],
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.expiries = new Counter({
      name: 'kelsingra_lease_expiries_total',
      help: 'Intercepts whose lease expired (the client stopped renewing), counted by the replica that ended them: sum over replicas.',
      labelNames: ['service'],
      registers,
    });
    this.kafkaLagErrors = new Counter({
      name: 'kelsingra_kafka_lag_errors_total',
      help: 'Scrapes whose Kafka lag could not be read in time; the lag gauges are left out of those scrapes.',
      registers,
    });
    new Gauge({
      name: 'kelsingra_tunnels_open',
      help: 'Client tunnels open on this replica.',
      registers,
      collect() {
        this.set(sources.openTunnels());
      },
    });
    const perService = (name: string, help: string, count: () => Iterable<[string, number]>) =>
      new Gauge({
        name,
        help,
        labelNames: ['service'],
        registers,
        collect() {
          this.reset();
          for (const service of sources.services) this.set({ service }, 0);
          for (const [service, n] of count()) this.inc({ service }, n);
        },
      });
    perService('kelsingra_intercepts', 'Live intercepts (leases not yet ended), all replicas.', function* () {
      for (const i of sources.intercepts()) yield [i.service, 1];
    });
    perService('kelsingra_routes', 'Tenant routes, all replicas.', function* () {
      for (const r of sources.routes()) yield [r.service, 1];
    });
    perService('kelsingra_routed_tenants', 'Tenants sent to a tenant route, all replicas.', function* () {
      for (const r of sources.routes()) yield [r.service, r.tenants.length];
    });
    new Gauge({
      name: 'kelsingra_upstream_backends',
      help: 'Backends of the services’ upstream pools (pool="base") and of tenant routes’ pools (pool="route", one count per route), by state.',
      labelNames: ['service', 'pool', 'state'],
      registers,
      collect() {
        this.reset();
        for (const b of sources.backends()) this.inc({ service: b.service, pool: b.pool, state: b.state });
      },
    });
    if (sources.kafka) {
      const metrics = this;
      new Gauge({
        name: 'kelsingra_kafka_consumer_lag',
        help: 'Messages of an intercepted dev topic the splitter has not handled yet (its consumer group, shared by every replica).',
        labelNames: ['topic', 'service'],
        registers,
        async collect() {
          this.reset();
          for (const t of (await metrics.kafkaLag())?.topics ?? [])
            this.set({ topic: t.topic, service: t.service }, t.lag);
        },
      });
      new Gauge({
        name: 'kelsingra_kafka_delivery_lag',
        help: 'Messages diverted to developers that their clients have not acknowledged yet, for deliveries running on this replica.',
        labelNames: ['service'],
        registers,
        async collect() {
          this.reset();
          for (const d of (await metrics.kafkaLag())?.deliveries ?? [])
            this.inc({ service: d.service }, d.lag);
        },
      });
    }
  }

  /** One data-plane request, counted once its response is over. */
  request(
    decision: DecisionLabel,
    service: string,
    status: number | undefined,
    code: string | undefined,
    seconds: number,
  ): void {
    this.requests.inc({ decision, service, status_class: statusClass(status), code: code ?? '' });
    this.duration.observe({ decision }, seconds);
  }

  leaseExpired(service: string): void {
    this.expiries.inc({ service });
  }

  /** The text exposition format, for GET /metrics. */
  async serve(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  /** Both lag gauges of one scrape share one reading (and count one error, not two). */
  private kafkaLag(): Promise<KafkaLag | undefined> {
    this.kafkaRound ??= this.readKafkaLag().finally(() => {
      this.kafkaRound = undefined;
    });
    return this.kafkaRound;
  }

  /**
   * The last reading if fresh, else a new one, waited for KAFKA_LAG_TIMEOUT_MS at most. One
   * read at a time: a slow broker is not asked again by every scrape that piles up behind it.
   */
  private async readKafkaLag(): Promise<KafkaLag | undefined> {
    const { kafka } = this.sources;
    if (!kafka) return undefined;
    if (this.kafkaReading && Date.now() - this.kafkaReading.at < KAFKA_LAG_FRESH_MS)
      return this.kafkaReading.lag;
    if (!this.kafkaPending) {
      const pending = kafka.lag().then((lag) => {
        this.kafkaReading = { at: Date.now(), lag };
        return lag;
      });
      this.kafkaPending = pending;
      const forget = () => {
        if (this.kafkaPending === pending) this.kafkaPending = undefined;
      };
      pending.then(forget, forget);
    }
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), KAFKA_LAG_TIMEOUT_MS);
      timer.unref();
    });
    try {
      const lag = await Promise.race([this.kafkaPending, timeout]);
      if (!lag) this.kafkaLagErrors.inc();
      return lag;
    } catch {
      this.kafkaLagErrors.inc();
      return undefined;
    } finally {
      clearTimeout(timer);
    }
  }
}
