import { Flags } from '@oclif/core';
import { BaseCommand } from '../../src/cli/base-command.js';
import { routeTable } from '../../src/cli/route-format.js';
import { ApiClient } from '../../src/client/api/api-client.js';
import { loadSettings } from '../../src/client/api/settings.js';

export default class RouteList extends BaseCommand {
  static override summary = 'List tenant routes (those naming tenants your token may see).';
  static override description =
    'One line per route, however many tenants it names; long tenant lists are shortened (--json lists them all).';
  static override examples = [
    '<%= config.bin %> route list',
    '<%= config.bin %> route list --service billing',
    '<%= config.bin %> route list --json | jq ".[].tenants | length"',
  ];

  static override flags = {
    service: Flags.string({ char: 's', description: 'only the routes of this service' }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(RouteList);
    const settings = loadSettings();
    const routes = await this.spin(
      `Asking ${settings.server}`,
      new ApiClient(settings.server, settings.token).listRoutes(flags.service),
    );
    if (flags.json) this.printJson(routes);
    else if (routes.length === 0) {
      const service = flags.service ?? 'billing';
      this.log(
        `No routes${flags.service ? ` for ${flags.service}` : ''}. Send tenants to another version with: kelsingra route set ${service} --tenants t1,t2 --to http://${service}-v2:8080`,
      );
    } else this.log(routeTable(routes));
  }
}
