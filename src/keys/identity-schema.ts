import { foreignKey, jsonb, text, timestamp } from 'drizzle-orm/pg-core';
import { byok, byokTenants } from './schema.ts';

/**
 * Per-tenant onboarding records (`migrations/0004_key_identity.sql`, also run by `installKeyStore`):
 * the external id issued to a tenant for its AWS role trust policy, and the provider it was issued
 * for. `keys enable` / `enableByok` with an assume-role KEK checks the role's external id against it.
 * Nothing here is secret: an external id is a confused-deputy guard, not a credential.
 */
export const byokOnboarding = byok.table(
  'onboarding',
  {
    tenantId: text('tenant_id').primaryKey(),
    /** 'aws' or 'gcp'. */
    provider: text('provider').notNull(),
    /** The external id the tenant's role trust policy must require (AWS); null for Cloud KMS. */
    externalId: text('external_id'),
    /** Non-secret parameters the artifacts were generated with (principal, regions, names). */
    params: jsonb('params').notNull(),
    createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
    updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
  },
  // The name PostgreSQL gives the shipped SQL's REFERENCES, so drizzle-kit sees no difference.
  (t) => [
    foreignKey({
      name: 'onboarding_tenant_id_fkey',
      columns: [t.tenantId],
      foreignColumns: [byokTenants.tenantId],
    }).onDelete('cascade'),
  ],
);

/**
 * Key identity per wrap and per KEK, and the onboarding table. Identical to the shipped
 * `migrations/0004_key_identity.sql` (a test checks they match). Idempotent.
 */
export const KEY_IDENTITY_MIGRATION = `-- drizzle-byok key identity per wrap, and tenant onboarding. Idempotent: safe to run more than once.
-- Matches byokDekWraps.wrappedBy, byokKeks.currentKeyId and byokOnboarding of \`drizzle-byok/schema\`.
CREATE SCHEMA IF NOT EXISTS byok;

-- New columns, added only when missing: ALTER TABLE takes an exclusive lock even with IF NOT EXISTS,
-- and installKeyStore runs on every start while other instances use these tables.
-- dek_wraps.wrapped_by: the key that actually wrapped (AWS: the key ARN the Encrypt answer names,
-- also for an alias; Cloud KMS: the primary CryptoKeyVersion); null on wraps made before this.
-- keks.secret_key_by: the same, for the platform wrap of a KEK's sealed secret.
-- keks.current_key_id: what the KEK's reference resolved to at its last health check (an alias's
-- target key ARN; a Cloud KMS key's primary version).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                 WHERE table_schema = 'byok' AND table_name = 'dek_wraps' AND column_name = 'wrapped_by') THEN
    ALTER TABLE byok.dek_wraps ADD COLUMN wrapped_by text;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                 WHERE table_schema = 'byok' AND table_name = 'keks' AND column_name = 'secret_key_by') THEN
    ALTER TABLE byok.keks ADD COLUMN secret_key_by text;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                 WHERE table_schema = 'byok' AND table_name = 'keks' AND column_name = 'current_key_id') THEN
    ALTER TABLE byok.keks ADD COLUMN current_key_id text;
  END IF;
END
$$;

CREATE TABLE IF NOT EXISTS byok.onboarding (
  tenant_id   text PRIMARY KEY REFERENCES byok.tenants (tenant_id) ON DELETE CASCADE,
  provider    text NOT NULL,
  external_id text,
  params      jsonb NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
`;
