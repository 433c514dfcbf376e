/** Verifying a KEK before the lifecycle uses it: rebuildable, enabled, able to wrap, a round trip. */
import { randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { ByokConfigError, KeyDisabledError, KeyUsageError, KmsIntegrityError } from '../../errors.ts';
import type { Kek, KekKind, KeyDescription } from '../../kms/kek.ts';
import type { KeyringContext } from '../context.ts';
import { unwrapIdentified, wrapIdentified } from '../identity.ts';

/** What each provider's key must be to wrap data keys, in that provider's words (for refusals). */
const KEY_NEEDED: Partial<Record<KekKind, string>> = {
  'aws-kms': 'an AWS KMS symmetric encryption key (key spec SYMMETRIC_DEFAULT, key usage ENCRYPT_DECRYPT)',
  'gcp-kms': 'a Cloud KMS key of purpose ENCRYPT_DECRYPT (algorithm GOOGLE_SYMMETRIC_ENCRYPTION)',
  'azure-key-vault':
    'a Key Vault RSA key (RSA or RSA-HSM) permitting wrapKey and unwrapKey for RSA-OAEP-256, or a Managed HSM oct-HSM key for A256KW',
  'vault-transit':
    'a Vault transit key of an AEAD type (aes256-gcm96, aes128-gcm96 or chacha20-poly1305), derived or not as the KEK is configured',
};

/**
 * Verifies a tenant's KEK before it is used: the keyring can rebuild it from configuration, the key
 * is enabled and can wrap, and a wrap/unwrap round trip under the tenant's context succeeds.
 * Throws the provider's typed error (not found, disabled, access denied, usage, unreachable...).
 */
export async function verifyKek(
  keyring: KeyringContext,
  tenantId: string,
  kek: Kek,
): Promise<KeyDescription> {
  if (!keyring.hasFactory(kek.kind)) {
    throw new ByokConfigError(
      `KEKs of kind '${kek.kind}' cannot be rebuilt by other instances: pass kekFactories: { '${kek.kind}': ... } to createKeyring`,
      { tenantId },
    );
  }
  const description = await keyring.timedKms('describe', kek, tenantId, () => kek.describe());
  const d = description.details ?? {};
  const need = KEY_NEEDED[kek.kind] ?? 'a key that can encrypt and decrypt (wrap and unwrap) data keys';
  // AWS (keyUsage, keySpec) and Cloud KMS (purpose) name usage and spec; Key Vault and Vault
  // Transit report what they lack through canWrap and their own words in providerState.
  const usage = d.keyUsage ?? d.purpose;
  const wrongUsage =
    (usage !== undefined && usage !== null && usage !== 'ENCRYPT_DECRYPT') ||
    (d.keySpec !== undefined && d.keySpec !== null && d.keySpec !== 'SYMMETRIC_DEFAULT');
  if (wrongUsage) {
    const spec = d.keySpec ?? d.algorithm;
    throw new KeyUsageError(
      `${kek.keyRef} cannot wrap data keys (usage ${usage ?? 'unknown'}, spec ${spec ?? 'unknown'}): use ${need}`,
      { tenantId },
    );
  }
  if (description.state !== 'enabled') {
    const words = description.providerState ?? description.state;
    const fix = /expired|not ?yet ?valid/i.test(words)
      ? 'move its expiry or activation date (or use another key version) first'
      : 'enable it first';
    throw new KeyDisabledError(`${kek.keyRef} is ${words}: ${fix}`, { tenantId });
  }
  if (d.canWrap === false) {
    throw new KeyUsageError(
      `${kek.keyRef} cannot wrap data keys (${description.providerState ?? 'unknown state'}): use ${need}`,
      { tenantId },
    );
  }
  const probe = randomBytes(32);
  const context = { tenantId, dekId: `verify-${randomUUID()}` };
  const { wrapped, wrappedBy } = await keyring.timedKms('wrap', kek, tenantId, () =>
    wrapIdentified(kek, probe, context),
  );
  const back = Buffer.from(
    await keyring.timedKms('unwrap', kek, tenantId, () => unwrapIdentified(kek, wrapped, context, wrappedBy)),
  );
  const ok = back.length === 32 && timingSafeEqual(back, probe);
  probe.fill(0);
  back.fill(0);
  if (!ok) throw new KmsIntegrityError(`${kek.keyRef} did not return the data it wrapped`, { tenantId });
  return description;
}
