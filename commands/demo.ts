import { BaseCommand } from '../src/cli/base-command.js';
import { ExitCode, KelsingraError } from '../src/shared/errors.js';

export default class Demo extends BaseCommand {
  static override summary =
    'Run a whole intercept on this machine: server agent, two services, a local copy, then clean up.';
  static override description =
    'Needs no server agent and no network: everything listens on 127.0.0.1 and stops at the end. Exits 1 if any request went somewhere it should not have, so it doubles as a smoke test of an install.';
  static override examples = [
    '<%= config.bin %> demo',
    '<%= config.bin %> demo --json | jq ".requests[] | {service, tenant, servedBy}"',
  ];

  async run(): Promise<void> {
    const { flags } = await this.parse(Demo);
    const { runDemo } = await import('../src/demo/demo.js');
    const summary = flags.json
      ? await runDemo(() => undefined, 'silent')
      : await runDemo((line) => this.log(line));
    if (flags.json) this.printJson(summary);
    if (!summary.ok) {
      throw new KelsingraError(
        'the demo routed a request to the wrong place',
        ExitCode.failure,
        'this is a bug in this build of Kelsingra; please report it with the output above',
      );
    }
  }
}
