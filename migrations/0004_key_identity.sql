-- drizzle-byok key identity per wrap, and tenant onboarding. Idempotent: safe to run more than once.
-- Matches byokDekWraps.wrappedBy, byokKeks.currentKeyId and byokOnboarding of `drizzle-byok/schema`.
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
