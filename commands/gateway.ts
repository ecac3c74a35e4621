import { Flags } from '@oclif/core';
import { BaseCommand, ndjsonFlag } from '../src/cli/base-command.js';
import { routingKeyFlags, routingKeyFrom } from '../src/cli/routing-key.js';
import { loadSettings } from '../src/client/api/settings.js';
import { runGateway } from '../src/client/gateway/gateway-runner.js';

export default class Gateway extends BaseCommand {
  static override baseFlags = ndjsonFlag();
  static override summary = 'Call the dev environment from this machine as one tenant, without an intercept.';
  static override description =
    'Runs the outbound gateway in the foreground until Ctrl-C: requests to http://127.0.0.1:<port>/<service>/<path> (or any http:// URL, with the gateway as HTTP_PROXY) go to that dev service with the tenant header, traceparent and baggage added, and reach your own intercepts for the key. For a front end in a browser on localhost (--cors) or scripts. Prints one line per request (with --json: the gateway as one JSON object, then one per request).';
  static override examples = [
    '<%= config.bin %> gateway --tenant t1 --port 7790',
    'curl http://127.0.0.1:7790/inventory/items      # inventory, as tenant t1',
    '<%= config.bin %> gateway --key feature1 --port 7790 --cors     # a browser app on localhost calls it',
    'HTTP_PROXY=http://127.0.0.1:7790 curl http://inventory.dev.example.com/items',
  ];

  static override flags = {
    ...routingKeyFlags,
    port: Flags.integer({
      char: 'p',
      description: 'port on 127.0.0.1 (0: any free port)',
      default: 0,
      min: 0,
      max: 65535,
    }),
    cors: Flags.boolean({
      description: 'answer CORS for pages on localhost / 127.0.0.1 / [::1] (a browser front end)',
      default: false,
    }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Gateway);
    const tenant = routingKeyFrom(flags, 'gateway');
    const settings = loadSettings();
    const code = await runGateway(settings, { tenant, port: flags.port, cors: flags.cors, json: flags.json });
    this.exit(code);
  }
}
