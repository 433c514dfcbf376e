import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createSecretKey,
  type KeyObject,
  randomBytes,
} from 'node:crypto';
import { inspect } from 'node:util';
import { ByokConfigError, KmsIntegrityError } from '../errors.ts';
import type { Kek, KekConfig, KeyDescription, WrapContext } from './kek.ts';

export interface LocalKekOptions {
  /**
   * The platform key: 32 bytes, as a Buffer/Uint8Array, or as base64 / base64url / hex text
   * (e.g. from an environment variable). Generate one with
   * `node -e "console.log(require('crypto').randomBytes(32).toString('base64'))"`.
   */
  key: string | Uint8Array;
}

const WRAP_VERSION = 0x01;

/**
 * The platform's own key-encryption key, held in process memory. Tenants without BYOK have their
 * data keys wrapped by it; it also encrypts secrets stored in tenants' KEK configuration.
 * Wrapping is AES-256-GCM with AAD binding the tenant and DEK id.
 * `keyRef` is `local:` + a fingerprint (SHA-256 of a domain-separated hash of the key, 16 hex chars),
 * which identifies the key without revealing it.
 */
export function localKek(options: LocalKekOptions): Kek {
  const raw = parseKey(options?.key);
  const key: KeyObject = createSecretKey(raw);
  const fingerprint = createHash('sha256')
    .update('drizzle-byok/local-kek-fingerprint')
    .update(raw)
    .digest('hex')
    .slice(0, 16);
  raw.fill(0);
  const keyRef = `local:${fingerprint}`;
  const aadOf = (c: WrapContext) => Buffer.from(`${c.tenantId.length}:${c.tenantId}|${c.dekId}`, 'utf8');
  const kek: Kek & { toJSON(): unknown; [inspect.custom](): string } = {
    kind: 'local',
    keyRef,
    async wrap(dek, context) {
      const iv = randomBytes(12);
      const cipher = createCipheriv('aes-256-gcm', key, iv);
      cipher.setAAD(aadOf(context));
      const body = Buffer.concat([cipher.update(dek), cipher.final()]);
      return Buffer.concat([Buffer.from([WRAP_VERSION]), iv, body, cipher.getAuthTag()]);
    },
    async unwrap(wrapped, context) {
      const w = Buffer.from(wrapped.buffer, wrapped.byteOffset, wrapped.byteLength);
      if (w.length !== 1 + 12 + 32 + 16 || w[0] !== WRAP_VERSION) {
        throw new KmsIntegrityError(`wrapped data key is malformed (${keyRef})`, {
          tenantId: context.tenantId,
        });
      }
      try {
        const decipher = createDecipheriv('aes-256-gcm', key, w.subarray(1, 13), { authTagLength: 16 });
        decipher.setAAD(aadOf(context));
        decipher.setAuthTag(w.subarray(w.length - 16));
        return Buffer.concat([decipher.update(w.subarray(13, w.length - 16)), decipher.final()]);
      } catch {
        throw new KmsIntegrityError(`data key could not be unwrapped with ${keyRef}`, {
          tenantId: context.tenantId,
        });
      }
    },
    async describe(): Promise<KeyDescription> {
      return { state: 'enabled', providerState: 'in-process', details: { algorithm: 'AES-256-GCM' } };
    },
    toConfig(): KekConfig {
      // The platform key itself is configuration, never data: it is not stored.
      return { kind: 'local', params: { keyRef } };
    },
    toJSON: () => ({ kind: 'local', keyRef }),
    [inspect.custom]: () => `LocalKek { keyRef: '${keyRef}' }`,
  };
  return Object.freeze(kek);
}

function parseKey(key: unknown): Buffer {
  const hint =
    'localKek({ key }) needs 32 random bytes: a Buffer, or base64/hex text of 32 bytes ' +
    "(e.g. node -e \"console.log(require('crypto').randomBytes(32).toString('base64'))\")";
  if (key instanceof Uint8Array) {
    if (key.length !== 32) throw new ByokConfigError(`${hint}; got ${key.length} bytes`);
    return notRepeated(Buffer.from(key), hint);
  }
  if (typeof key !== 'string' || key.length === 0) {
    throw new ByokConfigError(
      `${hint}; got ${key === undefined || key === '' ? 'nothing' : `a ${typeof key}`}`,
    );
  }
  const text = key.trim();
  // Hex is tried for text made only of hex digits (base64 of 32 bytes is 43-44 characters with
  // letters beyond f, or '='); everything else is read as base64 / base64url. The message says
  // which encoding was tried and what it gave, never the text itself.
  if (/^[0-9a-fA-F]+$/.test(text)) {
    if (text.length === 64) return notRepeated(Buffer.from(text, 'hex'), hint);
    throw new ByokConfigError(
      `${hint}; the text was read as hex: ${text.length} hex digits${text.length % 2 === 0 ? ` (${text.length / 2} bytes)` : ''}, ` +
        'but 32 bytes are 64 hex digits',
    );
  }
  if (!/^[A-Za-z0-9+/_-]+={0,2}$/.test(text)) {
    throw new ByokConfigError(
      `${hint}; the text is neither hex (64 digits 0-9a-f) nor base64 (44 characters A-Z a-z 0-9 + / =, or base64url)`,
    );
  }
  const url = text.includes('-') || text.includes('_');
  const raw = Buffer.from(text, url ? 'base64url' : 'base64');
  if (raw.length !== 32) {
    throw new ByokConfigError(
      `${hint}; the text was read as ${url ? 'base64url' : 'base64'}: ${text.length} characters decode to ` +
        `${raw.length} bytes, but 32 bytes are 44 base64 characters (43 without the trailing '=')`,
    );
  }
  return notRepeated(raw, hint);
}

function notRepeated(raw: Buffer, hint: string): Buffer {
  if (raw.every((b) => b === raw[0]))
    throw new ByokConfigError(`${hint}; the key is a repeated byte, not random`);
  return raw;
}
