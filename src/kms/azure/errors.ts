/** Key Vault and Entra failures mapped to the typed errors every KEK uses. */
import {
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

/** The KEK's own calls, and the key management calls a tenant's administrator makes. */
export type AzureOperation = 'wrapKey' | 'unwrapKey' | 'getKey' | 'createKey' | 'rotateKey' | 'updateKey';

interface RestErrorLike {
  name?: string;
  statusCode?: number;
  code?: string;
  message?: string;
  /** The SDK deserializes the body's `innererror` as `innerError`. */
  details?: {
    error?: {
      code?: string;
      message?: string;
      innerError?: { code?: string };
      innererror?: { code?: string };
    };
  };
}

const NETWORK = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  'REQUEST_SEND_ERROR',
]);
const CREDENTIAL_ERRORS = new Set([
  'AuthenticationError',
  'CredentialUnavailableError',
  'AggregateAuthenticationError',
]);

function parts(e: unknown): { status?: number; code?: string; inner?: string; text: string; name: string } {
  const r = (e ?? {}) as RestErrorLike;
  const body = r.details?.error;
  return {
    ...(typeof r.statusCode === 'number' ? { status: r.statusCode } : {}),
    ...(typeof (body?.code ?? r.code) === 'string' ? { code: (body?.code ?? r.code) as string } : {}),
    ...(typeof (body?.innerError ?? body?.innererror)?.code === 'string'
      ? { inner: (body?.innerError ?? body?.innererror)!.code! }
      : {}),
    text: scrub(String(body?.message ?? r.message ?? '')).slice(0, 300),
    name: typeof r.name === 'string' ? r.name : 'Error',
  };
}

function scrub(s: string): string {
  return s
    .replace(/\beyJ[\w-]+\.[\w-]+\.[\w-]*/g, '[redacted token]')
    .replace(/(bearer\s+)\S+/gi, '$1[redacted]');
}

export function azureRetryable(e: unknown): boolean {
  const p = parts(e);
  if (CREDENTIAL_ERRORS.has(p.name)) return false;
  if (p.status !== undefined) return p.status === 429 || p.status >= 500;
  return p.code !== undefined && NETWORK.has(p.code);
}

export function mapAzureError(
  e: unknown,
  op: AzureOperation,
  keyRef: string,
  tenantId: string | undefined,
  attempts: number,
  credentialText: string,
): ByokError {
  if (e instanceof ByokError) return e;
  const p = parts(e);
  const cause = Object.assign(new Error(p.text), {
    name: p.name,
    ...(p.status === undefined ? {} : { statusCode: p.status }),
    ...(p.code === undefined ? {} : { code: p.code }),
  });
  const opts = { cause, ...(tenantId === undefined ? {} : { tenantId }) };
  const where = `Azure Key Vault ${op} with ${keyRef}`;
  const tries = attempts > 1 ? ` after ${attempts} attempts` : '';
  const fail = `${where} failed${tries}: ${p.status === undefined ? p.name : `HTTP ${p.status}`}${p.code ? ` ${p.code}` : ''}${p.text ? ` (${p.text})` : ''}`;
  if (CREDENTIAL_ERRORS.has(p.name)) {
    return new KmsCredentialsError(`${where}: could not obtain a token for ${credentialText}`, opts);
  }
  const text = `${p.code ?? ''} ${p.inner ?? ''} ${p.text}`;
  if (/AADSTS|invalid_client|invalid_grant|unauthorized_client/i.test(text)) {
    return new KmsCredentialsError(
      `${where}: Microsoft Entra refused ${credentialText}${p.text ? ` (${p.text})` : ''}`,
      opts,
    );
  }
  if (p.status === undefined && /\bexpired\b|not yet valid|\bdisabled\b/i.test(text)) {
    // The SDK checks a fetched key's attributes itself before a local (RSA) wrap.
    return new KeyDisabledError(
      `${fail}: the key (or its version) is disabled, expired or not yet valid`,
      opts,
    );
  }
  if (p.status === undefined) {
    if (p.code !== undefined && NETWORK.has(p.code)) {
      return new KmsUnavailableError(`${fail}: Key Vault unreachable or not answering`, opts);
    }
    return new ByokError(fail, opts);
  }
  if (p.status === 429) return new KmsThrottledError(`${fail}: throttled`, opts);
  if (p.status >= 500) return new KmsUnavailableError(`${fail}: Key Vault unavailable`, opts);
  if (p.status === 401)
    return new KmsCredentialsError(`${fail}: the token of ${credentialText} was rejected`, opts);
  if (/disabled|expired|not yet valid|notbefore/i.test(text)) {
    return new KeyDisabledError(
      `${fail}: the key (or its version) is disabled, expired or not yet valid`,
      opts,
    );
  }
  // Before the not-found test: a refused role assignment reads "Assignment: (not found)".
  if (p.status === 403 && !/KeyOperationForbidden|not permitted/i.test(text)) {
    return new KeyAccessDeniedError(
      `${fail}: ${credentialText} may not ${op} with this key (role assignment or access policy)`,
      opts,
    );
  }
  if (p.status === 404 || /KeyNotFound|not found/i.test(text)) {
    return new KekNotFoundError(`${fail}: no such key or key version`, opts);
  }
  if (op !== 'getKey' && /not permitted|operation.*not allowed|key_ops|unsupported|algorithm/i.test(text)) {
    return new KeyUsageError(`${fail}: the key cannot ${op} with this algorithm`, opts);
  }
  if (p.status === 400 && op === 'unwrapKey') {
    return new KmsIntegrityError(
      `${fail}: the wrapped data key was refused (another key, or corrupted)`,
      opts,
    );
  }
  return new ByokError(fail, opts);
}
