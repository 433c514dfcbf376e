/**
 * `keys onboard --vault` and `keys enable --vault-*`: the policy onboarding prints, applied as is
 * to the local Vault, is exactly what the KEK needs; enable reads secrets from the environment only.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { drizzle } from 'drizzle-orm/postgres-js';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../src/cli/cli.ts';
import { createKeyring, installKeyStore, type Keyring, localKek } from '../src/index.ts';
import { azureKekFactory } from '../src/kms/azure/index.ts';
import { vaultKekFactory, vaultTransit } from '../src/kms/vault/index.ts';
import { type AzureKeyVaultServer, startAzureKeyVaultServer } from '../src/testing/azure/index.ts';
import { startVaultServer, type VaultServer } from '../src/testing/vault/index.ts';
import { DATABASE_URL, uniqueTenant } from './helpers/db.ts';

const root = fileURLToPath(new URL('..', import.meta.url));

async function run(args: string[], env: Record<string, string>) {
  const saved = { ...process.env };
  Object.assign(process.env, env);
  const out = new PassThrough();
  const err = new PassThrough();
  let stdout = '';
  let stderr = '';
  out.on('data', (d) => {
    stdout += d;
  });
  err.on('data', (d) => {
    stderr += d;
  });
  try {
    const code = await runCli(
      [...args, '--config', 'test/fixtures/byok-config.ts'],
      { stdout: out, stderr: err },
      { cwd: root },
    );
    return { code, stdout, stderr };
  } finally {
    for (const k of Object.keys(env)) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  }
}

describe.runIf(DATABASE_URL !== undefined)(
  'drizzle-byok keys onboard --vault / enable --vault-address',
  () => {
    let vault: VaultServer;
    let client: ReturnType<typeof postgres>;
    let keyring: Keyring;
    const platformKey = randomBytes(32).toString('base64');
    let env: Record<string, string>;
    beforeAll(async () => {
      vault = await startVaultServer();
      client = postgres(DATABASE_URL!, { max: 2, onnotice: () => {} });
      const db = drizzle({ client });
      await installKeyStore(db);
      keyring = createKeyring({
        db,
        platformKek: localKek({ key: platformKey }),
        kekFactories: { 'vault-transit': vaultKekFactory },
      });
      env = { DATABASE_URL: DATABASE_URL!, PLATFORM_KEY: platformKey };
    });
    afterAll(async () => {
      await keyring?.close();
      await client?.end();
      await vault?.close();
    });

    it('onboard prints the policy, role and commands; applied as printed, keys enable works with AppRole', async () => {
      const T = uniqueTenant('cli-vault');
      const ns = `tenants/${T}`;
      const onboard = await run(
        [
          'keys',
          'onboard',
          T,
          '--vault',
          '--vault-address',
          'https://vault.acme.example:8200',
          '--vault-namespace',
          ns,
          '--format',
          'json',
        ],
        env,
      );
      expect(onboard.stderr).toBe('');
      expect(onboard.code).toBe(0);
      const a = JSON.parse(onboard.stdout);
      expect(a).toMatchObject({
        provider: 'vault',
        namespace: ns,
        mount: 'transit',
        keyName: 'drizzle-byok',
        policyName: 'drizzle-byok',
      });
      expect(a.shell).toContain(`export VAULT_NAMESPACE='${ns}'`);
      expect(a.shell).toContain('vault write -f transit/keys/drizzle-byok type=aes256-gcm96');
      expect(a.shell).toContain('vault write auth/approle/role/drizzle-byok token_policies=drizzle-byok');
      expect(a.terraform).toContain('resource "vault_transit_secret_backend_key" "drizzle_byok"');
      expect(a.terraform).toContain('resource "vault_approle_auth_backend_role" "drizzle_byok"');
      const text = await run(
        ['keys', 'onboard', T, '--vault', '--vault-address', 'https://vault.acme.example:8200'],
        env,
      );
      expect(text.stdout).toContain('path "transit/decrypt/drizzle-byok"');

      // The tenant's administrator applies the artifacts to its Vault.
      const tenantVault = vault.namespace(ns);
      tenantVault.createKey(a.keyName);
      tenantVault.putPolicy(a.policyName, a.policy);
      const { roleId, secretId } = tenantVault.addAppRole({ name: a.policyName, policies: [a.policyName] });
      // the policy grants nothing beyond the key: another key of the same Vault is refused
      tenantVault.createKey('other');
      const other = vaultTransit({
        address: vault.address,
        namespace: ns,
        keyName: 'other',
        auth: { type: 'approle', roleId, secretId },
        retries: 0,
      });
      await expect(other.describe()).rejects.toMatchObject({ code: 'ERR_BYOK_KEY_ACCESS_DENIED' });

      const flags = ['--vault-address', vault.address, '--vault-namespace', ns, '--vault-key', a.keyName];
      const noSecret = await run(['keys', 'enable', T, ...flags, '--vault-approle-role-id', roleId], env);
      expect(noSecret.code).toBe(2);
      expect(noSecret.stderr).toMatch(/VAULT_SECRET_ID/);
      const enabled = await run(
        ['keys', 'enable', T, ...flags, '--vault-approle-role-id', roleId, '--json'],
        {
          ...env,
          VAULT_SECRET_ID: secretId,
        },
      );
      expect(enabled.stderr).toBe('');
      expect(enabled.code).toBe(0);
      expect(enabled.stdout).not.toContain(secretId);
      const st = await keyring.status(T);
      expect(st).toMatchObject({ mode: 'byok', health: 'ok' });
      expect(st.keks.map((k) => [k.kind, k.keyRef])).toEqual([
        ['vault-transit', `${vault.address}/v1/${ns}/transit/keys/${a.keyName}`],
      ]);
    });

    it('usage errors name what to fix', async () => {
      const T = uniqueTenant('cli-vault-usage');
      const cases: [string[], RegExp][] = [
        [['keys', 'enable', T, '--vault-key', 'k'], /--vault-key needs --vault-address/],
        [['keys', 'enable', T, '--vault-address', vault.address], /--vault-address needs --vault-key/],
        [['keys', 'enable', T, '--vault-address', vault.address, '--vault-key', 'k'], /VAULT_TOKEN/],
        [['keys', 'onboard', T, '--vault'], /--vault needs --vault-address/],
        [
          ['keys', 'onboard', T, '--vault', '--vault-address', 'https://v.example', '--region', 'x'],
          /--region goes with/,
        ],
        [
          [
            'keys',
            'onboard',
            T,
            '--vault',
            '--vault-address',
            'https://v.example',
            '--vault-auth',
            'kubernetes',
          ],
          /serviceAccount/,
        ],
      ];
      for (const [args, re] of cases) {
        const r = await run(args, env);
        expect(r.code, args.join(' ')).toBe(2);
        expect(r.stderr, args.join(' ')).toMatch(re);
      }
    });
  },
);

describe.runIf(DATABASE_URL !== undefined)(
  'drizzle-byok keys onboard --azure / enable --azure-key-id',
  () => {
    let az: AzureKeyVaultServer;
    let client: ReturnType<typeof postgres>;
    let keyring: Keyring;
    let dir: string;
    const platformKey = randomBytes(32).toString('base64');
    beforeAll(async () => {
      az = await startAzureKeyVaultServer();
      dir = mkdtempSync(join(tmpdir(), 'byok-cli-azure-'));
      client = postgres(DATABASE_URL!, { max: 2, onnotice: () => {} });
      const db = drizzle({ client });
      await installKeyStore(db);
      keyring = createKeyring({
        db,
        platformKek: localKek({ key: platformKey }),
        kekFactories: { 'azure-key-vault': azureKekFactory },
      });
    });
    afterAll(async () => {
      await keyring?.close();
      await client?.end();
      await az?.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it('onboard prints the role assignment, az commands and Terraform; keys enable with a service principal works', async () => {
      const T = uniqueTenant('cli-azure');
      const env = { DATABASE_URL: DATABASE_URL!, PLATFORM_KEY: platformKey };
      const principal = '5d2c6f2e-1f7a-4b8e-9c0d-2a3b4c5d6e7f';
      const sub = '0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0';
      const r = await run(
        [
          'keys',
          'onboard',
          T,
          '--azure',
          '--azure-principal',
          principal,
          '--azure-subscription',
          sub,
          '--azure-resource-group',
          'rg-acme',
          '--azure-vault',
          'acme-byok',
          '--azure-location',
          'westeurope',
          '--format',
          'json',
        ],
        env,
      );
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const a = JSON.parse(r.stdout);
      expect(a).toMatchObject({
        provider: 'azure',
        keyId: 'https://acme-byok.vault.azure.net/keys/drizzle-byok',
        role: 'Key Vault Crypto Service Encryption User',
      });
      expect(a.scope).toBe(
        `/subscriptions/${sub}/resourceGroups/rg-acme/providers/Microsoft.KeyVault/vaults/acme-byok/keys/drizzle-byok`,
      );
      expect(a.shell).toContain(
        `az role assignment create --role 'Key Vault Crypto Service Encryption User' --assignee-object-id ${principal}`,
      );
      expect(a.shell).toContain('--key-permissions get wrapKey unwrapKey');
      expect(a.terraform).toContain('resource "azurerm_role_assignment" "drizzle_byok"');
      const bad = await run(
        [
          'keys',
          'onboard',
          T,
          '--azure',
          '--azure-principal',
          'nope',
          '--azure-subscription',
          sub,
          '--azure-resource-group',
          'rg',
          '--azure-vault',
          'acme-byok',
          '--azure-location',
          'westeurope',
        ],
        env,
      );
      expect(bad.code).toBe(2);
      expect(bad.stderr).toMatch(/principalObjectId/);

      const app = az.addApp();
      const keyId = az.createKey('drizzle-byok');
      az.grant('drizzle-byok', app.clientId);
      const ca = join(dir, 'ca.pem');
      writeFileSync(ca, az.caCertificate);
      const flags = [
        '--azure-key-id',
        keyId,
        '--azure-tenant-id',
        app.tenantId,
        '--azure-client-id',
        app.clientId,
        '--azure-authority-host',
        az.url,
        '--azure-ca',
        ca,
      ];
      const noSecret = await run(['keys', 'enable', T, ...flags], env);
      expect(noSecret.code).toBe(2);
      expect(noSecret.stderr).toMatch(/AZURE_CLIENT_SECRET/);
      const enabled = await run(['keys', 'enable', T, ...flags, '--json'], {
        ...env,
        AZURE_CLIENT_SECRET: app.clientSecret,
      });
      expect(enabled.stderr).toBe('');
      expect(enabled.code).toBe(0);
      expect(enabled.stdout).not.toContain(app.clientSecret);
      const st = await keyring.status(T);
      expect(st).toMatchObject({ mode: 'byok', health: 'ok' });
      expect(st.keks.map((k) => [k.kind, k.keyRef])).toEqual([['azure-key-vault', keyId]]);
    });
  },
);
