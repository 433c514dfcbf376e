/**
 * `drizzle-byok/testing/vault`: a local HashiCorp Vault speaking Vault's HTTP API (transit, token,
 * AppRole, Kubernetes and JWT auth, ACL policies, namespaces), with faults and counters, so
 * `drizzle-byok/vault` runs unchanged in your tests. Node built-ins only. Loopback only.
 */
export type { VaultKeyConfig, VaultTokenOptions } from './admin.ts';
export { VaultAdmin } from './admin.ts';
export type {
  VaultCallRecord,
  VaultCorruptibleField,
  VaultCounters,
  VaultFaultFilter,
  VaultFaults,
  VaultFaultStatus,
  VaultServerOperation,
} from './faults.ts';
export { capabilitiesOn, parsePolicy, type VaultCapability, type VaultPolicyRule } from './policy.ts';
export { startVaultServer, type VaultServer, type VaultServerOptions } from './server.ts';
export type { CreateTransitKeyOptions, VaultTransitKeyType } from './transit.ts';
