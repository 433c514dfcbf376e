-- drizzle-byok blind index key versions. Idempotent: safe to run more than once.
-- Matches byokBlindIndexKeys exported by `drizzle-byok/schema`.
CREATE SCHEMA IF NOT EXISTS byok;

CREATE TABLE IF NOT EXISTS byok.blind_index_keys (
  tenant_id    text NOT NULL REFERENCES byok.tenants (tenant_id) ON DELETE CASCADE,
  context      text NOT NULL,
  version      integer NOT NULL CHECK (version BETWEEN 1 AND 255),
  dek_version  integer NOT NULL,
  state        text NOT NULL DEFAULT 'active',
  params       text NOT NULL,
  built        boolean NOT NULL DEFAULT false,
  progress     jsonb,
  created_at   timestamptz NOT NULL DEFAULT now(),
  activated_at timestamptz,
  updated_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, context, version)
);
-- At most one active index key version per tenant and index.
CREATE UNIQUE INDEX IF NOT EXISTS blind_index_keys_one_active_uq
  ON byok.blind_index_keys (tenant_id, context) WHERE state = 'active';
