/**
 * Secrets of a KEK's configuration (e.g. a role's credentials), stored encrypted under the platform
 * key: a fresh AES-256-GCM key per secret, wrapped by the platform KEK, bound to the tenant and the
 * KEK row as AAD.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { ByokConfigError, ByokError } from '../errors.ts';
import type { Kek } from '../kms/kek.ts';
import { unwrapIdentified, wrapIdentified } from './identity.ts';

/** A sealed secret as stored on a KEK row. */
export interface SealedSecret {
  secret: Buffer;
  secretKey: Buffer;
  secretKeyRef: string;
  secretKeyBy: string | null;
}

/** The sealed-secret columns of a KEK row (all null when the KEK has no secret). */
export interface SealedSecretColumns {
  secret: Buffer | null;
  secretKey: Buffer | null;
  secretKeyRef: string | null;
  secretKeyBy?: string | null;
}

/** Encrypts a KEK's secret parameters: a fresh key wrapped by the platform KEK, AES-GCM over the JSON. */
export async function sealSecret(
  platformKek: Kek,
  tenantId: string,
  kekId: string,
  secret: Readonly<Record<string, unknown>>,
): Promise<SealedSecret> {
  const key = randomBytes(32);
  try {
    const { wrapped, wrappedBy } = await wrapIdentified(platformKek, key, { tenantId, dekId: kekId });
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', key, iv);
    c.setAAD(Buffer.from(`byok-kek-secret|${tenantId}|${kekId}`));
    const body = Buffer.concat([c.update(JSON.stringify(secret), 'utf8'), c.final()]);
    return {
      secret: Buffer.concat([iv, body, c.getAuthTag()]),
      secretKey: Buffer.from(wrapped),
      secretKeyRef: platformKek.keyRef,
      secretKeyBy: wrappedBy,
    };
  } finally {
    key.fill(0);
  }
}

/**
 * Decrypts a KEK's sealed secret with the platform KEK (current or previous) it names. `platformKekFor`
 * returns the configured platform KEK of a key reference, if any.
 */
export async function openSecret(
  platformKekFor: (keyRef: string) => Kek | undefined,
  tenantId: string,
  kekId: string,
  row: SealedSecretColumns,
): Promise<Record<string, unknown>> {
  if (row.secret === null || row.secretKey === null) return {};
  const kek = platformKekFor(row.secretKeyRef ?? '');
  if (kek === undefined) {
    throw new ByokConfigError(
      `the KEK secret of tenant ${tenantId} is sealed under platform key ${row.secretKeyRef}, which is not configured`,
    );
  }
  const key = Buffer.from(
    await unwrapIdentified(kek, row.secretKey, { tenantId, dekId: kekId }, row.secretKeyBy),
  );
  try {
    const s = row.secret;
    const d = createDecipheriv('aes-256-gcm', key, s.subarray(0, 12), { authTagLength: 16 });
    d.setAAD(Buffer.from(`byok-kek-secret|${tenantId}|${kekId}`));
    d.setAuthTag(s.subarray(s.length - 16));
    const json = Buffer.concat([d.update(s.subarray(12, s.length - 16)), d.final()]).toString('utf8');
    return JSON.parse(json) as Record<string, unknown>;
  } catch {
    throw new ByokError(`the stored KEK secret of tenant ${tenantId} could not be decrypted`, { tenantId });
  } finally {
    key.fill(0);
  }
}
