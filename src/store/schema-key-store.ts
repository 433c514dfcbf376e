import { sql } from 'drizzle-orm';
import {
  bigserial,
  customType,
  foreignKey,
  index,
  integer,
  jsonb,
  pgSchema,
  primaryKey,
  text,
  timestamp,
  uniqueIndex,
  uuid,
} from 'drizzle-orm/pg-core';

/**
 * The tables drizzle-byok owns, in the PostgreSQL schema `byok`. Exported so drizzle-kit sees them
 * (re-export `drizzle-byok/schema` from a file listed in your drizzle config's `schema`, and add
 * 'byok' to `schemaFilter`: see the README), and created by the shipped SQL migrations
 * (`migrations/*.sql`, or `keyring.installKeyStore()`).
 *
 * Constraint names are the ones PostgreSQL gives the shipped SQL (`<table>_pkey`,
 * `<table>_<column>_fkey`), named here explicitly, so `drizzle-kit push` / `generate` see no
 * difference between a store created by either path (a test checks it).
 *
 * Nothing in these tables is secret on its own: data keys are stored only wrapped by a KEK, and
 * credentials in KEK configuration are encrypted under the platform key.
 */
export const byok = pgSchema('byok');

const bytea = customType<{ data: Buffer; driverData: Buffer }>({
  dataType: () => 'bytea',
  fromDriver: (v) => (Buffer.isBuffer(v) ? v : Buffer.from(v as Uint8Array)),
});

/** One row per tenant that has ever had a data key. */
export const byokTenants = byok.table('tenants', {
  tenantId: text('tenant_id').primaryKey(),
  /** 'platform' (data keys wrapped by the platform KEK) or 'byok' (by the tenant's own KEKs). */
  mode: text('mode').notNull().default('platform'),
  /** 'active' or 'shredded'. */
  state: text('state').notNull().default('active'),
  /** Lifecycle operation in progress, if any: { op, startedAt, total, done }. */
  progress: jsonb('progress'),
  health: text('health').notNull().default('ok'),
  lastVerifiedAt: timestamp('last_verified_at', { withTimezone: true }),
  lastError: text('last_error'),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
  updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
});

/** A tenant's key-encryption keys (BYOK): configuration to rebuild the provider on any instance. */
export const byokKeks = byok.table(
  'keks',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    tenantId: text('tenant_id').notNull(),
    kind: text('kind').notNull(),
    keyRef: text('key_ref').notNull(),
    region: text('region'),
    /** Lower first: the KEK tried first on unwrap (after the preferred region). */
    priority: integer('priority').notNull().default(0),
    /** 'active' (wraps every DEK) or 'retired' (kept for audit after rotation). */
    state: text('state').notNull().default('active'),
    params: jsonb('params').notNull(),
    /** Secret parameters encrypted under a key wrapped by the platform KEK (see `secretKey`). */
    secret: bytea('secret'),
    secretKey: bytea('secret_key'),
    secretKeyRef: text('secret_key_ref'),
    /** The platform key that actually wrapped `secretKey` (see `byokDekWraps.wrappedBy`); null before 0004. */
    secretKeyBy: text('secret_key_by'),
    /**
     * What `keyRef` resolved to at the last health check: an alias's target key ARN (AWS), the
     * primary CryptoKeyVersion (Cloud KMS). Null until checked.
     */
    currentKeyId: text('current_key_id'),
    health: text('health').notNull().default('ok'),
    lastVerifiedAt: timestamp('last_verified_at', { withTimezone: true }),
    lastError: text('last_error'),
    createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    index('keks_tenant_idx').on(t.tenantId),
    foreignKey({
      name: 'keks_tenant_id_fkey',
      columns: [t.tenantId],
      foreignColumns: [byokTenants.tenantId],
    }).onDelete('cascade'),
  ],
);

/** Data key versions. At most one 'active' per tenant (partial unique index). */
export const byokDeks = byok.table(
  'deks',
  {
    id: uuid('id').primaryKey(),
    tenantId: text('tenant_id').notNull(),
    version: integer('version').notNull(),
    /** 'active' (new writes), 'retired' (read-only, awaiting re-encryption). */
    state: text('state').notNull().default('active'),
    createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex('deks_tenant_version_uq').on(t.tenantId, t.version),
    uniqueIndex('deks_one_active_uq').on(t.tenantId).where(sql`state = 'active'`),
    foreignKey({
      name: 'deks_tenant_id_fkey',
      columns: [t.tenantId],
      foreignColumns: [byokTenants.tenantId],
    }).onDelete('cascade'),
  ],
);

/** Each DEK wrapped by each KEK of its tenant (or by the platform KEK). */
export const byokDekWraps = byok.table(
  'dek_wraps',
  {
    dekId: uuid('dek_id').notNull(),
    /** The KEK row (BYOK) or null for the platform KEK. */
    kekId: uuid('kek_id'),
    kekRef: text('kek_ref').notNull(),
    wrapped: bytea('wrapped').notNull(),
    /**
     * The key that actually wrapped: the key ARN AWS KMS Encrypt answered (also when `kekRef` is an
     * alias), the Cloud KMS CryptoKeyVersion. Unwrap names it, so an alias moved to another key or a
     * rotated primary version never strands a data key. Null on wraps made before migration 0004.
     */
    wrappedBy: text('wrapped_by'),
    createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    primaryKey({ name: 'dek_wraps_pkey', columns: [t.dekId, t.kekRef] }),
    foreignKey({ name: 'dek_wraps_dek_id_fkey', columns: [t.dekId], foreignColumns: [byokDeks.id] }).onDelete(
      'cascade',
    ),
    foreignKey({ name: 'dek_wraps_kek_id_fkey', columns: [t.kekId], foreignColumns: [byokKeks.id] }).onDelete(
      'cascade',
    ),
  ],
);

/** Optional audit trail of KMS calls and lifecycle changes (no key material, no plaintext). */
export const byokAudit = byok.table(
  'audit',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    at: timestamp('at', { withTimezone: true }).notNull().defaultNow(),
    tenantId: text('tenant_id'),
    operation: text('operation').notNull(),
    keyRef: text('key_ref'),
    outcome: text('outcome').notNull(),
    latencyMs: integer('latency_ms'),
    detail: jsonb('detail'),
  },
  (t) => [index('audit_tenant_at_idx').on(t.tenantId, t.at)],
);
