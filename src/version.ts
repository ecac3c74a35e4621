import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
/** Read once from package.json so `--version`, /healthz and /status agree. */
export const VERSION: string = (require('../../package.json') as { version: string }).version;
