import type { ByokError } from '../errors.ts';
import type { Kek } from '../kms/kek.ts';
import type { AnyPgDatabase } from '../store/db.ts';
import type { AuditRecord } from './audit.ts';
import type { ByokEvent } from './events.ts';

/**
 * What the modules a `Keyring` delegates to (the lifecycle operations, the heartbeat, onboarding)
 * need of it: the key store, KMS call timing, invalidation, events and audit. The `Keyring`
 * implements it; declared here, below `keyring.ts`, so that none of them imports the facade. Its
 * key material is reached through `keysOf` (`access.ts`), never through this interface.
 */
export interface KeyringContext {
  /** The key store database (the keyring's `db`). */
  readonly db: AnyPgDatabase;
  /** True when the key store database has one connection (PGlite). */
  readonly singleConnection: boolean;
  /** Key references of the configured previous platform KEKs. */
  readonly previousPlatformKeyRefs: string[];
  /** Tenants refused by their KMS that this instance was serving: probed until they recover. */
  readonly watchedTenants: Set<string>;
  /** Whether a KEK kind can be rebuilt from stored configuration on this keyring. */
  hasFactory(kind: string): boolean;
  /** Runs a KMS call: emits a `kms` event, an audit row and an OpenTelemetry span. */
  timedKms<T>(operation: string, kek: Kek, tenantId: string, fn: () => Promise<T>): Promise<T>;
  /** Tells every instance (at commit when `db` is a transaction) to drop a tenant's keys. */
  notify(db: AnyPgDatabase, tenantId: string, reason: string, keyRef?: string): Promise<void>;
  /** Forgets built KEK instances for these KEK rows (after a lifecycle change). */
  dropKekInstances(ids: Iterable<string>): void;
  /** Drops a tenant's cached keys on this instance. */
  evictTenant(tenantId: string, reason?: string): void;
  emit(event: ByokEvent): void;
  /** Records an audit row (when `auditTable` is on). */
  audit(record: AuditRecord): Promise<void>;
  /** A KMS refused a tenant's key: evict its keys here, record its health, tell other instances. */
  reportRevocation(tenantId: string, keyRef: string, e: ByokError): Promise<void>;
}
