import { BaseCommand } from '../src/cli/base-command.js';

export default class Demo extends BaseCommand {
  static override summary = 'Run a whole intercept on this machine: server agent, two services, a local copy, then clean up.';
  static override examples = ['<%= config.bin %> demo'];

  async run(): Promise<void> {
    await this.parse(Demo);
    const { runDemo } = await import('../src/demo.js');
    await runDemo((line) => this.log(line));
  }
}
