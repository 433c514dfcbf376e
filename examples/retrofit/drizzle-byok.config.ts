/**
 * The CLI configuration of a real deployment of this example (PostgreSQL, platform key from the
 * environment, tenants' AWS KMS keys rebuilt from the key store):
 *
 *   DATABASE_URL=postgres://... PLATFORM_KEK=... npx drizzle-byok migrate plan --config examples/retrofit/drizzle-byok.config.ts
 *
 * (`run.ts` next to it runs the same steps in one process on an embedded PGlite.)
 */
import { drizzle } from 'drizzle-orm/node-postgres';
import pg from 'pg';
import { createKeyring, defineConfig, localKek } from '../../src/index.ts';
import { awsKekFactory } from '../../src/kms/aws/index.ts';
import { retrofitTables } from './schema.ts';

export default defineConfig({
  db: () => drizzle({ client: new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 4 }) }),
  keyring: (db) =>
    createKeyring({
      db,
      platformKek: localKek({ key: process.env.PLATFORM_KEK! }),
      kekFactories: { 'aws-kms': awsKekFactory },
    }),
  tables: retrofitTables,
  backfill: { batchSize: 1000, rowsPerSecond: 20_000 },
});
