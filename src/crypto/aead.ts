import { createCipheriv, createDecipheriv, createSecretKey, hkdfSync, type KeyObject } from 'node:crypto';
import { DecryptionFailedError } from '../errors.ts';
import {
  DEK_ID_BYTES,
  DEK_ID_OFFSET,
  FLAG_ROW_KEY,
  FORMAT_VERSION,
  HEADER_BYTES,
  IV_BYTES,
  IV_OFFSET,
  OVERHEAD,
  TAG_BYTES,
} from './envelope.ts';
import { writeIv } from './iv-pool.ts';

/** The key object of a field key (library-internal: never exported from the package). */
export let keyOf: (fk: FieldKey) => KeyObject;

/**
 * AES-256-GCM field encryption, synchronous, on keys already unwrapped.
 *
 * Key separation: a tenant's data key (DEK) is never used directly. Each (tenant, column context)
 * gets its own 256-bit subkey, `HKDF-SHA256(ikm = DEK, salt = "drizzle-byok/v1", info = "field" ‖
 * tenant ‖ context)`. Blind indexes derive theirs with another `info` label.
 *
 * AAD: `header ‖ len(tenant) ‖ tenant ‖ len(context) ‖ context [‖ len(rowKey) ‖ rowKey]`, where the
 * header is the envelope's first 18 bytes (format version, flags, DEK id). So a ciphertext moved to
 * another tenant, table, column or row (when a row key is bound), or a header edited in place, fails
 * authentication, and so does every flipped bit.
 *
 * Usage bound: with random 96-bit IVs, NIST SP 800-38D limits one key to 2^32 encryptions (IV collision
 * probability below 2^-32). The bound applies per subkey, i.e. per (DEK version, tenant, column):
 * rotate the tenant's DEK (`rotateDek`) well before 2^32 writes to one column of one tenant.
 */
export class FieldKey {
  /** The subkey; private (util.inspect, JSON and property walks never reach it). */
  readonly #key: KeyObject;
  /** The envelope header this key writes and accepts (flags 0). */
  readonly header: Buffer;
  /** Precomputed AAD for envelopes without a row key (flags 0). */
  readonly aad: Buffer;
  /** Precomputed AAD prefix for envelopes with a row key (flags 1). */
  readonly aadRowKeyed: Buffer;
  /** The DEK id as four big-endian 32-bit words (compared in JS: cheaper than a native call per field). */
  readonly idWords: readonly [number, number, number, number];

  constructor(
    key: KeyObject,
    header: Buffer,
    aad: Buffer,
    aadRowKeyed: Buffer,
    idWords: readonly [number, number, number, number],
  ) {
    this.#key = key;
    this.header = header;
    this.aad = aad;
    this.aadRowKeyed = aadRowKeyed;
    this.idWords = idWords;
  }

  static {
    keyOf = (fk) => fk.#key;
  }
}

/** Whether the 16 bytes of `buf` at `at` equal `words`. */
export function idEquals(buf: Buffer, at: number, words: readonly [number, number, number, number]): boolean {
  // Big-endian words read with shifts (half the cost of readUInt32BE's argument checks). A
  // missing byte would read as 0: a buffer too short for an id never equals one.
  if (buf.length < at + 16) return false;
  return (
    ((buf[at]! << 24) | (buf[at + 1]! << 16) | (buf[at + 2]! << 8) | buf[at + 3]!) >>> 0 === words[0] &&
    ((buf[at + 4]! << 24) | (buf[at + 5]! << 16) | (buf[at + 6]! << 8) | buf[at + 7]!) >>> 0 === words[1] &&
    ((buf[at + 8]! << 24) | (buf[at + 9]! << 16) | (buf[at + 10]! << 8) | buf[at + 11]!) >>> 0 === words[2] &&
    ((buf[at + 12]! << 24) | (buf[at + 13]! << 16) | (buf[at + 14]! << 8) | buf[at + 15]!) >>> 0 === words[3]
  );
}

export function idWordsOf(id: Uint8Array): [number, number, number, number] {
  const b = Buffer.from(id.buffer, id.byteOffset, id.byteLength);
  return [b.readUInt32BE(0), b.readUInt32BE(4), b.readUInt32BE(8), b.readUInt32BE(12)];
}

const SALT = Buffer.from('drizzle-byok/v1');

function lengthPrefixed(s: string | Uint8Array): Buffer {
  const b = typeof s === 'string' ? Buffer.from(s, 'utf8') : Buffer.from(s);
  if (b.length > 0xffff) throw new TypeError('context too long');
  const out = Buffer.allocUnsafe(2 + b.length);
  out.writeUInt16BE(b.length, 0);
  b.copy(out, 2);
  return out;
}

/** Context bytes `len ‖ tenant ‖ len ‖ context`, shared by key derivation and AAD. */
export function contextBytes(tenantId: string, context: string): Buffer {
  return Buffer.concat([lengthPrefixed(tenantId), lengthPrefixed(context)]);
}

/** Derives a 32-byte subkey of `dek` for `label` ("field", "blind-index/v1", ...). */
export function deriveSubkey(dek: Uint8Array | KeyObject, label: string, ctx: Uint8Array): Buffer {
  const info = Buffer.concat([lengthPrefixed(label), ctx]);
  return Buffer.from(hkdfSync('sha256', dek, SALT, info, 32));
}

export function deriveFieldKey(
  dek: Uint8Array | KeyObject,
  dekId: Uint8Array,
  tenantId: string,
  context: string,
): FieldKey {
  if (dekId.length !== DEK_ID_BYTES) throw new TypeError('DEK id must be 16 bytes');
  const ctx = contextBytes(tenantId, context);
  const raw = deriveSubkey(dek, 'field', ctx);
  const key = createSecretKey(raw);
  raw.fill(0);
  const header = Buffer.alloc(HEADER_BYTES);
  header[0] = FORMAT_VERSION;
  header[1] = 0;
  Buffer.from(dekId).copy(header, 2);
  const headerRowKeyed = Buffer.from(header);
  headerRowKeyed[1] = FLAG_ROW_KEY;
  return new FieldKey(
    key,
    header,
    Buffer.concat([header, ctx]),
    Buffer.concat([headerRowKeyed, ctx]),
    idWordsOf(dekId),
  );
}

/** Encrypts `plaintext` into a fresh envelope. */
export function seal(fk: FieldKey, plaintext: Uint8Array, rowKey?: Uint8Array): Buffer {
  const n = plaintext.length;
  const out = Buffer.allocUnsafe(OVERHEAD + n);
  // TypedArray#set, not Buffer#copy: the same bytes without copy's argument handling (measurable
  // at four copies per value).
  out.set(fk.header, 0);
  writeIv(out, IV_OFFSET);
  const cipher = createCipheriv('aes-256-gcm', keyOf(fk), out.subarray(IV_OFFSET, IV_OFFSET + IV_BYTES));
  if (rowKey === undefined) {
    cipher.setAAD(fk.aad);
  } else {
    out[1] = FLAG_ROW_KEY;
    cipher.setAAD(fk.aadRowKeyed);
    cipher.setAAD(lengthPrefixed(rowKey));
  }
  out.set(cipher.update(plaintext), HEADER_BYTES + IV_BYTES);
  cipher.final();
  out.set(cipher.getAuthTag(), OVERHEAD - TAG_BYTES + n);
  return out;
}

/**
 * Decrypts an envelope whose DEK id the caller matched to `fk`. Any failure (truncation, unknown
 * version or flags, row key mismatch, tag) is the one `DecryptionFailedError`.
 */
export function open(fk: FieldKey, env: Uint8Array, rowKey?: Uint8Array): Buffer {
  const n = env.length;
  const flags = env[1];
  if (n < OVERHEAD || env[0] !== FORMAT_VERSION || (flags !== 0 && flags !== FLAG_ROW_KEY)) {
    throw new DecryptionFailedError();
  }
  if ((flags === FLAG_ROW_KEY) !== (rowKey !== undefined)) throw new DecryptionFailedError();
  const buf = Buffer.isBuffer(env) ? env : Buffer.from(env.buffer, env.byteOffset, n);
  if (!idEquals(buf, DEK_ID_OFFSET, fk.idWords)) throw new DecryptionFailedError();
  return openBody(fk, buf, rowKey);
}

/**
 * `open` for a caller that has itself checked what `open` checks first: at least `OVERHEAD` bytes,
 * format version, flags 0 (no row key) and the DEK id of `fk` (the column read hot path).
 */
export function openChecked(fk: FieldKey, buf: Buffer): Buffer {
  return openBody(fk, buf, undefined);
}

function openBody(fk: FieldKey, buf: Buffer, rowKey: Uint8Array | undefined): Buffer {
  const n = buf.length;
  try {
    // No `authTagLength` option: the envelope's framing fixes the tag at its last TAG_BYTES (16)
    // bytes, so setAuthTag always gets a full-length tag (no truncated tag can be accepted), and
    // the option's parsing is ~3% of a 256-byte decryption.
    const decipher = createDecipheriv(
      'aes-256-gcm',
      keyOf(fk),
      buf.subarray(IV_OFFSET, IV_OFFSET + IV_BYTES),
    );
    if (rowKey === undefined) {
      decipher.setAAD(fk.aad);
    } else {
      decipher.setAAD(fk.aadRowKeyed);
      decipher.setAAD(lengthPrefixed(rowKey));
    }
    decipher.setAuthTag(buf.subarray(n - TAG_BYTES));
    const pt = decipher.update(buf.subarray(HEADER_BYTES + IV_BYTES, n - TAG_BYTES));
    decipher.final();
    return pt;
  } catch (cause) {
    throw new DecryptionFailedError({ cause: redactCause(cause) });
  }
}

/** node:crypto errors carry no secrets, but keep only their code so nothing else can ride along. */
function redactCause(cause: unknown): Error {
  const code = (cause as { code?: unknown })?.code;
  return new Error(typeof code === 'string' ? code : 'crypto failure');
}
