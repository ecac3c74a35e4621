import { resolve } from 'node:path';
import { Flags } from '@oclif/core';
import { BaseCommand } from '../src/cli/base-command.js';
import { principalLine } from '../src/cli/token-summary.js';
import { ApiClient } from '../src/client/api/api-client.js';
import { loadSettings, normaliseServerUrl, saveSettings } from '../src/client/api/settings.js';
import { ExitCode, KelsingraError } from '../src/shared/errors.js';

export default class Connect extends BaseCommand {
  static override summary = 'Save the server agent URL and token, after checking that they work.';
  static override description =
    'Later commands use the saved server and token; KELSINGRA_SERVER and KELSINGRA_TOKEN override them, and KELSINGRA_CONFIG_DIR says where they are kept.';
  static override examples = [
    '<%= config.bin %> connect --server http://kelsingra.dev.example.com:7700 --token $TOKEN',
    'KELSINGRA_TOKEN=$TOKEN <%= config.bin %> connect --server kelsingra.dev.example.com:7700 --json',
    '<%= config.bin %> connect --server https://kelsingra.dev.example.com:7700 --token $TOKEN --ca ./dev-ca.pem',
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
    ca: Flags.string({
      description:
        "PEM file of the CA that signed the server's certificate, when it is a private one (saved; '' forgets it)",
      env: 'KELSINGRA_CA',
    }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(Connect);
    const server = normaliseServerUrl(flags.server);
    // The CA is checked and trusted before the server is asked (a saved one too, when none is given).
    const ca = flags.ca ? resolve(flags.ca) : flags.ca;
    loadSettings({ server, token: flags.token, ...(ca !== undefined ? { ca } : {}) });
    const status = await this.spin(`Connecting to ${server}`, new ApiClient(server, flags.token).status());
    let path: string;
    try {
      path = saveSettings({ server, token: flags.token, ca });
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
      ...(status.principal ? { principal: status.principal } : {}),
      savedTo: path,
    };
    if (flags.json) this.printJson(result);
    else
      this.log(
        `Connected to ${server} (server ${status.serverId}, services: ${result.services.join(', ') || 'none'}). Saved to ${path}.${status.principal ? `\n${principalLine(status.principal)}` : ''}`,
      );
  }
}
