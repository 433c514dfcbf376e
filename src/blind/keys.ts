import { and, eq, ne, sql } from 'drizzle-orm';
import { type BlindKey, type BlindParams, decodeParams, encodeParams } from '../crypto/blind-hmac.ts';
import { ByokConfigError, KeyNotFoundError } from '../errors.ts';
import { type AnyPgDatabase, type Keyring, keysOf } from '../keys/keyring.ts';
import { byokDeks } from '../store/schema-key-store.ts';
import { byokBlindIndexKeys } from '../store/schema-blind-index.ts';
import { scopeStorage, start } from '../scope.ts';

/**
 * Index key versions of (tenant, index context): loaded from `byok.blind_index_keys`, created on the
 * first write, cached per keyring for `stateMaxAgeMs` (and dropped on any invalidation of the tenant,
 * local or through LISTEN/NOTIFY). The cache holds version numbers and data key ids only; the keys
 * themselves are derived on demand from the keyring's data key cache (`keysOf(keyring).blindKey`), so they
 * are zeroed and dropped with the data key, and a shredded tenant's index cannot be computed.
 */
export interface IndexVersion {
  readonly version: number;
  readonly dekVersion: number;
  /** Id of the data key version the index key derives from; null when it no longer exists. */
  readonly dekId: string | null;
  readonly state: 'active' | 'pending' | 'retiring';
  readonly params: BlindParams;
  readonly built: boolean;
}

export interface IndexKeyState {
  readonly tenantId: string;
  readonly context: string;
  /** The version new values are written under. */
  readonly active: IndexVersion;
  /** Every version a lookup computes: the active one first, then the pending or retiring one during a rotation. */
  readonly live: readonly IndexVersion[];
  readonly expiresAt: number;
}

/** What the key registry needs to know about an index (implemented by the blind index column). */
export interface IndexKeyOwner {
  readonly context: string;
  /** `table.column` of the index, for messages. */
  readonly label: string;
  /** Normalization and length for new key versions (the code's current options). */
  readonly params: BlindParams;
  /** Whether rows of the tenant have a source value and no index value (run before the first version exists). */
  hasUnindexedRows(db: AnyPgDatabase, tenantId: string): Promise<boolean>;
}

export interface BlindIndexConfig {
  /**
   * How long an instance trusts its cached index key versions. A rotation waits at least this long
   * (plus `rotationGraceMs`' margin) before its final sweep, so that every instance writes under the
   * new version by then. Default 30,000 ms.
   */
  stateMaxAgeMs?: number;
}

export const DEFAULT_STATE_MAX_AGE_MS = 30_000;
/** Most (tenant, index) states cached per keyring; the oldest are dropped beyond it. */
const MAX_STATES = 100_000;

/** Label of the derived key of index version `v` (HKDF info, see `aead.ts`). */
export function keyLabel(version: number): string {
  return `blind-index/v${version}`;
}

/** Runs a key store query outside the caller's tenant scope and query context. */
export function store<T>(fn: () => PromiseLike<T>): Promise<T> {
  return scopeStorage.exit(() => start(fn()) as Promise<T>);
}

/** PGlite (one connection): detected from the Drizzle instance's client, as the keyring does. */
export function isSingleConnection(db: AnyPgDatabase): boolean {
  const client = (db as { $client?: unknown }).$client as
    | { constructor?: { name?: string }; waitReady?: unknown }
    | undefined;
  return client !== undefined && (client.constructor?.name === 'PGlite' || client.waitReady !== undefined);
}

export class BlindKeyRegistry {
  readonly keyring: Keyring;
  maxAgeMs = DEFAULT_STATE_MAX_AGE_MS;
  readonly #states = new Map<string, IndexKeyState>();
  readonly #inflight = new Map<string, Promise<IndexKeyState | undefined>>();
  readonly #singleConnection: boolean;

  constructor(keyring: Keyring) {
    this.keyring = keyring;
    this.#singleConnection = keyring.storeInTransaction;
    keyring.onEvent((e) => {
      if (e.type === 'invalidation') this.dropTenant(e.tenantId);
    });
  }

  /** The cached state, if fresh (synchronous hot path). */
  fresh(tenantId: string, context: string): IndexKeyState | undefined {
    const k = mapKey(tenantId, context);
    const s = this.#states.get(k);
    if (s === undefined) return undefined;
    if (s.expiresAt <= Date.now()) {
      this.#states.delete(k);
      return undefined;
    }
    return s;
  }

  dropTenant(tenantId: string): void {
    const prefix = `${tenantId}\u0000`;
    for (const k of [...this.#states.keys()]) if (k.startsWith(prefix)) this.#states.delete(k);
  }

  drop(tenantId: string, context: string): void {
    this.#states.delete(mapKey(tenantId, context));
  }

  /** The database key store queries use: the caller's transaction on single-connection databases. */
  dbFor(txDb: AnyPgDatabase | undefined): AnyPgDatabase {
    return txDb !== undefined && this.#singleConnection ? txDb : this.keyring.db;
  }

  /**
   * The state of (tenant, index). `create`: make version 1 when there is none (writes); otherwise
   * undefined is returned (lookups: nothing was ever indexed for this tenant).
   */
  async load(
    tenantId: string,
    owner: IndexKeyOwner,
    options: { create: boolean; txDb?: AnyPgDatabase },
  ): Promise<IndexKeyState | undefined> {
    const hit = this.fresh(tenantId, owner.context);
    if (hit !== undefined) return hit;
    const inTx = options.txDb !== undefined && this.#singleConnection;
    if (inTx) return this.#read(tenantId, owner, options.create, options.txDb!, false);
    const k = `${mapKey(tenantId, owner.context)}\u0000${options.create ? 'c' : 'r'}`;
    let p = this.#inflight.get(k);
    if (p === undefined) {
      p = this.#read(tenantId, owner, options.create, this.keyring.db, true).finally(() =>
        this.#inflight.delete(k),
      );
      this.#inflight.set(k, p);
    }
    return p;
  }

  async #read(
    tenantId: string,
    owner: IndexKeyOwner,
    create: boolean,
    db: AnyPgDatabase,
    cacheIt: boolean,
  ): Promise<IndexKeyState | undefined> {
    let rows = await selectVersions(db, tenantId, owner.context);
    if (rows.length === 0 && create) {
      // The tenant's active data key (created if needed; refused for a shredded tenant).
      const dek = await keysOf(this.keyring).getActiveDek(tenantId, db === this.keyring.db ? undefined : db);
      const built = !(await owner.hasUnindexedRows(db, tenantId));
      await store(() =>
        db
          .insert(byokBlindIndexKeys)
          .values({
            tenantId,
            context: owner.context,
            version: 1,
            dekVersion: dek.version,
            state: 'active',
            params: encodeParams(owner.params),
            built,
            activatedAt: sql`now()`,
          })
          .onConflictDoNothing(),
      );
      rows = await selectVersions(db, tenantId, owner.context);
    }
    if (rows.length === 0) return undefined;
    const live = rows
      .map((r): IndexVersion => {
        let params: BlindParams;
        try {
          params = decodeParams(r.params);
        } catch {
          throw new ByokConfigError(
            `blind index ${owner.label}: stored parameters of version ${r.version} are not valid`,
            { tenantId },
          );
        }
        return {
          version: r.version,
          dekVersion: r.dekVersion,
          dekId: r.dekId,
          state: r.state === 'active' ? 'active' : r.state === 'pending' ? 'pending' : 'retiring',
          params,
          built: r.built,
        };
      })
      .sort((a, b) => Number(b.state === 'active') - Number(a.state === 'active') || b.version - a.version);
    const active = live[0]!;
    if (active.state !== 'active') {
      throw new ByokConfigError(
        `blind index ${owner.label} has no active key version for tenant ${tenantId}`,
        {
          tenantId,
        },
      );
    }
    const state: IndexKeyState = {
      tenantId,
      context: owner.context,
      active,
      live,
      expiresAt: Date.now() + this.maxAgeMs,
    };
    if (cacheIt) {
      const k = mapKey(tenantId, owner.context);
      this.#states.delete(k);
      if (this.#states.size >= MAX_STATES) {
        for (const old of this.#states.keys()) {
          this.#states.delete(old);
          if (this.#states.size < MAX_STATES * 0.9) break;
        }
      }
      this.#states.set(k, state);
    }
    return state;
  }

  /** The key of `v`, if its data key is cached (synchronous hot path). */
  hotKey(state: IndexKeyState, v: IndexVersion): BlindKey | undefined {
    if (v.dekId === null) return undefined;
    const entry = keysOf(this.keyring).cache.get(v.dekId);
    if (entry === undefined) return undefined;
    return keysOf(this.keyring).blindKey(entry, keyLabel(v.version), state.context);
  }

  /** The key of `v`, loading (and unwrapping) its data key when needed. */
  async key(state: IndexKeyState, v: IndexVersion, txDb?: AnyPgDatabase): Promise<BlindKey> {
    const hot = this.hotKey(state, v);
    if (hot !== undefined) return hot;
    if (v.dekId === null) {
      throw new KeyNotFoundError(
        `the data key version ${v.dekVersion} that blind index version ${v.version} of tenant ${state.tenantId} derives from does not exist`,
        { tenantId: state.tenantId },
      );
    }
    const entry = await keysOf(this.keyring).getDek(v.dekId, txDb);
    if (entry.tenantId !== state.tenantId) {
      throw new KeyNotFoundError(`blind index key of tenant ${state.tenantId} is not available`, {
        tenantId: state.tenantId,
      });
    }
    return keysOf(this.keyring).blindKey(entry, keyLabel(v.version), state.context);
  }
}

function mapKey(tenantId: string, context: string): string {
  return `${tenantId}\u0000${context}`;
}

interface VersionRow {
  version: number;
  dekVersion: number;
  state: string;
  params: string;
  built: boolean;
  dekId: string | null;
}

/** Live (not retired) versions with the id of the data key each derives from. */
export function selectVersions(db: AnyPgDatabase, tenantId: string, context: string): Promise<VersionRow[]> {
  const k = byokBlindIndexKeys;
  return store(() =>
    db
      .select({
        version: k.version,
        dekVersion: k.dekVersion,
        state: k.state,
        params: k.params,
        built: k.built,
        dekId: byokDeks.id,
      })
      .from(k)
      .leftJoin(byokDeks, and(eq(byokDeks.tenantId, k.tenantId), eq(byokDeks.version, k.dekVersion)))
      .where(and(eq(k.tenantId, tenantId), eq(k.context, context), ne(k.state, 'retired'))),
  ) as Promise<VersionRow[]>;
}

const registries = new WeakMap<Keyring, BlindKeyRegistry>();

/** The blind index key registry of a keyring (one per keyring). */
export function registryFor(keyring: Keyring): BlindKeyRegistry {
  let r = registries.get(keyring);
  if (r === undefined) {
    r = new BlindKeyRegistry(keyring);
    registries.set(keyring, r);
  }
  return r;
}

/** Sets blind index options of a keyring (see `BlindIndexConfig`). */
export function configureBlindIndexes(keyring: Keyring, config: BlindIndexConfig): void {
  const r = registryFor(keyring);
  if (config.stateMaxAgeMs !== undefined) {
    if (!Number.isFinite(config.stateMaxAgeMs) || config.stateMaxAgeMs <= 0)
      throw new ByokConfigError('stateMaxAgeMs must be a positive number of milliseconds');
    r.maxAgeMs = config.stateMaxAgeMs;
  }
}
