/**
 * Onboarding artifacts for a tenant whose key lives in its own Azure Key Vault (or Managed HSM):
 * the key, the role assignment for the platform's service principal on that one key
 * (`Key Vault Crypto Service Encryption User`: read the key, wrapKey, unwrapKey; nothing else),
 * the access-policy equivalent for vaults without Azure RBAC, the `az` commands and Terraform.
 */
import { ByokConfigError } from '../errors.ts';

export interface AzureOnboardingOptions {
  readonly provider: 'azure';
  /** Object id of the platform's service principal in the tenant's directory (a multi-tenant app). */
  readonly principalObjectId: string;
  readonly subscriptionId: string;
  readonly resourceGroup: string;
  /** The tenant's vault name (3-24 of a-z 0-9 -). */
  readonly vaultName: string;
  /** Azure region of the vault, e.g. `westeurope` (Terraform). */
  readonly location: string;
  /** Key name; default `drizzle-byok`. */
  readonly keyName?: string;
}

export interface AzureOnboarding {
  readonly provider: 'azure';
  readonly tenantId: string;
  readonly externalId: null;
  /** What to give `azureKeyVault({ keyId })`. */
  readonly keyId: string;
  readonly role: 'Key Vault Crypto Service Encryption User';
  /** The Azure RBAC scope of the role assignment (the key's resource id). */
  readonly scope: string;
  readonly shell: string;
  readonly terraform: string;
  readonly enableCommand: string;
}

const GUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function bad(message: string): ByokConfigError {
  return new ByokConfigError(`onboarding: ${message}`);
}

export function validateAzureOnboarding(o: AzureOnboardingOptions): AzureOnboardingOptions {
  if (typeof o.principalObjectId !== 'string' || !GUID_RE.test(o.principalObjectId)) {
    throw bad(
      "principalObjectId must be the object id (GUID) of the platform's service principal in the tenant's directory",
    );
  }
  if (typeof o.subscriptionId !== 'string' || !GUID_RE.test(o.subscriptionId)) {
    throw bad("subscriptionId must be the tenant's subscription id (GUID)");
  }
  if (typeof o.resourceGroup !== 'string' || !/^[\w().-]{1,90}$/.test(o.resourceGroup)) {
    throw bad('resourceGroup must be 1-90 of letters, digits, _ ( ) . -');
  }
  if (typeof o.vaultName !== 'string' || !/^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$/.test(o.vaultName)) {
    throw bad('vaultName must be 3-24 of a-z A-Z 0-9 -, starting with a letter');
  }
  if (typeof o.location !== 'string' || !/^[a-z0-9]{2,40}$/.test(o.location)) {
    throw bad('location must be an Azure region name such as westeurope');
  }
  if (o.keyName !== undefined && !/^[0-9A-Za-z-]{1,127}$/.test(o.keyName)) {
    throw bad('keyName must be 1-127 of 0-9 a-z A-Z -');
  }
  return o;
}

const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
const tf = (s: string) => JSON.stringify(s);

export function azureArtifacts(tenantId: string, o: AzureOnboardingOptions): AzureOnboarding {
  const key = o.keyName ?? 'drizzle-byok';
  const keyId = `https://${o.vaultName.toLowerCase()}.vault.azure.net/keys/${key}`;
  const vaultScope = `/subscriptions/${o.subscriptionId}/resourceGroups/${o.resourceGroup}/providers/Microsoft.KeyVault/vaults/${o.vaultName}`;
  const scope = `${vaultScope}/keys/${key}`;
  const role = 'Key Vault Crypto Service Encryption User' as const;
  const shell = [
    '#!/usr/bin/env bash',
    `# drizzle-byok: bring your own key for tenant ${tenantId}, in vault ${o.vaultName}.`,
    'set -euo pipefail',
    `az keyvault key create --vault-name ${o.vaultName} --name ${key} --kty RSA-HSM --size 3072 \\`,
    '  --ops wrapKey unwrapKey --protection hsm',
    `az keyvault key rotation-policy update --vault-name ${o.vaultName} --name ${key} \\`,
    `  --value '{"lifetimeActions":[{"trigger":{"timeAfterCreate":"P90D"},"action":{"type":"Rotate"}}]}'`,
    '# Vaults with Azure RBAC: a role assignment on this one key',
    `az role assignment create --role ${shq(role)} --assignee-object-id ${o.principalObjectId} \\`,
    `  --assignee-principal-type ServicePrincipal --scope ${shq(scope)}`,
    '# Vaults with access policies instead:',
    `# az keyvault set-policy --name ${o.vaultName} --object-id ${o.principalObjectId} --key-permissions get wrapKey unwrapKey`,
    `# revoke later: az role assignment delete --role ${shq(role)} --assignee ${o.principalObjectId} --scope ${shq(scope)}`,
    `echo "Give your provider this key id to finish: ${keyId}"`,
    '',
  ].join('\n');
  const terraform = [
    `# drizzle-byok: bring your own key for tenant ${tenantId}, in vault ${o.vaultName}.`,
    'data "azurerm_key_vault" "byok" {',
    `  name                = ${tf(o.vaultName)}`,
    `  resource_group_name = ${tf(o.resourceGroup)}`,
    '}',
    '',
    'resource "azurerm_key_vault_key" "drizzle_byok" {',
    `  name         = ${tf(key)}`,
    '  key_vault_id = data.azurerm_key_vault.byok.id',
    '  key_type     = "RSA-HSM"',
    '  key_size     = 3072',
    '  key_opts     = ["wrapKey", "unwrapKey"]',
    '  rotation_policy {',
    '    automatic {',
    '      time_after_creation = "P90D"',
    '    }',
    '  }',
    '}',
    '',
    'resource "azurerm_role_assignment" "drizzle_byok" {',
    '  scope                = azurerm_key_vault_key.drizzle_byok.resource_versionless_id',
    `  role_definition_name = ${tf(role)}`,
    `  principal_id         = ${tf(o.principalObjectId)}`,
    '}',
    '',
  ].join('\n');
  return {
    provider: 'azure',
    tenantId,
    externalId: null,
    keyId,
    role,
    scope,
    shell,
    terraform,
    enableCommand: `drizzle-byok keys enable ${shq(tenantId)} --azure-key-id ${keyId}`,
  };
}
