/** The options of `gcpKms`: the client shape, endpoint and retry settings, and their validation. */
import type { CallOptions } from 'google-gax';
import { ByokConfigError } from '../../errors.ts';
import { isLoopbackHost } from '../loopback.ts';
import { type GcpCredentials, type ParsedServiceAccount, parseServiceAccountKey } from './credentials.ts';
import { type GcpKeyNameParts, parseGcpKeyName } from './resource-names.ts';

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

const DEFAULT_TIMEOUT_MS = 3000;
const DEFAULT_RETRIES = 2;
const DEFAULT_RETRY_DELAY_MS = 100;
const HOST_RE =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*$/;
const IPV6_RE = /^\[?[0-9a-fA-F:]+\]?$/;

/** The validated options, defaults applied. */
export interface ResolvedOptions {
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
    throw new ByokConfigError(`gcpKms: ${name} must be an integer from ${min} to ${max}`);
  }
  return value;
}

/** Validates `gcpKms` options (throws `ByokConfigError` naming the option). */
export function resolveOptions(options: GcpKmsOptions): ResolvedOptions {
  if (typeof options !== 'object' || options === null)
    throw new ByokConfigError('gcpKms: options are required');
  const parts = parseGcpKeyName(options.keyName);
  const credentials = options.credentials ?? { type: 'default' };
  let serviceAccount: ParsedServiceAccount | undefined;
  if (credentials?.type === 'service-account') serviceAccount = parseServiceAccountKey(credentials.key);
  else if (credentials?.type !== 'default') {
    throw new ByokConfigError("gcpKms: credentials.type must be 'service-account' or 'default'");
  }
  const apiEndpoint = options.apiEndpoint;
  if (apiEndpoint !== undefined) {
    if (typeof apiEndpoint !== 'string' || !(HOST_RE.test(apiEndpoint) || IPV6_RE.test(apiEndpoint))) {
      throw new ByokConfigError(
        'gcpKms: apiEndpoint is a host name (e.g. cloudkms.googleapis.com or 127.0.0.1), without scheme ' +
          'or port; give the port in `port`',
      );
    }
  }
  const port = options.port === undefined ? undefined : intOption(options.port, 'port', 1, 65535, 443);
  const insecure = options.insecure === true;
  if (options.insecure !== undefined && typeof options.insecure !== 'boolean') {
    throw new ByokConfigError('gcpKms: insecure must be a boolean');
  }
  if (insecure && (apiEndpoint === undefined || !isLoopbackHost(apiEndpoint))) {
    throw new ByokConfigError(
      'gcpKms: insecure: true is only allowed with a loopback apiEndpoint (127.0.0.1, ::1, localhost): ' +
        'credentials would travel in clear text',
    );
  }
  if (insecure && port === undefined)
    throw new ByokConfigError('gcpKms: insecure: true needs the local server `port`');
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
