import { BaseCommand } from '../src/cli/base-command.js';
import { principalLine } from '../src/cli/token-summary.js';
import { ApiClient } from '../src/client/api/api-client.js';
import { loadSettings } from '../src/client/api/settings.js';
import { formatUpstream, upstreamState } from '../src/client/dashboard/dashboard-model.js';
import { interceptTable } from '../src/client/intercept/intercept-table.js';
import type { StoreHealth } from '../src/shared/protocol.js';

export default class Status extends BaseCommand {
  static override summary = 'Show the server agent: services, upstreams, intercepts, connected clients.';
  static override examples = ['<%= config.bin %> status', '<%= config.bin %> status --json'];

  async run(): Promise<void> {
    const { flags } = await this.parse(Status);
    const settings = loadSettings();
    const status = await this.spin(
      `Asking ${settings.server}`,
      new ApiClient(settings.server, settings.token).status(),
    );
    if (flags.json) {
      this.printJson({ server: settings.server, holder: settings.holder, ...status });
      return;
    }
    this.log(
      `Server ${settings.server} (${status.serverId}, version ${status.version}); tenant header ${status.tenantHeader}`,
    );
    if (status.principal) this.log(principalLine(status.principal));
    this.log(storeLine(status.store));
    this.log('\nServices:');
    // One row per backend: a service with a pool of backends has several.
    for (const u of status.upstreams) {
      this.log(`  ${u.service.padEnd(16)} ${u.url}  ${formatUpstream({ ...u, state: upstreamState(u) })}`);
    }
    this.log(`\nIntercepts:\n${interceptTable(status.intercepts).replace(/^/gm, '  ')}`);
    if (status.kafka) {
      this.log('\nKafka topics (messages split by this replica):');
      for (const [topic, t] of Object.entries(status.kafka.topics))
        this.log(
          `  ${topic.padEnd(24)} ${t.mode.padEnd(6)}  to developers ${t.diverted}, to base ${t.passed}`,
        );
      if (status.kafka.deliveries.length) this.log('Deliveries to developers (from this replica):');
      for (const d of status.kafka.deliveries)
        this.log(`  ${d.intercept}  ${d.topic}  delivered ${d.delivered}, waiting ${d.lag}`);
    }
    this.log(`\nClients connected: ${status.clients.length}`);
    for (const c of status.clients) this.log(`  ${c.holder} (${c.tunnelId}), since ${c.connectedAt}`);
  }
}

function storeLine(store: StoreHealth): string {
  if (store.kind === 'memory') return 'Store: in memory (a single server agent)';
  const replicas = (store.replicas ?? [])
    .map((r) => `${r.id}${r.self ? ' (this one)' : r.alive ? '' : ' (not answering)'}`)
    .join(', ');
  const state =
    store.state === 'ok'
      ? 'ok'
      : `DEGRADED since ${store.since}: ${store.error}; routing from memory, no intercept can be created or removed`;
  return `Store: PostgreSQL, ${state}\nReplicas: ${replicas}`;
}
