// One file: KMS, STS, SigV4, policies and faults share one handler and key state (docs/architecture.md).
/**
 * A local AWS KMS + STS server for tests. It speaks the real wire protocols (KMS: JSON 1.1 with
 * `X-Amz-Target: TrentService.<Op>`; STS: the Query protocol with XML answers), verifies SigV4
 * signatures, enforces key policies and role trust policies, and injects faults, so the real
 * `@aws-sdk/client-kms` `KMSClient` and the `@aws-sdk/credential-providers` providers run unchanged
 * against it.
 *
 * Model:
 * - One server hosts one partition (`aws`) with any number of accounts and regions. The region of a
 *   request is the region of its SigV4 credential scope (the SDK client's `region`), so KMS clients
 *   configured for different regions can share one `endpoint`, and keys created in one region are
 *   invisible from another, as with real regional KMS endpoints.
 * - KMS and STS share the same URL (`endpoint === stsEndpoint`): requests carrying
 *   `X-Amz-Target: TrentService.*` are KMS calls, form-encoded `Action=...` bodies are STS calls.
 * - Principals are IAM users (static access keys made by {@link AwsKmsServer.addUser}) and role
 *   sessions (temporary credentials issued by STS `AssumeRole` / `AssumeRoleWithWebIdentity`).
 *   There are no identity-based IAM policies beyond one switch per principal (`iamAllowsKms`,
 *   default true: "its IAM policies allow kms:*"): a key policy statement naming an account (or
 *   its `:root`) applies to the account's principals with that switch on, a statement naming a
 *   principal (or a role, for its sessions) applies to it; a role may be assumed by whoever its
 *   trust policy names.
 * - Symmetric keys use real AES-256-GCM (node:crypto). A ciphertext blob is self-describing:
 *   `"LKMS"`, version byte, account id, key id, IV, tag, ciphertext; the header and the canonical
 *   EncryptionContext are the GCM AAD, so a Decrypt with another context fails with
 *   `InvalidCiphertextException`. Multi-region keys (`mrk-` ids) and their replicas share key
 *   material and key id, so a blob from one region decrypts in a replica region.
 * - Asymmetric and HMAC keys exist for metadata only: any cryptographic operation on them is
 *   refused with `InvalidKeyUsageException`.
 *
 * Binds to 127.0.0.1 only. Node's `http` and `crypto` modules only. Not for production use.
 */
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  randomBytes,
  randomUUID,
  timingSafeEqual,
} from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/** KMS key states, as AWS spells them. */
export type AwsKeyState =
  | 'Enabled'
  | 'Disabled'
  | 'PendingDeletion'
  | 'PendingReplicaDeletion'
  | 'PendingImport'
  | 'Unavailable'
  | 'Creating'
  | 'Updating';

export type AwsKeyUsage = 'ENCRYPT_DECRYPT' | 'SIGN_VERIFY' | 'GENERATE_VERIFY_MAC' | 'KEY_AGREEMENT';

export type AwsKeySpec =
  | 'SYMMETRIC_DEFAULT'
  | 'RSA_2048'
  | 'RSA_3072'
  | 'RSA_4096'
  | 'ECC_NIST_P256'
  | 'ECC_NIST_P384'
  | 'ECC_NIST_P521'
  | 'ECC_SECG_P256K1'
  | 'HMAC_224'
  | 'HMAC_256'
  | 'HMAC_384'
  | 'HMAC_512';

export interface AwsKmsServerOptions {
  /** TCP port on 127.0.0.1; default 0 (a random free port). */
  port?: number;
  /** Default region for keys created without one; default `us-east-1`. */
  region?: string;
  /** Default account id for keys, users and roles created without one; default `111122223333`. */
  accountId?: string;
  /** Accepted difference between a request's `X-Amz-Date` and the server clock; default 900 s. */
  maxClockSkewSeconds?: number;
}

/** An IAM policy document (key policy or role trust policy), as AWS writes them. */
export interface PolicyDocument {
  Version?: string;
  Id?: string;
  Statement: PolicyStatement | PolicyStatement[];
}

/**
 * One policy statement. Supported: `Effect` Allow/Deny (Deny wins); `Principal` `"*"` or
 * `{ AWS: ... }` (account id, `arn:aws:iam::<account>:root`, user ARN, role ARN matching all its
 * sessions, assumed-role session ARN) or `{ Federated: <oidc-provider ARN> }`; `Action` with `*`
 * and `?` wildcards; `Condition` operators `StringEquals`, `StringNotEquals`, `StringLike`,
 * `StringNotLike` over the keys `kms:EncryptionContext:<key>`, `kms:CallerAccount`,
 * `aws:PrincipalArn`, `aws:PrincipalAccount`, `sts:ExternalId`, `sts:RoleSessionName`,
 * `<issuer>:aud`, `<issuer>:sub`. `Resource` is ignored (a key policy applies to its key).
 */
export interface PolicyStatement {
  Sid?: string;
  Effect: 'Allow' | 'Deny';
  Principal: '*' | { AWS?: string | string[]; Federated?: string | string[] };
  Action: string | string[];
  Resource?: string | string[];
  Condition?: Record<string, Record<string, string | string[]>>;
}

export interface CreateKeyOptions {
  /** Default: the server's region. */
  region?: string;
  /** Default: the server's account. */
  accountId?: string;
  description?: string;
  /** Default `ENCRYPT_DECRYPT`. */
  keyUsage?: AwsKeyUsage;
  /** Default `SYMMETRIC_DEFAULT`. */
  keySpec?: AwsKeySpec;
  /** Create a multi-region primary key (id `mrk-<32 hex>`); see {@link AwsKmsServer.replicateKey}. */
  multiRegion?: boolean;
  /** Key policy; default: every principal of the key's account may do everything (`kms:*`). */
  policy?: PolicyDocument | string;
  /** Initial state; default `Enabled`. */
  state?: AwsKeyState;
}

/** A snapshot of a key's metadata. */
export interface AwsKmsKeyInfo {
  readonly keyId: string;
  readonly arn: string;
  readonly region: string;
  readonly accountId: string;
  readonly keyUsage: AwsKeyUsage;
  readonly keySpec: AwsKeySpec;
  readonly keyState: AwsKeyState;
  readonly multiRegion: boolean;
  readonly multiRegionKeyType?: 'PRIMARY' | 'REPLICA';
}

export interface AddUserOptions {
  /**
   * Whether the principal's identity-based IAM policies allow every KMS action, so that a key policy
   * statement naming its account (or the account's `:root`) applies to it, as on AWS when an IAM
   * policy grants `kms:*`. Default true. False: only statements naming the principal itself (or,
   * for a role, the role) apply, like a BYOK role with no IAM policy of its own.
   */
  iamAllowsKms?: boolean;
  /** Default `user-<n>`. */
  name?: string;
  /** Default: the server's account. */
  accountId?: string;
  /** Default: a fresh `AKIA...` id. */
  accessKeyId?: string;
  /** Default: a fresh random secret. */
  secretAccessKey?: string;
}

/** A static IAM user. `accessKeyId` / `secretAccessKey` sign requests as this user. */
export interface IamUser {
  readonly name: string;
  readonly arn: string;
  readonly accountId: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
}

/** Short form of a role trust policy; see {@link AddRoleOptions.trust}. */
export interface RoleTrust {
  /** Principals allowed to call `sts:AssumeRole` (user / role / session ARNs, account ids or root ARNs). */
  principals?: string[];
  /** When set, `AssumeRole` must pass exactly this `ExternalId` (`sts:ExternalId` condition). */
  externalId?: string;
  /** Allows `sts:AssumeRoleWithWebIdentity` with tokens of this OIDC provider. */
  webIdentity?: {
    /** ARN from {@link AwsKmsServer.addWebIdentityProvider}. */
    providerArn: string;
    /** Required `aud` claim (`<issuer>:aud` condition). */
    audience?: string;
    /** Required `sub` claim (`<issuer>:sub` condition). */
    subject?: string;
  };
}

export interface AddRoleOptions {
  /**
   * Whether the principal's identity-based IAM policies allow every KMS action, so that a key policy
   * statement naming its account (or the account's `:root`) applies to it, as on AWS when an IAM
   * policy grants `kms:*`. Default true. False: only statements naming the principal itself (or,
   * for a role, the role) apply, like a BYOK role with no IAM policy of its own.
   */
  iamAllowsKms?: boolean;
  name: string;
  /** Default: the server's account. */
  accountId?: string;
  /** Who may assume the role: the short form, or a full trust policy document. */
  trust: RoleTrust | PolicyDocument;
  /** Upper bound for `DurationSeconds`; default 3600. */
  maxSessionDurationSeconds?: number;
}

export interface IamRole {
  readonly name: string;
  readonly arn: string;
  readonly accountId: string;
}

export interface AddWebIdentityProviderOptions {
  /** Issuer URL (`iss` claim); default `https://oidc.local.test/<n>`. */
  issuer?: string;
  /** Accepted `aud` values (client ids); default `['sts.amazonaws.com']`. */
  audiences?: string[];
  /** Account the provider is registered in (the role's account); default: the server's account. */
  accountId?: string;
}

export interface WebIdentityTokenOptions {
  /** Issuer of the token; default: the first registered provider. */
  issuer?: string;
  subject: string;
  /** Default: the provider's first audience. */
  audience?: string;
  /** Lifetime; default 3600. Negative values make an already expired token. */
  expiresInSeconds?: number;
  /** Extra claims to put in the token. */
  claims?: Record<string, unknown>;
}

/** An OIDC identity provider hosted by the server; its tokens are HS256 JWTs. */
export interface WebIdentityProvider {
  readonly arn: string;
  readonly issuer: string;
  readonly audiences: readonly string[];
  /** Issues a signed token of this provider. */
  issueToken(options: Omit<WebIdentityTokenOptions, 'issuer'>): string;
}

/** Restricts a fault to some calls. Empty: every call (KMS and STS). */
export interface FaultFilter {
  /** Operation name(s), e.g. `'Decrypt'`, `['Encrypt', 'GenerateDataKey']`, `'AssumeRole'`. */
  operation?: string | readonly string[];
  /** Key the call targets: key id, key ARN, alias name or alias ARN (resolved when the fault is added). */
  key?: string;
}

/** Fault injection. Faults apply to authenticated calls, before authorization. */
export interface AwsKmsFaults {
  /** The next `count` matching calls fail with `ThrottlingException` (STS: `Throttling`), HTTP 400. */
  throttle(count: number, filter?: FaultFilter): void;
  /**
   * The next `count` matching calls fail with a server error: 500 `KMSInternalException`
   * (STS: `InternalFailure`) or 503 `ServiceUnavailableException` (STS: `ServiceUnavailable`).
   */
  fail(count: number, options?: FaultFilter & { status?: 500 | 503 }): void;
  /** Every matching call is delayed by `ms` (cumulative over matching latency faults). */
  latency(ms: number, filter?: FaultFilter): void;
  /** Matching calls are never answered until {@link clear} (then they proceed) or `close()`. */
  hang(filter?: FaultFilter): void;
  /** Number of calls currently held by {@link hang}. */
  readonly hungRequests: number;
  /** Removes every fault and lets hung calls proceed. */
  clear(): void;
}

/** One call seen by the server (kept for the last 10,000 calls). */
export interface AwsKmsCallRecord {
  readonly service: 'kms' | 'sts';
  readonly operation: string;
  readonly region: string;
  /** ARN of the calling principal, when authenticated. */
  readonly principal: string | undefined;
  /** ARN of the key the call targeted, when resolved. */
  readonly keyArn: string | undefined;
  /** EncryptionContext of the request (KMS), if any. */
  readonly encryptionContext: Readonly<Record<string, string>> | undefined;
  /** HTTP status; 0 while the call is in progress (or hung). */
  readonly status: number;
  /** Error name (`__type` / `Code`) when the call failed. */
  readonly error: string | undefined;
}

/** Call counters. Every HTTP request counts, including retries and faulted calls. */
export interface AwsKmsCounters {
  /** All calls. */
  readonly total: number;
  /** Calls of one operation (`'Encrypt'`, `'AssumeRole'`...). */
  operation(name: string): number;
  /** Calls that targeted a key (key id, key ARN, alias name or alias ARN). */
  key(ref: string): number;
  /** Calls made by a principal (user ARN, role ARN = all its sessions, or session ARN). */
  principal(arn: string): number;
  /** Failed calls, all or with one error name. */
  errors(name?: string): number;
  /** The call log, oldest first. */
  readonly calls: readonly AwsKmsCallRecord[];
  reset(): void;
}

/** A running server. */
export interface AwsKmsServer {
  /** `http://127.0.0.1:<port>`: pass as `endpoint` to `KMSClient`. */
  readonly endpoint: string;
  /** Same URL as {@link endpoint}: pass as STS `endpoint` (or `AWS_ENDPOINT_URL_STS`). */
  readonly stsEndpoint: string;
  /** Default region. */
  readonly region: string;
  /** Default account id. */
  readonly accountId: string;
  readonly faults: AwsKmsFaults;
  readonly counters: AwsKmsCounters;
  /** Creates a key (symmetric AES-256 by default). */
  createKey(options?: CreateKeyOptions): AwsKmsKeyInfo;
  /** Creates a replica of a multi-region primary key in another region (same id and key material). */
  replicateKey(primary: string, replicaRegion: string): AwsKmsKeyInfo;
  /** Creates `alias/...` pointing to a key, in the key's account and region; returns the alias ARN. */
  createAlias(aliasName: string, key: string): string;
  /**
   * Points an alias (alias ARN, or `alias/...` in the default account and region) at another key of
   * its account and region, of the same type: AWS's manual key rotation. Also `UpdateAlias` on the wire.
   */
  updateAlias(alias: string, key: string): void;
  /** Deletes an alias (the key stays). Also `DeleteAlias` on the wire. */
  deleteAlias(alias: string): void;
  /** The current key policy document of a key, as JSON text (also `GetKeyPolicy` on the wire). */
  getPolicy(key: string): string;
  /** Current metadata of a key (id, ARN, alias name or alias ARN; ids resolve in the default region). */
  describeKey(key: string): AwsKmsKeyInfo;
  setKeyState(key: string, state: AwsKeyState): void;
  /** Replaces a key's policy (a document or its JSON). Throws on unsupported policy features. */
  setPolicy(key: string, policy: PolicyDocument | string): void;
  addUser(options?: AddUserOptions): IamUser;
  addRole(options: AddRoleOptions): IamRole;
  /** Replaces a role's trust policy. */
  setRoleTrust(roleArn: string, trust: RoleTrust | PolicyDocument): void;
  addWebIdentityProvider(options?: AddWebIdentityProviderOptions): WebIdentityProvider;
  /** Issues a token of a registered provider (see {@link WebIdentityProvider.issueToken}). */
  issueWebIdentityToken(options: WebIdentityTokenOptions): string;
  /** Makes every temporary credential issued so far expired (`ExpiredTokenException`). */
  expireSessions(): void;
  /** Clears faults (releasing hung calls) and counters. Keys, users and roles stay. */
  reset(): void;
  /** Stops listening and destroys every connection, including hung calls. */
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Internal model
// ---------------------------------------------------------------------------------------------

const PARTITION = 'aws';
const BLOB_MAGIC = Buffer.from('LKMS', 'ascii');
const BLOB_VERSION = 1;
const MAX_BODY_BYTES = 1024 * 1024;
const RECENT_CALLS = 10_000;

interface Principal {
  readonly kind: 'user' | 'assumed-role';
  /** User ARN or `arn:aws:sts::<acct>:assumed-role/<role>/<session>`. */
  readonly arn: string;
  readonly accountId: string;
  /** Role ARN, for sessions. */
  readonly roleArn?: string;
  /** False when the principal has no identity-based policy allowing KMS (see `iamAllowsKms`). */
  readonly iamAllowsKms?: boolean;
}

interface Credential {
  readonly secretAccessKey: string;
  readonly sessionToken?: string;
  readonly principal: Principal;
  expiresAt?: number;
}

interface KeyRecord {
  readonly keyId: string;
  readonly arn: string;
  readonly region: string;
  readonly accountId: string;
  readonly keyUsage: AwsKeyUsage;
  readonly keySpec: AwsKeySpec;
  readonly material: Buffer | undefined;
  readonly multiRegion: boolean;
  readonly multiRegionKeyType?: 'PRIMARY' | 'REPLICA';
  readonly createdAt: Date;
  description: string;
  state: AwsKeyState;
  deletionDate?: Date;
  pendingWindowInDays?: number;
  policyText: string;
  policy: NormalizedPolicy;
}

interface AliasRecord {
  readonly name: string;
  readonly arn: string;
  targetKeyId: string;
  readonly createdAt: Date;
  updatedAt: Date;
}

interface RoleRecord {
  readonly name: string;
  readonly arn: string;
  readonly accountId: string;
  readonly roleId: string;
  readonly maxSessionDurationSeconds: number;
  readonly iamAllowsKms: boolean;
  trust: NormalizedPolicy;
}

interface OidcProvider {
  readonly arn: string;
  readonly issuer: string;
  /** Issuer without scheme: prefix of the `:aud` / `:sub` condition keys. */
  readonly conditionPrefix: string;
  readonly audiences: readonly string[];
  readonly accountId: string;
  readonly secret: Buffer;
}

interface Fault {
  readonly kind: 'throttle' | 'fail' | 'latency' | 'hang';
  readonly operations?: readonly string[];
  readonly keyArns?: readonly string[];
  remaining: number;
  readonly status?: 500 | 503;
  readonly ms?: number;
}

interface MutableCallRecord {
  service: 'kms' | 'sts';
  operation: string;
  region: string;
  principal: string | undefined;
  roleArn: string | undefined;
  keyArn: string | undefined;
  encryptionContext: Record<string, string> | undefined;
  status: number;
  error: string | undefined;
}

/**
 * An error answered on the wire. `code` is the AWS error name. `common` marks the errors both
 * services share (authentication, throttling, internal errors): `code` has the KMS spelling and the
 * STS handler renames them (`InvalidSignatureException` → `SignatureDoesNotMatch`...).
 */
class WireError extends Error {
  readonly code: string;
  readonly status: number;
  readonly common: boolean;
  constructor(code: string, message: string, status = 400, common = false) {
    super(message);
    this.code = code;
    this.status = status;
    this.common = common;
  }
}

function commonError(code: string, message: string, status = 400): WireError {
  return new WireError(code, message, status, true);
}

// ---------------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------------

type ConditionOperator = 'StringEquals' | 'StringNotEquals' | 'StringLike' | 'StringNotLike';
const CONDITION_OPERATORS = new Set<string>([
  'StringEquals',
  'StringNotEquals',
  'StringLike',
  'StringNotLike',
]);

interface NormalizedStatement {
  readonly effect: 'Allow' | 'Deny';
  readonly anyPrincipal: boolean;
  readonly aws: readonly string[];
  readonly federated: readonly string[];
  readonly actions: readonly RegExp[];
  readonly conditions: readonly { op: ConditionOperator; key: string; values: readonly string[] }[];
}

type NormalizedPolicy = readonly NormalizedStatement[];

/** Who is asking, for policy evaluation. */
interface PolicySubject {
  readonly principal?: Principal;
  /** Federated provider ARN (web identity). */
  readonly federated?: string;
}

function asList(value: string | readonly string[] | undefined): string[] {
  if (value === undefined) return [];
  return typeof value === 'string' ? [value] : [...value];
}

function globToRegExp(pattern: string, caseInsensitive: boolean): RegExp {
  const body = pattern
    .split('')
    .map((c) => (c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[\\^$.|+()[\]{}]/g, '\\$&')))
    .join('');
  return new RegExp(`^${body}$`, caseInsensitive ? 'is' : 's');
}

/** Condition keys are case-insensitive, except the EncryptionContext key after the prefix. */
function normalizeConditionKey(key: string): string {
  const lower = key.toLowerCase();
  const prefix = 'kms:encryptioncontext:';
  return lower.startsWith(prefix) ? prefix + key.slice(prefix.length) : lower;
}

/** Parses and checks a policy document; throws `Error` naming what is not supported. */
function normalizePolicy(input: PolicyDocument | string): NormalizedPolicy {
  let doc: unknown = input;
  if (typeof input === 'string') {
    try {
      doc = JSON.parse(input);
    } catch {
      throw new Error('policy is not valid JSON');
    }
  }
  if (typeof doc !== 'object' || doc === null || !('Statement' in doc)) {
    throw new Error('policy has no Statement');
  }
  const raw = (doc as PolicyDocument).Statement;
  const statements = Array.isArray(raw) ? raw : [raw];
  return statements.map((s, i): NormalizedStatement => {
    if (typeof s !== 'object' || s === null) throw new Error(`Statement[${i}] is not an object`);
    if (s.Effect !== 'Allow' && s.Effect !== 'Deny')
      throw new Error(`Statement[${i}].Effect must be Allow or Deny`);
    let anyPrincipal = false;
    let aws: string[] = [];
    let federated: string[] = [];
    if (s.Principal === '*') anyPrincipal = true;
    else if (typeof s.Principal === 'object' && s.Principal !== null) {
      for (const k of Object.keys(s.Principal)) {
        if (k !== 'AWS' && k !== 'Federated')
          throw new Error(`Statement[${i}].Principal.${k} is not supported`);
      }
      aws = asList(s.Principal.AWS);
      federated = asList(s.Principal.Federated);
      if (aws.includes('*')) anyPrincipal = true;
    } else throw new Error(`Statement[${i}].Principal is missing`);
    const actions = asList(s.Action);
    if (actions.length === 0) throw new Error(`Statement[${i}].Action is missing`);
    const conditions: { op: ConditionOperator; key: string; values: string[] }[] = [];
    for (const [op, entries] of Object.entries(s.Condition ?? {})) {
      if (!CONDITION_OPERATORS.has(op))
        throw new Error(`Statement[${i}]: condition operator ${op} is not supported`);
      for (const [key, values] of Object.entries(entries)) {
        conditions.push({
          op: op as ConditionOperator,
          key: normalizeConditionKey(key),
          values: asList(values),
        });
      }
    }
    return {
      effect: s.Effect,
      anyPrincipal,
      aws,
      federated,
      actions: actions.map((a) => globToRegExp(a, true)),
      conditions,
    };
  });
}

function principalMatches(pattern: string, p: Principal): boolean {
  if (pattern === '*') return true;
  // An account (or its root) in a key policy delegates to the account's IAM policies: it covers the
  // account's principals whose identity-based policies allow KMS (all, unless `iamAllowsKms: false`).
  if (/^\d{12}$/.test(pattern)) return p.accountId === pattern && p.iamAllowsKms !== false;
  const root = /^arn:aws:iam::(\d{12}):root$/.exec(pattern);
  if (root) return p.accountId === root[1] && p.iamAllowsKms !== false;
  if (pattern === p.arn) return true;
  // A role ARN (possibly with a path) matches every session of the role.
  return p.roleArn !== undefined && pattern === p.roleArn;
}

function statementMatches(
  s: NormalizedStatement,
  subject: PolicySubject,
  action: string,
  context: ReadonlyMap<string, string>,
): boolean {
  const who =
    (s.anyPrincipal && subject.principal !== undefined) ||
    (subject.principal !== undefined && s.aws.some((a) => principalMatches(a, subject.principal!))) ||
    (subject.federated !== undefined && s.federated.includes(subject.federated));
  if (!who) return false;
  if (!s.actions.some((re) => re.test(action))) return false;
  return s.conditions.every(({ op, key, values }) => {
    const actual = context.get(key);
    switch (op) {
      case 'StringEquals':
        return actual !== undefined && values.includes(actual);
      case 'StringNotEquals':
        return actual === undefined || !values.includes(actual);
      case 'StringLike':
        return actual !== undefined && values.some((v) => globToRegExp(v, false).test(actual));
      case 'StringNotLike':
        return actual === undefined || !values.some((v) => globToRegExp(v, false).test(actual));
    }
    return false;
  });
}

/** IAM evaluation, reduced: allowed when an Allow statement matches and no Deny does. */
function isAllowed(
  policy: NormalizedPolicy,
  subject: PolicySubject,
  action: string,
  context: ReadonlyMap<string, string>,
): boolean {
  let allowed = false;
  for (const s of policy) {
    if (!statementMatches(s, subject, action, context)) continue;
    if (s.effect === 'Deny') return false;
    allowed = true;
  }
  return allowed;
}

function defaultKeyPolicyText(accountId: string): string {
  return JSON.stringify(defaultKeyPolicy(accountId));
}

function defaultKeyPolicy(accountId: string): PolicyDocument {
  return {
    Version: '2012-10-17',
    Id: 'key-default-1',
    Statement: [
      {
        Sid: 'Enable IAM User Permissions',
        Effect: 'Allow',
        Principal: { AWS: `arn:aws:iam::${accountId}:root` },
        Action: 'kms:*',
        Resource: '*',
      },
    ],
  };
}

function trustToPolicy(
  trust: RoleTrust | PolicyDocument,
  providers: ReadonlyMap<string, OidcProvider>,
): PolicyDocument {
  if ('Statement' in trust) return trust;
  const statements: PolicyStatement[] = [];
  if (trust.principals !== undefined && trust.principals.length > 0) {
    statements.push({
      Effect: 'Allow',
      Principal: { AWS: trust.principals },
      Action: 'sts:AssumeRole',
      ...(trust.externalId === undefined
        ? {}
        : { Condition: { StringEquals: { 'sts:ExternalId': trust.externalId } } }),
    });
  }
  if (trust.webIdentity !== undefined) {
    const provider = providers.get(trust.webIdentity.providerArn);
    if (provider === undefined) throw new Error(`unknown OIDC provider ${trust.webIdentity.providerArn}`);
    const equals: Record<string, string> = {};
    if (trust.webIdentity.audience !== undefined)
      equals[`${provider.conditionPrefix}:aud`] = trust.webIdentity.audience;
    if (trust.webIdentity.subject !== undefined)
      equals[`${provider.conditionPrefix}:sub`] = trust.webIdentity.subject;
    statements.push({
      Effect: 'Allow',
      Principal: { Federated: provider.arn },
      Action: 'sts:AssumeRoleWithWebIdentity',
      ...(Object.keys(equals).length === 0 ? {} : { Condition: { StringEquals: equals } }),
    });
  }
  if (statements.length === 0) throw new Error('role trust names no principal and no web identity provider');
  return { Version: '2012-10-17', Statement: statements };
}

// ---------------------------------------------------------------------------------------------
// SigV4
// ---------------------------------------------------------------------------------------------

function escapeUri(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function hmac(key: Buffer | string, data: string): Buffer {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

function canonicalPath(rawPath: string): string {
  const segments: string[] = [];
  for (const seg of rawPath.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') segments.pop();
    else segments.push(escapeUri(decodeURIComponent(seg)));
  }
  const trailing = segments.length > 0 && rawPath.endsWith('/') ? '/' : '';
  return `/${segments.join('/')}${trailing}`;
}

function canonicalQuery(search: URLSearchParams): string {
  const pairs: [string, string][] = [];
  for (const [k, v] of search) {
    if (k.toLowerCase() === 'x-amz-signature') continue;
    pairs.push([escapeUri(k), escapeUri(v)]);
  }
  pairs.sort((a, b) => (a[0] === b[0] ? (a[1] < b[1] ? -1 : 1) : a[0] < b[0] ? -1 : 1));
  return pairs.map(([k, v]) => `${k}=${v}`).join('&');
}

function headerValue(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  if (v === undefined) return undefined;
  return Array.isArray(v) ? v.join(',') : v;
}

interface ParsedAuthorization {
  readonly accessKeyId: string;
  readonly date: string;
  readonly region: string;
  readonly service: string;
  readonly signedHeaders: readonly string[];
  readonly signature: string;
}

function parseAuthorization(value: string): ParsedAuthorization | undefined {
  const m =
    /^AWS4-HMAC-SHA256\s+Credential=([^/,\s]+)\/(\d{8})\/([^/,\s]+)\/([^/,\s]+)\/aws4_request,\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]{64})$/.exec(
      value.trim(),
    );
  if (!m) return undefined;
  return {
    accessKeyId: m[1]!,
    date: m[2]!,
    region: m[3]!,
    service: m[4]!,
    signedHeaders: m[5]!.split(';'),
    signature: m[6]!,
  };
}

function parseAmzDate(value: string): number | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(value);
  if (!m) return undefined;
  return Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!);
}

function formatAmzDate(ms: number): string {
  return new Date(ms)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');
}

// ---------------------------------------------------------------------------------------------
// Web identity tokens (HS256 JWT)
// ---------------------------------------------------------------------------------------------

function base64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

function signJwt(payload: Record<string, unknown>, secret: Buffer): string {
  const header = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = base64url(JSON.stringify(payload));
  const sig = createHmac('sha256', secret).update(`${header}.${body}`).digest('base64url');
  return `${header}.${body}.${sig}`;
}

interface DecodedJwt {
  readonly header: Record<string, unknown>;
  readonly payload: Record<string, unknown>;
  readonly signingInput: string;
  readonly signature: Buffer;
}

function decodeJwt(token: string): DecodedJwt | undefined {
  const parts = token.trim().split('.');
  if (parts.length !== 3) return undefined;
  try {
    const header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8')) as unknown;
    const payload = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as unknown;
    if (typeof header !== 'object' || header === null || typeof payload !== 'object' || payload === null) {
      return undefined;
    }
    return {
      header: header as Record<string, unknown>,
      payload: payload as Record<string, unknown>,
      signingInput: `${parts[0]}.${parts[1]}`,
      signature: Buffer.from(parts[2]!, 'base64url'),
    };
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

function randomAccessKeyId(prefix: 'AKIA' | 'ASIA'): string {
  const bytes = randomBytes(16);
  let out = prefix;
  for (const b of bytes) out += B32[b % 32];
  return out;
}

function xmlEscape(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

function isoSeconds(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function epochSeconds(d: Date): number {
  return d.getTime() / 1000;
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(new WireError('ValidationException', 'request body too large', 413));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function canonicalContext(ec: Readonly<Record<string, string>>): Buffer {
  const entries = Object.entries(ec).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return Buffer.from(JSON.stringify(entries), 'utf8');
}

function defaultUsageFor(spec: AwsKeySpec): AwsKeyUsage {
  if (spec.startsWith('HMAC_')) return 'GENERATE_VERIFY_MAC';
  if (spec.startsWith('ECC_')) return 'SIGN_VERIFY';
  return 'ENCRYPT_DECRYPT';
}

function usageAllowed(spec: AwsKeySpec, usage: AwsKeyUsage): boolean {
  if (spec === 'SYMMETRIC_DEFAULT') return usage === 'ENCRYPT_DECRYPT';
  if (spec.startsWith('RSA_')) return usage === 'ENCRYPT_DECRYPT' || usage === 'SIGN_VERIFY';
  if (spec.startsWith('ECC_')) return usage === 'SIGN_VERIFY' || usage === 'KEY_AGREEMENT';
  return usage === 'GENERATE_VERIFY_MAC';
}

const KEY_SPECS = new Set<string>([
  'SYMMETRIC_DEFAULT',
  'RSA_2048',
  'RSA_3072',
  'RSA_4096',
  'ECC_NIST_P256',
  'ECC_NIST_P384',
  'ECC_NIST_P521',
  'ECC_SECG_P256K1',
  'HMAC_224',
  'HMAC_256',
  'HMAC_384',
  'HMAC_512',
]);
const KEY_USAGES = new Set<string>([
  'ENCRYPT_DECRYPT',
  'SIGN_VERIFY',
  'GENERATE_VERIFY_MAC',
  'KEY_AGREEMENT',
]);

/** STS spelling of the errors shared by both services. */
const STS_ERROR_NAMES: Readonly<Record<string, string>> = {
  MissingAuthenticationTokenException: 'MissingAuthenticationToken',
  IncompleteSignatureException: 'IncompleteSignature',
  UnrecognizedClientException: 'InvalidClientTokenId',
  InvalidSignatureException: 'SignatureDoesNotMatch',
  ExpiredTokenException: 'ExpiredToken',
  ThrottlingException: 'Throttling',
  KMSInternalException: 'InternalFailure',
  ServiceUnavailableException: 'ServiceUnavailable',
};

const STS_ERROR_STATUS: Readonly<Record<string, number>> = {
  MissingAuthenticationToken: 403,
  InvalidClientTokenId: 403,
  SignatureDoesNotMatch: 403,
  ExpiredToken: 403,
  AccessDenied: 403,
  IDPRejectedClaim: 403,
};

type Json = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

class LocalAwsKms {
  readonly defaultRegion: string;
  readonly defaultAccount: string;
  private readonly maxSkewMs: number;
  /** Keys by ARN. */
  private readonly keys = new Map<string, KeyRecord>();
  /** Aliases by alias ARN. */
  private readonly aliases = new Map<string, AliasRecord>();
  private readonly credentials = new Map<string, Credential>();
  private readonly roles = new Map<string, RoleRecord>();
  private readonly providers = new Map<string, OidcProvider>();
  private readonly users = new Set<string>();
  private userSeq = 0;
  private providerSeq = 0;

  private faultList: Fault[] = [];
  private readonly hung = new Set<() => void>();
  private readonly sleeping = new Set<{ timer: NodeJS.Timeout; resolve: () => void }>();
  private closed = false;

  private callLog: MutableCallRecord[] = [];
  private totalCalls = 0;
  private byOperation = new Map<string, number>();
  private byKey = new Map<string, number>();
  private byPrincipal = new Map<string, number>();
  private byError = new Map<string, number>();
  private errorTotal = 0;

  constructor(options: AwsKmsServerOptions) {
    this.defaultRegion = options.region ?? 'us-east-1';
    this.defaultAccount = options.accountId ?? '111122223333';
    if (!/^\d{12}$/.test(this.defaultAccount)) throw new Error('accountId must be 12 digits');
    this.maxSkewMs = (options.maxClockSkewSeconds ?? 900) * 1000;
  }

  // ----- administration (test-side API) -----

  createKey(o: CreateKeyOptions = {}, keyId?: string): KeyRecord {
    const region = o.region ?? this.defaultRegion;
    const accountId = o.accountId ?? this.defaultAccount;
    const keySpec = o.keySpec ?? 'SYMMETRIC_DEFAULT';
    if (!KEY_SPECS.has(keySpec))
      throw new WireError('ValidationException', `KeySpec ${keySpec} is not supported`);
    const keyUsage = o.keyUsage ?? defaultUsageFor(keySpec);
    if (!KEY_USAGES.has(keyUsage))
      throw new WireError('ValidationException', `KeyUsage ${keyUsage} is not supported`);
    if (!usageAllowed(keySpec, keyUsage)) {
      throw new WireError(
        'ValidationException',
        `KeyUsage ${keyUsage} is not compatible with KeySpec ${keySpec}`,
      );
    }
    const multiRegion = o.multiRegion === true;
    const id = keyId ?? (multiRegion ? `mrk-${randomBytes(16).toString('hex')}` : randomUUID());
    const policy = o.policy ?? defaultKeyPolicy(accountId);
    const key: KeyRecord = {
      keyId: id,
      arn: `arn:${PARTITION}:kms:${region}:${accountId}:key/${id}`,
      region,
      accountId,
      keyUsage,
      keySpec,
      material: keySpec === 'SYMMETRIC_DEFAULT' ? randomBytes(32) : undefined,
      multiRegion,
      ...(multiRegion ? { multiRegionKeyType: 'PRIMARY' as const } : {}),
      createdAt: new Date(),
      description: o.description ?? '',
      state: o.state ?? 'Enabled',
      policyText: typeof policy === 'string' ? policy : JSON.stringify(policy),
      policy: normalizePolicy(policy),
    };
    this.keys.set(key.arn, key);
    return key;
  }

  replicateKey(primaryRef: string, replicaRegion: string): KeyRecord {
    const primary = this.adminKey(primaryRef);
    if (!primary.multiRegion || primary.multiRegionKeyType !== 'PRIMARY') {
      throw new Error(`${primary.arn} is not a multi-region primary key`);
    }
    if (replicaRegion === primary.region) throw new Error('a replica must be in another region');
    const arn = `arn:${PARTITION}:kms:${replicaRegion}:${primary.accountId}:key/${primary.keyId}`;
    if (this.keys.has(arn)) throw new Error(`${arn} already exists`);
    const replica: KeyRecord = {
      ...primary,
      arn,
      region: replicaRegion,
      multiRegionKeyType: 'REPLICA',
      createdAt: new Date(),
      state: 'Enabled',
    };
    this.keys.set(arn, replica);
    return replica;
  }

  createAlias(aliasName: string, keyRef: string): string {
    const key = this.adminKey(keyRef);
    return this.putAlias(key, aliasName).arn;
  }

  updateAlias(alias: string, keyRef: string): void {
    const record = this.adminAlias(alias);
    const key = this.adminKey(keyRef);
    this.moveAlias(record, key);
  }

  deleteAlias(alias: string): void {
    this.aliases.delete(this.adminAlias(alias).arn);
  }

  /** Alias lookup for the test-side API: alias ARN, or alias name in the default region and account. */
  private adminAlias(ref: string): AliasRecord {
    const arn = ref.startsWith('arn:')
      ? ref
      : `arn:${PARTITION}:kms:${this.defaultRegion}:${this.defaultAccount}:${ref}`;
    const alias = this.aliases.get(arn);
    if (alias === undefined) throw new Error(`no alias ${ref}`);
    return alias;
  }

  /** Points an alias at another key of its account and region, of the same key type (as KMS requires). */
  private moveAlias(alias: AliasRecord, key: KeyRecord): void {
    const [, , , region, accountId] = alias.arn.split(':');
    if (key.region !== region || key.accountId !== accountId) {
      throw new WireError(
        'ValidationException',
        `${key.arn} is not in the account and region of ${alias.arn}`,
      );
    }
    const current = this.keys.get(`arn:${PARTITION}:kms:${region}:${accountId}:key/${alias.targetKeyId}`);
    if (current !== undefined && (current.keySpec !== key.keySpec || current.keyUsage !== key.keyUsage)) {
      throw new WireError(
        'ValidationException',
        `${alias.arn} points to a ${current.keySpec} ${current.keyUsage} key; the new target must be of the same type`,
      );
    }
    alias.targetKeyId = key.keyId;
    alias.updatedAt = new Date();
  }

  setPolicy(keyRef: string, policy: PolicyDocument | string): void {
    const key = this.adminKey(keyRef);
    key.policy = normalizePolicy(policy);
    key.policyText = typeof policy === 'string' ? policy : JSON.stringify(policy);
  }

  addUser(o: AddUserOptions = {}): IamUser {
    const accountId = o.accountId ?? this.defaultAccount;
    const name = o.name ?? `user-${++this.userSeq}`;
    const arn = `arn:${PARTITION}:iam::${accountId}:user/${name}`;
    if (this.users.has(arn)) throw new Error(`${arn} already exists`);
    const accessKeyId = o.accessKeyId ?? randomAccessKeyId('AKIA');
    if (this.credentials.has(accessKeyId)) throw new Error(`access key ${accessKeyId} already exists`);
    const secretAccessKey = o.secretAccessKey ?? randomBytes(30).toString('base64');
    this.users.add(arn);
    this.credentials.set(accessKeyId, {
      secretAccessKey,
      principal: {
        kind: 'user',
        arn,
        accountId,
        ...(o.iamAllowsKms === false ? { iamAllowsKms: false } : {}),
      },
    });
    return { name, arn, accountId, accessKeyId, secretAccessKey };
  }

  addRole(o: AddRoleOptions): IamRole {
    const accountId = o.accountId ?? this.defaultAccount;
    if (!/^[\w+=,.@-]{1,64}$/.test(o.name)) throw new Error(`invalid role name ${o.name}`);
    const arn = `arn:${PARTITION}:iam::${accountId}:role/${o.name}`;
    if (this.roles.has(arn)) throw new Error(`${arn} already exists`);
    const role: RoleRecord = {
      name: o.name,
      arn,
      accountId,
      roleId: `AROA${randomAccessKeyId('AKIA').slice(4)}`,
      maxSessionDurationSeconds: o.maxSessionDurationSeconds ?? 3600,
      iamAllowsKms: o.iamAllowsKms !== false,
      trust: normalizePolicy(trustToPolicy(o.trust, this.providers)),
    };
    this.roles.set(arn, role);
    return { name: role.name, arn, accountId };
  }

  setRoleTrust(roleArn: string, trust: RoleTrust | PolicyDocument): void {
    const role = this.roles.get(roleArn);
    if (role === undefined) throw new Error(`no role ${roleArn}`);
    role.trust = normalizePolicy(trustToPolicy(trust, this.providers));
  }

  addWebIdentityProvider(o: AddWebIdentityProviderOptions = {}): WebIdentityProvider {
    const issuer = o.issuer ?? `https://oidc.local.test/${++this.providerSeq}`;
    const url = new URL(issuer);
    if (url.protocol !== 'https:') throw new Error('issuer must be an https URL');
    const conditionPrefix = `${url.host}${url.pathname === '/' ? '' : url.pathname}`.toLowerCase();
    const accountId = o.accountId ?? this.defaultAccount;
    const provider: OidcProvider = {
      arn: `arn:${PARTITION}:iam::${accountId}:oidc-provider/${conditionPrefix}`,
      issuer,
      conditionPrefix,
      audiences: o.audiences ?? ['sts.amazonaws.com'],
      accountId,
      secret: randomBytes(32),
    };
    if (this.providers.has(provider.arn)) throw new Error(`${provider.arn} already exists`);
    this.providers.set(provider.arn, provider);
    return {
      arn: provider.arn,
      issuer,
      audiences: provider.audiences,
      issueToken: (t) => this.issueToken(provider, t),
    };
  }

  issueWebIdentityToken(o: WebIdentityTokenOptions): string {
    const provider =
      o.issuer === undefined
        ? this.providers.values().next().value
        : [...this.providers.values()].find((p) => p.issuer === o.issuer);
    if (provider === undefined) throw new Error(`no OIDC provider for issuer ${o.issuer ?? '(any)'}`);
    return this.issueToken(provider, o);
  }

  private issueToken(provider: OidcProvider, o: Omit<WebIdentityTokenOptions, 'issuer'>): string {
    const now = Math.floor(Date.now() / 1000);
    return signJwt(
      {
        ...o.claims,
        iss: provider.issuer,
        sub: o.subject,
        aud: o.audience ?? provider.audiences[0] ?? 'sts.amazonaws.com',
        iat: now,
        exp: now + (o.expiresInSeconds ?? 3600),
      },
      provider.secret,
    );
  }

  expireSessions(): void {
    for (const c of this.credentials.values()) {
      if (c.sessionToken !== undefined) c.expiresAt = Date.now() - 1000;
    }
  }

  info(key: KeyRecord): AwsKmsKeyInfo {
    return {
      keyId: key.keyId,
      arn: key.arn,
      region: key.region,
      accountId: key.accountId,
      keyUsage: key.keyUsage,
      keySpec: key.keySpec,
      keyState: key.state,
      multiRegion: key.multiRegion,
      ...(key.multiRegionKeyType === undefined ? {} : { multiRegionKeyType: key.multiRegionKeyType }),
    };
  }

  /** Key lookup for the test-side API: ARNs exactly, bare ids and alias names in the default region. */
  adminKey(ref: string): KeyRecord {
    const m = /^arn:aws:kms:([^:]+):(\d{12}):(key|alias)\/(.+)$/.exec(ref);
    if (m) {
      const key = this.lookupKey(m[1]!, m[2]!, ref);
      if (key === undefined) throw new Error(`no key ${ref}`);
      return key;
    }
    const inRegion = [...this.keys.values()].filter((k) => k.region === this.defaultRegion);
    if (ref.startsWith('alias/')) {
      const alias = [...this.aliases.values()].find(
        (a) => a.name === ref && a.arn.split(':')[3] === this.defaultRegion,
      );
      const key = alias && inRegion.find((k) => k.keyId === alias.targetKeyId);
      if (key === undefined) throw new Error(`no alias ${ref} in ${this.defaultRegion}`);
      return key;
    }
    const matches = inRegion.filter((k) => k.keyId === ref);
    if (matches.length !== 1) {
      throw new Error(
        matches.length === 0 ? `no key ${ref} in ${this.defaultRegion}` : `key id ${ref} is ambiguous`,
      );
    }
    return matches[0]!;
  }

  // ----- faults and counters -----

  addFault(
    kind: Fault['kind'],
    count: number,
    filter: FaultFilter & { status?: 500 | 503; ms?: number } = {},
  ): void {
    if (kind !== 'latency' && kind !== 'hang' && (!Number.isInteger(count) || count < 1)) {
      throw new Error('fault count must be a positive integer');
    }
    const fault: Fault = {
      kind,
      remaining: count,
      ...(filter.operation === undefined ? {} : { operations: asList(filter.operation) }),
      ...(filter.key === undefined ? {} : { keyArns: this.faultKeyArns(filter.key) }),
      ...(filter.status === undefined ? {} : { status: filter.status }),
      ...(filter.ms === undefined ? {} : { ms: filter.ms }),
    };
    this.faultList.push(fault);
  }

  /** A key filter matches the key and, for multi-region keys, all its replicas. */
  private faultKeyArns(ref: string): string[] {
    const key = this.adminKey(ref);
    return [...this.keys.values()]
      .filter((k) => k.keyId === key.keyId && k.accountId === key.accountId)
      .map((k) => k.arn);
  }

  clearFaults(): void {
    this.faultList = [];
    const release = [...this.hung];
    this.hung.clear();
    for (const r of release) r();
  }

  get hungCount(): number {
    return this.hung.size;
  }

  resetCounters(): void {
    this.callLog = [];
    this.totalCalls = 0;
    this.errorTotal = 0;
    this.byOperation = new Map();
    this.byKey = new Map();
    this.byPrincipal = new Map();
    this.byError = new Map();
  }

  readonly counters: AwsKmsCounters = (() => {
    const self = this;
    return {
      get total() {
        return self.totalCalls;
      },
      operation: (name: string) => self.byOperation.get(name) ?? 0,
      key: (ref: string) => {
        const m = /^arn:aws:kms:[^:]+:\d{12}:key\//.exec(ref);
        const arn = m ? ref : self.adminKey(ref).arn;
        return self.byKey.get(arn) ?? 0;
      },
      principal: (arn: string) => self.byPrincipal.get(arn) ?? 0,
      errors: (name?: string) => (name === undefined ? self.errorTotal : (self.byError.get(name) ?? 0)),
      get calls(): readonly AwsKmsCallRecord[] {
        return self.callLog;
      },
      reset: () => self.resetCounters(),
    };
  })();

  private bump(map: Map<string, number>, k: string): void {
    map.set(k, (map.get(k) ?? 0) + 1);
  }

  private count(rec: MutableCallRecord): void {
    this.totalCalls++;
    this.bump(this.byOperation, rec.operation);
    if (rec.keyArn !== undefined) this.bump(this.byKey, rec.keyArn);
    if (rec.principal !== undefined) this.bump(this.byPrincipal, rec.principal);
    if (rec.roleArn !== undefined) this.bump(this.byPrincipal, rec.roleArn);
    this.callLog.push(rec);
    if (this.callLog.length > RECENT_CALLS) this.callLog.splice(0, this.callLog.length - RECENT_CALLS);
  }

  private finish(rec: MutableCallRecord, status: number, error?: string): void {
    rec.status = status;
    if (error !== undefined) {
      rec.error = error;
      this.errorTotal++;
      this.bump(this.byError, error);
    }
  }

  private matchingFaults(operation: string, keyArn: string | undefined): Fault[] {
    return this.faultList.filter(
      (f) =>
        (f.operations === undefined || f.operations.includes(operation)) &&
        (f.keyArns === undefined || (keyArn !== undefined && f.keyArns.includes(keyArn))),
    );
  }

  /** Applies latency, hang and one counted fault (throttle/fail) to a call. */
  private async applyFaults(operation: string, keyArn: string | undefined): Promise<void> {
    const faults = this.matchingFaults(operation, keyArn);
    const delay = faults.filter((f) => f.kind === 'latency').reduce((sum, f) => sum + (f.ms ?? 0), 0);
    if (delay > 0) await this.sleep(delay);
    if (faults.some((f) => f.kind === 'hang' && this.faultList.includes(f))) {
      await new Promise<void>((resolve) => this.hung.add(resolve));
    }
    if (this.closed) return;
    const counted = faults.find((f) => (f.kind === 'throttle' || f.kind === 'fail') && f.remaining > 0);
    if (counted === undefined) return;
    counted.remaining--;
    if (counted.remaining === 0) this.faultList = this.faultList.filter((f) => f !== counted);
    if (counted.kind === 'throttle') throw commonError('ThrottlingException', 'Rate exceeded', 400);
    if (counted.status === 503) {
      throw commonError('ServiceUnavailableException', 'Service is unavailable. Retry the request.', 503);
    }
    throw commonError('KMSInternalException', 'An internal error occurred. Retry the request.', 500);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const entry = {
        timer: setTimeout(() => {
          this.sleeping.delete(entry);
          resolve();
        }, ms),
        resolve,
      };
      this.sleeping.add(entry);
    });
  }

  shutdown(): void {
    this.closed = true;
    this.faultList = [];
    for (const s of this.sleeping) {
      clearTimeout(s.timer);
      s.resolve();
    }
    this.sleeping.clear();
    const release = [...this.hung];
    this.hung.clear();
    for (const r of release) r();
  }

  // ----- HTTP -----

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let body: Buffer;
    try {
      body = await readBody(req);
    } catch {
      if (!res.headersSent) res.destroy();
      return;
    }
    const target = headerValue(req, 'x-amz-target');
    const contentType = headerValue(req, 'content-type') ?? '';
    if (req.method === 'POST' && target?.startsWith('TrentService.')) {
      await this.handleKms(req, res, target.slice('TrentService.'.length), body);
    } else if (req.method === 'POST' && contentType.startsWith('application/x-www-form-urlencoded')) {
      await this.handleSts(req, res, body);
    } else {
      this.sendJson(res, 400, { __type: 'UnknownOperationException', message: 'Unknown operation' });
    }
  }

  private send(res: ServerResponse, status: number, contentType: string, payload: string): void {
    if (this.closed || res.destroyed || res.writableEnded) return;
    const buf = Buffer.from(payload, 'utf8');
    res.writeHead(status, {
      'content-type': contentType,
      'content-length': buf.length,
      'x-amzn-requestid': randomUUID(),
    });
    res.end(buf);
  }

  private sendJson(res: ServerResponse, status: number, payload: unknown): void {
    this.send(res, status, 'application/x-amz-json-1.1', JSON.stringify(payload));
  }

  /**
   * Verifies a request's SigV4 signature and returns its principal. Error names are the KMS ones;
   * the STS handler renames them.
   */
  private authenticate(
    req: IncomingMessage,
    body: Buffer,
    service: 'kms' | 'sts',
  ): { principal: Principal; region: string } {
    const authorization = headerValue(req, 'authorization');
    if (authorization === undefined) {
      throw commonError('MissingAuthenticationTokenException', 'Missing Authentication Token');
    }
    const auth = parseAuthorization(authorization);
    if (auth === undefined) {
      throw commonError(
        'IncompleteSignatureException',
        'Authorization header requires Credential, SignedHeaders and Signature parameters.',
      );
    }
    const invalidToken = commonError(
      'UnrecognizedClientException',
      'The security token included in the request is invalid.',
    );
    const cred = this.credentials.get(auth.accessKeyId);
    if (cred === undefined) throw invalidToken;
    const token = headerValue(req, 'x-amz-security-token');
    if (cred.sessionToken !== undefined || token !== undefined) {
      if (
        cred.sessionToken === undefined ||
        token === undefined ||
        !timingSafeEqual(sha256Buf(token), sha256Buf(cred.sessionToken))
      ) {
        throw invalidToken;
      }
    }
    if (service !== auth.service) {
      throw commonError(
        'InvalidSignatureException',
        `Credential should be scoped to correct service: '${service}'.`,
      );
    }
    if (!/^[a-z]{2,4}(-[a-z]+)+-\d{1,2}$/.test(auth.region)) {
      throw commonError('InvalidSignatureException', 'Credential should be scoped to a valid region.');
    }
    const amzDate = headerValue(req, 'x-amz-date');
    const signedAt = amzDate === undefined ? undefined : parseAmzDate(amzDate);
    if (amzDate === undefined || signedAt === undefined || !amzDate.startsWith(auth.date)) {
      throw commonError(
        'IncompleteSignatureException',
        'Date must be in ISO-8601 basic format and match the credential scope.',
      );
    }
    const now = Date.now();
    if (Math.abs(now - signedAt) > this.maxSkewMs) {
      throw commonError(
        'InvalidSignatureException',
        `Signature expired: ${amzDate} is now earlier than ${formatAmzDate(now - this.maxSkewMs)} (${formatAmzDate(now)} - ${this.maxSkewMs / 60_000} min.)`,
      );
    }
    if (!auth.signedHeaders.includes('host')) {
      throw commonError(
        'InvalidSignatureException',
        "'Host' must be a 'SignedHeader' in the AWS Authorization.",
      );
    }
    const url = new URL(req.url ?? '/', 'http://localhost');
    const canonicalHeaders = auth.signedHeaders
      .map((name) => {
        const v = (headerValue(req, name) ?? '')
          .replace(/[\r\n]/g, ' ')
          .replace(/[ \t]+/g, ' ')
          .trim();
        return `${name}:${v}\n`;
      })
      .join('');
    const payloadHash = headerValue(req, 'x-amz-content-sha256') ?? sha256Hex(body);
    const canonicalRequest = [
      req.method ?? 'POST',
      canonicalPath(url.pathname),
      canonicalQuery(url.searchParams),
      canonicalHeaders,
      auth.signedHeaders.join(';'),
      payloadHash,
    ].join('\n');
    const scope = `${auth.date}/${auth.region}/${auth.service}/aws4_request`;
    const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256Hex(canonicalRequest)].join('\n');
    const kDate = hmac(`AWS4${cred.secretAccessKey}`, auth.date);
    const kSigning = hmac(hmac(hmac(kDate, auth.region), auth.service), 'aws4_request');
    const expected = createHmac('sha256', kSigning).update(stringToSign, 'utf8').digest();
    if (!timingSafeEqual(expected, Buffer.from(auth.signature, 'hex'))) {
      throw commonError(
        'InvalidSignatureException',
        'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.',
      );
    }
    if (cred.expiresAt !== undefined && cred.expiresAt <= now) {
      throw commonError('ExpiredTokenException', 'The security token included in the request is expired');
    }
    return { principal: cred.principal, region: auth.region };
  }

  /** A call record before authentication: filled in as the request is understood. */
  private newCallRecord(service: 'kms' | 'sts', operation: string): MutableCallRecord {
    return {
      service,
      operation,
      region: this.defaultRegion,
      principal: undefined,
      roleArn: undefined,
      keyArn: undefined,
      encryptionContext: undefined,
      status: 0,
      error: undefined,
    };
  }

  // ----- KMS -----

  private async handleKms(
    req: IncomingMessage,
    res: ServerResponse,
    operation: string,
    body: Buffer,
  ): Promise<void> {
    const rec = this.newCallRecord('kms', operation);
    let counted = false;
    try {
      let input: Json;
      try {
        const parsed = JSON.parse(body.length === 0 ? '{}' : body.toString('utf8')) as unknown;
        if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
          throw new Error('not an object');
        input = parsed as Json;
      } catch {
        throw new WireError('SerializationException', 'Start of structure or map found where not expected.');
      }
      const { principal, region } = this.authenticate(req, body, 'kms');
      rec.region = region;
      rec.principal = principal.arn;
      rec.roleArn = principal.roleArn;
      rec.keyArn = this.peekKeyArn(input, region, principal);
      const ec = input.EncryptionContext ?? input.SourceEncryptionContext;
      if (typeof ec === 'object' && ec !== null) rec.encryptionContext = ec as Record<string, string>;
      this.count(rec);
      counted = true;
      await this.applyFaults(operation, rec.keyArn);
      if (this.closed) return;
      const out = this.kmsOperation(operation, input, { principal, region });
      this.finish(rec, 200);
      this.sendJson(res, 200, out);
    } catch (e) {
      const err =
        e instanceof WireError
          ? e
          : new WireError(
              'KMSInternalException',
              `Internal error: ${(e as Error).message ?? String(e)}`,
              500,
            );
      if (!counted) this.count(rec);
      this.finish(rec, err.status, err.code);
      this.sendJson(res, err.status, { __type: err.code, message: err.message });
    }
  }

  /** The key a KMS call targets, for counters and fault filters; never throws. */
  private peekKeyArn(input: Json, region: string, principal: Principal): string | undefined {
    try {
      const ref = [input.KeyId, input.TargetKeyId, input.SourceKeyId].find((v) => typeof v === 'string');
      if (typeof ref === 'string') return this.lookupKey(region, principal.accountId, ref)?.arn;
      if (typeof input.CiphertextBlob === 'string') {
        const blob = parseBlob(Buffer.from(input.CiphertextBlob, 'base64'));
        if (blob) return `arn:${PARTITION}:kms:${region}:${blob.accountId}:key/${blob.keyId}`;
      }
    } catch {
      // counters only
    }
    return undefined;
  }

  /** Resolves a key reference in a region; `callerAccount` applies to bare ids and alias names. */
  private lookupKey(region: string, callerAccount: string, ref: string): KeyRecord | undefined {
    const arn = /^arn:([^:]*):kms:([^:]*):([^:]*):(key|alias)\/(.+)$/.exec(ref);
    if (arn) {
      if (arn[1] !== PARTITION || arn[2] !== region) return undefined;
      if (arn[4] === 'key') return this.keys.get(ref);
      const alias = this.aliases.get(ref);
      return alias && this.keys.get(`arn:${PARTITION}:kms:${region}:${arn[3]}:key/${alias.targetKeyId}`);
    }
    if (ref.startsWith('alias/')) {
      const alias = this.aliases.get(`arn:${PARTITION}:kms:${region}:${callerAccount}:${ref}`);
      return (
        alias && this.keys.get(`arn:${PARTITION}:kms:${region}:${callerAccount}:key/${alias.targetKeyId}`)
      );
    }
    return this.keys.get(`arn:${PARTITION}:kms:${region}:${callerAccount}:key/${ref}`);
  }

  private requireKey(region: string, principal: Principal, ref: unknown, field = 'keyId'): KeyRecord {
    if (typeof ref !== 'string' || ref.length === 0 || ref.length > 2048) {
      throw new WireError(
        'ValidationException',
        `1 validation error detected: Value at '${field}' failed to satisfy constraint: Member must have length greater than or equal to 1`,
      );
    }
    const key = this.lookupKey(region, principal.accountId, ref);
    if (key !== undefined) return key;
    const arn = /^arn:[^:]*:kms:([^:]*):/.exec(ref);
    if (arn && arn[1] !== region) throw new WireError('NotFoundException', `Invalid arn ${arn[1]}`);
    if (ref.includes('alias/')) {
      const aliasArn = ref.startsWith('arn:')
        ? ref
        : `arn:${PARTITION}:kms:${region}:${principal.accountId}:${ref}`;
      throw new WireError('NotFoundException', `Alias ${aliasArn} is not found.`);
    }
    const keyArn = ref.startsWith('arn:')
      ? ref
      : `arn:${PARTITION}:kms:${region}:${principal.accountId}:key/${ref}`;
    throw new WireError('NotFoundException', `Key '${keyArn}' does not exist`);
  }

  private authorize(key: KeyRecord, principal: Principal, action: string, ec?: Record<string, string>): void {
    const context = new Map<string, string>([
      ['aws:principalarn', principal.roleArn ?? principal.arn],
      ['aws:principalaccount', principal.accountId],
      ['kms:calleraccount', principal.accountId],
    ]);
    for (const [k, v] of Object.entries(ec ?? {})) context.set(`kms:encryptioncontext:${k}`, v);
    if (!isAllowed(key.policy, { principal }, action, context)) {
      throw new WireError(
        'AccessDeniedException',
        `User: ${principal.arn} is not authorized to perform: ${action} on resource: ${key.arn} because no resource-based policy allows the ${action} action`,
      );
    }
  }

  /** State and usage checks of cryptographic operations. */
  private requireUsable(key: KeyRecord, operation: string): Buffer {
    switch (key.state) {
      case 'Enabled':
        break;
      case 'Disabled':
        throw new WireError('DisabledException', `${key.arn} is disabled.`);
      case 'PendingDeletion':
        throw new WireError('KMSInvalidStateException', `${key.arn} is pending deletion.`);
      case 'PendingReplicaDeletion':
        throw new WireError('KMSInvalidStateException', `${key.arn} is pending replica deletion.`);
      default:
        throw new WireError('KMSInvalidStateException', `${key.arn} is ${key.state.toLowerCase()}.`);
    }
    if (key.keyUsage !== 'ENCRYPT_DECRYPT') {
      throw new WireError(
        'InvalidKeyUsageException',
        `${key.arn} key usage is ${key.keyUsage} which is not valid for ${operation}.`,
      );
    }
    if (key.material === undefined) {
      throw new WireError(
        'InvalidKeyUsageException',
        `${key.arn} key spec ${key.keySpec} does not support the SYMMETRIC_DEFAULT algorithm for ${operation}.`,
      );
    }
    return key.material;
  }

  private kmsOperation(operation: string, input: Json, ctx: { principal: Principal; region: string }): Json {
    switch (operation) {
      case 'Encrypt':
        return this.opEncrypt(input, ctx);
      case 'Decrypt':
        return this.opDecrypt(input, ctx);
      case 'ReEncrypt':
        return this.opReEncrypt(input, ctx);
      case 'GenerateDataKey':
        return this.opGenerateDataKey(input, ctx, true);
      case 'GenerateDataKeyWithoutPlaintext':
        return this.opGenerateDataKey(input, ctx, false);
      case 'DescribeKey':
        return this.opDescribeKey(input, ctx);
      case 'EnableKey':
      case 'DisableKey':
        return this.opEnableDisable(input, ctx, operation === 'EnableKey');
      case 'ScheduleKeyDeletion':
        return this.opScheduleKeyDeletion(input, ctx);
      case 'CancelKeyDeletion':
        return this.opCancelKeyDeletion(input, ctx);
      case 'CreateKey':
        return this.opCreateKey(input, ctx);
      case 'CreateAlias':
        return this.opCreateAlias(input, ctx);
      case 'UpdateAlias':
        return this.opUpdateAlias(input, ctx);
      case 'DeleteAlias':
        return this.opDeleteAlias(input, ctx);
      case 'ListAliases':
        return this.opListAliases(input, ctx);
      case 'ReplicateKey':
        return this.opReplicateKey(input, ctx);
      case 'GetKeyPolicy':
        return this.opGetKeyPolicy(input, ctx);
      case 'PutKeyPolicy':
        return this.opPutKeyPolicy(input, ctx);
      default:
        throw new WireError(
          'UnknownOperationException',
          `Operation ${operation} is not supported by this local server`,
        );
    }
  }

  private opEncrypt(input: Json, { principal, region }: { principal: Principal; region: string }): Json {
    const key = this.requireKey(region, principal, input.KeyId);
    const plaintext = blobInput(input.Plaintext, 'plaintext', 4096);
    const ec = contextInput(input.EncryptionContext);
    checkAlgorithm(input.EncryptionAlgorithm, key);
    this.authorize(key, principal, 'kms:Encrypt', ec);
    const material = this.requireUsable(key, 'Encrypt');
    return {
      CiphertextBlob: sealBlob(key, material, plaintext, ec).toString('base64'),
      KeyId: key.arn,
      EncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
    };
  }

  /** Shared by Decrypt and ReEncrypt (source side). */
  private openBlob(
    ctx: { principal: Principal; region: string },
    blobValue: unknown,
    keyRef: unknown,
    ec: Record<string, string>,
    action: string,
    operation: string,
  ): { key: KeyRecord; plaintext: Buffer } {
    const raw = blobInput(blobValue, 'ciphertextBlob', 6144);
    const blob = parseBlob(raw);
    let key: KeyRecord;
    if (keyRef !== undefined) {
      key = this.requireKey(ctx.region, ctx.principal, keyRef);
      if (blob !== undefined && (blob.keyId !== key.keyId || blob.accountId !== key.accountId)) {
        this.authorize(key, ctx.principal, action, ec);
        throw new WireError(
          'IncorrectKeyException',
          'The key ID in the request does not identify a CMK that can perform this operation.',
        );
      }
    } else {
      const found =
        blob === undefined
          ? undefined
          : this.keys.get(`arn:${PARTITION}:kms:${ctx.region}:${blob.accountId}:key/${blob.keyId}`);
      if (found === undefined) throw new WireError('InvalidCiphertextException', '');
      key = found;
    }
    this.authorize(key, ctx.principal, action, ec);
    const material = this.requireUsable(key, operation);
    if (blob === undefined) throw new WireError('InvalidCiphertextException', '');
    const plaintext = openSealed(blob, material, ec);
    if (plaintext === undefined) throw new WireError('InvalidCiphertextException', '');
    return { key, plaintext };
  }

  private opDecrypt(input: Json, ctx: { principal: Principal; region: string }): Json {
    const ec = contextInput(input.EncryptionContext);
    if (input.EncryptionAlgorithm !== undefined && input.EncryptionAlgorithm !== 'SYMMETRIC_DEFAULT') {
      throw new WireError(
        'InvalidKeyUsageException',
        `EncryptionAlgorithm ${String(input.EncryptionAlgorithm)} is not valid`,
      );
    }
    const { key, plaintext } = this.openBlob(
      ctx,
      input.CiphertextBlob,
      input.KeyId,
      ec,
      'kms:Decrypt',
      'Decrypt',
    );
    return {
      KeyId: key.arn,
      Plaintext: plaintext.toString('base64'),
      EncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
    };
  }

  private opReEncrypt(input: Json, ctx: { principal: Principal; region: string }): Json {
    const sourceEc = contextInput(input.SourceEncryptionContext);
    const destEc = contextInput(input.DestinationEncryptionContext);
    const dest = this.requireKey(ctx.region, ctx.principal, input.DestinationKeyId, 'destinationKeyId');
    const { key: source, plaintext } = this.openBlob(
      ctx,
      input.CiphertextBlob,
      input.SourceKeyId,
      sourceEc,
      'kms:ReEncryptFrom',
      'ReEncrypt',
    );
    this.authorize(dest, ctx.principal, 'kms:ReEncryptTo', destEc);
    const material = this.requireUsable(dest, 'ReEncrypt');
    return {
      CiphertextBlob: sealBlob(dest, material, plaintext, destEc).toString('base64'),
      SourceKeyId: source.arn,
      KeyId: dest.arn,
      SourceEncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
      DestinationEncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
    };
  }

  private opGenerateDataKey(
    input: Json,
    { principal, region }: { principal: Principal; region: string },
    withPlaintext: boolean,
  ): Json {
    const key = this.requireKey(region, principal, input.KeyId);
    const ec = contextInput(input.EncryptionContext);
    let size: number;
    if (input.KeySpec !== undefined && input.NumberOfBytes !== undefined) {
      throw new WireError('ValidationException', 'Please specify either number of bytes or key spec.');
    }
    if (input.KeySpec === 'AES_256') size = 32;
    else if (input.KeySpec === 'AES_128') size = 16;
    else if (typeof input.NumberOfBytes === 'number' && Number.isInteger(input.NumberOfBytes)) {
      size = input.NumberOfBytes;
      if (size < 1 || size > 1024) {
        throw new WireError(
          'ValidationException',
          "1 validation error detected: Value at 'numberOfBytes' failed to satisfy constraint: Member must have value less than or equal to 1024",
        );
      }
    } else throw new WireError('ValidationException', 'Please specify either number of bytes or key spec.');
    this.authorize(
      key,
      principal,
      withPlaintext ? 'kms:GenerateDataKey' : 'kms:GenerateDataKeyWithoutPlaintext',
      ec,
    );
    const material = this.requireUsable(
      key,
      withPlaintext ? 'GenerateDataKey' : 'GenerateDataKeyWithoutPlaintext',
    );
    const plaintext = randomBytes(size);
    const out: Json = {
      CiphertextBlob: sealBlob(key, material, plaintext, ec).toString('base64'),
      KeyId: key.arn,
    };
    if (withPlaintext) out.Plaintext = plaintext.toString('base64');
    return out;
  }

  private keyMetadata(key: KeyRecord): Json {
    const related = key.multiRegion
      ? [...this.keys.values()].filter((k) => k.keyId === key.keyId && k.accountId === key.accountId)
      : [];
    const primary = related.find((k) => k.multiRegionKeyType === 'PRIMARY');
    return {
      AWSAccountId: key.accountId,
      KeyId: key.keyId,
      Arn: key.arn,
      CreationDate: epochSeconds(key.createdAt),
      Enabled: key.state === 'Enabled',
      Description: key.description,
      KeyUsage: key.keyUsage,
      KeyState: key.state,
      ...(key.deletionDate === undefined ? {} : { DeletionDate: epochSeconds(key.deletionDate) }),
      ...(key.pendingWindowInDays === undefined
        ? {}
        : { PendingDeletionWindowInDays: key.pendingWindowInDays }),
      Origin: 'AWS_KMS',
      KeyManager: 'CUSTOMER',
      CustomerMasterKeySpec: key.keySpec,
      KeySpec: key.keySpec,
      ...(key.keyUsage === 'ENCRYPT_DECRYPT'
        ? {
            EncryptionAlgorithms:
              key.keySpec === 'SYMMETRIC_DEFAULT'
                ? ['SYMMETRIC_DEFAULT']
                : ['RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256'],
          }
        : {}),
      MultiRegion: key.multiRegion,
      ...(key.multiRegion
        ? {
            MultiRegionConfiguration: {
              MultiRegionKeyType: key.multiRegionKeyType,
              ...(primary === undefined ? {} : { PrimaryKey: { Arn: primary.arn, Region: primary.region } }),
              ReplicaKeys: related
                .filter((k) => k.multiRegionKeyType === 'REPLICA')
                .map((k) => ({ Arn: k.arn, Region: k.region })),
            },
          }
        : {}),
    };
  }

  private opDescribeKey(input: Json, { principal, region }: { principal: Principal; region: string }): Json {
    const key = this.requireKey(region, principal, input.KeyId);
    this.authorize(key, principal, 'kms:DescribeKey');
    return { KeyMetadata: this.keyMetadata(key) };
  }

  private opEnableDisable(
    input: Json,
    { principal, region }: { principal: Principal; region: string },
    enable: boolean,
  ): Json {
    const key = this.requireKey(region, principal, input.KeyId);
    this.authorize(key, principal, enable ? 'kms:EnableKey' : 'kms:DisableKey');
    if (key.state !== 'Enabled' && key.state !== 'Disabled') {
      throw new WireError(
        'KMSInvalidStateException',
        `${key.arn} is ${key.state === 'PendingDeletion' ? 'pending deletion' : key.state}.`,
      );
    }
    key.state = enable ? 'Enabled' : 'Disabled';
    return {};
  }

  private opScheduleKeyDeletion(
    input: Json,
    { principal, region }: { principal: Principal; region: string },
  ): Json {
    const key = this.requireKey(region, principal, input.KeyId);
    this.authorize(key, principal, 'kms:ScheduleKeyDeletion');
    const days = input.PendingWindowInDays ?? 30;
    if (typeof days !== 'number' || !Number.isInteger(days) || days < 7 || days > 30) {
      throw new WireError(
        'ValidationException',
        "1 validation error detected: Value at 'pendingWindowInDays' failed to satisfy constraint: Member must have value between 7 and 30",
      );
    }
    if (key.state === 'PendingDeletion')
      throw new WireError('KMSInvalidStateException', `${key.arn} is pending deletion.`);
    key.state = 'PendingDeletion';
    key.pendingWindowInDays = days;
    key.deletionDate = new Date(Date.now() + days * 86_400_000);
    return {
      KeyId: key.arn,
      DeletionDate: epochSeconds(key.deletionDate),
      KeyState: key.state,
      PendingWindowInDays: days,
    };
  }

  private opCancelKeyDeletion(
    input: Json,
    { principal, region }: { principal: Principal; region: string },
  ): Json {
    const key = this.requireKey(region, principal, input.KeyId);
    this.authorize(key, principal, 'kms:CancelKeyDeletion');
    if (key.state !== 'PendingDeletion') {
      throw new WireError('KMSInvalidStateException', `${key.arn} is not pending deletion.`);
    }
    key.state = 'Disabled';
    delete key.deletionDate;
    delete key.pendingWindowInDays;
    return { KeyId: key.arn };
  }

  /** CreateKey: any authenticated principal may create keys in its own account (no IAM policies here). */
  private opCreateKey(input: Json, { principal, region }: { principal: Principal; region: string }): Json {
    const spec = input.KeySpec ?? input.CustomerMasterKeySpec;
    let policy: PolicyDocument | string | undefined;
    if (input.Policy !== undefined) {
      if (typeof input.Policy !== 'string')
        throw new WireError('ValidationException', 'Policy must be a string');
      try {
        normalizePolicy(input.Policy);
      } catch (e) {
        throw new WireError('MalformedPolicyDocumentException', (e as Error).message);
      }
      policy = input.Policy;
    }
    const key = this.createKey({
      region,
      accountId: principal.accountId,
      ...(typeof spec === 'string' ? { keySpec: spec as AwsKeySpec } : {}),
      ...(typeof input.KeyUsage === 'string' ? { keyUsage: input.KeyUsage as AwsKeyUsage } : {}),
      ...(typeof input.Description === 'string' ? { description: input.Description } : {}),
      ...(input.MultiRegion === true ? { multiRegion: true } : {}),
      ...(policy === undefined ? {} : { policy }),
    });
    return { KeyMetadata: this.keyMetadata(key) };
  }

  private putAlias(key: KeyRecord, aliasName: string): AliasRecord {
    if (!/^alias\/[a-zA-Z0-9/_-]{1,250}$/.test(aliasName)) {
      throw new WireError(
        'ValidationException',
        `1 validation error detected: Value '${aliasName}' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^alias/[a-zA-Z0-9/_-]+$`,
      );
    }
    if (aliasName.startsWith('alias/aws/')) {
      throw new WireError('NotAuthorizedException', 'Cannot create alias with prefix alias/aws/');
    }
    const arn = `arn:${PARTITION}:kms:${key.region}:${key.accountId}:${aliasName}`;
    if (this.aliases.has(arn))
      throw new WireError('AlreadyExistsException', `An alias with the name ${arn} already exists`);
    const now = new Date();
    const alias: AliasRecord = {
      name: aliasName,
      arn,
      targetKeyId: key.keyId,
      createdAt: now,
      updatedAt: now,
    };
    this.aliases.set(arn, alias);
    return alias;
  }

  private opCreateAlias(input: Json, { principal, region }: { principal: Principal; region: string }): Json {
    if (typeof input.TargetKeyId === 'string' && input.TargetKeyId.includes('alias/')) {
      throw new WireError('ValidationException', 'TargetKeyId must be a key id or key ARN');
    }
    const key = this.requireKey(region, principal, input.TargetKeyId, 'targetKeyId');
    this.authorize(key, principal, 'kms:CreateAlias');
    if (key.accountId !== principal.accountId) {
      throw new WireError('AccessDeniedException', 'Aliases can only be created in the caller account');
    }
    this.putAlias(key, typeof input.AliasName === 'string' ? input.AliasName : '');
    return {};
  }

  /** The alias of an `AliasName` (`alias/...`, in the caller's account and the request's region). */
  private requireAlias(region: string, principal: Principal, name: unknown): AliasRecord {
    if (typeof name !== 'string' || !/^alias\/[a-zA-Z0-9/_-]{1,250}$/.test(name)) {
      throw new WireError(
        'ValidationException',
        `1 validation error detected: Value '${String(name)}' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^alias/[a-zA-Z0-9/_-]+$`,
      );
    }
    if (name.startsWith('alias/aws/')) {
      throw new WireError('NotAuthorizedException', 'Cannot modify an AWS managed alias');
    }
    const arn = `arn:${PARTITION}:kms:${region}:${principal.accountId}:${name}`;
    const alias = this.aliases.get(arn);
    if (alias === undefined) throw new WireError('NotFoundException', `Alias ${arn} is not found.`);
    return alias;
  }

  /** UpdateAlias: kms:UpdateAlias on the current and the new target key (key policies). */
  private opUpdateAlias(input: Json, { principal, region }: { principal: Principal; region: string }): Json {
    if (typeof input.TargetKeyId === 'string' && input.TargetKeyId.includes('alias/')) {
      throw new WireError('ValidationException', 'TargetKeyId must be a key id or key ARN');
    }
    const alias = this.requireAlias(region, principal, input.AliasName);
    const key = this.requireKey(region, principal, input.TargetKeyId, 'targetKeyId');
    const current = this.keys.get(
      `arn:${PARTITION}:kms:${region}:${principal.accountId}:key/${alias.targetKeyId}`,
    );
    if (current !== undefined) this.authorize(current, principal, 'kms:UpdateAlias');
    this.authorize(key, principal, 'kms:UpdateAlias');
    if (key.accountId !== principal.accountId) {
      throw new WireError('AccessDeniedException', 'An alias can only point to a key of the caller account');
    }
    if (key.state === 'PendingDeletion') {
      throw new WireError('KMSInvalidStateException', `${key.arn} is pending deletion.`);
    }
    this.moveAlias(alias, key);
    return {};
  }

  /** DeleteAlias: kms:DeleteAlias on the alias's key (key policy). */
  private opDeleteAlias(input: Json, { principal, region }: { principal: Principal; region: string }): Json {
    const alias = this.requireAlias(region, principal, input.AliasName);
    const key = this.keys.get(
      `arn:${PARTITION}:kms:${region}:${principal.accountId}:key/${alias.targetKeyId}`,
    );
    if (key !== undefined) this.authorize(key, principal, 'kms:DeleteAlias');
    this.aliases.delete(alias.arn);
    return {};
  }

  /**
   * ReplicateKey: a replica of a multi-region primary key in `ReplicaRegion` (same key id and
   * material), with `Policy` or the default key policy. kms:ReplicateKey on the primary.
   */
  private opReplicateKey(input: Json, { principal, region }: { principal: Principal; region: string }): Json {
    const primary = this.requireKey(region, principal, input.KeyId);
    this.authorize(primary, principal, 'kms:ReplicateKey');
    const replicaRegion = input.ReplicaRegion;
    if (typeof replicaRegion !== 'string' || !/^[a-z]{2,4}(-[a-z]+)+-\d{1,2}$/.test(replicaRegion)) {
      throw new WireError(
        'ValidationException',
        "1 validation error detected: Value at 'replicaRegion' failed to satisfy constraint: Member must be a region name",
      );
    }
    if (!primary.multiRegion) {
      throw new WireError('UnsupportedOperationException', `${primary.arn} is not a multi-Region key.`);
    }
    if (primary.multiRegionKeyType !== 'PRIMARY') {
      throw new WireError('UnsupportedOperationException', `${primary.arn} is not a primary key.`);
    }
    if (replicaRegion === primary.region) {
      throw new WireError(
        'ValidationException',
        'The replica must be in another Region than its primary key.',
      );
    }
    if (primary.state !== 'Enabled' && primary.state !== 'Disabled') {
      throw new WireError('KMSInvalidStateException', `${primary.arn} is ${primary.state}.`);
    }
    const arn = `arn:${PARTITION}:kms:${replicaRegion}:${primary.accountId}:key/${primary.keyId}`;
    if (this.keys.has(arn)) throw new WireError('AlreadyExistsException', `${arn} already exists`);
    let policyText = defaultKeyPolicyText(primary.accountId);
    if (input.Policy !== undefined) {
      if (typeof input.Policy !== 'string')
        throw new WireError('ValidationException', 'Policy must be a string');
      try {
        normalizePolicy(input.Policy);
      } catch (e) {
        throw new WireError('MalformedPolicyDocumentException', (e as Error).message);
      }
      policyText = input.Policy;
    }
    const replica = this.replicateKey(primary.arn, replicaRegion);
    replica.policyText = policyText;
    replica.policy = normalizePolicy(policyText);
    if (typeof input.Description === 'string') replica.description = input.Description;
    return {
      ReplicaKeyMetadata: this.keyMetadata(replica),
      ReplicaPolicy: policyText,
      ReplicaTags: [],
    };
  }

  private opListAliases(input: Json, { principal, region }: { principal: Principal; region: string }): Json {
    let keyId: string | undefined;
    if (input.KeyId !== undefined) {
      const key = this.requireKey(region, principal, input.KeyId);
      this.authorize(key, principal, 'kms:ListAliases');
      keyId = key.keyId;
    }
    const prefix = `arn:${PARTITION}:kms:${region}:${principal.accountId}:alias/`;
    const aliases = [...this.aliases.values()]
      .filter((a) => a.arn.startsWith(prefix) && (keyId === undefined || a.targetKeyId === keyId))
      .map((a) => ({
        AliasName: a.name,
        AliasArn: a.arn,
        TargetKeyId: a.targetKeyId,
        CreationDate: epochSeconds(a.createdAt),
        LastUpdatedDate: epochSeconds(a.updatedAt),
      }));
    return { Aliases: aliases, Truncated: false };
  }

  private opGetKeyPolicy(input: Json, { principal, region }: { principal: Principal; region: string }): Json {
    const key = this.requireKey(region, principal, input.KeyId);
    this.authorize(key, principal, 'kms:GetKeyPolicy');
    return { Policy: key.policyText, PolicyName: 'default' };
  }

  private opPutKeyPolicy(input: Json, { principal, region }: { principal: Principal; region: string }): Json {
    const key = this.requireKey(region, principal, input.KeyId);
    this.authorize(key, principal, 'kms:PutKeyPolicy');
    if (typeof input.Policy !== 'string') throw new WireError('ValidationException', 'Policy is required');
    try {
      key.policy = normalizePolicy(input.Policy);
    } catch (e) {
      throw new WireError('MalformedPolicyDocumentException', (e as Error).message);
    }
    key.policyText = input.Policy;
    return {};
  }

  // ----- STS -----

  private async handleSts(req: IncomingMessage, res: ServerResponse, body: Buffer): Promise<void> {
    const params = new URLSearchParams(body.toString('utf8'));
    const operation = params.get('Action') ?? '';
    const rec = this.newCallRecord('sts', operation);
    let counted = false;
    try {
      let principal: Principal | undefined;
      if (operation !== 'AssumeRoleWithWebIdentity') {
        const auth = this.authenticate(req, body, 'sts');
        principal = auth.principal;
        rec.region = auth.region;
        rec.principal = principal.arn;
        rec.roleArn = principal.roleArn;
      }
      this.count(rec);
      counted = true;
      await this.applyFaults(operation, undefined);
      if (this.closed) return;
      let result: string;
      switch (operation) {
        case 'AssumeRole':
          result = this.opAssumeRole(params, principal!);
          break;
        case 'AssumeRoleWithWebIdentity':
          result = this.opAssumeRoleWithWebIdentity(params);
          break;
        case 'GetCallerIdentity':
          result = `<Arn>${xmlEscape(principal!.arn)}</Arn><UserId>${xmlEscape(principal!.arn)}</UserId><Account>${principal!.accountId}</Account>`;
          break;
        default:
          throw new WireError(
            'InvalidAction',
            `Could not find operation ${operation} for version 2011-06-15`,
          );
      }
      this.finish(rec, 200);
      const requestId = randomUUID();
      this.send(
        res,
        200,
        'text/xml',
        `<${operation}Response xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><${operation}Result>${result}</${operation}Result><ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata></${operation}Response>`,
      );
    } catch (e) {
      const wire =
        e instanceof WireError
          ? e
          : new WireError('InternalFailure', `Internal error: ${(e as Error).message}`, 500);
      const code = wire.common ? (STS_ERROR_NAMES[wire.code] ?? wire.code) : wire.code;
      const status = STS_ERROR_STATUS[code] ?? wire.status;
      if (!counted) this.count(rec);
      this.finish(rec, status, code);
      this.send(
        res,
        status,
        'text/xml',
        `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>${status >= 500 ? 'Receiver' : 'Sender'}</Type><Code>${xmlEscape(code)}</Code><Message>${xmlEscape(wire.message)}</Message></Error><RequestId>${randomUUID()}</RequestId></ErrorResponse>`,
      );
    }
  }

  private sessionParams(
    params: URLSearchParams,
    role: RoleRecord | undefined,
  ): { sessionName: string; duration: number } {
    const sessionName = params.get('RoleSessionName') ?? '';
    if (!/^[\w+=,.@-]{2,64}$/.test(sessionName)) {
      throw new WireError(
        'ValidationError',
        `1 validation error detected: Value '${sessionName}' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*`,
      );
    }
    const durationText = params.get('DurationSeconds');
    const duration = durationText === null ? 3600 : Number(durationText);
    if (!Number.isInteger(duration) || duration < 900) {
      throw new WireError(
        'ValidationError',
        "1 validation error detected: Value at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to 900",
      );
    }
    if (role !== undefined && duration > role.maxSessionDurationSeconds) {
      throw new WireError(
        'ValidationError',
        'The requested DurationSeconds exceeds the MaxSessionDuration set for this role.',
      );
    }
    return { sessionName, duration };
  }

  private roleFromParams(params: URLSearchParams): { roleArn: string; role: RoleRecord | undefined } {
    const roleArn = params.get('RoleArn') ?? '';
    if (!/^arn:aws:iam::\d{12}:role\/[\w+=,.@/-]+$/.test(roleArn)) {
      throw new WireError('ValidationError', `${roleArn || 'RoleArn'} is invalid`);
    }
    return { roleArn, role: this.roles.get(roleArn) };
  }

  private issueSession(role: RoleRecord, sessionName: string, duration: number): string {
    const accessKeyId = randomAccessKeyId('ASIA');
    const secretAccessKey = randomBytes(30).toString('base64');
    const sessionToken = randomBytes(96).toString('base64');
    const expiresAt = Date.now() + duration * 1000;
    const arn = `arn:${PARTITION}:sts::${role.accountId}:assumed-role/${role.name}/${sessionName}`;
    this.credentials.set(accessKeyId, {
      secretAccessKey,
      sessionToken,
      expiresAt,
      principal: {
        kind: 'assumed-role',
        arn,
        accountId: role.accountId,
        roleArn: role.arn,
        ...(role.iamAllowsKms ? {} : { iamAllowsKms: false }),
      },
    });
    return (
      `<AssumedRoleUser><Arn>${xmlEscape(arn)}</Arn><AssumedRoleId>${role.roleId}:${xmlEscape(sessionName)}</AssumedRoleId></AssumedRoleUser>` +
      `<Credentials><AccessKeyId>${accessKeyId}</AccessKeyId><SecretAccessKey>${xmlEscape(secretAccessKey)}</SecretAccessKey>` +
      `<SessionToken>${xmlEscape(sessionToken)}</SessionToken><Expiration>${isoSeconds(new Date(expiresAt))}</Expiration></Credentials>`
    );
  }

  private opAssumeRole(params: URLSearchParams, caller: Principal): string {
    const { roleArn, role } = this.roleFromParams(params);
    const { sessionName, duration } = this.sessionParams(params, role);
    const externalId = params.get('ExternalId');
    if (externalId !== null && !/^[\w+=,.@:/-]{2,1224}$/.test(externalId)) {
      throw new WireError('ValidationError', "Value at 'externalId' failed to satisfy constraint");
    }
    const context = new Map<string, string>([
      ['aws:principalarn', caller.roleArn ?? caller.arn],
      ['aws:principalaccount', caller.accountId],
      ['sts:rolesessionname', sessionName],
    ]);
    if (externalId !== null) context.set('sts:externalid', externalId);
    if (role === undefined || !isAllowed(role.trust, { principal: caller }, 'sts:AssumeRole', context)) {
      throw new WireError(
        'AccessDenied',
        `User: ${caller.arn} is not authorized to perform: sts:AssumeRole on resource: ${roleArn}`,
        403,
      );
    }
    return this.issueSession(role, sessionName, duration);
  }

  private opAssumeRoleWithWebIdentity(params: URLSearchParams): string {
    const { role } = this.roleFromParams(params);
    const { sessionName, duration } = this.sessionParams(params, role);
    const token = params.get('WebIdentityToken') ?? '';
    const jwt = decodeJwt(token);
    if (jwt === undefined) {
      throw new WireError(
        'InvalidIdentityToken',
        'The ID Token provided is not a valid JWT. (You may see this error if you sent an Access Token)',
      );
    }
    const notAuthorized = new WireError(
      'AccessDenied',
      'Not authorized to perform sts:AssumeRoleWithWebIdentity',
      403,
    );
    if (role === undefined) throw notAuthorized;
    const iss = jwt.payload.iss;
    const provider = [...this.providers.values()].find(
      (p) => p.issuer === iss && p.accountId === role.accountId,
    );
    if (provider === undefined) {
      throw new WireError(
        'InvalidIdentityToken',
        `No OpenIDConnect provider found in your account for ${String(iss)}`,
      );
    }
    const expected = createHmac('sha256', provider.secret).update(jwt.signingInput).digest();
    if (
      jwt.header.alg !== 'HS256' ||
      jwt.signature.length !== expected.length ||
      !timingSafeEqual(jwt.signature, expected)
    ) {
      throw new WireError('InvalidIdentityToken', 'Incorrect token signature');
    }
    const now = Math.floor(Date.now() / 1000);
    const exp = jwt.payload.exp;
    if (typeof exp !== 'number' || exp <= now) {
      throw new WireError(
        'ExpiredTokenException',
        `Token expired: current date/time ${now} must be before the expiration date/time ${String(exp)}`,
      );
    }
    const rawAud = jwt.payload.aud;
    const audiences = (Array.isArray(rawAud) ? rawAud : [rawAud]).filter(
      (a): a is string => typeof a === 'string',
    );
    const aud = audiences.find((a) => provider.audiences.includes(a));
    if (aud === undefined) throw new WireError('InvalidIdentityToken', 'Incorrect token audience');
    const sub = typeof jwt.payload.sub === 'string' ? jwt.payload.sub : '';
    const context = new Map<string, string>([
      [`${provider.conditionPrefix}:aud`, aud],
      [`${provider.conditionPrefix}:sub`, sub],
      [`${provider.conditionPrefix}:iss`, provider.issuer],
    ]);
    if (!isAllowed(role.trust, { federated: provider.arn }, 'sts:AssumeRoleWithWebIdentity', context)) {
      throw notAuthorized;
    }
    return (
      `<SubjectFromWebIdentityToken>${xmlEscape(sub)}</SubjectFromWebIdentityToken><Audience>${xmlEscape(aud)}</Audience>` +
      `<Provider>${xmlEscape(provider.conditionPrefix)}</Provider>${this.issueSession(role, sessionName, duration)}`
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Ciphertext blobs
// ---------------------------------------------------------------------------------------------

interface ParsedBlob {
  readonly accountId: string;
  readonly keyId: string;
  readonly header: Buffer;
  readonly iv: Buffer;
  readonly tag: Buffer;
  readonly ciphertext: Buffer;
}

function sealBlob(key: KeyRecord, material: Buffer, plaintext: Buffer, ec: Record<string, string>): Buffer {
  const id = Buffer.from(key.keyId, 'ascii');
  const header = Buffer.concat([
    BLOB_MAGIC,
    Buffer.from([BLOB_VERSION]),
    Buffer.from(key.accountId, 'ascii'),
    Buffer.from([id.length]),
    id,
  ]);
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', material, iv);
  cipher.setAAD(Buffer.concat([header, canonicalContext(ec)]));
  const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([header, iv, cipher.getAuthTag(), ciphertext]);
}

function parseBlob(raw: Buffer): ParsedBlob | undefined {
  const fixed = BLOB_MAGIC.length + 1 + 12 + 1;
  if (
    raw.length < fixed ||
    !raw.subarray(0, BLOB_MAGIC.length).equals(BLOB_MAGIC) ||
    raw[BLOB_MAGIC.length] !== BLOB_VERSION
  ) {
    return undefined;
  }
  const accountId = raw.subarray(BLOB_MAGIC.length + 1, BLOB_MAGIC.length + 13).toString('ascii');
  const idLength = raw[fixed - 1]!;
  const headerEnd = fixed + idLength;
  if (!/^\d{12}$/.test(accountId) || raw.length < headerEnd + 12 + 16) return undefined;
  return {
    accountId,
    keyId: raw.subarray(fixed, headerEnd).toString('ascii'),
    header: raw.subarray(0, headerEnd),
    iv: raw.subarray(headerEnd, headerEnd + 12),
    tag: raw.subarray(headerEnd + 12, headerEnd + 28),
    ciphertext: raw.subarray(headerEnd + 28),
  };
}

function openSealed(blob: ParsedBlob, material: Buffer, ec: Record<string, string>): Buffer | undefined {
  try {
    const decipher = createDecipheriv('aes-256-gcm', material, blob.iv);
    decipher.setAAD(Buffer.concat([blob.header, canonicalContext(ec)]));
    decipher.setAuthTag(blob.tag);
    return Buffer.concat([decipher.update(blob.ciphertext), decipher.final()]);
  } catch {
    return undefined;
  }
}

function sha256Buf(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

function blobInput(value: unknown, field: string, max: number): Buffer {
  if (typeof value !== 'string') {
    throw new WireError(
      'ValidationException',
      `1 validation error detected: Value at '${field}' failed to satisfy constraint: Member must not be null`,
    );
  }
  const buf = Buffer.from(value, 'base64');
  if (buf.length === 0 || buf.length > max) {
    throw new WireError(
      'ValidationException',
      `1 validation error detected: Value at '${field}' failed to satisfy constraint: Member must have length less than or equal to ${max}`,
    );
  }
  return buf;
}

function contextInput(value: unknown): Record<string, string> {
  if (value === undefined || value === null) return {};
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new WireError('SerializationException', 'EncryptionContext must be a map of strings');
  }
  for (const v of Object.values(value)) {
    if (typeof v !== 'string')
      throw new WireError('SerializationException', 'EncryptionContext must be a map of strings');
  }
  return value as Record<string, string>;
}

function checkAlgorithm(value: unknown, key: KeyRecord): void {
  if (value !== undefined && value !== 'SYMMETRIC_DEFAULT' && key.keySpec === 'SYMMETRIC_DEFAULT') {
    throw new WireError(
      'InvalidKeyUsageException',
      `${key.arn} does not support encryption algorithm ${String(value)}`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------------------------

/**
 * Starts a local AWS KMS + STS server on 127.0.0.1.
 *
 * ```ts
 * const aws = await startAwsKmsServer();
 * const user = aws.addUser();
 * const key = aws.createKey();
 * const kms = new KMSClient({ endpoint: aws.endpoint, region: aws.region, credentials: user });
 * ```
 */
export async function startAwsKmsServer(options: AwsKmsServerOptions = {}): Promise<AwsKmsServer> {
  const state = new LocalAwsKms(options);
  const server: Server = createServer((req, res) => {
    state.handle(req, res).catch(() => {
      if (!res.headersSent) res.destroy();
    });
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const endpoint = `http://127.0.0.1:${port}`;
  let closing: Promise<void> | undefined;

  const faults: AwsKmsFaults = {
    throttle: (count, filter) => state.addFault('throttle', count, filter),
    fail: (count, o) => state.addFault('fail', count, o),
    latency: (ms, filter) => {
      if (!Number.isFinite(ms) || ms < 0) throw new Error('latency must be a non-negative number of ms');
      state.addFault('latency', Number.POSITIVE_INFINITY, { ...filter, ms });
    },
    hang: (filter) => state.addFault('hang', Number.POSITIVE_INFINITY, filter),
    get hungRequests() {
      return state.hungCount;
    },
    clear: () => state.clearFaults(),
  };

  return {
    endpoint,
    stsEndpoint: endpoint,
    region: state.defaultRegion,
    accountId: state.defaultAccount,
    faults,
    counters: state.counters,
    createKey: (o) => state.info(state.createKey(o)),
    replicateKey: (primary, region) => state.info(state.replicateKey(primary, region)),
    createAlias: (alias, key) => state.createAlias(alias, key),
    updateAlias: (alias, key) => state.updateAlias(alias, key),
    deleteAlias: (alias) => state.deleteAlias(alias),
    getPolicy: (key) => state.adminKey(key).policyText,
    describeKey: (key) => state.info(state.adminKey(key)),
    setKeyState: (key, s) => {
      const record = state.adminKey(key);
      record.state = s;
      if (s === 'PendingDeletion') {
        record.pendingWindowInDays = 30;
        record.deletionDate = new Date(Date.now() + 30 * 86_400_000);
      } else {
        delete record.pendingWindowInDays;
        delete record.deletionDate;
      }
    },
    setPolicy: (key, policy) => state.setPolicy(key, policy),
    addUser: (o) => state.addUser(o),
    addRole: (o) => state.addRole(o),
    setRoleTrust: (roleArn, trust) => state.setRoleTrust(roleArn, trust),
    addWebIdentityProvider: (o) => state.addWebIdentityProvider(o),
    issueWebIdentityToken: (o) => state.issueWebIdentityToken(o),
    expireSessions: () => state.expireSessions(),
    reset: () => {
      state.clearFaults();
      state.resetCounters();
    },
    close: () => {
      closing ??= new Promise<void>((resolve) => {
        state.shutdown();
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
