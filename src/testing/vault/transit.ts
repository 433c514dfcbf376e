/**
 * Transit keys of the local Vault server: versioned key material, AEAD encrypt / decrypt / rewrap
 * with `associated_data`, derivation from `context` (HKDF-SHA256) for derived keys, the
 * `vault:v<N>:<base64>` ciphertext form, `min_decryption_version` / `min_encryption_version`.
 * Errors are thrown as {@link TransitError} with Vault's status and text.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';

export type VaultTransitKeyType = 'aes256-gcm96' | 'aes128-gcm96' | 'chacha20-poly1305' | 'rsa-2048';

export class TransitError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

export interface TransitKey {
  readonly name: string;
  readonly type: VaultTransitKeyType;
  readonly derived: boolean;
  /** version → [key bytes, creation time in s] */
  readonly versions: Map<number, { key: Buffer; created: number }>;
  latest: number;
  minDecryption: number;
  minEncryption: number;
  deletionAllowed: boolean;
  autoRotatePeriod: number;
}

export interface CreateTransitKeyOptions {
  readonly type?: VaultTransitKeyType;
  readonly derived?: boolean;
}

const AEAD = new Set<VaultTransitKeyType>(['aes256-gcm96', 'aes128-gcm96', 'chacha20-poly1305']);

function keyBytes(type: VaultTransitKeyType): Buffer {
  return randomBytes(type === 'aes128-gcm96' ? 16 : 32);
}

export function newTransitKey(name: string, o: CreateTransitKeyOptions = {}): TransitKey {
  const type = o.type ?? 'aes256-gcm96';
  if (!['aes256-gcm96', 'aes128-gcm96', 'chacha20-poly1305', 'rsa-2048'].includes(type)) {
    throw new TransitError(400, `unknown key type: ${type}`);
  }
  if (o.derived === true && !AEAD.has(type)) {
    throw new TransitError(400, 'key derivation is not supported for this key type');
  }
  return {
    name,
    type,
    derived: o.derived === true,
    versions: new Map([[1, { key: keyBytes(type), created: Math.floor(Date.now() / 1000) }]]),
    latest: 1,
    minDecryption: 1,
    minEncryption: 0,
    deletionAllowed: false,
    autoRotatePeriod: 0,
  };
}

export function rotateTransitKey(k: TransitKey): number {
  k.latest += 1;
  k.versions.set(k.latest, { key: keyBytes(k.type), created: Math.floor(Date.now() / 1000) });
  return k.latest;
}

/** The key read answer (`GET transit/keys/<name>`). */
export function transitKeyData(k: TransitKey): Record<string, unknown> {
  const keys: Record<string, number> = {};
  for (const [v, m] of k.versions) if (v >= k.minDecryption) keys[String(v)] = m.created;
  return {
    name: k.name,
    type: k.type,
    derived: k.derived,
    deletion_allowed: k.deletionAllowed,
    exportable: false,
    allow_plaintext_backup: false,
    keys,
    latest_version: k.latest,
    min_available_version: 0,
    min_decryption_version: k.minDecryption,
    min_encryption_version: k.minEncryption,
    supports_encryption: true,
    supports_decryption: true,
    supports_derivation: AEAD.has(k.type),
    supports_signing: k.type === 'rsa-2048',
    auto_rotate_period: k.autoRotatePeriod,
    ...(k.derived ? { kdf: 'hkdf_sha256' } : {}),
  };
}

function b64(value: unknown, field: string): Buffer {
  if (typeof value !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(value)) {
    throw new TransitError(400, `failed to base64-decode ${field}`);
  }
  return Buffer.from(value, 'base64');
}

function materialFor(k: TransitKey, version: number, context: unknown): Buffer {
  const m = k.versions.get(version);
  if (m === undefined) throw new TransitError(400, 'invalid key version');
  if (!k.derived) return m.key;
  if (context === undefined || context === '') {
    throw new TransitError(
      400,
      "missing 'context' for key derivation; the key was created using a derived key, which means additional, per-request information must be included in order to perform operations with the key",
    );
  }
  return Buffer.from(hkdfSync('sha256', m.key, Buffer.alloc(0), b64(context, 'context'), m.key.length));
}

function cipherName(type: VaultTransitKeyType): 'aes-256-gcm' | 'aes-128-gcm' | 'chacha20-poly1305' {
  return type === 'aes128-gcm96'
    ? 'aes-128-gcm'
    : type === 'chacha20-poly1305'
      ? 'chacha20-poly1305'
      : 'aes-256-gcm';
}

export interface TransitInput {
  readonly plaintext?: unknown;
  readonly ciphertext?: unknown;
  readonly context?: unknown;
  readonly associated_data?: unknown;
  readonly key_version?: unknown;
}

export function transitEncrypt(
  k: TransitKey,
  input: TransitInput,
): { ciphertext: string; key_version: number } {
  if (!AEAD.has(k.type)) {
    if (input.associated_data !== undefined) {
      throw new TransitError(400, `key type ${k.type} does not support associated_data`);
    }
    throw new TransitError(400, `key type ${k.type} is not supported by this server for encryption`);
  }
  const plaintext = b64(input.plaintext, 'plaintext');
  let version = k.latest;
  if (input.key_version !== undefined && input.key_version !== 0) {
    if (typeof input.key_version !== 'number' || !k.versions.has(input.key_version)) {
      throw new TransitError(400, 'invalid key version');
    }
    version = input.key_version;
  }
  if (version < k.minEncryption) {
    throw new TransitError(400, 'cannot encrypt with a key version below min_encryption_version');
  }
  const key = materialFor(k, version, input.context);
  const nonce = randomBytes(12);
  const c = createCipheriv(cipherName(k.type) as 'aes-256-gcm', key, nonce, { authTagLength: 16 });
  if (input.associated_data !== undefined) c.setAAD(b64(input.associated_data, 'associated_data'));
  const body = Buffer.concat([nonce, c.update(plaintext), c.final(), c.getAuthTag()]);
  return { ciphertext: `vault:v${version}:${body.toString('base64')}`, key_version: version };
}

export function transitDecrypt(k: TransitKey, input: TransitInput): { plaintext: string } {
  if (typeof input.ciphertext !== 'string' || !input.ciphertext.startsWith('vault:v')) {
    throw new TransitError(400, 'invalid ciphertext: no prefix');
  }
  const m = /^vault:v(\d+):(.*)$/.exec(input.ciphertext);
  if (m === null) throw new TransitError(400, 'invalid ciphertext: wrong number of fields');
  const version = Number(m[1]);
  if (version < k.minDecryption) {
    throw new TransitError(400, 'ciphertext or signature version is disallowed by policy (too old)');
  }
  if (version > k.latest || !k.versions.has(version)) {
    throw new TransitError(400, 'invalid ciphertext: version is too new');
  }
  if (!AEAD.has(k.type)) throw new TransitError(400, `key type ${k.type} is not supported by this server`);
  const raw = b64(m[2], 'ciphertext');
  if (raw.length < 28) throw new TransitError(400, 'invalid ciphertext: too short');
  const key = materialFor(k, version, input.context);
  const d = createDecipheriv(cipherName(k.type) as 'aes-256-gcm', key, raw.subarray(0, 12), {
    authTagLength: 16,
  });
  if (input.associated_data !== undefined) d.setAAD(b64(input.associated_data, 'associated_data'));
  d.setAuthTag(raw.subarray(raw.length - 16));
  try {
    const out = Buffer.concat([d.update(raw.subarray(12, raw.length - 16)), d.final()]);
    return { plaintext: out.toString('base64') };
  } catch {
    throw new TransitError(400, 'cipher: message authentication failed');
  }
}

export function transitRewrap(
  k: TransitKey,
  input: TransitInput,
): { ciphertext: string; key_version: number } {
  const { plaintext } = transitDecrypt(k, input);
  return transitEncrypt(k, {
    plaintext,
    context: input.context,
    associated_data: input.associated_data,
    key_version: input.key_version,
  });
}
