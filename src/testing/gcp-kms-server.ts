// One file: the gRPC handlers share one in-memory key model and IAM check (see docs/architecture.md).
/**
 * A local Google Cloud KMS server for tests. It serves `google.cloud.kms.v1.KeyManagementService`
 * over gRPC, loaded from the `.proto` files shipped in `@google-cloud/kms`, so the real
 * `KeyManagementServiceClient` (google-gax + @grpc/grpc-js) runs unchanged against it.
 *
 * Model:
 * - Resources are those of Cloud KMS: `projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>/
 *   cryptoKeyVersions/<n>`. Projects and locations exist implicitly; key rings, keys and versions
 *   are created through the handle or through the gRPC methods.
 * - `ENCRYPT_DECRYPT` keys use real AES-256-GCM (node:crypto) with 32 random bytes per version. A
 *   ciphertext is self-describing: `"GK"`, format byte `0x01`, the version number (uint32 BE), a
 *   96-bit IV, the GCM ciphertext and the 128-bit tag. The GCM AAD is the 7-byte header, the
 *   CryptoKey name and the request's `additional_authenticated_data`, so a ciphertext only decrypts
 *   with the same key and the same AAD. `Decrypt` takes the CryptoKey name and finds the version in
 *   the ciphertext, as Cloud KMS does. Keys of other purposes hold metadata only: cryptographic
 *   calls on them are refused (`FAILED_PRECONDITION`).
 * - CRC32C integrity fields are checked and returned as Cloud KMS does: a request checksum that does
 *   not match its field is `INVALID_ARGUMENT`; responses carry `ciphertext_crc32c`,
 *   `verified_plaintext_crc32c`, `verified_additional_authenticated_data_crc32c` (Encrypt) and
 *   `plaintext_crc32c` (Decrypt).
 * - Authentication: every call needs `authorization: Bearer <token>` metadata. Accepted tokens are
 *   (a) RS256 JWTs self-signed with the private key of a service account created by
 *   {@link GcpKmsServer.createServiceAccount} (what google-auth-library's `JWT` client sends for a
 *   service-account key: `iss` = `sub` = client email, `kid` = private key id, and either a `scope`
 *   claim naming cloud-platform / cloudkms or an `aud` claim naming `https://cloudkms.googleapis.com/`
 *   or this server's loopback URL), and (b) opaque access tokens made by
 *   {@link GcpKmsServer.issueAccessToken}. Anything else is `UNAUTHENTICATED`.
 *   Note: google-auth-library never exchanges service-account keys at `token_uri` for this client
 *   (it signs JWTs itself; its token exchange URL is hard-coded to oauth2.googleapis.com anyway), so
 *   the server has no token endpoint.
 * - Authorization: IAM-like policies (`{ bindings: [{ role, members }] }`) on projects, key rings and
 *   keys, inherited downwards, with the predefined Cloud KMS roles. Missing permission is
 *   `PERMISSION_DENIED` whether or not the resource exists; `NOT_FOUND` needs a permission granted on
 *   an existing ancestor, as with real IAM.
 * - Over an insecure channel google-gax sends no credentials by itself (it only attaches call
 *   credentials to TLS channels): give each call `server.callOptions(key)`, or use `gcpKms({ insecure:
 *   true })`, which signs a token per call.
 *
 * Binds to 127.0.0.1 only. Not for production use.
 */
import { crc32c } from '../crypto/crc32c.ts';
import { createCipheriv, createDecipheriv, createPublicKey, generateKeyPair, randomBytes } from 'node:crypto';
import { createSign, createVerify, type KeyObject } from 'node:crypto';
import { createRequire } from 'node:module';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { CallOptions, ClientOptions } from 'google-gax';

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/** Cloud KMS key purposes. */
export type GcpKeyPurpose =
  | 'ENCRYPT_DECRYPT'
  | 'ASYMMETRIC_SIGN'
  | 'ASYMMETRIC_DECRYPT'
  | 'RAW_ENCRYPT_DECRYPT'
  | 'MAC'
  | 'KEY_ENCAPSULATION'
  | 'AES_WRAPPING';

/** Cloud KMS key version states the server models. */
export type GcpKeyVersionState =
  | 'PENDING_GENERATION'
  | 'ENABLED'
  | 'DISABLED'
  | 'DESTROY_SCHEDULED'
  | 'DESTROYED';

export type GcpProtectionLevel = 'SOFTWARE' | 'HSM' | 'EXTERNAL' | 'EXTERNAL_VPC';

/** The KeyManagementService methods the server implements (others answer `UNIMPLEMENTED`). */
export type GcpKmsMethod =
  | 'Encrypt'
  | 'Decrypt'
  | 'GetKeyRing'
  | 'ListKeyRings'
  | 'CreateKeyRing'
  | 'GetCryptoKey'
  | 'ListCryptoKeys'
  | 'CreateCryptoKey'
  | 'UpdateCryptoKeyPrimaryVersion'
  | 'GetCryptoKeyVersion'
  | 'ListCryptoKeyVersions'
  | 'CreateCryptoKeyVersion'
  | 'UpdateCryptoKeyVersion'
  | 'DestroyCryptoKeyVersion'
  | 'RestoreCryptoKeyVersion';

/** gRPC status names, as `grpc.status` spells them. */
export type GrpcStatusName =
  | 'OK'
  | 'CANCELLED'
  | 'UNKNOWN'
  | 'INVALID_ARGUMENT'
  | 'DEADLINE_EXCEEDED'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'PERMISSION_DENIED'
  | 'RESOURCE_EXHAUSTED'
  | 'FAILED_PRECONDITION'
  | 'ABORTED'
  | 'OUT_OF_RANGE'
  | 'UNIMPLEMENTED'
  | 'INTERNAL'
  | 'UNAVAILABLE'
  | 'DATA_LOSS'
  | 'UNAUTHENTICATED';

/** A service-account key file, as the Cloud console downloads it. */
export interface GcpServiceAccountKey {
  readonly type: 'service_account';
  readonly project_id: string;
  readonly private_key_id: string;
  /** PKCS#8 PEM. */
  readonly private_key: string;
  readonly client_email: string;
  readonly client_id: string;
  readonly auth_uri: string;
  readonly token_uri: string;
  readonly auth_provider_x509_cert_url: string;
  readonly client_x509_cert_url: string;
  readonly universe_domain: string;
}

export interface CreateServiceAccountOptions {
  /** The part before `@`; default `sa-<random>`. 6..30 chars, lowercase letters, digits, hyphens. */
  accountId?: string;
  /** Default: the server's project. */
  projectId?: string;
}

/**
 * Predefined roles understood by the server:
 * - `roles/cloudkms.cryptoKeyEncrypter` (useToEncrypt), `roles/cloudkms.cryptoKeyDecrypter`
 *   (useToDecrypt), `roles/cloudkms.cryptoKeyEncrypterDecrypter` (both);
 * - `roles/cloudkms.viewer` (get / list of key rings, keys, versions);
 * - `roles/cloudkms.admin` (viewer + create, update, destroy, restore; no cryptographic use);
 * - `roles/owner` (everything).
 * Any other role needs explicit `permissions` in its binding (a custom role).
 */
export type GcpKmsRole =
  | 'roles/cloudkms.cryptoKeyEncrypter'
  | 'roles/cloudkms.cryptoKeyDecrypter'
  | 'roles/cloudkms.cryptoKeyEncrypterDecrypter'
  | 'roles/cloudkms.viewer'
  | 'roles/cloudkms.admin'
  | 'roles/owner';

export interface GcpIamBinding {
  readonly role: GcpKmsRole | (string & {});
  /** `serviceAccount:<email>`, `allAuthenticatedUsers` or `allUsers`. */
  readonly members: readonly string[];
  /** Permissions of a custom role (e.g. `['cloudkms.cryptoKeys.get']`); ignored for predefined roles. */
  readonly permissions?: readonly string[];
}

/** An IAM policy: who has which role on a project, key ring or key (inherited downwards). */
export interface GcpIamPolicy {
  readonly bindings: readonly GcpIamBinding[];
}

export interface CreateCryptoKeyOptions {
  /**
   * Key ring: a full name (`projects/<p>/locations/<l>/keyRings/<r>`) or an id in the server's
   * project and location; created if missing. Default `test-ring`.
   */
  keyRing?: string;
  /** Default `key-<random>`. */
  cryptoKeyId?: string;
  /** Default `ENCRYPT_DECRYPT`. */
  purpose?: GcpKeyPurpose;
  /** Default per purpose (`GOOGLE_SYMMETRIC_ENCRYPTION` for ENCRYPT_DECRYPT). */
  algorithm?: string;
  /** Default `SOFTWARE`. */
  protectionLevel?: GcpProtectionLevel;
  /** Automatic rotation period (ENCRYPT_DECRYPT only). */
  rotationPeriodSeconds?: number;
  labels?: Readonly<Record<string, string>>;
  /** Create the key without version 1. */
  skipInitialVersionCreation?: boolean;
  /** Delay between DestroyCryptoKeyVersion and destruction; default 30 days. */
  destroyScheduledDurationSeconds?: number;
}

export interface GcpCryptoKeyVersionInfo {
  readonly name: string;
  readonly state: GcpKeyVersionState;
  readonly algorithm: string;
  readonly protectionLevel: GcpProtectionLevel;
  readonly destroyTime?: Date;
}

/** A snapshot of a key. */
export interface GcpCryptoKeyInfo {
  readonly name: string;
  readonly keyRing: string;
  readonly purpose: GcpKeyPurpose;
  /** Name of the primary version (ENCRYPT_DECRYPT keys with at least one version). */
  readonly primary?: string;
  readonly versions: readonly GcpCryptoKeyVersionInfo[];
}

/** Restricts a fault to some calls; an empty filter matches every call. */
export interface GcpFaultFilter {
  readonly methods?: readonly GcpKmsMethod[];
  /** CryptoKey names; a call matches when it names the key or one of its versions. */
  readonly keys?: readonly string[];
  /** Service-account emails. */
  readonly principals?: readonly string[];
}

/** Status codes `faults.fail` can inject. */
export type GcpFaultStatus =
  | 'RESOURCE_EXHAUSTED'
  | 'UNAVAILABLE'
  | 'INTERNAL'
  | 'DEADLINE_EXCEEDED'
  | 'ABORTED'
  | 'UNKNOWN';

/**
 * What `faults.corrupt` damages:
 * - `request`: the request data arrives altered (one bit of `plaintext` for Encrypt, `ciphertext`
 *   for Decrypt), so a client that sent CRC32C checksums gets `INVALID_ARGUMENT`;
 * - `ciphertext`: Encrypt answers a ciphertext with one bit flipped (and the checksum of the
 *   original), as after corruption in transit;
 * - `ciphertextCrc32c`, `plaintextCrc32c`: the checksum field is wrong;
 * - `verifiedPlaintextCrc32c`, `verifiedAdditionalAuthenticatedDataCrc32c`: Encrypt reports the
 *   request checksum as not verified;
 * - `plaintext`: Decrypt answers a plaintext with one bit flipped (and the checksum of the original);
 * - `name`: Encrypt answers the name of another key's version.
 */
export type GcpCorruptibleField =
  | 'request'
  | 'ciphertext'
  | 'ciphertextCrc32c'
  | 'verifiedPlaintextCrc32c'
  | 'verifiedAdditionalAuthenticatedDataCrc32c'
  | 'plaintext'
  | 'plaintextCrc32c'
  | 'name';

/**
 * Fault injection. Faults apply to authenticated calls, before authorization, in this order:
 * latency, hang, fail; `corrupt` applies to the request or the answer of a successful call.
 */
export interface GcpKmsFaults {
  /** The next `count` matching calls fail with `status`. */
  fail(count: number, status: GcpFaultStatus, filter?: GcpFaultFilter): void;
  /** Every matching call waits `ms` before being processed (until `clear()`). */
  latency(ms: number, filter?: GcpFaultFilter): void;
  /** Matching calls are never answered until `clear()` (then processed) or `close()`. */
  hang(filter?: GcpFaultFilter): void;
  /** The next `count` matching calls get `field` corrupted. */
  corrupt(count: number, field: GcpCorruptibleField, filter?: GcpFaultFilter): void;
  /** Calls currently held by `hang`. */
  readonly hungCalls: number;
  /** Removes every fault and releases hung calls. */
  clear(): void;
}

/** One call seen by the server (the last 10,000 are kept). */
export interface GcpKmsCallRecord {
  readonly method: GcpKmsMethod;
  /** CryptoKey the call names (for version names: their key), if any. */
  readonly key: string | undefined;
  /** Authenticated service-account email; undefined when authentication failed. */
  readonly principal: string | undefined;
  /** The accepted bearer token: a self-signed JWT (with its `aud` or `scope` claim) or an opaque token. */
  readonly token: GcpKmsTokenInfo | undefined;
  /** Final status; undefined while the call is in progress (or hung). */
  readonly status: GrpcStatusName | undefined;
}

/** What kind of bearer token authenticated a call. */
export interface GcpKmsTokenInfo {
  readonly kind: 'self-signed-jwt' | 'access-token';
  readonly audience?: string;
  readonly scope?: string;
}

/** Call counters. Every call counts, including failed, faulted and retried ones. */
export interface GcpKmsCounters {
  readonly total: number;
  method(name: GcpKmsMethod): number;
  /** Calls naming this CryptoKey or one of its versions. */
  key(cryptoKeyName: string): number;
  /** Calls authenticated as this service-account email. */
  principal(email: string): number;
  /** Calls that ended with this status (any non-OK status when omitted). */
  errors(status?: GrpcStatusName): number;
  readonly calls: readonly GcpKmsCallRecord[];
  reset(): void;
}

export interface GcpKmsServerOptions {
  /** TCP port on 127.0.0.1; default 0 (a random free port). */
  port?: number;
  /** Default project for key rings and service accounts; default `test-project`. */
  projectId?: string;
  /** Default location; default `global`. */
  location?: string;
  /** Accepted clock skew when checking JWT `iat` / `exp`; default 300 s. */
  maxClockSkewSeconds?: number;
}

/** A running server. */
export interface GcpKmsServer {
  /** Host for `apiEndpoint`: always `127.0.0.1`. */
  readonly apiEndpoint: '127.0.0.1';
  readonly port: number;
  readonly projectId: string;
  readonly location: string;
  /** A service account with `roles/owner` on the default project, made at start. */
  readonly admin: GcpServiceAccountKey;
  readonly faults: GcpKmsFaults;
  readonly counters: GcpKmsCounters;
  /**
   * Options for `new KeyManagementServiceClient(...)`: `apiEndpoint`, `port`, insecure `sslCreds`
   * and, as `authClient`, a google-auth-library `JWT` for `credentials` (default {@link admin}),
   * which keeps the client from looking for application default credentials or probing the GCE
   * metadata server. Over this insecure channel gax sends no token: add {@link callOptions} to calls.
   */
  clientOptions(credentials?: GcpServiceAccountKey): ClientOptions;
  /**
   * Per-call options carrying `authorization: Bearer <JWT>` self-signed with `credentials`' key
   * (default {@link admin}), audience this server: `client.encrypt(request, kms.callOptions(sa))`.
   */
  callOptions(credentials?: GcpServiceAccountKey): CallOptions;
  /** Creates a key ring (id in the default project and location, or a full name); returns its name. */
  createKeyRing(keyRing: string): string;
  createCryptoKey(options?: CreateCryptoKeyOptions): GcpCryptoKeyInfo;
  /** Adds an ENABLED version to a key; returns its name. */
  createCryptoKeyVersion(cryptoKeyName: string, options?: { primary?: boolean }): string;
  getCryptoKey(cryptoKeyName: string): GcpCryptoKeyInfo;
  /**
   * Sets a version's state. `name` is a version name, or a CryptoKey name for its primary version.
   * `DESTROYED` erases the key material for good; a destroyed version cannot change state again.
   */
  setVersionState(name: string, state: GcpKeyVersionState): void;
  /** Makes `version` (a name or a version number) the key's primary version. */
  setPrimaryVersion(cryptoKeyName: string, version: string | number): void;
  /** Replaces the policy of a project (`projects/<p>`), key ring or key. */
  setPolicy(resource: string, policy: GcpIamPolicy): void;
  getPolicy(resource: string): GcpIamPolicy;
  /** Adds a binding of `role` for `member` (key file, email or member string) to a resource's policy. */
  grant(resource: string, member: GcpServiceAccountKey | string, role: GcpKmsRole): void;
  /** Removes `member` from `role` (or from every role) in a resource's policy. */
  revoke(resource: string, member: GcpServiceAccountKey | string, role?: GcpKmsRole): void;
  /** Creates a service account and a key for it (a real RSA-2048 key generated locally). */
  createServiceAccount(options?: CreateServiceAccountOptions): Promise<GcpServiceAccountKey>;
  /** Creates another key for an existing service account. */
  createServiceAccountKey(email: string): Promise<GcpServiceAccountKey>;
  /** Deletes a service-account key: tokens it signs are rejected from now on. */
  deleteServiceAccountKey(privateKeyId: string): void;
  /** An opaque access token for a service account, valid `ttlSeconds` (default 3600). */
  issueAccessToken(member: GcpServiceAccountKey | string, options?: { ttlSeconds?: number }): string;
  /** Removes keys, key rings, policies, service accounts (except {@link admin}), tokens, faults, counters. */
  reset(): void;
  /** Stops the server at once, failing in-flight and hung calls. */
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// CRC32C (Castagnoli): shared with the Cloud KMS provider
// ---------------------------------------------------------------------------------------------

export { crc32c };

// ---------------------------------------------------------------------------------------------
// Internals: state
// ---------------------------------------------------------------------------------------------

const DEFAULT_ALGORITHM: Record<GcpKeyPurpose, string> = {
  ENCRYPT_DECRYPT: 'GOOGLE_SYMMETRIC_ENCRYPTION',
  ASYMMETRIC_SIGN: 'EC_SIGN_P256_SHA256',
  ASYMMETRIC_DECRYPT: 'RSA_DECRYPT_OAEP_2048_SHA256',
  RAW_ENCRYPT_DECRYPT: 'AES_256_GCM',
  MAC: 'HMAC_SHA256',
  KEY_ENCAPSULATION: 'ML_KEM_768',
  AES_WRAPPING: 'AES_256_KWP',
};
const PURPOSES = new Set<string>(Object.keys(DEFAULT_ALGORITHM));
const PROTECTION_LEVELS = new Set<string>(['SOFTWARE', 'HSM', 'EXTERNAL', 'EXTERNAL_VPC']);
const DEFAULT_DESTROY_SCHEDULED_SECONDS = 30 * 24 * 3600;
const CIPHERTEXT_MAGIC = Buffer.from('GK', 'latin1');
const CIPHERTEXT_FORMAT = 0x01;
const HEADER_BYTES = 2 + 1 + 4;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const MAX_SOFTWARE_BYTES = 64 * 1024;
const MAX_HSM_BYTES = 8 * 1024;
const MAX_CALL_RECORDS = 10_000;

interface VersionState {
  readonly name: string;
  readonly id: number;
  state: GcpKeyVersionState;
  readonly algorithm: string;
  readonly protectionLevel: GcpProtectionLevel;
  material: Buffer | undefined;
  readonly createTime: Date;
  destroyTime: Date | undefined;
  destroyEventTime: Date | undefined;
}

interface KeyState {
  readonly name: string;
  readonly keyRing: string;
  readonly purpose: GcpKeyPurpose;
  readonly algorithm: string;
  readonly protectionLevel: GcpProtectionLevel;
  readonly createTime: Date;
  readonly rotationPeriodSeconds: number | undefined;
  readonly nextRotationTime: Date | undefined;
  readonly labels: Record<string, string>;
  readonly destroyScheduledSeconds: number;
  primary: number | undefined;
  nextVersion: number;
  readonly versions: Map<number, VersionState>;
}

interface ServiceAccountKeyState {
  readonly id: string;
  readonly email: string;
  readonly publicKey: KeyObject;
  readonly privateKeyPem: string;
}

interface Principal {
  readonly email: string;
  readonly token: GcpKmsTokenInfo;
}

interface FaultEntry {
  readonly kind: 'fail' | 'latency' | 'hang' | 'corrupt';
  readonly filter: GcpFaultFilter;
  remaining: number;
  readonly status?: GcpFaultStatus;
  readonly ms?: number;
  readonly field?: GcpCorruptibleField;
}

interface MutableCallRecord {
  method: GcpKmsMethod;
  key: string | undefined;
  principal: string | undefined;
  token: GcpKmsTokenInfo | undefined;
  status: GrpcStatusName | undefined;
}

/** An error answered on the wire. */
class RpcError extends Error {
  readonly code: grpc.status;
  constructor(code: grpc.status, message: string) {
    super(message);
    this.code = code;
  }
}

const STATUS_NAMES = new Map<number, GrpcStatusName>(
  Object.entries(grpc.status)
    .filter((e): e is [GrpcStatusName, number] => typeof e[1] === 'number')
    .map(([name, code]) => [code, name]),
);
const statusName = (code: number): GrpcStatusName => STATUS_NAMES.get(code) ?? 'UNKNOWN';

// ---------------------------------------------------------------------------------------------
// Internals: resource names
// ---------------------------------------------------------------------------------------------

const ID_RE = /^[a-zA-Z0-9_-]{1,63}$/;
const PROJECT_RE = /^(?:[a-z0-9.-]+:)?[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$/;
const LOCATION_RE = /^[a-z][a-z0-9-]{0,62}$/;
const LOCATION_NAME_RE = /^projects\/([^/]+)\/locations\/([^/]+)$/;
const KEY_RING_NAME_RE = /^projects\/([^/]+)\/locations\/([^/]+)\/keyRings\/([^/]+)$/;
const KEY_NAME_RE = /^(projects\/[^/]+\/locations\/[^/]+\/keyRings\/[^/]+)\/cryptoKeys\/([^/]+)$/;
const VERSION_NAME_RE =
  /^(projects\/[^/]+\/locations\/[^/]+\/keyRings\/[^/]+\/cryptoKeys\/[^/]+)\/cryptoKeyVersions\/([^/]+)$/;

function invalid(message: string): RpcError {
  return new RpcError(grpc.status.INVALID_ARGUMENT, message);
}

function checkLocationName(name: string): { project: string; location: string } {
  const m = LOCATION_NAME_RE.exec(name);
  if (!m || !PROJECT_RE.test(m[1]!) || !LOCATION_RE.test(m[2]!)) {
    throw invalid(
      `Resource name [${name}] is not a valid location name (projects/{project}/locations/{location}).`,
    );
  }
  return { project: m[1]!, location: m[2]! };
}

function checkKeyRingName(name: string): { project: string; location: string } {
  const m = KEY_RING_NAME_RE.exec(name);
  if (!m || !PROJECT_RE.test(m[1]!) || !LOCATION_RE.test(m[2]!) || !ID_RE.test(m[3]!)) {
    throw invalid(`Resource name [${name}] is not a valid KeyRing name.`);
  }
  return { project: m[1]!, location: m[2]! };
}

function checkKeyName(name: string): { keyRing: string } {
  const m = KEY_NAME_RE.exec(name);
  if (!m || !ID_RE.test(m[2]!)) throw invalid(`Resource name [${name}] is not a valid CryptoKey name.`);
  checkKeyRingName(m[1]!);
  return { keyRing: m[1]! };
}

function checkVersionName(name: string): { key: string; id: number } {
  const m = VERSION_NAME_RE.exec(name);
  if (!m || !/^[1-9]\d{0,8}$/.test(m[2]!)) {
    throw invalid(`Resource name [${name}] is not a valid CryptoKeyVersion name.`);
  }
  checkKeyName(m[1]!);
  return { key: m[1]!, id: Number(m[2]) };
}

/** The CryptoKey a name refers to (itself, or the key of a version), for counters and filters. */
function keyOfName(name: unknown): string | undefined {
  if (typeof name !== 'string') return undefined;
  const v = VERSION_NAME_RE.exec(name);
  if (v) return v[1];
  return KEY_NAME_RE.test(name) ? name : undefined;
}

const projectOf = (name: string): string => name.split('/').slice(0, 2).join('/');

// ---------------------------------------------------------------------------------------------
// Internals: IAM
// ---------------------------------------------------------------------------------------------

const P = {
  encrypt: 'cloudkms.cryptoKeyVersions.useToEncrypt',
  decrypt: 'cloudkms.cryptoKeyVersions.useToDecrypt',
  keyRingsGet: 'cloudkms.keyRings.get',
  keyRingsList: 'cloudkms.keyRings.list',
  keyRingsCreate: 'cloudkms.keyRings.create',
  keysGet: 'cloudkms.cryptoKeys.get',
  keysList: 'cloudkms.cryptoKeys.list',
  keysCreate: 'cloudkms.cryptoKeys.create',
  keysUpdate: 'cloudkms.cryptoKeys.update',
  versionsGet: 'cloudkms.cryptoKeyVersions.get',
  versionsList: 'cloudkms.cryptoKeyVersions.list',
  versionsCreate: 'cloudkms.cryptoKeyVersions.create',
  versionsUpdate: 'cloudkms.cryptoKeyVersions.update',
  versionsDestroy: 'cloudkms.cryptoKeyVersions.destroy',
  versionsRestore: 'cloudkms.cryptoKeyVersions.restore',
} as const;

const VIEWER = [P.keyRingsGet, P.keyRingsList, P.keysGet, P.keysList, P.versionsGet, P.versionsList];
const ADMIN = [
  ...VIEWER,
  P.keyRingsCreate,
  P.keysCreate,
  P.keysUpdate,
  P.versionsCreate,
  P.versionsUpdate,
  P.versionsDestroy,
  P.versionsRestore,
];
const ROLES: Record<GcpKmsRole, readonly string[]> = {
  'roles/cloudkms.cryptoKeyEncrypter': [P.encrypt],
  'roles/cloudkms.cryptoKeyDecrypter': [P.decrypt],
  'roles/cloudkms.cryptoKeyEncrypterDecrypter': [P.encrypt, P.decrypt],
  'roles/cloudkms.viewer': VIEWER,
  'roles/cloudkms.admin': ADMIN,
  'roles/owner': [...ADMIN, P.encrypt, P.decrypt],
};

function checkPolicy(policy: GcpIamPolicy): GcpIamPolicy {
  if (typeof policy !== 'object' || policy === null || !Array.isArray(policy.bindings)) {
    throw new Error('a policy is { bindings: [{ role, members }] }');
  }
  const bindings = policy.bindings.map((b) => {
    if (typeof b?.role !== 'string' || !Array.isArray(b.members)) {
      throw new Error('each policy binding needs a role and a members array');
    }
    if (!(b.role in ROLES) && !Array.isArray(b.permissions)) {
      throw new Error(`unknown role ${b.role}: give the permissions of a custom role in the binding`);
    }
    for (const m of b.members) {
      if (typeof m !== 'string' || !/^(serviceAccount:.+@.+|allAuthenticatedUsers|allUsers)$/.test(m)) {
        throw new Error(
          `unsupported member ${String(m)}: use serviceAccount:<email>, allAuthenticatedUsers or allUsers`,
        );
      }
    }
    return Object.freeze({
      role: b.role,
      members: Object.freeze([...b.members]),
      ...(b.permissions === undefined ? {} : { permissions: Object.freeze([...b.permissions]) }),
    });
  });
  return Object.freeze({ bindings: Object.freeze(bindings) });
}

function memberString(member: GcpServiceAccountKey | string): string {
  if (typeof member === 'object' && member !== null) return `serviceAccount:${member.client_email}`;
  if (member === 'allUsers' || member === 'allAuthenticatedUsers' || member.startsWith('serviceAccount:')) {
    return member;
  }
  return `serviceAccount:${member}`;
}

// ---------------------------------------------------------------------------------------------
// Internals: proto loading
// ---------------------------------------------------------------------------------------------

interface LoadedProtos {
  readonly service: grpc.ServiceDefinition;
}

let protoCache: LoadedProtos | undefined;

function kmsPackageRequire(): NodeJS.Require {
  return createRequire(createRequire(import.meta.url).resolve('@google-cloud/kms/package.json'));
}

function loadProtos(): LoadedProtos {
  if (protoCache) return protoCache;
  const require = createRequire(import.meta.url);
  const kmsRoot = path.dirname(require.resolve('@google-cloud/kms/package.json'));
  // google/api/*.proto and google/longrunning/*.proto ship with google-gax, a dependency of the
  // KMS package: resolve it from there. `google-gax/package.json` is not exported; its main is.
  const gaxMain = kmsPackageRequire().resolve('google-gax');
  const gaxRoot = path.resolve(path.dirname(gaxMain), '..', '..');
  const definition = protoLoader.loadSync('google/cloud/kms/v1/service.proto', {
    includeDirs: [path.join(kmsRoot, 'build', 'protos'), path.join(gaxRoot, 'build', 'protos')],
    keepCase: false,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    google: { cloud: { kms: { v1: { KeyManagementService: grpc.ServiceClientConstructor } } } };
  };
  protoCache = { service: loaded.google.cloud.kms.v1.KeyManagementService.service };
  return protoCache;
}

// ---------------------------------------------------------------------------------------------
// Internals: helpers for messages
// ---------------------------------------------------------------------------------------------

type Req = Record<string, unknown>;

const str = (v: unknown): string => (typeof v === 'string' ? v : '');
const bytes = (v: unknown): Buffer =>
  Buffer.isBuffer(v) ? v : v instanceof Uint8Array ? Buffer.from(v) : Buffer.alloc(0);
/** The value of a google.protobuf.Int64Value field, or undefined when the field is unset. */
function int64Value(v: unknown): number | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const raw = (v as { value?: unknown }).value;
  if (raw === undefined || raw === null) return 0;
  const n = Number(raw);
  return Number.isFinite(n) ? n : Number.NaN;
}
const timestamp = (d: Date) => ({
  seconds: Math.floor(d.getTime() / 1000),
  nanos: (d.getTime() % 1000) * 1e6,
});
const duration = (seconds: number) => ({ seconds: Math.floor(seconds), nanos: 0 });
function durationSeconds(v: unknown): number | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const d = v as { seconds?: unknown; nanos?: unknown };
  return Number(d.seconds ?? 0) + Number(d.nanos ?? 0) / 1e9;
}

function flipBit(b: Buffer): Buffer {
  const out = Buffer.from(b);
  if (out.length > 0) out[out.length >> 1]! ^= 0x01;
  return out;
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

function signJwt(
  key: ServiceAccountKeyState,
  claims: Record<string, unknown>,
  header: Record<string, unknown> = { alg: 'RS256', typ: 'JWT', kid: key.id },
): string {
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const signature = createSign('RSA-SHA256').update(input).sign(key.privateKeyPem);
  return `${input}.${b64url(signature)}`;
}

const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);
const ACCEPTED_SCOPES = new Set([
  'https://www.googleapis.com/auth/cloud-platform',
  'https://www.googleapis.com/auth/cloudkms',
]);
const UNAUTHENTICATED_MESSAGE =
  'Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or ' +
  'other valid authentication credential.';

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/**
 * Starts a local Cloud KMS server on 127.0.0.1 (random port unless `options.port`). The returned
 * handle creates keys, service accounts and policies directly (no gRPC), injects faults and counts
 * calls; `close()` shuts it down.
 *
 * ```ts
 * const kms = await startGcpKmsServer();
 * const sa = await kms.createServiceAccount();
 * const key = kms.createCryptoKey({ keyRing: 'tenants' });
 * kms.grant(key.name, sa, 'roles/cloudkms.cryptoKeyEncrypterDecrypter');
 * const kek = gcpKms({ keyName: key.name, credentials: { type: 'service-account', key: sa },
 *   apiEndpoint: kms.apiEndpoint, port: kms.port, insecure: true });
 * ```
 */
export async function startGcpKmsServer(options: GcpKmsServerOptions = {}): Promise<GcpKmsServer> {
  const projectId = options.projectId ?? 'test-project';
  const location = options.location ?? 'global';
  if (!PROJECT_RE.test(projectId)) throw new Error(`invalid project id ${projectId}`);
  if (!LOCATION_RE.test(location)) throw new Error(`invalid location ${location}`);
  const skew = options.maxClockSkewSeconds ?? 300;
  const { service } = loadProtos();

  const keyRings = new Map<string, { name: string; createTime: Date }>();
  const keys = new Map<string, KeyState>();
  const policies = new Map<string, GcpIamPolicy>();
  const saKeys = new Map<string, ServiceAccountKeyState>(); // by private key id
  const serviceAccounts = new Map<string, { projectId: string }>(); // by email
  const accessTokens = new Map<string, { email: string; expires: number }>();
  let faultList: FaultEntry[] = [];
  const hung = new Set<{ release: (outcome: 'go' | 'closed') => void }>();
  let records: MutableCallRecord[] = [];
  const tally = { total: 0, method: new Map<string, number>(), key: new Map<string, number>() };
  const principalTally = new Map<string, number>();
  const errorTally = new Map<GrpcStatusName, number>();
  let port = 0;
  let closed = false;

  const bump = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);

  // -- service accounts --------------------------------------------------------------------

  async function newKey(email: string, project: string): Promise<GcpServiceAccountKey> {
    const { publicKey, privateKey } = await new Promise<{ publicKey: string; privateKey: string }>(
      (resolve, reject) =>
        generateKeyPair(
          'rsa',
          {
            modulusLength: 2048,
            publicKeyEncoding: { type: 'spki', format: 'pem' },
            privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
          },
          (err, pub, priv) => (err ? reject(err) : resolve({ publicKey: pub, privateKey: priv })),
        ),
    );
    const id = randomBytes(20).toString('hex');
    saKeys.set(id, { id, email, publicKey: createPublicKey(publicKey), privateKeyPem: privateKey });
    const clientId = `1${randomBytes(10).readBigUInt64BE().toString().padStart(20, '0')}`.slice(0, 21);
    return Object.freeze({
      type: 'service_account',
      project_id: project,
      private_key_id: id,
      private_key: privateKey,
      client_email: email,
      client_id: clientId,
      auth_uri: 'https://accounts.google.com/o/oauth2/auth',
      token_uri: 'https://oauth2.googleapis.com/token',
      auth_provider_x509_cert_url: 'https://www.googleapis.com/oauth2/v1/certs',
      client_x509_cert_url: `https://www.googleapis.com/robot/v1/metadata/x509/${encodeURIComponent(email)}`,
      universe_domain: 'googleapis.com',
    });
  }

  async function createServiceAccount(o: CreateServiceAccountOptions = {}): Promise<GcpServiceAccountKey> {
    const project = o.projectId ?? projectId;
    const accountId = o.accountId ?? `sa-${randomBytes(4).toString('hex')}`;
    if (!/^[a-z][a-z0-9-]{4,28}[a-z0-9]$/.test(accountId)) throw new Error(`invalid account id ${accountId}`);
    const email = `${accountId}@${project.replace(/^.*:/, '')}.iam.gserviceaccount.com`;
    if (serviceAccounts.has(email)) throw new Error(`service account ${email} already exists`);
    serviceAccounts.set(email, { projectId: project });
    return newKey(email, project);
  }

  function keyStateOf(credentials: GcpServiceAccountKey): ServiceAccountKeyState {
    const k = saKeys.get(credentials.private_key_id);
    if (!k || k.email !== credentials.client_email) {
      throw new Error(
        `the key ${credentials.private_key_id} of ${credentials.client_email} is not known here`,
      );
    }
    return k;
  }

  // -- authentication ----------------------------------------------------------------------

  function authenticate(metadata: grpc.Metadata): Principal {
    const values = metadata.get('authorization');
    const header = values.length === 1 ? String(values[0]) : undefined;
    if (header === undefined || header === '') {
      throw new RpcError(
        grpc.status.UNAUTHENTICATED,
        'Request is missing required authentication credential. Expected OAuth 2 access token, login ' +
          'cookie or other valid authentication credential.',
      );
    }
    const m = /^Bearer\s+(\S+)$/i.exec(header);
    const principal = m ? verifyToken(m[1]!) : undefined;
    if (!principal) throw new RpcError(grpc.status.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE);
    return principal;
  }

  function verifyToken(token: string): Principal | undefined {
    const opaque = accessTokens.get(token);
    if (opaque) {
      return opaque.expires > Date.now() && serviceAccounts.has(opaque.email)
        ? { email: opaque.email, token: { kind: 'access-token' } }
        : undefined;
    }
    const parts = token.split('.');
    if (parts.length !== 3) return undefined;
    let header: Record<string, unknown>;
    let claims: Record<string, unknown>;
    try {
      header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8'));
      claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'));
    } catch {
      return undefined;
    }
    if (header.alg !== 'RS256' || typeof claims.iss !== 'string' || claims.sub !== claims.iss)
      return undefined;
    const email = claims.iss;
    if (!serviceAccounts.has(email)) return undefined;
    const candidates =
      typeof header.kid === 'string'
        ? [saKeys.get(header.kid)].filter((k) => k !== undefined)
        : [...saKeys.values()];
    const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
    const signature = Buffer.from(parts[2]!, 'base64url');
    const key = candidates.find(
      (k) => k.email === email && createVerify('RSA-SHA256').update(signed).verify(k.publicKey, signature),
    );
    if (!key) return undefined;
    const now = Date.now() / 1000;
    const iat = Number(claims.iat);
    const exp = Number(claims.exp);
    if (!Number.isFinite(iat) || !Number.isFinite(exp)) return undefined;
    if (iat > now + skew || exp < now - skew || exp - iat > 3600 + skew) return undefined;
    const scopes = typeof claims.scope === 'string' ? claims.scope.split(/\s+/) : [];
    if (!scopes.some((s) => ACCEPTED_SCOPES.has(s)) && !audienceAccepted(claims.aud)) return undefined;
    return {
      email,
      token: Object.freeze({
        kind: 'self-signed-jwt',
        ...(typeof claims.aud === 'string' ? { audience: claims.aud } : {}),
        ...(typeof claims.scope === 'string' ? { scope: claims.scope } : {}),
      }),
    };
  }

  function audienceAccepted(aud: unknown): boolean {
    if (typeof aud !== 'string') return false;
    if (aud === 'https://cloudkms.googleapis.com/' || aud === 'https://cloudkms.googleapis.com') return true;
    try {
      const u = new URL(aud);
      return LOOPBACK_HOSTS.has(u.hostname) && Number(u.port) === port;
    } catch {
      return false;
    }
  }

  // -- authorization -------------------------------------------------------------------------

  /** Resource chain for IAM: the resource itself and its existing ancestors, then the project. */
  function ancestry(resource: string): string[] {
    const chain: string[] = [];
    const v = VERSION_NAME_RE.exec(resource);
    const keyName = v ? v[1]! : KEY_NAME_RE.test(resource) ? resource : undefined;
    if (keyName !== undefined && keys.has(keyName)) chain.push(keyName);
    const ringName = keyName
      ? KEY_NAME_RE.exec(keyName)![1]!
      : KEY_RING_NAME_RE.test(resource)
        ? resource
        : undefined;
    if (ringName !== undefined && keyRings.has(ringName)) chain.push(ringName);
    chain.push(projectOf(resource));
    return chain;
  }

  function authorize(principal: Principal, permission: string, resource: string): void {
    const members = new Set([`serviceAccount:${principal.email}`, 'allAuthenticatedUsers', 'allUsers']);
    for (const r of ancestry(resource)) {
      for (const b of policies.get(r)?.bindings ?? []) {
        if (!b.members.some((m) => members.has(m))) continue;
        const perms = ROLES[b.role as GcpKmsRole] ?? b.permissions ?? [];
        if (perms.includes(permission)) return;
      }
    }
    throw new RpcError(
      grpc.status.PERMISSION_DENIED,
      `Permission '${permission}' denied on resource '${resource}' (or it may not exist).`,
    );
  }

  // -- resources -----------------------------------------------------------------------------

  function requireKey(name: string): KeyState {
    const key = keys.get(name);
    if (!key) throw new RpcError(grpc.status.NOT_FOUND, `CryptoKey ${name} not found.`);
    return key;
  }

  function requireVersion(name: string): { key: KeyState; version: VersionState } {
    const { key: keyName, id } = checkVersionName(name);
    const key = requireKey(keyName);
    const version = key.versions.get(id);
    if (!version) throw new RpcError(grpc.status.NOT_FOUND, `CryptoKeyVersion ${name} not found.`);
    return { key, version };
  }

  function addKeyRing(name: string): { name: string; createTime: Date } {
    checkKeyRingName(name);
    if (keyRings.has(name)) throw new RpcError(grpc.status.ALREADY_EXISTS, `KeyRing ${name} already exists.`);
    const ring = { name, createTime: new Date() };
    keyRings.set(name, ring);
    return ring;
  }

  function addVersion(key: KeyState): VersionState {
    const id = key.nextVersion++;
    const version: VersionState = {
      name: `${key.name}/cryptoKeyVersions/${id}`,
      id,
      state: 'ENABLED',
      algorithm: key.algorithm,
      protectionLevel: key.protectionLevel,
      material: key.purpose === 'ENCRYPT_DECRYPT' ? randomBytes(32) : undefined,
      createTime: new Date(),
      destroyTime: undefined,
      destroyEventTime: undefined,
    };
    key.versions.set(id, version);
    if (key.purpose === 'ENCRYPT_DECRYPT' && key.primary === undefined) key.primary = id;
    return version;
  }

  interface KeySpec {
    purpose: string;
    algorithm: string | undefined;
    protectionLevel: string | undefined;
    rotationPeriodSeconds: number | undefined;
    nextRotationTime: Date | undefined;
    labels: Record<string, string>;
    destroyScheduledSeconds: number | undefined;
    skipInitialVersionCreation: boolean;
  }

  function addKey(keyRing: string, cryptoKeyId: string, spec: KeySpec): KeyState {
    checkKeyRingName(keyRing);
    if (!ID_RE.test(cryptoKeyId)) throw invalid(`Invalid crypto_key_id [${cryptoKeyId}].`);
    if (!keyRings.has(keyRing)) throw new RpcError(grpc.status.NOT_FOUND, `KeyRing ${keyRing} not found.`);
    const name = `${keyRing}/cryptoKeys/${cryptoKeyId}`;
    if (keys.has(name)) throw new RpcError(grpc.status.ALREADY_EXISTS, `CryptoKey ${name} already exists.`);
    if (!PURPOSES.has(spec.purpose)) throw invalid('The request must specify a valid CryptoKey purpose.');
    const purpose = spec.purpose as GcpKeyPurpose;
    const algorithm = spec.algorithm || DEFAULT_ALGORITHM[purpose];
    if (purpose === 'ENCRYPT_DECRYPT' && algorithm !== 'GOOGLE_SYMMETRIC_ENCRYPTION') {
      throw invalid(`Algorithm ${algorithm} is not valid for purpose ENCRYPT_DECRYPT.`);
    }
    const protectionLevel = spec.protectionLevel || 'SOFTWARE';
    if (!PROTECTION_LEVELS.has(protectionLevel))
      throw invalid(`Invalid protection level ${protectionLevel}.`);
    if (spec.rotationPeriodSeconds !== undefined && purpose !== 'ENCRYPT_DECRYPT') {
      throw invalid('Automatic rotation is only supported for keys with purpose ENCRYPT_DECRYPT.');
    }
    if (spec.rotationPeriodSeconds !== undefined && spec.rotationPeriodSeconds < 86400) {
      throw invalid('The rotation period must be at least one day.');
    }
    const now = new Date();
    const key: KeyState = {
      name,
      keyRing,
      purpose,
      algorithm,
      protectionLevel: protectionLevel as GcpProtectionLevel,
      createTime: now,
      rotationPeriodSeconds: spec.rotationPeriodSeconds,
      nextRotationTime:
        spec.nextRotationTime ??
        (spec.rotationPeriodSeconds === undefined
          ? undefined
          : new Date(now.getTime() + spec.rotationPeriodSeconds * 1000)),
      labels: { ...spec.labels },
      destroyScheduledSeconds: spec.destroyScheduledSeconds ?? DEFAULT_DESTROY_SCHEDULED_SECONDS,
      primary: undefined,
      nextVersion: 1,
      versions: new Map(),
    };
    keys.set(name, key);
    if (!spec.skipInitialVersionCreation) addVersion(key);
    return key;
  }

  function versionMessage(v: VersionState): Record<string, unknown> {
    return {
      name: v.name,
      state: v.state,
      protectionLevel: v.protectionLevel,
      algorithm: v.algorithm,
      createTime: timestamp(v.createTime),
      ...(v.state === 'PENDING_GENERATION' ? {} : { generateTime: timestamp(v.createTime) }),
      ...(v.destroyTime ? { destroyTime: timestamp(v.destroyTime) } : {}),
      ...(v.destroyEventTime ? { destroyEventTime: timestamp(v.destroyEventTime) } : {}),
    };
  }

  function keyMessage(k: KeyState): Record<string, unknown> {
    const primary = k.primary === undefined ? undefined : k.versions.get(k.primary);
    return {
      name: k.name,
      ...(primary ? { primary: versionMessage(primary) } : {}),
      purpose: k.purpose,
      createTime: timestamp(k.createTime),
      ...(k.nextRotationTime ? { nextRotationTime: timestamp(k.nextRotationTime) } : {}),
      ...(k.rotationPeriodSeconds === undefined ? {} : { rotationPeriod: duration(k.rotationPeriodSeconds) }),
      versionTemplate: { protectionLevel: k.protectionLevel, algorithm: k.algorithm },
      labels: k.labels,
      destroyScheduledDuration: duration(k.destroyScheduledSeconds),
    };
  }

  function keyInfo(k: KeyState): GcpCryptoKeyInfo {
    const primary = k.primary === undefined ? undefined : k.versions.get(k.primary)?.name;
    return Object.freeze({
      name: k.name,
      keyRing: k.keyRing,
      purpose: k.purpose,
      ...(primary === undefined ? {} : { primary }),
      versions: Object.freeze(
        [...k.versions.values()].map((v) =>
          Object.freeze({
            name: v.name,
            state: v.state,
            algorithm: v.algorithm,
            protectionLevel: v.protectionLevel,
            ...(v.destroyTime ? { destroyTime: new Date(v.destroyTime) } : {}),
          }),
        ),
      ),
    });
  }

  function notEnabled(v: VersionState): RpcError {
    return new RpcError(
      grpc.status.FAILED_PRECONDITION,
      `${v.name} is not enabled, current state is: ${v.state}.`,
    );
  }

  function requirePurpose(key: KeyState, method: string): void {
    if (key.purpose !== 'ENCRYPT_DECRYPT') {
      throw new RpcError(
        grpc.status.FAILED_PRECONDITION,
        `${key.name} has purpose ${key.purpose}; ${method} requires a CryptoKey with purpose ENCRYPT_DECRYPT.`,
      );
    }
  }

  function checkCrc(data: Buffer, field: unknown, dataField: string, crcField: string): boolean {
    const expected = int64Value(field);
    if (expected === undefined) return false;
    if (expected !== crc32c(data)) {
      throw invalid(`The checksum in field ${crcField} did not match the data in field ${dataField}.`);
    }
    return true;
  }

  function checkSizes(key: KeyState | VersionState, data: Buffer, aad: Buffer, dataField: string): void {
    if (key.protectionLevel === 'HSM') {
      if (data.length + aad.length > MAX_HSM_BYTES) {
        throw invalid(`The combined length of ${dataField} and additional_authenticated_data exceeds 8 KiB.`);
      }
    } else if (data.length > MAX_SOFTWARE_BYTES || aad.length > MAX_SOFTWARE_BYTES) {
      throw invalid(`${dataField} or additional_authenticated_data is larger than 64 KiB.`);
    }
  }

  function gcmAad(keyName: string, header: Buffer, aad: Buffer): Buffer {
    const name = Buffer.from(keyName, 'utf8');
    const len = Buffer.alloc(4);
    len.writeUInt32BE(name.length);
    return Buffer.concat([header, len, name, aad]);
  }

  // -- method implementations ----------------------------------------------------------------

  type Corruptions = Set<GcpCorruptibleField>;
  type Impl = (req: Req, principal: Principal, corrupt: Corruptions) => Record<string, unknown>;

  const encrypt: Impl = (req, principal, corrupt) => {
    const name = str(req.name);
    const isVersion = VERSION_NAME_RE.test(name);
    if (!isVersion) checkKeyName(name);
    const keyName = isVersion ? checkVersionName(name).key : name;
    authorize(principal, P.encrypt, keyName);
    const key = requireKey(keyName);
    requirePurpose(key, 'Encrypt');
    let plaintext = bytes(req.plaintext);
    const aad = bytes(req.additionalAuthenticatedData);
    if (corrupt.has('request')) plaintext = flipBit(plaintext);
    if (plaintext.length === 0) throw invalid('plaintext is required.');
    const verifiedPlaintext = checkCrc(plaintext, req.plaintextCrc32c, 'plaintext', 'plaintext_crc32c');
    const verifiedAad = checkCrc(
      aad,
      req.additionalAuthenticatedDataCrc32c,
      'additional_authenticated_data',
      'additional_authenticated_data_crc32c',
    );
    const version = isVersion
      ? requireVersion(name).version
      : key.primary === undefined
        ? undefined
        : key.versions.get(key.primary);
    if (!version) {
      throw new RpcError(grpc.status.FAILED_PRECONDITION, `${key.name} has no primary CryptoKeyVersion.`);
    }
    if (version.state !== 'ENABLED' || !version.material) throw notEnabled(version);
    checkSizes(version, plaintext, aad, 'plaintext');
    const header = Buffer.alloc(HEADER_BYTES);
    CIPHERTEXT_MAGIC.copy(header, 0);
    header[2] = CIPHERTEXT_FORMAT;
    header.writeUInt32BE(version.id, 3);
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', version.material, iv);
    cipher.setAAD(gcmAad(key.name, header, aad));
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    const ciphertext = Buffer.concat([header, iv, body, cipher.getAuthTag()]);
    const crc = crc32c(ciphertext);
    const otherKey = [...keys.keys()].find((k) => k !== key.name) ?? `${key.keyRing}/cryptoKeys/other`;
    return {
      name: corrupt.has('name') ? `${otherKey}/cryptoKeyVersions/1` : version.name,
      ciphertext: corrupt.has('ciphertext') ? flipBit(ciphertext) : ciphertext,
      ciphertextCrc32c: { value: corrupt.has('ciphertextCrc32c') ? (crc ^ 0x1) >>> 0 : crc },
      verifiedPlaintextCrc32c: verifiedPlaintext && !corrupt.has('verifiedPlaintextCrc32c'),
      verifiedAdditionalAuthenticatedDataCrc32c:
        verifiedAad && !corrupt.has('verifiedAdditionalAuthenticatedDataCrc32c'),
      protectionLevel: version.protectionLevel,
    };
  };

  const decrypt: Impl = (req, principal, corrupt) => {
    const name = str(req.name);
    if (VERSION_NAME_RE.test(name)) {
      throw invalid(`Decrypt requires a CryptoKey name, not the CryptoKeyVersion name [${name}].`);
    }
    checkKeyName(name);
    authorize(principal, P.decrypt, name);
    const key = requireKey(name);
    requirePurpose(key, 'Decrypt');
    let ciphertext = bytes(req.ciphertext);
    const aad = bytes(req.additionalAuthenticatedData);
    if (corrupt.has('request')) ciphertext = flipBit(ciphertext);
    if (ciphertext.length === 0) throw invalid('ciphertext is required.');
    checkCrc(ciphertext, req.ciphertextCrc32c, 'ciphertext', 'ciphertext_crc32c');
    checkCrc(
      aad,
      req.additionalAuthenticatedDataCrc32c,
      'additional_authenticated_data',
      'additional_authenticated_data_crc32c',
    );
    const malformed = invalid('Decryption failed: the ciphertext is invalid.');
    if (
      ciphertext.length < HEADER_BYTES + IV_BYTES + TAG_BYTES ||
      !ciphertext.subarray(0, 2).equals(CIPHERTEXT_MAGIC) ||
      ciphertext[2] !== CIPHERTEXT_FORMAT
    ) {
      throw malformed;
    }
    const version = key.versions.get(ciphertext.readUInt32BE(3));
    const wrongKey = invalid("Decryption failed: verify that 'name' refers to the correct CryptoKey.");
    if (!version) throw wrongKey;
    if (version.state !== 'ENABLED' || !version.material) throw notEnabled(version);
    checkSizes(version, ciphertext, aad, 'ciphertext');
    let plaintext: Buffer;
    try {
      const decipher = createDecipheriv(
        'aes-256-gcm',
        version.material,
        ciphertext.subarray(HEADER_BYTES, HEADER_BYTES + IV_BYTES),
        { authTagLength: TAG_BYTES },
      );
      decipher.setAAD(gcmAad(key.name, ciphertext.subarray(0, HEADER_BYTES), aad));
      decipher.setAuthTag(ciphertext.subarray(ciphertext.length - TAG_BYTES));
      plaintext = Buffer.concat([
        decipher.update(ciphertext.subarray(HEADER_BYTES + IV_BYTES, ciphertext.length - TAG_BYTES)),
        decipher.final(),
      ]);
    } catch {
      throw wrongKey;
    }
    const crc = crc32c(plaintext);
    return {
      plaintext: corrupt.has('plaintext') ? flipBit(plaintext) : plaintext,
      plaintextCrc32c: { value: corrupt.has('plaintextCrc32c') ? (crc ^ 0x1) >>> 0 : crc },
      usedPrimary: version.id === key.primary,
      protectionLevel: version.protectionLevel,
    };
  };

  function page<T>(items: T[], req: Req): { items: T[]; nextPageToken: string; totalSize: number } {
    const size = Number(req.pageSize) > 0 ? Math.min(Number(req.pageSize), 1000) : 1000;
    const token = str(req.pageToken);
    const start = token === '' ? 0 : Number(token);
    if (!Number.isInteger(start) || start < 0 || start > items.length) throw invalid('Invalid page_token.');
    const end = start + size;
    return {
      items: items.slice(start, end),
      nextPageToken: end < items.length ? String(end) : '',
      totalSize: items.length,
    };
  }

  const impls: Record<GcpKmsMethod, Impl> = {
    Encrypt: encrypt,
    Decrypt: decrypt,
    GetKeyRing: (req, principal) => {
      const name = str(req.name);
      checkKeyRingName(name);
      authorize(principal, P.keyRingsGet, name);
      const ring = keyRings.get(name);
      if (!ring) throw new RpcError(grpc.status.NOT_FOUND, `KeyRing ${name} not found.`);
      return { name: ring.name, createTime: timestamp(ring.createTime) };
    },
    ListKeyRings: (req, principal) => {
      const parent = str(req.parent);
      checkLocationName(parent);
      authorize(principal, P.keyRingsList, parent);
      const rings = [...keyRings.values()].filter((r) => r.name.startsWith(`${parent}/keyRings/`));
      const p = page(rings, req);
      return {
        keyRings: p.items.map((r) => ({ name: r.name, createTime: timestamp(r.createTime) })),
        nextPageToken: p.nextPageToken,
        totalSize: p.totalSize,
      };
    },
    CreateKeyRing: (req, principal) => {
      const parent = str(req.parent);
      checkLocationName(parent);
      const id = str(req.keyRingId);
      if (!ID_RE.test(id)) throw invalid(`Invalid key_ring_id [${id}].`);
      authorize(principal, P.keyRingsCreate, parent);
      const ring = addKeyRing(`${parent}/keyRings/${id}`);
      return { name: ring.name, createTime: timestamp(ring.createTime) };
    },
    GetCryptoKey: (req, principal) => {
      const name = str(req.name);
      checkKeyName(name);
      authorize(principal, P.keysGet, name);
      return keyMessage(requireKey(name));
    },
    ListCryptoKeys: (req, principal) => {
      const parent = str(req.parent);
      checkKeyRingName(parent);
      authorize(principal, P.keysList, parent);
      if (!keyRings.has(parent)) throw new RpcError(grpc.status.NOT_FOUND, `KeyRing ${parent} not found.`);
      const list = [...keys.values()].filter((k) => k.keyRing === parent);
      const p = page(list, req);
      return { cryptoKeys: p.items.map(keyMessage), nextPageToken: p.nextPageToken, totalSize: p.totalSize };
    },
    CreateCryptoKey: (req, principal) => {
      const parent = str(req.parent);
      checkKeyRingName(parent);
      authorize(principal, P.keysCreate, parent);
      const ck = (req.cryptoKey ?? {}) as Req;
      const template = (ck.versionTemplate ?? {}) as Req;
      const algorithm = str(template.algorithm);
      const protectionLevel = str(template.protectionLevel);
      const next = ck.nextRotationTime as { seconds?: unknown } | null | undefined;
      const key = addKey(parent, str(req.cryptoKeyId), {
        purpose: str(ck.purpose),
        algorithm: algorithm === 'CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED' ? undefined : algorithm,
        protectionLevel: protectionLevel === 'PROTECTION_LEVEL_UNSPECIFIED' ? undefined : protectionLevel,
        rotationPeriodSeconds: durationSeconds(ck.rotationPeriod),
        nextRotationTime: next ? new Date(Number(next.seconds ?? 0) * 1000) : undefined,
        labels: (ck.labels ?? {}) as Record<string, string>,
        destroyScheduledSeconds: durationSeconds(ck.destroyScheduledDuration) || undefined,
        skipInitialVersionCreation: req.skipInitialVersionCreation === true,
      });
      return keyMessage(key);
    },
    UpdateCryptoKeyPrimaryVersion: (req, principal) => {
      const name = str(req.name);
      checkKeyName(name);
      authorize(principal, P.keysUpdate, name);
      const key = requireKey(name);
      if (key.purpose !== 'ENCRYPT_DECRYPT') {
        throw new RpcError(
          grpc.status.FAILED_PRECONDITION,
          `${name} has purpose ${key.purpose}; only ENCRYPT_DECRYPT keys have a primary version.`,
        );
      }
      const id = Number(str(req.cryptoKeyVersionId));
      const version = key.versions.get(id);
      if (!version) {
        throw new RpcError(
          grpc.status.NOT_FOUND,
          `CryptoKeyVersion ${name}/cryptoKeyVersions/${req.cryptoKeyVersionId} not found.`,
        );
      }
      if (version.state !== 'ENABLED') throw notEnabled(version);
      key.primary = id;
      return keyMessage(key);
    },
    GetCryptoKeyVersion: (req, principal) => {
      const name = str(req.name);
      checkVersionName(name);
      authorize(principal, P.versionsGet, name);
      return versionMessage(requireVersion(name).version);
    },
    ListCryptoKeyVersions: (req, principal) => {
      const parent = str(req.parent);
      checkKeyName(parent);
      authorize(principal, P.versionsList, parent);
      const p = page([...requireKey(parent).versions.values()], req);
      return {
        cryptoKeyVersions: p.items.map(versionMessage),
        nextPageToken: p.nextPageToken,
        totalSize: p.totalSize,
      };
    },
    CreateCryptoKeyVersion: (req, principal) => {
      const parent = str(req.parent);
      checkKeyName(parent);
      authorize(principal, P.versionsCreate, parent);
      return versionMessage(addVersion(requireKey(parent)));
    },
    UpdateCryptoKeyVersion: (req, principal) => {
      const body = (req.cryptoKeyVersion ?? {}) as Req;
      const name = str(body.name);
      checkVersionName(name);
      const paths = ((req.updateMask as { paths?: unknown } | null)?.paths ?? []) as unknown[];
      if (paths.length !== 1 || paths[0] !== 'state') throw invalid('update_mask must be exactly ["state"].');
      authorize(principal, P.versionsUpdate, name);
      const { version } = requireVersion(name);
      const target = str(body.state);
      if (target !== 'ENABLED' && target !== 'DISABLED') {
        throw invalid(
          `The state of a CryptoKeyVersion can only be updated to ENABLED or DISABLED, not ${target}.`,
        );
      }
      if (version.state !== 'ENABLED' && version.state !== 'DISABLED') {
        throw new RpcError(
          grpc.status.FAILED_PRECONDITION,
          `${name} cannot be updated, current state is: ${version.state}.`,
        );
      }
      version.state = target;
      return versionMessage(version);
    },
    DestroyCryptoKeyVersion: (req, principal) => {
      const name = str(req.name);
      checkVersionName(name);
      authorize(principal, P.versionsDestroy, name);
      const { key, version } = requireVersion(name);
      if (version.state !== 'ENABLED' && version.state !== 'DISABLED') {
        throw new RpcError(
          grpc.status.FAILED_PRECONDITION,
          `${name} cannot be destroyed, current state is: ${version.state}.`,
        );
      }
      version.state = 'DESTROY_SCHEDULED';
      version.destroyTime = new Date(Date.now() + key.destroyScheduledSeconds * 1000);
      return versionMessage(version);
    },
    RestoreCryptoKeyVersion: (req, principal) => {
      const name = str(req.name);
      checkVersionName(name);
      authorize(principal, P.versionsRestore, name);
      const { version } = requireVersion(name);
      if (version.state !== 'DESTROY_SCHEDULED') {
        throw new RpcError(
          grpc.status.FAILED_PRECONDITION,
          `${name} cannot be restored, current state is: ${version.state}.`,
        );
      }
      version.state = 'DISABLED';
      version.destroyTime = undefined;
      return versionMessage(version);
    },
  };

  /** The CryptoKey a request names, for counters and fault filters. */
  function keyOfRequest(method: GcpKmsMethod, req: Req): string | undefined {
    switch (method) {
      case 'CreateCryptoKey':
        return keyOfName(`${str(req.parent)}/cryptoKeys/${str(req.cryptoKeyId)}`);
      case 'ListCryptoKeyVersions':
      case 'CreateCryptoKeyVersion':
        return keyOfName(req.parent);
      case 'UpdateCryptoKeyVersion':
        return keyOfName((req.cryptoKeyVersion as Req | null)?.name);
      default:
        return keyOfName(req.name);
    }
  }

  // -- faults ------------------------------------------------------------------------------------

  function matches(f: GcpFaultFilter, method: GcpKmsMethod, key: string | undefined, email: string): boolean {
    if (f.methods && f.methods.length > 0 && !f.methods.includes(method)) return false;
    if (f.keys && f.keys.length > 0 && (key === undefined || !f.keys.includes(key))) return false;
    if (f.principals && f.principals.length > 0 && !f.principals.includes(email)) return false;
    return true;
  }

  async function applyFaults(
    method: GcpKmsMethod,
    key: string | undefined,
    principal: Principal,
    call: grpc.ServerUnaryCall<unknown, unknown>,
  ): Promise<Corruptions> {
    const active = faultList.filter((f) => matches(f.filter, method, key, principal.email));
    const delay = active.filter((f) => f.kind === 'latency').reduce((sum, f) => sum + (f.ms ?? 0), 0);
    if (delay > 0) await new Promise((r) => setTimeout(r, delay));
    if (active.some((f) => f.kind === 'hang' && faultList.includes(f))) {
      if (call.cancelled) throw new RpcError(grpc.status.CANCELLED, 'The call was cancelled.');
      const outcome = await new Promise<'go' | 'closed'>((resolve) => {
        const entry = {
          release: (o: 'go' | 'closed') => {
            hung.delete(entry);
            resolve(o);
          },
        };
        hung.add(entry);
        call.once('cancelled', () => entry.release('closed'));
      });
      if (outcome === 'closed') throw new RpcError(grpc.status.CANCELLED, 'The call was cancelled.');
    }
    const failure = active.find((f) => f.kind === 'fail' && f.remaining > 0 && faultList.includes(f));
    if (failure) {
      failure.remaining--;
      throw faultError(failure.status ?? 'UNAVAILABLE');
    }
    const corrupt: Corruptions = new Set();
    for (const f of active) {
      if (f.kind === 'corrupt' && f.remaining > 0 && f.field && faultList.includes(f)) {
        f.remaining--;
        corrupt.add(f.field);
      }
    }
    faultList = faultList.filter((f) => f.kind === 'latency' || f.kind === 'hang' || f.remaining > 0);
    return corrupt;
  }

  function faultError(status: GcpFaultStatus): RpcError {
    switch (status) {
      case 'RESOURCE_EXHAUSTED':
        return new RpcError(
          grpc.status.RESOURCE_EXHAUSTED,
          "Quota exceeded for quota metric 'Cryptographic requests' and limit 'Cryptographic requests " +
            "per minute per region' of service 'cloudkms.googleapis.com'.",
        );
      case 'UNAVAILABLE':
        return new RpcError(grpc.status.UNAVAILABLE, 'The service is currently unavailable.');
      case 'INTERNAL':
        return new RpcError(grpc.status.INTERNAL, 'Internal error encountered.');
      case 'DEADLINE_EXCEEDED':
        return new RpcError(grpc.status.DEADLINE_EXCEEDED, 'Deadline exceeded.');
      case 'ABORTED':
        return new RpcError(grpc.status.ABORTED, 'The operation was aborted.');
      default:
        return new RpcError(grpc.status.UNKNOWN, 'Unknown error.');
    }
  }

  function addFault(entry: FaultEntry): void {
    if (!Number.isInteger(entry.remaining) || entry.remaining < 0) {
      throw new Error('fault count must be a non-negative integer');
    }
    faultList.push(entry);
  }

  const faults: GcpKmsFaults = {
    fail: (count, status, filter = {}) => addFault({ kind: 'fail', filter, remaining: count, status }),
    latency: (ms, filter = {}) => addFault({ kind: 'latency', filter, remaining: 1, ms }),
    hang: (filter = {}) => addFault({ kind: 'hang', filter, remaining: 1 }),
    corrupt: (count, field, filter = {}) => addFault({ kind: 'corrupt', filter, remaining: count, field }),
    get hungCalls() {
      return hung.size;
    },
    clear() {
      faultList = [];
      for (const h of [...hung]) h.release('go');
    },
  };

  // -- counters ------------------------------------------------------------------------------

  function record(method: GcpKmsMethod, key: string | undefined): MutableCallRecord {
    const r: MutableCallRecord = { method, key, principal: undefined, token: undefined, status: undefined };
    records.push(r);
    if (records.length > MAX_CALL_RECORDS) records = records.slice(-MAX_CALL_RECORDS);
    tally.total++;
    bump(tally.method, method);
    if (key !== undefined) bump(tally.key, key);
    return r;
  }

  const counters: GcpKmsCounters = {
    get total() {
      return tally.total;
    },
    method: (name) => tally.method.get(name) ?? 0,
    key: (name) => tally.key.get(name) ?? 0,
    principal: (email) => principalTally.get(email) ?? 0,
    errors: (status) =>
      status === undefined
        ? [...errorTally.values()].reduce((a, b) => a + b, 0)
        : (errorTally.get(status) ?? 0),
    get calls() {
      return records.map((r) => Object.freeze({ ...r }));
    },
    reset() {
      records = [];
      tally.total = 0;
      tally.method.clear();
      tally.key.clear();
      principalTally.clear();
      errorTally.clear();
    },
  };

  // -- gRPC wiring -------------------------------------------------------------------------------

  function handler(method: GcpKmsMethod): grpc.handleUnaryCall<Req, Record<string, unknown>> {
    return (call, callback) => {
      const req = (call.request ?? {}) as Req;
      const rec = record(method, keyOfRequest(method, req));
      const finish = (err: RpcError | undefined, response?: Record<string, unknown>) => {
        const code = err?.code ?? grpc.status.OK;
        rec.status = statusName(code);
        if (code !== grpc.status.OK) errorTally.set(rec.status, (errorTally.get(rec.status) ?? 0) + 1);
        if (err) callback({ code: err.code, details: err.message, metadata: new grpc.Metadata() });
        else callback(null, response);
      };
      (async () => {
        const principal = authenticate(call.metadata);
        rec.principal = principal.email;
        rec.token = principal.token;
        principalTally.set(principal.email, (principalTally.get(principal.email) ?? 0) + 1);
        const corrupt = await applyFaults(method, rec.key, principal, call);
        if (closed) throw new RpcError(grpc.status.UNAVAILABLE, 'The server is shutting down.');
        return impls[method](req, principal, corrupt);
      })().then(
        (response) => finish(undefined, response),
        (e: unknown) =>
          finish(
            e instanceof RpcError ? e : new RpcError(grpc.status.INTERNAL, 'Internal error encountered.'),
          ),
      );
    };
  }

  const implementation: grpc.UntypedServiceImplementation = {};
  for (const method of Object.keys(impls) as GcpKmsMethod[]) implementation[method] = handler(method);
  const server = new grpc.Server();
  server.addService(service, implementation);
  port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${options.port ?? 0}`, grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );

  // -- handle --------------------------------------------------------------------------------------

  const keyRingName = (ring: string) =>
    ring.includes('/') ? ring : `projects/${projectId}/locations/${location}/keyRings/${ring}`;

  const helper = <T>(fn: () => T): T => {
    try {
      return fn();
    } catch (e) {
      throw e instanceof RpcError ? new Error(e.message) : e;
    }
  };

  function initialPolicies(adminEmail: string): void {
    policies.clear();
    policies.set(
      `projects/${projectId}`,
      checkPolicy({
        bindings: [{ role: 'roles/owner', members: [`serviceAccount:${adminEmail}`] }],
      }),
    );
  }

  function checkPolicyResource(resource: string): void {
    if (/^projects\/[^/]+$/.test(resource)) return;
    if (!keyRings.has(resource) && !keys.has(resource)) {
      throw new Error(`no project, key ring or key named ${resource}`);
    }
  }

  /** The google-gax copy that @google-cloud/kms loads (its grpc-js checks `instanceof` on sslCreds). */
  function loadGax(): typeof import('google-gax') {
    return kmsPackageRequire()('google-gax');
  }

  const admin = await createServiceAccount({ accountId: 'kms-admin' });
  initialPolicies(admin.client_email);

  const handle: GcpKmsServer = {
    apiEndpoint: '127.0.0.1',
    get port() {
      return port;
    },
    projectId,
    location,
    admin,
    faults,
    counters,
    clientOptions(credentials = admin) {
      const gax = loadGax();
      return {
        apiEndpoint: '127.0.0.1',
        port,
        sslCreds: gax.grpc.credentials.createInsecure(),
        authClient: new gax.googleAuthLibrary.JWT({
          email: credentials.client_email,
          key: credentials.private_key,
          keyId: credentials.private_key_id,
        }),
        projectId: credentials.project_id,
      };
    },
    callOptions(credentials = admin) {
      const now = Math.floor(Date.now() / 1000);
      const token = signJwt(keyStateOf(credentials), {
        iss: credentials.client_email,
        sub: credentials.client_email,
        aud: `http://127.0.0.1:${port}/`,
        iat: now,
        exp: now + 3600,
      });
      return { otherArgs: { headers: { authorization: `Bearer ${token}` } } };
    },
    createKeyRing: (ring) => helper(() => addKeyRing(keyRingName(ring)).name),
    createCryptoKey: (o = {}) =>
      helper(() => {
        const ring = keyRingName(o.keyRing ?? 'test-ring');
        if (!keyRings.has(ring)) addKeyRing(ring);
        const key = addKey(ring, o.cryptoKeyId ?? `key-${randomBytes(4).toString('hex')}`, {
          purpose: o.purpose ?? 'ENCRYPT_DECRYPT',
          algorithm: o.algorithm,
          protectionLevel: o.protectionLevel,
          rotationPeriodSeconds: o.rotationPeriodSeconds,
          nextRotationTime: undefined,
          labels: { ...o.labels },
          destroyScheduledSeconds: o.destroyScheduledDurationSeconds,
          skipInitialVersionCreation: o.skipInitialVersionCreation === true,
        });
        return keyInfo(key);
      }),
    createCryptoKeyVersion: (keyName, o = {}) =>
      helper(() => {
        const key = requireKey(keyName);
        const version = addVersion(key);
        if (o.primary) key.primary = version.id;
        return version.name;
      }),
    getCryptoKey: (keyName) => helper(() => keyInfo(requireKey(keyName))),
    setVersionState: (name, state) =>
      helper(() => {
        let version: VersionState | undefined;
        if (VERSION_NAME_RE.test(name)) version = requireVersion(name).version;
        else {
          const key = requireKey(name);
          version = key.primary === undefined ? undefined : key.versions.get(key.primary);
          if (!version) throw new Error(`${name} has no primary version`);
        }
        if (version.state === 'DESTROYED' && state !== 'DESTROYED') {
          throw new Error(`${version.name} is destroyed: its key material is gone`);
        }
        version.state = state;
        if (state === 'DESTROYED') {
          version.material?.fill(0);
          version.material = undefined;
          version.destroyEventTime = new Date();
        }
        if (state === 'DESTROY_SCHEDULED') version.destroyTime ??= new Date(Date.now() + 86400_000);
        if (state === 'ENABLED' || state === 'DISABLED') version.destroyTime = undefined;
      }),
    setPrimaryVersion: (keyName, v) =>
      helper(() => {
        const key = requireKey(keyName);
        const id = typeof v === 'number' ? v : checkVersionName(v).id;
        const version = key.versions.get(id);
        if (!version) throw new Error(`${keyName} has no version ${id}`);
        key.primary = id;
      }),
    setPolicy(resource, policy) {
      checkPolicyResource(resource);
      policies.set(resource, checkPolicy(policy));
    },
    getPolicy: (resource) => policies.get(resource) ?? Object.freeze({ bindings: Object.freeze([]) }),
    grant(resource, member, role) {
      checkPolicyResource(resource);
      const m = memberString(member);
      const current = policies.get(resource)?.bindings ?? [];
      const existing = current.find((b) => b.role === role);
      const bindings = existing
        ? current.map((b) =>
            b === existing && !b.members.includes(m) ? { ...b, members: [...b.members, m] } : b,
          )
        : [...current, { role, members: [m] }];
      policies.set(resource, checkPolicy({ bindings }));
    },
    revoke(resource, member, role) {
      const m = memberString(member);
      const current = policies.get(resource)?.bindings ?? [];
      const bindings = current
        .map((b) =>
          role === undefined || b.role === role ? { ...b, members: b.members.filter((x) => x !== m) } : b,
        )
        .filter((b) => b.members.length > 0);
      policies.set(resource, checkPolicy({ bindings }));
    },
    createServiceAccount,
    async createServiceAccountKey(email) {
      const sa = serviceAccounts.get(email);
      if (!sa) throw new Error(`no service account ${email}`);
      return newKey(email, sa.projectId);
    },
    deleteServiceAccountKey(privateKeyId) {
      if (!saKeys.delete(privateKeyId)) throw new Error(`no service-account key ${privateKeyId}`);
    },
    issueAccessToken(member, o = {}) {
      const email = memberString(member).replace(/^serviceAccount:/, '');
      if (!serviceAccounts.has(email)) throw new Error(`no service account ${email}`);
      const token = `ya29.local-${randomBytes(24).toString('base64url')}`;
      accessTokens.set(token, { email, expires: Date.now() + (o.ttlSeconds ?? 3600) * 1000 });
      return token;
    },
    reset() {
      faults.clear();
      counters.reset();
      keys.clear();
      keyRings.clear();
      accessTokens.clear();
      for (const [id, k] of saKeys) if (k.email !== admin.client_email) saKeys.delete(id);
      for (const email of serviceAccounts.keys())
        if (email !== admin.client_email) serviceAccounts.delete(email);
      initialPolicies(admin.client_email);
    },
    async close() {
      if (closed) return;
      closed = true;
      for (const h of [...hung]) h.release('closed');
      server.forceShutdown();
    },
  };
  return handle;
}
