import { setTimeout as sleep } from 'node:timers/promises';
import { Flags } from '@oclif/core';
import { BaseCommand } from '../src/cli/base-command.js';
import { type EventQuery, followEvents } from '../src/client/api/server-events.js';
import { type ClientSettings, loadSettings } from '../src/client/api/settings.js';
import { followDashboard } from '../src/client/dashboard/dashboard-feed.js';
import { DashboardModel, formatDashboardTable } from '../src/client/dashboard/dashboard-model.js';
import type { RequestRecord } from '../src/shared/protocol.js';

export default class Dashboard extends BaseCommand {
  static override summary =
    'Watch your intercepts live: request rate, error rate, p50/p99 latency, last request, upstream health.';
  static override description =
    `Fed by the server agent's event stream (no polling). Rates, error rates and percentiles cover the last 10 s; request and error counts cover the server's recent records of each intercept (its last 200 requests) and everything since.

In a terminal: a live table. Keys: ↑/↓ select an intercept, enter opens its live request log, esc goes back, ? shows the keys, q (or ctrl-c) quits.

Without a TTY (CI, pipes) it prints a plain table every --interval seconds until interrupted; with --json, one JSON object per line (NDJSON) instead: {at, connection, windowSeconds, scope, intercepts: [{id, service, tenant, holder, requests, errors, windowRequests, rate, errorRate, p50Ms, p99Ms, lastRequest (with upgrade and close for a WebSocket)}], upstreams: [{service, url, state: ok|error|idle, lastOkAt, lastError, lastErrorAt}]}. The first line comes as soon as the stream is live. With --once it watches for one --interval, prints one table (or one JSON line) and exits.

Ctrl-C exits 0. A rejected token exits 3, an unreachable server 6. If the stream breaks after it was live, the dashboard reconnects on its own.`;
  static override examples = [
    '<%= config.bin %> dashboard',
    '<%= config.bin %> dashboard --all',
    "<%= config.bin %> dashboard --json | jq -c '.intercepts[] | {service, tenant, rate, errorRate}'",
    '<%= config.bin %> dashboard --all --once --interval 5',
  ];

  static override flags = {
    json: Flags.boolean({
      description: 'one JSON object per line (NDJSON), every --interval seconds',
      default: false,
    }),
    all: Flags.boolean({
      char: 'a',
      description: 'every intercept your token may see, not only the ones you hold',
      default: false,
    }),
    interval: Flags.integer({
      description: 'seconds between tables or JSON lines without a TTY',
      default: 2,
      min: 1,
    }),
    once: Flags.boolean({
      description: 'watch for one --interval, print one table (or JSON line) and exit',
      default: false,
    }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Dashboard);
    const settings = loadSettings();
    // With history: an intercept that was busy before the dashboard opened shows its counts
    // and last request from the server's recent records (the last 200 per intercept).
    const query: EventQuery = flags.all ? { history: true } : { holder: settings.holder, history: true };
    const scope = flags.all ? 'all intercepts' : `your intercepts (${settings.holder})`;
    const emptyHint = flags.all
      ? 'No intercepts on this server that your token may see.'
      : `You hold no intercepts. Start one with kelsingra intercept <service> --tenant <t> --port <local-port>, or see everyone's with kelsingra dashboard --all.`;

    const abort = new AbortController();
    const stop = () => abort.abort();
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    const model = new DashboardModel();
    const feed = followDashboard(model, {
      open: (signal) => followEvents(settings, query, signal),
      server: settings.server,
      signal: abort.signal,
    });
    try {
      await Promise.race([feed.live, feed.done]);
      if (abort.signal.aborted) return;
      const interactive = !flags.json && !flags.once && process.stdout.isTTY && process.stdin.isTTY;
      if (interactive) await this.interactive(model, settings, scope, emptyHint, feed.done, abort);
      else {
        const print = () => {
          const snapshot = model.snapshot();
          if (flags.json) {
            const line = {
              ...snapshot,
              scope: flags.all ? 'all' : 'mine',
              ...(flags.all ? {} : { holder: settings.holder }),
            };
            process.stdout.write(`${JSON.stringify(line)}\n`);
          } else process.stdout.write(`${formatDashboardTable(snapshot, emptyHint)}\n`);
        };
        if (flags.once) {
          await Promise.race([
            sleep(flags.interval * 1000, undefined, { signal: abort.signal }).catch(() => undefined),
            feed.done,
          ]);
          print();
          abort.abort();
        } else {
          print();
          const timer = setInterval(print, flags.interval * 1000);
          try {
            await feed.done;
          } finally {
            clearInterval(timer);
          }
        }
      }
      await feed.done;
    } finally {
      abort.abort();
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    }
  }

  private async interactive(
    model: DashboardModel,
    settings: ClientSettings,
    scope: string,
    emptyHint: string,
    done: Promise<void>,
    abort: AbortController,
  ): Promise<void> {
    // Ink and React load only for the live view: scripts and pipes start faster without them.
    const [{ render }, { createElement }, { Dashboard: View }] = await Promise.all([
      import('ink'),
      import('react'),
      import('../src/ui/Dashboard.js'),
    ]);
    const loadHistory = async (interceptId: string): Promise<RequestRecord[]> => {
      const records: RequestRecord[] = [];
      const local = new AbortController();
      const onAbort = () => local.abort();
      abort.signal.addEventListener('abort', onAbort, { once: true });
      try {
        for await (const event of followEvents(
          settings,
          { intercept: interceptId, history: true },
          local.signal,
        )) {
          if (event.type === 'request') records.push(event);
          else if (event.type === 'live') break;
        }
      } finally {
        local.abort();
        abort.signal.removeEventListener('abort', onAbort);
      }
      return records;
    };
    const app = render(
      createElement(View, { model, scope, server: settings.server, emptyHint, loadHistory }),
      {
        exitOnCtrlC: false,
      },
    );
    try {
      await Promise.race([app.waitUntilExit(), done]);
    } finally {
      abort.abort();
      app.unmount();
    }
  }
}
