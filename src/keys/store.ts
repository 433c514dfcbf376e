import { sql } from 'drizzle-orm';
import type { PgDatabase } from 'drizzle-orm/pg-core';
import { RETROFIT_MIGRATION } from '../migrate/schema.ts';
import { BLIND_INDEX_MIGRATION } from '../drizzle/blind-schema.ts';
import { KEY_IDENTITY_MIGRATION } from './identity-schema.ts';
import { rethrowStoreError } from './store-errors.ts';

/**
 * The key store migration, identical to the shipped `migrations/0001_key_store.sql` (a test checks
 * they match). Idempotent.
 */
export const KEY_STORE_MIGRATION = `-- drizzle-byok key store. Idempotent: safe to run more than once.
-- Matches the Drizzle schema exported as \`drizzle-byok/schema\`.
CREATE SCHEMA IF NOT EXISTS byok;

CREATE TABLE IF NOT EXISTS byok.tenants (
  tenant_id        text PRIMARY KEY,
  mode             text NOT NULL DEFAULT 'platform',
  state            text NOT NULL DEFAULT 'active',
  progress         jsonb,
  health           text NOT NULL DEFAULT 'ok',
  last_verified_at timestamptz,
  last_error       text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS byok.keks (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant_id        text NOT NULL REFERENCES byok.tenants (tenant_id) ON DELETE CASCADE,
  kind             text NOT NULL,
  key_ref          text NOT NULL,
  region           text,
  priority         integer NOT NULL DEFAULT 0,
  state            text NOT NULL DEFAULT 'active',
  params           jsonb NOT NULL,
  secret           bytea,
  secret_key       bytea,
  secret_key_ref   text,
  health           text NOT NULL DEFAULT 'ok',
  last_verified_at timestamptz,
  last_error       text,
  created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS keks_tenant_idx ON byok.keks (tenant_id);

CREATE TABLE IF NOT EXISTS byok.deks (
  id         uuid PRIMARY KEY,
  tenant_id  text NOT NULL REFERENCES byok.tenants (tenant_id) ON DELETE CASCADE,
  version    integer NOT NULL,
  state      text NOT NULL DEFAULT 'active',
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS deks_tenant_version_uq ON byok.deks (tenant_id, version);
-- At most one active data key per tenant: the lazy first write races on this index.
CREATE UNIQUE INDEX IF NOT EXISTS deks_one_active_uq ON byok.deks (tenant_id) WHERE state = 'active';

CREATE TABLE IF NOT EXISTS byok.dek_wraps (
  dek_id     uuid NOT NULL REFERENCES byok.deks (id) ON DELETE CASCADE,
  kek_id     uuid REFERENCES byok.keks (id) ON DELETE CASCADE,
  kek_ref    text NOT NULL,
  wrapped    bytea NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (dek_id, kek_ref)
);

CREATE TABLE IF NOT EXISTS byok.audit (
  id         bigserial PRIMARY KEY,
  at         timestamptz NOT NULL DEFAULT now(),
  tenant_id  text,
  operation  text NOT NULL,
  key_ref    text,
  outcome    text NOT NULL,
  latency_ms integer,
  detail     jsonb
);
CREATE INDEX IF NOT EXISTS audit_tenant_at_idx ON byok.audit (tenant_id, at);
`;

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
export async function installKeyStore(db: PgDatabase<any, any, any>): Promise<void> {
  await db
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
