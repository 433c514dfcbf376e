/** The Cloud KMS KEK: wrap with `Encrypt`, unwrap with `Decrypt`, describe with `GetCryptoKey`. */
import { inspect } from 'node:util';
import type { CallOptions } from 'google-gax';
import { ByokConfigError, KmsIntegrityError } from '../../errors.ts';
import { checkContext } from '../binding.ts';
import type { Kek, KekConfig, KeyDescription, WrapContext, WrapResult } from '../kek.ts';
import { backoffDelayMs, sleep } from '../retry.ts';
import { type Connection, createConnection } from './connection.ts';
import { describeGcpCredentials } from './credentials.ts';
import { type GcpMethod, gcpRetryable, IntegrityFailure, mapGcpError } from './errors.ts';
import {
  type GcpKmsClientLike,
  type GcpKmsOptions,
  type ResolvedOptions,
  resolveOptions,
} from './options.ts';
import { isVersionOf } from './resource-names.ts';
import {
  ALGORITHM_NAMES,
  enumText,
  gcpAdditionalAuthenticatedData,
  gcpCrc32c,
  int64,
  isoOf,
  PROTECTION_LEVEL_NAMES,
  PURPOSE_NAMES,
  STATE_NAMES,
  toBytes,
  unspecified,
} from './wire.ts';

const DEK_BYTES = 32;
const MAX_WRAPPED_BYTES = 64 * 1024;

function mapVersionState(state: string | undefined): KeyDescription['state'] {
  switch (state) {
    case 'ENABLED':
      return 'enabled';
    case 'DISABLED':
      return 'disabled';
    case 'DESTROY_SCHEDULED':
      return 'pending-deletion';
    case 'DESTROYED':
      return 'destroyed';
    default:
      return 'unknown';
  }
}

/**
 * A KEK backed by a Cloud KMS symmetric (`ENCRYPT_DECRYPT`) CryptoKey. Create it with
 * {@link gcpKms}; rebuild it from `toConfig()` with {@link gcpKekFactory}.
 *
 * Error mapping (messages name the key, the method and the gRPC status; `cause` is a scrubbed copy
 * of the client error holding only its code and details):
 * - `PERMISSION_DENIED` → `KeyAccessDeniedError`;
 * - `FAILED_PRECONDITION` → `KeyUsageError` when it is about the key's purpose, else
 *   `KeyDisabledError` (primary or ciphertext version disabled, scheduled for destruction, destroyed);
 * - `NOT_FOUND` → `KekNotFoundError`;
 * - `RESOURCE_EXHAUSTED` after the retries → `KmsThrottledError`;
 * - `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`, `CANCELLED`, connection failures after the
 *   retries → `KmsUnavailableError`;
 * - `UNAUTHENTICATED`, and any failure to load or sign credentials → `KmsCredentialsError`;
 * - CRC32C mismatches (either way), an Encrypt answer naming another key, a wrapped DEK that
 *   Decrypt refuses as `INVALID_ARGUMENT` (wrong tenant or DEK context, another key's ciphertext,
 *   corrupted), or an unwrapped value that is not 32 bytes → `KmsIntegrityError` (the same class the
 *   local KEK uses for a wrapped key it cannot open; field-level `DecryptionFailedError` is for
 *   field ciphertexts);
 * - `UNKNOWN`, `ABORTED` → `KmsUnavailableError`; `UNIMPLEMENTED` → `ByokConfigError` (not a Cloud
 *   KMS endpoint); `DATA_LOSS` → `KmsIntegrityError`;
 * - an answer that is not gRPC from Cloud KMS (HTML from a proxy or wrong endpoint: gRPC reports
 *   "Received HTTP status code N"), by HTTP status and never as a revocation: 401 / 403 →
 *   `KmsCredentialsError`, 429 → `KmsThrottledError`, 3xx / 404 / 405 → `ByokConfigError`, anything
 *   else → `KmsUnavailableError`;
 * - an answer missing a field the method needs (Encrypt `name` of a version of this key,
 *   GetCryptoKey `purpose`, primary version `name` and `state`) → `KmsIntegrityError`;
 * - other `INVALID_ARGUMENT` → `ByokConfigError`; anything else → `ByokError`.
 *
 * Every message starts with `Cloud KMS <method> with <key name>`.
 */
export class GcpKmsKek implements Kek {
  readonly kind = 'gcp-kms' as const;
  /** The CryptoKey resource name. */
  readonly keyRef: string;
  /** The key's location (e.g. `europe-west1`, `global`). */
  readonly region: string;
  readonly #options: ResolvedOptions;
  readonly #injected: GcpKmsClientLike | undefined;
  #connection: Promise<Connection> | undefined;
  #closed = false;

  constructor(options: GcpKmsOptions) {
    this.#options = resolveOptions(options);
    this.keyRef = this.#options.keyName;
    this.region = this.#options.parts.location;
    if (options.client !== undefined) {
      const c = options.client as Partial<GcpKmsClientLike> | null;
      if (
        typeof c?.encrypt !== 'function' ||
        typeof c.decrypt !== 'function' ||
        typeof c.getCryptoKey !== 'function'
      ) {
        throw new ByokConfigError('gcpKms: client must have encrypt(), decrypt() and getCryptoKey() methods');
      }
      this.#injected = options.client;
    }
  }

  /** Wraps a 32-byte DEK with `Encrypt` on the CryptoKey (its primary version). */
  async wrap(dek: Uint8Array, context: WrapContext): Promise<Uint8Array> {
    return (await this.wrapIdentified(dek, context)).wrapped;
  }

  /**
   * `wrap`, also returning the CryptoKeyVersion that encrypted (the Encrypt answer's `name`: the
   * primary version at the moment of the call). Unwrapping still names the CryptoKey (Cloud KMS
   * finds the version in the ciphertext); the version is kept for status and health.
   */
  async wrapIdentified(dek: Uint8Array, context: WrapContext): Promise<WrapResult> {
    if (!(dek instanceof Uint8Array) || dek.length !== DEK_BYTES) {
      throw new ByokConfigError(`gcpKms.wrap: a data key must be ${DEK_BYTES} bytes`);
    }
    const aad = this.#aad(context);
    const request = {
      name: this.keyRef,
      plaintext: dek,
      additionalAuthenticatedData: aad,
      plaintextCrc32c: { value: gcpCrc32c(dek) },
      additionalAuthenticatedDataCrc32c: { value: gcpCrc32c(aad) },
    };
    return this.#call('Encrypt', context.tenantId, async (client, options) => {
      const [res] = await client.encrypt(request, options);
      const ciphertext = toBytes(res?.ciphertext);
      if (ciphertext === undefined || ciphertext.length === 0) throw new IntegrityFailure('no ciphertext');
      if (res.verifiedPlaintextCrc32c !== true) {
        throw new IntegrityFailure('the plaintext checksum was not verified by the KMS');
      }
      if (res.verifiedAdditionalAuthenticatedDataCrc32c !== true) {
        throw new IntegrityFailure('the additional authenticated data checksum was not verified by the KMS');
      }
      if (int64(res.ciphertextCrc32c) !== gcpCrc32c(ciphertext)) {
        throw new IntegrityFailure('the ciphertext does not match its checksum');
      }
      if (typeof res.name !== 'string' || !this.canName(res.name)) {
        throw new IntegrityFailure('the answer names no version of this key');
      }
      return { wrapped: Uint8Array.from(ciphertext), wrappedBy: res.name };
    });
  }

  /** Whether `versionName` is a CryptoKeyVersion of this KEK's CryptoKey. */
  canName(versionName: string): boolean {
    return isVersionOf(this.keyRef, versionName);
  }

  /**
   * Unwraps with `Decrypt` on the CryptoKey (the KMS finds the version in the ciphertext, and
   * Decrypt refuses a version name). `wrappedBy`, when recorded, must be a version of this key.
   */
  async unwrap(wrapped: Uint8Array, context: WrapContext, wrappedBy?: string): Promise<Uint8Array> {
    const aad = this.#aad(context);
    if (wrappedBy !== undefined && wrappedBy !== null && !this.canName(wrappedBy)) {
      throw new KmsIntegrityError(
        `gcpKms.unwrap: the data key is recorded as wrapped by ${String(wrappedBy)}, which is not a version of ${this.keyRef}`,
        { tenantId: context.tenantId },
      );
    }
    if (!(wrapped instanceof Uint8Array) || wrapped.length === 0 || wrapped.length > MAX_WRAPPED_BYTES) {
      throw new KmsIntegrityError(
        `gcpKms.unwrap: the wrapped data key for ${this.keyRef} is empty or too long`,
        {
          tenantId: context.tenantId,
        },
      );
    }
    const request = {
      name: this.keyRef,
      ciphertext: wrapped,
      additionalAuthenticatedData: aad,
      ciphertextCrc32c: { value: gcpCrc32c(wrapped) },
      additionalAuthenticatedDataCrc32c: { value: gcpCrc32c(aad) },
    };
    const plaintext = await this.#call('Decrypt', context.tenantId, async (client, options) => {
      const [res] = await client.decrypt(request, options);
      const out = toBytes(res?.plaintext);
      if (out === undefined) throw new IntegrityFailure('no plaintext');
      if (int64(res.plaintextCrc32c) !== gcpCrc32c(out)) {
        out.fill(0);
        throw new IntegrityFailure('the plaintext does not match its checksum');
      }
      return out;
    });
    if (plaintext.length !== DEK_BYTES) {
      plaintext.fill(0);
      throw new KmsIntegrityError(
        `Cloud KMS Decrypt with ${this.keyRef} returned something that is not a ${DEK_BYTES}-byte data key`,
        { tenantId: context.tenantId },
      );
    }
    const dek = Uint8Array.from(plaintext);
    plaintext.fill(0);
    return dek;
  }

  /** `GetCryptoKey`: purpose, algorithm, protection level, primary version state, rotation. */
  async describe(): Promise<KeyDescription> {
    const key = await this.#call('GetCryptoKey', undefined, async (client, options) => {
      const [res] = await client.getCryptoKey({ name: this.keyRef }, options);
      if (!res) throw new IntegrityFailure('no key metadata');
      if (unspecified(enumText(res.purpose, PURPOSE_NAMES))) throw new IntegrityFailure('no key purpose');
      if (
        enumText(res.purpose, PURPOSE_NAMES) === 'ENCRYPT_DECRYPT' &&
        res.primary !== null &&
        res.primary !== undefined &&
        (typeof res.primary.name !== 'string' ||
          !this.canName(res.primary.name) ||
          unspecified(enumText(res.primary.state, STATE_NAMES)))
      ) {
        throw new IntegrityFailure('a primary version without a name of this key or a state');
      }
      return res;
    });
    const purpose = enumText(key.purpose, PURPOSE_NAMES);
    const primaryState = enumText(key.primary?.state, STATE_NAMES);
    const encrypting = purpose === 'ENCRYPT_DECRYPT';
    const rotation = key.rotationPeriod?.seconds;
    const rotationSeconds =
      rotation === null || rotation === undefined
        ? null
        : Number(typeof rotation === 'object' ? rotation.toString() : rotation);
    return {
      state: encrypting ? mapVersionState(primaryState) : 'unknown',
      providerState: encrypting ? (primaryState ?? 'NO_PRIMARY_VERSION') : `PURPOSE_${purpose ?? 'UNKNOWN'}`,
      region: this.region,
      ...(typeof key.primary?.name === 'string' ? { currentKeyId: key.primary.name } : {}),
      details: {
        keyName: this.keyRef,
        purpose: purpose ?? null,
        algorithm:
          enumText(key.primary?.algorithm ?? key.versionTemplate?.algorithm, ALGORITHM_NAMES) ?? null,
        protectionLevel:
          enumText(
            key.primary?.protectionLevel ?? key.versionTemplate?.protectionLevel,
            PROTECTION_LEVEL_NAMES,
          ) ?? null,
        primaryVersion: key.primary?.name ?? null,
        primaryVersionState: primaryState ?? null,
        rotationPeriodSeconds: Number.isFinite(rotationSeconds) ? rotationSeconds : null,
        nextRotationTime: isoOf(key.nextRotationTime),
        createTime: isoOf(key.createTime),
        canWrap: encrypting && primaryState === 'ENABLED',
      },
    };
  }

  /**
   * Serializable configuration. `params`: `keyName`, `apiEndpoint`, `port`, `insecure`, `timeoutMs`,
   * `retries`, `retryDelayMs`, `credentialType` and `clientEmail`; `secret`: the service-account key
   * file (`serviceAccountKey`), if any.
   */
  toConfig(): KekConfig {
    const o = this.#options;
    return {
      kind: 'gcp-kms',
      params: {
        keyName: o.keyName,
        ...(o.apiEndpoint === undefined ? {} : { apiEndpoint: o.apiEndpoint }),
        ...(o.port === undefined ? {} : { port: o.port }),
        insecure: o.insecure,
        timeoutMs: o.timeoutMs,
        retries: o.retries,
        retryDelayMs: o.retryDelayMs,
        credentialType: o.credentials.type,
        ...(o.serviceAccount === undefined ? {} : { clientEmail: o.serviceAccount.clientEmail }),
      },
      ...(o.serviceAccount === undefined ? {} : { secret: { serviceAccountKey: o.serviceAccount.json } }),
    };
  }

  /** Closes the gRPC channel of a client the KEK created. Later calls fail with `ByokConfigError`. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const connection = this.#connection;
    this.#connection = undefined;
    if (connection === undefined) return;
    try {
      await (await connection).client.close?.();
    } catch {
      // Connection setup failed: nothing to close.
    }
  }

  /** Non-secret view, for `JSON.stringify`. */
  toJSON(): Record<string, unknown> {
    return {
      kind: this.kind,
      keyRef: this.keyRef,
      region: this.region,
      credentials: this.#describeCredentials(),
    };
  }

  [inspect.custom](): string {
    return `GcpKmsKek { keyRef: '${this.keyRef}', region: '${this.region}', credentials: '${this.#describeCredentials()}' }`;
  }

  #describeCredentials(): string {
    return describeGcpCredentials(this.#options.serviceAccount);
  }

  #aad(context: WrapContext): Uint8Array {
    checkContext(context, 'gcpKms');
    return gcpAdditionalAuthenticatedData(context);
  }

  #connect(): Promise<Connection> {
    if (this.#injected !== undefined) {
      return Promise.resolve({ client: this.#injected, authorization: undefined });
    }
    if (this.#connection === undefined) {
      const pending = createConnection(this.#options);
      this.#connection = pending;
      // A failed setup (e.g. a transient ADC lookup failure) is retried at the next call.
      pending.catch(() => {
        if (this.#connection === pending) this.#connection = undefined;
      });
    }
    return this.#connection;
  }

  async #call<T>(
    method: GcpMethod,
    tenantId: string | undefined,
    attempt: (client: GcpKmsClientLike, options: CallOptions) => Promise<T>,
  ): Promise<T> {
    if (this.#closed) throw new ByokConfigError(`gcpKms: the KEK for ${this.keyRef} is closed`);
    const o = this.#options;
    let last: unknown;
    let attempts = 0;
    for (let i = 0; i <= o.retries; i++) {
      if (i > 0) {
        await sleep(backoffDelayMs(i, o.retryDelayMs));
      }
      attempts++;
      try {
        const { client, authorization } = await this.#connect();
        const options: CallOptions = { timeout: o.timeoutMs, retry: null };
        if (authorization !== undefined)
          options.otherArgs = { headers: { authorization: await authorization() } };
        return await attempt(client, options);
      } catch (e) {
        last = e;
        if (!gcpRetryable(e)) break;
      }
    }
    throw mapGcpError(last, method, this.keyRef, tenantId, attempts, this.#describeCredentials());
  }
}

/** Creates a Cloud KMS KEK. Validates the options (throws `ByokConfigError`); makes no network call. */
export function gcpKms(options: GcpKmsOptions): GcpKmsKek {
  return new GcpKmsKek(options);
}
