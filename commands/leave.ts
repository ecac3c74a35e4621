import { Args, Flags } from '@oclif/core';
import { BaseCommand } from '../src/cli/base-command.js';
import { ApiClient } from '../src/client/api/api-client.js';
import { loadSettings } from '../src/client/api/settings.js';
import { ExitCode, KelsingraError } from '../src/shared/errors.js';

export default class Leave extends BaseCommand {
  static override summary = 'End intercepts: by service and tenant, by id, or all of yours.';
  static override description =
    'Works from any shell, whichever process holds the tunnel; traffic falls back to the base service at once. --all ends every intercept held by you (same user@host, or KELSINGRA_HOLDER).';
  static override examples = [
    '<%= config.bin %> leave billing --tenant t1',
    '<%= config.bin %> leave icp_3f9a1c0d2b7e',
    '<%= config.bin %> leave --all',
  ];

  static override args = {
    target: Args.string({ description: 'service name (with --tenant) or intercept id' }),
  };

  static override flags = {
    tenant: Flags.string({ char: 't', description: 'tenant of the intercept to end' }),
    all: Flags.boolean({ description: 'end every intercept you hold', default: false }),
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(Leave);
    const usage = 'kelsingra leave <service> --tenant <t>, kelsingra leave <id>, or kelsingra leave --all';
    if (flags.all && (args.target || flags.tenant))
      throw new KelsingraError('--all takes no service, id or --tenant', ExitCode.usage, usage);
    if (!flags.all && !args.target)
      throw new KelsingraError('say which intercept to end', ExitCode.usage, usage);
    const settings = loadSettings();
    const api = new ApiClient(settings.server, settings.token, settings.holder);
    let result: { removed: { id: string; service: string; tenant: string }[] };
    if (flags.all) {
      result = await this.spin('Leaving', api.removeWhere({ holder: settings.holder }));
    } else if (args.target && flags.tenant) {
      result = await this.spin('Leaving', api.removeWhere({ service: args.target, tenant: flags.tenant }));
      if (result.removed.length === 0) {
        throw new KelsingraError(
          `no intercept of ${args.target} for tenant ${flags.tenant}`,
          ExitCode.notFound,
          'kelsingra list shows the live intercepts',
        );
      }
    } else {
      const id = args.target as string;
      result = await this.spin('Leaving', api.remove(id)).catch((err: unknown) => {
        // `leave billing` without --tenant names a service, not an id: say how to name it.
        if (err instanceof KelsingraError && err.exitCode === ExitCode.notFound && !id.startsWith('icp_')) {
          throw new KelsingraError(
            err.message,
            err.exitCode,
            `to end an intercept by service, add --tenant: kelsingra leave ${id} --tenant <t>`,
            err.details,
          );
        }
        throw err;
      });
    }
    if (flags.json) this.printJson(result);
    else if (result.removed.length === 0) this.log('No intercepts to end.');
    else for (const i of result.removed) this.log(`Left ${i.service} for tenant ${i.tenant} (${i.id}).`);
  }
}
