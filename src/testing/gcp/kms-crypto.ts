/**
 * Encrypt and Decrypt of the local Cloud KMS server: AES-256-GCM over a self-describing ciphertext
 * (`"GK"`, format byte `0x01`, the version number, IV, ciphertext, tag; the AAD binds the header,
 * the CryptoKey name and the request's `additional_authenticated_data`), with the CRC32C integrity
 * fields checked and answered as Cloud KMS does.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { crc32c } from '../../crypto/crc32c.ts';
import type { GcpServerState, MethodImpl } from './context.ts';
import { P } from './iam.ts';
import { type KeyState, notEnabled, requirePurpose, type VersionState } from './keys.ts';
import { checkKeyName, checkVersionName, VERSION_NAME_RE } from './names.ts';
import { bytes, int64Value, invalid, RpcError, str } from './protocol.ts';

const CIPHERTEXT_MAGIC = Buffer.from('GK', 'latin1');
const CIPHERTEXT_FORMAT = 0x01;
const HEADER_BYTES = 2 + 1 + 4;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const MAX_SOFTWARE_BYTES = 64 * 1024;
const MAX_HSM_BYTES = 8 * 1024;

function flipBit(b: Buffer): Buffer {
  const out = Buffer.from(b);
  if (out.length > 0) out[out.length >> 1]! ^= 0x01;
  return out;
}

function checkCrc(data: Buffer, field: unknown, dataField: string, crcField: string): boolean {
  const expected = int64Value(field);
  if (expected === undefined) return false;
  if (expected !== crc32c(data)) {
    throw invalid(`The checksum in field ${crcField} did not match the data in field ${dataField}.`);
  }
  return true;
}

function checkSizes(key: KeyState | VersionState, data: Buffer, aad: Buffer, dataField: string): void {
  if (key.protectionLevel === 'HSM') {
    if (data.length + aad.length > MAX_HSM_BYTES) {
      throw invalid(`The combined length of ${dataField} and additional_authenticated_data exceeds 8 KiB.`);
    }
  } else if (data.length > MAX_SOFTWARE_BYTES || aad.length > MAX_SOFTWARE_BYTES) {
    throw invalid(`${dataField} or additional_authenticated_data is larger than 64 KiB.`);
  }
}

function gcmAad(keyName: string, header: Buffer, aad: Buffer): Buffer {
  const name = Buffer.from(keyName, 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32BE(name.length);
  return Buffer.concat([header, len, name, aad]);
}

/** Encrypt and Decrypt over a server's keys and policies. */
export function cryptoMethods({ keys, iam }: GcpServerState): { Encrypt: MethodImpl; Decrypt: MethodImpl } {
  const encrypt: MethodImpl = (req, principal, corrupt) => {
    const name = str(req.name);
    const isVersion = VERSION_NAME_RE.test(name);
    if (!isVersion) checkKeyName(name);
    const keyName = isVersion ? checkVersionName(name).key : name;
    iam.authorize(principal, P.encrypt, keyName);
    const key = keys.requireKey(keyName);
    requirePurpose(key, 'Encrypt');
    let plaintext = bytes(req.plaintext);
    const aad = bytes(req.additionalAuthenticatedData);
    if (corrupt.has('request')) plaintext = flipBit(plaintext);
    if (plaintext.length === 0) throw invalid('plaintext is required.');
    const verifiedPlaintext = checkCrc(plaintext, req.plaintextCrc32c, 'plaintext', 'plaintext_crc32c');
    const verifiedAad = checkCrc(
      aad,
      req.additionalAuthenticatedDataCrc32c,
      'additional_authenticated_data',
      'additional_authenticated_data_crc32c',
    );
    const version = isVersion
      ? keys.requireVersion(name).version
      : key.primary === undefined
        ? undefined
        : key.versions.get(key.primary);
    if (!version) {
      throw new RpcError(grpc.status.FAILED_PRECONDITION, `${key.name} has no primary CryptoKeyVersion.`);
    }
    if (version.state !== 'ENABLED' || !version.material) throw notEnabled(version);
    checkSizes(version, plaintext, aad, 'plaintext');
    const header = Buffer.alloc(HEADER_BYTES);
    CIPHERTEXT_MAGIC.copy(header, 0);
    header[2] = CIPHERTEXT_FORMAT;
    header.writeUInt32BE(version.id, 3);
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', version.material, iv);
    cipher.setAAD(gcmAad(key.name, header, aad));
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    const ciphertext = Buffer.concat([header, iv, body, cipher.getAuthTag()]);
    const crc = crc32c(ciphertext);
    const otherKey = [...keys.keys.keys()].find((k) => k !== key.name) ?? `${key.keyRing}/cryptoKeys/other`;
    return {
      name: corrupt.has('name') ? `${otherKey}/cryptoKeyVersions/1` : version.name,
      ciphertext: corrupt.has('ciphertext') ? flipBit(ciphertext) : ciphertext,
      ciphertextCrc32c: { value: corrupt.has('ciphertextCrc32c') ? (crc ^ 0x1) >>> 0 : crc },
      verifiedPlaintextCrc32c: verifiedPlaintext && !corrupt.has('verifiedPlaintextCrc32c'),
      verifiedAdditionalAuthenticatedDataCrc32c:
        verifiedAad && !corrupt.has('verifiedAdditionalAuthenticatedDataCrc32c'),
      protectionLevel: version.protectionLevel,
    };
  };

  const decrypt: MethodImpl = (req, principal, corrupt) => {
    const name = str(req.name);
    if (VERSION_NAME_RE.test(name)) {
      throw invalid(`Decrypt requires a CryptoKey name, not the CryptoKeyVersion name [${name}].`);
    }
    checkKeyName(name);
    iam.authorize(principal, P.decrypt, name);
    const key = keys.requireKey(name);
    requirePurpose(key, 'Decrypt');
    let ciphertext = bytes(req.ciphertext);
    const aad = bytes(req.additionalAuthenticatedData);
    if (corrupt.has('request')) ciphertext = flipBit(ciphertext);
    if (ciphertext.length === 0) throw invalid('ciphertext is required.');
    checkCrc(ciphertext, req.ciphertextCrc32c, 'ciphertext', 'ciphertext_crc32c');
    checkCrc(
      aad,
      req.additionalAuthenticatedDataCrc32c,
      'additional_authenticated_data',
      'additional_authenticated_data_crc32c',
    );
    const malformed = invalid('Decryption failed: the ciphertext is invalid.');
    if (
      ciphertext.length < HEADER_BYTES + IV_BYTES + TAG_BYTES ||
      !ciphertext.subarray(0, 2).equals(CIPHERTEXT_MAGIC) ||
      ciphertext[2] !== CIPHERTEXT_FORMAT
    ) {
      throw malformed;
    }
    const version = key.versions.get(ciphertext.readUInt32BE(3));
    const wrongKey = invalid("Decryption failed: verify that 'name' refers to the correct CryptoKey.");
    if (!version) throw wrongKey;
    if (version.state !== 'ENABLED' || !version.material) throw notEnabled(version);
    checkSizes(version, ciphertext, aad, 'ciphertext');
    let plaintext: Buffer;
    try {
      const decipher = createDecipheriv(
        'aes-256-gcm',
        version.material,
        ciphertext.subarray(HEADER_BYTES, HEADER_BYTES + IV_BYTES),
        { authTagLength: TAG_BYTES },
      );
      decipher.setAAD(gcmAad(key.name, ciphertext.subarray(0, HEADER_BYTES), aad));
      decipher.setAuthTag(ciphertext.subarray(ciphertext.length - TAG_BYTES));
      plaintext = Buffer.concat([
        decipher.update(ciphertext.subarray(HEADER_BYTES + IV_BYTES, ciphertext.length - TAG_BYTES)),
        decipher.final(),
      ]);
    } catch {
      throw wrongKey;
    }
    const crc = crc32c(plaintext);
    return {
      plaintext: corrupt.has('plaintext') ? flipBit(plaintext) : plaintext,
      plaintextCrc32c: { value: corrupt.has('plaintextCrc32c') ? (crc ^ 0x1) >>> 0 : crc },
      usedPrimary: version.id === key.primary,
      protectionLevel: version.protectionLevel,
    };
  };

  return { Encrypt: encrypt, Decrypt: decrypt };
}
