/**
 * The keyring's access to the key store: which database reads and writes go to, the connection
 * budget every key store query runs within, and the queries of data keys and KEK rows the loaders,
 * the unwrap and data key creation share.
 */
import { and, eq, inArray } from 'drizzle-orm';
import { KeyStoreBusyError } from '../errors.ts';
import { scopeStorage, start } from '../scope.ts';
import { type AnyPgDatabase, asPgDb, type PgDb } from '../store/db.ts';
import { rethrowStoreError } from '../store/errors.ts';
import { assertPgDatabase } from '../store/pg.ts';
import { byokDeks, byokDekWraps, byokKeks, byokTenants } from '../store/schema-key-store.ts';

/** Row shapes read from the store. */
export interface WrapRow {
  readonly kekId: string | null;
  readonly kekRef: string;
  readonly wrapped: Buffer;
  readonly wrappedBy: string | null;
}
export interface DekRow {
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

export class KeyStore {
  /** The app's database the keyring was created with (`options.db`). */
  readonly db: AnyPgDatabase;
  /** Reads of the key store outside transactions (a replica when `db` is `withReplicas(...)`). */
  readonly readDb: PgDb;
  /** Writes and transactions of the key store (the primary). */
  readonly writeDb: PgDb;
  /** Whether the key store has a database of its own (`keyStore.db`, not `db`). */
  readonly own: boolean;
  readonly #budget: Budget;

  /** `ks`: `keyStore.db` (default `db`) and the budget, validated (`KeyStoreOptions`). */
  constructor(
    db: AnyPgDatabase,
    ks: { readonly db?: AnyPgDatabase; readonly maxConcurrent: number; readonly waitTimeoutMs: number },
  ) {
    if (ks.db !== undefined) assertPgDatabase(ks.db, 'createKeyring: `keyStore.db`');
    this.own = ks.db !== undefined && ks.db !== db;
    this.readDb = asPgDb(ks.db ?? db);
    this.writeDb = asPgDb((this.readDb as { $primary?: AnyPgDatabase }).$primary ?? this.readDb);
    this.#budget = new Budget(ks.maxConcurrent, ks.waitTimeoutMs);
    this.db = db;
  }

  /**
   * Store queries run outside any tenant scope of the caller and outside its query context, within
   * the keyring's connection budget (queries on a caller's transaction pass `inTx`: they need no
   * connection of their own).
   */
  run<T>(fn: () => PromiseLike<T>, inTx = false): Promise<T> {
    // Builders are lazy: start them inside `exit`, or they would run in the caller's scope.
    const run = () => scopeStorage.exit(() => (start(fn()) as Promise<T>).catch(rethrowStoreError));
    return inTx ? run() : this.#budget.run(run);
  }

  /** Whether `db` is one of the keyring's own databases (else: a caller's transaction). */
  isStoreDb(db: AnyPgDatabase): boolean {
    return db === this.readDb || db === this.writeDb || db === this.db;
  }

  async selectDeks(where: ReturnType<typeof eq>, db: PgDb = this.readDb): Promise<DekRow[]> {
    const rows = await this.run(
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
      !this.isStoreDb(db),
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

  async selectKeks(ids: readonly string[], db: PgDb = this.readDb): Promise<Map<string, KekRow>> {
    if (ids.length === 0) return new Map();
    const rows = await this.run(
      () =>
        db
          .select()
          .from(byokKeks)
          .where(inArray(byokKeks.id, [...ids])),
      !this.isStoreDb(db),
    );
    return new Map(rows.map((r) => [r.id, r as KekRow]));
  }

  /** Active KEKs of a tenant (BYOK) or none (platform mode), plus tenant state. */
  async tenantKeks(
    tenantId: string,
    db: AnyPgDatabase = this.writeDb,
  ): Promise<{ mode: string; state: string; keks: KekRow[] } | undefined> {
    const inTx = !this.isStoreDb(db);
    const [t] = await this.run(
      () => asPgDb(db).select().from(byokTenants).where(eq(byokTenants.tenantId, tenantId)),
      inTx,
    );
    if (t === undefined) return undefined;
    const keks = await this.run(
      () =>
        db
          .select()
          .from(byokKeks)
          .where(and(eq(byokKeks.tenantId, tenantId), eq(byokKeks.state, 'active'))),
      inTx,
    );
    return { mode: t.mode, state: t.state, keks: keks as KekRow[] };
  }
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
