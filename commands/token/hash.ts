import { Flags } from '@oclif/core';
import { BaseCommand } from '../../src/cli/base-command.js';
import { parseTenants } from '../../src/cli/route-format.js';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';
import { hashToken, TOKEN_ROLES, type TokenRole, tokenEntryYaml } from '../../src/shared/token-hash.js';

export default class TokenHash extends BaseCommand {
  static override summary = 'Hash a token secret for the tokens file, so the file never holds the secret.';
  static override description =
    'Reads the secret from stdin (or makes a random one with --generate) and prints its SHA-256: with --name, as an entry to put under tokens: in the tokens file (tokenSha256: instead of token:). A generated secret is printed once, on stderr (in "token" with --json): hand it to the token\'s users; nothing keeps it.';
  static override examples = [
    'printf %s "$SECRET" | <%= config.bin %> token hash --name team-a --tenants "team-a-*,demo"',
    '<%= config.bin %> token hash --generate --name platform --role admin >> tokens.yaml',
    '<%= config.bin %> token hash --generate --name ci --tenants ci-1 --json',
  ];

  static override flags = {
    generate: Flags.boolean({
      description: 'make a random secret instead of reading one from stdin',
      default: false,
    }),
    name: Flags.string({ description: 'token name: print a whole tokens-file entry, not just the hash' }),
    tenants: Flags.string({
      char: 't',
      description: 'tenant patterns the token may use (comma-separated or repeated; default *)',
      multiple: true,
      multipleNonGreedy: true,
    }),
    role: Flags.string({
      description: 'admin (every tenant, ends anyone’s intercepts) or developer',
      options: [...TOKEN_ROLES],
      default: 'developer',
    }),
  };

  async run(): Promise<void> {
    const { flags } = await this.parse(TokenHash);
    const role = flags.role as TokenRole;
    const tenants = flags.tenants ? parseTenants(flags.tenants) : ['*'];
    if (tenants.length === 0)
      throw new KelsingraError(
        '--tenants names no tenant',
        ExitCode.usage,
        'leave it out for every tenant (*)',
      );
    if (role === 'admin' && (tenants.length !== 1 || tenants[0] !== '*'))
      throw new KelsingraError(
        'an admin token may use every tenant: it cannot be limited with --tenants',
        ExitCode.usage,
        'leave --tenants out, or make it --role developer',
      );
    if (!flags.name && (flags.tenants || flags.role !== 'developer'))
      throw new KelsingraError(
        '--tenants and --role go into a tokens-file entry, which needs --name',
        ExitCode.usage,
        'add --name <token name>',
      );
    const hashed = await hashToken({ generate: flags.generate, stdin: process.stdin });
    if (flags.json) {
      this.printJson({
        ...(flags.name ? { name: flags.name, tenants, role } : {}),
        tokenSha256: hashed.tokenSha256,
        ...(hashed.secret ? { token: hashed.secret } : {}),
      });
      return;
    }
    // stdout is what goes into the file (`>> tokens.yaml`); the secret must not end up there.
    if (hashed.secret)
      process.stderr.write(
        `Secret (shown once, not stored anywhere; hand it to the token's users): ${hashed.secret}\n`,
      );
    this.log(
      flags.name
        ? tokenEntryYaml({ name: flags.name, tokenSha256: hashed.tokenSha256, tenants, role })
        : hashed.tokenSha256,
    );
  }
}
