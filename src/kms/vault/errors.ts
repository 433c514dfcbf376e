/**
 * Vault answers mapped to the typed errors every KEK uses. Messages start with
 * `Vault <operation> with <key ref>` and carry Vault's own error texts (which name paths, never
 * tokens); the cause is a scrubbed copy.
 */
import {
  ByokConfigError,
  ByokError,
  KekNotFoundError,
  KeyAccessDeniedError,
  KeyDisabledError,
  KeyUsageError,
  KmsCredentialsError,
  KmsIntegrityError,
  KmsThrottledError,
  KmsUnavailableError,
} from '../../errors.ts';
import { VaultCredentialFailure } from './auth.ts';
import { VaultAnswerError, VaultHttpError, VaultNetworkError } from './http.ts';

export type VaultOperation = 'encrypt' | 'decrypt' | 'rewrap' | 'read key';

/** A 2xx answer that fails a check of ours (no ciphertext, another key's version, wrong length). */
export class VaultIntegrityFailure extends Error {
  override name = 'VaultIntegrityFailure';
}

/** Node's codes for a TLS certificate the client does not trust (or that names another host). */
const TLS_TRUST = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_SIGNATURE_FAILURE',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** Whether the connection failed because Vault's certificate is not trusted: no retry helps. */
export function isTlsTrustFailure(e: unknown): boolean {
  return e instanceof VaultNetworkError && e.code !== undefined && TLS_TRUST.has(e.code);
}

/**
 * Retried: throttling, a performance standby not caught up, 5xx (sealed, standby), no answer.
 * Not an untrusted certificate.
 */
export function vaultRetryable(e: unknown): boolean {
  if (isTlsTrustFailure(e)) return false;
  if (e instanceof VaultNetworkError) return true;
  if (e instanceof VaultHttpError) return e.status === 429 || e.status === 412 || e.status >= 500;
  return false;
}

const TOKEN_RE = /\b(?:hvs|hvb|hvr|s|b|r)\.[A-Za-z0-9_-]{20,}/g;
const JWT_RE = /\beyJ[\w-]+\.[\w-]+\.[\w-]*/g;

function scrub(text: string): string {
  return text.replace(TOKEN_RE, '[redacted token]').replace(JWT_RE, '[redacted token]');
}

function redactedCause(e: unknown): Error {
  const copy = new Error(scrub(e instanceof Error ? e.message : String(e)));
  copy.name = e instanceof Error ? e.name : 'Error';
  if (e instanceof VaultHttpError) (copy as Error & { status?: number }).status = e.status;
  if (e instanceof VaultNetworkError && e.code !== undefined) {
    (copy as Error & { code?: string }).code = e.code;
  }
  return copy;
}

export function mapVaultError(
  e: unknown,
  op: VaultOperation,
  keyRef: string,
  tenantId: string | undefined,
  attempts: number,
  authText: string,
): ByokError {
  if (e instanceof ByokError) return e;
  const where = `Vault ${op} with ${keyRef}`;
  const tries = attempts > 1 ? ` after ${attempts} attempts` : '';
  const base = { ...(tenantId === undefined ? {} : { tenantId }) };
  const opts = { ...base, cause: redactedCause(e) };
  if (e instanceof VaultIntegrityFailure) {
    return new KmsIntegrityError(`${where} failed an integrity check${tries}: ${e.message}`, base);
  }
  if (e instanceof VaultCredentialFailure) {
    return new KmsCredentialsError(`${where}: could not obtain a Vault token: ${scrub(e.message)}`, opts);
  }
  if (isTlsTrustFailure(e)) {
    return new KmsUnavailableError(
      `${where} failed: Vault's TLS certificate is not trusted (${(e as VaultNetworkError).code}): pass the CA that issued it as caCertificate (and tlsServerName when the certificate names another host)`,
      opts,
    );
  }
  if (e instanceof VaultNetworkError) {
    return new KmsUnavailableError(
      `${where} failed${tries}: Vault unreachable or not answering (${e.code ?? 'network error'})`,
      opts,
    );
  }
  if (e instanceof VaultAnswerError) {
    return new KmsUnavailableError(`${where} failed${tries}: ${e.message} (is the address Vault's?)`, opts);
  }
  if (!(e instanceof VaultHttpError)) {
    return new ByokError(`${where} failed: ${e instanceof Error ? e.name : 'error'}`, opts);
  }
  const text = scrub(e.errors.join('; '));
  const fail = `${where} failed${tries}: HTTP ${e.status}${text === '' ? '' : ` (${text})`}`;
  if (e.notVault) {
    if (e.status === 429) return new KmsThrottledError(`${fail}: throttled before Vault`, opts);
    if (e.status >= 500) return new KmsUnavailableError(`${fail}: an answer that is not Vault's`, opts);
    return new ByokConfigError(
      `${fail}: an answer that is not Vault's (check address, mount and namespace)`,
      opts,
    );
  }
  const s = e.status;
  if (s === 429) return new KmsThrottledError(`${fail}: Vault rate limit quota exceeded`, opts);
  if (s === 503 && /sealed/i.test(text)) return new KmsUnavailableError(`${fail}: Vault is sealed`, opts);
  if (s >= 500 || s === 412) return new KmsUnavailableError(`${fail}: Vault unavailable`, opts);
  if (s === 403) {
    return new KeyAccessDeniedError(
      `${fail}: ${authText} may not use this key (its policy does not allow ${op}, or the token was revoked)`,
      opts,
    );
  }
  if (s === 401) return new KmsCredentialsError(`${fail}: ${authText} was rejected`, opts);
  if (/encryption key not found|key not found|no existing key named/i.test(text)) {
    return new KekNotFoundError(`${fail}: no such transit key`, opts);
  }
  if (s === 404) {
    if (op === 'read key' && text === '') return new KekNotFoundError(`${fail}: no such transit key`, opts);
    return new ByokConfigError(`${fail}: no such path (check the transit mount and the namespace)`, opts);
  }
  if (/disallowed by policy|too old|archived|min_decryption_version/i.test(text)) {
    return new KeyDisabledError(
      `${fail}: the key version that wrapped is below the key's min_decryption_version`,
      opts,
    );
  }
  if (/does not support|not supported|derived|context/i.test(text)) {
    return new KeyUsageError(
      `${fail}: the key cannot wrap data keys with associated data (an aes256-gcm96 key is needed; set derived to match the key)`,
      opts,
    );
  }
  if (s === 400 && (op === 'decrypt' || op === 'rewrap')) {
    return new KmsIntegrityError(
      `${fail}: the wrapped data key was refused (wrong tenant or DEK binding, another key, or corrupted)`,
      opts,
    );
  }
  if (s === 400) return new ByokConfigError(`${fail}: request rejected as invalid`, opts);
  return new ByokError(fail, opts);
}
