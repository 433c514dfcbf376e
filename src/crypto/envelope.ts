/**
 * The versioned binary envelope of one encrypted field (bytea storage):
 *
 * | offset | size | field                                                   |
 * |--------|------|---------------------------------------------------------|
 * | 0      | 1    | format version (`0x01`)                                 |
 * | 1      | 1    | flags: bit 0 = a row key is bound in the AAD            |
 * | 2      | 16   | DEK id (the UUID of the tenant's data key version)     |
 * | 18     | 12   | IV (random, from the pooled CSPRNG)                     |
 * | 30     | n    | AES-256-GCM ciphertext                                  |
 * | 30 + n | 16   | GCM tag                                                 |
 *
 * The first 18 bytes (the header) are authenticated as AAD together with the tenant and the column
 * context, see `aead.ts`. Text storage (in-place retrofit of text columns) is `byok1:` + base64 of
 * the same bytes.
 */
export const FORMAT_VERSION = 0x01;
export const FLAG_ROW_KEY = 0x01;
export const HEADER_BYTES = 18;
export const DEK_ID_OFFSET = 2;
export const DEK_ID_BYTES = 16;
export const IV_OFFSET = 18;
export const IV_BYTES = 12;
export const TAG_BYTES = 16;
export const OVERHEAD = HEADER_BYTES + IV_BYTES + TAG_BYTES;
export const TEXT_PREFIX = 'byok1:';

/** UUID text to 16 bytes. Throws TypeError on anything that is not a canonical UUID. */
export function uuidToBytes(uuid: string): Buffer {
  const hex = uuid.replace(/-/g, '');
  if (!/^[0-9a-f]{32}$/i.test(hex) || uuid.length !== 36) throw new TypeError('expected a UUID');
  return Buffer.from(hex, 'hex');
}

export function bytesToUuid(b: Uint8Array, at = 0): string {
  const h = Buffer.from(b.buffer, b.byteOffset + at, 16).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** True when `b` is long enough and starts with a known format version. */
export function looksLikeEnvelope(b: Uint8Array): boolean {
  return b.length >= OVERHEAD && b[0] === FORMAT_VERSION && ((b[1] ?? 0xff) & ~FLAG_ROW_KEY) === 0;
}

/** The envelope's DEK id as UUID text (callers check `looksLikeEnvelope` first). */
export function envelopeDekId(b: Uint8Array): string {
  return bytesToUuid(b, DEK_ID_OFFSET);
}

/**
 * Bytes of a value read from PostgreSQL: `Buffer` (postgres.js, node-postgres), `Uint8Array`
 * (PGlite), or `\x...` hex text (bytea inside JSON, as relational queries return nested rows).
 * Returns undefined for anything else.
 */
export function toBytes(value: unknown): Buffer | undefined {
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  if (typeof value === 'string' && value.startsWith('\\x')) {
    const hex = value.slice(2);
    if (hex.length % 2 !== 0 || !/^[0-9a-f]*$/i.test(hex)) return undefined;
    return Buffer.from(hex, 'hex');
  }
  return undefined;
}
