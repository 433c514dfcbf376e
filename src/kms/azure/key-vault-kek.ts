/**
 * The Azure Key Vault / Managed HSM KEK: `wrapKey` / `unwrapKey` (`CryptographyClient`) with
 * RSA-OAEP-256 (or A256KW on Managed HSM). Neither algorithm takes associated data, so the wrapped
 * payload is the data key followed by SHA-256 of the tenant / DEK binding, checked on unwrap: a
 * wrapped key copied to another tenant or DEK record does not unwrap. The key version that wrapped
 * (`kid` of the answer) is recorded and used for unwrap, so a rotation never strands data.
 * Steady state: one HTTP call per wrap and per unwrap (no key read before either).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { inspect } from 'node:util';
import type { TokenCredential } from '@azure/identity';
import { CryptographyClient, KeyClient, type KeyVaultKey } from '@azure/keyvault-keys';
import { ByokConfigError, KmsIntegrityError } from '../../errors.ts';
import { bindingBytes, checkContext } from '../binding.ts';
import type { Kek, KekConfig, KeyDescription, WrapContext, WrapResult } from '../kek.ts';
import { backoffDelayMs, sleep } from '../retry.ts';
import { azureCredential, describeAzureCredential, pipelineOptions } from './credential.ts';
import { azureRetryable, mapAzureError, type AzureOperation } from './errors.ts';
import {
  type AzureKeyVaultOptions,
  azureConfigError,
  type ResolvedAzureOptions,
  resolveAzureOptions,
} from './options.ts';

const DEK_BYTES = 32;
const PAYLOAD_BYTES = DEK_BYTES + 32;
const MAX_WRAPPED_BYTES = 1024;

function bindingDigest(context: WrapContext): Buffer {
  return createHash('sha256').update(bindingBytes(context)).digest();
}

/**
 * Error mapping (messages start with `Azure Key Vault <operation> with <key id>`): 401 and
 * credential failures → `KmsCredentialsError`; 403 `Forbidden` → `KeyAccessDeniedError` (role
 * assignment or access policy removed: revocation), 403 / 400 for a disabled or expired key or a
 * key not yet valid → `KeyDisabledError`; 404 `KeyNotFound` → `KekNotFoundError`; an operation the
 * key does not permit or a wrong key type → `KeyUsageError`; 429 → `KmsThrottledError`; 5xx and no
 * answer → `KmsUnavailableError`; a refused or mis-bound wrapped key → `KmsIntegrityError`.
 */
export class AzureKeyVaultKek implements Kek {
  readonly kind = 'azure-key-vault' as const;
  /** `https://<vault>.vault.azure.net/keys/<name>` (no version). */
  readonly keyRef: string;
  readonly region: undefined = undefined;
  readonly #o: ResolvedAzureOptions;
  #credential: TokenCredential | undefined;
  #keys: KeyClient | undefined;
  readonly #crypto = new Map<string, CryptographyClient>();
  #closed = false;

  constructor(options: AzureKeyVaultOptions) {
    this.#o = resolveAzureOptions(options);
    this.keyRef = this.#o.keyRef;
  }

  async wrap(dek: Uint8Array, context: WrapContext): Promise<Uint8Array> {
    return (await this.wrapIdentified(dek, context)).wrapped;
  }

  async wrapIdentified(dek: Uint8Array, context: WrapContext): Promise<WrapResult> {
    if (!(dek instanceof Uint8Array) || dek.length !== DEK_BYTES) {
      throw azureConfigError(`wrap: a data key must be ${DEK_BYTES} bytes`);
    }
    checkContext(context, 'azureKeyVault.wrap');
    const payload = Buffer.concat([dek, bindingDigest(context)]);
    try {
      // One remote-only client for the versionless key: the service wraps with the key's current
      // version and names it in the answer's `kid` (read from the raw answer: the SDK reports the
      // id it was built with). A rotation is followed at once; each wrap is one HTTP call.
      let kid: unknown;
      const r = await this.#call('wrapKey', context.tenantId, () => {
        kid = undefined;
        return this.#cryptoFor(this.keyRef).wrapKey(this.#o.algorithm, payload, {
          onResponse: (raw) => {
            kid = (raw.parsedBody as { kid?: unknown } | undefined)?.kid;
          },
        });
      });
      if (!(r.result instanceof Uint8Array) || r.result.length === 0 || r.result.length > MAX_WRAPPED_BYTES) {
        throw new KmsIntegrityError(`Azure Key Vault wrapKey with ${this.keyRef} returned no wrapped key`, {
          tenantId: context.tenantId,
        });
      }
      if (typeof kid !== 'string' || !this.canName(kid)) {
        throw new KmsIntegrityError(
          `Azure Key Vault wrapKey with ${this.keyRef} answered a key id that is not a version of this key`,
          { tenantId: context.tenantId },
        );
      }
      return { wrapped: Uint8Array.from(r.result), wrappedBy: kid };
    } finally {
      payload.fill(0);
    }
  }

  /** Whether `kid` is a version of this key (`<keyRef>/<32 hex digits>`). */
  canName(kid: string): boolean {
    return (
      typeof kid === 'string' &&
      kid.startsWith(`${this.keyRef}/`) &&
      /^[0-9a-f]{32}$/i.test(kid.slice(this.keyRef.length + 1))
    );
  }

  async unwrap(wrapped: Uint8Array, context: WrapContext, wrappedBy?: string): Promise<Uint8Array> {
    checkContext(context, 'azureKeyVault.unwrap');
    if (wrappedBy !== undefined && wrappedBy !== null && !this.canName(wrappedBy)) {
      throw new KmsIntegrityError(
        `azureKeyVault.unwrap: the data key is recorded as wrapped by ${String(wrappedBy)}, which is not a version of ${this.keyRef}`,
        { tenantId: context.tenantId },
      );
    }
    if (!(wrapped instanceof Uint8Array) || wrapped.length === 0 || wrapped.length > MAX_WRAPPED_BYTES) {
      throw new KmsIntegrityError(
        `azureKeyVault.unwrap: the wrapped data key for ${this.keyRef} is empty or too long`,
        {
          tenantId: context.tenantId,
        },
      );
    }
    // Without a recorded version the current one is tried (wraps made before identity was kept).
    const target = wrappedBy ?? this.keyRef;
    const r = await this.#call('unwrapKey', context.tenantId, () =>
      this.#cryptoFor(target).unwrapKey(this.#o.algorithm, wrapped),
    );
    const out = r.result instanceof Uint8Array ? Buffer.from(r.result) : undefined;
    const digest = bindingDigest(context);
    const ok =
      out !== undefined && out.length === PAYLOAD_BYTES && timingSafeEqual(out.subarray(DEK_BYTES), digest);
    if (!ok) {
      out?.fill(0);
      throw new KmsIntegrityError(
        `Azure Key Vault unwrapKey with ${this.keyRef}: the wrapped data key is not bound to this tenant and data key record`,
        { tenantId: context.tenantId },
      );
    }
    const dek = Uint8Array.from(out.subarray(0, DEK_BYTES));
    out.fill(0);
    return dek;
  }

  /** `GET /keys/<name>`: enabled, not before / expires, permitted operations, type, current version. */
  async describe(): Promise<KeyDescription> {
    const key = await this.#call('getKey', undefined, () => this.#keyClient().getKey(this.#o.keyName));
    return this.#description(key);
  }

  #description(key: KeyVaultKey): KeyDescription {
    const p = key.properties;
    const now = Date.now();
    const expired = p.expiresOn !== undefined && p.expiresOn.getTime() <= now;
    const early = p.notBefore !== undefined && p.notBefore.getTime() > now;
    const ops = key.keyOperations ?? [];
    const kty = key.keyType ?? 'unknown';
    const rsa = /^RSA/i.test(kty);
    const oct = /^oct/i.test(kty);
    const typeOk = this.#o.algorithm === 'A256KW' ? oct : rsa;
    const opsOk = ops.includes('wrapKey') && ops.includes('unwrapKey');
    const state: KeyDescription['state'] = p.enabled === false || expired || early ? 'disabled' : 'enabled';
    const providerState =
      p.enabled === false
        ? 'Disabled'
        : expired
          ? `Expired (${p.expiresOn!.toISOString()})`
          : early
            ? `NotYetValid (until ${p.notBefore!.toISOString()})`
            : !typeOk
              ? `key type ${kty}: ${this.#o.algorithm === 'A256KW' ? 'an oct-HSM key' : 'an RSA key'} is needed for ${this.#o.algorithm}`
              : !opsOk
                ? `permitted operations ${ops.join(', ') || 'none'}: wrapKey and unwrapKey are needed`
                : 'Enabled';
    return {
      state,
      providerState,
      ...(typeof key.id === 'string' ? { currentKeyId: key.id } : {}),
      details: {
        keyRef: this.keyRef,
        keyType: null,
        azureKeyType: kty,
        algorithm: this.#o.algorithm,
        currentVersion: p.version ?? null,
        keyOperations: ops.join(','),
        expiresOn: p.expiresOn?.toISOString() ?? null,
        notBefore: p.notBefore?.toISOString() ?? null,
        managedHsm: this.#o.managedHsm,
        canWrap: state === 'enabled' && typeOk && opsOk,
      },
    };
  }

  /**
   * `params`: keyId, algorithm, authorityHost, CA, timeouts, the credential's public fields
   * (type, tenant id, client id, token file); `secret`: the client secret or certificate PEM.
   */
  toConfig(): KekConfig {
    const o = this.#o;
    const c = o.credential;
    const credential: Record<string, unknown> = { type: c.type };
    const secret: Record<string, unknown> = {};
    if ('tenantId' in c) credential.tenantId = c.tenantId;
    if ('clientId' in c && c.clientId !== undefined) credential.clientId = c.clientId;
    if (c.type === 'workload-identity') credential.tokenFilePath = c.tokenFilePath;
    if (c.type === 'client-secret') secret.clientSecret = c.clientSecret;
    if (c.type === 'client-certificate') secret.certificatePem = c.certificatePem;
    return {
      kind: 'azure-key-vault',
      params: {
        keyId: o.keyRef,
        algorithm: o.algorithm,
        ...(o.authorityHost === undefined ? {} : { authorityHost: o.authorityHost }),
        ...(o.caCertificate === undefined ? {} : { caCertificate: o.caCertificate }),
        timeoutMs: o.timeoutMs,
        retries: o.retries,
        credential,
      },
      ...(Object.keys(secret).length === 0 ? {} : { secret }),
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#crypto.clear();
    this.#keys = undefined;
  }

  toJSON(): Record<string, unknown> {
    return { kind: this.kind, keyRef: this.keyRef, credential: describeAzureCredential(this.#o.credential) };
  }

  [inspect.custom](): string {
    return `AzureKeyVaultKek { keyRef: '${this.keyRef}', credential: '${describeAzureCredential(this.#o.credential)}' }`;
  }

  #cred(): TokenCredential {
    this.#credential ??= azureCredential(this.#o);
    return this.#credential;
  }

  #clientOptions(): Record<string, unknown> {
    return {
      ...pipelineOptions(this.#o),
      ...(this.#o.local ? { disableChallengeResourceVerification: true } : {}),
    };
  }

  #keyClient(): KeyClient {
    this.#keys ??= new KeyClient(this.#o.vaultUrl, this.#cred(), this.#clientOptions());
    return this.#keys;
  }

  /**
   * A remote-only client for the key (versionless: the current version) or one version of it.
   * Built from a key description rather than an id, so the SDK neither reads the key first (one
   * GET per client) nor wraps locally with a version it read earlier; Key Vault checks the key's
   * state and permitted operations on each call.
   */
  #cryptoFor(id: string): CryptographyClient {
    let c = this.#crypto.get(id);
    if (c === undefined) {
      const version = id === this.keyRef ? undefined : id.slice(this.keyRef.length + 1);
      const name = this.#o.keyName;
      const key: KeyVaultKey = {
        id,
        name,
        properties: { id, name, vaultUrl: this.#o.vaultUrl, ...(version === undefined ? {} : { version }) },
      };
      c = new CryptographyClient(key, this.#cred(), this.#clientOptions());
      if (this.#crypto.size > 64) this.#crypto.clear();
      this.#crypto.set(id, c);
    }
    return c;
  }

  async #call<T>(op: AzureOperation, tenantId: string | undefined, attempt: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new ByokConfigError(`azureKeyVault: the KEK for ${this.keyRef} is closed`);
    let last: unknown;
    let attempts = 0;
    for (let i = 0; i <= this.#o.retries; i++) {
      if (i > 0) {
        await sleep(backoffDelayMs(i, 100));
      }
      attempts++;
      try {
        return await withTimeout(attempt(), this.#o.timeoutMs);
      } catch (e) {
        last = e;
        if (!azureRetryable(e)) break;
      }
    }
    throw mapAzureError(
      last,
      op,
      this.keyRef,
      tenantId,
      attempts,
      describeAzureCredential(this.#o.credential),
    );
  }
}

class AttemptTimeout extends Error {
  override name = 'AttemptTimeout';
  readonly code = 'ETIMEDOUT';
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new AttemptTimeout(`no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Creates an Azure Key Vault KEK. Validates the options (throws `ByokConfigError`); makes no network call. */
export function azureKeyVault(options: AzureKeyVaultOptions): AzureKeyVaultKek {
  return new AzureKeyVaultKek(options);
}
