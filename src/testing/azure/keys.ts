/** Key material of the local Key Vault: versioned RSA (RSA-OAEP-256) and oct-HSM (A256KW) keys. */
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
}

export interface AzureKeyRecord {
  readonly name: string;
  readonly kty: 'RSA' | 'RSA-HSM' | 'oct-HSM';
  current: string;
  readonly versions: Map<string, AzureKeyVersion>;
}

export function newKeyVersion(
  kty: AzureKeyVersion['kty'],
  keyOps: readonly string[],
  expiresOn?: Date,
  notBefore?: Date,
): AzureKeyVersion {
  const common = {
    version: randomBytes(16).toString('hex'),
    kty,
    keyOps: [...keyOps],
    enabled: true,
    expiresOn,
    notBefore,
    created: Math.floor(Date.now() / 1000),
  };
  if (kty === 'oct-HSM') return { ...common, secret: randomBytes(32) };
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
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
      updated: v.created,
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
