/**
 * Key identity per wrap. A KEK reference (an AWS alias ARN, a Cloud KMS CryptoKey) can name a
 * different key, or key version, tomorrow than today. Every wrap therefore records the key that
 * actually wrapped (`dek_wraps.wrapped_by`: the AWS key ARN of the Encrypt answer, the Cloud KMS
 * CryptoKeyVersion), and every unwrap passes it back, so:
 * - moving an alias to a new key (AWS's manual rotation) never strands a data key: Decrypt names
 *   the old key, which still decrypts while it is enabled;
 * - health compares what the reference resolves to now (`describe().currentKeyId`) with the keys
 *   recorded, reports the tenant's data keys still under another key, and `rewrapMovedKeys`
 *   re-wraps them under the reference's current key (verified first, like `rotateKek`), after
 *   which the old key can be disabled with no loss.
 * Wraps made before identity was recorded (null) keep working: the provider unwraps them as before.
 */
import type { Kek, WrapContext } from '../kms/kek.ts';

export interface IdentifiedWrap {
  readonly wrapped: Buffer;
  /** The key that wrapped, or null when the provider does not say (local KEK, older providers). */
  readonly wrappedBy: string | null;
}

/** Wraps with `wrapIdentified` when the provider has it, else `wrap` (no identity recorded). */
export async function wrapIdentified(
  kek: Kek,
  raw: Uint8Array,
  context: WrapContext,
): Promise<IdentifiedWrap> {
  if (typeof kek.wrapIdentified === 'function') {
    const r = await kek.wrapIdentified(raw, context);
    return { wrapped: Buffer.from(r.wrapped), wrappedBy: r.wrappedBy };
  }
  return { wrapped: Buffer.from(await kek.wrap(raw, context)), wrappedBy: null };
}

/** Unwraps, naming the recorded key when there is one. */
export function unwrapIdentified(
  kek: Kek,
  wrapped: Uint8Array,
  context: WrapContext,
  wrappedBy: string | null | undefined,
): Promise<Uint8Array> {
  return wrappedBy === null || wrappedBy === undefined
    ? kek.unwrap(wrapped, context)
    : kek.unwrap(wrapped, context, wrappedBy);
}

/**
 * Whether a wrap recorded as made by `wrappedBy` is under another key than the one `keyRef`
 * resolves to now (`currentKeyId`). A Cloud KMS version of the same CryptoKey is not another key
 * (Decrypt names the CryptoKey); an AWS key ARN other than the alias's current target is.
 */
export function isMoved(keyRef: string, currentKeyId: string | null, wrappedBy: string | null): boolean {
  if (currentKeyId === null || wrappedBy === null) return false;
  if (wrappedBy === currentKeyId) return false;
  return !wrappedBy.startsWith(`${keyRef}/`);
}
