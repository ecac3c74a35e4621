import { BaseCommand } from '../src/cli/base-command.js';
import { ApiClient } from '../src/client/api/api-client.js';
import { loadSettings } from '../src/client/api/settings.js';
import { interceptTable } from '../src/client/intercept/intercept-table.js';

export default class List extends BaseCommand {
  static override summary = 'List live intercepts (those your token may see).';
  static override examples = ['<%= config.bin %> list', '<%= config.bin %> list --json | jq ".[].id"'];

  async run(): Promise<void> {
    const { flags } = await this.parse(List);
    const settings = loadSettings();
    const intercepts = await this.spin(
      `Asking ${settings.server}`,
      new ApiClient(settings.server, settings.token).list(),
    );
    if (flags.json) this.printJson(intercepts);
    else this.log(interceptTable(intercepts));
  }
}
