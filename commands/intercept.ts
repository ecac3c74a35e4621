import { fileURLToPath } from 'node:url';
import { Args, Flags } from '@oclif/core';
import { BaseCommand, ndjsonFlag } from '../src/cli/base-command.js';
import { routingKeyFlags, routingKeyFrom } from '../src/cli/routing-key.js';
import { loadSettings } from '../src/client/api/settings.js';
import { type AgentMessage, agentLogFile, startDetachedAgent } from '../src/client/intercept/detach.js';
import { type RunOptions, runIntercept } from '../src/client/intercept/intercept-runner.js';
import type { InterceptRequest } from '../src/client/intercept/intercept-session.js';
import { kafkaFlags, parseKafkaOptions } from '../src/client/kafka/kafka-options.js';
import { ExitCode, KelsingraError } from '../src/shared/errors.js';

export default class Intercept extends BaseCommand {
  static override summary = "Send one tenant's traffic for a service to a port on this machine.";
  static override description =
    'Without --detach the intercept lives while this command runs and leaves on Ctrl-C or q, or when the command after -- exits (its exit code becomes this one). On a terminal it shows a live request log (keys: q leave, p pause the view, ↑/↓ + enter request details, esc close, ? keys); in a pipe it prints one plain line per request, with --json one JSON event per line. With --detach it returns once the intercept is live and a background agent holds it until `kelsingra leave` or lease expiry.\n\nThe routing key is a tenant (--tenant) or any key such as a feature label (--key). When the server agent has preview URLs, the intercept prints the one for its key.\n\nOutbound gateway (on unless --no-gateway): a local HTTP gateway on 127.0.0.1 (--gateway-port, default 0: any free port; printed as "gateway: <url>", and "gateway" with --json) through which your service calls the other dev services, with the tenant header, traceparent and baggage added; calls reach your own other intercepts for the same key. Call $KELSINGRA_GATEWAY/<service>/<path>, or let HTTP_PROXY do it: the command after -- gets KELSINGRA_GATEWAY, HTTP_PROXY/http_proxy, NO_PROXY/no_proxy (plus localhost,127.0.0.1,::1) and NODE_USE_ENV_PROXY=1. --cors lets a browser front end on localhost call it.';
  static override examples = [
    '<%= config.bin %> intercept billing --tenant t1 --port 3000',
    '<%= config.bin %> intercept billing --tenant t1 --port 3000 --detach --json',
    '<%= config.bin %> intercept billing --tenant t1 --port 3000 -- npm run dev',
    '<%= config.bin %> intercept billing --key feature1 --port 3000 --gateway-port 7790',
    '<%= config.bin %> intercept web --tenant t1 --port 5173 --cors -- npm run dev',
    '<%= config.bin %> intercept billing --tenant t1 --port 3000 --kafka-local localhost:9092 --forward-topic invoices',
  ];
  // Not strict (the words after -- are the command's), which would make oclif print SERVICE...
  static override strict = false;
  static override usage =
    'intercept SERVICE (-t <tenant> | -k <key>) -p <port> [--detach] [--json] [--no-gateway] [--gateway-port <n>] [--cors] [--kafka-local <host:port>] [--kafka-topic <dev>[=<local>]...] [--forward-topic <local>[=<dev>]...] [-- <command>...]';
  static override baseFlags = ndjsonFlag(
    'print JSON on stdout and nothing else: one event per line (NDJSON); with --detach one document',
  );

  static override args = {
    service: Args.string({
      description: 'service to intercept, as the server agent names it',
      required: true,
    }),
  };

  static override flags = {
    ...routingKeyFlags,
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
    gateway: Flags.boolean({
      description: 'run the outbound gateway (--no-gateway: none)',
      default: true,
      allowNo: true,
      helpGroup: 'GATEWAY',
    }),
    'gateway-port': Flags.integer({
      description: 'port of the outbound gateway on 127.0.0.1 (0: any free port)',
      default: 0,
      min: 0,
      max: 65535,
      helpGroup: 'GATEWAY',
    }),
    cors: Flags.boolean({
      description:
        'the gateway answers CORS for pages on localhost / 127.0.0.1 / [::1] (a browser front end)',
      default: false,
      helpGroup: 'GATEWAY',
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
    const tenant = routingKeyFrom(flags, 'intercept');
    const want = { service: args.service, tenant, port: flags.port, kafka };
    const gateway = flags.gateway ? { port: flags['gateway-port'], cors: flags.cors } : undefined;

    if (flags.agent) {
      await this.runAgent(settings, want, gateway);
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
          ...(gateway
            ? ['--gateway-port', String(gateway.port), ...(gateway.cors ? ['--cors'] : [])]
            : ['--no-gateway']),
        ],
        logFile,
      );
      if (flags.json)
        this.printJson({
          ...ready.intercept,
          agentPid: ready.pid,
          logFile: ready.logFile,
          ...(ready.gateway ? { gateway: ready.gateway } : {}),
        });
      else {
        this.log(
          `Intercepting ${want.service} for tenant ${want.tenant} → localhost:${want.port} (intercept ${ready.intercept.id}). Background agent pid ${ready.pid}, log ${ready.logFile}.`,
        );
        if (ready.gateway) this.log(`gateway: ${ready.gateway}`);
        if (ready.intercept.previewUrl) this.log(`preview: ${ready.intercept.previewUrl}`);
        this.log(`Stop it with: kelsingra leave ${want.service} --tenant ${want.tenant}`);
      }
      return;
    }
    const code = await runIntercept(settings, want, { json: flags.json, command, gateway });
    this.exit(code);
  }

  /** The background half of --detach: report readiness or failure to the parent over IPC. */
  private async runAgent(
    settings: ReturnType<typeof loadSettings>,
    want: InterceptRequest,
    gateway: RunOptions['gateway'],
  ): Promise<void> {
    const report = (message: AgentMessage) => process.send?.(message);
    const logFile = agentLogFile(settings.configDir, want.service, want.tenant);
    let code: number;
    try {
      code = await runIntercept(settings, want, {
        json: false,
        // The agent's stdout is its log file: plain lines, whatever terminal started it.
        view: 'plain',
        gateway,
        onLive: (intercept, extra) => {
          report({ type: 'ready', intercept, pid: process.pid, logFile, gateway: extra.gateway });
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
