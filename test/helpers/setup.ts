import type { PGlite } from '@electric-sql/pglite';
import type { Logger } from 'drizzle-orm';
import {
  createKeyring,
  type Kek,
  type Keyring,
  type KeyringOptions,
  withEncryption,
} from '../../src/index.ts';
import { makeSchema, type TestSchema } from '../fixtures/schema.ts';
import { type DriverName, openDb, type TestDb, uniqueName } from './db.ts';
import { type CountingKek, countingKek } from './kek.ts';

export interface EncryptedDb {
  readonly tdb: TestDb;
  readonly db: TestDb['db'];
  readonly s: TestSchema;
  readonly keyring: Keyring;
  readonly kek: CountingKek;
  close(): Promise<void>;
}

/** A connection wrapped with encryption, a fresh schema of test tables, and a keyring on a counting KEK. */
export async function setupEncryptedDb(
  driver: DriverName,
  options: {
    kek?: Kek;
    keyring?: Partial<KeyringOptions>;
    pglite?: PGlite;
    schemaName?: string;
    createTables?: boolean;
    /** Drizzle logger: sees every statement and its parameters as the driver receives them. */
    logger?: Logger;
    /** How to connect (default `openDb`), e.g. through PgBouncer. */
    open?: (driver: DriverName, schema: Record<string, unknown>) => Promise<TestDb>;
    /** Options for `withEncryption` besides the tenant column. */
    encryption?: { rls?: boolean };
  } = {},
): Promise<EncryptedDb> {
  const s = makeSchema(options.schemaName ?? uniqueName('byok_test'));
  const tdb = options.open
    ? await options.open(driver, s.relational)
    : await openDb(driver, s.relational, options.pglite, options.logger);
  const kek = options.kek ? countingKek(options.kek) : countingKek();
  const keyring = createKeyring({ db: tdb.db, platformKek: kek, ...options.keyring });
  withEncryption(tdb.db, keyring, { tenantColumn: 'tenant_id', ...options.encryption });
  await keyring.installKeyStore();
  if (options.createTables !== false) for (const stmt of s.ddl) await tdb.raw(stmt);
  return {
    tdb,
    db: tdb.db,
    s,
    keyring,
    kek,
    close: async () => {
      await keyring.close();
      await tdb.close();
    },
  };
}

/**
 * Another app instance on the same database as `e` (another connection pool; on PGlite, another
 * Drizzle instance on the same embedded database), with its own keyring, reusing `e`'s tables.
 */
export function sibling(
  e: EncryptedDb,
  options: { kek?: Kek; keyring?: Partial<KeyringOptions> } = {},
): Promise<EncryptedDb> {
  return setupEncryptedDb(e.tdb.driver, {
    ...options,
    createTables: false,
    schemaName: e.s.name,
    ...(e.tdb.driver === 'pglite' ? { pglite: (e.db as unknown as { $client: PGlite }).$client } : {}),
  });
}
