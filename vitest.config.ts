import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    globalSetup: ['test/global-setup.ts'],
    // A guard against hangs, not a timing check: on a loaded 2-core machine the heavy tests
    // (100,000-row retrofits, spawned CLIs, npm installs into temp apps) take over a minute.
    testTimeout: 180_000,
    hookTimeout: 120_000,
    pool: 'forks',
    fileParallelism: true,
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: {
          name: 'suite',
          include: ['test/**/*.test.ts'],
          // BYOK_TEST_EXCLUDE: comma-separated test files a CI leg leaves out (see .ci/drizzle-1.0.sh).
          exclude: [
            'test/soak.test.ts',
            ...(process.env.BYOK_TEST_EXCLUDE?.split(',').filter(Boolean) ?? []),
          ],
        },
      },
      // The soak runs after every other file, alone: its figures are not skewed by them (nor theirs by it).
      {
        extends: true,
        test: { name: 'soak', include: ['test/soak.test.ts'], sequence: { groupOrder: 1 } },
      },
    ],
  },
});
