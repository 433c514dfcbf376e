import { foreignKey, jsonb, text, timestamp } from 'drizzle-orm/pg-core';
import { byok, byokTenants } from './schema-key-store.ts';

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
