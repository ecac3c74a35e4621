#!/usr/bin/env node
// Development entry: rebuilds nothing, but runs oclif in development mode (fuller stack traces).
import { execute } from '@oclif/core';

await execute({ development: true, dir: import.meta.url });
