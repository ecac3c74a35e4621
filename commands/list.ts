import { ApiClient } from '../src/api-client.js';
import { BaseCommand } from '../src/cli/base-command.js';
import { interceptTable } from '../src/intercept-table.js';
import { loadSettings } from '../src/settings.js';

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
