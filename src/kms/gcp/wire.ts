/**
 * The Cloud KMS wire shapes: the additional authenticated data of a wrapped DEK, CRC32C, `Int64Value`
 * and byte fields, enum names for clients that answer with numbers, timestamps.
 */
import { crc32c } from '../../crypto/crc32c.ts';
import { bindingBytes } from '../binding.ts';
import type { WrapContext } from '../kek.ts';
import type { GcpInt64ValueLike } from './options.ts';

/** CRC32C (Castagnoli) of `data`, as Cloud KMS computes its `*_crc32c` fields. */
export function gcpCrc32c(data: Uint8Array): number {
  return crc32c(data);
}

/**
 * The `additionalAuthenticatedData` bound to a wrapped DEK: the UTF-8 bytes of
 * `drizzle-byok/v1 tenant=<n>:<tenantId> dek=<m>:<dekId>`, where `<n>` and `<m>` are the decimal
 * UTF-8 byte lengths of the ids (so no two contexts share an encoding). With it a wrapped DEK can be
 * unwrapped by hand, e.g. `gcloud kms decrypt --additional-authenticated-data-file`. The same bytes
 * as the Vault Transit and Managed HSM binding (`binding.ts`).
 */
export function gcpAdditionalAuthenticatedData(context: WrapContext): Uint8Array {
  return bindingBytes(context);
}

/** A bytes field as the client returns it (bytes, or base64 text in REST mode). */
export const toBytes = (v: Uint8Array | string | null | undefined): Uint8Array | undefined =>
  v instanceof Uint8Array ? v : typeof v === 'string' ? Buffer.from(v, 'base64') : undefined;

/** An Int64Value's number, or undefined when absent or not a safe integer. */
export function int64(v: GcpInt64ValueLike | null | undefined): number | undefined {
  if (v === null || v === undefined) return undefined;
  const raw = v.value;
  if (raw === null || raw === undefined) return 0;
  const n = Number(typeof raw === 'object' ? raw.toString() : raw);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** Enum values by number, for clients that return numeric enums (REST `fallback` mode). */
export const PURPOSE_NAMES: Record<number, string> = {
  1: 'ENCRYPT_DECRYPT',
  5: 'ASYMMETRIC_SIGN',
  6: 'ASYMMETRIC_DECRYPT',
  7: 'RAW_ENCRYPT_DECRYPT',
  9: 'MAC',
  10: 'KEY_ENCAPSULATION',
  11: 'AES_WRAPPING',
};
export const STATE_NAMES: Record<number, string> = {
  1: 'ENABLED',
  2: 'DISABLED',
  3: 'DESTROYED',
  4: 'DESTROY_SCHEDULED',
  5: 'PENDING_GENERATION',
  6: 'PENDING_IMPORT',
  7: 'IMPORT_FAILED',
  8: 'GENERATION_FAILED',
  9: 'PENDING_EXTERNAL_DESTRUCTION',
  10: 'EXTERNAL_DESTRUCTION_FAILED',
};
export const PROTECTION_LEVEL_NAMES: Record<number, string> = {
  1: 'SOFTWARE',
  2: 'HSM',
  3: 'EXTERNAL',
  4: 'EXTERNAL_VPC',
  5: 'HSM_SINGLE_TENANT',
};
export const ALGORITHM_NAMES: Record<number, string> = {
  1: 'GOOGLE_SYMMETRIC_ENCRYPTION',
  18: 'EXTERNAL_SYMMETRIC_ENCRYPTION',
};

/** An enum field the answer did not set (absent, 0, or its `*_UNSPECIFIED` name). */
export function unspecified(v: string | undefined): boolean {
  return v === undefined || v === '' || v === '0' || v.endsWith('_UNSPECIFIED');
}

/** An enum field as text: its name, looked up for a numeric value. */
export function enumText(
  v: string | number | null | undefined,
  names: Record<number, string>,
): string | undefined {
  if (v === null || v === undefined) return undefined;
  return typeof v === 'number' ? (names[v] ?? String(v)) : v;
}

/** A `Timestamp` as ISO 8601 text, or null. */
export function isoOf(
  t: { readonly seconds?: number | string | { toString(): string } | null } | null | undefined,
) {
  if (!t || t.seconds === null || t.seconds === undefined) return null;
  const s = Number(typeof t.seconds === 'object' ? t.seconds.toString() : t.seconds);
  return Number.isFinite(s) ? new Date(s * 1000).toISOString() : null;
}
