/**
 * Ciphertext blobs of the local AWS KMS server: `"LKMS"`, version byte, account id, key id, IV,
 * tag, ciphertext. The header and the canonical EncryptionContext are the AES-256-GCM AAD.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

const BLOB_MAGIC = Buffer.from('LKMS', 'ascii');
const BLOB_VERSION = 1;

/** The key a blob is sealed under. */
interface BlobKey {
  readonly keyId: string;
  readonly accountId: string;
}

function canonicalContext(ec: Readonly<Record<string, string>>): Buffer {
  const entries = Object.entries(ec).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return Buffer.from(JSON.stringify(entries), 'utf8');
}

export interface ParsedBlob {
  readonly accountId: string;
  readonly keyId: string;
  readonly header: Buffer;
  readonly iv: Buffer;
  readonly tag: Buffer;
  readonly ciphertext: Buffer;
}

export function sealBlob(
  key: BlobKey,
  material: Buffer,
  plaintext: Buffer,
  ec: Record<string, string>,
): Buffer {
  const id = Buffer.from(key.keyId, 'ascii');
  const header = Buffer.concat([
    BLOB_MAGIC,
    Buffer.from([BLOB_VERSION]),
    Buffer.from(key.accountId, 'ascii'),
    Buffer.from([id.length]),
    id,
  ]);
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', material, iv);
  cipher.setAAD(Buffer.concat([header, canonicalContext(ec)]));
  const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([header, iv, cipher.getAuthTag(), ciphertext]);
}

export function parseBlob(raw: Buffer): ParsedBlob | undefined {
  const fixed = BLOB_MAGIC.length + 1 + 12 + 1;
  if (
    raw.length < fixed ||
    !raw.subarray(0, BLOB_MAGIC.length).equals(BLOB_MAGIC) ||
    raw[BLOB_MAGIC.length] !== BLOB_VERSION
  ) {
    return undefined;
  }
  const accountId = raw.subarray(BLOB_MAGIC.length + 1, BLOB_MAGIC.length + 13).toString('ascii');
  const idLength = raw[fixed - 1]!;
  const headerEnd = fixed + idLength;
  if (!/^\d{12}$/.test(accountId) || raw.length < headerEnd + 12 + 16) return undefined;
  return {
    accountId,
    keyId: raw.subarray(fixed, headerEnd).toString('ascii'),
    header: raw.subarray(0, headerEnd),
    iv: raw.subarray(headerEnd, headerEnd + 12),
    tag: raw.subarray(headerEnd + 12, headerEnd + 28),
    ciphertext: raw.subarray(headerEnd + 28),
  };
}

export function openSealed(
  blob: ParsedBlob,
  material: Buffer,
  ec: Record<string, string>,
): Buffer | undefined {
  try {
    const decipher = createDecipheriv('aes-256-gcm', material, blob.iv);
    decipher.setAAD(Buffer.concat([blob.header, canonicalContext(ec)]));
    decipher.setAuthTag(blob.tag);
    return Buffer.concat([decipher.update(blob.ciphertext), decipher.final()]);
  } catch {
    return undefined;
  }
}
