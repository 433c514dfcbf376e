/** The AWS KMS KEK: wrap with `Encrypt`, unwrap with `Decrypt`, describe with `DescribeKey`. */
import { inspect } from 'node:util';
import { DecryptCommand, DescribeKeyCommand, EncryptCommand, KMSClient } from '@aws-sdk/client-kms';
import type { KeyMetadata } from '@aws-sdk/client-kms';
import { ByokConfigError, KmsIntegrityError } from '../../errors.ts';
import { checkContext } from '../binding.ts';
import type { Kek, KekConfig, KeyDescription, WrapContext, WrapResult } from '../kek.ts';
import { canNameAwsKey } from './arn.ts';
import {
  credentialProvider,
  describeAuth,
  leafAccessKeys,
  publicAuth,
  taggingCredentialErrors,
} from './credentials.ts';
import { type AwsErrorSubject, type AwsOperation, mapAwsError } from './errors.ts';
import {
  type AwsKmsClientLike,
  type AwsKmsOptions,
  type ResolvedOptions,
  resolveOptions,
} from './options.ts';

/** EncryptionContext keys bound to every wrapped DEK. */
export const AWS_ENCRYPTION_CONTEXT_KEYS = { tenant: 'byok:tenant', dek: 'byok:dek' } as const;

const DEK_BYTES = 32;

function mapState(keyState: string | undefined): KeyDescription['state'] {
  switch (keyState) {
    case 'Enabled':
      return 'enabled';
    case 'Disabled':
    case 'PendingImport':
    case 'Unavailable':
      return 'disabled';
    case 'PendingDeletion':
    case 'PendingReplicaDeletion':
      return 'pending-deletion';
    default:
      return 'unknown';
  }
}

/**
 * A KEK backed by an AWS KMS symmetric key. Create it with {@link awsKms}; rebuild it from
 * `toConfig()` with {@link awsKekFactory} / {@link createAwsKekFactory}.
 *
 * Error mapping (messages name the key ARN, the operation and the AWS error name; `cause` is a
 * scrubbed copy of the SDK error):
 * - `AccessDeniedException` → `KeyAccessDeniedError`;
 * - `DisabledException`, `KMSInvalidStateException` (pending deletion, unavailable...) → `KeyDisabledError`;
 * - `NotFoundException` → `KekNotFoundError`;
 * - `InvalidKeyUsageException`, `UnsupportedOperationException` (not a symmetric ENCRYPT_DECRYPT key) → `KeyUsageError`;
 * - `InvalidCiphertextException` (wrong tenant / DEK context, corrupted blob) and `IncorrectKeyException`
 *   (blob wrapped under another key) on unwrap, or an unwrapped key that is not 32 bytes → `KmsIntegrityError`;
 * - throttling after the retries → `KmsThrottledError`;
 * - timeouts, network errors, 5xx after the retries → `KmsUnavailableError`;
 * - any failure to obtain credentials (STS AccessDenied, bad web identity token, missing token file)
 *   and rejected credentials (`UnrecognizedClientException`, `InvalidSignatureException`,
 *   `ExpiredTokenException`) → `KmsCredentialsError`;
 * - an answer that is not a KMS answer (HTML or plain-text body from a proxy, load balancer or wrong
 *   endpoint; JSON without an error name), by HTTP status: 401 / 403 → `KmsCredentialsError`,
 *   429 → `KmsThrottledError`, 3xx / 404 / 405 → `ByokConfigError` (check `endpoint`), 2xx →
 *   `KmsIntegrityError`, anything else (5xx, 408...) → `KmsUnavailableError`;
 * - an answer missing a field the operation needs (Encrypt/Decrypt `KeyId` or a key this reference
 *   cannot name, DescribeKey `KeyMetadata`, `KeyState`, `KeyUsage`, `KeySpec`, `Arn`) → `KmsIntegrityError`;
 * - `ValidationException` → `ByokConfigError`; any other AWS error name → `KmsUnavailableError` for
 *   a 5xx, `KmsCredentialsError` for a 401 / 403, else `ByokError`.
 *
 * Every message starts with `AWS KMS <operation> with <key ARN>`.
 */
export class AwsKmsKek implements Kek {
  readonly kind = 'aws-kms' as const;
  /** The configured key ARN or alias ARN. */
  readonly keyRef: string;
  /** The key's region. */
  readonly region: string;
  readonly #options: ResolvedOptions;
  readonly #client: AwsKmsClientLike;
  readonly #ownsClient: boolean;
  readonly #errors: AwsErrorSubject;
  #closed = false;

  constructor(options: AwsKmsOptions) {
    this.#options = resolveOptions(options);
    this.keyRef = this.#options.keyArn;
    this.region = this.#options.region;
    const keys = leafAccessKeys(this.#options.auth);
    this.#errors = {
      keyRef: this.keyRef,
      auth: describeAuth(this.#options.auth),
      endpoint: this.#options.endpoint,
      secrets:
        keys === undefined ? [] : [keys.secretAccessKey, ...(keys.sessionToken ? [keys.sessionToken] : [])],
    };
    if (options.client !== undefined) {
      if (typeof options.client?.send !== 'function')
        throw new ByokConfigError('awsKms: client must have a send() method');
      this.#client = options.client;
      this.#ownsClient = false;
    } else {
      const o = this.#options;
      this.#client = new KMSClient({
        region: o.region,
        maxAttempts: o.maxAttempts,
        retryMode: 'standard',
        credentials: taggingCredentialErrors(
          credentialProvider(o.auth, {
            region: o.region,
            endpoint: o.stsEndpoint,
            maxAttempts: o.maxAttempts,
          }),
        ),
        ...(o.endpoint === undefined ? {} : { endpoint: o.endpoint }),
        requestHandler: {
          connectionTimeout: o.timeoutMs,
          requestTimeout: o.timeoutMs,
          throwOnRequestTimeout: true,
        },
      });
      this.#ownsClient = true;
    }
  }

  /** Wraps a 32-byte DEK with `Encrypt`, binding tenant and DEK id in the EncryptionContext. */
  async wrap(dek: Uint8Array, context: WrapContext): Promise<Uint8Array> {
    return (await this.wrapIdentified(dek, context)).wrapped;
  }

  /**
   * `wrap`, also returning the key ARN the Encrypt answer names: the key behind an alias at the
   * moment of the call. It must be a key ARN this KEK's reference can name (the configured key ARN
   * itself; for an alias, a key of the alias's account and region), else `KmsIntegrityError`.
   */
  async wrapIdentified(dek: Uint8Array, context: WrapContext): Promise<WrapResult> {
    if (!(dek instanceof Uint8Array) || dek.length !== DEK_BYTES) {
      throw new ByokConfigError(`awsKms.wrap: a data key must be ${DEK_BYTES} bytes`);
    }
    const encryptionContext = this.#context(context);
    const out = await this.#send('Encrypt', context.tenantId, () =>
      this.#client.send(
        new EncryptCommand({
          KeyId: this.keyRef,
          Plaintext: dek,
          EncryptionContext: encryptionContext,
          EncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
        }),
      ),
    );
    if (!(out?.CiphertextBlob instanceof Uint8Array) || out.CiphertextBlob.length === 0) {
      throw new KmsIntegrityError(`AWS KMS Encrypt with ${this.keyRef} returned no ciphertext`, {
        tenantId: context.tenantId,
      });
    }
    const wrappedBy = this.#answeredKey('Encrypt', out.KeyId, context.tenantId);
    return { wrapped: out.CiphertextBlob, wrappedBy };
  }

  /**
   * Whether `keyArn` is a key this KEK's reference can name: the configured key ARN itself, or for
   * an alias ARN any key ARN of the alias's partition, account and region.
   */
  canName(keyArn: string): boolean {
    return canNameAwsKey(this.#options.arn, this.keyRef, keyArn);
  }

  /** The key ARN of an Encrypt / Decrypt / DescribeKey answer, checked with {@link canName}. */
  #answeredKey(operation: AwsOperation, keyId: unknown, tenantId: string | undefined): string {
    const t = tenantId === undefined ? {} : { tenantId };
    if (typeof keyId !== 'string' || keyId === '') {
      throw new KmsIntegrityError(
        `AWS KMS ${operation} with ${this.keyRef}: the answer names no key (KeyId missing)`,
        t,
      );
    }
    if (!this.canName(keyId)) {
      throw new KmsIntegrityError(
        `AWS KMS ${operation} with ${this.keyRef}: the answer names key ${keyId}, which this key reference cannot name`,
        t,
      );
    }
    return keyId;
  }

  /**
   * Unwraps with `Decrypt`, naming the key that wrapped (`wrappedBy`, recorded at wrap time) or the
   * configured key ARN, so a blob of another key is refused (`IncorrectKeyException`). For a wrap
   * made before key identity was recorded under an alias, Decrypt names no key (AWS finds it in
   * the blob) and the answer's key must be one the alias could name.
   */
  async unwrap(wrapped: Uint8Array, context: WrapContext, wrappedBy?: string): Promise<Uint8Array> {
    const encryptionContext = this.#context(context);
    if (!(wrapped instanceof Uint8Array) || wrapped.length === 0 || wrapped.length > 6144) {
      throw new KmsIntegrityError(
        `awsKms.unwrap: the wrapped data key for ${this.keyRef} is empty or too long`,
        {
          tenantId: context.tenantId,
        },
      );
    }
    let keyId: string | undefined;
    if (wrappedBy !== undefined && wrappedBy !== null) {
      if (!this.canName(wrappedBy)) {
        throw new KmsIntegrityError(
          `awsKms.unwrap: the data key is recorded as wrapped by ${String(wrappedBy)}, which ${this.keyRef} cannot name`,
          { tenantId: context.tenantId },
        );
      }
      keyId = wrappedBy;
    } else if (this.#options.arn.resourceType === 'key') {
      keyId = this.keyRef;
    }
    const out = await this.#send('Decrypt', context.tenantId, () =>
      this.#client.send(
        new DecryptCommand({
          ...(keyId === undefined ? {} : { KeyId: keyId }),
          CiphertextBlob: wrapped,
          EncryptionContext: encryptionContext,
          EncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
        }),
      ),
    );
    const plaintext = out?.Plaintext;
    try {
      const answered = this.#answeredKey('Decrypt', out?.KeyId ?? keyId, context.tenantId);
      if (keyId !== undefined && answered !== keyId) {
        throw new KmsIntegrityError(
          `AWS KMS Decrypt with ${this.keyRef}: the answer names key ${answered}, not the key asked for (${keyId})`,
          { tenantId: context.tenantId },
        );
      }
    } catch (e) {
      if (plaintext instanceof Uint8Array) plaintext.fill(0);
      throw e;
    }
    if (!(plaintext instanceof Uint8Array) || plaintext.length !== DEK_BYTES) {
      if (plaintext instanceof Uint8Array) plaintext.fill(0);
      throw new KmsIntegrityError(
        `AWS KMS Decrypt with ${this.keyRef} returned something that is not a ${DEK_BYTES}-byte data key`,
        { tenantId: context.tenantId },
      );
    }
    return plaintext;
  }

  /**
   * `DescribeKey`. State: `Enabled` → enabled; `Disabled`, `PendingImport`, `Unavailable` (custom key
   * store disconnected) → disabled; `PendingDeletion`, `PendingReplicaDeletion` → pending-deletion;
   * anything else → unknown (`providerState` keeps AWS's word). `details` has key id and ARN,
   * account, usage, spec, manager, origin, multi-region type and primary region, deletion date, and
   * `canWrap` (a symmetric ENCRYPT_DECRYPT key).
   */
  async describe(): Promise<KeyDescription> {
    const out = await this.#send('DescribeKey', undefined, () =>
      this.#client.send(new DescribeKeyCommand({ KeyId: this.keyRef })),
    );
    const m: KeyMetadata | undefined = out?.KeyMetadata;
    const incomplete = (what: string) =>
      new KmsIntegrityError(`AWS KMS DescribeKey with ${this.keyRef}: the answer has no ${what}`);
    if (m === undefined || m === null || typeof m !== 'object') throw incomplete('KeyMetadata');
    if (typeof m.KeyState !== 'string' || (m.KeyState as string) === '')
      throw incomplete('KeyMetadata.KeyState');
    if (typeof m.KeyUsage !== 'string' || (m.KeyUsage as string) === '')
      throw incomplete('KeyMetadata.KeyUsage');
    const spec = m.KeySpec ?? m.CustomerMasterKeySpec;
    if (typeof spec !== 'string' || (spec as string) === '') throw incomplete('KeyMetadata.KeySpec');
    const currentKeyId = this.#answeredKey('DescribeKey', m.Arn, undefined);
    const arnRegion = currentKeyId.split(':')[3];
    const details: Record<string, string | number | boolean | null> = {
      keyId: m.KeyId ?? null,
      keyArn: currentKeyId,
      accountId: m.AWSAccountId ?? null,
      keyUsage: m.KeyUsage,
      keySpec: spec,
      keyManager: m.KeyManager ?? null,
      origin: m.Origin ?? null,
      multiRegion: m.MultiRegion ?? false,
      multiRegionKeyType: m.MultiRegionConfiguration?.MultiRegionKeyType ?? null,
      primaryRegion: m.MultiRegionConfiguration?.PrimaryKey?.Region ?? null,
      deletionDate: m.DeletionDate instanceof Date ? m.DeletionDate.toISOString() : null,
      canWrap: m.KeyUsage === 'ENCRYPT_DECRYPT' && spec === 'SYMMETRIC_DEFAULT',
    };
    return {
      state: mapState(m.KeyState),
      providerState: m.KeyState,
      region: arnRegion !== undefined && arnRegion !== '' ? arnRegion : this.region,
      currentKeyId,
      details,
    };
  }

  /**
   * Serializable configuration. `params`: `keyArn`, `region`, `endpoint`, `stsEndpoint`, `timeoutMs`,
   * `maxAttempts` and `auth` (type, role ARN, external id, session name, duration, token file, nested
   * `source`; a token function is recorded as `tokenSource: 'function'`). `secret`: the static access
   * keys of the auth chain, if any.
   */
  toConfig(): KekConfig {
    const o = this.#options;
    const keys = leafAccessKeys(o.auth);
    return {
      kind: 'aws-kms',
      params: {
        keyArn: o.keyArn,
        region: o.region,
        ...(o.endpoint === undefined ? {} : { endpoint: o.endpoint }),
        ...(o.stsEndpoint === undefined ? {} : { stsEndpoint: o.stsEndpoint }),
        timeoutMs: o.timeoutMs,
        maxAttempts: o.maxAttempts,
        auth: publicAuth(o.auth),
      },
      ...(keys === undefined
        ? {}
        : {
            secret: {
              accessKeyId: keys.accessKeyId,
              secretAccessKey: keys.secretAccessKey,
              ...(keys.sessionToken === undefined ? {} : { sessionToken: keys.sessionToken }),
            },
          }),
    };
  }

  /** Destroys the SDK client (sockets; a client passed as `options.client` stays open). Later calls fail with `ByokConfigError`. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#ownsClient) this.#client.destroy?.();
  }

  /** Non-secret view, for `JSON.stringify`. */
  toJSON(): Record<string, unknown> {
    return {
      kind: this.kind,
      keyRef: this.keyRef,
      region: this.region,
      auth: publicAuth(this.#options.auth),
    };
  }

  [inspect.custom](): string {
    return `AwsKmsKek { keyRef: '${this.keyRef}', region: '${this.region}', auth: '${describeAuth(this.#options.auth)}' }`;
  }

  #context(context: WrapContext): Record<string, string> {
    checkContext(context, 'awsKms');
    return {
      [AWS_ENCRYPTION_CONTEXT_KEYS.tenant]: context.tenantId,
      [AWS_ENCRYPTION_CONTEXT_KEYS.dek]: context.dekId,
    };
  }

  async #send<T>(operation: AwsOperation, tenantId: string | undefined, call: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new ByokConfigError(`awsKms: the KEK for ${this.keyRef} is closed`);
    try {
      return await call();
    } catch (e) {
      throw mapAwsError(e, operation, tenantId, this.#errors);
    }
  }
}

/** Creates an AWS KMS KEK. Validates the options (throws `ByokConfigError`); makes no network call. */
export function awsKms(options: AwsKmsOptions): AwsKmsKek {
  return new AwsKmsKek(options);
}
