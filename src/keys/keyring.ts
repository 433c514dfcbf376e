/**
 * The `Keyring` facade: the public API of data keys. It wires the parts together and delegates to
 * them: the key store and its connection budget (`key-store.ts`), the batch loaders (`loader.ts`),
 * the unwrap with failover and KMS call timing (`unwrap.ts`), data key creation (`create.ts`), KEK
 * instances (`kek-instances.ts`), KEK-secret sealing (`sealing.ts`), the invalidation bus
 * (`invalidation/`), the audit table (`audit.ts`), the lifecycle operations (`lifecycle/`), the
 * heartbeat and onboarding. Those reach the keyring through `KeyringContext` (`context.ts`) and
 * `keysOf` (`access.ts`), never by importing this file.
 */
import { randomUUID } from 'node:crypto';
import { inspect } from 'node:util';
import { and, eq } from 'drizzle-orm';
import { type ByokError, isByokError, KmsIntegrityError } from '../errors.ts';
import type { Kek } from '../kms/kek.ts';
import { type Started, withAnyTenant, withTenant } from '../scope.ts';
import type { AnyPgDatabase } from '../store/db.ts';
import { rethrowStoreError, translateStoreError } from '../store/errors.ts';
import { installKeyStore } from '../store/migrations.ts';
import { assertPgDatabase } from '../store/pg.ts';
import { type KeyAccess, setKeyAccess } from './access.ts';
import { type AuditRecord, AuditLog } from './audit.ts';
import { DekCache } from './cache.ts';
import type { KeyringContext } from './context.ts';
import { type DekWrap, DekCreator } from './create.ts';
import { type ByokEvent, type ByokEventListener, EventHub, type KeyringCounters } from './events.ts';
import { blindKey, fieldKey } from './field-keys.ts';
import { type Heartbeat, type HeartbeatOptions, isRefusal, startHeartbeat } from './heartbeat.ts';
import { InvalidationBus, type Notice } from './invalidation/index.ts';
import { KekInstances } from './kek-instances.ts';
import { type KekRow, KeyStore } from './key-store.ts';
import * as lifecycle from './lifecycle/index.ts';
import { DekLoader } from './loader.ts';
import { type Onboarding, type OnboardingOptions, onboarding } from './onboarding.ts';
import { type KeyringOptions, isSingleConnection, positiveInt, validateKeyringOptions } from './options.ts';
import { type PrefetchResult, prefetch } from './prefetch.ts';
import { byokKeks, byokTenants } from '../store/schema-key-store.ts';
import { openSecret, sealSecret } from './sealing.ts';
import { loadTelemetry } from './telemetry.ts';
import { Unwrapper } from './unwrap.ts';

export { type AnyPgDatabase, asPgDb, type PgDb } from '../store/db.ts';
export { type KeyAccess, keysOf } from './access.ts';
export { INVALIDATION_CHANNEL } from './invalidation/notice.ts';
export type { KekRow } from './key-store.ts';
export { assertKek, type KeyringOptions, type KeyStoreOptions } from './options.ts';
export type { PrefetchResult } from './prefetch.ts';

export interface KeyringStats {
  /** Field decryptions/encryptions served from cached keys without waiting. */
  readonly hotHits: number;
  /** Data keys loaded from the store and unwrapped through a KEK. */
  readonly unwraps: number;
  /** Batches of data key loads. */
  readonly batches: number;
  /** Data keys created. */
  readonly created: number;
  readonly cachedKeys: number;
}

let isKeyringBrand: (v: unknown) => boolean;

/**
 * The keyring: owns the data key cache, loads and unwraps data keys in batches, creates each
 * tenant's first data key lazily, and runs the key lifecycle. One per process (per key store).
 */
export class Keyring implements KeyringContext {
  readonly db: AnyPgDatabase;
  readonly #platformKek: Kek;
  readonly #previousPlatform: Map<string, Kek>;
  readonly #cache: DekCache;
  readonly #keys: KeyAccess;
  readonly #store: KeyStore;
  readonly #events = new EventHub();
  readonly #counters: KeyringCounters = { hotHits: 0, unwraps: 0, batches: 0, created: 0 };
  readonly #keks: KekInstances;
  readonly #unwrap: Unwrapper;
  readonly #create: DekCreator;
  readonly #loader: DekLoader;
  readonly #bus: InvalidationBus;
  readonly #audit: AuditLog;
  readonly #singleConnection: boolean;
  readonly #heartbeatOptions: HeartbeatOptions | false;
  #heartbeat: Heartbeat | undefined;
  #listener: { stop(): Promise<void> } | undefined;
  /** Identifies this instance in invalidation notices. */
  readonly instanceId = randomUUID();
  /** @internal Tenants refused by their KMS that this instance was serving: probed until they recover. */
  readonly watchedTenants = new Set<string>();

  constructor(options: KeyringOptions) {
    validateKeyringOptions(options);
    assertPgDatabase(options.db, 'createKeyring');
    const ks = options.keyStore ?? {};
    this.#store = new KeyStore(options.db, {
      db: ks.db,
      maxConcurrent: positiveInt(ks.maxConcurrent ?? 4, 'keyStore.maxConcurrent'),
      waitTimeoutMs: positiveInt(ks.waitTimeoutMs ?? 10_000, 'keyStore.waitTimeoutMs'),
    });
    this.db = options.db;
    this.#platformKek = options.platformKek;
    this.#previousPlatform = new Map((options.previousPlatformKeks ?? []).map((k) => [k.keyRef, k]));
    this.#cache = new DekCache(options.cache);
    const unwrapConcurrency = positiveInt(options.unwrapConcurrency ?? 16, 'unwrapConcurrency');
    const maxBatchSize = positiveInt(options.maxBatchSize ?? 500, 'maxBatchSize');
    this.#singleConnection = options.singleConnection ?? isSingleConnection(options.db);
    this.#heartbeatOptions = options.heartbeat ?? {};
    this.#audit = new AuditLog(this.#store, options.auditTable === true);
    void loadTelemetry();
    if (options.onEvent !== undefined) this.#events.add(options.onEvent);
    this.#bus = new InvalidationBus(this.#store, this.instanceId, options.listenClient);
    const platformKekFor = (keyRef: string) => this.#platformKekFor(keyRef);
    this.#keks = new KekInstances(options.kekFactories ?? {}, (tenantId, kekId, row) =>
      openSecret(platformKekFor, tenantId, kekId, row),
    );
    this.#unwrap = new Unwrapper({
      store: this.#store,
      cache: this.#cache,
      keks: this.#keks,
      events: this.#events,
      audit: this.#audit,
      counters: this.#counters,
      platformKekFor,
      reportRevocation: (tenantId, keyRef, e) => this.reportRevocation(tenantId, keyRef, e),
      preferredRegion: options.preferredRegion,
      unwrapConcurrency,
    });
    this.#create = new DekCreator({
      store: this.#store,
      cache: this.#cache,
      keks: this.#keks,
      unwrap: this.#unwrap,
      counters: this.#counters,
      platformKek: this.#platformKek,
      loadExisting: (id, db, cacheIt) =>
        cacheIt ? this.#loader.getDek(id) : this.#loader.loadInTransaction(db, { id }),
    });
    const loader = new DekLoader({
      store: this.#store,
      cache: this.#cache,
      events: this.#events,
      counters: this.#counters,
      unwrap: this.#unwrap,
      create: this.#create,
      singleConnection: this.#singleConnection,
      maxBatchSize,
      unwrapConcurrency,
    });
    this.#loader = loader;
    this.#keys = {
      cache: this.#cache,
      getDek: (id, txDb) => loader.getDek(id, txDb),
      getDekForRead: (id, tenantId, txDb) => loader.getDekForRead(id, tenantId, txDb),
      getDekVersion: (tenantId, version, txDb) => loader.getDekVersion(tenantId, version, txDb),
      getActiveDek: (tenantId, txDb) => loader.getActiveDek(tenantId, txDb),
      fieldKey,
      blindKey,
      platformKek: this.#platformKek,
      platformKekFor,
      kekFor: (row) => this.#keks.kekFor(row),
      sealSecret: (tenantId, kekId, secret) => sealSecret(this.#platformKek, tenantId, kekId, secret),
      openSecret: (tenantId, kekId, row) => openSecret(platformKekFor, tenantId, kekId, row),
      createDek: (tenantId, options) => this.#create.createDek(tenantId, options),
    };
  }

  static {
    setKeyAccess((k) => (k as Keyring).#keys);
    isKeyringBrand = (v) => typeof v === 'object' && v !== null && #keys in v;
  }

  /** Creates the key store tables if they do not exist (runs the shipped SQL migration). */
  async installKeyStore(): Promise<void> {
    await installKeyStore(this.#store.writeDb).catch(rethrowStoreError);
  }

  /** Runs `fn` with `tenantId` in scope (same as the standalone `withTenant`). */
  withTenant<T>(tenantId: string, fn: () => T): Started<T> {
    return withTenant(tenantId, fn);
  }

  /** Runs `fn` allowed to read every tenant's rows (same as the standalone `withAnyTenant`). */
  withAnyTenant<T>(fn: () => T): Started<T> {
    return withAnyTenant(fn);
  }

  /** Subscribes to events; returns an unsubscribe function. */
  onEvent(listener: ByokEventListener): () => void {
    return this.#events.add(listener);
  }

  stats(): KeyringStats {
    return { ...this.#counters, cachedKeys: this.#cache.size };
  }

  /** Key reference of the platform KEK (the KEK itself is not reachable from the keyring). */
  get platformKeyRef(): string {
    return this.#platformKek.keyRef;
  }

  /** Key references of the configured previous platform KEKs. */
  get previousPlatformKeyRefs(): string[] {
    return [...this.#previousPlatform.keys()];
  }

  /** The platform KEK (current or previous) with this key reference, if configured. */
  #platformKekFor(keyRef: string): Kek | undefined {
    return keyRef === this.#platformKek.keyRef ? this.#platformKek : this.#previousPlatform.get(keyRef);
  }

  /**
   * After replacing the platform key (new `platformKek`, old one in `previousPlatformKeks`):
   * re-wraps every data key still wrapped under an old platform key, and re-seals KEK secrets
   * sealed under one. Data is not re-encrypted. Resumable: run it again after an interruption.
   * `remaining` counts what is still under a platform key this instance does not know: when it is 0,
   * the old platform keys can be removed from the configuration.
   */
  rewrapPlatform(options?: {
    /** Data keys read per query. Default 100. */
    batchSize?: number;
    /** Called after each data key (and once at the start) with counts, rate and ETA. */
    onProgress?: (p: lifecycle.RewrapPlatformProgress) => void;
  }): Promise<{ dataKeys: number; secrets: number; remaining: number }> {
    return lifecycle.rewrapPlatform(this, options).catch(rethrowStoreError);
  }

  /** Whether a KEK kind can be rebuilt from stored configuration on this keyring. */
  hasFactory(kind: string): boolean {
    return this.#keks.hasFactory(kind);
  }

  /** True when the key store database has one connection (PGlite). */
  get singleConnection(): boolean {
    return this.#singleConnection;
  }

  /**
   * True when key store work made for a query inside a transaction runs in that transaction (no
   * `keyStore.db` of its own): it never needs a second connection the transaction could wait on.
   */
  get storeInTransaction(): boolean {
    return !this.#store.own;
  }

  /** @internal A transaction (or savepoint) began: keys it creates stay its own until it commits. */
  openTransaction(tx: AnyPgDatabase, parent: AnyPgDatabase | undefined): void {
    this.#loader.openTransaction(tx, parent);
  }

  /** @internal A savepoint was released: its keys belong to the enclosing transaction. */
  releaseTransaction(tx: AnyPgDatabase): void {
    this.#loader.releaseTransaction(tx);
  }

  /** @internal counts a field served from the cache without waiting. */
  countHotHit(): void {
    this.#counters.hotHits++;
  }

  emit(event: ByokEvent): void {
    this.#events.emit(event);
  }

  /** Drops every cached data key on this instance (their bytes are zeroed). */
  clearCache(): void {
    this.#cache.clear();
  }

  /**
   * Loads tenants' data keys into the cache ahead of use (at instance start, before a batch job), so
   * the first queries of those tenants do not wait on their KMS. One store query per 1,000 tenants,
   * then the unwraps, batched and deduplicated with concurrent queries' loads (`maxBatchSize` keys
   * per batch, `unwrapConcurrency` KMS calls in flight per batch): about
   * `ceil(keys / unwrapConcurrency)` KMS round trips at most. Creates no data key.
   *
   * `versions: 'active'` (default) loads each tenant's active data key (every write, and reads of
   * rows written since the last `rotateDek`); `'all'` also loads retired versions still readable.
   * At most `cache.maxEntries` keys are loaded (more would evict the first ones): the rest is
   * reported in `skipped`, in the order `tenantIds` gave them.
   *
   * A tenant whose key cannot be loaded (revoked, KMS down) does not fail the call: it is reported in
   * `failed` with the error's code, and its queries load (or fail) as without a prefetch.
   */
  prefetch(
    tenantIds: readonly string[],
    options: { versions?: 'active' | 'all' } = {},
  ): Promise<PrefetchResult> {
    return prefetch(this.#store, this.#cache, (id) => this.#loader.getDek(id), tenantIds, options);
  }

  /** Drops a tenant's cached keys on this instance. */
  evictTenant(tenantId: string, reason = 'manual'): void {
    this.#cache.evictTenant(tenantId);
    this.emit({ type: 'invalidation', tenantId, reason, source: 'local' });
  }

  /**
   * Starts the key heartbeat (active revocation detection; see `HeartbeatOptions`): every
   * `intervalMs` (default 30 s, jittered) one real unwrap per active KEK of each tenant whose keys
   * this instance has cached, or that it saw refused. A refusal evicts the tenant here, records its
   * health and tells the other instances (NOTIFY); a success after a refusal sets health back to
   * `ok`. `startListening()` starts it too (unless `heartbeat: false`); one per keyring, stopped by
   * `close()`. Returns the running heartbeat if there is one.
   */
  startHeartbeat(options?: HeartbeatOptions): Heartbeat {
    if (this.#heartbeat === undefined) {
      const hb = startHeartbeat(this, options ?? (this.#heartbeatOptions || {}));
      this.#heartbeat = {
        intervalMs: hb.intervalMs,
        tick: () => hb.tick(),
        stop: async () => {
          if (this.#heartbeat !== undefined) this.#heartbeat = undefined;
          await hb.stop();
        },
      };
    }
    return this.#heartbeat;
  }

  async close(): Promise<void> {
    await this.#heartbeat?.stop();
    await this.#listener?.stop();
    this.#listener = undefined;
    this.#audit.stop();
    await this.flushAudit().catch(() => undefined);
    this.#cache.clear();
    await this.#keks.closeAll();
  }

  // ---------------------------------------------------------------------------------------------
  // Key lifecycle (see lifecycle/)

  /**
   * Puts the tenant's data keys under its own KEK(s): verifies each key (state, usage, a wrap/unwrap
   * round trip), then re-wraps every data key under each and removes the platform wrap, in one
   * transaction. Several KEKs (e.g. primary and replica region) each wrap every data key.
   */
  enableByok(
    tenantId: string,
    keks: Kek | readonly Kek[],
    options?: lifecycle.LifecycleOptions,
  ): Promise<lifecycle.TenantStatus> {
    return lifecycle.enableByok(this, tenantId, keks, options).catch(failFor(tenantId));
  }

  /** Replaces the tenant's KEK(s) after verifying the new ones; re-wraps data keys only. */
  rotateKek(
    tenantId: string,
    keks: Kek | readonly Kek[],
    options?: lifecycle.LifecycleOptions,
  ): Promise<lifecycle.TenantStatus> {
    return lifecycle.rotateKek(this, tenantId, keks, options).catch(failFor(tenantId));
  }

  /** Moves the tenant back under the platform key (re-wraps its data keys). */
  disableByok(tenantId: string, options?: lifecycle.LifecycleOptions): Promise<lifecycle.TenantStatus> {
    return lifecycle.disableByok(this, tenantId, options).catch(failFor(tenantId));
  }

  /** Starts a new data key version for new writes; old versions stay readable. */
  rotateDek(tenantId: string): Promise<{ tenantId: string; version: number }> {
    return lifecycle.rotateDek(this, tenantId).catch(failFor(tenantId));
  }

  /** Crypto-shreds the tenant: destroys every wrapped data key. Irreversible; `confirm` repeats the id. */
  shred(
    tenantId: string,
    options: lifecycle.ShredOptions,
  ): Promise<{ tenantId: string; destroyedVersions: number }> {
    return lifecycle.shred(this, tenantId, options).catch(failFor(tenantId));
  }

  /** Mode, KEKs, health, data key versions and progress of a tenant. No secrets. */
  status(tenantId: string): Promise<lifecycle.TenantStatus> {
    return lifecycle.status(this, tenantId).catch(failFor(tenantId));
  }

  /**
   * Re-wraps the tenant's data keys that are wrapped under another key than the one its KEK
   * references name now (an alias moved to a new key; a new Cloud KMS primary version), after
   * verifying each KEK like `rotateKek`. Afterwards the old key can be disabled with no loss.
   * `status().keks[].moved` (after `checkHealth`) counts what this call would move.
   */
  rewrapMovedKeys(
    tenantId: string,
    options?: lifecycle.LifecycleOptions,
  ): Promise<lifecycle.RewrapMovedResult> {
    return lifecycle.rewrapMovedKeys(this, tenantId, options);
  }

  /**
   * Onboarding artifacts for the tenant's key administrator (see `OnboardingOptions`): generates and
   * stores a per-tenant external id (AWS; kept across calls unless `rotateExternalId`), and returns
   * the key policy, the role trust policy, `aws` / `gcloud` commands and a Terraform snippet. An
   * assume-role KEK given to `enableByok` / `rotateKek` afterwards must use that external id.
   */
  onboarding(tenantId: string, options: OnboardingOptions): Promise<Onboarding> {
    return onboarding(this, tenantId, options);
  }

  /** DescribeKey / GetCryptoKey sweep over BYOK tenants; records health, evicts revoked tenants. */
  checkHealth(options?: {
    tenants?: readonly string[];
    concurrency?: number;
  }): Promise<lifecycle.TenantStatus[]> {
    return lifecycle.checkHealth(this, options).catch(rethrowStoreError);
  }

  // ---------------------------------------------------------------------------------------------
  // Cross-instance invalidation (PostgreSQL LISTEN/NOTIFY, see invalidation/)

  /** @internal Tells every instance (at commit when `db` is a transaction) to drop a tenant's keys. */
  notify(db: AnyPgDatabase, tenantId: string, reason: string, keyRef?: string): Promise<void> {
    return this.#bus.notify(db, tenantId, reason, keyRef);
  }

  /**
   * Listens for invalidation notices from other instances, on a connection of its own: never one
   * of the app's pool (a pool of one would be lost to it). postgres.js: its dedicated listener
   * connection; node-postgres: a new client built from the pool's (or client's) configuration;
   * PGlite: its own `listen`. With `listenClient` (e.g. a direct connection when the app's go through
   * PgBouncer in transaction mode, where LISTEN is not delivered), that client is used instead.
   * Also starts the key heartbeat (`startHeartbeat`, unless the keyring was created with
   * `heartbeat: false`). Call once per process; `close()` stops both. The cache max age remains the backstop when a notice
   * is lost (connection drop).
   */
  async startListening(): Promise<{ stop(): Promise<void> }> {
    if (this.#listener !== undefined) return this.#listener;
    const stop = await this.#bus.listen((notice) => this.#onNotice(notice));
    this.#listener = {
      stop: async () => {
        this.#listener = undefined;
        await stop().catch(() => undefined);
      },
    };
    if (this.#heartbeatOptions !== false) this.startHeartbeat();
    return this.#listener;
  }

  /** Probed by the heartbeat until it recovers; at most 10,000 (the oldest are dropped first). */
  #watch(tenantId: string): void {
    this.watchedTenants.delete(tenantId);
    this.watchedTenants.add(tenantId);
    for (const t of this.watchedTenants) {
      if (this.watchedTenants.size <= 10_000) break;
      this.watchedTenants.delete(t);
    }
  }

  /** Another instance's notice: drop the tenant's keys and KEK instances here. */
  #onNotice(msg: Notice): void {
    const dropped = this.#cache.evictTenant(msg.tenantId);
    if (msg.reason === 'revoked' && dropped > 0) this.#watch(msg.tenantId);
    if (msg.reason === 'recovered') this.watchedTenants.delete(msg.tenantId);
    this.dropKekInstances(this.#keks.idsOf(msg.tenantId));
    this.emit({ type: 'invalidation', tenantId: msg.tenantId, reason: msg.reason, source: 'remote' });
    if (msg.reason === 'revoked' && typeof msg.keyRef === 'string') {
      this.emit({
        type: 'revocation',
        tenantId: msg.tenantId,
        keyRef: msg.keyRef,
        errorCode: 'REMOTE',
        source: 'remote',
      });
    }
  }

  /**
   * @internal A KMS refused a tenant's key: evict its keys here, record its health, and tell the
   * other instances. Errors while recording are swallowed (the refusal itself is what matters).
   */
  async reportRevocation(tenantId: string, keyRef: string, e: ByokError): Promise<void> {
    if (!isRefusal(e as unknown) && !((e as unknown) instanceof KmsIntegrityError)) return;
    this.#cache.evictTenant(tenantId);
    this.#watch(tenantId);
    this.emit({ type: 'revocation', tenantId, keyRef, errorCode: e.code, source: 'local' });
    this.audit({
      tenantId,
      operation: 'revocation',
      keyRef,
      outcome: 'error',
      detail: { errorCode: e.code },
    }).catch(() => undefined);
    const writeDb = this.#store.writeDb;
    await this.#store
      .run(async () => {
        await writeDb
          .update(byokTenants)
          .set({ health: 'error', lastError: `${e.code}: ${e.message}`, lastVerifiedAt: new Date() })
          .where(eq(byokTenants.tenantId, tenantId));
        await writeDb
          .update(byokKeks)
          .set({ health: 'error', lastError: `${e.code}: ${e.message}`, lastVerifiedAt: new Date() })
          .where(
            and(eq(byokKeks.tenantId, tenantId), eq(byokKeks.keyRef, keyRef), eq(byokKeks.state, 'active')),
          );
        await this.notify(writeDb, tenantId, 'revoked', keyRef);
      })
      .catch(() => undefined);
  }

  // ---------------------------------------------------------------------------------------------
  // Audit table (see audit.ts)

  /** @internal Records an audit row (when `auditTable` is on). */
  audit(record: AuditRecord): Promise<void> {
    return this.#audit.record(record);
  }

  /** Writes buffered audit rows now. */
  flushAudit(): Promise<void> {
    return this.#audit.flush();
  }

  toJSON(): unknown {
    return { type: 'Keyring', platformKek: this.#platformKek.keyRef, cachedKeys: this.#cache.size };
  }

  [inspect.custom](): string {
    return `Keyring { platformKek: '${this.#platformKek.keyRef}', cachedKeys: ${this.#cache.size} }`;
  }

  // ---------------------------------------------------------------------------------------------
  // KMS calls, KEK instances, data key creation (see unwrap.ts, kek-instances.ts, create.ts)

  /** @internal Runs a KMS call: emits a `kms` event, an audit row and an OpenTelemetry span. */
  timedKms<T>(operation: string, kek: Kek, tenantId: string, fn: () => Promise<T>): Promise<T> {
    return this.#unwrap.timedKms(operation, kek, tenantId, fn);
  }

  /** Forgets built KEK instances for these KEK rows (after a lifecycle change). */
  dropKekInstances(ids: Iterable<string>): void {
    this.#keks.drop(ids);
  }

  /** Active KEKs of a tenant (BYOK) or none (platform mode), plus tenant state. */
  tenantKeks(
    tenantId: string,
    db?: AnyPgDatabase,
  ): Promise<{ mode: string; state: string; keks: KekRow[] } | undefined> {
    return this.#store.tenantKeks(tenantId, db);
  }

  /** Wraps `raw` under every current KEK of the tenant: its BYOK KEKs, or the platform KEK. */
  wrapForTenant(tenantId: string, dekId: string, raw: Buffer, keks: readonly KekRow[]): Promise<DekWrap[]> {
    return this.#create.wrapForTenant(tenantId, dekId, raw, keks);
  }
}

/** Whether `v` is a keyring made by `createKeyring` (of this install). */
export function isKeyring(v: unknown): v is Keyring {
  return isKeyringBrand(v);
}

/** Creates the keyring. See `KeyringOptions` for every option and its default. */
export function createKeyring(options: KeyringOptions): Keyring {
  return new Keyring(options);
}

/** Rethrows a tenant operation's failure translated (`translateStoreError`), naming the tenant. */
function failFor(tenantId: string): (e: unknown) => never {
  return (e) => {
    const t = translateStoreError(e);
    if (isByokError(t) && t.tenantId === undefined && typeof tenantId === 'string')
      (t as { tenantId?: string }).tenantId = tenantId;
    throw t;
  };
}
