/**
 * Keys derived from a cached data key: the field subkey of a column context, and keys for other
 * purposes (blind indexes). Memoized on the cache entry and zeroed with it. On the hot path of every
 * encrypted field: no allocation once memoized.
 */
import { contextBytes, deriveFieldKey, deriveSubkey, type FieldKey } from '../crypto/aead.ts';
import { BlindKey } from '../crypto/blind-hmac.ts';
import { ByokError } from '../errors.ts';
import { type DekEntry, dekMaterial } from './cache.ts';

/** The field subkey of a cached DEK for a column context (derived once, then memoized). */
export function fieldKey(entry: DekEntry, context: string): FieldKey {
  const m = dekMaterial(entry);
  let fk = m.fieldKeys.get(context);
  if (fk === undefined) {
    if (entry.evicted)
      throw new ByokError('data key was evicted while in use; retry the query', {
        tenantId: entry.tenantId,
      });
    fk = deriveFieldKey(m.raw, entry.idBytes, entry.tenantId, context);
    m.fieldKeys.set(context, fk);
  }
  return fk;
}

/**
 * The blind index key derived from a cached data key for `label` (e.g. "blind-index/v1"), bound to
 * `context`. Memoized on the entry and destroyed (zeroed) with it; the raw subkey is zeroed as soon
 * as the key's HMAC state is made.
 */
export function blindKey(entry: DekEntry, label: string, context: string): BlindKey {
  const memoKey = `${label}\u0000${context}`;
  const m = dekMaterial(entry);
  let k = m.blindKeys.get(memoKey);
  if (k === undefined) {
    if (entry.evicted)
      throw new ByokError('data key was evicted while in use; retry the query', {
        tenantId: entry.tenantId,
      });
    const raw = deriveSubkey(m.raw, label, contextBytes(entry.tenantId, context));
    k = BlindKey.of(raw);
    raw.fill(0);
    m.blindKeys.set(memoKey, k);
  }
  return k;
}
