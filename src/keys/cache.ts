import { ByokConfigError } from '../errors.ts';
import { inspect } from 'node:util';
import { type FieldKey, idEquals, idWordsOf } from '../crypto/aead.ts';
import type { BlindKey } from '../crypto/blind-hmac.ts';
import { DEK_ID_OFFSET, envelopeDekId } from '../crypto/envelope.ts';

/**
 * The cache of unwrapped data keys. Bounded (LRU over `maxEntries`) and time-limited (`maxAgeMs`,
 * required: there is no way to cache a key forever). Evicted entries have their raw key bytes
 * zeroed, and so are their blind index keys; field subkeys live in node:crypto `KeyObject`s, which
 * Node cannot zero: they are dropped and released to the garbage collector. Failures are never cached.
 */
export interface DekCacheOptions {
  /** Most data keys held at once. Default 10,000 (about 1.5 MiB with derived subkeys). */
  maxEntries?: number;
  /**
   * How long an unwrapped data key may be used before it is unwrapped through its KEK again.
   * Default 300,000 ms (5 minutes). Also the longest a revoked KEK keeps working on an instance
   * that missed the revocation notice.
   */
  maxAgeMs?: number;
}

export const DEFAULT_CACHE = { maxEntries: 10_000, maxAgeMs: 300_000 } as const;

/** The key material of an entry (library-internal: never exported from the package). */
export let dekMaterial: (e: DekEntry) => DekMaterial;

/**
 * A cached data key. Its key material (the raw DEK, derived subkeys) lives in private fields: no
 * `util.inspect` (even with `showHidden`), `JSON.stringify` or property walk reaches it, and only
 * the library's own modules read it, through `dekMaterial`.
 */
export class DekEntry {
  readonly id: string;
  readonly idBytes: Buffer;
  readonly idWords: readonly [number, number, number, number];
  readonly tenantId: string;
  readonly version: number;
  readonly expiresAt: number;
  lastUsed: number;
  evicted = false;
  readonly #material: DekMaterial;

  constructor(id: string, idBytes: Buffer, tenantId: string, version: number, raw: Buffer, maxAgeMs: number) {
    const now = Date.now();
    this.id = id;
    this.idBytes = idBytes;
    this.idWords = idWordsOf(idBytes);
    this.tenantId = tenantId;
    this.version = version;
    this.expiresAt = now + maxAgeMs;
    this.lastUsed = now;
    this.#material = { raw, fieldKeys: new Map(), blindKeys: new Map() };
  }

  toJSON(): unknown {
    return { type: 'DekEntry', id: this.id, tenantId: this.tenantId, version: this.version };
  }

  [inspect.custom](): string {
    return `DekEntry { id: '${this.id}', tenantId: '${this.tenantId}', version: ${this.version} }`;
  }

  static {
    dekMaterial = (e) => e.#material;
  }
}

/** Key material of a cached data key. */
export interface DekMaterial {
  /** Raw DEK bytes; zeroed on eviction. */
  readonly raw: Buffer;
  /** Field subkeys by column context. */
  readonly fieldKeys: Map<string, FieldKey>;
  /** Blind index keys by label and context (destroyed, i.e. zeroed, on eviction). */
  readonly blindKeys: Map<string, BlindKey>;
}

export class DekCache {
  readonly maxEntries: number;
  readonly maxAgeMs: number;
  readonly #byId = new Map<string, DekEntry>();
  /** Hot-path index: first 6 bytes of the DEK id as a number (full id compared on hit). */
  readonly #byPrefix = new Map<number, DekEntry>();
  readonly #active = new Map<string, DekEntry>();

  constructor(options: DekCacheOptions = {}) {
    const maxEntries = options.maxEntries ?? DEFAULT_CACHE.maxEntries;
    const maxAgeMs = options.maxAgeMs ?? DEFAULT_CACHE.maxAgeMs;
    if (!Number.isSafeInteger(maxEntries) || maxEntries < 1) {
      throw new ByokConfigError(`cache.maxEntries must be a positive integer, got ${String(maxEntries)}`);
    }
    if (!Number.isFinite(maxAgeMs) || maxAgeMs <= 0) {
      throw new ByokConfigError(
        `cache.maxAgeMs must be a positive number of milliseconds (a max age is required), got ${String(maxAgeMs)}`,
      );
    }
    this.maxEntries = maxEntries;
    this.maxAgeMs = maxAgeMs;
  }

  get size(): number {
    return this.#byId.size;
  }

  /**
   * Looks up the DEK of an envelope (synchronous hot path). `hint`: the entry the caller used last
   * (a column's memo), checked first by DEK id, which skips the map lookup when it matches.
   */
  lookupEnvelope(env: Buffer, now = Date.now(), hint?: DekEntry): DekEntry | undefined {
    if (hint !== undefined && !hint.evicted && idEquals(env, DEK_ID_OFFSET, hint.idWords)) {
      return this.#fresh(hint, now);
    }
    const e = this.#byPrefix.get(env.readUIntBE(DEK_ID_OFFSET, 6));
    if (e !== undefined && idEquals(env, DEK_ID_OFFSET, e.idWords)) {
      return this.#fresh(e, now);
    }
    return this.get(envelopeDekId(env));
  }

  get(id: string): DekEntry | undefined {
    const e = this.#byId.get(id);
    return e === undefined ? undefined : this.#fresh(e);
  }

  /** The tenant's active (write) DEK, if cached and fresh. */
  active(tenantId: string): DekEntry | undefined {
    const e = this.#active.get(tenantId);
    return e === undefined ? undefined : this.#fresh(e);
  }

  #fresh(e: DekEntry, now = Date.now()): DekEntry | undefined {
    if (e.expiresAt <= now) {
      // An entry that is not (or no longer) cached, e.g. a transaction's own key reached through a
      // column's last-key hint, is not this cache's to evict: its owner zeroes it.
      if (this.#byId.get(e.id) === e) this.#evict(e);
      return undefined;
    }
    if (e.lastUsed !== now) {
      if (this.#byId.get(e.id) !== e) return undefined;
      // Keep #byId in least-recently-used order: an entry moves to the end when used at a new
      // time (at most once per clock tick: the hot path of one query uses one clock reading).
      e.lastUsed = now;
      this.#byId.delete(e.id);
      this.#byId.set(e.id, e);
    }
    return e;
  }

  /** An entry that is not cached (used once, e.g. inside a transaction on a single-connection database). */
  uncached(id: string, idBytes: Buffer, tenantId: string, version: number, raw: Buffer): DekEntry {
    return newEntry(id, idBytes, tenantId, version, raw, 0);
  }

  /** Adds an unwrapped DEK (takes ownership of `raw`: it is zeroed on eviction). */
  put(
    id: string,
    idBytes: Buffer,
    tenantId: string,
    version: number,
    raw: Buffer,
    active: boolean,
  ): DekEntry {
    const existing = this.#byId.get(id);
    if (existing !== undefined) this.#evict(existing);
    const entry = newEntry(id, idBytes, tenantId, version, raw, this.maxAgeMs);
    if (this.#byId.size >= this.maxEntries) this.#evictLeastRecentlyUsed();
    this.#byId.set(id, entry);
    const prefix = idBytes.readUIntBE(0, 6);
    if (!this.#byPrefix.has(prefix)) this.#byPrefix.set(prefix, entry);
    if (active) this.#active.set(tenantId, entry);
    return entry;
  }

  /** Marks `entry` as no longer the tenant's write key (after `rotateDek`). */
  deactivate(tenantId: string): void {
    this.#active.delete(tenantId);
  }

  /** Ids of the fresh cached data keys. */
  ids(now = Date.now()): string[] {
    const out: string[] = [];
    for (const e of this.#byId.values()) if (e.expiresAt > now) out.push(e.id);
    return out;
  }

  /** Tenants with at least one fresh cached data key. */
  tenants(now = Date.now()): Set<string> {
    const out = new Set<string>();
    for (const e of this.#byId.values()) if (e.expiresAt > now) out.add(e.tenantId);
    return out;
  }

  /** Drops every DEK of a tenant (revocation, lifecycle change). Returns how many were dropped. */
  evictTenant(tenantId: string): number {
    let n = 0;
    for (const e of this.#byId.values()) {
      if (e.tenantId === tenantId) {
        this.#evict(e);
        n++;
      }
    }
    this.#active.delete(tenantId);
    return n;
  }

  clear(): void {
    for (const e of [...this.#byId.values()]) this.#evict(e);
    this.#active.clear();
  }

  /** The first entry of #byId is the least recently used one: O(1), whatever the cache size. */
  #evictLeastRecentlyUsed(): void {
    const oldest = this.#byId.values().next().value;
    if (oldest !== undefined) this.#evict(oldest);
  }

  #evict(e: DekEntry): void {
    if (this.#byId.get(e.id) === e) this.#byId.delete(e.id);
    const prefix = e.idBytes.readUIntBE(0, 6);
    if (this.#byPrefix.get(prefix) === e) this.#byPrefix.delete(prefix);
    if (this.#active.get(e.tenantId) === e) this.#active.delete(e.tenantId);
    if (!e.evicted) {
      e.evicted = true;
      const m = dekMaterial(e);
      m.raw.fill(0);
      for (const k of m.blindKeys.values()) k.destroy();
      m.fieldKeys.clear();
      m.blindKeys.clear();
    }
  }
}

function newEntry(
  id: string,
  idBytes: Buffer,
  tenantId: string,
  version: number,
  raw: Buffer,
  maxAgeMs: number,
): DekEntry {
  return new DekEntry(id, idBytes, tenantId, version, raw, maxAgeMs);
}
