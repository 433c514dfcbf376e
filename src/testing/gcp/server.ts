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
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { CallOptions, ClientOptions } from 'google-gax';
import { type CreateServiceAccountOptions, type GcpServiceAccountKey, ServiceAccounts } from './auth.ts';
import type { GcpServerState, MethodImpl } from './context.ts';
import { CallLog, FaultBox, type GcpKmsCounters, type GcpKmsFaults } from './faults.ts';
import { type GcpIamPolicy, type GcpKmsRole, IamPolicies } from './iam.ts';
import { resourceMethods } from './kms-admin.ts';
import { cryptoMethods } from './kms-crypto.ts';
import {
  type CreateCryptoKeyOptions,
  type GcpCryptoKeyInfo,
  type GcpKeyVersionState,
  KeyModel,
  keyInfo,
} from './keys.ts';
import { keyOfRequest, LOCATION_RE, PROJECT_RE } from './names.ts';
import { type GcpKmsMethod, type Req, RpcError } from './protocol.ts';
import { loadGax, loadProtos } from './protos.ts';

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

  const keys = new KeyModel();
  const iam = new IamPolicies(keys);
  const accounts = new ServiceAccounts(projectId, skew);
  const faultBox = new FaultBox();
  const calls = new CallLog();
  const faults = faultBox.api();
  const counters = calls.counters;
  const state: GcpServerState = { keys, iam };
  const impls: Record<GcpKmsMethod, MethodImpl> = { ...cryptoMethods(state), ...resourceMethods(state) };
  let port = 0;
  let closed = false;

  function handler(method: GcpKmsMethod): grpc.handleUnaryCall<Req, Record<string, unknown>> {
    return (call, callback) => {
      const req = (call.request ?? {}) as Req;
      const rec = calls.record(method, keyOfRequest(method, req));
      const finish = (err: RpcError | undefined, response?: Record<string, unknown>) => {
        calls.finished(rec, err?.code ?? grpc.status.OK);
        if (err) callback({ code: err.code, details: err.message, metadata: new grpc.Metadata() });
        else callback(null, response);
      };
      (async () => {
        const principal = accounts.authenticate(call.metadata);
        calls.authenticated(rec, principal);
        const corrupt = await faultBox.apply(method, rec.key, principal, call);
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
  accounts.port = port;

  const keyRingName = (ring: string) =>
    ring.includes('/') ? ring : `projects/${projectId}/locations/${location}/keyRings/${ring}`;

  const helper = <T>(fn: () => T): T => {
    try {
      return fn();
    } catch (e) {
      throw e instanceof RpcError ? new Error(e.message) : e;
    }
  };

  const admin = await accounts.create({ accountId: 'kms-admin' });
  iam.initial(projectId, admin.client_email);

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
      const token = accounts.selfSignedToken(credentials);
      return { otherArgs: { headers: { authorization: `Bearer ${token}` } } };
    },
    createKeyRing: (ring) => helper(() => keys.addKeyRing(keyRingName(ring)).name),
    createCryptoKey: (o = {}) =>
      helper(() => {
        const ring = keyRingName(o.keyRing ?? 'test-ring');
        if (!keys.keyRings.has(ring)) keys.addKeyRing(ring);
        const key = keys.addKey(ring, o.cryptoKeyId ?? `key-${randomBytes(4).toString('hex')}`, {
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
        const key = keys.requireKey(keyName);
        const version = keys.addVersion(key);
        if (o.primary) key.primary = version.id;
        return version.name;
      }),
    getCryptoKey: (keyName) => helper(() => keyInfo(keys.requireKey(keyName))),
    setVersionState: (name, state) => helper(() => keys.setVersionState(name, state)),
    setPrimaryVersion: (keyName, v) => helper(() => keys.setPrimaryVersion(keyName, v)),
    setPolicy: (resource, policy) => iam.set(resource, policy),
    getPolicy: (resource) => iam.get(resource),
    grant: (resource, member, role) => iam.grant(resource, member, role),
    revoke: (resource, member, role) => iam.revoke(resource, member, role),
    createServiceAccount: (o) => accounts.create(o),
    createServiceAccountKey: (email) => accounts.createKey(email),
    deleteServiceAccountKey: (privateKeyId) => accounts.deleteKey(privateKeyId),
    issueAccessToken: (member, o) => accounts.issueAccessToken(member, o),
    reset() {
      faults.clear();
      counters.reset();
      keys.clear();
      accounts.reset(admin.client_email);
      iam.initial(projectId, admin.client_email);
    },
    async close() {
      if (closed) return;
      closed = true;
      faultBox.closeHung();
      server.forceShutdown();
    },
  };
  return handle;
}
