/** Reading a config or tokens file (YAML, or JSON by its extension), with errors that name the file and the fix. */
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { ExitCode, KelsingraError } from '../../src/shared/errors.js';

export async function readConfigFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new KelsingraError(
      `cannot read config file ${path}: ${(err as Error).message}`,
      ExitCode.config,
      'check the --config path (or --tokens-file), and that you may read the file',
    );
  }
  let data: unknown;
  try {
    data = path.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new KelsingraError(
      `config file ${path} is not valid ${path.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message}`,
      ExitCode.config,
      'fix the syntax at the position named above; kelsingra.example.yaml and tokens.example.yaml show the format',
    );
  }
  if (data === null || data === undefined) return {};
  if (typeof data !== 'object' || Array.isArray(data)) {
    throw new KelsingraError(
      `config file ${path} must hold a mapping of settings at the top level`,
      ExitCode.config,
      'start the file with keys such as port:, proxyPort:, services: (see kelsingra.example.yaml)',
    );
  }
  return data as Record<string, unknown>;
}
