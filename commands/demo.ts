import { BaseCommand } from '../src/cli/base-command.js';
import { runDemo } from '../src/demo.js';

export default class Demo extends BaseCommand {
  static override summary = 'Run a whole intercept on this machine: server agent, two services, a local copy, then clean up.';
  static override examples = ['<%= config.bin %> demo'];

  async run(): Promise<void> {
    await this.parse(Demo);
    await runDemo((line) => this.log(line));
  }
}
