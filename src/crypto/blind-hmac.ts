import { createHmac, type KeyObject } from 'node:crypto';

/**
 * Blind index values: keyed HMAC-SHA256 over the normalized plaintext, truncated, prefixed by the
 * index key version. Pure (no I/O); the key comes from the caller (see `blind-keys.ts`).
 *
 * Stored value (bytea): `version (1 byte, 1..255) ‖ HMAC-SHA256(key, input)[0 .. bytes)`.
 *
 * Truncation trades false positives against leakage. With `bytes = b` and `n` rows of one tenant
 * (keys are per tenant), a lookup of a value that is not stored matches some row with probability
 * about `n · 2^(-8b)`:
 * - b = 16 (default): n · 2^-128, never in practice (the UUID collision standard);
 * - b = 12: n · 2^-96, about 10^-20 per lookup at a billion rows;
 * - b = 8: n · 2^-64, about 5 · 10^-11 per lookup at a billion rows: rare, not never;
 * - b ≤ 4: collisions are routine (b = 2 puts every value in one of 65,536 buckets).
 * Short values leak less: an attacker who sees the column learns only which rows fall in the same
 * bucket, and with `b` small enough that every bucket holds several distinct values, equal index
 * values no longer prove equal plaintexts (k-anonymity). Full-length values leak exactly the
 * equality pattern of the normalized plaintexts within a tenant (and nothing across tenants).
 * Indexes shorter than `EXACT_MIN_BYTES` are "lossy": lookups must re-check each candidate row by
 * decrypting it (`findByBlindIndex`), and `eq`/`inArray` on them are refused.
 */
export const MIN_BYTES = 1;
export const MAX_BYTES = 32;
export const DEFAULT_BYTES = 16;
/** Below this length an index is lossy (see above). */
export const EXACT_MIN_BYTES = 12;
export const MAX_VERSION = 255;

/** Normalization applied to text before it is indexed (lookups apply the same). */
export interface BlindNormalize {
  /** Remove leading and trailing white space (`String.prototype.trim`). Default false. */
  trim?: boolean;
  /**
   * Locale-independent case folding (`toUpperCase().toLowerCase()`: `Ada` = `ADA` = `ada`,
   * `Straße` = `STRASSE`, `ς` = `σ`). Default false.
   */
  caseFold?: boolean;
  /** Unicode NFC normalization (`é` precomposed = `e` + combining accent). Default false. */
  nfc?: boolean;
}

/** How one index key version computes values. Stored per version: changing options needs a rotation. */
export interface BlindParams {
  readonly bytes: number;
  readonly trim: boolean;
  readonly caseFold: boolean;
  readonly nfc: boolean;
}

/** Canonical text form of `params` (stored in `byok.blind_index_keys.params`), e.g. `b16;trim;fold;nfc`. */
export function encodeParams(p: BlindParams): string {
  return [`b${p.bytes}`, p.trim ? 'trim' : '', p.caseFold ? 'fold' : '', p.nfc ? 'nfc' : '']
    .filter((s) => s !== '')
    .join(';');
}

/** Parses `encodeParams` output; throws TypeError on anything else. */
export function decodeParams(text: string): BlindParams {
  const parts = text.split(';');
  const b = /^b(\d{1,2})$/.exec(parts[0] ?? '');
  const bytes = b === null ? Number.NaN : Number(b[1]);
  if (!Number.isInteger(bytes) || bytes < MIN_BYTES || bytes > MAX_BYTES)
    throw new TypeError('bad blind index parameters');
  const flags = new Set(parts.slice(1));
  for (const f of flags)
    if (f !== 'trim' && f !== 'fold' && f !== 'nfc') throw new TypeError('bad blind index parameters');
  return { bytes, trim: flags.has('trim'), caseFold: flags.has('fold'), nfc: flags.has('nfc') };
}

/** Applies the normalization of `p` to a string: trim, then case folding, then NFC. */
export function normalizeText(s: string, p: BlindParams): string {
  let out = p.trim ? s.trim() : s;
  if (p.caseFold) out = out.toUpperCase().toLowerCase();
  if (p.nfc) out = out.normalize('NFC');
  return out;
}

/** The stored index value of `input` (already normalized and encoded) under `key`. */
export function blindValue(key: KeyObject, version: number, input: Uint8Array, bytes: number): Buffer {
  const mac = createHmac('sha256', key).update(input).digest();
  const out = Buffer.allocUnsafe(1 + bytes);
  out[0] = version;
  mac.copy(out, 1, 0, bytes);
  mac.fill(0);
  return out;
}

/** A value no index version ever produces (version byte 0): a lookup of it matches nothing. */
export const NO_MATCH: Buffer = Buffer.from([0]);
