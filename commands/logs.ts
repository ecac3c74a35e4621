import { Args, Flags } from '@oclif/core';
import { BaseCommand, ndjsonFlag } from '../src/cli/base-command.js';
import { type Spinner, startSpinner } from '../src/cli/spinner.js';
import { ApiClient } from '../src/client/api/api-client.js';
import { followEvents } from '../src/client/api/server-events.js';
import { loadSettings } from '../src/client/api/settings.js';
import { findIntercept } from '../src/client/intercept/intercept-lookup.js';
import { formatLapseLine, formatRecordLine } from '../src/client/intercept/request-log.js';
import { ExitCode, KelsingraError } from '../src/shared/errors.js';

export default class Logs extends BaseCommand {
  static override baseFlags = ndjsonFlag();
  static override summary = "Show an intercept's recent requests; --follow keeps streaming them.";
  static override description =
    'Works from any shell for any intercept your token may see, including one started with --detach. The request lines come from the server agent, so they show what callers got; a WebSocket is one line once it closed (WS, 101, how long it was open, bytes from the caller ↑ and from the local service ↓, and how it closed, e.g. closed by caller 1000). A lease that lapsed (the client asleep or cut off) and came back under the same id shows as a line saying when, and where the tenant traffic went meanwhile. With --json, one JSON object per line (NDJSON): each request, {"type":"intercept","action":"lapsed",…} for a lapse, then {"type":"intercept","action":"ended",…} if the intercept ends while you follow it.';
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
    follow: Flags.boolean({
      char: 'f',
      description: 'keep streaming new requests until the intercept ends',
      default: false,
    }),
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(Logs);
    const settings = loadSettings();
    const out = (line: string) => process.stdout.write(`${line}\n`);
    const abort = new AbortController();
    let spinner: Spinner | undefined = startSpinner('Connecting to the server agent', {
      enabled: !flags.json,
    });
    const stopSpinner = () => {
      spinner?.stop();
      spinner = undefined;
    };
    try {
      const intercept = await findIntercept(
        new ApiClient(settings.server, settings.token),
        args.target,
        flags.tenant,
      );
      // Until here Ctrl-C simply interrupts; from here it ends the stream and exits cleanly.
      process.once('SIGINT', () => abort.abort());
      const ended = (reason?: string): void => {
        if (!flags.json) out(`intercept ended: ${reason === 'expired' ? 'lease expired' : 'left'}`);
      };
      for await (const event of followEvents(
        settings,
        { intercept: intercept.id, history: true },
        abort.signal,
      )) {
        stopSpinner();
        if (event.type === 'snapshot') {
          if (!flags.json)
            out(
              `Requests for ${intercept.service}, tenant ${intercept.tenant} (${intercept.id}, held by ${intercept.holder}):`,
            );
          // It ended between the lookup and the stream: nothing more will come.
          if (!event.intercepts.some((i) => i.id === intercept.id)) return ended();
        } else if (event.type === 'request')
          out(flags.json ? JSON.stringify(event) : formatRecordLine(event));
        else if (event.type === 'intercept' && event.action === 'lapsed')
          out(
            flags.json
              ? JSON.stringify(event)
              : formatLapseLine({ ...event, interceptId: event.intercept.id }),
          );
        else if (event.type === 'live' && !flags.follow) return;
        else if (event.type === 'intercept' && event.action === 'ended') {
          if (flags.json) out(JSON.stringify(event));
          return ended(event.reason);
        }
      }
      if (!abort.signal.aborted) {
        throw new KelsingraError(
          `the server agent at ${settings.server} closed the event stream`,
          ExitCode.unreachable,
          'check that the server agent is still running (kelsingra status), then run kelsingra logs again',
        );
      }
    } finally {
      stopSpinner();
      abort.abort();
    }
  }
}
