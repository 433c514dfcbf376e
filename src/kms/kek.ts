/**
 * The key-encryption key (KEK) interface. A KEK wraps and unwraps data keys (DEKs); the KEK itself
 * never leaves its KMS (or, for `localKek`, the process). Providers: `localKek` (platform key from
 * configuration), `awsKms` (`drizzle-byok/aws`), `gcpKms` (`drizzle-byok/gcp`), `azureKeyVault`
 * (`drizzle-byok/azure`), `vaultTransit` (`drizzle-byok/vault`).
 *
 * Contract every provider follows:
 * - `wrap`/`unwrap` bind `context.tenantId` and `context.dekId` to the wrapped key (AWS
 *   EncryptionContext, Cloud KMS additionalAuthenticatedData, AES-GCM AAD for the local KEK), so a
 *   wrapped DEK copied to another tenant or another DEK record cannot be unwrapped;
 * - failures are mapped to the typed errors of `../errors.ts` (`KeyAccessDeniedError`,
 *   `KeyDisabledError`, `KekNotFoundError`, `KeyUsageError`, `KmsUnavailableError`,
 *   `KmsThrottledError`, `KmsIntegrityError`, `KmsCredentialsError`); messages carry key references only;
 * - `toConfig()` returns everything needed to rebuild the provider on another instance; fields listed
 *   in `secretFields` are stored encrypted under the platform key and never returned by status calls.
 */
export interface WrapContext {
  readonly tenantId: string;
  /** The DEK record id (UUID text). */
  readonly dekId: string;
}

export type KekKind = 'local' | 'aws-kms' | 'gcp-kms' | 'azure-key-vault' | 'vault-transit';

export interface KeyDescription {
  /** 'enabled' when the key can wrap and unwrap now. */
  readonly state: 'enabled' | 'disabled' | 'pending-deletion' | 'destroyed' | 'unknown';
  /** Provider's own words for the state (e.g. AWS KeyState, Cloud KMS version state). */
  readonly providerState?: string;
  /** Region or location of the key, when the provider has one. */
  readonly region?: string;
  /**
   * The key a wrap uses now: the key ARN an AWS key or alias ARN resolves to, the primary
   * CryptoKeyVersion of a Cloud KMS key. Compared with the keys recorded per wrap to detect an
   * alias moved to another key or a rotated primary version.
   */
  readonly currentKeyId?: string;
  /** Non-secret details worth showing an administrator (key spec, usage, rotation). */
  readonly details?: Readonly<Record<string, string | number | boolean | null>>;
}

/** Serializable configuration of a KEK. `secret` holds credentials and is stored encrypted. */
export interface KekConfig {
  readonly kind: KekKind;
  /** Non-secret parameters (key ARN, region, role ARN, resource name, endpoint...). */
  readonly params: Readonly<Record<string, unknown>>;
  /** Secret parameters (access keys, service-account private key); never logged nor returned. */
  readonly secret?: Readonly<Record<string, unknown>>;
}

/** A wrapped data key and the key that actually wrapped it (see {@link Kek.wrapIdentified}). */
export interface WrapResult {
  readonly wrapped: Uint8Array;
  /**
   * The key that wrapped, as the KMS named it: AWS the key ARN of the Encrypt answer (also when the
   * KEK names an alias), Cloud KMS the CryptoKeyVersion. Recorded per wrap and passed back to
   * `unwrap`, so moving an alias or rotating a primary version never strands a wrapped key.
   */
  readonly wrappedBy: string;
}

export interface Kek {
  readonly kind: KekKind;
  /** Stable, non-secret identifier of the key (ARN, Cloud KMS resource name, `local:<fingerprint>`). */
  readonly keyRef: string;
  /** Region / location used to prefer a KEK during unwrap failover; undefined for global keys. */
  readonly region?: string;
  wrap(dek: Uint8Array, context: WrapContext): Promise<Uint8Array>;
  /** Optional: `wrap`, also naming the key that actually wrapped. The keyring records it per wrap. */
  wrapIdentified?(dek: Uint8Array, context: WrapContext): Promise<WrapResult>;
  /**
   * `wrappedBy`: what `wrapIdentified` returned for this wrap, when recorded. A provider unwraps by
   * it when it is a key its own reference can name (the key itself, or for an alias a key of the
   * alias's account and region) and refuses it otherwise.
   */
  unwrap(wrapped: Uint8Array, context: WrapContext, wrappedBy?: string): Promise<Uint8Array>;
  /**
   * Optional: re-wraps a wrapped data key under the key's current version inside the KMS, without
   * the data key leaving it (Vault Transit `rewrap`). `rewrapMovedKeys` uses it for wraps made by
   * an older version of the same key (`wrappedBy` a version of `keyRef`) instead of unwrap + wrap.
   */
  rewrap?(wrapped: Uint8Array, context: WrapContext, wrappedBy?: string): Promise<WrapResult>;
  /** Key state check (DescribeKey / GetCryptoKey). */
  describe(): Promise<KeyDescription>;
  toConfig(): KekConfig;
  /** Release clients (sockets, gRPC channels). Optional. */
  close?(): Promise<void>;
}

/** Rebuilds a KEK from stored configuration; registered per kind with the keyring. */
export type KekFactory = (config: KekConfig) => Kek | Promise<Kek>;
