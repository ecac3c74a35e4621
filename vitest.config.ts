import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Integration tests start real processes; two cores do not take more than two files at once.
    maxWorkers: 2,
    pool: 'forks',
    projects: [
      {
        extends: true,
        // In-process only: no ports, no child processes, no database (`npx vitest --project unit`).
        test: { name: 'unit', include: ['test/unit/**/*.test.{ts,tsx}'] },
      },
      {
        extends: true,
        // Real server and client agents, PostgreSQL, Kafka, nginx, tmux: needs `npm run build` first.
        test: { name: 'integration', include: ['test/integration/**/*.test.{ts,tsx}'] },
      },
    ],
  },
});
