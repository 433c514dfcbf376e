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
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { AwsServerState } from './context.ts';
import { type AwsKmsCounters, type AwsKmsFaults, CallLog, FaultBox } from './faults.ts';
import {
  type AddRoleOptions,
  type AddUserOptions,
  type AddWebIdentityProviderOptions,
  IamDirectory,
  type IamRole,
  type IamUser,
  type RoleTrust,
  type WebIdentityProvider,
  type WebIdentityTokenOptions,
} from './identity.ts';
import { type AwsKeyState, type AwsKmsKeyInfo, type CreateKeyOptions, KeyStore } from './keys.ts';
import { handleKms } from './kms.ts';
import type { PolicyDocument } from './policies.ts';
import { headerValue, readBody, sendJson } from './protocol.ts';
import { handleSts } from './sts.ts';

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

/** Routes a request: `X-Amz-Target: TrentService.*` to KMS, a form-encoded body to STS. */
async function route(state: AwsServerState, req: IncomingMessage, res: ServerResponse): Promise<void> {
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
    await handleKms(state, req, res, target.slice('TrentService.'.length), body);
  } else if (req.method === 'POST' && contentType.startsWith('application/x-www-form-urlencoded')) {
    await handleSts(state, req, res, body);
  } else if (!state.faults.closed) {
    sendJson(res, 400, { __type: 'UnknownOperationException', message: 'Unknown operation' });
  }
}

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
  const defaultRegion = options.region ?? 'us-east-1';
  const defaultAccount = options.accountId ?? '111122223333';
  if (!/^\d{12}$/.test(defaultAccount)) throw new Error('accountId must be 12 digits');
  const keys = new KeyStore(defaultRegion, defaultAccount);
  const state: AwsServerState = {
    keys,
    iam: new IamDirectory(defaultAccount),
    faults: new FaultBox((ref) => keys.sameKeyArns(ref)),
    calls: new CallLog(defaultRegion, (ref) => keys.adminKey(ref).arn),
    maxSkewMs: (options.maxClockSkewSeconds ?? 900) * 1000,
  };
  const { iam, faults, calls } = state;
  const server: Server = createServer((req, res) => {
    route(state, req, res).catch(() => {
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

  return {
    endpoint,
    stsEndpoint: endpoint,
    region: defaultRegion,
    accountId: defaultAccount,
    faults: faults.api(),
    counters: calls.counters,
    createKey: (o) => keys.info(keys.createKey(o)),
    replicateKey: (primary, region) => keys.info(keys.replicateKey(primary, region)),
    createAlias: (alias, key) => keys.createAlias(alias, key),
    updateAlias: (alias, key) => keys.updateAlias(alias, key),
    deleteAlias: (alias) => keys.deleteAlias(alias),
    getPolicy: (key) => keys.adminKey(key).policyText,
    describeKey: (key) => keys.info(keys.adminKey(key)),
    setKeyState: (key, s) => keys.setKeyState(key, s),
    setPolicy: (key, policy) => keys.setPolicy(key, policy),
    addUser: (o) => iam.addUser(o),
    addRole: (o) => iam.addRole(o),
    setRoleTrust: (roleArn, trust) => iam.setRoleTrust(roleArn, trust),
    addWebIdentityProvider: (o) => iam.addWebIdentityProvider(o),
    issueWebIdentityToken: (o) => iam.issueWebIdentityToken(o),
    expireSessions: () => iam.expireSessions(),
    reset: () => {
      faults.clear();
      calls.reset();
    },
    close: () => {
      closing ??= new Promise<void>((resolve) => {
        faults.shutdown();
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
