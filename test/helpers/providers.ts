/**
 * One harness per key manager for the shared lifecycle suite: a local server speaking the real
 * wire protocol, the real client, and the tenant-side actions (rotate the key's version, revoke the
 * platform's access and restore it, an outage).
 */
import { randomBytes } from 'node:crypto';
import { ClientSecretCredential } from '@azure/identity';
import { KeyClient } from '@azure/keyvault-keys';
import {
  type ByokError,
  type Kek,
  type KekFactory,
  KeyAccessDeniedError,
  KeyDisabledError,
} from '../../src/index.ts';
import { awsKekFactory, awsKms } from '../../src/kms/aws/index.ts';
import { azureKekFactory, azureKeyVault } from '../../src/kms/azure/index.ts';
import { gcpKekFactory, gcpKms } from '../../src/kms/gcp/index.ts';
import { vaultKekFactory, vaultTransit } from '../../src/kms/vault/index.ts';
import { type AwsKmsServer, type IamUser, startAwsKmsServer } from '../../src/testing/aws/index.ts';
import {
  type GcpKmsServer,
  type GcpServiceAccountKey,
  startGcpKmsServer,
} from '../../src/testing/gcp/index.ts';
import {
  type AzureAppRegistration,
  type AzureKeyVaultServer,
  startAzureKeyVaultServer,
} from '../../src/testing/azure/index.ts';
import { startVaultServer, type VaultServer } from '../../src/testing/vault/index.ts';

/** A tenant's key, as the tenant's administrator acts on it. */
export interface TenantKey {
  /** A fresh KEK object (the platform's client) for this key. */
  kek(): Kek;
  readonly keyRef: string;
  /** A new version / key behind the same reference (Cloud KMS primary, alias move, transit rotate). */
  rotateVersion(): void | Promise<void>;
  /** After every data key was re-wrapped: retire what the rotation replaced (where the KMS can). */
  retireOldVersions(): void | Promise<void>;
  /** The tenant cuts the platform off: its permission removed, or the key disabled. */
  revoke(): void | Promise<void>;
  restore(): void | Promise<void>;
}

export interface ProviderHarness {
  readonly name: string;
  readonly kind: string;
  readonly factory: KekFactory;
  /** The error reads fail with once the tenant revoked (`TenantKey.revoke`). */
  readonly revokedAs: abstract new (
    ...args: never[]
  ) => ByokError;
  start(): Promise<void>;
  stop(): Promise<void>;
  newKey(): Promise<TenantKey>;
  /** Unwrap calls the server saw since the last reset. */
  unwraps(): number;
  resetCounters(): void;
  /** Every call fails as unavailable until `recover()`. */
  outage(): void;
  recover(): void;
}

export function awsHarness(): ProviderHarness {
  let aws: AwsKmsServer;
  let user: IamUser;
  return {
    name: 'AWS KMS',
    kind: 'aws-kms',
    revokedAs: KeyAccessDeniedError,
    factory: awsKekFactory,
    async start() {
      aws = await startAwsKmsServer();
      user = aws.addUser({ name: 'platform' });
    },
    stop: () => aws.close(),
    async newKey() {
      const first = aws.createKey();
      const alias = aws.createAlias(`alias/t-${randomBytes(4).toString('hex')}`, first.arn);
      const keys = [first.arn];
      const policy = aws.getPolicy(first.arn);
      const denyAll = JSON.stringify({
        Version: '2012-10-17',
        Statement: [
          {
            Effect: 'Allow',
            Principal: { AWS: `arn:aws:iam::${aws.accountId}:root` },
            Action: 'kms:DescribeKey',
            Resource: '*',
          },
        ],
      });
      return {
        keyRef: alias,
        kek: () =>
          awsKms({
            keyArn: alias,
            auth: {
              type: 'access-keys',
              accessKeyId: user.accessKeyId,
              secretAccessKey: user.secretAccessKey,
            },
            endpoint: aws.endpoint,
            stsEndpoint: aws.stsEndpoint,
            timeoutMs: 1000,
            maxAttempts: 1,
          }),
        rotateVersion() {
          const next = aws.createKey();
          keys.push(next.arn);
          aws.updateAlias(alias, next.arn);
        },
        retireOldVersions() {
          for (const k of keys.slice(0, -1)) aws.setKeyState(k, 'Disabled');
        },
        revoke: () => {
          for (const k of keys) aws.setPolicy(k, denyAll);
        },
        restore: () => {
          for (const k of keys) aws.setPolicy(k, policy);
        },
      };
    },
    unwraps: () => aws.counters.operation('Decrypt'),
    resetCounters: () => aws.counters.reset(),
    outage: () => aws.faults.fail(1_000_000, { status: 503 }),
    recover: () => aws.faults.clear(),
  };
}

export function gcpHarness(): ProviderHarness {
  let gcp: GcpKmsServer;
  let sa: GcpServiceAccountKey;
  return {
    name: 'Google Cloud KMS',
    kind: 'gcp-kms',
    revokedAs: KeyAccessDeniedError,
    factory: gcpKekFactory,
    async start() {
      gcp = await startGcpKmsServer();
      sa = await gcp.createServiceAccount();
    },
    stop: () => gcp.close(),
    async newKey() {
      const key = gcp.createCryptoKey({
        keyRing: `ring-${randomBytes(3).toString('hex')}`,
        cryptoKeyId: 'k',
      });
      gcp.grant(key.name, sa, 'roles/cloudkms.cryptoKeyEncrypterDecrypter');
      gcp.grant(key.name, sa, 'roles/cloudkms.viewer');
      const versions = [key.primary!];
      return {
        keyRef: key.name,
        kek: () =>
          gcpKms({
            keyName: key.name,
            credentials: { type: 'service-account', key: { ...sa } },
            apiEndpoint: gcp.apiEndpoint,
            port: gcp.port,
            insecure: true,
            timeoutMs: 2000,
            retries: 0,
          }),
        rotateVersion() {
          versions.push(gcp.createCryptoKeyVersion(key.name, { primary: true }));
        },
        retireOldVersions() {
          for (const v of versions.slice(0, -1)) gcp.setVersionState(v, 'DISABLED');
        },
        revoke: () => gcp.revoke(key.name, sa, 'roles/cloudkms.cryptoKeyEncrypterDecrypter'),
        restore: () => gcp.grant(key.name, sa, 'roles/cloudkms.cryptoKeyEncrypterDecrypter'),
      };
    },
    unwraps: () => gcp.counters.method('Decrypt'),
    resetCounters: () => gcp.counters.reset(),
    outage: () => gcp.faults.fail(1_000_000, 'UNAVAILABLE'),
    recover: () => gcp.faults.clear(),
  };
}

/** The policy a tenant writes for the platform on one transit key (what onboarding prints). */
export function vaultPolicyFor(mount: string, key: string): string {
  return [
    `path "${mount}/encrypt/${key}" { capabilities = ["update"] }`,
    `path "${mount}/decrypt/${key}" { capabilities = ["update"] }`,
    `path "${mount}/rewrap/${key}" { capabilities = ["update"] }`,
    `path "${mount}/keys/${key}" { capabilities = ["read"] }`,
  ].join('\n');
}

export function vaultHarness(): ProviderHarness {
  let vault: VaultServer;
  return {
    name: 'HashiCorp Vault Transit',
    kind: 'vault-transit',
    revokedAs: KeyAccessDeniedError,
    factory: vaultKekFactory,
    async start() {
      vault = await startVaultServer();
    },
    stop: () => vault.close(),
    async newKey() {
      const ns = vault.namespace(`tenant-${randomBytes(3).toString('hex')}`);
      const name = ns.createKey('drizzle-byok');
      const policy = vaultPolicyFor('transit', name);
      ns.putPolicy('drizzle-byok', policy);
      const { roleId, secretId } = ns.addAppRole({ name: 'platform', policies: ['drizzle-byok'] });
      return {
        keyRef: `${vault.address}/v1/${ns.path}/transit/keys/${name}`,
        kek: () =>
          vaultTransit({
            address: vault.address,
            namespace: ns.path,
            keyName: name,
            auth: { type: 'approle', roleId, secretId },
            timeoutMs: 2000,
            retries: 0,
          }),
        rotateVersion: () => void ns.rotateKey(name),
        retireOldVersions() {
          ns.configureKey(name, { minDecryptionVersion: ns.getKey(name).latest_version as number });
        },
        revoke: () => ns.deletePolicy('drizzle-byok'),
        restore: () => ns.putPolicy('drizzle-byok', policy),
      };
    },
    unwraps: () => vault.counters.operation('decrypt'),
    resetCounters: () => vault.counters.reset(),
    outage: () => vault.faults.fail(1_000_000, 503),
    recover: () => vault.faults.clear(),
  };
}

/**
 * Azure: the tenant's administrator (`Key Vault Crypto Officer` on the vault) creates, rotates,
 * retires and disables its key with its own `KeyClient` over the wire; the platform's role
 * assignment on the key is Azure RBAC, outside the vault, so it is made on the server handle.
 * Revocation is the tenant disabling every version of its key.
 */
export function azureHarness(): ProviderHarness {
  let az: AzureKeyVaultServer;
  let app: AzureAppRegistration;
  let tenant: KeyClient;
  return {
    name: 'Azure Key Vault',
    kind: 'azure-key-vault',
    factory: azureKekFactory,
    revokedAs: KeyDisabledError,
    async start() {
      az = await startAzureKeyVaultServer();
      app = az.addApp();
      const admin = az.addApp();
      az.grant('*', admin.clientId, 'Key Vault Crypto Officer');
      const tls = { tlsOptions: { ca: az.caCertificate }, retryOptions: { maxRetries: 0 } };
      tenant = new KeyClient(
        az.url,
        new ClientSecretCredential(admin.tenantId, admin.clientId, admin.clientSecret, {
          ...tls,
          authorityHost: az.url,
          disableInstanceDiscovery: true,
        }),
        { ...tls, disableChallengeResourceVerification: true },
      );
    },
    stop: () => az.close(),
    async newKey() {
      const name = `byok-${randomBytes(4).toString('hex')}`;
      const created = await tenant.createRsaKey(name, { keyOps: ['wrapKey', 'unwrapKey'] });
      const versions = [created.properties.version!];
      const retired = new Set<string>();
      az.grant(name, app.clientId);
      const keyId = az.keyId(name);
      const setAll = async (enabled: boolean) => {
        for (const v of versions) if (!retired.has(v)) await tenant.updateKeyProperties(name, v, { enabled });
      };
      return {
        keyRef: keyId,
        kek: () =>
          azureKeyVault({
            keyId,
            credential: { type: 'client-secret', ...app },
            authorityHost: az.url,
            caCertificate: az.caCertificate,
            timeoutMs: 3000,
            retries: 0,
          }),
        async rotateVersion() {
          versions.push((await tenant.rotateKey(name)).properties.version!);
        },
        async retireOldVersions() {
          for (const v of versions.slice(0, -1)) {
            await tenant.updateKeyProperties(name, v, { enabled: false });
            retired.add(v);
          }
        },
        revoke: () => setAll(false),
        restore: () => setAll(true),
      };
    },
    // Not the challenge: a new client (one per key version) first sends its unwrap without a
    // token, is answered 401 with where to get one, and sends it again with the cached token.
    unwraps: () => az.counters.calls.filter((c) => c.operation === 'unwrapKey' && c.status !== 401).length,
    resetCounters: () => az.counters.reset(),
    outage: () => az.faults.fail(1_000_000, 503, { operations: ['getKey', 'wrapKey', 'unwrapKey'] }),
    recover: () => az.faults.clear(),
  };
}
