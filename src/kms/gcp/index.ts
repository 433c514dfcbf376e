/**
 * `drizzle-byok/gcp`: a tenant's Google Cloud KMS key as key-encryption key (KEK).
 *
 * ```ts
 * const kek = gcpKms({
 *   keyName: 'projects/acme-prod/locations/europe-west1/keyRings/byok/cryptoKeys/saas-dek',
 *   credentials: { type: 'service-account', key: process.env.ACME_SA_KEY_JSON! },
 * });
 * ```
 *
 * Wrapping is Cloud KMS `Encrypt` / `Decrypt` on the CryptoKey (Encrypt uses the primary version,
 * Decrypt finds the version in the ciphertext, so key rotation needs nothing from us), with
 * `additionalAuthenticatedData` binding the tenant and the DEK record (see
 * {@link gcpAdditionalAuthenticatedData}) and the CRC32C integrity fields checked both ways.
 *
 * The service account needs `roles/cloudkms.cryptoKeyEncrypterDecrypter` on the key, plus
 * `roles/cloudkms.viewer` for `describe()` (health checks).
 *
 * This folder (and `drizzle-byok/testing`) is the only one that loads Google packages, and it loads
 * `@google-cloud/kms` and `google-gax` lazily, at the first call that needs the network.
 */
export { GcpKmsKek, gcpKms } from './cloud-kms-kek.ts';
export type {
  GcpCredentials,
  GcpDefaultCredentials,
  GcpServiceAccountCredentials,
  GcpServiceAccountKeyJson,
} from './credentials.ts';
export { gcpKekFactory } from './factory.ts';
export type {
  GcpCryptoKeyLike,
  GcpDecryptResponseLike,
  GcpEncryptResponseLike,
  GcpInt64ValueLike,
  GcpKmsClientLike,
  GcpKmsOptions,
} from './options.ts';
export { type GcpKeyNameParts, parseGcpKeyName } from './resource-names.ts';
export { gcpAdditionalAuthenticatedData, gcpCrc32c } from './wire.ts';
