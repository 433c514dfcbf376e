/**
 * drizzle-byok: per-tenant envelope encryption of Drizzle ORM columns on PostgreSQL, under each
 * tenant's own KMS key (BYOK) or the platform's key.
 */
export { type EncryptedColumnOptions, encrypted, type ReadMode } from './drizzle/columns.ts';
export type { BlindNormalize } from './crypto/blind-hmac.ts';
export {
  type BackfillReport,
  type BlindIndexConfig,
  type BlindIndexOptions,
  type BlindIndexStatus,
  type BlindIndexTarget,
  BlindIndexUniqueViolationError,
  backfillBlindIndex,
  blindIndex,
  blindIndexStatus,
  blindIndexValues,
  configureBlindIndexes,
  findByBlindIndex,
  matches,
  type ReindexPassReport,
  type RotationEvent,
  type RotationReport,
  rotateBlindIndex,
  withEncryption,
  type WithEncryptionOptions,
} from './blind/index.ts';
export { rawCiphertext, restoreCiphertext } from './drizzle/guard.ts';
export { decryptRows } from './drizzle/raw.ts';
export { type CiphertextBinding, reencrypt } from './drizzle/reencrypt.ts';
export { currentTenant, withAnyTenant, withTenant } from './scope.ts';
export {
  DEFAULT_RLS_SETTING,
  type RlsOptions,
  rlsSql,
  type TenantPolicyOptions,
  tenantCondition,
  tenantPolicy,
} from './drizzle/rls.ts';
export * from './errors.ts';
export type { DekCacheOptions } from './keys/cache.ts';
export type { ByokEvent, ByokEventListener } from './keys/events.ts';
export {
  createKeyring,
  INVALIDATION_CHANNEL,
  Keyring,
  type KeyringOptions,
  type KeyringStats,
  type PrefetchResult,
  type KeyStoreOptions,
} from './keys/keyring.ts';
export {
  type LifecycleOptions,
  type ShredOptions,
  type TenantKekStatus,
  type TenantStatus,
  verifyKek,
} from './keys/lifecycle/index.ts';
export type { Heartbeat, HeartbeatOptions, HeartbeatTick } from './keys/heartbeat.ts';
export type {
  AwsOnboarding,
  AwsOnboardingOptions,
  AwsPolicyDocument,
  AwsPolicyStatement,
  GcpOnboarding,
  GcpOnboardingOptions,
  Onboarding,
  OnboardingOptions,
  VaultOnboarding,
  VaultOnboardingOptions,
  AzureOnboarding,
  AzureOnboardingOptions,
} from './keys/onboarding.ts';
export type { RewrapMovedResult } from './keys/lifecycle/index.ts';
export {
  BLIND_INDEX_MIGRATION,
  installKeyStore,
  KEY_IDENTITY_MIGRATION,
  KEY_STORE_MIGRATION,
  RETROFIT_MIGRATION,
} from './store/migrations.ts';
export type {
  Kek,
  KekConfig,
  KekFactory,
  KekKind,
  KeyDescription,
  WrapContext,
  WrapResult,
} from './kms/kek.ts';
export { type LocalKekOptions, localKek } from './kms/local.ts';
/** Retrofit: encrypt existing plaintext columns online, resumably (see docs/retrofit.md). */
export {
  type BackfillOptions,
  type BackfillProgress,
  type BackfillResult,
  backfillJobId,
  type PlanReport,
  planBackfill,
  type RetrofitColumn,
  type RetrofitOperation,
  type RetrofitTableConfig,
  rollbackBackfill,
  runBackfill,
  type ValueCounts,
  type VerifyColumnReport,
  type VerifyOptions,
  type VerifyReport,
  verifyBackfill,
} from './migrate/index.ts';
/** The `drizzle-byok` CLI's configuration file (`drizzle-byok.config.ts`). */
export { type ByokCliConfig, defineConfig } from './cli/config.ts';
