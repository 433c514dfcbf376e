import { readdirSync, readFileSync } from 'node:fs';
import { defineConfig, type Options } from 'tsup';

type EsbuildPlugin = NonNullable<Options['esbuildPlugins']>[number];

/**
 * `migrations/*.sql` is the single source of the library's SQL. From source,
 * `src/store/migration-files.ts` reads those files; in the build it is replaced by a module that
 * holds them inlined, so dist does no file I/O (and keeps working when an app bundles it).
 */
const inlineMigrations: EsbuildPlugin = {
  name: 'inline-migrations',
  setup(build) {
    build.onLoad({ filter: /[\\/]src[\\/]store[\\/]migration-files\.ts$/ }, () => {
      const files: Record<string, string> = {};
      for (const f of readdirSync('migrations')
        .filter((n) => n.endsWith('.sql'))
        .sort()) {
        files[f] = readFileSync(`migrations/${f}`, 'utf8');
      }
      return {
        loader: 'ts',
        watchFiles: Object.keys(files).map((f) => `migrations/${f}`),
        contents: `const files: Record<string, string> = ${JSON.stringify(files)};
export function readMigration(file: string): string {
  const text = files[file];
  if (text === undefined) throw new TypeError(\`no shipped migration named \${file}\`);
  return text;
}
`,
      };
    });
  },
};

export default defineConfig({
  entry: {
    index: 'src/index.ts',
    schema: 'src/schema.ts',
    aws: 'src/kms/aws/index.ts',
    gcp: 'src/kms/gcp/index.ts',
    azure: 'src/kms/azure/index.ts',
    vault: 'src/kms/vault/index.ts',
    testing: 'src/testing/index.ts',
    'testing/aws': 'src/testing/aws/index.ts',
    'testing/gcp': 'src/testing/gcp/index.ts',
    'testing/azure': 'src/testing/azure/index.ts',
    'testing/vault': 'src/testing/vault/index.ts',
    cli: 'src/cli/main.ts',
  },
  format: ['esm', 'cjs'],
  esbuildPlugins: [inlineMigrations],
  dts: true,
  // No source maps in the package: they were over half of it, and dist is readable ES2023 already.
  sourcemap: false,
  clean: true,
  target: 'node22',
  shims: true,
  splitting: true,
  // SDKs are optional peers, loaded only by their provider's entry point.
  external: [
    /^@aws-sdk\//,
    /^@google-cloud\//,
    /^@azure\//,
    /^google-gax/,
    /^@grpc\//,
    /^@opentelemetry\//,
    'drizzle-orm',
    'dataloader',
  ],
});
