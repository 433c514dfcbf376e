/**
 * Every error drizzle-byok throws on purpose is a `ByokError` with a stable `code`.
 *
 * Rules every subclass follows:
 * - messages never contain plaintext, key bytes, wrapped keys or query parameters;
 *   they name tenants, tables, columns and key references (ARNs, resource names), which are not secret;
 * - every failure to decrypt a field is the one generic `DecryptionFailedError`, whatever the cause
 *   (tag, AAD, key, truncation): no oracle;
 * - misuse by the programmer (a bad argument) is a `ByokConfigError` naming what to fix;
 * - `cause` is passed through for diagnosis, after redaction where the cause could carry secrets.
 */
export class ByokError extends Error {
  static code = 'ERR_BYOK';
  readonly code: string;
  /** Tenant the failure concerns, when known. Tenant ids are identifiers, not secrets. */
  readonly tenantId?: string;

  constructor(message: string, options?: { cause?: unknown; tenantId?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    if (options?.tenantId !== undefined) this.tenantId = options.tenantId;
    this.code = (new.target as typeof ByokError).code;
  }
}

/** Bad configuration or a bad argument: the message says what to fix. */
export class ByokConfigError extends ByokError {
  static override code = 'ERR_BYOK_CONFIG';
}

/**
 * The Drizzle driver a database was built with is one drizzle-byok has not been tested with
 * (detected by the session's class, not by a version string). Refused up front rather than run
 * unchecked: a query path not shown to pass every value through the encryption and the guard could
 * let plaintext through.
 */
export class UnsupportedDrizzleError extends ByokConfigError {
  static override code = 'ERR_BYOK_UNSUPPORTED_DRIZZLE';
}

/** A field could not be decrypted. Deliberately says nothing about why. */
export class DecryptionFailedError extends ByokError {
  static override code = 'ERR_BYOK_DECRYPTION_FAILED';
  constructor(options?: { cause?: unknown; tenantId?: string; column?: string }) {
    super(
      options?.column === undefined
        ? 'decryption operation failed'
        : `decryption operation failed (column ${options.column})`,
      options,
    );
  }
}

/** An encrypted value was written, or read, with no tenant in scope. */
export class NoTenantError extends ByokError {
  static override code = 'ERR_BYOK_NO_TENANT';
}

/** The tenant in scope and the tenant of a row (or of a ciphertext) differ. */
export class TenantMismatchError extends ByokError {
  static override code = 'ERR_BYOK_TENANT_MISMATCH';
}

/** An encrypted column was compared with a plain value (`eq(t.email, 'x')`) or a raw placeholder. */
export class EncryptedComparisonError extends ByokError {
  static override code = 'ERR_BYOK_ENCRYPTED_COMPARISON';
}

/**
 * An encrypted (or blind index) column appeared in a query where its meaning is not preserved: in a
 * comparison, a function, a cast, an `sql` template, `order by`, `group by`, `distinct`, a join
 * condition, a set operation, or as a write target of anything but a value encoded by that column.
 * Thrown while the query is built, before anything is sent. The same code as
 * `EncryptedComparisonError` (it is one): `column` names the column (`table.column`) and
 * `construct` the place it was found. See docs/security.md for the allowlist.
 */
export class EncryptedColumnUsageError extends EncryptedComparisonError {
  /** The encrypted or blind index column, `table.column`. */
  readonly column: string;
  /** Where in the query it was found (`where`, `order by`, `an update set value`, ...). */
  readonly construct: string;
  constructor(column: string, construct: string, hint?: string) {
    super(
      `encrypted column ${column} cannot be used in ${construct}: its ciphertext is randomized and ` +
        'opaque to SQL, so the query would compare, transform or copy ciphertext (or send a value in ' +
        'plaintext). ' +
        (hint ??
          'Allowed: select it, isNull/isNotNull, write a value; use a blind index for equality, ' +
            'reencrypt() to move values, rawCiphertext() for backups.'),
    );
    this.column = column;
    this.construct = construct;
  }
}

/** An encrypted column was used through a Drizzle instance that `withEncryption` did not wrap. */
export class NotWrappedError extends ByokError {
  static override code = 'ERR_BYOK_NOT_WRAPPED';
}

/** A sealed placeholder reached a place where it would have been serialized (driver, JSON, string). */
export class PlaceholderLeakError extends ByokError {
  static override code = 'ERR_BYOK_PLACEHOLDER_LEAK';
}

/** The tenant has no data key (never written, or shredded). */
export class KeyNotFoundError extends ByokError {
  static override code = 'ERR_BYOK_KEY_NOT_FOUND';
}

/** The tenant's data keys were destroyed by `shred`: its data can never be read again. */
export class TenantShreddedError extends ByokError {
  static override code = 'ERR_BYOK_TENANT_SHREDDED';
}

/** The KMS refused access to the key-encryption key (revoked grant, IAM change, wrong principal). */
export class KeyAccessDeniedError extends ByokError {
  static override code = 'ERR_BYOK_KEY_ACCESS_DENIED';
}

/** The key-encryption key is disabled, or pending deletion / destroyed. */
export class KeyDisabledError extends ByokError {
  static override code = 'ERR_BYOK_KEY_DISABLED';
}

/** The key-encryption key does not exist (wrong ARN or resource name, wrong region, deleted). */
export class KekNotFoundError extends ByokError {
  static override code = 'ERR_BYOK_KEK_NOT_FOUND';
}

/** The key exists but cannot wrap data keys (wrong key usage, key spec or purpose). */
export class KeyUsageError extends ByokError {
  static override code = 'ERR_BYOK_KEY_USAGE';
}

/** The KMS could not be reached or did not answer in time, after retries. */
export class KmsUnavailableError extends ByokError {
  static override code = 'ERR_BYOK_KMS_UNAVAILABLE';
}

/** The KMS throttled us beyond the retry budget. */
export class KmsThrottledError extends ByokError {
  static override code = 'ERR_BYOK_KMS_THROTTLED';
}

/** A KMS answer failed an integrity check (e.g. Cloud KMS CRC32C), or unwrapped to something that is not a data key. */
export class KmsIntegrityError extends ByokError {
  static override code = 'ERR_BYOK_KMS_INTEGRITY';
}

/** A credential for the KMS was rejected or could not be obtained (STS, web identity, service account). */
export class KmsCredentialsError extends ByokError {
  static override code = 'ERR_BYOK_KMS_CREDENTIALS';
}

/** Writes are refused for this column right now (retrofit read mode `read-only`). */
export class WriteRefusedError extends ByokError {
  static override code = 'ERR_BYOK_WRITE_REFUSED';
}

/** A unique constraint on a blind index was violated. */
export class UniqueViolationError extends ByokError {
  static override code = 'ERR_BYOK_UNIQUE_VIOLATION';
}

/** A lifecycle operation could not take the tenant's lock in time. */
export class LifecycleBusyError extends ByokError {
  static override code = 'ERR_BYOK_LIFECYCLE_BUSY';
}

/**
 * The key store tables (schema `byok`) do not exist in the database the keyring uses. The message
 * says how to create them; the cause is the database's own error (never the failed query's text or
 * parameters).
 */
export class KeyStoreMissingError extends ByokError {
  static override code = 'ERR_BYOK_KEY_STORE_MISSING';
}

/**
 * The database could not be reached or refused the connection (server down, wrong host or port,
 * wrong database name, authentication failed). The message names the address and the cause, never
 * credentials or query parameters.
 */
export class DatabaseUnavailableError extends ByokError {
  static override code = 'ERR_BYOK_DATABASE_UNAVAILABLE';
}

/**
 * The key store could not be reached in time: every connection of the keyring's budget stayed busy
 * longer than `keyStore.waitTimeoutMs`. The last resort against a pool exhausted by transactions
 * that wait on key loads: raise the budget, give the keyring its own `keyStore.db`, or retry.
 */
export class KeyStoreBusyError extends ByokError {
  static override code = 'ERR_BYOK_KEY_STORE_BUSY';
}

export type ByokErrorCode =
  | typeof ByokError.code
  | typeof ByokConfigError.code
  | typeof UnsupportedDrizzleError.code
  | typeof DecryptionFailedError.code
  | typeof NoTenantError.code
  | typeof TenantMismatchError.code
  | typeof EncryptedComparisonError.code
  | typeof NotWrappedError.code
  | typeof PlaceholderLeakError.code
  | typeof KeyNotFoundError.code
  | typeof TenantShreddedError.code
  | typeof KeyAccessDeniedError.code
  | typeof KeyDisabledError.code
  | typeof KekNotFoundError.code
  | typeof KeyUsageError.code
  | typeof KmsUnavailableError.code
  | typeof KmsThrottledError.code
  | typeof KmsIntegrityError.code
  | typeof KmsCredentialsError.code
  | typeof WriteRefusedError.code
  | typeof UniqueViolationError.code
  | typeof LifecycleBusyError.code
  | typeof RetrofitBusyError.code
  | typeof KeyStoreMissingError.code
  | typeof DatabaseUnavailableError.code
  | typeof KeyStoreBusyError.code;

/** True for any error thrown by drizzle-byok on purpose (works across duplicate installs). */
export function isByokError(e: unknown): e is ByokError {
  return (
    e instanceof ByokError ||
    (typeof e === 'object' &&
      e !== null &&
      typeof (e as { code?: unknown }).code === 'string' &&
      (e as { code: string }).code.startsWith('ERR_BYOK'))
  );
}

/**
 * The retrofit engine could not make progress: rows stayed locked by other transactions longer than
 * `busyTimeoutMs`, or another operation (encrypt / rollback) is running on the same columns.
 */
export class RetrofitBusyError extends ByokError {
  static override code = 'ERR_BYOK_RETROFIT_BUSY';
}
