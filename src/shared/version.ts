import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

/**
 * Kelsingra's own package.json, found by walking up (built files and sources sit at different
 * depths below it), read once: `--version`, /healthz, /status, the tunnel's version check and
 * the Node-version warning all agree.
 */
function readPackageJson(): { version: string; engines?: { node?: string } } {
  for (let dir = import.meta.dirname; ; dir = dirname(dir)) {
    const file = join(dir, 'package.json');
    if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8')) as { version: string };
    if (dirname(dir) === dir) throw new Error(`no package.json above ${import.meta.dirname}`);
  }
}

export const PACKAGE = readPackageJson();
export const VERSION: string = PACKAGE.version;
