/** Cloud KMS client failures mapped to the typed errors every KEK uses, with credentials scrubbed. */
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

/** The Cloud KMS methods the KEK calls. */
export type GcpMethod = 'Encrypt' | 'Decrypt' | 'GetCryptoKey';

const GRPC_STATUS_NAMES: Record<number, string> = {
  0: 'OK',
  1: 'CANCELLED',
  2: 'UNKNOWN',
  3: 'INVALID_ARGUMENT',
  4: 'DEADLINE_EXCEEDED',
  5: 'NOT_FOUND',
  6: 'ALREADY_EXISTS',
  7: 'PERMISSION_DENIED',
  8: 'RESOURCE_EXHAUSTED',
  9: 'FAILED_PRECONDITION',
  10: 'ABORTED',
  11: 'OUT_OF_RANGE',
  12: 'UNIMPLEMENTED',
  13: 'INTERNAL',
  14: 'UNAVAILABLE',
  15: 'DATA_LOSS',
  16: 'UNAUTHENTICATED',
};
const RETRYABLE_CODES = new Set([4, 8, 13, 14]);

function grpcCode(e: unknown): number | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'number' && code in GRPC_STATUS_NAMES ? code : undefined;
}

function grpcDetails(e: unknown): string {
  const o = e as { details?: unknown; message?: unknown } | null;
  return typeof o?.details === 'string' ? o.details : typeof o?.message === 'string' ? o.message : '';
}

/** Removes anything that looks like a credential from a text taken from a client error. */
function scrub(text: string): string {
  return text
    .replace(
      /-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$)/g,
      '[redacted key]',
    )
    .replace(/\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*/g, '[redacted token]')
    .replace(/\bya29\.[A-Za-z0-9._-]+/g, '[redacted token]')
    .replace(/(bearer\s+)\S+/gi, '$1[redacted]');
}

/** A scrubbed copy of a client error: code and details only (no metadata, no stack of the original). */
function redactedCause(e: unknown): Error {
  const code = grpcCode(e);
  const text = scrub(grpcDetails(e) || String(e));
  const copy = new Error(code === undefined ? text : `${GRPC_STATUS_NAMES[code]}: ${text}`);
  copy.name = e instanceof Error ? e.name : 'Error';
  if (code !== undefined) (copy as Error & { code?: number }).code = code;
  return copy;
}

/** A response that failed an integrity check (retried, then `KmsIntegrityError`). */
export class IntegrityFailure extends Error {}

/** A failure to obtain a credential (ADC lookup, token signing). */
export class CredentialFailure extends Error {
  constructor(cause: unknown) {
    super('credential failure', { cause });
  }
}

/** Whether a failed attempt is worth another: a failed integrity check, or a transient gRPC status. */
export function gcpRetryable(e: unknown): boolean {
  if (e instanceof IntegrityFailure) return true;
  const code = grpcCode(e);
  if (code === undefined) return false;
  return RETRYABLE_CODES.has(code) || (code === 3 && /checksum|crc32c/i.test(grpcDetails(e)));
}

/**
 * Maps the last failure of a Cloud KMS call to a typed error; a `ByokError` passes through. Every
 * message starts with `Cloud KMS <method> with <key name>`; `credentials` describes them
 * (`describeGcpCredentials`).
 */
export function mapGcpError(
  e: unknown,
  method: GcpMethod,
  keyRef: string,
  tenantId: string | undefined,
  attempts: number,
  credentials: string,
): ByokError {
  if (e instanceof ByokError) return e;
  const opts = (cause: unknown) => ({
    cause: redactedCause(cause),
    ...(tenantId === undefined ? {} : { tenantId }),
  });
  const where = `Cloud KMS ${method} with ${keyRef}`;
  const tries = attempts > 1 ? ` after ${attempts} attempts` : '';
  if (e instanceof IntegrityFailure) {
    return new KmsIntegrityError(`${where} failed an integrity check${tries}: ${e.message}`, {
      ...(tenantId === undefined ? {} : { tenantId }),
    });
  }
  if (e instanceof CredentialFailure) {
    return new KmsCredentialsError(`${where}: could not obtain a credential (${credentials})`, opts(e.cause));
  }
  const code = grpcCode(e);
  const details = grpcDetails(e);
  if (code === undefined) {
    if (/credential|private key|PEM|getting metadata from plugin|could not load/i.test(details)) {
      return new KmsCredentialsError(`${where}: could not obtain a credential (${credentials})`, opts(e));
    }
    return new ByokError(`${where} failed: ${e instanceof Error ? e.name : 'error'}`, opts(e));
  }
  if (/getting metadata from plugin|could not load the default credentials/i.test(details)) {
    // On TLS channels gRPC reports a failed credential plugin (ADC lookup, signing) as a status.
    return new KmsCredentialsError(`${where}: could not obtain a credential (${credentials})`, opts(e));
  }
  const status = GRPC_STATUS_NAMES[code] ?? `status ${code}`;
  const fail = `${where} failed${tries}: ${status}`;
  const http = /Received HTTP status code (\d{3})/i.exec(details);
  if (http) {
    // Not a gRPC answer from Cloud KMS (a proxy, load balancer or wrong endpoint answered HTTP):
    // gRPC derived the status from the HTTP code; classify by that code, never as a revocation.
    const httpStatus = Number(http[1]);
    const what = `HTTP ${httpStatus} that is not a Cloud KMS answer`;
    if (httpStatus === 401 || httpStatus === 403) {
      return new KmsCredentialsError(
        `${where} failed${tries}: ${what} (the request was refused before it reached Cloud KMS, or the credentials of ${credentials} were rejected)`,
        opts(e),
      );
    }
    if (httpStatus === 429)
      return new KmsThrottledError(`${where} failed${tries}: throttled (${what})`, opts(e));
    if ((httpStatus >= 300 && httpStatus < 400) || httpStatus === 404 || httpStatus === 405) {
      return new ByokConfigError(
        `${where} failed${tries}: ${what}: check apiEndpoint / port point at Cloud KMS`,
        opts(e),
      );
    }
    return new KmsUnavailableError(`${where} failed${tries}: KMS unavailable (${what})`, opts(e));
  }
  switch (code) {
    case 2:
    case 10:
      return new KmsUnavailableError(`${fail} (an unexpected or aborted answer)`, opts(e));
    case 12:
      return new ByokConfigError(
        `${fail} (the endpoint does not implement this Cloud KMS method: check apiEndpoint / port)`,
        opts(e),
      );
    case 15:
      return new KmsIntegrityError(`${fail} (data loss reported by the KMS)`, opts(e));
    case 7:
      return new KeyAccessDeniedError(`${fail} (the credentials may not use this key)`, opts(e));
    case 5:
      return new KekNotFoundError(`${fail} (no such key, or no version in the ciphertext)`, opts(e));
    case 9:
      if (/purpose/i.test(details)) {
        return new KeyUsageError(
          `${fail} (the key cannot wrap data keys: a symmetric ENCRYPT_DECRYPT key is needed)`,
          opts(e),
        );
      }
      return new KeyDisabledError(
        `${fail} (the key version is disabled, scheduled for destruction or destroyed)`,
        opts(e),
      );
    case 8:
      return new KmsThrottledError(`${fail} (quota exceeded)`, opts(e));
    case 1:
    case 4:
    case 13:
    case 14:
      return new KmsUnavailableError(`${fail} (KMS unreachable or not answering)`, opts(e));
    case 16:
      return new KmsCredentialsError(`${fail} (the credentials of ${credentials} were rejected)`, opts(e));
    case 3:
      if (/checksum|crc32c/i.test(details)) {
        return new KmsIntegrityError(
          `${fail} (a request checksum did not match: corrupted in transit)`,
          opts(e),
        );
      }
      if (/purpose/i.test(details)) {
        return new KeyUsageError(`${fail} (the key cannot wrap data keys)`, opts(e));
      }
      if (method === 'Decrypt') {
        return new KmsIntegrityError(
          `${fail} (the wrapped data key was refused: wrong tenant or DEK context, another key, or corrupted)`,
          opts(e),
        );
      }
      return new ByokConfigError(`${fail} (request rejected as invalid)`, opts(e));
  }
  return new ByokError(fail, opts(e));
}
