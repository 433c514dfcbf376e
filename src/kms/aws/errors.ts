/** AWS SDK failures mapped to the typed errors every KEK uses, with secrets scrubbed from the cause. */
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

/** The KMS calls the KEK makes. */
export type AwsOperation = 'Encrypt' | 'Decrypt' | 'DescribeKey';

/** Marks a failure to obtain credentials (STS, token file, default chain), as opposed to a KMS answer. */
export class CredentialResolutionError extends Error {
  constructor(cause: unknown) {
    super('AWS credentials could not be obtained', { cause });
    this.name = 'CredentialResolutionError';
  }
}

const CREDENTIAL_ERRORS = new Set([
  'UnrecognizedClientException',
  'InvalidSignatureException',
  'IncompleteSignatureException',
  'MissingAuthenticationTokenException',
  'ExpiredTokenException',
  'ExpiredToken',
  'InvalidClientTokenId',
  'SignatureDoesNotMatch',
  'AuthFailure',
  'CredentialsProviderError',
]);
/** SDK error names for an answer it could not read as a KMS error (non-JSON body, no error name). */
const NOT_KMS_ANSWERS = new Set(['SyntaxError', 'Unknown', 'UnknownError', 'TypeError']);
const THROTTLING_ERRORS = new Set([
  'ThrottlingException',
  'Throttling',
  'TooManyRequestsException',
  'RequestLimitExceeded',
  'RequestThrottled',
  'RequestThrottledException',
  'SlowDown',
]);
const UNAVAILABLE_ERRORS = new Set([
  'KMSInternalException',
  'DependencyTimeoutException',
  'KeyUnavailableException',
  'ServiceUnavailableException',
  'ServiceUnavailable',
  'InternalFailure',
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeoutException',
]);
const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

interface ErrorShape {
  name?: unknown;
  message?: unknown;
  code?: unknown;
  stack?: unknown;
  cause?: unknown;
  $fault?: unknown;
  $metadata?: {
    httpStatusCode?: unknown;
    requestId?: unknown;
    attempts?: unknown;
    totalRetryDelay?: unknown;
  };
}

const JWT_RE = /eyJ[\w-]+\.[\w-]+\.[\w-]*/g;

/** Removes secrets from an error message: known secret values, JWTs, echoed canonical requests. */
function scrub(text: string, secrets: readonly string[]): string {
  let out = text;
  const cut = out.indexOf('The Canonical String for this request');
  if (cut >= 0) out = out.slice(0, cut).trimEnd();
  for (const s of secrets) if (s.length >= 8) out = out.split(s).join('[REDACTED]');
  out = out.replace(JWT_RE, '[REDACTED-JWT]');
  return out.length > 1000 ? `${out.slice(0, 1000)}...` : out;
}

/**
 * A copy of an SDK error that keeps what helps diagnosis (name, scrubbed message, code, `$fault`,
 * `$metadata`: status, request id, attempts) and drops the rest (raw responses, config).
 */
function redactedCause(e: unknown, secrets: readonly string[], depth = 0): Error {
  const src = (typeof e === 'object' && e !== null ? e : { message: String(e) }) as ErrorShape;
  const out = new Error(
    scrub(typeof src.message === 'string' ? src.message : String(src.message ?? ''), secrets),
  );
  out.name = typeof src.name === 'string' ? src.name : 'Error';
  const extra = out as unknown as Record<string, unknown>;
  if (typeof src.code === 'string') extra.code = src.code;
  if (typeof src.$fault === 'string') extra.$fault = src.$fault;
  if (src.$metadata !== undefined && typeof src.$metadata === 'object') {
    const m = src.$metadata;
    extra.$metadata = {
      httpStatusCode: m.httpStatusCode,
      requestId: m.requestId,
      attempts: m.attempts,
      totalRetryDelay: m.totalRetryDelay,
    };
  }
  if (typeof src.stack === 'string') {
    const frames = src.stack.split('\n').filter((l) => l.startsWith('    at '));
    out.stack = [`${out.name}: ${out.message}`, ...frames].join('\n');
  }
  if (src.cause !== undefined && depth < 4) out.cause = redactedCause(src.cause, secrets, depth + 1);
  return out;
}

function errorName(e: unknown): string {
  const name = (e as ErrorShape | undefined)?.name;
  return typeof name === 'string' ? name : 'Error';
}

function errorCode(e: unknown): string | undefined {
  const code = (e as ErrorShape | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** `name`, plus the Node error code when there is one (`TimeoutError ETIMEDOUT`, `Error ENOENT`). */
function errorLabel(e: unknown): string {
  const name = errorName(e);
  const code = errorCode(e);
  return code === undefined || code === name ? name : `${name} ${code}`;
}

function httpStatus(e: unknown): number | undefined {
  const s = (e as ErrorShape | undefined)?.$metadata?.httpStatusCode;
  return typeof s === 'number' ? s : undefined;
}

/** The KEK a failure is mapped for: what its messages name, and the secrets its causes must not hold. */
export interface AwsErrorSubject {
  readonly keyRef: string;
  /** The auth mode's label (`describeAuth`). */
  readonly auth: string;
  readonly endpoint: string | undefined;
  /** The static secret values of the auth chain, cut from causes. */
  readonly secrets: readonly string[];
}

/**
 * Maps a failure of a KMS call (or of obtaining credentials for it) to a typed error; a `ByokError`
 * passes through. Every message starts with `AWS KMS <operation> with <key ARN>`.
 */
export function mapAwsError(
  e: unknown,
  operation: AwsOperation,
  tenantId: string | undefined,
  kek: AwsErrorSubject,
): ByokError {
  if (e instanceof ByokError) return e;
  const opts = (cause: unknown) => ({
    cause: redactedCause(cause, kek.secrets),
    ...(tenantId === undefined ? {} : { tenantId }),
  });
  const where = `AWS KMS ${operation} with ${kek.keyRef}`;
  if (e instanceof CredentialResolutionError) {
    const inner = e.cause;
    return new KmsCredentialsError(
      `${where}: could not obtain credentials (${kek.auth}): ${errorLabel(inner)}`,
      opts(inner),
    );
  }
  const name = errorName(e);
  const code = errorCode(e);
  const status = httpStatus(e);
  const label = errorLabel(e);
  const fail = `${where} failed`;
  if (status !== undefined && NOT_KMS_ANSWERS.has(name)) {
    // The body is not a KMS answer (HTML from a proxy, a load balancer or a wrong endpoint, or
    // JSON without an error name): classify by HTTP status alone.
    const what = `HTTP ${status} with a body that is not an AWS KMS answer`;
    if (status >= 200 && status < 300) {
      return new KmsIntegrityError(`${fail}: ${what}`, opts(e));
    }
    if (status === 401 || status === 403) {
      return new KmsCredentialsError(
        `${fail}: ${what} (the request was refused before it reached KMS, or the credentials (${kek.auth}) were rejected)`,
        opts(e),
      );
    }
    if (status === 429) return new KmsThrottledError(`${fail}: throttled (${what})`, opts(e));
    if ((status >= 300 && status < 400) || status === 404 || status === 405) {
      return new ByokConfigError(
        `${fail}: ${what}: check the endpoint option (${kek.endpoint ?? 'the SDK default endpoint'}) points at AWS KMS`,
        opts(e),
      );
    }
    return new KmsUnavailableError(`${fail}: KMS unavailable (${what})`, opts(e));
  }
  if (name === 'AccessDeniedException')
    return new KeyAccessDeniedError(`${fail}: access denied (${name})`, opts(e));
  if (name === 'DisabledException')
    return new KeyDisabledError(`${fail}: the key is disabled (${name})`, opts(e));
  if (name === 'KMSInvalidStateException') {
    return new KeyDisabledError(`${fail}: the key is not usable in its current state (${name})`, opts(e));
  }
  if (name === 'NotFoundException') return new KekNotFoundError(`${fail}: no such key (${name})`, opts(e));
  if (name === 'InvalidKeyUsageException' || name === 'UnsupportedOperationException') {
    return new KeyUsageError(
      `${fail}: the key cannot wrap data keys; a symmetric ENCRYPT_DECRYPT key is needed (${name})`,
      opts(e),
    );
  }
  if (name === 'InvalidCiphertextException') {
    return new KmsIntegrityError(
      `${fail}: the wrapped data key was refused (wrong tenant or DEK context, or corrupted) (${name})`,
      opts(e),
    );
  }
  if (name === 'IncorrectKeyException') {
    return new KmsIntegrityError(
      `${fail}: the wrapped data key was wrapped under another key (${name})`,
      opts(e),
    );
  }
  if (CREDENTIAL_ERRORS.has(name) || status === 401 || status === 403) {
    return new KmsCredentialsError(`${fail}: the credentials (${kek.auth}) were rejected (${name})`, opts(e));
  }
  if (THROTTLING_ERRORS.has(name) || status === 429) {
    return new KmsThrottledError(`${fail}: throttled after retries (${name})`, opts(e));
  }
  if (
    UNAVAILABLE_ERRORS.has(name) ||
    (code !== undefined && NETWORK_CODES.has(code)) ||
    (status !== undefined && status >= 500)
  ) {
    return new KmsUnavailableError(`${fail}: KMS unavailable after retries (${label})`, opts(e));
  }
  if (name === 'ValidationException' || name === 'InvalidArnException') {
    return new ByokConfigError(`${fail}: request rejected as invalid (${name})`, opts(e));
  }
  if (status === undefined) {
    // No HTTP answer at all: a transport failure the SDK did not classify.
    return new KmsUnavailableError(`${fail}: ${label}`, opts(e));
  }
  return new ByokError(`${fail}: ${name}`, opts(e));
}
