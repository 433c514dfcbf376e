import { sql } from 'drizzle-orm';
import { type AnyPgDatabase, asPgDb } from './db.ts';
import { rethrowStoreError } from './errors.ts';
import { readMigration } from './migration-files.ts';

/** The key store migration (`migrations/0001_key_store.sql`). Idempotent. */
export const KEY_STORE_MIGRATION: string = readMigration('0001_key_store.sql');

/** The retrofit engine's checkpoint tables (`migrations/0002_retrofit.sql`). Idempotent. */
export const RETROFIT_MIGRATION: string = readMigration('0002_retrofit.sql');

/** Blind index key versions (`migrations/0003_blind_index.sql`). Idempotent. */
export const BLIND_INDEX_MIGRATION: string = readMigration('0003_blind_index.sql');

/** Key identity per wrap and tenant onboarding (`migrations/0004_key_identity.sql`). Idempotent. */
export const KEY_IDENTITY_MIGRATION: string = readMigration('0004_key_identity.sql');

/** Every shipped migration (`migrations/000N_*.sql`), in the order `installKeyStore` runs them. */
export const MIGRATIONS: readonly string[] = [
  KEY_STORE_MIGRATION,
  RETROFIT_MIGRATION,
  BLIND_INDEX_MIGRATION,
  KEY_IDENTITY_MIGRATION,
];

/**
 * Splits a migration into statements: on semicolons outside `$$ ... $$` bodies (no semicolons
 * inside literals in our own SQL).
 */
export function migrationStatements(text: string): string[] {
  const lines = text.split('\n').filter((l) => !l.trim().startsWith('--'));
  const out: string[] = [];
  lines
    .join('\n')
    .split('$$')
    .forEach((part, i) => {
      // Even parts are outside dollar quotes: split them; odd parts are bodies, kept whole.
      if (i % 2 === 1) {
        out[out.length - 1] = `${out.at(-1) ?? ''}$$${part}$$`;
        return;
      }
      const pieces = part.split(';');
      if (i > 0) out[out.length - 1] = `${out.at(-1) ?? ''}${pieces.shift() ?? ''}`;
      out.push(...pieces);
    });
  return out.map((s) => s.trim()).filter((s) => s.length > 0);
}

/**
 * Creates the key store tables if they do not exist. Safe to call from several processes at once
 * (serialized by an advisory lock) and on every start.
 */
export async function installKeyStore(db: AnyPgDatabase): Promise<void> {
  await asPgDb(db)
    .transaction(async (tx) => {
      // `IF NOT EXISTS` on existing objects raises NOTICEs (postgres.js prints each by default):
      // the library's own DDL is quiet. Transaction-local, so the connection keeps its setting.
      await tx.execute(sql`set local client_min_messages to warning`);
      await tx.execute(sql`select pg_advisory_xact_lock(hashtextextended('byok:install-key-store', 0))`);
      for (const migration of MIGRATIONS) {
        for (const statement of migrationStatements(migration)) await tx.execute(sql.raw(statement));
      }
    })
    .catch(rethrowStoreError);
}
