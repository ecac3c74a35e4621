import { Flags } from '@oclif/core';
import { ApiClient } from '../src/api-client.js';
import { BaseCommand } from '../src/cli/base-command.js';
import { normaliseServerUrl, saveSettings } from '../src/settings.js';

export default class Connect extends BaseCommand {
  static override summary = 'Save the server agent URL and token, after checking that they work.';
  static override examples = ['<%= config.bin %> connect --server http://kelsingra.dev.example.com:7700 --token $TOKEN'];

  static override flags = {
    server: Flags.string({ description: 'control-port URL of the server agent', env: 'KELSINGRA_SERVER', required: true }),
    token: Flags.string({ description: 'token issued by the platform team', env: 'KELSINGRA_TOKEN', required: true }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Connect);
    const server = normaliseServerUrl(flags.server);
    const status = await new ApiClient(server, flags.token).status();
    const path = saveSettings({ server, token: flags.token });
    const result = { server, serverId: status.serverId, version: status.version, services: status.services.map((s) => s.name), savedTo: path };
    if (flags.json) this.printJson(result);
    else this.log(`Connected to ${server} (server ${status.serverId}, services: ${result.services.join(', ') || 'none'}). Saved to ${path}.`);
  }
}
