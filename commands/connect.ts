import { Flags } from '@oclif/core';
import { ApiClient } from '../src/api-client.js';
import { BaseCommand } from '../src/cli/base-command.js';
import { ExitCode, KelsingraError } from '../src/errors.js';
import { normaliseServerUrl, saveSettings } from '../src/settings.js';

export default class Connect extends BaseCommand {
  static override summary = 'Save the server agent URL and token, after checking that they work.';
  static override description =
    'Later commands use the saved server and token; KELSINGRA_SERVER and KELSINGRA_TOKEN override them, and KELSINGRA_CONFIG_DIR says where they are kept.';
  static override examples = [
    '<%= config.bin %> connect --server http://kelsingra.dev.example.com:7700 --token $TOKEN',
    'KELSINGRA_TOKEN=$TOKEN <%= config.bin %> connect --server kelsingra.dev.example.com:7700 --json',
  ];

  static override flags = {
    server: Flags.string({
      description: 'control-port URL of the server agent',
      env: 'KELSINGRA_SERVER',
      required: true,
    }),
    token: Flags.string({
      description: 'token issued by the platform team',
      env: 'KELSINGRA_TOKEN',
      required: true,
    }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Connect);
    const server = normaliseServerUrl(flags.server);
    const status = await this.spin(`Connecting to ${server}`, new ApiClient(server, flags.token).status());
    let path: string;
    try {
      path = saveSettings({ server, token: flags.token });
    } catch (err) {
      throw new KelsingraError(
        `the server answered, but the settings could not be saved: ${(err as Error).message}`,
        ExitCode.failure,
        'make the config directory writable, or point KELSINGRA_CONFIG_DIR at one that is (or skip connect: set KELSINGRA_SERVER and KELSINGRA_TOKEN)',
      );
    }
    const result = {
      server,
      serverId: status.serverId,
      version: status.version,
      services: status.services.map((s) => s.name),
      savedTo: path,
    };
    if (flags.json) this.printJson(result);
    else
      this.log(
        `Connected to ${server} (server ${status.serverId}, services: ${result.services.join(', ') || 'none'}). Saved to ${path}.`,
      );
  }
}
