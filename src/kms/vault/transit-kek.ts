/**
 * The Vault Transit KEK: `transit/encrypt` / `transit/decrypt` of the data key with
 * `associated_data` (and, for derived keys, `context`) binding the tenant and the DEK record.
 * The ciphertext `vault:v<N>:...` records the key version; the wrap is recorded as made by
 * `<keyRef>/versions/<N>`, and `rewrap` moves a wrap to the latest version inside Vault (the data
 * key never leaves Vault in the clear for it).
 */
import { inspect } from 'node:util';
import { ByokConfigError, KmsIntegrityError } from '../../errors.ts';
import { bindingBytes, checkContext } from '../binding.ts';
import type { Kek, KekConfig, KeyDescription, WrapContext, WrapResult } from '../kek.ts';
import { backoffDelayMs, sleep } from '../retry.ts';
import { describeVaultAuth, VaultTokenSource } from './auth.ts';
import { mapVaultError, type VaultOperation, VaultIntegrityFailure, vaultRetryable } from './errors.ts';
import { type VaultBody, VaultHttpError, vaultRequest } from './http.ts';
import {
  type ResolvedVaultOptions,
  resolveVaultOptions,
  type VaultTransitOptions,
  vaultConfigError,
  vaultKeyRef,
} from './options.ts';

const DEK_BYTES = 32;
const MAX_WRAPPED_BYTES = 4096;
const CIPHERTEXT_RE = /^vault:v([1-9]\d{0,9}):[A-Za-z0-9+/]+={0,2}$/;
/** Transit key types that take associated data (AEAD). */
const AEAD_TYPES = new Set(['aes256-gcm96', 'aes128-gcm96', 'chacha20-poly1305']);

const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64');

/**
 * Error mapping (every message starts with `Vault <operation> with <key ref>`):
 * 403 → `KeyAccessDeniedError` (policy removed, token revoked: revocation), 401 and refused logins →
 * `KmsCredentialsError`, "encryption key not found" / a 404 key read → `KekNotFoundError`, a version
 * below `min_decryption_version` → `KeyDisabledError`, a key type without associated data or a
 * derived mismatch → `KeyUsageError`, 429 → `KmsThrottledError`, 5xx / 412 / sealed / no answer →
 * `KmsUnavailableError`, a refused ciphertext (wrong binding, corrupted) or a malformed answer →
 * `KmsIntegrityError`, a wrong mount or namespace (404 route) → `ByokConfigError`.
 */
export class VaultTransitKek implements Kek {
  readonly kind = 'vault-transit' as const;
  /** `https://vault:8200/v1/<namespace>/<mount>/keys/<name>`. */
  readonly keyRef: string;
  readonly region: undefined = undefined;
  readonly #o: ResolvedVaultOptions;
  readonly #tokens: VaultTokenSource;
  #closed = false;

  constructor(options: VaultTransitOptions) {
    this.#o = resolveVaultOptions(options);
    this.keyRef = vaultKeyRef(this.#o);
    this.#tokens = new VaultTokenSource(this.#o);
  }

  /** Logins made so far (0 for token auth). */
  get logins(): number {
    return this.#tokens.logins;
  }

  async wrap(dek: Uint8Array, context: WrapContext): Promise<Uint8Array> {
    return (await this.wrapIdentified(dek, context)).wrapped;
  }

  /** `transit/encrypt` with the latest version (or `min_encryption_version`'s floor). */
  async wrapIdentified(dek: Uint8Array, context: WrapContext): Promise<WrapResult> {
    if (!(dek instanceof Uint8Array) || dek.length !== DEK_BYTES) {
      throw vaultConfigError(`wrap: a data key must be ${DEK_BYTES} bytes`);
    }
    checkContext(context, 'vaultTransit.wrap');
    const body = { plaintext: b64(dek), ...this.#binding(context) };
    const data = await this.#call('encrypt', context.tenantId, 'POST', `encrypt/${this.#o.keyName}`, body);
    return this.#wrapResult(data);
  }

  /** Whether `wrappedBy` names a version of this key (`<keyRef>/versions/<N>`). */
  canName(wrappedBy: string): boolean {
    return this.#versionOf(wrappedBy) !== undefined;
  }

  async unwrap(wrapped: Uint8Array, context: WrapContext, wrappedBy?: string): Promise<Uint8Array> {
    checkContext(context, 'vaultTransit.unwrap');
    const ciphertext = this.#ciphertext(wrapped, context, wrappedBy);
    const data = await this.#call('decrypt', context.tenantId, 'POST', `decrypt/${this.#o.keyName}`, {
      ciphertext,
      ...this.#binding(context),
    });
    const plaintext = typeof data.plaintext === 'string' ? Buffer.from(data.plaintext, 'base64') : undefined;
    if (plaintext === undefined || plaintext.length !== DEK_BYTES) {
      plaintext?.fill(0);
      throw new KmsIntegrityError(
        `Vault decrypt with ${this.keyRef} returned something that is not a ${DEK_BYTES}-byte data key`,
        { tenantId: context.tenantId },
      );
    }
    const dek = Uint8Array.from(plaintext);
    plaintext.fill(0);
    return dek;
  }

  /**
   * `transit/rewrap`: the same data key under the key's latest version, decrypted and encrypted
   * inside Vault. Used by `rewrapMovedKeys` after `transit/keys/<name>/rotate`, so the old version
   * can then be retired with `min_decryption_version`.
   */
  async rewrap(wrapped: Uint8Array, context: WrapContext, wrappedBy?: string): Promise<WrapResult> {
    checkContext(context, 'vaultTransit.rewrap');
    const ciphertext = this.#ciphertext(wrapped, context, wrappedBy);
    const data = await this.#call('rewrap', context.tenantId, 'POST', `rewrap/${this.#o.keyName}`, {
      ciphertext,
      ...this.#binding(context),
    });
    return this.#wrapResult(data);
  }

  /** `transit/keys/<name>`: type, versions, min decryption / encryption versions, derivation. */
  async describe(): Promise<KeyDescription> {
    const d = await this.#call('read key', undefined, 'GET', `keys/${this.#o.keyName}`);
    const type = typeof d.type === 'string' ? d.type : undefined;
    const latest = typeof d.latest_version === 'number' ? d.latest_version : undefined;
    if (type === undefined || latest === undefined || !Number.isInteger(latest) || latest < 1) {
      throw mapVaultError(
        new VaultIntegrityFailure('the key read has no type or latest_version'),
        'read key',
        this.keyRef,
        undefined,
        1,
        describeVaultAuth(this.#o.auth),
      );
    }
    const minDecryption = typeof d.min_decryption_version === 'number' ? d.min_decryption_version : 1;
    const minEncryption = typeof d.min_encryption_version === 'number' ? d.min_encryption_version : 0;
    const derived = d.derived === true;
    const aead = AEAD_TYPES.has(type);
    const encrypts = d.supports_encryption !== false && d.supports_decryption !== false;
    const problem = !aead
      ? `type ${type}: an AEAD key (aes256-gcm96) is needed for associated data`
      : !encrypts
        ? `type ${type} does not encrypt`
        : derived !== this.#o.derived
          ? `the key is ${derived ? '' : 'not '}derived: set derived: ${derived} on the KEK`
          : minEncryption > latest
            ? `min_encryption_version ${minEncryption} is above latest_version ${latest}`
            : undefined;
    return {
      state: 'enabled',
      providerState: problem ?? `type ${type}, latest version ${latest}`,
      currentKeyId: `${this.keyRef}/versions/${latest}`,
      details: {
        keyRef: this.keyRef,
        type,
        latestVersion: latest,
        minDecryptionVersion: minDecryption,
        minEncryptionVersion: minEncryption,
        minAvailableVersion: typeof d.min_available_version === 'number' ? d.min_available_version : null,
        derived,
        exportable: d.exportable === true,
        deletionAllowed: d.deletion_allowed === true,
        autoRotatePeriodSeconds: typeof d.auto_rotate_period === 'number' ? d.auto_rotate_period : null,
        namespace: this.#o.namespace ?? null,
        canWrap: problem === undefined,
      },
    };
  }

  /**
   * `params`: address, keyName, mount, namespace, authNamespace, derived, CA, TLS name, timeouts and
   * the auth's public fields (type, mount, role id / role, token file); `secret`: the token, the
   * AppRole secret id or a JWT given as text.
   */
  toConfig(): KekConfig {
    const o = this.#o;
    const a = o.auth;
    const authParams: Record<string, unknown> = { type: a.type };
    const secret: Record<string, unknown> = {};
    if (a.type === 'token') secret.token = a.token;
    if (a.type === 'approle') {
      authParams.roleId = a.roleId;
      secret.secretId = a.secretId;
    }
    if (a.type === 'kubernetes' || a.type === 'jwt') authParams.role = a.role;
    if ((a.type === 'kubernetes' || a.type === 'jwt') && a.jwtFile !== undefined)
      authParams.jwtFile = a.jwtFile;
    if (a.type === 'jwt' && a.jwt !== undefined) secret.jwt = a.jwt;
    if (a.type !== 'token' && a.mount !== undefined) authParams.mount = a.mount;
    return {
      kind: 'vault-transit',
      params: {
        address: o.address.origin,
        keyName: o.keyName,
        mount: o.mount,
        ...(o.namespace === undefined ? {} : { namespace: o.namespace }),
        ...(o.authNamespace === undefined ? {} : { authNamespace: o.authNamespace }),
        derived: o.derived,
        ...(o.caCertificate === undefined ? {} : { caCertificate: o.caCertificate }),
        ...(o.tlsServerName === undefined ? {} : { tlsServerName: o.tlsServerName }),
        timeoutMs: o.timeoutMs,
        retries: o.retries,
        retryDelayMs: o.retryDelayMs,
        auth: authParams,
      },
      ...(Object.keys(secret).length === 0 ? {} : { secret }),
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  toJSON(): Record<string, unknown> {
    return { kind: this.kind, keyRef: this.keyRef, auth: describeVaultAuth(this.#o.auth) };
  }

  [inspect.custom](): string {
    return `VaultTransitKek { keyRef: '${this.keyRef}', auth: '${describeVaultAuth(this.#o.auth)}' }`;
  }

  #binding(context: WrapContext): Record<string, string> {
    const aad = bindingBytes(context).toString('base64');
    return this.#o.derived ? { associated_data: aad, context: aad } : { associated_data: aad };
  }

  #versionOf(wrappedBy: string): number | undefined {
    if (typeof wrappedBy !== 'string') return undefined;
    const prefix = `${this.keyRef}/versions/`;
    if (!wrappedBy.startsWith(prefix)) return undefined;
    const v = wrappedBy.slice(prefix.length);
    return /^[1-9]\d{0,9}$/.test(v) ? Number(v) : undefined;
  }

  /** The stored wrap as Vault's ciphertext text, checked against the recorded version. */
  #ciphertext(wrapped: Uint8Array, context: WrapContext, wrappedBy: string | undefined): string {
    const text =
      wrapped instanceof Uint8Array && wrapped.length > 0 && wrapped.length <= MAX_WRAPPED_BYTES
        ? Buffer.from(wrapped).toString('utf8')
        : '';
    const m = CIPHERTEXT_RE.exec(text);
    if (m === null) {
      throw new KmsIntegrityError(
        `vaultTransit.unwrap: the wrapped data key for ${this.keyRef} is not a Vault ciphertext`,
        { tenantId: context.tenantId },
      );
    }
    if (wrappedBy !== undefined && wrappedBy !== null) {
      const v = this.#versionOf(wrappedBy);
      if (v === undefined || v !== Number(m[1])) {
        throw new KmsIntegrityError(
          `vaultTransit.unwrap: the data key is recorded as wrapped by ${String(wrappedBy)}, which is not the version of ${this.keyRef} its ciphertext names`,
          { tenantId: context.tenantId },
        );
      }
    }
    return text;
  }

  #wrapResult(data: Record<string, unknown>): WrapResult {
    const ct = data.ciphertext;
    const m = typeof ct === 'string' ? CIPHERTEXT_RE.exec(ct) : null;
    if (m === null || typeof ct !== 'string' || ct.length > MAX_WRAPPED_BYTES) {
      throw new KmsIntegrityError(`Vault encrypt with ${this.keyRef} returned no Vault ciphertext`);
    }
    if (data.key_version !== undefined && data.key_version !== Number(m[1])) {
      throw new KmsIntegrityError(
        `Vault encrypt with ${this.keyRef} answered key_version ${String(data.key_version)} for a v${m[1]} ciphertext`,
      );
    }
    return { wrapped: Buffer.from(ct, 'utf8'), wrappedBy: `${this.keyRef}/versions/${m[1]}` };
  }

  async #call(
    op: VaultOperation,
    tenantId: string | undefined,
    method: 'GET' | 'POST',
    sub: string,
    body?: Record<string, unknown>,
  ): Promise<Record<string, unknown>> {
    if (this.#closed) throw new ByokConfigError(`vaultTransit: the KEK for ${this.keyRef} is closed`);
    const o = this.#o;
    let last: unknown;
    let attempts = 0;
    let relogged = false;
    for (let i = 0; i <= o.retries; i++) {
      if (i > 0) {
        const ra = last instanceof VaultHttpError ? last.retryAfterMs : undefined;
        await sleep(ra ?? backoffDelayMs(i, o.retryDelayMs));
      }
      attempts++;
      let token: string | undefined;
      try {
        token = await this.#tokens.token();
        const res = await vaultRequest(o, {
          method,
          path: `${o.mount}/${sub}`,
          ...(body === undefined ? {} : { body }),
          token,
          ...(o.namespace === undefined ? {} : { namespace: o.namespace }),
        });
        return dataOf(res.body);
      } catch (e) {
        last = e;
        // A login token refused once: it may have been revoked or expired early; log in again.
        if (
          e instanceof VaultHttpError &&
          e.status === 403 &&
          !relogged &&
          this.#tokens.canLogin &&
          token !== undefined
        ) {
          relogged = true;
          this.#tokens.invalidate(token);
          i--;
          continue;
        }
        if (!vaultRetryable(e)) break;
      }
    }
    throw mapVaultError(last, op, this.keyRef, tenantId, attempts, describeVaultAuth(o.auth));
  }
}

function dataOf(body: VaultBody): Record<string, unknown> {
  const d = body.data;
  if (d === null || d === undefined || typeof d !== 'object') {
    throw new VaultIntegrityFailure('the answer has no data');
  }
  return d;
}

/** Creates a Vault Transit KEK. Validates the options (throws `ByokConfigError`); makes no network call. */
export function vaultTransit(options: VaultTransitOptions): VaultTransitKek {
  return new VaultTransitKek(options);
}
