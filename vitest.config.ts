import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    // A guard against hangs, not a timing check: on a loaded 2-core machine the heavy tests
    // (100,000-row retrofits, spawned CLIs, npm installs into temp apps) take over a minute.
    testTimeout: 180_000,
    hookTimeout: 120_000,
    pool: 'forks',
    fileParallelism: true,
    maxWorkers: 2,
  },
});
