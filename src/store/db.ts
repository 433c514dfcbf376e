import type { PgDatabase } from 'drizzle-orm/pg-core';

/**
 * A Drizzle PostgreSQL database or transaction, by shape rather than by class, so the library's
 * public types resolve against whichever drizzle-orm is installed (0.44/0.45 `PgDatabase`, 1.0
 * `PgAsyncDatabase`). `withEncryption` and `createKeyring` check at run time that it is one of the
 * tested drivers (`UnsupportedDrizzleError` otherwise).
 */
export interface AnyPgDatabase {
  select: (...args: any[]) => any;
  selectDistinct: (...args: any[]) => any;
  insert: (...args: any[]) => any;
  update: (...args: any[]) => any;
  delete: (...args: any[]) => any;
  execute: (...args: any[]) => any;
  transaction: (...args: any[]) => Promise<any>;
}
/** The same database, typed with this build's Drizzle classes (internal use, never in public types). */
export type PgDb = PgDatabase<any, any, any>;

/** The database as the library's own builders see it (checked at run time by the driver allowlist). */
export function asPgDb(db: AnyPgDatabase | PgDb): PgDb {
  return db as PgDb;
}
