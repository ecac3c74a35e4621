/**
 * `--tenant` / `--key`: two names for the routing key of `intercept` and `gateway` — a tenant id,
 * or a feature label such as `feature1`. Exactly one is given; the server API calls it `tenant`.
 */
import { Flags } from '@oclif/core';
import { ExitCode, KelsingraError } from '../shared/errors.js';

export const routingKeyFlags = {
  tenant: Flags.string({
    char: 't',
    description: 'tenant (routing key) whose traffic to take; or use --key',
  }),
  key: Flags.string({
    char: 'k',
    description: 'routing key: a tenant id or a feature label such as feature1 (instead of --tenant)',
  }),
};

export function routingKeyFrom(flags: { tenant?: string; key?: string }, command: string): string {
  if (flags.tenant !== undefined && flags.key !== undefined)
    throw new KelsingraError(
      '--tenant and --key both name the routing key; give one of them',
      ExitCode.usage,
      `give --tenant t1 (a tenant) or --key feature1 (a feature label); kelsingra ${command} --help shows the usage`,
    );
  const key = flags.tenant ?? flags.key;
  if (key === undefined || key.trim() === '')
    throw new KelsingraError(
      `${command} needs a routing key: --tenant <tenant> or --key <key>`,
      ExitCode.usage,
      `give --tenant t1 (a tenant) or --key feature1 (a feature label); kelsingra ${command} --help shows the usage`,
    );
  return key;
}
