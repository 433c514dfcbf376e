/**
 * The cryptographic KMS operations of the local AWS server: Encrypt, Decrypt, ReEncrypt,
 * GenerateDataKey and GenerateDataKeyWithoutPlaintext, with their input checks.
 */
import { randomBytes } from 'node:crypto';
import { openSealed, parseBlob, sealBlob } from './ciphertext.ts';
import type { KeyRecord, KeyStore } from './keys.ts';
import { authorizeKey, type Caller } from './policies.ts';
import { type Json, PARTITION, WireError } from './protocol.ts';

export function encrypt(keys: KeyStore, input: Json, { principal, region }: Caller): Json {
  const key = keys.requireKey(region, principal, input.KeyId);
  const plaintext = blobInput(input.Plaintext, 'plaintext', 4096);
  const ec = contextInput(input.EncryptionContext);
  checkAlgorithm(input.EncryptionAlgorithm, key);
  authorizeKey(key, principal, 'kms:Encrypt', ec);
  const material = keys.requireUsable(key, 'Encrypt');
  return {
    CiphertextBlob: sealBlob(key, material, plaintext, ec).toString('base64'),
    KeyId: key.arn,
    EncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
  };
}

/** Shared by Decrypt and ReEncrypt (source side). */
function openBlob(
  keys: KeyStore,
  ctx: Caller,
  blobValue: unknown,
  keyRef: unknown,
  ec: Record<string, string>,
  action: string,
  operation: string,
): { key: KeyRecord; plaintext: Buffer } {
  const raw = blobInput(blobValue, 'ciphertextBlob', 6144);
  const blob = parseBlob(raw);
  let key: KeyRecord;
  if (keyRef !== undefined) {
    key = keys.requireKey(ctx.region, ctx.principal, keyRef);
    if (blob !== undefined && (blob.keyId !== key.keyId || blob.accountId !== key.accountId)) {
      authorizeKey(key, ctx.principal, action, ec);
      throw new WireError(
        'IncorrectKeyException',
        'The key ID in the request does not identify a CMK that can perform this operation.',
      );
    }
  } else {
    const found =
      blob === undefined
        ? undefined
        : keys.keys.get(`arn:${PARTITION}:kms:${ctx.region}:${blob.accountId}:key/${blob.keyId}`);
    if (found === undefined) throw new WireError('InvalidCiphertextException', '');
    key = found;
  }
  authorizeKey(key, ctx.principal, action, ec);
  const material = keys.requireUsable(key, operation);
  if (blob === undefined) throw new WireError('InvalidCiphertextException', '');
  const plaintext = openSealed(blob, material, ec);
  if (plaintext === undefined) throw new WireError('InvalidCiphertextException', '');
  return { key, plaintext };
}

export function decrypt(keys: KeyStore, input: Json, ctx: Caller): Json {
  const ec = contextInput(input.EncryptionContext);
  if (input.EncryptionAlgorithm !== undefined && input.EncryptionAlgorithm !== 'SYMMETRIC_DEFAULT') {
    throw new WireError(
      'InvalidKeyUsageException',
      `EncryptionAlgorithm ${String(input.EncryptionAlgorithm)} is not valid`,
    );
  }
  const { key, plaintext } = openBlob(
    keys,
    ctx,
    input.CiphertextBlob,
    input.KeyId,
    ec,
    'kms:Decrypt',
    'Decrypt',
  );
  return {
    KeyId: key.arn,
    Plaintext: plaintext.toString('base64'),
    EncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
  };
}

export function reEncrypt(keys: KeyStore, input: Json, ctx: Caller): Json {
  const sourceEc = contextInput(input.SourceEncryptionContext);
  const destEc = contextInput(input.DestinationEncryptionContext);
  const dest = keys.requireKey(ctx.region, ctx.principal, input.DestinationKeyId, 'destinationKeyId');
  const { key: source, plaintext } = openBlob(
    keys,
    ctx,
    input.CiphertextBlob,
    input.SourceKeyId,
    sourceEc,
    'kms:ReEncryptFrom',
    'ReEncrypt',
  );
  authorizeKey(dest, ctx.principal, 'kms:ReEncryptTo', destEc);
  const material = keys.requireUsable(dest, 'ReEncrypt');
  return {
    CiphertextBlob: sealBlob(dest, material, plaintext, destEc).toString('base64'),
    SourceKeyId: source.arn,
    KeyId: dest.arn,
    SourceEncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
    DestinationEncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
  };
}

export function generateDataKey(
  keys: KeyStore,
  input: Json,
  { principal, region }: Caller,
  withPlaintext: boolean,
): Json {
  const key = keys.requireKey(region, principal, input.KeyId);
  const ec = contextInput(input.EncryptionContext);
  let size: number;
  if (input.KeySpec !== undefined && input.NumberOfBytes !== undefined) {
    throw new WireError('ValidationException', 'Please specify either number of bytes or key spec.');
  }
  if (input.KeySpec === 'AES_256') size = 32;
  else if (input.KeySpec === 'AES_128') size = 16;
  else if (typeof input.NumberOfBytes === 'number' && Number.isInteger(input.NumberOfBytes)) {
    size = input.NumberOfBytes;
    if (size < 1 || size > 1024) {
      throw new WireError(
        'ValidationException',
        "1 validation error detected: Value at 'numberOfBytes' failed to satisfy constraint: Member must have value less than or equal to 1024",
      );
    }
  } else throw new WireError('ValidationException', 'Please specify either number of bytes or key spec.');
  authorizeKey(
    key,
    principal,
    withPlaintext ? 'kms:GenerateDataKey' : 'kms:GenerateDataKeyWithoutPlaintext',
    ec,
  );
  const material = keys.requireUsable(
    key,
    withPlaintext ? 'GenerateDataKey' : 'GenerateDataKeyWithoutPlaintext',
  );
  const plaintext = randomBytes(size);
  const out: Json = {
    CiphertextBlob: sealBlob(key, material, plaintext, ec).toString('base64'),
    KeyId: key.arn,
  };
  if (withPlaintext) out.Plaintext = plaintext.toString('base64');
  return out;
}

function blobInput(value: unknown, field: string, max: number): Buffer {
  if (typeof value !== 'string') {
    throw new WireError(
      'ValidationException',
      `1 validation error detected: Value at '${field}' failed to satisfy constraint: Member must not be null`,
    );
  }
  const buf = Buffer.from(value, 'base64');
  if (buf.length === 0 || buf.length > max) {
    throw new WireError(
      'ValidationException',
      `1 validation error detected: Value at '${field}' failed to satisfy constraint: Member must have length less than or equal to ${max}`,
    );
  }
  return buf;
}

function contextInput(value: unknown): Record<string, string> {
  if (value === undefined || value === null) return {};
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new WireError('SerializationException', 'EncryptionContext must be a map of strings');
  }
  for (const v of Object.values(value)) {
    if (typeof v !== 'string')
      throw new WireError('SerializationException', 'EncryptionContext must be a map of strings');
  }
  return value as Record<string, string>;
}

function checkAlgorithm(value: unknown, key: KeyRecord): void {
  if (value !== undefined && value !== 'SYMMETRIC_DEFAULT' && key.keySpec === 'SYMMETRIC_DEFAULT') {
    throw new WireError(
      'InvalidKeyUsageException',
      `${key.arn} does not support encryption algorithm ${String(value)}`,
    );
  }
}
