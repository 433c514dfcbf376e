// One file: the drizzle-byok/aws entry: options, credentials, error mapping, the KEK (docs/architecture.md).
/**
 * `drizzle-byok/aws`: a tenant's AWS KMS key as key-encryption key (KEK).
 *
 * ```ts
 * const kek = awsKms({
 *   keyArn: 'arn:aws:kms:eu-west-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ab',
 *   auth: { type: 'assume-role', roleArn: 'arn:aws:iam::444455556666:role/byok', externalId: 'acme-7f3a' },
 * });
 * ```
 *
 * Wrapping is `Encrypt` / `Decrypt` with the EncryptionContext
 * `{ "byok:tenant": <tenantId>, "byok:dek": <dekId> }`: a wrapped data key only unwraps for the same
 * tenant and DEK record, and the context appears in the tenant's CloudTrail, so a tenant can pin its
 * key policy to its own tenant id with a `kms:EncryptionContext:byok:tenant` condition.
 *
 * This module (and `drizzle-byok/testing`) is the only one that imports AWS SDK packages.
 */
import { inspect } from 'node:util';
import { DecryptCommand, DescribeKeyCommand, EncryptCommand, KMSClient } from '@aws-sdk/client-kms';
import type {
  DecryptCommandOutput,
  DescribeKeyCommandOutput,
  EncryptCommandOutput,
  KeyMetadata,
} from '@aws-sdk/client-kms';
import {
  fromNodeProviderChain,
  fromTemporaryCredentials,
  fromTokenFile,
  fromWebToken,
} from '@aws-sdk/credential-providers';
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
import type { Kek, KekConfig, KekFactory, KeyDescription, WrapContext, WrapResult } from './kek.ts';

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/** Static credentials (an IAM user's access keys, or temporary keys with their session token). */
export interface AwsAccessKeysAuth {
  readonly type: 'access-keys';
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string;
}

/**
 * Cross-account access: `sts:AssumeRole` into a role of the tenant's account. `externalId` is
 * required (it protects against the confused-deputy problem: give each tenant its own).
 */
export interface AwsAssumeRoleAuth {
  readonly type: 'assume-role';
  readonly roleArn: string;
  readonly externalId: string;
  /** Default `drizzle-byok`. */
  readonly sessionName?: string;
  /** 900..43200; default: STS's default (3600). */
  readonly durationSeconds?: number;
  /** Credentials used to call AssumeRole; default: the platform's default credential chain. */
  readonly source?: AwsAuth;
}

/** `sts:AssumeRoleWithWebIdentity` with an OIDC token returned by a function (called at each refresh). */
export interface AwsWebIdentityTokenAuth {
  readonly type: 'web-identity';
  readonly roleArn: string;
  /** Returns a fresh OIDC token. Cannot be serialized: re-supply it at rebuild, see {@link createAwsKekFactory}. */
  readonly token: () => Promise<string> | string;
  readonly sessionName?: string;
  readonly durationSeconds?: number;
}

/** `sts:AssumeRoleWithWebIdentity` with an OIDC token read from a file at each refresh (EKS, GKE...). */
export interface AwsWebIdentityFileAuth {
  readonly type: 'web-identity';
  readonly roleArn: string;
  readonly tokenFile: string;
  readonly sessionName?: string;
  readonly durationSeconds?: number;
}

/** The AWS SDK's default credential chain (environment, shared files, SSO, ECS / EC2 roles...). */
export interface AwsDefaultAuth {
  readonly type: 'default';
}

export type AwsAuth =
  | AwsAccessKeysAuth
  | AwsAssumeRoleAuth
  | AwsWebIdentityTokenAuth
  | AwsWebIdentityFileAuth
  | AwsDefaultAuth;

/**
 * The subset of `KMSClient` the KEK uses; pass a prebuilt client (or a test double) as
 * {@link AwsKmsOptions.client}.
 */
export interface AwsKmsClientLike {
  send(command: EncryptCommand): Promise<EncryptCommandOutput>;
  send(command: DecryptCommand): Promise<DecryptCommandOutput>;
  send(command: DescribeKeyCommand): Promise<DescribeKeyCommandOutput>;
  destroy?(): void;
}

export interface AwsKmsOptions {
  /**
   * Full ARN of the key: `arn:aws:kms:<region>:<account>:key/<key-id>` (a multi-region key id starts
   * with `mrk-`) or `arn:aws:kms:<region>:<account>:alias/<name>`. Bare ids and alias names are
   * refused: tenants' keys live in other accounts, which only ARNs can name.
   */
  readonly keyArn: string;
  /** Region of the KMS endpoint; defaults to the ARN's region and must equal it (keys are regional). */
  readonly region?: string;
  /** How to get credentials; default `{ type: 'default' }`. */
  readonly auth?: AwsAuth;
  /** KMS endpoint URL (VPC endpoint, local test server); default: the SDK's regional endpoint. */
  readonly endpoint?: string;
  /** STS endpoint URL for assume-role / web-identity; default: the SDK's regional STS endpoint. */
  readonly stsEndpoint?: string;
  /** Connection and per-attempt request timeout in ms; default 3000. */
  readonly timeoutMs?: number;
  /** Attempts per call, with the SDK's standard retry strategy (backoff on throttling, 5xx, timeouts); default 3. */
  readonly maxAttempts?: number;
  /** A prebuilt client; then `endpoint`, `auth`, `timeoutMs` and `maxAttempts` are only recorded by `toConfig()`. */
  readonly client?: AwsKmsClientLike;
}

/** The parts of a KMS key or alias ARN. */
export interface AwsKmsKeyArnParts {
  readonly partition: string;
  readonly region: string;
  readonly accountId: string;
  readonly resourceType: 'key' | 'alias';
  /** Key id (UUID or `mrk-...`) or alias name with its `alias/` prefix. */
  readonly resource: string;
  readonly multiRegion: boolean;
}

/** EncryptionContext keys bound to every wrapped DEK. */
export const AWS_ENCRYPTION_CONTEXT_KEYS = { tenant: 'byok:tenant', dek: 'byok:dek' } as const;

const DEFAULT_TIMEOUT_MS = 3000;
const DEFAULT_MAX_ATTEMPTS = 3;
const DEFAULT_SESSION_NAME = 'drizzle-byok';
const DEK_BYTES = 32;

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

const PARTITIONS = [
  'aws',
  'aws-cn',
  'aws-us-gov',
  'aws-iso',
  'aws-iso-b',
  'aws-iso-e',
  'aws-iso-f',
  'aws-eusc',
];
const REGION_RE = /^[a-z]{2,4}(-[a-z]+)+-\d{1,2}$/;
const ACCOUNT_RE = /^\d{12}$/;
const KEY_ID_RE = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$/;
const ALIAS_RE = /^alias\/[a-zA-Z0-9/_-]{1,250}$/;

function configError(message: string): ByokConfigError {
  return new ByokConfigError(message);
}

/**
 * Parses and validates a KMS key ARN or alias ARN; throws `ByokConfigError` naming the malformed
 * part (partition, service, region, account id, resource type, key id or alias name).
 */
export function parseAwsKmsKeyArn(keyArn: unknown): AwsKmsKeyArnParts {
  if (typeof keyArn !== 'string' || keyArn.trim() === '') {
    throw configError('awsKms: keyArn is required (arn:aws:kms:<region>:<account-id>:key/<key-id>)');
  }
  const bad = (what: string) => configError(`awsKms: invalid key ARN "${keyArn}": ${what}`);
  if (!keyArn.startsWith('arn:')) {
    const kind = KEY_ID_RE.test(keyArn)
      ? 'a bare key id'
      : keyArn.startsWith('alias/')
        ? 'a bare alias name'
        : 'not an ARN';
    throw bad(
      `${kind}; a full key ARN (arn:aws:kms:<region>:<account-id>:key/<key-id>) or alias ARN is needed, ` +
        "because tenants' keys live in other AWS accounts, which only an ARN can name",
    );
  }
  const parts = keyArn.split(':');
  if (parts.length !== 6) {
    throw bad(
      `expected 6 colon-separated parts (arn:partition:kms:region:account-id:resource), found ${parts.length}`,
    );
  }
  const [, partition, service, region, accountId, resource] = parts as [
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  if (!PARTITIONS.includes(partition)) {
    throw bad(`partition "${partition}" is not an AWS partition (expected one of ${PARTITIONS.join(', ')})`);
  }
  if (service !== 'kms') throw bad(`service "${service}" is not "kms"`);
  if (!REGION_RE.test(region)) throw bad(`region "${region}" is not a region name such as us-east-1`);
  if (!ACCOUNT_RE.test(accountId)) throw bad(`account id "${accountId}" is not 12 digits`);
  const slash = resource.indexOf('/');
  const resourceType = slash < 0 ? resource : resource.slice(0, slash);
  if (resourceType === 'key') {
    const keyId = resource.slice(slash + 1);
    if (!KEY_ID_RE.test(keyId)) {
      throw bad(
        `key id "${keyId}" is neither a key UUID nor a multi-region key id (mrk- followed by 32 hex digits)`,
      );
    }
    return {
      partition,
      region,
      accountId,
      resourceType,
      resource: keyId,
      multiRegion: keyId.startsWith('mrk-'),
    };
  }
  if (resourceType === 'alias') {
    if (!ALIAS_RE.test(resource)) {
      throw bad(`alias name "${resource}" must be alias/ followed by 1 to 250 of a-z A-Z 0-9 / _ -`);
    }
    if (resource.startsWith('alias/aws/')) {
      throw bad(
        `alias name "${resource}" names an AWS managed key, which cannot be shared; use a customer managed key`,
      );
    }
    return { partition, region, accountId, resourceType, resource, multiRegion: false };
  }
  throw bad(`resource type "${resourceType}" is neither "key" nor "alias"`);
}

function validateRoleArn(roleArn: unknown, where: string): string {
  if (typeof roleArn !== 'string' || roleArn === '')
    throw configError(`awsKms: ${where}.roleArn is required`);
  const m = /^arn:([^:]*):iam::([^:]*):role\/((?:[\w+=,.@-]+\/)*[\w+=,.@-]{1,64})$/.exec(roleArn);
  if (!m) {
    throw configError(
      `awsKms: invalid ${where}.roleArn "${roleArn}": expected arn:aws:iam::<account-id>:role/<name>`,
    );
  }
  if (!PARTITIONS.includes(m[1]!))
    throw configError(`awsKms: invalid ${where}.roleArn "${roleArn}": unknown partition`);
  if (!ACCOUNT_RE.test(m[2]!)) {
    throw configError(`awsKms: invalid ${where}.roleArn "${roleArn}": account id "${m[2]}" is not 12 digits`);
  }
  return roleArn;
}

function validateOptionalSessionName(value: unknown, where: string): void {
  if (value === undefined) return;
  if (typeof value !== 'string' || !/^[\w+=,.@-]{2,64}$/.test(value)) {
    throw configError(`awsKms: ${where}.sessionName must be 2 to 64 of a-z A-Z 0-9 _ + = , . @ -`);
  }
}

function validateOptionalDuration(value: unknown, where: string): void {
  if (value === undefined) return;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 900 || value > 43_200) {
    throw configError(`awsKms: ${where}.durationSeconds must be an integer from 900 to 43200`);
  }
}

function validateAuth(auth: unknown, where: string, depth: number): AwsAuth {
  if (typeof auth !== 'object' || auth === null)
    throw configError(`awsKms: ${where} must be an object with a type`);
  const a = auth as Record<string, unknown>;
  switch (a.type) {
    case 'default':
      return { type: 'default' };
    case 'access-keys': {
      if (typeof a.accessKeyId !== 'string' || !/^[A-Z0-9]{16,128}$/.test(a.accessKeyId)) {
        throw configError(
          `awsKms: ${where}.accessKeyId must be an AWS access key id (16+ upper-case letters and digits)`,
        );
      }
      if (typeof a.secretAccessKey !== 'string' || a.secretAccessKey === '') {
        throw configError(`awsKms: ${where}.secretAccessKey is required`);
      }
      if (a.sessionToken !== undefined && (typeof a.sessionToken !== 'string' || a.sessionToken === '')) {
        throw configError(`awsKms: ${where}.sessionToken must be a non-empty string when given`);
      }
      return auth as AwsAccessKeysAuth;
    }
    case 'assume-role': {
      validateRoleArn(a.roleArn, where);
      if (typeof a.externalId !== 'string' || a.externalId === '') {
        throw configError(
          `awsKms: ${where}.externalId is required for assume-role (use one unique external id per tenant; it guards against the confused-deputy problem)`,
        );
      }
      if (!/^[\w+=,.@:/-]{2,1224}$/.test(a.externalId)) {
        throw configError(`awsKms: ${where}.externalId must be 2 to 1224 of a-z A-Z 0-9 _ + = , . @ : / -`);
      }
      validateOptionalSessionName(a.sessionName, where);
      validateOptionalDuration(a.durationSeconds, where);
      if (a.source !== undefined) {
        if (depth >= 4) throw configError(`awsKms: ${where}.source: role chains are limited to 4 roles`);
        validateAuth(a.source, `${where}.source`, depth + 1);
      }
      return auth as AwsAssumeRoleAuth;
    }
    case 'web-identity': {
      validateRoleArn(a.roleArn, where);
      const hasToken = a.token !== undefined;
      const hasFile = a.tokenFile !== undefined;
      if (hasToken === hasFile)
        throw configError(`awsKms: ${where} needs exactly one of token (a function) or tokenFile`);
      if (hasToken && typeof a.token !== 'function')
        throw configError(`awsKms: ${where}.token must be a function`);
      if (hasFile && (typeof a.tokenFile !== 'string' || a.tokenFile === '')) {
        throw configError(`awsKms: ${where}.tokenFile must be a file path`);
      }
      validateOptionalSessionName(a.sessionName, where);
      validateOptionalDuration(a.durationSeconds, where);
      return auth as AwsWebIdentityTokenAuth | AwsWebIdentityFileAuth;
    }
    default:
      throw configError(
        `awsKms: ${where}.type must be one of access-keys, assume-role, web-identity, default (got ${JSON.stringify(a.type)})`,
      );
  }
}

function validateUrl(value: unknown, name: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value === 'string') {
    try {
      const u = new URL(value);
      if (u.protocol === 'https:' || u.protocol === 'http:') return value;
    } catch {
      // fall through
    }
  }
  throw configError(`awsKms: ${name} must be an http(s) URL`);
}

function validateInt(value: unknown, name: string, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw configError(`awsKms: ${name} must be an integer from ${min} to ${max}`);
  }
  return value;
}

interface ResolvedOptions {
  readonly keyArn: string;
  readonly arn: AwsKmsKeyArnParts;
  readonly region: string;
  readonly auth: AwsAuth;
  readonly endpoint: string | undefined;
  readonly stsEndpoint: string | undefined;
  readonly timeoutMs: number;
  readonly maxAttempts: number;
}

function resolveOptions(options: AwsKmsOptions): ResolvedOptions {
  if (typeof options !== 'object' || options === null) throw configError('awsKms: options are required');
  const arn = parseAwsKmsKeyArn(options.keyArn);
  if (options.region !== undefined && options.region !== arn.region) {
    throw configError(
      `awsKms: region "${String(options.region)}" differs from the key's region "${arn.region}"; a KMS key is only usable through its own region's endpoint`,
    );
  }
  return {
    keyArn: options.keyArn,
    arn,
    region: arn.region,
    auth: validateAuth(options.auth ?? { type: 'default' }, 'auth', 0),
    endpoint: validateUrl(options.endpoint, 'endpoint'),
    stsEndpoint: validateUrl(options.stsEndpoint, 'stsEndpoint'),
    timeoutMs: validateInt(options.timeoutMs, 'timeoutMs', 1, 600_000, DEFAULT_TIMEOUT_MS),
    maxAttempts: validateInt(options.maxAttempts, 'maxAttempts', 1, 10, DEFAULT_MAX_ATTEMPTS),
  };
}

// ---------------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------------

type CredentialProvider = ReturnType<typeof fromNodeProviderChain>;

/** Marks a failure to obtain credentials (STS, token file, default chain), as opposed to a KMS answer. */
class CredentialResolutionError extends Error {
  constructor(cause: unknown) {
    super('AWS credentials could not be obtained', { cause });
    this.name = 'CredentialResolutionError';
  }
}

interface StsSettings {
  readonly region: string;
  readonly endpoint: string | undefined;
  readonly maxAttempts: number;
}

/**
 * Builds the SDK credential provider for an auth mode. The STS clients the providers create reuse
 * the calling KMS client's request handler (timeouts included), since no `requestHandler` is given.
 */
function credentialProvider(auth: AwsAuth, sts: StsSettings): CredentialProvider {
  const clientConfig = {
    region: sts.region,
    maxAttempts: sts.maxAttempts,
    ...(sts.endpoint === undefined ? {} : { endpoint: sts.endpoint }),
  };
  switch (auth.type) {
    case 'default':
      return fromNodeProviderChain({ clientConfig });
    case 'access-keys': {
      const identity = {
        accessKeyId: auth.accessKeyId,
        secretAccessKey: auth.secretAccessKey,
        ...(auth.sessionToken === undefined ? {} : { sessionToken: auth.sessionToken }),
      };
      return async () => identity;
    }
    case 'assume-role':
      return fromTemporaryCredentials({
        params: {
          RoleArn: auth.roleArn,
          RoleSessionName: auth.sessionName ?? DEFAULT_SESSION_NAME,
          ExternalId: auth.externalId,
          ...(auth.durationSeconds === undefined ? {} : { DurationSeconds: auth.durationSeconds }),
        },
        masterCredentials:
          auth.source === undefined
            ? fromNodeProviderChain({ clientConfig })
            : credentialProvider(auth.source, sts),
        clientConfig,
      });
    case 'web-identity': {
      const common = {
        roleArn: auth.roleArn,
        roleSessionName: auth.sessionName ?? DEFAULT_SESSION_NAME,
        ...(auth.durationSeconds === undefined ? {} : { durationSeconds: auth.durationSeconds }),
        clientConfig,
      };
      if ('tokenFile' in auth) return fromTokenFile({ ...common, webIdentityTokenFile: auth.tokenFile });
      const token = auth.token;
      return async (properties) => {
        const webIdentityToken = await token();
        if (typeof webIdentityToken !== 'string' || webIdentityToken === '') {
          throw new Error('the web identity token function returned no token');
        }
        return fromWebToken({ ...common, webIdentityToken })(properties);
      };
    }
  }
}

function taggingCredentialErrors(provider: CredentialProvider): CredentialProvider {
  return async (properties) => {
    try {
      return await provider(properties);
    } catch (e) {
      throw new CredentialResolutionError(e);
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// The KEK
// ---------------------------------------------------------------------------------------------

type AwsOperation = 'Encrypt' | 'Decrypt' | 'DescribeKey';

/** Describes an auth mode without secrets, for messages and `toConfig().params.auth`. */
function publicAuth(auth: AwsAuth): Record<string, unknown> {
  switch (auth.type) {
    case 'default':
    case 'access-keys':
      return { type: auth.type };
    case 'assume-role':
      return {
        type: auth.type,
        roleArn: auth.roleArn,
        externalId: auth.externalId,
        ...(auth.sessionName === undefined ? {} : { sessionName: auth.sessionName }),
        ...(auth.durationSeconds === undefined ? {} : { durationSeconds: auth.durationSeconds }),
        ...(auth.source === undefined ? {} : { source: publicAuth(auth.source) }),
      };
    case 'web-identity':
      return {
        type: auth.type,
        roleArn: auth.roleArn,
        ...('tokenFile' in auth ? { tokenFile: auth.tokenFile } : { tokenSource: 'function' }),
        ...(auth.sessionName === undefined ? {} : { sessionName: auth.sessionName }),
        ...(auth.durationSeconds === undefined ? {} : { durationSeconds: auth.durationSeconds }),
      };
  }
}

/** The static keys at the end of an auth chain, if any. */
function leafAccessKeys(auth: AwsAuth): AwsAccessKeysAuth | undefined {
  if (auth.type === 'access-keys') return auth;
  if (auth.type === 'assume-role' && auth.source !== undefined) return leafAccessKeys(auth.source);
  return undefined;
}

function describeAuth(auth: AwsAuth): string {
  switch (auth.type) {
    case 'assume-role':
      return `assume-role ${auth.roleArn}`;
    case 'web-identity':
      return `web-identity ${auth.roleArn}`;
    default:
      return auth.type;
  }
}

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
  readonly #secrets: readonly string[];
  #closed = false;

  constructor(options: AwsKmsOptions) {
    this.#options = resolveOptions(options);
    this.keyRef = this.#options.keyArn;
    this.region = this.#options.region;
    const keys = leafAccessKeys(this.#options.auth);
    this.#secrets =
      keys === undefined ? [] : [keys.secretAccessKey, ...(keys.sessionToken ? [keys.sessionToken] : [])];
    if (options.client !== undefined) {
      if (typeof options.client?.send !== 'function')
        throw configError('awsKms: client must have a send() method');
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
      throw configError(`awsKms.wrap: a data key must be ${DEK_BYTES} bytes`);
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
    let parts: AwsKmsKeyArnParts;
    try {
      parts = parseAwsKmsKeyArn(keyArn);
    } catch {
      return false;
    }
    if (parts.resourceType !== 'key') return false;
    const own = this.#options.arn;
    if (own.resourceType === 'key') return keyArn === this.keyRef;
    return (
      parts.partition === own.partition && parts.region === own.region && parts.accountId === own.accountId
    );
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
    if (typeof context?.tenantId !== 'string' || context.tenantId === '') {
      throw configError('awsKms: context.tenantId must be a non-empty string');
    }
    if (typeof context.dekId !== 'string' || context.dekId === '') {
      throw configError('awsKms: context.dekId must be a non-empty string');
    }
    return {
      [AWS_ENCRYPTION_CONTEXT_KEYS.tenant]: context.tenantId,
      [AWS_ENCRYPTION_CONTEXT_KEYS.dek]: context.dekId,
    };
  }

  async #send<T>(operation: AwsOperation, tenantId: string | undefined, call: () => Promise<T>): Promise<T> {
    if (this.#closed) throw configError(`awsKms: the KEK for ${this.keyRef} is closed`);
    try {
      return await call();
    } catch (e) {
      throw this.#mapError(e, operation, tenantId);
    }
  }

  #mapError(e: unknown, operation: AwsOperation, tenantId: string | undefined): ByokError {
    if (e instanceof ByokError) return e;
    const opts = (cause: unknown) => ({
      cause: redactedCause(cause, this.#secrets),
      ...(tenantId === undefined ? {} : { tenantId }),
    });
    const where = `AWS KMS ${operation} with ${this.keyRef}`;
    if (e instanceof CredentialResolutionError) {
      const inner = e.cause;
      return new KmsCredentialsError(
        `${where}: could not obtain credentials (${describeAuth(this.#options.auth)}): ${errorLabel(inner)}`,
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
          `${fail}: ${what} (the request was refused before it reached KMS, or the credentials (${describeAuth(this.#options.auth)}) were rejected)`,
          opts(e),
        );
      }
      if (status === 429) return new KmsThrottledError(`${fail}: throttled (${what})`, opts(e));
      if ((status >= 300 && status < 400) || status === 404 || status === 405) {
        return new ByokConfigError(
          `${fail}: ${what}: check the endpoint option (${this.#options.endpoint ?? 'the SDK default endpoint'}) points at AWS KMS`,
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
      return new KmsCredentialsError(
        `${fail}: the credentials (${describeAuth(this.#options.auth)}) were rejected (${name})`,
        opts(e),
      );
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
}

/** Creates an AWS KMS KEK. Validates the options (throws `ByokConfigError`); makes no network call. */
export function awsKms(options: AwsKmsOptions): AwsKmsKek {
  return new AwsKmsKek(options);
}

// ---------------------------------------------------------------------------------------------
// Rebuild from configuration
// ---------------------------------------------------------------------------------------------

export interface AwsKekFactoryOptions {
  /**
   * Token source for `web-identity` configurations created with a `token` function (functions are
   * not stored). Called at each credential refresh.
   */
  webIdentityToken?: (target: { keyArn: string; roleArn: string }) => Promise<string> | string;
}

function rebuildAuth(
  raw: unknown,
  secret: Readonly<Record<string, unknown>> | undefined,
  keyArn: string,
  factory: AwsKekFactoryOptions,
): AwsAuth {
  if (typeof raw !== 'object' || raw === null) throw configError('awsKekFactory: params.auth is missing');
  const a = raw as Record<string, unknown>;
  switch (a.type) {
    case 'access-keys': {
      if (secret === undefined)
        throw configError('awsKekFactory: access-keys auth needs the secret part of the config');
      return {
        type: 'access-keys',
        accessKeyId: secret.accessKeyId as string,
        secretAccessKey: secret.secretAccessKey as string,
        ...(secret.sessionToken === undefined ? {} : { sessionToken: secret.sessionToken as string }),
      };
    }
    case 'assume-role':
      return {
        ...(a as unknown as AwsAssumeRoleAuth),
        ...(a.source === undefined ? {} : { source: rebuildAuth(a.source, secret, keyArn, factory) }),
      };
    case 'web-identity': {
      const { tokenSource, ...rest } = a;
      if (tokenSource !== 'function') return rest as unknown as AwsWebIdentityFileAuth;
      const supply = factory.webIdentityToken;
      if (supply === undefined) {
        throw configError(
          `awsKekFactory: the KEK ${keyArn} uses a web identity token function, which cannot be stored; ` +
            'register createAwsKekFactory({ webIdentityToken }) instead of awsKekFactory',
        );
      }
      const roleArn = a.roleArn as string;
      return {
        ...(rest as unknown as Omit<AwsWebIdentityTokenAuth, 'token'>),
        token: () => supply({ keyArn, roleArn }),
      };
    }
    default:
      return a as unknown as AwsAuth;
  }
}

/** A `KekFactory` for `aws-kms` configurations, with the runtime parts a configuration cannot hold. */
export function createAwsKekFactory(factoryOptions: AwsKekFactoryOptions = {}): KekFactory {
  return (config: KekConfig) => {
    if (config?.kind !== 'aws-kms') {
      throw configError(`awsKekFactory: expected a config of kind aws-kms, got ${String(config?.kind)}`);
    }
    const p = config.params;
    const keyArn = parseAwsKmsKeyArn(p.keyArn) && (p.keyArn as string);
    return new AwsKmsKek({
      keyArn,
      auth: rebuildAuth(p.auth, config.secret, keyArn, factoryOptions),
      ...(p.region === undefined ? {} : { region: p.region as string }),
      ...(p.endpoint === undefined ? {} : { endpoint: p.endpoint as string }),
      ...(p.stsEndpoint === undefined ? {} : { stsEndpoint: p.stsEndpoint as string }),
      ...(p.timeoutMs === undefined ? {} : { timeoutMs: p.timeoutMs as number }),
      ...(p.maxAttempts === undefined ? {} : { maxAttempts: p.maxAttempts as number }),
    });
  };
}

/** Rebuilds an AWS KMS KEK from `toConfig()` output (web identity token functions excepted). */
export const awsKekFactory: KekFactory = createAwsKekFactory();
