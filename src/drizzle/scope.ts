import { AsyncLocalStorage } from 'node:async_hooks';
import { ByokConfigError } from '../errors.ts';

/**
 * Tenant scope. Encrypted writes need a tenant; reads check that every ciphertext belongs to the
 * tenant in scope. `withAnyTenant` is for trusted back-office jobs that read several tenants' rows
 * at once (reads only: writes still need a tenant, from `withTenant` or the row's tenant column).
 */
export interface TenantScope {
  /** The tenant in scope, or null inside `withAnyTenant`. */
  readonly tenantId: string | null;
}

export const scopeStorage = new AsyncLocalStorage<TenantScope>();

const MAX_TENANT_ID = 255;

export function assertTenantId(tenantId: unknown, what = 'tenant id'): asserts tenantId is string {
  if (typeof tenantId !== 'string' || tenantId.length === 0) {
    throw new ByokConfigError(`${what} must be a non-empty string`);
  }
  if (tenantId.length > MAX_TENANT_ID)
    throw new ByokConfigError(`${what} is longer than ${MAX_TENANT_ID} characters`);
  // biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters on purpose
  if (/[\u0000-\u001f\u007f]/.test(tenantId))
    throw new ByokConfigError(`${what} contains control characters`);
}

/** Runs `fn` with `tenantId` in scope: encrypted writes use its key, reads accept only its rows. */
export function withTenant<T>(tenantId: string, fn: () => T): T {
  assertTenantId(tenantId);
  return scopeStorage.run({ tenantId }, fn);
}

/** Runs `fn` allowed to read every tenant's rows (back-office jobs). Writes still need a tenant. */
export function withAnyTenant<T>(fn: () => T): T {
  return scopeStorage.run({ tenantId: null }, fn);
}

/** The tenant in scope: a tenant id, null inside `withAnyTenant`, undefined outside any scope. */
export function currentTenant(): string | null | undefined {
  return scopeStorage.getStore()?.tenantId;
}
