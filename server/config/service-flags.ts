/** `--service NAME=URL` flags (and KELSINGRA_SERVICES entries) as the services layer of the config. */
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';

/** `billing=http://127.0.0.1:9001` → ['billing', {upstream}] */
export function parseServiceFlag(value: string): [string, { upstream: string }] {
  const eq = value.indexOf('=');
  if (eq <= 0) {
    throw new KelsingraError(
      `--service "${value}" is not NAME=URL`,
      ExitCode.usage,
      'write it as --service billing=http://127.0.0.1:9001',
    );
  }
  return [value.slice(0, eq).trim(), { upstream: value.slice(eq + 1).trim() }];
}

/**
 * `--service` flags (or KELSINGRA_SERVICES entries) as a services layer: a name given more than
 * once gets all its URLs, in order (a pool of backends).
 */
export function servicesFromFlags(
  values: readonly string[],
): Record<string, { upstream: string | string[] }> {
  // A Map, so a name such as `__proto__` stays a name (and validation refuses it) instead of vanishing.
  const out = new Map<string, string | string[]>();
  for (const [name, { upstream }] of values.map(parseServiceFlag)) {
    const prev = out.get(name);
    out.set(name, prev === undefined ? upstream : [prev, upstream].flat());
  }
  return Object.fromEntries([...out].map(([name, upstream]) => [name, { upstream }]));
}
