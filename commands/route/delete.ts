import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../../src/cli/base-command.js';
import { parseTarget, parseTenants, removeRouteLines } from '../../src/cli/route-format.js';
import { ApiClient } from '../../src/client/api/api-client.js';
import { loadSettings } from '../../src/client/api/settings.js';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';
import type { RemoveRoutesResult } from '../../src/shared/protocol.js';

const USAGE =
  'kelsingra route delete <id>, or kelsingra route delete <service> [--to <url>] [--tenants t1,t2]';

export default class RouteDelete extends BaseCommand {
  static override summary =
    'Delete tenant routes, or take tenants out of them: they go back to the base upstream.';
  static override description =
    'By id, one route. By service, every route of the service (--to: only the one to that URL); with --tenants, only those tenants are taken out, and a route left with none is deleted.';
  static override examples = [
    '<%= config.bin %> route delete rt_3f9a1c0d2b',
    '<%= config.bin %> route delete billing',
    '<%= config.bin %> route delete billing --to http://billing-v2:8080',
    '<%= config.bin %> route delete billing --tenants t1,t2 --json',
  ];

  static override args = {
    target: Args.string({ description: 'route id (rt_…) or service name', required: true }),
  };

  static override flags = {
    to: Flags.string({ description: 'only the route of the service to this URL' }),
    tenants: Flags.string({
      char: 't',
      aliases: ['tenant'],
      description: 'take only these tenants out (comma-separated, or repeat the flag)',
      multiple: true,
      multipleNonGreedy: true,
    }),
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(RouteDelete);
    const byId = args.target.startsWith('rt_');
    if (byId && (flags.to !== undefined || flags.tenants !== undefined))
      throw new KelsingraError(
        `${args.target} is a route id: --to and --tenants go with a service name`,
        ExitCode.usage,
        USAGE,
      );
    const tenants = parseTenants(flags.tenants);
    if (flags.tenants !== undefined && tenants.length === 0)
      throw new KelsingraError('--tenants names no tenant', ExitCode.usage, USAGE);
    const target = flags.to === undefined ? undefined : parseTarget(flags.to, USAGE);
    const settings = loadSettings();
    const api = new ApiClient(settings.server, settings.token, settings.holder);
    const result: RemoveRoutesResult = await this.spin(
      'Deleting',
      byId ? api.removeRoute(args.target) : api.removeRoutesWhere({ service: args.target, target, tenants }),
    );
    if (result.removed.length === 0 && result.updated.length === 0) {
      const what = [
        `no route of ${args.target}`,
        target ? `to ${target}` : '',
        tenants.length ? `naming ${tenants.join(', ')}` : '',
      ];
      throw new KelsingraError(
        what.filter(Boolean).join(' '),
        ExitCode.notFound,
        'kelsingra route list shows the routes',
      );
    }
    if (flags.json) this.printJson(result);
    else for (const line of removeRouteLines(result)) this.log(line);
  }
}
