import { sql } from 'drizzle-orm';
import {
  boolean,
  check,
  integer,
  jsonb,
  foreignKey,
  primaryKey,
  text,
  timestamp,
  uniqueIndex,
} from 'drizzle-orm/pg-core';
import { byok, byokTenants } from './schema-key-store.ts';

/**
 * Blind index key versions, per tenant and index context. Created by
 * `migrations/0003_blind_index.sql` (also run by `installKeyStore`).
 *
 * An index key is derived from one data key version of the tenant (`dek_version`) with the label
 * `blind-index/v<version>` and the index context: it stays the same across `rotateDek` (new data
 * key versions are for new ciphertexts; the index keeps its version until `rotateBlindIndex`), and
 * it dies with the tenant's data keys (`shred`). Nothing here is secret.
 */
export const byokBlindIndexKeys = byok.table(
  'blind_index_keys',
  {
    tenantId: text('tenant_id').notNull(),
    /** The index context (default `schema.table.column` of the index column). */
    context: text('context').notNull(),
    /** 1..255: the first byte of every index value written under this version. */
    version: integer('version').notNull(),
    /** The data key version the index key is derived from. */
    dekVersion: integer('dek_version').notNull(),
    /**
     * 'pending' (looked up, not yet written: first phase of a rotation), 'active' (written and looked
     * up), 'retiring' (looked up only: second phase of a rotation), 'retired'.
     */
    state: text('state').notNull().default('active'),
    /** Normalization and length of this version (`b16;trim;fold;nfc`). */
    params: text('params').notNull(),
    /** True once every row of the tenant has a value under this version (or an older live one). */
    built: boolean('built').notNull().default(false),
    /** Re-index checkpoint: `{ table, cursor }` of the pass in progress. */
    progress: jsonb('progress'),
    createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
    /** When the version became the one written. */
    activatedAt: timestamp('activated_at', { withTimezone: true }),
    updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    primaryKey({ name: 'blind_index_keys_pkey', columns: [t.tenantId, t.context, t.version] }),
    foreignKey({
      name: 'blind_index_keys_tenant_id_fkey',
      columns: [t.tenantId],
      foreignColumns: [byokTenants.tenantId],
    }).onDelete('cascade'),
    check('blind_index_keys_version_check', sql`version BETWEEN 1 AND 255`),
    uniqueIndex('blind_index_keys_one_active_uq').on(t.tenantId, t.context).where(sql`state = 'active'`),
  ],
);
