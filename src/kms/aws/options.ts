/** The options of `awsKms`: the auth modes, the client shape, and their validation. */
import type {
  DecryptCommand,
  DecryptCommandOutput,
  DescribeKeyCommand,
  DescribeKeyCommandOutput,
  EncryptCommand,
  EncryptCommandOutput,
} from '@aws-sdk/client-kms';
import { ByokConfigError } from '../../errors.ts';
import { type AwsKmsKeyArnParts, parseAwsKmsKeyArn, validateRoleArn } from './arn.ts';

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

const DEFAULT_TIMEOUT_MS = 3000;
const DEFAULT_MAX_ATTEMPTS = 3;

function validateOptionalSessionName(value: unknown, where: string): void {
  if (value === undefined) return;
  if (typeof value !== 'string' || !/^[\w+=,.@-]{2,64}$/.test(value)) {
    throw new ByokConfigError(`awsKms: ${where}.sessionName must be 2 to 64 of a-z A-Z 0-9 _ + = , . @ -`);
  }
}

function validateOptionalDuration(value: unknown, where: string): void {
  if (value === undefined) return;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 900 || value > 43_200) {
    throw new ByokConfigError(`awsKms: ${where}.durationSeconds must be an integer from 900 to 43200`);
  }
}

function validateAuth(auth: unknown, where: string, depth: number): AwsAuth {
  if (typeof auth !== 'object' || auth === null)
    throw new ByokConfigError(`awsKms: ${where} must be an object with a type`);
  const a = auth as Record<string, unknown>;
  switch (a.type) {
    case 'default':
      return { type: 'default' };
    case 'access-keys': {
      if (typeof a.accessKeyId !== 'string' || !/^[A-Z0-9]{16,128}$/.test(a.accessKeyId)) {
        throw new ByokConfigError(
          `awsKms: ${where}.accessKeyId must be an AWS access key id (16+ upper-case letters and digits)`,
        );
      }
      if (typeof a.secretAccessKey !== 'string' || a.secretAccessKey === '') {
        throw new ByokConfigError(`awsKms: ${where}.secretAccessKey is required`);
      }
      if (a.sessionToken !== undefined && (typeof a.sessionToken !== 'string' || a.sessionToken === '')) {
        throw new ByokConfigError(`awsKms: ${where}.sessionToken must be a non-empty string when given`);
      }
      return auth as AwsAccessKeysAuth;
    }
    case 'assume-role': {
      validateRoleArn(a.roleArn, where);
      if (typeof a.externalId !== 'string' || a.externalId === '') {
        throw new ByokConfigError(
          `awsKms: ${where}.externalId is required for assume-role (use one unique external id per tenant; it guards against the confused-deputy problem)`,
        );
      }
      if (!/^[\w+=,.@:/-]{2,1224}$/.test(a.externalId)) {
        throw new ByokConfigError(
          `awsKms: ${where}.externalId must be 2 to 1224 of a-z A-Z 0-9 _ + = , . @ : / -`,
        );
      }
      validateOptionalSessionName(a.sessionName, where);
      validateOptionalDuration(a.durationSeconds, where);
      if (a.source !== undefined) {
        if (depth >= 4)
          throw new ByokConfigError(`awsKms: ${where}.source: role chains are limited to 4 roles`);
        validateAuth(a.source, `${where}.source`, depth + 1);
      }
      return auth as AwsAssumeRoleAuth;
    }
    case 'web-identity': {
      validateRoleArn(a.roleArn, where);
      const hasToken = a.token !== undefined;
      const hasFile = a.tokenFile !== undefined;
      if (hasToken === hasFile)
        throw new ByokConfigError(`awsKms: ${where} needs exactly one of token (a function) or tokenFile`);
      if (hasToken && typeof a.token !== 'function')
        throw new ByokConfigError(`awsKms: ${where}.token must be a function`);
      if (hasFile && (typeof a.tokenFile !== 'string' || a.tokenFile === '')) {
        throw new ByokConfigError(`awsKms: ${where}.tokenFile must be a file path`);
      }
      validateOptionalSessionName(a.sessionName, where);
      validateOptionalDuration(a.durationSeconds, where);
      return auth as AwsWebIdentityTokenAuth | AwsWebIdentityFileAuth;
    }
    default:
      throw new ByokConfigError(
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
  throw new ByokConfigError(`awsKms: ${name} must be an http(s) URL`);
}

function validateInt(value: unknown, name: string, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new ByokConfigError(`awsKms: ${name} must be an integer from ${min} to ${max}`);
  }
  return value;
}

/** The validated options, defaults applied. */
export interface ResolvedOptions {
  readonly keyArn: string;
  readonly arn: AwsKmsKeyArnParts;
  readonly region: string;
  readonly auth: AwsAuth;
  readonly endpoint: string | undefined;
  readonly stsEndpoint: string | undefined;
  readonly timeoutMs: number;
  readonly maxAttempts: number;
}

/** Validates `awsKms` options (throws `ByokConfigError` naming the option). */
export function resolveOptions(options: AwsKmsOptions): ResolvedOptions {
  if (typeof options !== 'object' || options === null)
    throw new ByokConfigError('awsKms: options are required');
  const arn = parseAwsKmsKeyArn(options.keyArn);
  if (options.region !== undefined && options.region !== arn.region) {
    throw new ByokConfigError(
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
