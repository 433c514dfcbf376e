// One file: its loaders, unwrap, LISTEN/NOTIFY and audit share Keyring #private state (docs/architecture.md).
import {
  createCipheriv,
  createDecipheriv,
  createSecretKey,
  type KeyObject,
  randomBytes,
  randomUUID,
} from 'node:crypto';
import { inspect } from 'node:util';
import DataLoader from 'dataloader';
import { and, eq, inArray, ne, sql } from 'drizzle-orm';
import { contextBytes, deriveFieldKey, deriveSubkey, type FieldKey } from '../crypto/aead.ts';
import { uuidToBytes } from '../crypto/envelope.ts';
import { type Started, scopeStorage, start, withAnyTenant, withTenant } from '../scope.ts';
import {
  ByokConfigError,
  ByokError,
  DecryptionFailedError,
  isByokError,
  KeyAccessDeniedError,
  KeyDisabledError,
  KeyNotFoundError,
  KmsIntegrityError,
  KmsThrottledError,
  KeyStoreBusyError,
  KmsUnavailableError,
  TenantShreddedError,
} from '../errors.ts';
import { assertPgDatabase } from '../store/pg.ts';
import type { Kek, KekConfig, KekFactory, WrapContext } from '../kms/kek.ts';
import { DekCache, type DekCacheOptions, type DekEntry, dekMaterial } from './cache.ts';
import type { ByokEvent, ByokEventListener } from './events.ts';
import { unwrapIdentified, wrapIdentified } from './identity.ts';
import * as lifecycle from './lifecycle.ts';
import { type Onboarding, type OnboardingOptions, onboarding } from './onboarding.ts';
import { type RewrapMovedResult, rewrapMovedKeys } from './rewrap-moved.ts';
import { type Heartbeat, type HeartbeatOptions, isRefusal, startHeartbeat } from './heartbeat.ts';
import { byokAudit, byokDeks, byokDekWraps, byokKeks, byokTenants } from './schema.ts';
import { loadTelemetry, withSpan } from './telemetry.ts';
import { type KeyAccess, setKeyAccess } from './access.ts';
import { mapLimit } from './map-limit.ts';
import { rethrowStoreError, translateStoreError } from '../store/errors.ts';
import { installKeyStore } from '../store/migrations.ts';

export { type AnyPgDatabase, asPgDb, type PgDb } from '../store/db.ts';
export { type KeyAccess, keysOf } from './access.ts';
import { type AnyPgDatabase, asPgDb, type PgDb } from '../store/db.ts';

export interface KeyringOptions {
  /** Drizzle database holding the key store tables (usually the same one your app uses). */
  db: AnyPgDatabase;
  /** The platform's KEK: wraps data keys of tenants without BYOK, and secrets in KEK configuration. */
  platformKek: Kek;
  /**
   * Older platform KEKs still accepted for unwrapping (after rotating the platform key), matched by
   * `keyRef`. Default none.
   */
  previousPlatformKeks?: readonly Kek[];
  /** Rebuild tenants' KEKs from stored configuration, by kind (`'aws-kms'`, `'gcp-kms'`). Default none. */
  kekFactories?: Readonly<Partial<Record<string, KekFactory>>>;
  /** Data key cache. Defaults: 10,000 keys, 5 minutes max age. */
  cache?: DekCacheOptions;
  /** Most KMS unwrap calls in flight at once per batch. Default 16. */
  unwrapConcurrency?: number;
  /** Most data keys one batch loads. Default 500. */
  maxBatchSize?: number;
  /** Region tried first when a data key is wrapped under KEKs in several regions. Default none. */
  preferredRegion?: string;
  /** Receives audit and observability events. Default none. Must not throw (errors are swallowed). */
  onEvent?: ByokEventListener;
  /**
   * Whether `db` has a single connection (PGlite). Then key store reads and writes made during a
   * transaction run inside that transaction (nothing else could run until it ends), and data keys
   * loaded or created there are used for that query only, never cached, so a rollback cannot leave a
   * key in the cache that the database no longer has. Default: detected (true for PGlite).
   */
  singleConnection?: boolean;
  /**
   * Write KMS calls, lifecycle changes and revocations to the `byok.audit` table (buffered, flushed
   * every second and by lifecycle operations). Default false: subscribe with `onEvent` instead.
   */
  auditTable?: boolean;
  /**
   * The key heartbeat `startListening()` starts (see `startHeartbeat`): a real unwrap per active KEK
   * of every tenant with cached keys, every `intervalMs` (default 30,000, jittered), so a revoked
   * key is noticed within one interval. `false`: `startListening()` starts none.
   */
  heartbeat?: HeartbeatOptions | false;
  /**
   * The keyring's connection budget for key store work, so that no pool size, driver or concurrency
   * can make a key load wait forever.
   */
  keyStore?: KeyStoreOptions;
  /**
   * The client `startListening()` LISTENs on, when the app's connections go through a pooler in
   * transaction mode (PgBouncer), where LISTEN does not work: a direct connection, e.g.
   * `postgres(DIRECT_URL, { max: 1 })`, `new pg.Client(DIRECT_URL)` or a `pg.Pool`. Default: a
   * connection of its own opened from `db`'s client configuration (never one of the app's).
   */
  listenClient?: unknown;
}

export interface KeyStoreOptions {
  /**
   * A Drizzle database of its own for key store work (its own small pool or a direct connection):
   * data keys are then loaded and created there, committed independently of the caller's
   * transactions. Default: `db`; then key loads made inside a transaction read through that
   * transaction, and a tenant's first data key created inside one is written in it (a savepoint),
   * used only by that transaction until it commits, and gone with it on rollback.
   */
  db?: AnyPgDatabase;
  /** Most key store queries in flight at once outside transactions. Default 4. */
  maxConcurrent?: number;
  /**
   * Longest wait, in ms, for a key store query (a slot in the budget, then the query itself) before
   * it fails with `KeyStoreBusyError`. Default 10,000.
   */
  waitTimeoutMs?: number;
}

/** PostgreSQL NOTIFY channel on which instances tell each other to drop a tenant's cached keys. */
export const INVALIDATION_CHANNEL = 'byok_invalidate';

/** Row shapes read from the store. */
interface WrapRow {
  readonly kekId: string | null;
  readonly kekRef: string;
  readonly wrapped: Buffer;
  readonly wrappedBy: string | null;
}
interface DekRow {
  readonly id: string;
  readonly tenantId: string;
  readonly version: number;
  readonly state: string;
  readonly wraps: WrapRow[];
}
export interface KekRow {
  readonly id: string;
  readonly tenantId: string;
  readonly kind: string;
  readonly keyRef: string;
  readonly region: string | null;
  readonly priority: number;
  readonly params: unknown;
  readonly secret: Buffer | null;
  readonly secretKey: Buffer | null;
  readonly secretKeyRef: string | null;
  readonly secretKeyBy?: string | null;
}

/** What `keyring.prefetch` did. */
export interface PrefetchResult {
  /** Distinct tenants asked for. */
  readonly tenants: number;
  /** Data keys unwrapped (or joined in flight) and now cached. */
  loaded: number;
  /** Data keys that were already cached. */
  cached: number;
  /** Tenants without a data key (never wrote encrypted data, or shredded): nothing to load. */
  readonly noKey: string[];
  /** Tenants whose keys were not loaded because the cache is full (`cache.maxEntries`). */
  readonly skipped: string[];
  /** Keys that could not be loaded: the tenant, the error's stable code and its message. */
  readonly failed: { tenantId: string; code: string; message: string }[];
  elapsedMs: number;
}

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

const FAILOVER_CODES = new Set([KmsUnavailableError.code, KmsThrottledError.code]);

/**
 * The keyring: owns the data key cache, loads and unwraps data keys in batches, creates each
 * tenant's first data key lazily, and runs the key lifecycle. One per process (per key store).
 */
export class Keyring {
  readonly db: AnyPgDatabase;
  readonly #platformKek: Kek;
  readonly #cache: DekCache;
  readonly #keys: KeyAccess;
  readonly #previousPlatform: Map<string, Kek>;
  readonly #factories: Readonly<Partial<Record<string, KekFactory>>>;
  readonly #unwrapConcurrency: number;
  readonly #preferredRegion: string | undefined;
  readonly #singleConnection: boolean;
  readonly #listeners = new Set<ByokEventListener>();
  readonly #dekLoader: DataLoader<string, DekEntry>;
  readonly #activeLoader: DataLoader<string, DekEntry>;
  readonly #readLoader: DataLoader<string, DekEntry>;
  readonly #inflightDek = new Map<string, Promise<DekEntry>>();
  readonly #inflightRead = new Map<string, Promise<DekEntry>>();
  readonly #inflightActive = new Map<string, Promise<DekEntry>>();
  readonly #kekInstances = new Map<string, Promise<Kek>>();
  #stats = { hotHits: 0, unwraps: 0, batches: 0, created: 0 };
  /** Identifies this instance in invalidation notices. */
  readonly instanceId = randomUUID();
  readonly #auditTable: boolean;
  #auditBuffer: (typeof byokAudit.$inferInsert)[] = [];
  #auditTimer: NodeJS.Timeout | undefined;
  #listener: { stop(): Promise<void> } | undefined;
  readonly #kekIdsByTenant = new Map<string, Set<string>>();
  readonly #heartbeatOptions: HeartbeatOptions | false;
  #heartbeat: Heartbeat | undefined;
  /** @internal Tenants refused by their KMS that this instance was serving: probed until they recover. */
  readonly watchedTenants = new Set<string>();
  /** Reads of the key store outside transactions (a replica when `db` is `withReplicas(...)`). */
  readonly #readDb: PgDb;
  /** Writes and transactions of the key store (the primary). */
  readonly #writeDb: PgDb;
  readonly #ownStore: boolean;
  readonly #budget: Budget;
  readonly #listenClient: unknown;
  readonly #txKeys = new WeakMap<object, TxKeys>();

  constructor(options: KeyringOptions) {
    validateKeyringOptions(options);
    assertPgDatabase(options.db, 'createKeyring');
    const ks = options.keyStore ?? {};
    if (ks.db !== undefined) assertPgDatabase(ks.db, 'createKeyring: `keyStore.db`');
    this.#ownStore = ks.db !== undefined && ks.db !== options.db;
    this.#readDb = asPgDb(ks.db ?? options.db);
    this.#writeDb = asPgDb((this.#readDb as { $primary?: AnyPgDatabase }).$primary ?? this.#readDb);
    this.#budget = new Budget(
      positiveInt(ks.maxConcurrent ?? 4, 'keyStore.maxConcurrent'),
      positiveInt(ks.waitTimeoutMs ?? 10_000, 'keyStore.waitTimeoutMs'),
    );
    this.#listenClient = options.listenClient;
    this.db = options.db;
    this.#platformKek = options.platformKek;
    this.#previousPlatform = new Map((options.previousPlatformKeks ?? []).map((k) => [k.keyRef, k]));
    this.#factories = options.kekFactories ?? {};
    this.#cache = new DekCache(options.cache);
    this.#unwrapConcurrency = positiveInt(options.unwrapConcurrency ?? 16, 'unwrapConcurrency');
    const maxBatchSize = positiveInt(options.maxBatchSize ?? 500, 'maxBatchSize');
    this.#preferredRegion = options.preferredRegion;
    this.#singleConnection = options.singleConnection ?? isSingleConnection(options.db);
    this.#auditTable = options.auditTable === true;
    this.#heartbeatOptions = options.heartbeat ?? {};
    if (this.#auditTable) {
      this.#auditTimer = setInterval(() => void this.flushAudit().catch(() => undefined), 1000);
      this.#auditTimer.unref();
    }
    void loadTelemetry();
    if (options.onEvent !== undefined) this.#listeners.add(options.onEvent);
    this.#dekLoader = new DataLoader((ids) => this.#loadDeks(ids), { cache: false, maxBatchSize });
    this.#readLoader = new DataLoader((keys) => this.#loadDeksForRead(keys), { cache: false, maxBatchSize });
    this.#keys = {
      cache: this.#cache,
      getDek: (id, txDb) => this.#getDek(id, txDb),
      getDekForRead: (id, tenantId, txDb) => this.#getDekForRead(id, tenantId, txDb),
      getDekVersion: (tenantId, version, txDb) => this.#getDekVersion(tenantId, version, txDb),
      getActiveDek: (tenantId, txDb) => this.#getActiveDek(tenantId, txDb),
      fieldKey: (entry, context) => this.#fieldKey(entry, context),
      derivedKey: (entry, label, context) => this.#derivedKey(entry, label, context),
      platformKek: this.#platformKek,
      platformKekFor: (keyRef) => this.#platformKekFor(keyRef),
      kekFor: (row) => this.#kekFor(row),
      sealSecret: (tenantId, kekId, secret) => this.#sealSecret(tenantId, kekId, secret),
      openSecret: (tenantId, kekId, row) => this.#openSecret(tenantId, kekId, row),
      createDek: (tenantId, options) => this.#createDek(tenantId, options),
    };
    this.#activeLoader = new DataLoader((tenants) => this.#loadActive(tenants), {
      cache: false,
      maxBatchSize,
    });
  }

  static {
    setKeyAccess((k) => k.#keys);
    isKeyringBrand = (v) => typeof v === 'object' && v !== null && #keys in v;
  }

  /** Creates the key store tables if they do not exist (runs the shipped SQL migration). */
  async installKeyStore(): Promise<void> {
    await installKeyStore(this.#writeDb).catch(rethrowStoreError);
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
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  stats(): KeyringStats {
    return { ...this.#stats, cachedKeys: this.#cache.size };
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
    return this.#factories[kind] !== undefined;
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
    return !this.#ownStore;
  }

  /** @internal A transaction (or savepoint) began: keys it creates stay its own until it commits. */
  openTransaction(tx: AnyPgDatabase, parent: AnyPgDatabase | undefined): void {
    const p = parent === undefined ? undefined : this.#txKeys.get(parent);
    this.#txKeys.set(tx, { parent: p, byId: new Map(), active: new Map() });
  }

  /** @internal A savepoint was released: its keys belong to the enclosing transaction. */
  releaseTransaction(tx: AnyPgDatabase): void {
    const k = this.#txKeys.get(tx);
    if (k?.parent === undefined) return;
    for (const [id, e] of k.byId) k.parent.byId.set(id, e);
    for (const [t, e] of k.active) k.parent.active.set(t, e);
  }

  #txHit(txDb: AnyPgDatabase, key: { id: string } | { tenantId: string }): DekEntry | undefined {
    for (let k = this.#txKeys.get(txDb); k !== undefined; k = k.parent) {
      const e = 'id' in key ? k.byId.get(key.id) : k.active.get(key.tenantId);
      if (e === undefined) continue;
      // Evicted (cache cleared, revocation) and zeroed since the transaction took it: load it again
      // (its row is visible to the transaction, committed or its own).
      if (e.evicted) return undefined;
      return e;
    }
    return undefined;
  }

  /** @internal counts a field served from the cache without waiting. */
  countHotHit(): void {
    this.#stats.hotHits++;
  }

  emit(event: ByokEvent): void {
    for (const l of this.#listeners) {
      try {
        l(event);
      } catch {
        // listeners must not break queries
      }
    }
  }

  /** The field subkey of a cached DEK for a column context (derived once, then memoized). */
  #fieldKey(entry: DekEntry, context: string): FieldKey {
    const m = dekMaterial(entry);
    let fk = m.fieldKeys.get(context);
    if (fk === undefined) {
      if (entry.evicted)
        throw new ByokError('data key was evicted while in use; retry the query', {
          tenantId: entry.tenantId,
        });
      fk = deriveFieldKey(m.raw, entry.idBytes, entry.tenantId, context);
      m.fieldKeys.set(context, fk);
    }
    return fk;
  }

  /**
   * A data key by id, from the cache or loaded (batched, deduplicated) and unwrapped. `txDb`: the
   * transaction the caller's query runs in (used instead of `db` on single-connection databases).
   */
  #getDek(id: string, txDb?: AnyPgDatabase): Promise<DekEntry> {
    const hit = this.#cache.get(id);
    if (hit !== undefined) {
      this.emit({ type: 'cache', outcome: 'hit', tenantId: hit.tenantId, dekId: id });
      return Promise.resolve(hit);
    }
    this.emit({ type: 'cache', outcome: 'miss', dekId: id });
    if (txDb !== undefined && !this.#ownStore)
      return this.#loadInTransaction(txDb, { id }).catch(rethrowStoreError);
    return shareInFlight(this.#inflightDek, id, () => this.#dekLoader.load(id).catch(rethrowStoreError));
  }

  /**
   * A tenant's data key by version (any state but destroyed), loaded through the batch loader.
   * Used by blind indexes (index keys are derived from a chosen DEK version) and re-encryption.
   */
  async #getDekVersion(tenantId: string, version: number, txDb?: AnyPgDatabase): Promise<DekEntry> {
    const inTx = txDb !== undefined && !this.#ownStore;
    const [row] = await this.#store(() =>
      asPgDb(inTx ? txDb : this.#readDb)
        .select({ id: byokDeks.id })
        .from(byokDeks)
        .where(and(eq(byokDeks.tenantId, tenantId), eq(byokDeks.version, version))),
    );
    if (row === undefined) {
      throw new KeyNotFoundError(`tenant ${tenantId} has no data key version ${version}`, { tenantId });
    }
    return this.#getDek(row.id, txDb);
  }

  /**
   * A 32-byte key derived from a cached data key for another purpose than field encryption
   * (`label`, e.g. "blind-index/v1"), bound to `context`. Memoized on the entry and zeroed with it;
   * returned as a KeyObject (HMAC and AES with Buffer keys are ~10x slower on OpenSSL 3).
   */
  #derivedKey(entry: DekEntry, label: string, context: string): KeyObject {
    const memoKey = `${label}\u0000${context}`;
    const m = dekMaterial(entry);
    let k = m.derivedObjects.get(memoKey);
    if (k === undefined) {
      if (entry.evicted)
        throw new ByokError('data key was evicted while in use; retry the query', {
          tenantId: entry.tenantId,
        });
      const raw = deriveSubkey(m.raw, label, contextBytes(entry.tenantId, context));
      k = createSecretKey(raw);
      m.derived.set(memoKey, raw);
      m.derivedObjects.set(memoKey, k);
    }
    return k;
  }

  /** The tenant's active data key, created on first use (race-safe across processes). */
  #getActiveDek(tenantId: string, txDb?: AnyPgDatabase): Promise<DekEntry> {
    const hit = this.#cache.active(tenantId);
    if (hit !== undefined) {
      this.emit({ type: 'cache', outcome: 'hit', tenantId, dekId: hit.id });
      return Promise.resolve(hit);
    }
    this.emit({ type: 'cache', outcome: 'miss', tenantId, dekId: 'active' });
    if (txDb !== undefined && !this.#ownStore)
      return this.#loadInTransaction(txDb, { tenantId }).catch(rethrowStoreError);
    return shareInFlight(this.#inflightActive, tenantId, () =>
      this.#activeLoader.load(tenantId).catch(rethrowStoreError),
    );
  }

  /**
   * A data key for decrypting a stored value in the scope of `tenantId` (null: `withAnyTenant`).
   * In a tenant's scope only that tenant's data keys are looked up: an id of another tenant, an
   * unknown or edited id, is a `DecryptionFailedError`, and no other tenant's key is loaded, unwrapped
   * or has its health changed. Key access errors and `TenantShreddedError` remain for the tenant's
   * own keys.
   */
  #getDekForRead(id: string, tenantId: string | null, txDb?: AnyPgDatabase): Promise<DekEntry> {
    if (tenantId === null) {
      return this.#getDek(id, txDb).catch((e: unknown) => {
        throw e instanceof KeyNotFoundError ? new DecryptionFailedError() : e;
      });
    }
    const hit = this.#cache.get(id);
    if (hit !== undefined) {
      if (hit.tenantId !== tenantId) return Promise.reject(new DecryptionFailedError({ tenantId }));
      this.emit({ type: 'cache', outcome: 'hit', tenantId, dekId: id });
      return Promise.resolve(hit);
    }
    this.emit({ type: 'cache', outcome: 'miss', tenantId, dekId: id });
    if (txDb !== undefined && !this.#ownStore) return this.#loadInTransaction(txDb, { id, owner: tenantId });
    const key = `${tenantId}\u0000${id}`;
    return shareInFlight(this.#inflightRead, key, () => this.#readLoader.load(key));
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
  async prefetch(
    tenantIds: readonly string[],
    options: { versions?: 'active' | 'all' } = {},
  ): Promise<PrefetchResult> {
    if (!Array.isArray(tenantIds) || tenantIds.some((t) => typeof t !== 'string' || t.length === 0)) {
      throw new ByokConfigError('prefetch(tenantIds): tenantIds must be an array of non-empty tenant ids');
    }
    const versions = options?.versions ?? 'active';
    if (versions !== 'active' && versions !== 'all') {
      throw new ByokConfigError(`prefetch: versions must be 'active' or 'all', got '${String(versions)}'`);
    }
    const started = performance.now();
    const unique = [...new Set(tenantIds)];
    const rows: { id: string; tenantId: string; version: number }[] = [];
    for (let i = 0; i < unique.length; i += 1000) {
      const part = unique.slice(i, i + 1000);
      rows.push(
        ...(await this.#store(() =>
          asPgDb(this.db)
            .select({ id: byokDeks.id, tenantId: byokDeks.tenantId, version: byokDeks.version })
            .from(byokDeks)
            .where(
              and(
                inArray(byokDeks.tenantId, part),
                versions === 'active' ? eq(byokDeks.state, 'active') : ne(byokDeks.state, 'destroyed'),
              ),
            ),
        )),
      );
    }
    // Tenants in the caller's order, newest version first within a tenant.
    const order = new Map(unique.map((t, i) => [t, i]));
    rows.sort((a, b) => order.get(a.tenantId)! - order.get(b.tenantId)! || b.version - a.version);
    const withKeys = new Set(rows.map((r) => r.tenantId));
    const result: PrefetchResult = {
      tenants: unique.length,
      loaded: 0,
      cached: 0,
      noKey: unique.filter((t) => !withKeys.has(t)),
      skipped: [],
      failed: [],
      elapsedMs: 0,
    };
    const wanted: { id: string; tenantId: string }[] = [];
    const skipped = new Set<string>();
    for (const r of rows) {
      if (this.#cache.get(r.id) !== undefined) {
        result.cached++;
        continue;
      }
      if (wanted.length + result.cached >= this.#cache.maxEntries) {
        skipped.add(r.tenantId);
        continue;
      }
      wanted.push(r);
    }
    result.skipped.push(...skipped);
    const loaded = await Promise.allSettled(wanted.map((r) => this.#getDek(r.id)));
    loaded.forEach((r, i) => {
      if (r.status === 'fulfilled') {
        result.loaded++;
        return;
      }
      const e = asError(r.reason);
      result.failed.push({
        tenantId: wanted[i]!.tenantId,
        code: isByokError(e) ? e.code : ByokError.code,
        // Only the library's own messages: they never carry key material or query parameters.
        message: isByokError(e) ? e.message : 'unexpected failure loading the data key',
      });
    });
    result.elapsedMs = performance.now() - started;
    return result;
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
    if (this.#auditTimer !== undefined) clearInterval(this.#auditTimer);
    await this.flushAudit().catch(() => undefined);
    this.#cache.clear();
    const keks = await Promise.allSettled(this.#kekInstances.values());
    this.#kekInstances.clear();
    for (const k of keks) if (k.status === 'fulfilled') await k.value.close?.();
  }

  // ---------------------------------------------------------------------------------------------
  // Key lifecycle (see lifecycle.ts)

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
  rewrapMovedKeys(tenantId: string, options?: lifecycle.LifecycleOptions): Promise<RewrapMovedResult> {
    return rewrapMovedKeys(this, tenantId, options);
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
  // Cross-instance invalidation (PostgreSQL LISTEN/NOTIFY)

  /** @internal Tells every instance (at commit when `db` is a transaction) to drop a tenant's keys. */
  async notify(db: AnyPgDatabase, tenantId: string, reason: string, keyRef?: string): Promise<void> {
    const payload = JSON.stringify({
      t: tenantId,
      r: reason,
      o: this.instanceId,
      ...(keyRef ? { k: keyRef } : {}),
    });
    await this.#store(
      () => db.execute(sql`select pg_notify(${INVALIDATION_CHANNEL}, ${payload})`),
      !this.#isStoreDb(db),
    );
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
    const given = this.#listenClient as Record<string, unknown> | undefined;
    const client =
      given ?? ((this.#writeDb as { $client?: unknown }).$client as Record<string, unknown> | undefined);
    const onPayload = (payload: string | undefined) => this.#onNotice(payload);
    let stop: () => Promise<void>;
    if (client !== undefined && typeof client.listen === 'function' && typeof client.unsafe === 'function') {
      // postgres.js: `listen` opens a dedicated connection (not one of the pool's)
      const sub = (await (
        client.listen as (c: string, fn: (p: string) => void) => Promise<{ unlisten(): Promise<void> }>
      )(INVALIDATION_CHANNEL, onPayload)) as { unlisten(): Promise<void> };
      stop = () => sub.unlisten();
    } else if (client !== undefined && typeof client.listen === 'function') {
      // PGlite
      const unsub = await (
        client.listen as (c: string, fn: (p: string) => void) => Promise<() => Promise<void>>
      )(INVALIDATION_CHANNEL, onPayload);
      stop = () => unsub();
    } else if (
      client !== undefined &&
      typeof client.connect === 'function' &&
      typeof client.query === 'function'
    ) {
      // node-postgres Pool or Client
      stop = await listenNodePg(nodePgListenConnection(client, given !== undefined), onPayload);
    } else {
      throw new ByokConfigError(
        'startListening: unsupported driver; use postgres.js, node-postgres or PGlite (or pass listenClient)',
      );
    }
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

  #onNotice(payload: string | undefined): void {
    let msg: { t?: unknown; r?: unknown; o?: unknown; k?: unknown };
    try {
      msg = JSON.parse(payload ?? '');
    } catch {
      return;
    }
    if (typeof msg.t !== 'string' || typeof msg.r !== 'string' || msg.o === this.instanceId) return;
    const dropped = this.#cache.evictTenant(msg.t);
    if (msg.r === 'revoked' && dropped > 0) this.#watch(msg.t);
    if (msg.r === 'recovered') this.watchedTenants.delete(msg.t);
    this.dropKekInstances(this.#kekIdsByTenant.get(msg.t) ?? []);
    this.emit({ type: 'invalidation', tenantId: msg.t, reason: msg.r, source: 'remote' });
    if (msg.r === 'revoked' && typeof msg.k === 'string') {
      this.emit({
        type: 'revocation',
        tenantId: msg.t,
        keyRef: msg.k,
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
    await this.#store(async () => {
      await this.#writeDb
        .update(byokTenants)
        .set({ health: 'error', lastError: `${e.code}: ${e.message}`, lastVerifiedAt: new Date() })
        .where(eq(byokTenants.tenantId, tenantId));
      await this.#writeDb
        .update(byokKeks)
        .set({ health: 'error', lastError: `${e.code}: ${e.message}`, lastVerifiedAt: new Date() })
        .where(
          and(eq(byokKeks.tenantId, tenantId), eq(byokKeks.keyRef, keyRef), eq(byokKeks.state, 'active')),
        );
      await this.notify(this.#writeDb, tenantId, 'revoked', keyRef);
    }).catch(() => undefined);
  }

  // ---------------------------------------------------------------------------------------------
  // Audit table

  /** @internal Records an audit row (when `auditTable` is on). */
  async audit(record: {
    tenantId?: string;
    operation: string;
    keyRef?: string;
    outcome: string;
    latencyMs?: number;
    detail?: Record<string, unknown>;
  }): Promise<void> {
    if (!this.#auditTable) return;
    this.#auditBuffer.push({
      tenantId: record.tenantId ?? null,
      operation: record.operation,
      keyRef: record.keyRef ?? null,
      outcome: record.outcome,
      latencyMs: record.latencyMs === undefined ? null : Math.round(record.latencyMs),
      detail: record.detail ?? null,
    });
    if (this.#auditBuffer.length >= 100 || record.operation !== 'kms') await this.flushAudit();
  }

  /** Writes buffered audit rows now. */
  async flushAudit(): Promise<void> {
    if (this.#auditBuffer.length === 0) return;
    const batch = this.#auditBuffer;
    this.#auditBuffer = [];
    await this.#store(() => this.#writeDb.insert(byokAudit).values(batch));
  }

  toJSON(): unknown {
    return { type: 'Keyring', platformKek: this.#platformKek.keyRef, cachedKeys: this.#cache.size };
  }

  [inspect.custom](): string {
    return `Keyring { platformKek: '${this.#platformKek.keyRef}', cachedKeys: ${this.#cache.size} }`;
  }

  // ---------------------------------------------------------------------------------------------
  // Loading

  /**
   * Store queries run outside any tenant scope of the caller and outside its query context, within
   * the keyring's connection budget (queries on a caller's transaction pass `inTx`: they need no
   * connection of their own).
   */
  #store<T>(fn: () => PromiseLike<T>, inTx = false): Promise<T> {
    // Builders are lazy: start them inside `exit`, or they would run in the caller's scope.
    const run = () => scopeStorage.exit(() => (start(fn()) as Promise<T>).catch(rethrowStoreError));
    return inTx ? run() : this.#budget.run(run);
  }

  async #selectDeks(where: ReturnType<typeof eq>, db: PgDb = this.#readDb): Promise<DekRow[]> {
    const rows = await this.#store(
      () =>
        db
          .select({
            id: byokDeks.id,
            tenantId: byokDeks.tenantId,
            version: byokDeks.version,
            state: byokDeks.state,
            kekId: byokDekWraps.kekId,
            kekRef: byokDekWraps.kekRef,
            wrapped: byokDekWraps.wrapped,
            wrappedBy: byokDekWraps.wrappedBy,
          })
          .from(byokDeks)
          .leftJoin(byokDekWraps, eq(byokDekWraps.dekId, byokDeks.id))
          .where(where),
      !this.#isStoreDb(db),
    );
    const byId = new Map<string, DekRow>();
    for (const r of rows) {
      let d = byId.get(r.id);
      if (d === undefined) {
        d = { id: r.id, tenantId: r.tenantId, version: r.version, state: r.state, wraps: [] };
        byId.set(r.id, d);
      }
      if (r.kekRef !== null && r.wrapped !== null)
        d.wraps.push({ kekId: r.kekId, kekRef: r.kekRef, wrapped: r.wrapped, wrappedBy: r.wrappedBy });
    }
    return [...byId.values()];
  }

  async #selectKeks(ids: readonly string[], db: PgDb = this.#readDb): Promise<Map<string, KekRow>> {
    if (ids.length === 0) return new Map();
    const rows = await this.#store(
      () =>
        db
          .select()
          .from(byokKeks)
          .where(inArray(byokKeks.id, [...ids])),
      !this.#isStoreDb(db),
    );
    return new Map(rows.map((r) => [r.id, r as KekRow]));
  }

  #isStoreDb(db: AnyPgDatabase): boolean {
    return db === this.#readDb || db === this.#writeDb || db === this.db;
  }

  async #loadDeks(ids: readonly string[]): Promise<(DekEntry | Error)[]> {
    const started = performance.now();
    this.#stats.batches++;
    const unique = [...new Set(ids)];
    const valid = unique.filter(isUuid);
    const rows = valid.length === 0 ? [] : await this.#selectDeks(inArray(byokDeks.id, valid));
    if (this.#writeDb !== this.#readDb && rows.length < valid.length) {
      // A replica that has not seen a data key yet: ask the primary for the missing ones.
      const found = new Set(rows.map((r) => r.id));
      const missing = valid.filter((id) => !found.has(id));
      rows.push(...(await this.#selectDeks(inArray(byokDeks.id, missing), this.#writeDb)));
    }
    const entries = await this.#unwrapAll(rows);
    this.emit({ type: 'dek-batch', size: rows.length, latencyMs: performance.now() - started });
    return ids.map((id) => {
      const e = entries.get(id);
      if (e !== undefined) return e;
      return new KeyNotFoundError(
        `data key ${id} does not exist in the key store (wrong database, or deleted)`,
      );
    });
  }

  /** Batch of `tenant \0 id` keys: only rows of the requested tenant are selected and unwrapped. */
  async #loadDeksForRead(keys: readonly string[]): Promise<(DekEntry | Error)[]> {
    const started = performance.now();
    this.#stats.batches++;
    const wanted = keys.map((k) => {
      const at = k.indexOf('\u0000');
      return { tenantId: k.slice(0, at), id: k.slice(at + 1) };
    });
    const ids = [...new Set(wanted.map((w) => w.id).filter(isUuid))];
    const tenants = [...new Set(wanted.map((w) => w.tenantId))];
    const rows =
      ids.length === 0
        ? []
        : await this.#selectDeks(and(inArray(byokDeks.id, ids), inArray(byokDeks.tenantId, tenants))!);
    if (this.#writeDb !== this.#readDb && rows.length < ids.length) {
      // A replica that has not seen a data key yet: ask the primary for the missing ones.
      const found = new Set(rows.map((r) => r.id));
      const missing = ids.filter((id) => !found.has(id));
      rows.push(
        ...(await this.#selectDeks(
          and(inArray(byokDeks.id, missing), inArray(byokDeks.tenantId, tenants))!,
          this.#writeDb,
        )),
      );
    }
    const owned = new Set(wanted.map((w) => `${w.tenantId}\u0000${w.id}`));
    const entries = await this.#unwrapAll(rows.filter((r) => owned.has(`${r.tenantId}\u0000${r.id}`)));
    this.emit({ type: 'dek-batch', size: rows.length, latencyMs: performance.now() - started });
    return wanted.map((w) => {
      const e = entries.get(w.id);
      if (e !== undefined && (e instanceof Error || e.tenantId === w.tenantId)) return e;
      return new DecryptionFailedError({ tenantId: w.tenantId });
    });
  }

  async #loadActive(tenants: readonly string[]): Promise<(DekEntry | Error)[]> {
    const started = performance.now();
    this.#stats.batches++;
    const unique = [...new Set(tenants)];
    const rows = await this.#selectDeks(
      and(inArray(byokDeks.tenantId, unique), eq(byokDeks.state, 'active'))!,
    );
    if (this.#writeDb !== this.#readDb && rows.length < unique.length) {
      const found = new Set(rows.map((r) => r.tenantId));
      const missing = unique.filter((t) => !found.has(t));
      rows.push(
        ...(await this.#selectDeks(
          and(inArray(byokDeks.tenantId, missing), eq(byokDeks.state, 'active'))!,
          this.#writeDb,
        )),
      );
    }
    const entries = await this.#unwrapAll(rows);
    this.emit({ type: 'dek-batch', size: rows.length, latencyMs: performance.now() - started });
    const byTenant = new Map<string, DekEntry | Error>();
    for (const r of rows) {
      const e = entries.get(r.id);
      if (e !== undefined) byTenant.set(r.tenantId, e);
    }
    const missing = unique.filter((t) => !byTenant.has(t));
    await mapLimit(missing, this.#unwrapConcurrency, async (t) => {
      try {
        byTenant.set(t, await this.#createActiveDek(t));
      } catch (e) {
        byTenant.set(t, asError(e));
      }
    });
    return tenants.map(
      (t) => byTenant.get(t) ?? new KeyNotFoundError(`tenant ${t} has no data key`, { tenantId: t }),
    );
  }

  /** Unwraps every row (bounded concurrency); failures become Error values in the map. */
  async #unwrapAll(
    rows: readonly DekRow[],
    db: PgDb = this.#readDb,
    cacheIt = true,
  ): Promise<Map<string, DekEntry | Error>> {
    const inTx = !this.#isStoreDb(db);
    const out = new Map<string, DekEntry | Error>();
    const kekIds = new Set<string>();
    for (const r of rows) for (const w of r.wraps) if (w.kekId !== null) kekIds.add(w.kekId);
    const kekRows = await this.#selectKeks([...kekIds], db);
    await mapLimit(rows, this.#unwrapConcurrency, async (r) => {
      try {
        out.set(r.id, await this.#unwrapRow(r, kekRows, cacheIt, inTx));
      } catch (e) {
        out.set(r.id, asError(e));
      }
    });
    return out;
  }

  async #unwrapRow(
    row: DekRow,
    kekRows: Map<string, KekRow>,
    cacheIt: boolean,
    inTx: boolean,
  ): Promise<DekEntry> {
    if (row.state === 'destroyed' || row.wraps.length === 0) {
      throw new TenantShreddedError(
        `data key version ${row.version} of tenant ${row.tenantId} was destroyed`,
        {
          tenantId: row.tenantId,
        },
      );
    }
    const candidates: { kek: () => Promise<Kek>; wrap: WrapRow; region: string | null; priority: number }[] =
      [];
    for (const w of row.wraps) {
      if (w.kekId === null) {
        const kek =
          w.kekRef === this.#platformKek.keyRef ? this.#platformKek : this.#previousPlatform.get(w.kekRef);
        if (kek !== undefined)
          candidates.push({ kek: async () => kek, wrap: w, region: kek.region ?? null, priority: 1000 });
      } else {
        const kr = kekRows.get(w.kekId);
        if (kr !== undefined)
          candidates.push({ kek: () => this.#kekFor(kr), wrap: w, region: kr.region, priority: kr.priority });
      }
    }
    if (candidates.length === 0) {
      throw new KeyNotFoundError(
        `no configured KEK can unwrap data key version ${row.version} of tenant ${row.tenantId} ` +
          `(wrapped under ${row.wraps.map((w) => w.kekRef).join(', ')})`,
        { tenantId: row.tenantId },
      );
    }
    const preferred = this.#preferredRegion;
    candidates.sort(
      (a, b) =>
        Number(b.region === preferred && preferred !== undefined) -
          Number(a.region === preferred && preferred !== undefined) || a.priority - b.priority,
    );
    const context: WrapContext = { tenantId: row.tenantId, dekId: row.id };
    const errors: unknown[] = [];
    for (const c of candidates) {
      let kek: Kek;
      try {
        kek = await c.kek();
      } catch (e) {
        errors.push(e);
        continue;
      }
      try {
        const raw = await this.timedKms('unwrap', kek, row.tenantId, () =>
          unwrapIdentified(kek, c.wrap.wrapped, context, c.wrap.wrappedBy),
        );
        if (raw.length !== 32) throw new ByokError(`unwrapped data key has ${raw.length} bytes, expected 32`);
        this.#stats.unwraps++;
        const rawBuf = Buffer.allocUnsafeSlow(32);
        rawBuf.set(raw);
        raw.fill(0);
        const idBytes = uuidToBytes(row.id);
        return cacheIt
          ? this.#cache.put(row.id, idBytes, row.tenantId, row.version, rawBuf, row.state === 'active')
          : this.#cache.uncached(row.id, idBytes, row.tenantId, row.version, rawBuf);
      } catch (e) {
        errors.push(e);
        if (isRevocation(e)) {
          // Record it before the query fails, so the tenant's status already shows it. Inside a
          // transaction the connection may be the only one: record it in the background.
          if (!inTx) await this.reportRevocation(row.tenantId, kek.keyRef, e);
          else void this.reportRevocation(row.tenantId, kek.keyRef, e);
        }
        // Fail over to another KEK only when this one is unreachable; an explicit refusal stands.
        if (!(isByokError(e) && FAILOVER_CODES.has(e.code))) throw e;
      }
    }
    const last = errors.at(-1);
    throw last instanceof Error
      ? last
      : new KmsUnavailableError('no KEK could unwrap the data key', { tenantId: row.tenantId });
  }

  /** @internal Runs a KMS call, emitting a `kms` event (and an OpenTelemetry span when available). */
  /** @internal Runs a KMS call: emits a `kms` event, an audit row and an OpenTelemetry span. */
  async timedKms<T>(operation: string, kek: Kek, tenantId: string, fn: () => Promise<T>): Promise<T> {
    const started = performance.now();
    const attributes = {
      'byok.tenant': tenantId,
      'byok.key_ref': kek.keyRef,
      'byok.kek_kind': kek.kind,
      'byok.operation': operation,
    };
    try {
      const r = await withSpan(`byok.kms.${operation}`, attributes, fn);
      const latencyMs = performance.now() - started;
      this.emit({
        type: 'kms',
        operation,
        tenantId,
        keyRef: kek.keyRef,
        kekKind: kek.kind,
        outcome: 'ok',
        latencyMs,
      });
      void this.audit({
        tenantId,
        operation: 'kms',
        keyRef: kek.keyRef,
        outcome: 'ok',
        latencyMs,
        detail: { call: operation },
      }).catch(() => undefined);
      return r;
    } catch (e) {
      const latencyMs = performance.now() - started;
      const errorCode = isByokError(e) ? e.code : 'ERR_UNKNOWN';
      this.emit({
        type: 'kms',
        operation,
        tenantId,
        keyRef: kek.keyRef,
        kekKind: kek.kind,
        outcome: 'error',
        errorCode,
        latencyMs,
      });
      void this.audit({
        tenantId,
        operation: 'kms',
        keyRef: kek.keyRef,
        outcome: 'error',
        latencyMs,
        detail: { call: operation, errorCode },
      }).catch(() => undefined);
      throw e;
    }
  }

  /** The KEK instance for a stored KEK row (built once per row, secrets decrypted with the platform key). */
  #kekFor(row: KekRow): Promise<Kek> {
    let p = this.#kekInstances.get(row.id);
    if (p === undefined) {
      const ids = this.#kekIdsByTenant.get(row.tenantId) ?? new Set<string>();
      this.#kekIdsByTenant.set(row.tenantId, ids);
      ids.add(row.id);
      p = this.#buildKek(row);
      p.catch(() => this.#kekInstances.delete(row.id));
      this.#kekInstances.set(row.id, p);
    }
    return p;
  }

  async #buildKek(row: KekRow): Promise<Kek> {
    const factory = this.#factories[row.kind];
    if (factory === undefined) {
      throw new ByokConfigError(
        `tenant ${row.tenantId} uses a '${row.kind}' KEK but the keyring has no factory for it: ` +
          `pass kekFactories: { '${row.kind}': ... } to createKeyring`,
        { tenantId: row.tenantId },
      );
    }
    const secret = row.secret === null ? undefined : await this.#openSecret(row.tenantId, row.id, row);
    const config: KekConfig = {
      kind: row.kind as KekConfig['kind'],
      params: row.params as Record<string, unknown>,
      ...(secret ? { secret } : {}),
    };
    return factory(config);
  }

  /** Forgets built KEK instances for these KEK rows (after a lifecycle change). */
  dropKekInstances(ids: Iterable<string>): void {
    for (const id of ids) {
      const p = this.#kekInstances.get(id);
      this.#kekInstances.delete(id);
      p?.then((k) => k.close?.()).catch(() => undefined);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Secrets of KEK configuration, encrypted under the platform key

  /** Encrypts a KEK's secret parameters: a fresh key wrapped by the platform KEK, AES-GCM over the JSON. */
  async #sealSecret(
    tenantId: string,
    kekId: string,
    secret: Readonly<Record<string, unknown>>,
  ): Promise<{ secret: Buffer; secretKey: Buffer; secretKeyRef: string; secretKeyBy: string | null }> {
    const key = randomBytes(32);
    try {
      const { wrapped, wrappedBy } = await wrapIdentified(this.#platformKek, key, { tenantId, dekId: kekId });
      const iv = randomBytes(12);
      const c = createCipheriv('aes-256-gcm', key, iv);
      c.setAAD(Buffer.from(`byok-kek-secret|${tenantId}|${kekId}`));
      const body = Buffer.concat([c.update(JSON.stringify(secret), 'utf8'), c.final()]);
      return {
        secret: Buffer.concat([iv, body, c.getAuthTag()]),
        secretKey: Buffer.from(wrapped),
        secretKeyRef: this.#platformKek.keyRef,
        secretKeyBy: wrappedBy,
      };
    } finally {
      key.fill(0);
    }
  }

  async #openSecret(
    tenantId: string,
    kekId: string,
    row: {
      secret: Buffer | null;
      secretKey: Buffer | null;
      secretKeyRef: string | null;
      secretKeyBy?: string | null;
    },
  ): Promise<Record<string, unknown>> {
    if (row.secret === null || row.secretKey === null) return {};
    const kek =
      row.secretKeyRef === this.#platformKek.keyRef
        ? this.#platformKek
        : this.#previousPlatform.get(row.secretKeyRef ?? '');
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

  // ---------------------------------------------------------------------------------------------
  // Data key creation

  /** Active KEKs of a tenant (BYOK) or none (platform mode), plus tenant state. */
  async tenantKeks(
    tenantId: string,
    db: AnyPgDatabase = this.#writeDb,
  ): Promise<{ mode: string; state: string; keks: KekRow[] } | undefined> {
    const inTx = !this.#isStoreDb(db);
    const [t] = await this.#store(
      () => asPgDb(db).select().from(byokTenants).where(eq(byokTenants.tenantId, tenantId)),
      inTx,
    );
    if (t === undefined) return undefined;
    const keks = await this.#store(
      () =>
        db
          .select()
          .from(byokKeks)
          .where(and(eq(byokKeks.tenantId, tenantId), eq(byokKeks.state, 'active'))),
      inTx,
    );
    return { mode: t.mode, state: t.state, keks: keks as KekRow[] };
  }

  /** Wraps `raw` under every current KEK of the tenant: its BYOK KEKs, or the platform KEK. */
  async wrapForTenant(
    tenantId: string,
    dekId: string,
    raw: Buffer,
    keks: readonly KekRow[],
  ): Promise<{ kekId: string | null; kekRef: string; wrapped: Buffer; wrappedBy: string | null }[]> {
    const context = { tenantId, dekId };
    if (keks.length === 0) {
      const w = await this.timedKms('wrap', this.#platformKek, tenantId, () =>
        wrapIdentified(this.#platformKek, raw, context),
      );
      return [{ kekId: null, kekRef: this.#platformKek.keyRef, ...w }];
    }
    return Promise.all(
      keks.map(async (k) => {
        const kek = await this.#kekFor(k);
        const w = await this.timedKms('wrap', kek, tenantId, () => wrapIdentified(kek, raw, context));
        return { kekId: k.id, kekRef: k.keyRef, ...w };
      }),
    );
  }

  /**
   * Creates a new data key version for a tenant. With `rotate: false` (first write), an existing
   * active key wins the race and is returned instead. Serialized per tenant by an advisory lock.
   */
  async #createDek(
    tenantId: string,
    options: { rotate: boolean; db?: AnyPgDatabase; cache?: boolean },
  ): Promise<DekEntry> {
    const db = options.db ?? this.#writeDb;
    const inTx = !this.#isStoreDb(db);
    const cacheIt = options.cache ?? true;
    for (let attempt = 0; attempt < 5; attempt++) {
      await this.#store(() => db.insert(byokTenants).values({ tenantId }).onConflictDoNothing(), inTx);
      const t = await this.tenantKeks(tenantId, db);
      if (t?.state === 'shredded') {
        throw new TenantShreddedError(`tenant ${tenantId} was crypto-shredded: it cannot get new data keys`, {
          tenantId,
        });
      }
      const keks = t?.keks ?? [];
      const id = randomUUID();
      const raw = Buffer.allocUnsafeSlow(32);
      raw.set(randomBytes(32));
      let wraps: Awaited<ReturnType<Keyring['wrapForTenant']>>;
      try {
        wraps = await this.wrapForTenant(tenantId, id, raw, keks);
      } catch (e) {
        raw.fill(0);
        throw e;
      }
      const kekSet = keks
        .map((k) => k.id)
        .sort()
        .join(',');
      const outcome = await this.#store(
        () =>
          asPgDb(db).transaction(
            async (tx): Promise<'retry' | { existing: string } | { created: number }> => {
              await tx.execute(
                sql`select pg_advisory_xact_lock(hashtextextended(${`byok:tenant:${tenantId}`}, 0))`,
              );
              const current = await tx
                .select({ id: byokKeks.id })
                .from(byokKeks)
                .where(and(eq(byokKeks.tenantId, tenantId), eq(byokKeks.state, 'active')));
              if (
                current
                  .map((k) => k.id)
                  .sort()
                  .join(',') !== kekSet
              )
                return 'retry';
              const [active] = await tx
                .select({ id: byokDeks.id, version: byokDeks.version })
                .from(byokDeks)
                .where(and(eq(byokDeks.tenantId, tenantId), eq(byokDeks.state, 'active')));
              if (active !== undefined && !options.rotate) return { existing: active.id };
              const [{ next } = { next: 1 }] = await tx
                .select({ next: sql<number>`coalesce(max(${byokDeks.version}), 0) + 1`.mapWith(Number) })
                .from(byokDeks)
                .where(eq(byokDeks.tenantId, tenantId));
              if (active !== undefined) {
                await tx.update(byokDeks).set({ state: 'retired' }).where(eq(byokDeks.id, active.id));
              }
              await tx.insert(byokDeks).values({ id, tenantId, version: next, state: 'active' });
              await tx.insert(byokDekWraps).values(wraps.map((w) => ({ dekId: id, ...w })));
              return { created: next };
            },
          ),
        inTx,
      );
      if (outcome === 'retry') {
        raw.fill(0);
        continue;
      }
      if ('existing' in outcome) {
        raw.fill(0);
        return cacheIt
          ? this.#getDek(outcome.existing)
          : this.#loadInTransaction(db, { id: outcome.existing });
      }
      this.#stats.created++;
      if (!cacheIt) return this.#cache.uncached(id, uuidToBytes(id), tenantId, outcome.created, raw);
      this.#cache.deactivate(tenantId);
      return this.#cache.put(id, uuidToBytes(id), tenantId, outcome.created, raw, true);
    }
    throw new ByokError(`the KEKs of tenant ${tenantId} kept changing while creating a data key; retry`, {
      tenantId,
    });
  }

  #createActiveDek(tenantId: string): Promise<DekEntry> {
    return this.#createDek(tenantId, { rotate: false });
  }

  /**
   * Loads (or creates) one data key through the caller's transaction. A key it creates stays the
   * transaction's own (never cached) until the transaction ends; keys read from the store that
   * were committed before are cached as usual.
   */
  async #loadInTransaction(
    txDb: AnyPgDatabase,
    key: { id: string; owner?: string } | { tenantId: string },
  ): Promise<DekEntry> {
    if ('id' in key && !isUuid(key.id)) {
      if (key.owner !== undefined) throw new DecryptionFailedError({ tenantId: key.owner });
      throw new KeyNotFoundError(
        `data key ${key.id} does not exist in the key store (wrong database, or deleted)`,
      );
    }
    const own = this.#txHit(txDb, key);
    if (own !== undefined) {
      if ('id' in key && key.owner !== undefined && own.tenantId !== key.owner)
        throw new DecryptionFailedError({ tenantId: key.owner });
      return own;
    }
    const where =
      'id' in key
        ? key.owner === undefined
          ? eq(byokDeks.id, key.id)
          : and(eq(byokDeks.id, key.id), eq(byokDeks.tenantId, key.owner))!
        : and(eq(byokDeks.tenantId, key.tenantId), eq(byokDeks.state, 'active'))!;
    const rows = await this.#selectDeks(where, asPgDb(txDb));
    const row = rows[0];
    if (row === undefined) {
      if ('id' in key) {
        // Committed after this transaction's snapshot (repeatable read), or only on the primary:
        // ask the store (bounded by the budget; impossible on a single connection).
        if (!this.#singleConnection) {
          if (key.owner !== undefined) {
            const k = `${key.owner}\u0000${key.id}`;
            return shareInFlight(this.#inflightRead, k, () => this.#readLoader.load(k));
          }
          return shareInFlight(this.#inflightDek, key.id, () => this.#dekLoader.load(key.id));
        }
        if (key.owner !== undefined) throw new DecryptionFailedError({ tenantId: key.owner });
        throw new KeyNotFoundError(
          `data key ${key.id} does not exist in the key store (wrong database, or deleted)`,
        );
      }
      const created = await this.#createDek(key.tenantId, { rotate: false, db: txDb, cache: false });
      const mine = this.#txKeys.get(txDb);
      if (mine !== undefined) {
        mine.byId.set(created.id, created);
        mine.active.set(key.tenantId, created);
      }
      return created;
    }
    const tracked = this.#txKeys.has(txDb);
    const entries = await this.#unwrapAll([row], asPgDb(txDb), tracked);
    const e = entries.get(row.id)!;
    if (e instanceof Error) throw e;
    return e;
  }
}

/** Whether `v` is a keyring made by `createKeyring` (of this install). */
export function isKeyring(v: unknown): v is Keyring {
  return isKeyringBrand(v);
}

/** Keys a transaction created: visible to it (and its savepoints) only, until it commits. */
interface TxKeys {
  readonly parent: TxKeys | undefined;
  readonly byId: Map<string, DekEntry>;
  readonly active: Map<string, DekEntry>;
}

/**
 * The keyring's connection budget: at most `max` key store queries in flight, each waiting at most
 * `timeoutMs` for a slot and then for its result, else `KeyStoreBusyError`. A query that timed out
 * keeps its slot until it settles, so the budget never overcommits the pool.
 */
class Budget {
  #inUse = 0;
  readonly #waiting: (() => void)[] = [];
  readonly max: number;
  readonly timeoutMs: number;
  constructor(max: number, timeoutMs: number) {
    this.max = max;
    this.timeoutMs = timeoutMs;
  }

  run<T>(fn: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let done = false;
      const timer = setTimeout(() => {
        if (done) return;
        done = true;
        const i = this.#waiting.indexOf(go);
        if (i >= 0) this.#waiting.splice(i, 1);
        reject(
          new KeyStoreBusyError(
            `the key store did not answer within ${this.timeoutMs} ms (${this.#inUse} of ${this.max} ` +
              'key store queries in flight): the pool may be exhausted by transactions waiting on key ' +
              'loads; raise keyStore.maxConcurrent or the pool size, or give the keyring its own keyStore.db',
          ),
        );
      }, this.timeoutMs);
      timer.unref?.();
      const go = () => {
        if (done) return;
        this.#inUse++;
        let p: Promise<T>;
        try {
          p = fn();
        } catch (e) {
          p = Promise.reject(e);
        }
        p.then(
          (v) => {
            if (!done) {
              done = true;
              clearTimeout(timer);
              resolve(v);
            }
          },
          (e) => {
            if (!done) {
              done = true;
              clearTimeout(timer);
              reject(e);
            }
          },
        ).finally(() => {
          this.#inUse--;
          this.#waiting.shift()?.();
        });
      };
      if (this.#inUse < this.max) go();
      else this.#waiting.push(go);
    });
  }
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

const KEYRING_OPTIONS = [
  'db',
  'platformKek',
  'previousPlatformKeks',
  'kekFactories',
  'cache',
  'unwrapConcurrency',
  'maxBatchSize',
  'preferredRegion',
  'onEvent',
  'singleConnection',
  'auditTable',
  'heartbeat',
  'keyStore',
  'listenClient',
];

/**
 * Checks every option of `createKeyring` and throws one `ByokConfigError` listing every problem
 * (each naming the option and what it must be), so one run shows all there is to fix.
 */
function validateKeyringOptions(options: KeyringOptions): void {
  if (options === null || typeof options !== 'object')
    throw new ByokConfigError('createKeyring(options) needs an options object');
  const o = options as unknown as Record<string, unknown>;
  const problems: string[] = [];
  const isKek = (k: unknown) => {
    const c = k as Partial<Kek> | null | undefined;
    return (
      c !== null &&
      typeof c === 'object' &&
      typeof c.wrap === 'function' &&
      typeof c.unwrap === 'function' &&
      typeof c.keyRef === 'string' &&
      typeof c.toConfig === 'function'
    );
  };
  const positive = (v: unknown) => v === undefined || (Number.isSafeInteger(v) && (v as number) >= 1);
  if (o.db === undefined || o.db === null || typeof (o.db as { select?: unknown }).select !== 'function')
    problems.push('`db` must be a Drizzle PostgreSQL database (drizzle(...))');
  if (!isKek(o.platformKek))
    problems.push('`platformKek` must be a KEK: localKek({ key }), awsKms(...) or gcpKms(...)');
  if (o.previousPlatformKeks !== undefined) {
    if (!Array.isArray(o.previousPlatformKeks))
      problems.push('`previousPlatformKeks` must be an array of KEKs');
    else
      o.previousPlatformKeks.forEach((k, i) => {
        if (!isKek(k)) problems.push(`\`previousPlatformKeks[${i}]\` must be a KEK`);
      });
  }
  if (o.kekFactories !== undefined) {
    if (o.kekFactories === null || typeof o.kekFactories !== 'object' || Array.isArray(o.kekFactories))
      problems.push("`kekFactories` must be an object such as { 'aws-kms': awsKekFactory }");
    else
      for (const [kind, f] of Object.entries(o.kekFactories))
        if (typeof f !== 'function')
          problems.push(`\`kekFactories['${kind}']\` must be a KEK factory function`);
  }
  if (o.cache !== undefined) {
    const c = o.cache as Record<string, unknown> | null;
    if (c === null || typeof c !== 'object')
      problems.push('`cache` must be an object { maxEntries, maxAgeMs }');
    else {
      if (!positive(c.maxEntries))
        problems.push(`\`cache.maxEntries\` must be a positive integer, got ${String(c.maxEntries)}`);
      if (
        c.maxAgeMs !== undefined &&
        !(typeof c.maxAgeMs === 'number' && Number.isFinite(c.maxAgeMs) && c.maxAgeMs > 0)
      )
        problems.push(
          `\`cache.maxAgeMs\` must be a positive number of milliseconds (a max age is required), got ${String(c.maxAgeMs)}`,
        );
      for (const k of Object.keys(c))
        if (k !== 'maxEntries' && k !== 'maxAgeMs')
          problems.push(`unknown option \`cache.${k}\` (known: maxEntries, maxAgeMs)`);
    }
  }
  for (const k of ['unwrapConcurrency', 'maxBatchSize'])
    if (!positive(o[k])) problems.push(`\`${k}\` must be a positive integer, got ${String(o[k])}`);
  if (o.preferredRegion !== undefined && (typeof o.preferredRegion !== 'string' || o.preferredRegion === ''))
    problems.push('`preferredRegion` must be a region name such as "eu-west-1"');
  if (o.onEvent !== undefined && typeof o.onEvent !== 'function')
    problems.push('`onEvent` must be a function (event) => void');
  for (const k of ['singleConnection', 'auditTable'])
    if (o[k] !== undefined && typeof o[k] !== 'boolean') problems.push(`\`${k}\` must be true or false`);
  if (o.keyStore !== undefined) {
    const ks = o.keyStore as Record<string, unknown> | null;
    if (ks === null || typeof ks !== 'object')
      problems.push('`keyStore` must be an object { db, maxConcurrent, waitTimeoutMs }');
    else {
      for (const k of ['maxConcurrent', 'waitTimeoutMs'])
        if (!positive(ks[k]))
          problems.push(`\`keyStore.${k}\` must be a positive integer, got ${String(ks[k])}`);
      for (const k of Object.keys(ks))
        if (k !== 'db' && k !== 'maxConcurrent' && k !== 'waitTimeoutMs')
          problems.push(`unknown option \`keyStore.${k}\` (known: db, maxConcurrent, waitTimeoutMs)`);
    }
  }
  for (const k of Object.keys(o))
    if (!KEYRING_OPTIONS.includes(k))
      problems.push(`unknown option \`${k}\` (known: ${KEYRING_OPTIONS.join(', ')})`);
  if (problems.length === 1) throw new ByokConfigError(`createKeyring: ${problems[0]}`);
  if (problems.length > 1)
    throw new ByokConfigError(
      `createKeyring: ${problems.length} problems in the options:\n  - ${problems.join('\n  - ')}`,
    );
}

export function assertKek(kek: unknown, what: string): asserts kek is Kek {
  const k = kek as Partial<Kek> | undefined;
  if (
    k === undefined ||
    k === null ||
    typeof k.wrap !== 'function' ||
    typeof k.unwrap !== 'function' ||
    typeof k.keyRef !== 'string' ||
    typeof k.toConfig !== 'function'
  ) {
    throw new ByokConfigError(`${what} must be a KEK (localKek(...), awsKms(...) or gcpKms(...))`);
  }
}

/** Concurrent callers of one cold key share one load (across ticks, unlike a DataLoader batch). */
function shareInFlight<T>(
  inflight: Map<string, Promise<T>>,
  key: string,
  load: () => Promise<T>,
): Promise<T> {
  let p = inflight.get(key);
  if (p === undefined) {
    p = load().finally(() => inflight.delete(key));
    inflight.set(key, p);
  }
  return p;
}

/**
 * One connection (PGlite, a node-postgres `Client`, postgres.js with `max: 1`): detected from the
 * Drizzle instance's client.
 */
function isSingleConnection(db: AnyPgDatabase): boolean {
  const client = (db as { $client?: unknown }).$client as
    | {
        constructor?: { name?: string };
        waitReady?: unknown;
        connectionParameters?: unknown;
        totalCount?: unknown;
        options?: { max?: unknown };
        unsafe?: unknown;
      }
    | undefined;
  if (client === undefined) return false;
  if (client.constructor?.name === 'PGlite' || client.waitReady !== undefined) return true;
  if (typeof client.connectionParameters === 'object' && client.totalCount === undefined) return true;
  return typeof client.unsafe === 'function' && client.options?.max === 1;
}

function isRevocation(e: unknown): e is ByokError {
  return e instanceof KeyAccessDeniedError || e instanceof KeyDisabledError;
}

function positiveInt(n: number, name: string): number {
  if (!Number.isSafeInteger(n) || n < 1) throw new ByokConfigError(`${name} must be a positive integer`);
  return n;
}

function asError(e: unknown): Error {
  return e instanceof Error ? e : new ByokError('unexpected failure');
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
function isUuid(s: string): boolean {
  return UUID_RE.test(s);
}

type NodePgConn = {
  query(q: string): Promise<unknown>;
  on(ev: string, fn: (m: { channel: string; payload?: string }) => void): void;
  release?: (err?: unknown) => void;
  end?: () => Promise<void>;
};

/**
 * How the listener gets its node-postgres connection. The app's pool or client: a new client of
 * the same class and configuration (never a pooled connection, never the app's only client). A
 * `listenClient` given for the purpose: a connection from it (a pool) or the client itself.
 */
function nodePgListenConnection(
  client: Record<string, unknown>,
  dedicated: boolean,
): { open(): Promise<NodePgConn>; close(c: NodePgConn, failed: boolean): Promise<void> } {
  const isPool = typeof client.totalCount === 'number';
  if (dedicated && isPool) {
    return {
      open: async () => (await (client.connect as () => Promise<NodePgConn>)()) as NodePgConn,
      close: async (c, failed) => c.release?.(failed ? true : undefined),
    };
  }
  if (dedicated) {
    let connected = false;
    return {
      open: async () => {
        if (!connected) {
          connected = true;
          const state = client as { _connected?: boolean; _connecting?: boolean };
          if (!state._connected && !state._connecting) await (client.connect as () => Promise<void>)();
        }
        return client as unknown as NodePgConn;
      },
      close: async () => undefined,
    };
  }
  type Ctor = new (config: unknown) => NodePgConn & { connect(): Promise<void> };
  const Client = (isPool ? client.Client : client.constructor) as Ctor;
  const config = isPool
    ? client.options
    : (() => {
        const p = client.connectionParameters as Record<string, unknown>;
        return {
          user: p.user,
          database: p.database,
          port: p.port,
          host: p.host,
          password: p.password,
          ssl: p.ssl,
          application_name: p.application_name,
          client_encoding: p.client_encoding,
        };
      })();
  return {
    open: async () => {
      const c = new Client(config);
      await c.connect();
      return c;
    },
    close: async (c) => {
      await c.end?.().catch(() => undefined);
    },
  };
}

/** LISTEN on a dedicated node-postgres connection, reconnecting after errors. */
async function listenNodePg(
  source: { open(): Promise<NodePgConn>; close(c: NodePgConn, failed: boolean): Promise<void> },
  onPayload: (p: string | undefined) => void,
): Promise<() => Promise<void>> {
  let stopped = false;
  let conn: NodePgConn | undefined;
  const connect = async (): Promise<void> => {
    const c = await source.open();
    conn = c;
    c.on('notification', (m) => {
      if (m.channel === INVALIDATION_CHANNEL) onPayload(m.payload);
    });
    c.on('error', () => {
      void source.close(c, true);
      conn = undefined;
      if (!stopped) setTimeout(() => void connect().catch(() => undefined), 500).unref();
    });
    await c.query(`LISTEN ${INVALIDATION_CHANNEL}`);
  };
  await connect();
  return async () => {
    stopped = true;
    const c = conn;
    conn = undefined;
    if (c !== undefined) {
      await c.query(`UNLISTEN ${INVALIDATION_CHANNEL}`).catch(() => undefined);
      await source.close(c, false);
    }
  };
}
