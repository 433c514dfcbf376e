/**
 * `drizzle-byok/vault`: a tenant's HashiCorp Vault (or OpenBao) Transit key as key-encryption key.
 *
 * ```ts
 * const kek = vaultTransit({
 *   address: 'https://vault.acme.example:8200',
 *   namespace: 'acme',
 *   keyName: 'drizzle-byok',
 *   auth: { type: 'approle', roleId: process.env.ACME_ROLE_ID!, secretId: process.env.ACME_SECRET_ID! },
 * });
 * ```
 *
 * Wrapping is `transit/encrypt` / `transit/decrypt` with `associated_data` binding the tenant and
 * the data key record (and `context` too for keys created with `derived=true`); the ciphertext
 * records the key version. Needs no package: Vault's HTTP API over `node:https`.
 */
export { describeVaultAuth } from './auth.ts';
export { vaultKekFactory } from './factory.ts';
export type {
  VaultAppRoleAuth,
  VaultAuth,
  VaultJwtAuth,
  VaultKubernetesAuth,
  VaultTokenAuth,
  VaultTransitOptions,
} from './options.ts';
export { VaultTransitKek, vaultTransit } from './transit-kek.ts';
