import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../../src/cli/base-command.js';
import { parseTargets, parseTenants, setRouteLines } from '../../src/cli/route-format.js';
import { ApiClient } from '../../src/client/api/api-client.js';
import { loadSettings } from '../../src/client/api/settings.js';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';

const USAGE = 'kelsingra route set <service> --tenants t1,t2 --to <url>';

export default class RouteSet extends BaseCommand {
  static override summary = "Send some tenants' traffic for a service to another version (no tunnel).";
  static override description =
    'The tenants named go to these targets from now on: they are added to the route for (service, these targets), or with --replace become its whole tenant list. A tenant is in at most one route per service, so naming a tenant that another route of the service has moves it here (how a tenant moves from v1 to v2). One route is one entry however many tenants it names. Several --to make a pool. Precedence: an intercept beats a route, and a route beats the base upstream.';
  static override examples = [
    '<%= config.bin %> route set billing --tenants t1,t2 --to http://billing-v2:8080',
    '<%= config.bin %> route set billing -t t3 --to http://billing-v2-a:8080 --to http://billing-v2-b:8080',
    '<%= config.bin %> route set billing --tenants t1 --to http://billing-v1:8080 --json',
    '<%= config.bin %> route set billing --tenants t1,t2 --to http://billing-v2:8080 --replace',
  ];

  static override args = {
    service: Args.string({ description: 'service whose tenants to route', required: true }),
  };

  static override flags = {
    tenants: Flags.string({
      char: 't',
      aliases: ['tenant'],
      description: 'tenants to route (comma-separated, or repeat the flag)',
      required: true,
      multiple: true,
      multipleNonGreedy: true,
    }),
    to: Flags.string({
      description: 'base URL of the version to route to (repeat for a pool)',
      required: true,
      multiple: true,
      multipleNonGreedy: true,
    }),
    replace: Flags.boolean({
      description: "make these the route's only tenants (the others go back to the base upstream)",
      default: false,
    }),
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(RouteSet);
    const tenants = parseTenants(flags.tenants);
    if (tenants.length === 0)
      throw new KelsingraError('--tenants names no tenant', ExitCode.usage, `usage: ${USAGE}`);
    const targets = parseTargets(flags.to, USAGE);
    const settings = loadSettings();
    const api = new ApiClient(settings.server, settings.token, settings.holder);
    const result = await this.spin(
      `Routing ${args.service}`,
      api.setRoute({ service: args.service, tenants, targets, replace: flags.replace }),
    );
    if (flags.json) this.printJson(result);
    else for (const line of setRouteLines(result)) this.log(line);
  }
}
