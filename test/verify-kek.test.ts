/**
 * `verifyKek` refuses a key that cannot wrap data keys in its provider's own words: Azure Key Vault
 * and Vault Transit keys are described with their key types, permitted operations and dates, not
 * with AWS or Cloud KMS names. Real clients, local servers, real PostgreSQL.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ByokError, KeyDisabledError, KeyUsageError, localKek, verifyKek } from '../src/index.ts';
import { awsKekFactory, awsKms } from '../src/kms/aws/index.ts';
import { azureKekFactory, azureKeyVault } from '../src/kms/azure/index.ts';
import { vaultKekFactory, vaultTransit } from '../src/kms/vault/index.ts';
import { type AwsKmsServer, type IamUser, startAwsKmsServer } from '../src/testing/aws/index.ts';
import {
  type AzureAppRegistration,
  type AzureKeyVaultServer,
  startAzureKeyVaultServer,
} from '../src/testing/azure/index.ts';
import { startVaultServer, type VaultServer } from '../src/testing/vault/index.ts';
import { MAIN_DRIVER, uniqueTenant } from './helpers/db.ts';
import { vaultPolicyFor } from './helpers/providers.ts';
import { type EncryptedDb, setupEncryptedDb } from './helpers/setup.ts';

let e: EncryptedDb;
let az: AzureKeyVaultServer;
let app: AzureAppRegistration;
let vault: VaultServer;
let aws: AwsKmsServer;
let user: IamUser;
beforeAll(async () => {
  [az, vault, aws] = await Promise.all([startAzureKeyVaultServer(), startVaultServer(), startAwsKmsServer()]);
  app = az.addApp();
  user = aws.addUser({ name: 'platform' });
  e = await setupEncryptedDb(MAIN_DRIVER, {
    kek: localKek({ key: randomBytes(32) }),
    keyring: {
      kekFactories: {
        'azure-key-vault': azureKekFactory,
        'vault-transit': vaultKekFactory,
        'aws-kms': awsKekFactory,
      },
      heartbeat: false,
    },
  });
});
afterAll(async () => {
  await e?.close();
  await Promise.all([az?.close(), vault?.close(), aws?.close()]);
});

const azureKey = (
  o: Parameters<AzureKeyVaultServer['createKey']>[1],
  extra: Record<string, unknown> = {},
) => {
  const id = az.createKey(undefined, o);
  az.grant(id.slice(id.lastIndexOf('/') + 1), app.clientId);
  return azureKeyVault({
    keyId: id,
    credential: { type: 'client-secret', ...app },
    authorityHost: az.url,
    caCertificate: az.caCertificate,
    retries: 0,
    ...extra,
  });
};

const transitKey = (o: Parameters<VaultServer['createKey']>[1], extra: Record<string, unknown> = {}) => {
  const ns = vault.namespace(`t-${randomBytes(3).toString('hex')}`);
  const key = ns.createKey('drizzle-byok', o);
  ns.putPolicy('drizzle-byok', vaultPolicyFor('transit', key));
  return vaultTransit({
    address: vault.address,
    namespace: ns.path,
    keyName: key,
    auth: { type: 'token', token: ns.createToken({ policies: ['drizzle-byok'] }) },
    retries: 0,
    ...extra,
  });
};

async function refusal(kek: Parameters<typeof verifyKek>[2]): Promise<ByokError> {
  const err = await verifyKek(e.keyring, uniqueTenant('vk'), kek).then(
    () => undefined,
    (x: ByokError) => x,
  );
  if (err === undefined) throw new Error(`verifyKek accepted ${kek.keyRef}`);
  return err;
}

const OTHER_PROVIDERS = /AWS|Cloud KMS|SYMMETRIC_DEFAULT|purpose/;

describe('verifyKek: refusals in the provider’s own words', () => {
  it('Azure Key Vault: permitted operations, key type, disabled, expired, not yet valid', async () => {
    const signOnly = await refusal(azureKey({ keyOps: ['sign', 'verify'] }));
    expect(signOnly).toBeInstanceOf(KeyUsageError);
    expect(signOnly.message).toMatch(/permitted operations sign, verify: wrapKey and unwrapKey are needed/);
    expect(signOnly.message).toMatch(/use a Key Vault RSA key .* permitting wrapKey and unwrapKey/);
    expect(signOnly.message).not.toMatch(OTHER_PROVIDERS);

    // an RSA key for AES key wrap (the local server is not a Managed HSM host, so it is allowed to ask)
    const rsaForAes = await refusal(azureKey({}, { algorithm: 'A256KW' }));
    expect(rsaForAes).toBeInstanceOf(KeyUsageError);
    expect(rsaForAes.message).toMatch(/key type RSA: an oct-HSM key is needed for A256KW/);
    expect(rsaForAes.message).not.toMatch(OTHER_PROVIDERS);

    const disabledKek = azureKey({});
    az.setEnabled(disabledKek.keyRef.slice(disabledKek.keyRef.lastIndexOf('/') + 1), false);
    const disabled = await refusal(disabledKek);
    expect(disabled).toBeInstanceOf(KeyDisabledError);
    expect(disabled.message).toMatch(/is Disabled: enable it first/);

    const expired = await refusal(azureKey({ expiresOn: new Date(Date.now() - 60_000) }));
    expect(expired).toBeInstanceOf(KeyDisabledError);
    expect(expired.message).toMatch(/is Expired \(.*\): move its expiry or activation date/);
    const early = await refusal(azureKey({ notBefore: new Date(Date.now() + 3_600_000) }));
    expect(early).toBeInstanceOf(KeyDisabledError);
    expect(early.message).toMatch(/is NotYetValid \(until .*\): move its expiry or activation date/);
  });

  it('Vault Transit: a key type without associated data, a derivation mismatch', async () => {
    const rsa = await refusal(transitKey({ type: 'rsa-2048' }));
    expect(rsa).toBeInstanceOf(KeyUsageError);
    expect(rsa.message).toMatch(/type rsa-2048: an AEAD key \(aes256-gcm96\) is needed for associated data/);
    expect(rsa.message).toMatch(/use a Vault transit key of an AEAD type/);
    expect(rsa.message).not.toMatch(OTHER_PROVIDERS);

    const derived = await refusal(transitKey({ derived: true }));
    expect(derived).toBeInstanceOf(KeyUsageError);
    expect(derived.message).toMatch(/the key is derived: set derived: true on the KEK/);
    expect(derived.message).not.toMatch(OTHER_PROVIDERS);
  });

  it('AWS KMS keeps its own words (key spec and usage)', async () => {
    const signing = aws.createKey({ keyUsage: 'SIGN_VERIFY', keySpec: 'ECC_NIST_P256' });
    const err = await refusal(
      awsKms({
        keyArn: signing.arn,
        auth: { type: 'access-keys', accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
        endpoint: aws.endpoint,
        stsEndpoint: aws.stsEndpoint,
        maxAttempts: 1,
      }),
    );
    expect(err).toBeInstanceOf(KeyUsageError);
    expect(err.message).toMatch(
      /usage SIGN_VERIFY, spec ECC_NIST_P256\): use an AWS KMS symmetric encryption key/,
    );
    expect(err.message).not.toMatch(/Vault|Azure/);
  });

  it('a usable key of each passes', async () => {
    for (const kek of [azureKey({}), transitKey({})]) {
      expect((await verifyKek(e.keyring, uniqueTenant('ok'), kek)).state).toBe('enabled');
    }
  });
});
