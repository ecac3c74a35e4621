import { Args, Flags } from '@oclif/core';
import { ApiClient } from '../src/api-client.js';
import { BaseCommand } from '../src/cli/base-command.js';
import { findIntercept } from '../src/intercept-lookup.js';
import { formatRequestLine } from '../src/request-log.js';
import { followEvents } from '../src/server-events.js';
import { loadSettings } from '../src/settings.js';

export default class Logs extends BaseCommand {
  static override summary = "Show an intercept's recent requests; --follow keeps streaming them.";
  static override description =
    'Works from any shell for any intercept your token may see, including one started with --detach. The request lines come from the server agent, so they show what callers got. With --json, one JSON object per line.';
  static override examples = [
    '<%= config.bin %> logs billing --tenant t1 --follow',
    '<%= config.bin %> logs icp_3f9a1c0d2b7e',
    '<%= config.bin %> logs billing -t t1 -f --json | jq .status',
  ];

  static override args = {
    target: Args.string({ description: 'service name (with --tenant) or intercept id', required: true }),
  };

  static override flags = {
    tenant: Flags.string({ char: 't', description: 'tenant of the intercept' }),
    follow: Flags.boolean({ char: 'f', description: 'keep streaming new requests until the intercept ends', default: false }),
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(Logs);
    const settings = loadSettings();
    const intercept = await findIntercept(new ApiClient(settings.server, settings.token), args.target, flags.tenant);
    const out = (line: string) => process.stdout.write(`${line}\n`);
    const abort = new AbortController();
    process.once('SIGINT', () => abort.abort());
    if (!flags.json) out(`Requests for ${intercept.service}, tenant ${intercept.tenant} (${intercept.id}, held by ${intercept.holder}):`);
    for await (const event of followEvents(settings, { intercept: intercept.id, history: true }, abort.signal)) {
      if (event.type === 'request') out(flags.json ? JSON.stringify(event) : formatRequestLine({ ...event, startedAt: event.at }));
      else if (event.type === 'live' && !flags.follow) break;
      else if (event.type === 'intercept' && event.action === 'ended') {
        if (flags.json) out(JSON.stringify(event));
        else out(`intercept ended: ${event.reason === 'expired' ? 'lease expired' : 'left'}`);
        break;
      }
    }
    abort.abort();
  }
}
