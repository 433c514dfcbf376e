/**
 * Creating data keys: a new random key wrapped under every current KEK of the tenant (its BYOK KEKs,
 * or the platform KEK), written as the tenant's next version under its advisory lock, so creation is
 * race-safe across processes and never outruns a concurrent KEK change.
 */
import { randomFillSync, randomUUID } from 'node:crypto';
import { and, eq, sql } from 'drizzle-orm';
import { uuidToBytes } from '../crypto/envelope.ts';
import { ByokError, TenantShreddedError } from '../errors.ts';
import type { Kek } from '../kms/kek.ts';
import { type AnyPgDatabase, asPgDb } from '../store/db.ts';
import type { DekCache, DekEntry } from './cache.ts';
import type { KeyringCounters } from './events.ts';
import { wrapIdentified } from './identity.ts';
import type { KekInstances } from './kek-instances.ts';
import type { KekRow, KeyStore } from './key-store.ts';
import { byokDeks, byokDekWraps, byokKeks, byokTenants } from '../store/schema-key-store.ts';
import type { Unwrapper } from './unwrap.ts';

/** One wrap of a data key, as written to `byok.dek_wraps`. */
export interface DekWrap {
  kekId: string | null;
  kekRef: string;
  wrapped: Buffer;
  wrappedBy: string | null;
}

/** What data key creation needs of the keyring. */
export interface CreateParts {
  readonly store: KeyStore;
  readonly cache: DekCache;
  readonly keks: KekInstances;
  readonly unwrap: Unwrapper;
  readonly counters: KeyringCounters;
  readonly platformKek: Kek;
  /**
   * The key another process created first (`rotate: false`): loaded through the cache, or through
   * `db` (a caller's transaction) when the new key is not to be cached.
   */
  loadExisting(id: string, db: AnyPgDatabase, cacheIt: boolean): Promise<DekEntry>;
}

export class DekCreator {
  readonly #p: CreateParts;

  constructor(parts: CreateParts) {
    this.#p = parts;
  }

  /** Wraps `raw` under every current KEK of the tenant: its BYOK KEKs, or the platform KEK. */
  async wrapForTenant(
    tenantId: string,
    dekId: string,
    raw: Buffer,
    keks: readonly KekRow[],
  ): Promise<DekWrap[]> {
    const context = { tenantId, dekId };
    const platformKek = this.#p.platformKek;
    if (keks.length === 0) {
      const w = await this.#p.unwrap.timedKms('wrap', platformKek, tenantId, () =>
        wrapIdentified(platformKek, raw, context),
      );
      return [{ kekId: null, kekRef: platformKek.keyRef, ...w }];
    }
    return Promise.all(
      keks.map(async (k) => {
        const kek = await this.#p.keks.kekFor(k);
        const w = await this.#p.unwrap.timedKms('wrap', kek, tenantId, () =>
          wrapIdentified(kek, raw, context),
        );
        return { kekId: k.id, kekRef: k.keyRef, ...w };
      }),
    );
  }

  /**
   * Creates a new data key version for a tenant. With `rotate: false` (first write), an existing
   * active key wins the race and is returned instead. Serialized per tenant by an advisory lock.
   */
  async createDek(
    tenantId: string,
    options: { rotate: boolean; db?: AnyPgDatabase; cache?: boolean },
  ): Promise<DekEntry> {
    const db = options.db ?? this.#p.store.writeDb;
    const inTx = !this.#p.store.isStoreDb(db);
    const cacheIt = options.cache ?? true;
    for (let attempt = 0; attempt < 5; attempt++) {
      // In a caller's transaction, in a savepoint of its own: under REPEATABLE READ or SERIALIZABLE
      // a tenant row committed after the snapshot is a serialization failure, which must not abort
      // the caller's transaction (the loader then reads the other instance's key; see loader.ts).
      await this.#p.store.run(
        () =>
          inTx
            ? asPgDb(db).transaction((sp) =>
                sp.insert(byokTenants).values({ tenantId }).onConflictDoNothing(),
              )
            : db.insert(byokTenants).values({ tenantId }).onConflictDoNothing(),
        inTx,
      );
      const t = await this.#p.store.tenantKeks(tenantId, db);
      if (t?.state === 'shredded') {
        throw new TenantShreddedError(`tenant ${tenantId} was crypto-shredded: it cannot get new data keys`, {
          tenantId,
        });
      }
      const keks = t?.keks ?? [];
      const id = randomUUID();
      // Filled in place: no other buffer ever holds the key's bytes (this one is zeroed on eviction).
      const raw = randomFillSync(Buffer.allocUnsafeSlow(32));
      let wraps: DekWrap[];
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
      const outcome = await this.#p.store.run(
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
        return this.#p.loadExisting(outcome.existing, db, cacheIt);
      }
      this.#p.counters.created++;
      if (!cacheIt) return this.#p.cache.uncached(id, uuidToBytes(id), tenantId, outcome.created, raw);
      this.#p.cache.deactivate(tenantId);
      return this.#p.cache.put(id, uuidToBytes(id), tenantId, outcome.created, raw, true);
    }
    throw new ByokError(`the KEKs of tenant ${tenantId} kept changing while creating a data key; retry`, {
      tenantId,
    });
  }
}
