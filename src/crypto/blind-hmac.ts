import { hmac } from '@noble/hashes/hmac';
import { sha256 } from '@noble/hashes/sha2';
import { ByokError } from '../errors.ts';

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

type Hmac = ReturnType<typeof hmac.create>;

/**
 * The working state of one index value: a copy of the key's keyed HMAC state (`_cloneInto`, which
 * overwrites every field of an existing instance, so no hash object is allocated per value) and
 * the 32-byte MAC. Shared by every key: values are computed synchronously, one at a time, and the
 * state is zeroed as soon as each MAC is copied out (noble's `digestInto` destroys the HMAC, i.e.
 * zeroes both hash states and buffers; the MAC buffer is filled with zeros by `blindValue`).
 */
let work: Hmac | undefined;
const mac32 = new Uint8Array(32);

/** The keyed HMAC state of a blind index key (library-internal: never exported from the package). */
let macOf: (key: BlindKey) => Hmac;

/**
 * A blind index key: HMAC-SHA256 keyed by a 32-byte subkey, with the inner and outer padded key
 * blocks hashed once, when the key is made. Each index value then costs two SHA-256 compressions
 * of its own (one for inputs up to 55 bytes, plus the outer one) on a copy of that state, with no
 * native call and no hash object allocated: node:crypto's `createHmac` sets up an OpenSSL MAC
 * context per value, the largest part of a lookup's cost when its code is cold after a database
 * round trip.
 *
 * SHA-256 has no secret-dependent branches or table lookups, so computing it in JavaScript is
 * constant-time like OpenSSL's. Implementation: `@noble/hashes` (audited), checked against
 * node:crypto and the RFC 4231 vectors in the tests. The state is a private field (no
 * `util.inspect`, JSON or property walk reaches it), and `destroy()` zeroes it: the key cache
 * destroys a data key's blind index keys when it evicts the data key.
 */
export class BlindKey {
  readonly #mac: Hmac;
  #destroyed = false;

  private constructor(mac: Hmac) {
    this.#mac = mac;
  }

  /** A key from its raw bytes (which the caller zeroes: the key keeps no copy of them). */
  static of(raw: Uint8Array): BlindKey {
    return new BlindKey(hmac.create(sha256, raw));
  }

  /** Whether `destroy()` ran: the key can no longer compute values. */
  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** Zeroes the key's state; any later use throws. */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#mac.destroy();
  }

  static {
    macOf = (key) => {
      if (key.#destroyed) throw new ByokError('data key was evicted while in use; retry the query');
      return key.#mac;
    };
  }
}

/** HMAC-SHA256 of `input` under `key` into `mac32` (the caller copies it out and zeroes it). */
function macInto(key: BlindKey, input: Uint8Array): void {
  // A copy of the keyed state: digestInto destroys the copy, never the key's own state.
  const m = macOf(key)._cloneInto(work);
  work = m;
  m.update(input);
  m.digestInto(mac32);
}

/** The stored index value of `input` (already normalized and encoded) under `key`. */
export function blindValue(key: BlindKey, version: number, input: Uint8Array, bytes: number): Buffer {
  const out = Buffer.allocUnsafe(1 + bytes);
  try {
    macInto(key, input);
    out[0] = version;
    out.set(mac32.subarray(0, bytes), 1);
  } catch (e) {
    work?.destroy();
    throw e;
  } finally {
    mac32.fill(0);
  }
  return out;
}

/** A value no index version ever produces (version byte 0): a lookup of it matches nothing. */
export const NO_MATCH: Buffer = Buffer.from([0]);
