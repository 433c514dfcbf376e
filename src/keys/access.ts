import type { FieldKey } from '../crypto/aead.ts';
import type { BlindKey } from '../crypto/blind-hmac.ts';
import type { Kek } from '../kms/kek.ts';
import type { AnyPgDatabase } from '../store/db.ts';
import type { DekCache, DekEntry } from './cache.ts';
import type { KeyringContext } from './context.ts';
import type { KekRow } from './key-store.ts';

/**
 * The key material side of a keyring, for the library's own modules (middleware, migrate, blind
 * indexes). Not exported from the package: data key entries are never part of the public API.
 */
export interface KeyAccess {
  readonly cache: DekCache;
  getDek(id: string, txDb?: AnyPgDatabase): Promise<DekEntry>;
  getDekForRead(id: string, tenantId: string | null, txDb?: AnyPgDatabase): Promise<DekEntry>;
  getDekVersion(tenantId: string, version: number, txDb?: AnyPgDatabase): Promise<DekEntry>;
  getActiveDek(tenantId: string, txDb?: AnyPgDatabase): Promise<DekEntry>;
  fieldKey(entry: DekEntry, context: string): FieldKey;
  blindKey(entry: DekEntry, label: string, context: string): BlindKey;
  /** The platform KEK (it unwraps data keys: internal like them). */
  readonly platformKek: Kek;
  platformKekFor(keyRef: string): Kek | undefined;
  kekFor(row: KekRow): Promise<Kek>;
  sealSecret(
    tenantId: string,
    kekId: string,
    secret: Readonly<Record<string, unknown>>,
  ): Promise<{ secret: Buffer; secretKey: Buffer; secretKeyRef: string; secretKeyBy: string | null }>;
  openSecret(
    tenantId: string,
    kekId: string,
    row: {
      secret: Buffer | null;
      secretKey: Buffer | null;
      secretKeyRef: string | null;
      secretKeyBy?: string | null;
    },
  ): Promise<Record<string, unknown>>;
  createDek(
    tenantId: string,
    options: { rotate: boolean; db?: AnyPgDatabase; cache?: boolean },
  ): Promise<DekEntry>;
}

let access: ((k: KeyringContext) => KeyAccess) | undefined;

/**
 * Installs the accessor of a keyring's key access. Called once, by the `Keyring` class's static
 * block (the accessor reads a private field): a second call is refused, so the accessor cannot be
 * replaced. In its own module so that the key lifecycle, the heartbeat and the Drizzle layer reach a
 * keyring's keys without importing `keyring.ts`, which imports them.
 */
export function setKeyAccess(fn: (k: KeyringContext) => KeyAccess): void {
  if (access !== undefined) throw new TypeError('the keyring key access is already installed');
  access = fn;
}

/** The key access of a keyring (library-internal). */
export function keysOf(keyring: KeyringContext): KeyAccess {
  if (access === undefined) throw new TypeError('not a keyring made by createKeyring');
  return access(keyring);
}
