import { ByokConfigError } from '../errors.ts';
import type { WrapContext } from './kek.ts';

/**
 * The bytes that bind a wrapped data key to its tenant and DEK record, for key managers that take
 * associated data (Vault Transit `associated_data` / `context`, Azure Managed HSM AES-GCM, Cloud KMS
 * `additionalAuthenticatedData`):
 * `drizzle-byok/v1 tenant=<n>:<tenantId> dek=<n>:<dekId>` with byte lengths, so no two contexts
 * share an encoding.
 */
export function bindingBytes(context: WrapContext): Buffer {
  const tenant = Buffer.from(context.tenantId, 'utf8');
  const dek = Buffer.from(context.dekId, 'utf8');
  return Buffer.concat([
    Buffer.from(`drizzle-byok/v1 tenant=${tenant.length}:`, 'utf8'),
    tenant,
    Buffer.from(` dek=${dek.length}:`, 'utf8'),
    dek,
  ]);
}

/** Checks a wrap context's fields (a `ByokConfigError` otherwise: a programmer error). */
export function checkContext(context: WrapContext, where: string): void {
  if (typeof context?.tenantId !== 'string' || context.tenantId === '') {
    throw new ByokConfigError(`${where}: context.tenantId must be a non-empty string`);
  }
  if (typeof context.dekId !== 'string' || context.dekId === '') {
    throw new ByokConfigError(`${where}: context.dekId must be a non-empty string`);
  }
}
