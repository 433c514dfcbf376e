import { AsyncLocalStorage } from 'node:async_hooks';
import { ByokConfigError } from './errors.ts';

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

/**
 * Runs `fn` with `tenantId` in scope: encrypted writes use its key, reads accept only its rows.
 * `fn` may return a Drizzle query builder without awaiting it (`withTenant(id, () => db.select()...)`):
 * builders are lazy, so it is started here, inside the scope, and a Promise is returned.
 */
export function withTenant<T>(tenantId: string, fn: () => T): Started<T> {
  assertTenantId(tenantId);
  return scopeStorage.run({ tenantId }, () => start(fn()));
}

/** Runs `fn` allowed to read every tenant's rows (back-office jobs). Writes still need a tenant. */
export function withAnyTenant<T>(fn: () => T): Started<T> {
  return scopeStorage.run({ tenantId: null }, () => start(fn()));
}

/** A lazy thenable (a query builder) becomes the Promise of its result; anything else is unchanged. */
export type Started<T> = T extends Promise<unknown> ? T : T extends PromiseLike<infer R> ? Promise<R> : T;

export function start<T>(value: T): Started<T> {
  if (
    value instanceof Promise ||
    value === null ||
    (typeof value !== 'object' && typeof value !== 'function')
  ) {
    return value as Started<T>;
  }
  const then = (value as { then?: unknown }).then;
  if (typeof then !== 'function') return value as Started<T>;
  // Call `then` now, synchronously inside the scope, so the builder executes in it.
  return new Promise((resolve, reject) => {
    (then as PromiseLike<unknown>['then']).call(value, resolve, reject);
  }) as Started<T>;
}

/** The tenant in scope: a tenant id, null inside `withAnyTenant`, undefined outside any scope. */
export function currentTenant(): string | null | undefined {
  return scopeStorage.getStore()?.tenantId;
}
