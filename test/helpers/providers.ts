/**
 * One harness per key manager for the shared lifecycle suite: a local server speaking the real
 * wire protocol, the real client, and the tenant-side actions (rotate the key's version, revoke the
 * platform's access and restore it, an outage).
 */
import { randomBytes } from 'node:crypto';
import type { Kek, KekFactory } from '../../src/index.ts';
import { awsKekFactory, awsKms } from '../../src/kms/aws.ts';
import { azureKekFactory, azureKeyVault } from '../../src/kms/azure/index.ts';
import { gcpKekFactory, gcpKms } from '../../src/kms/gcp.ts';
import { vaultKekFactory, vaultTransit } from '../../src/kms/vault/index.ts';
import { type AwsKmsServer, type IamUser, startAwsKmsServer } from '../../src/testing/aws-kms-server.ts';
import {
  type GcpKmsServer,
  type GcpServiceAccountKey,
  startGcpKmsServer,
} from '../../src/testing/gcp-kms-server.ts';
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
  rotateVersion(): void;
  /** After every data key was re-wrapped: retire what the rotation replaced (where the KMS can). */
  retireOldVersions(): void;
  /** Removes the platform's permission to use the key. */
  revoke(): void;
  restore(): void;
}

export interface ProviderHarness {
  readonly name: string;
  readonly kind: string;
  readonly factory: KekFactory;
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

export function azureHarness(): ProviderHarness {
  let az: AzureKeyVaultServer;
  let app: AzureAppRegistration;
  return {
    name: 'Azure Key Vault',
    kind: 'azure-key-vault',
    factory: azureKekFactory,
    async start() {
      az = await startAzureKeyVaultServer();
      app = az.addApp();
    },
    stop: () => az.close(),
    async newKey() {
      const keyId = az.createKey();
      const name = keyId.slice(keyId.lastIndexOf('/') + 1);
      az.grant(name, app.clientId);
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
        rotateVersion: () => void az.rotateKey(name),
        retireOldVersions() {
          for (const v of az.versions(name).slice(0, -1)) az.setEnabled(name, false, v);
        },
        revoke: () => az.revoke(name, app.clientId),
        restore: () => az.grant(name, app.clientId),
      };
    },
    unwraps: () => az.counters.operation('unwrapKey'),
    resetCounters: () => az.counters.reset(),
    outage: () => az.faults.fail(1_000_000, 503, { operations: ['getKey', 'wrapKey', 'unwrapKey'] }),
    recover: () => az.faults.clear(),
  };
}
