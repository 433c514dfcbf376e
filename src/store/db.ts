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
type PgCore = typeof import('drizzle-orm/pg-core');
type Instance<C> = C extends abstract new (...args: any[]) => infer D ? D : never;
/**
 * The same database, typed with the installed Drizzle's own class (internal use, never in public
 * types): `PgDatabase` on 0.44/0.45, `PgAsyncDatabase` on 1.0, found by what the module exports.
 */
export type PgDb = PgCore extends { PgDatabase: infer C }
  ? Instance<C>
  : PgCore extends { PgAsyncDatabase: infer C }
    ? Instance<C>
    : never;

/** The database as the library's own builders see it (checked at run time by the driver allowlist). */
export function asPgDb(db: AnyPgDatabase | PgDb): PgDb {
  return db as PgDb;
}
