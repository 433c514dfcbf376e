/**
 * `drizzle-byok/azure`: a tenant's Azure Key Vault or Managed HSM key as key-encryption key.
 *
 * ```ts
 * const kek = azureKeyVault({
 *   keyId: 'https://acme-byok.vault.azure.net/keys/drizzle-byok',
 *   credential: { type: 'client-secret', tenantId, clientId, clientSecret: process.env.AZURE_CLIENT_SECRET! },
 * });
 * ```
 *
 * Needs `@azure/keyvault-keys` and `@azure/identity`; no other cloud's package.
 */
export { describeAzureCredential } from './credential.ts';
export { azureKekFactory } from './factory.ts';
export { AzureKeyVaultKek, azureKeyVault } from './key-vault-kek.ts';
export type {
  AzureClientCertificateCredential,
  AzureClientSecretCredential,
  AzureCredential,
  AzureDefaultCredential,
  AzureKeyVaultOptions,
  AzureManagedIdentityCredential,
  AzureWorkloadIdentityCredential,
} from './options.ts';
