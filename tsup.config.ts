import { defineConfig } from 'tsup';

export default defineConfig({
  entry: {
    index: 'src/index.ts',
    schema: 'src/schema.ts',
    aws: 'src/kms/aws.ts',
    gcp: 'src/kms/gcp.ts',
    vault: 'src/kms/vault/index.ts',
    testing: 'src/testing/index.ts',
    'testing/aws': 'src/testing/aws.ts',
    'testing/gcp': 'src/testing/gcp.ts',
    'testing/vault': 'src/testing/vault/index.ts',
    cli: 'src/cli/main.ts',
  },
  format: ['esm', 'cjs'],
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
