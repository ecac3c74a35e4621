import { fileURLToPath } from 'node:url';
import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../src/cli/base-command.js';
import { type AgentMessage, agentLogFile, startDetachedAgent } from '../src/detach.js';
import { ExitCode, KelsingraError } from '../src/errors.js';
import { runIntercept } from '../src/intercept-runner.js';
import type { InterceptRequest } from '../src/intercept-session.js';
import { kafkaFlags, parseKafkaOptions } from '../src/kafka-options.js';
import { loadSettings } from '../src/settings.js';

export default class Intercept extends BaseCommand {
  static override summary = "Send one tenant's traffic for a service to a port on this machine.";
  static override description =
    'Without --detach the intercept lives while this command runs and leaves on Ctrl-C or q, or when the command after -- exits (its exit code becomes this one). On a terminal it shows a live request log (keys: q leave, p pause the view, ↑/↓ + enter request details, esc close, ? keys); in a pipe it prints one plain line per request, with --json one JSON event per line. With --detach it returns once the intercept is live and a background agent holds it until `kelsingra leave` or lease expiry.';
  static override examples = [
    '<%= config.bin %> intercept billing --tenant t1 --port 3000',
    '<%= config.bin %> intercept billing --tenant t1 --port 3000 --detach --json',
    '<%= config.bin %> intercept billing --tenant t1 --port 3000 -- npm run dev',
    '<%= config.bin %> intercept billing --tenant t1 --port 3000 --kafka-local localhost:9092 --forward-topic invoices',
  ];
  static override strict = false;

  static override args = {
    service: Args.string({
      description: 'service to intercept, as the server agent names it',
      required: true,
    }),
  };

  static override flags = {
    tenant: Flags.string({
      char: 't',
      description: 'tenant (routing key) whose traffic to intercept',
      required: true,
    }),
    port: Flags.integer({
      char: 'p',
      description: 'local port your copy of the service listens on',
      required: true,
      min: 1,
      max: 65535,
    }),
    detach: Flags.boolean({
      char: 'd',
      description: 'return once live; a background agent keeps the intercept',
      default: false,
    }),
    'kafka-local': Flags.string({
      description:
        "your own Kafka broker (host:port): the tenant's messages on the service's dev topics are produced here",
      helpGroup: 'KAFKA',
    }),
    'kafka-topic': Flags.string({
      description:
        'only this dev topic, optionally under another local name: <dev>[=<local>] (repeatable; default: every topic of the service, same names)',
      multiple: true,
      helpGroup: 'KAFKA',
    }),
    'forward-topic': Flags.string({
      description:
        'consume this local topic and produce it into dev as the tenant: <local>[=<dev>] (repeatable)',
      multiple: true,
      helpGroup: 'KAFKA',
    }),
    agent: Flags.boolean({ hidden: true, default: false }),
  };

  async run(): Promise<void> {
    const split = this.argv.indexOf('--');
    const own = split === -1 ? this.argv : this.argv.slice(0, split);
    const command = split === -1 ? [] : this.argv.slice(split + 1);
    const { args, flags } = await this.parse(
      { ...Intercept, baseFlags: Intercept.baseFlags, strict: true },
      own,
    );
    const settings = loadSettings();
    const kafka = parseKafkaOptions({
      local: flags['kafka-local'],
      topics: flags['kafka-topic'],
      forward: flags['forward-topic'],
    });
    const want = { service: args.service, tenant: flags.tenant, port: flags.port, kafka };

    if (flags.agent) {
      await this.runAgent(settings, want);
      return;
    }
    if (flags.detach) {
      if (command.length)
        throw new KelsingraError(
          '--detach cannot run a command after --',
          ExitCode.usage,
          'drop --detach to run the command with the intercept, or start it yourself',
        );
      const logFile = agentLogFile(settings.configDir, want.service, want.tenant);
      const bin = fileURLToPath(new URL('../../bin/run.js', import.meta.url));
      const ready = await startDetachedAgent(
        bin,
        [
          'intercept',
          want.service,
          '--tenant',
          want.tenant,
          '--port',
          String(want.port),
          ...kafkaFlags(kafka),
        ],
        logFile,
      );
      if (flags.json) this.printJson({ ...ready.intercept, agentPid: ready.pid, logFile: ready.logFile });
      else
        this.log(
          `Intercepting ${want.service} for tenant ${want.tenant} → localhost:${want.port} (intercept ${ready.intercept.id}). Background agent pid ${ready.pid}, log ${ready.logFile}.\nStop it with: kelsingra leave ${want.service} --tenant ${want.tenant}`,
        );
      return;
    }
    const code = await runIntercept(settings, want, { json: flags.json, command });
    this.exit(code);
  }

  /** The background half of --detach: report readiness or failure to the parent over IPC. */
  private async runAgent(settings: ReturnType<typeof loadSettings>, want: InterceptRequest): Promise<void> {
    const report = (message: AgentMessage) => process.send?.(message);
    const logFile = agentLogFile(settings.configDir, want.service, want.tenant);
    let code: number;
    try {
      code = await runIntercept(settings, want, {
        json: false,
        // The agent's stdout is its log file: plain lines, whatever terminal started it.
        view: 'plain',
        onLive: (intercept) => {
          report({ type: 'ready', intercept, pid: process.pid, logFile });
          process.disconnect?.();
        },
      });
    } catch (err) {
      const e = err instanceof KelsingraError ? err : new KelsingraError((err as Error).message);
      report({ type: 'error', message: e.message, exitCode: e.exitCode, hint: e.hint, details: e.details });
      throw err;
    }
    this.exit(code);
  }
}
