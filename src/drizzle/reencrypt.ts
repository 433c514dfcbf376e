import type { Column } from 'drizzle-orm';
import { envelopeDekId } from '../crypto/envelope.ts';
import { ByokConfigError, DecryptionFailedError, NoTenantError } from '../errors.ts';
import { isKeyring, type Keyring, keysOf } from '../keys/keyring.ts';
import { type EncryptedColumnState, encryptedState, envelopeOf, openFor, sealFor } from './columns.ts';
import { assertTenantId, scopeStorage } from '../scope.ts';

/** Where a stored ciphertext comes from, or goes to: an encrypted column and a tenant. */
export interface CiphertextBinding {
  /** An `encrypted.*` column. */
  readonly column: Column;
  /** The tenant the value belongs to. Default: the tenant in scope (`withTenant`). */
  readonly tenantId?: string;
}

/**
 * Moves stored ciphertexts to another column, table or tenant: each value is decrypted in the app
 * as a value of `from` (its column and tenant), and encrypted again for `to` under the target
 * tenant's active data key. The SQL guard refuses copying ciphertext across columns, tables or
 * tenants (the copy would never decrypt); this is the explicit way. Values come as stored (from
 * `rawCiphertext(column)`), and go back as stored, to be written with
 * `restoreCiphertext(to.column, value)`. `null` stays `null`. A value that is not a valid
 * ciphertext of `from` is a `DecryptionFailedError`; plaintext never leaves this function.
 *
 * ```ts
 * const rows = await withTenant('acme', () =>
 *   db.select({ id: patients.id, name: rawCiphertext(patients.name) }).from(patients));
 * const moved = await reencrypt(keyring, { column: patients.name, tenantId: 'acme' },
 *   { column: archive.name, tenantId: 'acme-archive' }, rows.map((r) => r.name));
 * ```
 */
export async function reencrypt(
  keyring: Keyring,
  from: CiphertextBinding,
  to: CiphertextBinding,
  values: readonly (Uint8Array | string | null)[],
): Promise<(Buffer | string | null)[]> {
  if (!isKeyring(keyring))
    throw new ByokConfigError('reencrypt(keyring, ...): keyring must come from createKeyring(...)');
  if (!Array.isArray(values))
    throw new ByokConfigError('reencrypt(keyring, from, to, values): values must be an array');
  const src = bindingOf(from, 'from');
  const dst = bindingOf(to, 'to');
  if (src.state.codec.name !== dst.state.codec.name) {
    throw new ByokConfigError(
      `reencrypt: ${src.state.label} holds encrypted.${src.state.codec.name} values and ${dst.state.label} ` +
        `encrypted.${dst.state.codec.name}: values move between columns of the same type only`,
    );
  }
  const keys = keysOf(keyring);
  const envelopes = values.map((v) => {
    if (v === null || v === undefined) return null;
    const env = envelopeOf(src.state, v);
    if (env === undefined || env.length === 0)
      throw new DecryptionFailedError({ column: src.state.label, tenantId: src.tenantId });
    return env;
  });
  const ids = [...new Set(envelopes.filter((e) => e !== null).map((e) => envelopeDekId(e!)))];
  const entries = new Map(
    await Promise.all(
      ids.map(async (id) => {
        try {
          return [id, await keys.getDekForRead(id, src.tenantId)] as const;
        } catch (e) {
          if (e instanceof DecryptionFailedError)
            throw new DecryptionFailedError({ column: src.state.label, tenantId: src.tenantId });
          throw e;
        }
      }),
    ),
  );
  const target = envelopes.some((e) => e !== null) ? await keys.getActiveDek(dst.tenantId) : undefined;
  return envelopes.map((env) => {
    if (env === null) return null;
    const entry = entries.get(envelopeDekId(env))!;
    if (entry.tenantId !== src.tenantId)
      throw new DecryptionFailedError({ column: src.state.label, tenantId: src.tenantId });
    const value = openFor(keyring, src.state, entry, env);
    return sealFor(keyring, dst.state, target!, dst.state.codec.encode(value));
  });
}

function bindingOf(
  b: CiphertextBinding,
  what: 'from' | 'to',
): { state: EncryptedColumnState; tenantId: string } {
  if (b === null || typeof b !== 'object')
    throw new ByokConfigError(`reencrypt: ${what} must be { column, tenantId? }`);
  const state = encryptedState(b.column);
  if (state === undefined)
    throw new ByokConfigError(`reencrypt: ${what}.column is not an encrypted.* column`);
  const tenantId = b.tenantId ?? scopeStorage.getStore()?.tenantId ?? undefined;
  if (tenantId === undefined || tenantId === null) {
    throw new NoTenantError(
      `reencrypt: ${what} needs a tenant: pass ${what}.tenantId or run inside keyring.withTenant(tenantId, ...)`,
    );
  }
  assertTenantId(tenantId, `reencrypt: ${what}.tenantId`);
  return { state, tenantId };
}
