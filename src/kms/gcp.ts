// One file: the drizzle-byok/gcp entry: options, wire helpers, error mapping, the KEK (docs/architecture.md).
/**
 * `drizzle-byok/gcp`: a tenant's Google Cloud KMS key as key-encryption key (KEK).
 *
 * ```ts
 * const kek = gcpKms({
 *   keyName: 'projects/acme-prod/locations/europe-west1/keyRings/byok/cryptoKeys/saas-dek',
 *   credentials: { type: 'service-account', key: process.env.ACME_SA_KEY_JSON! },
 * });
 * ```
 *
 * Wrapping is Cloud KMS `Encrypt` / `Decrypt` on the CryptoKey (Encrypt uses the primary version,
 * Decrypt finds the version in the ciphertext, so key rotation needs nothing from us), with
 * `additionalAuthenticatedData` binding the tenant and the DEK record (see
 * {@link gcpAdditionalAuthenticatedData}) and the CRC32C integrity fields checked both ways.
 *
 * The service account needs `roles/cloudkms.cryptoKeyEncrypterDecrypter` on the key, plus
 * `roles/cloudkms.viewer` for `describe()` (health checks).
 *
 * This module (and `drizzle-byok/testing`) is the only one that loads Google packages, and it loads
 * `@google-cloud/kms` and `google-gax` lazily, at the first call that needs the network.
 */
import { createPrivateKey } from 'node:crypto';
import { inspect } from 'node:util';
import type { CallOptions, ClientOptions } from 'google-gax';
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
} from '../errors.ts';
import { crc32c } from '../crypto/crc32c.ts';
import type { Kek, KekConfig, KekFactory, KeyDescription, WrapContext, WrapResult } from './kek.ts';

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/** The fields of a service-account key file the KEK uses (the file has more; they are kept). */
export interface GcpServiceAccountKeyJson {
  readonly type?: string;
  readonly client_email: string;
  /** PEM (PKCS#8), as in the key file. */
  readonly private_key: string;
  readonly private_key_id?: string;
  readonly project_id?: string;
  readonly [field: string]: unknown;
}

/** A service-account key (the JSON key file, as an object or as its text). */
export interface GcpServiceAccountCredentials {
  readonly type: 'service-account';
  readonly key: GcpServiceAccountKeyJson | string;
}

/**
 * Application default credentials: `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's ADC file, or the
 * attached service account on Google Cloud (GCE / GKE / Cloud Run metadata server).
 */
export interface GcpDefaultCredentials {
  readonly type: 'default';
}

export type GcpCredentials = GcpServiceAccountCredentials | GcpDefaultCredentials;

/** An `Int64Value` as the client returns it (number, decimal string, or a Long). */
export interface GcpInt64ValueLike {
  readonly value?: number | string | { toString(): string } | null;
}

export interface GcpEncryptResponseLike {
  readonly name?: string | null;
  readonly ciphertext?: Uint8Array | string | null;
  readonly ciphertextCrc32c?: GcpInt64ValueLike | null;
  readonly verifiedPlaintextCrc32c?: boolean | null;
  readonly verifiedAdditionalAuthenticatedDataCrc32c?: boolean | null;
}

export interface GcpDecryptResponseLike {
  readonly plaintext?: Uint8Array | string | null;
  readonly plaintextCrc32c?: GcpInt64ValueLike | null;
}

export interface GcpCryptoKeyLike {
  readonly name?: string | null;
  readonly purpose?: string | number | null;
  readonly primary?: {
    readonly name?: string | null;
    readonly state?: string | number | null;
    readonly algorithm?: string | number | null;
    readonly protectionLevel?: string | number | null;
  } | null;
  readonly versionTemplate?: {
    readonly algorithm?: string | number | null;
    readonly protectionLevel?: string | number | null;
  } | null;
  readonly rotationPeriod?: { readonly seconds?: number | string | { toString(): string } | null } | null;
  readonly nextRotationTime?: { readonly seconds?: number | string | { toString(): string } | null } | null;
  readonly createTime?: { readonly seconds?: number | string | { toString(): string } | null } | null;
}

/**
 * The subset of `KeyManagementServiceClient` the KEK uses; a real client (or a test double) can be
 * passed as {@link GcpKmsOptions.client}. Calls get `{ timeout, retry: null }` options (the KEK
 * retries by itself) and, on insecure channels, `otherArgs.headers.authorization`.
 */
export interface GcpKmsClientLike {
  encrypt(
    request: {
      name: string;
      plaintext: Uint8Array;
      additionalAuthenticatedData: Uint8Array;
      plaintextCrc32c: { value: number };
      additionalAuthenticatedDataCrc32c: { value: number };
    },
    options?: CallOptions,
  ): Promise<readonly [GcpEncryptResponseLike, ...unknown[]]>;
  decrypt(
    request: {
      name: string;
      ciphertext: Uint8Array;
      additionalAuthenticatedData: Uint8Array;
      ciphertextCrc32c: { value: number };
      additionalAuthenticatedDataCrc32c: { value: number };
    },
    options?: CallOptions,
  ): Promise<readonly [GcpDecryptResponseLike, ...unknown[]]>;
  getCryptoKey(
    request: { name: string },
    options?: CallOptions,
  ): Promise<readonly [GcpCryptoKeyLike, ...unknown[]]>;
  close?(): Promise<void>;
}

export interface GcpKmsOptions {
  /**
   * The CryptoKey: `projects/<project>/locations/<location>/keyRings/<keyRing>/cryptoKeys/<key>`.
   * Not a CryptoKeyVersion: Encrypt uses the primary version and Decrypt finds the version itself.
   */
  readonly keyName: string;
  /** Default `{ type: 'default' }` (application default credentials). */
  readonly credentials?: GcpCredentials;
  /** Host of the KMS endpoint, without scheme or port; default `cloudkms.googleapis.com`. */
  readonly apiEndpoint?: string;
  /** Default 443. */
  readonly port?: number;
  /**
   * Plaintext gRPC, for local test servers only: refused unless `apiEndpoint` is a loopback host.
   * gax attaches no credentials to insecure channels, so the KEK signs a token for each call itself
   * (a self-signed JWT whose audience is the local endpoint: useless against real Google APIs).
   */
  readonly insecure?: boolean;
  /** Deadline of each attempt in ms (gax `timeout`); default 3000. */
  readonly timeoutMs?: number;
  /**
   * Extra attempts after a retryable failure (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED,
   * INTERNAL, or a CRC32C mismatch), with exponential backoff and jitter; default 2. gax's own retries
   * are turned off. Worst case for one call: `(retries + 1) * timeoutMs` plus the backoff delays.
   */
  readonly retries?: number;
  /** First backoff delay in ms, doubled at each retry (capped at 2 s), with jitter; default 100. */
  readonly retryDelayMs?: number;
  /**
   * A prebuilt client; then `credentials`, `apiEndpoint`, `port` and `insecure` are only recorded by
   * `toConfig()` and no Google package is loaded. The KEK does not close a client it did not create.
   */
  readonly client?: GcpKmsClientLike;
}

/** The parts of a CryptoKey resource name. */
export interface GcpKeyNameParts {
  readonly projectId: string;
  readonly location: string;
  readonly keyRing: string;
  readonly cryptoKey: string;
}

const DEFAULT_TIMEOUT_MS = 3000;
const DEFAULT_RETRIES = 2;
const DEFAULT_RETRY_DELAY_MS = 100;
const MAX_RETRY_DELAY_MS = 2000;
const DEK_BYTES = 32;
const MAX_WRAPPED_BYTES = 64 * 1024;
const CLOUD_PLATFORM_SCOPE = 'https://www.googleapis.com/auth/cloud-platform';

// ---------------------------------------------------------------------------------------------
// CRC32C (Castagnoli)
// ---------------------------------------------------------------------------------------------

/** CRC32C (Castagnoli) of `data`, as Cloud KMS computes its `*_crc32c` fields. */
export function gcpCrc32c(data: Uint8Array): number {
  return crc32c(data);
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

const KEY_NAME_FORMAT = 'projects/<project>/locations/<location>/keyRings/<keyRing>/cryptoKeys/<cryptoKey>';
/** Project id (6-30 chars; optionally domain-scoped `example.com:my-project`) or project number. */
const PROJECT_RE = /^(?:(?:[a-z0-9-]+\.)+[a-z]{2,}:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[1-9]\d{0,18}$/;
const LOCATION_RE = /^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$/;
const RESOURCE_ID_RE = /^[a-zA-Z0-9_-]{1,63}$/;
const HOST_RE =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*$/;
const IPV6_RE = /^\[?[0-9a-fA-F:]+\]?$/;

function configError(message: string): ByokConfigError {
  return new ByokConfigError(message);
}

/**
 * Parses and validates a CryptoKey resource name; throws `ByokConfigError` naming the malformed part
 * (a segment keyword, the project, the location, the key ring or the key id), and refuses a
 * CryptoKeyVersion name.
 */
export function parseGcpKeyName(keyName: unknown): GcpKeyNameParts {
  if (typeof keyName !== 'string' || keyName.trim() === '') {
    throw configError(`gcpKms: keyName is required (${KEY_NAME_FORMAT})`);
  }
  const bad = (what: string) => configError(`gcpKms: invalid keyName "${keyName}": ${what}`);
  if (keyName !== keyName.trim()) throw bad('it has leading or trailing white space');
  const parts = keyName.split('/');
  if (parts.length >= 10 && parts[8] === 'cryptoKeyVersions') {
    throw bad(
      'it names a CryptoKeyVersion; give the CryptoKey name (drop "/cryptoKeyVersions/<n>"): Encrypt uses ' +
        'the primary version and Decrypt finds the version in the ciphertext, so key rotation keeps working',
    );
  }
  const keywords = ['projects', 'locations', 'keyRings', 'cryptoKeys'] as const;
  for (let i = 0; i < keywords.length; i++) {
    const at = parts[i * 2];
    if (at !== keywords[i]) {
      throw bad(
        at === undefined
          ? `it ends before the "${keywords[i]}" segment; expected ${KEY_NAME_FORMAT}`
          : `segment ${i * 2 + 1} must be "${keywords[i]}" (got "${at}"); expected ${KEY_NAME_FORMAT}`,
      );
    }
  }
  if (parts.length !== 8) {
    throw bad(`it has ${parts.length - 8} segment(s) after the key id; expected ${KEY_NAME_FORMAT}`);
  }
  const [, projectId, , location, , keyRing, , cryptoKey] = parts as [
    string,
    string,
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  if (!PROJECT_RE.test(projectId)) {
    throw bad(
      `project "${projectId}" is malformed: a project id is 6-30 lowercase letters, digits and hyphens, ` +
        'starting with a letter and not ending with a hyphen (or a project number)',
    );
  }
  if (location.length > 63 || !LOCATION_RE.test(location)) {
    throw bad(`location "${location}" is malformed (e.g. global, us, europe-west1)`);
  }
  if (!RESOURCE_ID_RE.test(keyRing)) {
    throw bad(`key ring id "${keyRing}" is malformed: 1-63 letters, digits, underscores and hyphens`);
  }
  if (!RESOURCE_ID_RE.test(cryptoKey)) {
    throw bad(`crypto key id "${cryptoKey}" is malformed: 1-63 letters, digits, underscores and hyphens`);
  }
  return { projectId, location, keyRing, cryptoKey };
}

interface ParsedServiceAccount {
  readonly json: GcpServiceAccountKeyJson;
  readonly clientEmail: string;
}

function parseServiceAccountKey(raw: unknown): ParsedServiceAccount {
  const what = 'gcpKms: credentials.key must be a service-account key file (object or JSON text)';
  let json: unknown = raw;
  if (typeof raw === 'string') {
    try {
      json = JSON.parse(raw);
    } catch {
      // The parser's message may quote the text: it is not passed on.
      throw configError(`${what}; the text is not valid JSON`);
    }
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw configError(`${what}; got ${json === null ? 'null' : typeof json}`);
  }
  const o = json as Record<string, unknown>;
  if (o.type !== undefined && o.type !== 'service_account') {
    throw configError(
      `${what}; its type is "${String(o.type)}", not "service_account" ` +
        '(use { type: "default" } for other application default credentials)',
    );
  }
  if (typeof o.client_email !== 'string' || !/^[^@\s]+@[^@\s]+$/.test(o.client_email)) {
    throw configError(`${what}; client_email is missing or malformed`);
  }
  if (typeof o.private_key !== 'string' || !o.private_key.includes('PRIVATE KEY-----')) {
    throw configError(`${what}; private_key is missing or not a PEM private key (${o.client_email})`);
  }
  try {
    createPrivateKey(o.private_key);
  } catch {
    throw configError(`${what}; private_key cannot be parsed as a PEM private key (${o.client_email})`);
  }
  if (o.private_key_id !== undefined && typeof o.private_key_id !== 'string') {
    throw configError(`${what}; private_key_id must be a string (${o.client_email})`);
  }
  return { json: Object.freeze({ ...o }) as GcpServiceAccountKeyJson, clientEmail: o.client_email };
}

function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || host === '[::1]' || /^127(?:\.\d{1,3}){3}$/.test(host);
}

interface ResolvedOptions {
  readonly keyName: string;
  readonly parts: GcpKeyNameParts;
  readonly credentials: GcpCredentials;
  readonly serviceAccount: ParsedServiceAccount | undefined;
  readonly apiEndpoint: string | undefined;
  readonly port: number | undefined;
  readonly insecure: boolean;
  readonly timeoutMs: number;
  readonly retries: number;
  readonly retryDelayMs: number;
}

function intOption(value: unknown, name: string, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw configError(`gcpKms: ${name} must be an integer from ${min} to ${max}`);
  }
  return value;
}

function resolveOptions(options: GcpKmsOptions): ResolvedOptions {
  if (typeof options !== 'object' || options === null) throw configError('gcpKms: options are required');
  const parts = parseGcpKeyName(options.keyName);
  const credentials = options.credentials ?? { type: 'default' };
  let serviceAccount: ParsedServiceAccount | undefined;
  if (credentials?.type === 'service-account') serviceAccount = parseServiceAccountKey(credentials.key);
  else if (credentials?.type !== 'default') {
    throw configError("gcpKms: credentials.type must be 'service-account' or 'default'");
  }
  const apiEndpoint = options.apiEndpoint;
  if (apiEndpoint !== undefined) {
    if (typeof apiEndpoint !== 'string' || !(HOST_RE.test(apiEndpoint) || IPV6_RE.test(apiEndpoint))) {
      throw configError(
        'gcpKms: apiEndpoint is a host name (e.g. cloudkms.googleapis.com or 127.0.0.1), without scheme ' +
          'or port; give the port in `port`',
      );
    }
  }
  const port = options.port === undefined ? undefined : intOption(options.port, 'port', 1, 65535, 443);
  const insecure = options.insecure === true;
  if (options.insecure !== undefined && typeof options.insecure !== 'boolean') {
    throw configError('gcpKms: insecure must be a boolean');
  }
  if (insecure && (apiEndpoint === undefined || !isLoopbackHost(apiEndpoint))) {
    throw configError(
      'gcpKms: insecure: true is only allowed with a loopback apiEndpoint (127.0.0.1, ::1, localhost): ' +
        'credentials would travel in clear text',
    );
  }
  if (insecure && port === undefined)
    throw configError('gcpKms: insecure: true needs the local server `port`');
  return {
    keyName: options.keyName,
    parts,
    credentials,
    serviceAccount,
    apiEndpoint,
    port,
    insecure,
    timeoutMs: intOption(options.timeoutMs, 'timeoutMs', 1, 600_000, DEFAULT_TIMEOUT_MS),
    retries: intOption(options.retries, 'retries', 0, 10, DEFAULT_RETRIES),
    retryDelayMs: intOption(options.retryDelayMs, 'retryDelayMs', 0, 60_000, DEFAULT_RETRY_DELAY_MS),
  };
}

// ---------------------------------------------------------------------------------------------
// Wire helpers
// ---------------------------------------------------------------------------------------------

/**
 * The `additionalAuthenticatedData` bound to a wrapped DEK: the UTF-8 bytes of
 * `drizzle-byok/v1 tenant=<n>:<tenantId> dek=<m>:<dekId>`, where `<n>` and `<m>` are the decimal
 * UTF-8 byte lengths of the ids (so no two contexts share an encoding). With it a wrapped DEK can be
 * unwrapped by hand, e.g. `gcloud kms decrypt --additional-authenticated-data-file`.
 */
export function gcpAdditionalAuthenticatedData(context: WrapContext): Uint8Array {
  const tenant = Buffer.from(context.tenantId, 'utf8');
  const dek = Buffer.from(context.dekId, 'utf8');
  return Buffer.concat([
    Buffer.from(`drizzle-byok/v1 tenant=${tenant.length}:`, 'utf8'),
    tenant,
    Buffer.from(` dek=${dek.length}:`, 'utf8'),
    dek,
  ]);
}

const toBytes = (v: Uint8Array | string | null | undefined): Uint8Array | undefined =>
  v instanceof Uint8Array ? v : typeof v === 'string' ? Buffer.from(v, 'base64') : undefined;

/** An Int64Value's number, or undefined when absent or not a safe integer. */
function int64(v: GcpInt64ValueLike | null | undefined): number | undefined {
  if (v === null || v === undefined) return undefined;
  const raw = v.value;
  if (raw === null || raw === undefined) return 0;
  const n = Number(typeof raw === 'object' ? raw.toString() : raw);
  return Number.isSafeInteger(n) ? n : undefined;
}

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
class IntegrityFailure extends Error {}

/** A failure to obtain a credential (ADC lookup, token signing). */
class CredentialFailure extends Error {
  constructor(cause: unknown) {
    super('credential failure', { cause });
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

type GcpMethod = 'Encrypt' | 'Decrypt' | 'GetCryptoKey';

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

/** Enum values by number, for clients that return numeric enums (REST `fallback` mode). */
const PURPOSE_NAMES: Record<number, string> = {
  1: 'ENCRYPT_DECRYPT',
  5: 'ASYMMETRIC_SIGN',
  6: 'ASYMMETRIC_DECRYPT',
  7: 'RAW_ENCRYPT_DECRYPT',
  9: 'MAC',
  10: 'KEY_ENCAPSULATION',
  11: 'AES_WRAPPING',
};
const STATE_NAMES: Record<number, string> = {
  1: 'ENABLED',
  2: 'DISABLED',
  3: 'DESTROYED',
  4: 'DESTROY_SCHEDULED',
  5: 'PENDING_GENERATION',
  6: 'PENDING_IMPORT',
  7: 'IMPORT_FAILED',
  8: 'GENERATION_FAILED',
  9: 'PENDING_EXTERNAL_DESTRUCTION',
  10: 'EXTERNAL_DESTRUCTION_FAILED',
};
const PROTECTION_LEVEL_NAMES: Record<number, string> = {
  1: 'SOFTWARE',
  2: 'HSM',
  3: 'EXTERNAL',
  4: 'EXTERNAL_VPC',
  5: 'HSM_SINGLE_TENANT',
};
const ALGORITHM_NAMES: Record<number, string> = {
  1: 'GOOGLE_SYMMETRIC_ENCRYPTION',
  18: 'EXTERNAL_SYMMETRIC_ENCRYPTION',
};

/** An enum field the answer did not set (absent, 0, or its `*_UNSPECIFIED` name). */
function unspecified(v: string | undefined): boolean {
  return v === undefined || v === '' || v === '0' || v.endsWith('_UNSPECIFIED');
}

function enumText(v: string | number | null | undefined, names: Record<number, string>): string | undefined {
  if (v === null || v === undefined) return undefined;
  return typeof v === 'number' ? (names[v] ?? String(v)) : v;
}

function isoOf(t: { readonly seconds?: number | string | { toString(): string } | null } | null | undefined) {
  if (!t || t.seconds === null || t.seconds === undefined) return null;
  const s = Number(typeof t.seconds === 'object' ? t.seconds.toString() : t.seconds);
  return Number.isFinite(s) ? new Date(s * 1000).toISOString() : null;
}

interface GoogleModules {
  readonly KeyManagementServiceClient: new (
    options: ClientOptions,
    gax: typeof import('google-gax'),
  ) => GcpKmsClientLike;
  readonly gax: typeof import('google-gax');
}

/** Loads the Google packages on first use (never at import time). */
async function loadGoogle(): Promise<GoogleModules> {
  const [kmsNs, gaxNs] = await Promise.all([import('@google-cloud/kms'), import('google-gax')]);
  // CommonJS packages: under Node's ESM loader `default` is `module.exports`.
  const kms = (kmsNs as unknown as { default?: typeof kmsNs }).default ?? kmsNs;
  const gax = (gaxNs as unknown as { default?: typeof gaxNs }).default ?? gaxNs;
  return {
    KeyManagementServiceClient:
      kms.KeyManagementServiceClient as unknown as GoogleModules['KeyManagementServiceClient'],
    gax,
  };
}

interface Connection {
  readonly client: GcpKmsClientLike;
  /** For insecure channels: the `authorization` value to send with each call. */
  readonly authorization: (() => Promise<string>) | undefined;
}

// ---------------------------------------------------------------------------------------------
// The KEK
// ---------------------------------------------------------------------------------------------

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
        throw configError('gcpKms: client must have encrypt(), decrypt() and getCryptoKey() methods');
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
      throw configError(`gcpKms.wrap: a data key must be ${DEK_BYTES} bytes`);
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
    return (
      typeof versionName === 'string' &&
      versionName.startsWith(`${this.keyRef}/cryptoKeyVersions/`) &&
      /^[1-9]\d{0,18}$/.test(versionName.slice(this.keyRef.length + '/cryptoKeyVersions/'.length))
    );
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
    const sa = this.#options.serviceAccount;
    return sa === undefined ? 'application default credentials' : `service account ${sa.clientEmail}`;
  }

  #aad(context: WrapContext): Uint8Array {
    if (typeof context?.tenantId !== 'string' || context.tenantId === '') {
      throw configError('gcpKms: context.tenantId must be a non-empty string');
    }
    if (typeof context.dekId !== 'string' || context.dekId === '') {
      throw configError('gcpKms: context.dekId must be a non-empty string');
    }
    return gcpAdditionalAuthenticatedData(context);
  }

  #connect(): Promise<Connection> {
    if (this.#injected !== undefined) {
      return Promise.resolve({ client: this.#injected, authorization: undefined });
    }
    if (this.#connection === undefined) {
      const pending = this.#createConnection();
      this.#connection = pending;
      // A failed setup (e.g. a transient ADC lookup failure) is retried at the next call.
      pending.catch(() => {
        if (this.#connection === pending) this.#connection = undefined;
      });
    }
    return this.#connection;
  }

  async #createConnection(): Promise<Connection> {
    const o = this.#options;
    const sa = o.serviceAccount;
    const { KeyManagementServiceClient, gax } = await loadGoogle();
    const { GoogleAuth, JWT } = gax.googleAuthLibrary;
    /** A google-auth-library JWT client that signs its tokens locally (never exchanges the key). */
    const serviceAccountJwt = (account: ParsedServiceAccount, scopes: string[] | undefined) => {
      const client = new JWT({
        email: account.clientEmail,
        key: account.json.private_key,
        ...(account.json.private_key_id === undefined ? {} : { keyId: account.json.private_key_id }),
        ...(scopes === undefined ? {} : { scopes }),
      });
      // With scopes, a self-signed JWT carrying them (what the KMS client asks for anyway); without,
      // a self-signed JWT whose audience is the URL given to getRequestHeaders().
      client.useJWTAccessWithScope = scopes !== undefined;
      return client;
    };
    const options: ClientOptions = {
      ...(o.apiEndpoint === undefined ? {} : { apiEndpoint: o.apiEndpoint }),
      ...(o.port === undefined ? {} : { port: o.port }),
      ...(sa === undefined ? {} : { authClient: serviceAccountJwt(sa, [CLOUD_PLATFORM_SCOPE]) }),
    };
    let authorization: (() => Promise<string>) | undefined;
    if (o.insecure && o.apiEndpoint !== undefined) {
      options.sslCreds = gax.grpc.credentials.createInsecure();
      // gax attaches no call credentials when sslCreds is given (and gRPC refuses them on insecure
      // channels), so each call carries a token signed here, whose audience is the local endpoint
      // and which has no scope: worthless against real Google APIs.
      const host =
        o.apiEndpoint.includes(':') && !o.apiEndpoint.startsWith('[') ? `[${o.apiEndpoint}]` : o.apiEndpoint;
      const audience = `http://${host}:${o.port}/`;
      const signer = sa === undefined ? new GoogleAuth() : serviceAccountJwt(sa, undefined);
      authorization = async () => {
        let value: string | null;
        try {
          value = (await signer.getRequestHeaders(audience)).get('authorization');
        } catch (e) {
          throw new CredentialFailure(e);
        }
        if (!value) throw new CredentialFailure(new Error('no authorization header was produced'));
        return value;
      };
    }
    return { client: new KeyManagementServiceClient(options, gax), authorization };
  }

  async #call<T>(
    method: GcpMethod,
    tenantId: string | undefined,
    attempt: (client: GcpKmsClientLike, options: CallOptions) => Promise<T>,
  ): Promise<T> {
    if (this.#closed) throw configError(`gcpKms: the KEK for ${this.keyRef} is closed`);
    const o = this.#options;
    let last: unknown;
    let attempts = 0;
    for (let i = 0; i <= o.retries; i++) {
      if (i > 0) {
        const base = Math.min(MAX_RETRY_DELAY_MS, o.retryDelayMs * 2 ** (i - 1));
        await sleep(base / 2 + Math.random() * (base / 2));
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
        if (!this.#retryable(e)) break;
      }
    }
    throw this.#mapError(last, method, tenantId, attempts);
  }

  #retryable(e: unknown): boolean {
    if (e instanceof IntegrityFailure) return true;
    const code = grpcCode(e);
    if (code === undefined) return false;
    return RETRYABLE_CODES.has(code) || (code === 3 && /checksum|crc32c/i.test(grpcDetails(e)));
  }

  #mapError(e: unknown, method: GcpMethod, tenantId: string | undefined, attempts: number): ByokError {
    if (e instanceof ByokError) return e;
    const opts = (cause: unknown) => ({
      cause: redactedCause(cause),
      ...(tenantId === undefined ? {} : { tenantId }),
    });
    const where = `Cloud KMS ${method} with ${this.keyRef}`;
    const tries = attempts > 1 ? ` after ${attempts} attempts` : '';
    if (e instanceof IntegrityFailure) {
      return new KmsIntegrityError(`${where} failed an integrity check${tries}: ${e.message}`, {
        ...(tenantId === undefined ? {} : { tenantId }),
      });
    }
    if (e instanceof CredentialFailure) {
      return new KmsCredentialsError(
        `${where}: could not obtain a credential (${this.#describeCredentials()})`,
        opts(e.cause),
      );
    }
    const code = grpcCode(e);
    const details = grpcDetails(e);
    if (code === undefined) {
      if (/credential|private key|PEM|getting metadata from plugin|could not load/i.test(details)) {
        return new KmsCredentialsError(
          `${where}: could not obtain a credential (${this.#describeCredentials()})`,
          opts(e),
        );
      }
      return new ByokError(`${where} failed: ${e instanceof Error ? e.name : 'error'}`, opts(e));
    }
    if (/getting metadata from plugin|could not load the default credentials/i.test(details)) {
      // On TLS channels gRPC reports a failed credential plugin (ADC lookup, signing) as a status.
      return new KmsCredentialsError(
        `${where}: could not obtain a credential (${this.#describeCredentials()})`,
        opts(e),
      );
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
          `${where} failed${tries}: ${what} (the request was refused before it reached Cloud KMS, or the credentials of ${this.#describeCredentials()} were rejected)`,
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
        return new KmsCredentialsError(
          `${fail} (the credentials of ${this.#describeCredentials()} were rejected)`,
          opts(e),
        );
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
}

/** Creates a Cloud KMS KEK. Validates the options (throws `ByokConfigError`); makes no network call. */
export function gcpKms(options: GcpKmsOptions): GcpKmsKek {
  return new GcpKmsKek(options);
}

// ---------------------------------------------------------------------------------------------
// Rebuild from configuration
// ---------------------------------------------------------------------------------------------

/** Rebuilds a Cloud KMS KEK from `toConfig()` output (`secret` included). */
export const gcpKekFactory: KekFactory = (config: KekConfig): GcpKmsKek => {
  if (config?.kind !== 'gcp-kms') {
    throw configError(`gcpKekFactory: expected a config of kind gcp-kms, got ${String(config?.kind)}`);
  }
  const p = (config.params ?? {}) as Record<string, unknown>;
  let credentials: GcpCredentials;
  if (p.credentialType === 'service-account') {
    const key = config.secret?.serviceAccountKey;
    if (key === undefined) {
      throw configError(
        `gcpKekFactory: the KEK ${String(p.keyName)} uses a service-account key, but the config has no secret part`,
      );
    }
    credentials = { type: 'service-account', key: key as GcpServiceAccountKeyJson | string };
  } else if (p.credentialType === 'default') {
    credentials = { type: 'default' };
  } else {
    throw configError(`gcpKekFactory: unknown credentialType ${String(p.credentialType)}`);
  }
  return new GcpKmsKek({
    keyName: p.keyName as string,
    credentials,
    ...(p.apiEndpoint === undefined ? {} : { apiEndpoint: p.apiEndpoint as string }),
    ...(p.port === undefined ? {} : { port: p.port as number }),
    ...(p.insecure === undefined ? {} : { insecure: p.insecure as boolean }),
    ...(p.timeoutMs === undefined ? {} : { timeoutMs: p.timeoutMs as number }),
    ...(p.retries === undefined ? {} : { retries: p.retries as number }),
    ...(p.retryDelayMs === undefined ? {} : { retryDelayMs: p.retryDelayMs as number }),
  });
};
