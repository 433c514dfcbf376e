/**
 * The key model of the local Key Vault: versioned RSA (RSA-OAEP-256) and oct-HSM (A256KW) keys,
 * their key bundles, and the request bodies of create and update (`PATCH`) as the REST API
 * (api-version 7.x) defines them.
 */
import {
  constants,
  createCipheriv,
  createDecipheriv,
  generateKeyPairSync,
  type KeyObject,
  privateDecrypt,
  publicEncrypt,
  randomBytes,
} from 'node:crypto';

export interface AzureKeyVersion {
  readonly version: string;
  readonly kty: 'RSA' | 'RSA-HSM' | 'oct-HSM';
  readonly privateKey?: KeyObject;
  readonly publicKey?: KeyObject;
  readonly secret?: Buffer;
  keyOps: readonly string[];
  enabled: boolean;
  expiresOn: Date | undefined;
  notBefore: Date | undefined;
  readonly created: number;
  updated: number;
}

export interface AzureKeyRecord {
  readonly name: string;
  /** Type of the current version: what `rotate` makes next. */
  kty: 'RSA' | 'RSA-HSM' | 'oct-HSM';
  current: string;
  readonly versions: Map<string, AzureKeyVersion>;
}

export function newKeyVersion(
  kty: AzureKeyVersion['kty'],
  keyOps: readonly string[],
  expiresOn?: Date,
  notBefore?: Date,
  keySize = kty === 'oct-HSM' ? 256 : 2048,
): AzureKeyVersion {
  const now = Math.floor(Date.now() / 1000);
  const common = {
    version: randomBytes(16).toString('hex'),
    kty,
    keyOps: [...keyOps],
    enabled: true,
    expiresOn,
    notBefore,
    created: now,
    updated: now,
  };
  if (kty === 'oct-HSM') return { ...common, secret: randomBytes(keySize / 8) };
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: keySize });
  return { ...common, privateKey, publicKey };
}

const b64u = (b: Buffer) => b.toString('base64url');

export function keyBundle(base: string, k: AzureKeyRecord, v: AzureKeyVersion): Record<string, unknown> {
  const jwk = v.publicKey?.export({ format: 'jwk' }) as { n?: string; e?: string } | undefined;
  return {
    key: {
      kid: `${base}/keys/${k.name}/${v.version}`,
      kty: v.kty,
      key_ops: v.keyOps,
      ...(jwk?.n === undefined ? {} : { n: jwk.n, e: jwk.e }),
    },
    attributes: {
      enabled: v.enabled,
      created: v.created,
      updated: v.updated,
      recoveryLevel: 'Recoverable+Purgeable',
      ...(v.expiresOn === undefined ? {} : { exp: Math.floor(v.expiresOn.getTime() / 1000) }),
      ...(v.notBefore === undefined ? {} : { nbf: Math.floor(v.notBefore.getTime() / 1000) }),
    },
  };
}

function bytes(value: unknown): Buffer {
  if (typeof value !== 'string' || !/^[A-Za-z0-9_-]*={0,2}$/.test(value))
    throw new Error('value must be base64url');
  return Buffer.from(value, 'base64url');
}

const A256KW_IV = Buffer.from('A6A6A6A6A6A6A6A6', 'hex');

export function wrapWith(v: AzureKeyVersion, alg: unknown, value: unknown): string {
  const data = bytes(value);
  if (v.kty === 'oct-HSM') {
    if (alg !== 'A256KW') throw new Error(`Algorithm ${String(alg)} is not supported for this key type`);
    const c = createCipheriv('id-aes256-wrap', v.secret!, A256KW_IV);
    return b64u(Buffer.concat([c.update(data), c.final()]));
  }
  if (alg !== 'RSA-OAEP-256' && alg !== 'RSA-OAEP')
    throw new Error(`Algorithm ${String(alg)} is not supported`);
  return b64u(
    publicEncrypt(
      {
        key: v.publicKey!,
        padding: constants.RSA_PKCS1_OAEP_PADDING,
        oaepHash: alg === 'RSA-OAEP' ? 'sha1' : 'sha256',
      },
      data,
    ),
  );
}

export function unwrapWith(v: AzureKeyVersion, alg: unknown, value: unknown): string {
  const data = bytes(value);
  try {
    if (v.kty === 'oct-HSM') {
      if (alg !== 'A256KW') throw new Error('alg');
      const d = createDecipheriv('id-aes256-wrap', v.secret!, A256KW_IV);
      return b64u(Buffer.concat([d.update(data), d.final()]));
    }
    if (alg !== 'RSA-OAEP-256' && alg !== 'RSA-OAEP') throw new Error('alg');
    return b64u(
      privateDecrypt(
        {
          key: v.privateKey!,
          padding: constants.RSA_PKCS1_OAEP_PADDING,
          oaepHash: alg === 'RSA-OAEP' ? 'sha1' : 'sha256',
        },
        data,
      ),
    );
  } catch {
    throw new Error('The parameter is incorrect: unwrapping failed');
  }
}

/** A request the REST API would refuse with 400 `BadParameter`. */
export class BadKeyRequest extends Error {
  override name = 'BadKeyRequest';
}

const KTYS = new Set(['RSA', 'RSA-HSM', 'oct-HSM']);
const OPS = new Set(['encrypt', 'decrypt', 'sign', 'verify', 'wrapKey', 'unwrapKey', 'import', 'export']);
/** The operations a new key permits when `key_ops` is not given (the service's defaults). */
const DEFAULT_OPS: Record<AzureKeyVersion['kty'], readonly string[]> = {
  RSA: ['encrypt', 'decrypt', 'sign', 'verify', 'wrapKey', 'unwrapKey'],
  'RSA-HSM': ['encrypt', 'decrypt', 'sign', 'verify', 'wrapKey', 'unwrapKey'],
  'oct-HSM': ['encrypt', 'decrypt', 'wrapKey', 'unwrapKey'],
};

function keyOps(v: unknown): string[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || !v.every((o) => typeof o === 'string' && OPS.has(o)))
    throw new BadKeyRequest('key_ops must be a list of key operations');
  return [...v];
}

/** `attributes` of a create or update body: `enabled`, `nbf` / `exp` in seconds (null clears). */
function attributes(v: unknown): { enabled?: boolean; nbf?: Date | null; exp?: Date | null } {
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw new BadKeyRequest('attributes must be an object');
  const a = v as Record<string, unknown>;
  const out: { enabled?: boolean; nbf?: Date | null; exp?: Date | null } = {};
  if (a.enabled !== undefined) {
    if (typeof a.enabled !== 'boolean') throw new BadKeyRequest('attributes.enabled must be a boolean');
    out.enabled = a.enabled;
  }
  for (const f of ['nbf', 'exp'] as const) {
    if (a[f] === undefined) continue;
    if (a[f] === null) out[f] = null;
    else if (typeof a[f] === 'number' && Number.isInteger(a[f])) out[f] = new Date((a[f] as number) * 1000);
    else throw new BadKeyRequest(`attributes.${f} must be seconds since the epoch`);
  }
  return out;
}

/** `POST /keys/{name}/create`: a new version (of a new or an existing key) from the request body. */
export function versionFromCreate(body: Record<string, unknown>): AzureKeyVersion {
  const kty = body.kty;
  if (typeof kty !== 'string' || !KTYS.has(kty)) {
    throw new BadKeyRequest(
      `The key type ${JSON.stringify(kty)} is not supported here (RSA, RSA-HSM and oct-HSM are)`,
    );
  }
  const t = kty as AzureKeyVersion['kty'];
  const sizes = t === 'oct-HSM' ? [128, 192, 256] : [2048, 3072, 4096];
  const size = body.key_size ?? (t === 'oct-HSM' ? 256 : 2048);
  if (typeof size !== 'number' || !sizes.includes(size)) {
    throw new BadKeyRequest(`key_size must be one of ${sizes.join(', ')} for ${t}`);
  }
  const a = attributes(body.attributes);
  const v = newKeyVersion(
    t,
    keyOps(body.key_ops) ?? DEFAULT_OPS[t],
    a.exp ?? undefined,
    a.nbf ?? undefined,
    size,
  );
  if (a.enabled !== undefined) v.enabled = a.enabled;
  return v;
}

/** `PATCH /keys/{name}[/{version}]`: permitted operations and attributes of one version. */
export function applyUpdate(v: AzureKeyVersion, body: Record<string, unknown>): void {
  const ops = keyOps(body.key_ops);
  const a = attributes(body.attributes);
  if (ops !== undefined) v.keyOps = ops;
  if (a.enabled !== undefined) v.enabled = a.enabled;
  if (a.exp !== undefined) v.expiresOn = a.exp ?? undefined;
  if (a.nbf !== undefined) v.notBefore = a.nbf ?? undefined;
  v.updated = Math.floor(Date.now() / 1000);
}

/** The bits of a version's key (RSA modulus or AES key). */
export function keySizeOf(v: AzureKeyVersion): number {
  if (v.secret !== undefined) return v.secret.length * 8;
  return (v.publicKey?.asymmetricKeyDetails?.modulusLength as number | undefined) ?? 2048;
}
