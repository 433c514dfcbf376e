/**
 * Loading data keys: from the cache, else through batch loaders (one store query and bounded
 * unwraps per batch, concurrent callers of one cold key sharing one load) by id, by tenant (the
 * active key, created on first use) and for reads in a tenant's scope; or through the caller's
 * transaction, where keys it creates stay its own until it commits.
 */
import DataLoader from 'dataloader';
import { and, eq, inArray } from 'drizzle-orm';
import { ByokError, DecryptionFailedError, KeyNotFoundError } from '../errors.ts';
import { type AnyPgDatabase, asPgDb } from '../store/db.ts';
import { hasSqlState, rethrowStoreError } from '../store/errors.ts';
import type { DekCache, DekEntry } from './cache.ts';
import type { DekCreator } from './create.ts';
import type { EventHub, KeyringCounters } from './events.ts';
import type { KeyStore } from './key-store.ts';
import { mapLimit } from './map-limit.ts';
import { byokDeks } from '../store/schema-key-store.ts';
import { asError, type Unwrapper } from './unwrap.ts';

/** PostgreSQL SQLSTATEs of a key committed by another instance after a transaction's snapshot. */
const SERIALIZATION_FAILURE = '40001';
const UNIQUE_VIOLATION = '23505';

/** What the loaders need of the keyring. */
export interface LoaderParts {
  readonly store: KeyStore;
  readonly cache: DekCache;
  readonly events: EventHub;
  readonly counters: KeyringCounters;
  readonly unwrap: Unwrapper;
  readonly create: DekCreator;
  readonly singleConnection: boolean;
  readonly maxBatchSize: number;
  readonly unwrapConcurrency: number;
}

/** Keys a transaction created: visible to it (and its savepoints) only, until it commits. */
interface TxKeys {
  readonly parent: TxKeys | undefined;
  readonly byId: Map<string, DekEntry>;
  readonly active: Map<string, DekEntry>;
}

export class DekLoader {
  readonly #store: KeyStore;
  readonly #cache: DekCache;
  readonly #events: EventHub;
  readonly #counters: KeyringCounters;
  readonly #unwrap: Unwrapper;
  readonly #create: DekCreator;
  readonly #singleConnection: boolean;
  readonly #unwrapConcurrency: number;
  readonly #dekLoader: DataLoader<string, DekEntry>;
  readonly #activeLoader: DataLoader<string, DekEntry>;
  readonly #readLoader: DataLoader<string, DekEntry>;
  readonly #inflightDek = new Map<string, Promise<DekEntry>>();
  readonly #inflightRead = new Map<string, Promise<DekEntry>>();
  readonly #inflightActive = new Map<string, Promise<DekEntry>>();
  readonly #txKeys = new WeakMap<object, TxKeys>();

  constructor(parts: LoaderParts) {
    this.#store = parts.store;
    this.#cache = parts.cache;
    this.#events = parts.events;
    this.#counters = parts.counters;
    this.#unwrap = parts.unwrap;
    this.#create = parts.create;
    this.#singleConnection = parts.singleConnection;
    this.#unwrapConcurrency = parts.unwrapConcurrency;
    const maxBatchSize = parts.maxBatchSize;
    this.#dekLoader = new DataLoader((ids) => this.#loadDeks(ids), { cache: false, maxBatchSize });
    this.#readLoader = new DataLoader((keys) => this.#loadDeksForRead(keys), { cache: false, maxBatchSize });
    this.#activeLoader = new DataLoader((tenants) => this.#loadActive(tenants), {
      cache: false,
      maxBatchSize,
    });
  }

  /** A transaction (or savepoint) began: keys it creates stay its own until it commits. */
  openTransaction(tx: AnyPgDatabase, parent: AnyPgDatabase | undefined): void {
    const p = parent === undefined ? undefined : this.#txKeys.get(parent);
    this.#txKeys.set(tx, { parent: p, byId: new Map(), active: new Map() });
  }

  /** A savepoint was released: its keys belong to the enclosing transaction. */
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

  /**
   * A data key by id, from the cache or loaded (batched, deduplicated) and unwrapped. `txDb`: the
   * transaction the caller's query runs in (used instead of `db` on single-connection databases).
   */
  getDek(id: string, txDb?: AnyPgDatabase): Promise<DekEntry> {
    const hit = this.#cache.get(id);
    if (hit !== undefined) {
      this.#events.emit({ type: 'cache', outcome: 'hit', tenantId: hit.tenantId, dekId: id });
      return Promise.resolve(hit);
    }
    this.#events.emit({ type: 'cache', outcome: 'miss', dekId: id });
    if (txDb !== undefined && !this.#store.own)
      return this.loadInTransaction(txDb, { id }).catch(rethrowStoreError);
    return shareInFlight(this.#inflightDek, id, () => this.#dekLoader.load(id).catch(rethrowStoreError));
  }

  /**
   * A tenant's data key by version (any state but destroyed), loaded through the batch loader.
   * Used by blind indexes (index keys are derived from a chosen DEK version) and re-encryption.
   */
  async getDekVersion(tenantId: string, version: number, txDb?: AnyPgDatabase): Promise<DekEntry> {
    const inTx = txDb !== undefined && !this.#store.own;
    const [row] = await this.#store.run(() =>
      asPgDb(inTx ? txDb : this.#store.readDb)
        .select({ id: byokDeks.id })
        .from(byokDeks)
        .where(and(eq(byokDeks.tenantId, tenantId), eq(byokDeks.version, version))),
    );
    if (row === undefined) {
      throw new KeyNotFoundError(`tenant ${tenantId} has no data key version ${version}`, { tenantId });
    }
    return this.getDek(row.id, txDb);
  }

  /** The tenant's active data key, created on first use (race-safe across processes). */
  getActiveDek(tenantId: string, txDb?: AnyPgDatabase): Promise<DekEntry> {
    const hit = this.#cache.active(tenantId);
    if (hit !== undefined) {
      this.#events.emit({ type: 'cache', outcome: 'hit', tenantId, dekId: hit.id });
      return Promise.resolve(hit);
    }
    this.#events.emit({ type: 'cache', outcome: 'miss', tenantId, dekId: 'active' });
    if (txDb !== undefined && !this.#store.own)
      return this.loadInTransaction(txDb, { tenantId }).catch(rethrowStoreError);
    return this.#loadActiveFromStore(tenantId);
  }

  /** The tenant's active data key through the store's own connections (batched, shared in flight). */
  #loadActiveFromStore(tenantId: string): Promise<DekEntry> {
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
  getDekForRead(id: string, tenantId: string | null, txDb?: AnyPgDatabase): Promise<DekEntry> {
    if (tenantId === null) {
      return this.getDek(id, txDb).catch((e: unknown) => {
        throw e instanceof KeyNotFoundError ? new DecryptionFailedError() : e;
      });
    }
    const hit = this.#cache.get(id);
    if (hit !== undefined) {
      if (hit.tenantId !== tenantId) return Promise.reject(new DecryptionFailedError({ tenantId }));
      this.#events.emit({ type: 'cache', outcome: 'hit', tenantId, dekId: id });
      return Promise.resolve(hit);
    }
    this.#events.emit({ type: 'cache', outcome: 'miss', tenantId, dekId: id });
    if (txDb !== undefined && !this.#store.own) return this.loadInTransaction(txDb, { id, owner: tenantId });
    const key = `${tenantId}\u0000${id}`;
    return shareInFlight(this.#inflightRead, key, () => this.#readLoader.load(key));
  }

  async #loadDeks(ids: readonly string[]): Promise<(DekEntry | Error)[]> {
    const started = performance.now();
    this.#counters.batches++;
    const unique = [...new Set(ids)];
    const valid = unique.filter(isUuid);
    const rows = valid.length === 0 ? [] : await this.#store.selectDeks(inArray(byokDeks.id, valid));
    if (this.#store.writeDb !== this.#store.readDb && rows.length < valid.length) {
      // A replica that has not seen a data key yet: ask the primary for the missing ones.
      const found = new Set(rows.map((r) => r.id));
      const missing = valid.filter((id) => !found.has(id));
      rows.push(...(await this.#store.selectDeks(inArray(byokDeks.id, missing), this.#store.writeDb)));
    }
    const entries = await this.#unwrap.unwrapAll(rows);
    this.#events.emit({ type: 'dek-batch', size: rows.length, latencyMs: performance.now() - started });
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
    this.#counters.batches++;
    const wanted = keys.map((k) => {
      const at = k.indexOf('\u0000');
      return { tenantId: k.slice(0, at), id: k.slice(at + 1) };
    });
    const ids = [...new Set(wanted.map((w) => w.id).filter(isUuid))];
    const tenants = [...new Set(wanted.map((w) => w.tenantId))];
    const rows =
      ids.length === 0
        ? []
        : await this.#store.selectDeks(and(inArray(byokDeks.id, ids), inArray(byokDeks.tenantId, tenants))!);
    if (this.#store.writeDb !== this.#store.readDb && rows.length < ids.length) {
      // A replica that has not seen a data key yet: ask the primary for the missing ones.
      const found = new Set(rows.map((r) => r.id));
      const missing = ids.filter((id) => !found.has(id));
      rows.push(
        ...(await this.#store.selectDeks(
          and(inArray(byokDeks.id, missing), inArray(byokDeks.tenantId, tenants))!,
          this.#store.writeDb,
        )),
      );
    }
    const owned = new Set(wanted.map((w) => `${w.tenantId}\u0000${w.id}`));
    const entries = await this.#unwrap.unwrapAll(rows.filter((r) => owned.has(`${r.tenantId}\u0000${r.id}`)));
    this.#events.emit({ type: 'dek-batch', size: rows.length, latencyMs: performance.now() - started });
    return wanted.map((w) => {
      const e = entries.get(w.id);
      if (e !== undefined && (e instanceof Error || e.tenantId === w.tenantId)) return e;
      return new DecryptionFailedError({ tenantId: w.tenantId });
    });
  }

  async #loadActive(tenants: readonly string[]): Promise<(DekEntry | Error)[]> {
    const started = performance.now();
    this.#counters.batches++;
    const unique = [...new Set(tenants)];
    const rows = await this.#store.selectDeks(
      and(inArray(byokDeks.tenantId, unique), eq(byokDeks.state, 'active'))!,
    );
    if (this.#store.writeDb !== this.#store.readDb && rows.length < unique.length) {
      const found = new Set(rows.map((r) => r.tenantId));
      const missing = unique.filter((t) => !found.has(t));
      rows.push(
        ...(await this.#store.selectDeks(
          and(inArray(byokDeks.tenantId, missing), eq(byokDeks.state, 'active'))!,
          this.#store.writeDb,
        )),
      );
    }
    const entries = await this.#unwrap.unwrapAll(rows);
    this.#events.emit({ type: 'dek-batch', size: rows.length, latencyMs: performance.now() - started });
    const byTenant = new Map<string, DekEntry | Error>();
    for (const r of rows) {
      const e = entries.get(r.id);
      if (e !== undefined) byTenant.set(r.tenantId, e);
    }
    const missing = unique.filter((t) => !byTenant.has(t));
    await mapLimit(missing, this.#unwrapConcurrency, async (t) => {
      try {
        byTenant.set(t, await this.#create.createDek(t, { rotate: false }));
      } catch (e) {
        byTenant.set(t, asError(e));
      }
    });
    return tenants.map(
      (t) => byTenant.get(t) ?? new KeyNotFoundError(`tenant ${t} has no data key`, { tenantId: t }),
    );
  }

  /**
   * Loads (or creates) one data key through the caller's transaction. A key it creates stays the
   * transaction's own (never cached) until the transaction ends; keys read from the store that
   * were committed before are cached as usual.
   */
  async loadInTransaction(
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
    const rows = await this.#store.selectDeks(where, asPgDb(txDb));
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
      let created: DekEntry;
      try {
        created = await this.#create.createDek(key.tenantId, { rotate: false, db: txDb, cache: false });
      } catch (e) {
        // REPEATABLE READ / SERIALIZABLE: another instance committed the tenant (or its first data
        // key) after this transaction's snapshot. The snapshot cannot see that key and a second
        // active one cannot exist: use the committed one, read from the store outside the snapshot
        // (the statements that failed ran in savepoints, so the caller's transaction goes on).
        if (!hasSqlState(e, [SERIALIZATION_FAILURE, UNIQUE_VIOLATION])) throw e;
        if (this.#singleConnection) {
          throw new ByokError(
            `the first data key of tenant ${key.tenantId} was created by another instance after this ` +
              'transaction began (repeatable read or serializable); retry the transaction',
            { tenantId: key.tenantId, cause: e },
          );
        }
        return this.#loadActiveFromStore(key.tenantId);
      }
      const mine = this.#txKeys.get(txDb);
      if (mine !== undefined) {
        mine.byId.set(created.id, created);
        mine.active.set(key.tenantId, created);
      }
      return created;
    }
    const tracked = this.#txKeys.has(txDb);
    const entries = await this.#unwrap.unwrapAll([row], asPgDb(txDb), tracked);
    const e = entries.get(row.id)!;
    if (e instanceof Error) throw e;
    return e;
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

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
function isUuid(s: string): boolean {
  return UUID_RE.test(s);
}
