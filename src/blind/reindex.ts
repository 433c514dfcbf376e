import { and, asc, eq, type SQL, sql } from 'drizzle-orm';
import { getTableConfig, type PgColumn, type PgTable } from 'drizzle-orm/pg-core';
import { blindValue, encodeParams, MAX_VERSION } from '../crypto/blind-hmac.ts';
import { toBytes } from '../crypto/envelope.ts';
import { ByokConfigError, ByokError, TenantShreddedError } from '../errors.ts';
import { assertTenantId, withTenant } from '../scope.ts';
import { type AnyPgDatabase, asPgDb, type PgDb, type Keyring, keysOf } from '../keys/keyring.ts';
import { rawCiphertext } from '../drizzle/guard.ts';
import { wrappedWith } from '../drizzle/middleware.ts';
import { type BlindIndexState, blindState, indexInput, rowsOf } from './column.ts';
import { type IndexKeyState, type IndexVersion, registryFor, store } from './keys.ts';
import { byokBlindIndexKeys } from '../store/schema-blind-index.ts';

/**
 * Maintenance of blind indexes, per tenant: backfill (index rows written before the index existed:
 * the retrofit path) and rotation of the index key (a new key version, written by every instance
 * once it sees it, looked up together with the old one until a re-index pass has moved every row).
 *
 * Both walk the table by keyset pagination on a unique key (the primary key by default) in batches,
 * decrypt the source column, and write the index column with a guarded UPDATE: a row is rewritten
 * only if its index and source are still what the pass read, so a concurrent write always wins.
 * A pass records its position (`progress`) in `byok.blind_index_keys` after every batch; a pass
 * interrupted (crash, deploy) resumes there. Run it from one process per tenant at a time (the
 * rotation's start and finish take an advisory lock; concurrent passes are safe but redundant).
 */
export interface BlindIndexTarget {
  /** The blind index column (`users.emailIdx`). */
  index: PgColumn;
  /** The tenant column. Default: the column named by `withEncryption`'s `tenantColumn`. */
  tenantColumn?: PgColumn;
  /** A unique, not null, orderable column to walk the table by. Default: the single-column primary key. */
  key?: PgColumn;
  /** Rows per batch. Default 500. */
  batchSize?: number;
}

export interface ReindexPassReport {
  /** Rows read. */
  readonly scanned: number;
  /** Rows whose index value was written. */
  readonly updated: number;
}

export interface BackfillReport {
  readonly tenants: readonly { tenantId: string; version: number; scanned: number; updated: number }[];
  /** Tenants whose rows cannot be indexed any more: they were crypto-shredded. */
  readonly shredded: readonly string[];
}

export interface RotationReport {
  readonly tenantId: string;
  readonly from: number;
  readonly to: number;
  /** Each pass: the first one, then the sweeps after the grace period. */
  readonly passes: readonly ReindexPassReport[];
  /** Whether this call resumed a rotation that was already under way. */
  readonly resumed: boolean;
}

interface Resolved {
  readonly index: BlindIndexState;
  readonly table: PgTable;
  readonly indexCol: PgColumn;
  readonly sourceCol: PgColumn;
  readonly tenantCol: PgColumn;
  readonly keyCol: PgColumn;
  readonly keyType: string;
  readonly sourceType: string;
  readonly tenantColumnName: string;
  readonly tableSql: SQL;
  readonly batchSize: number;
}

const SERIAL: Record<string, string> = { serial: 'integer', bigserial: 'bigint', smallserial: 'smallint' };

function resolve(db: AnyPgDatabase, t: BlindIndexTarget, what: string): Resolved {
  const index = blindState(t?.index);
  if (index === undefined)
    throw new ByokConfigError(`${what}: options.index must be a blindIndex(...) column`);
  const wrapped = wrappedWith(db);
  if (wrapped === undefined)
    throw new ByokConfigError(`${what}: db must be wrapped by withEncryption(db, keyring)`);
  const table = index.table;
  const cfg = getTableConfig(table);
  const src = index.source();
  let tenantCol = t.tenantColumn;
  if (tenantCol === undefined && wrapped.tenantColumn !== undefined)
    tenantCol = cfg.columns.find((c) => c.name === wrapped.tenantColumn);
  if (tenantCol === undefined) {
    throw new ByokConfigError(
      `${what}: ${index.label} needs the table's tenant column (options.tenantColumn, or withEncryption's tenantColumn)`,
    );
  }
  let keyCol = t.key;
  if (keyCol === undefined) {
    const primary = cfg.columns.filter((c) => c.primary);
    const composite = cfg.primaryKeys.flatMap((pk) => pk.columns);
    const keys = primary.length > 0 ? primary : composite;
    if (keys.length !== 1) {
      throw new ByokConfigError(
        `${what}: ${index.tableName} has no single-column primary key: pass options.key (a unique, not null column)`,
      );
    }
    keyCol = keys[0];
  }
  const batchSize = t.batchSize ?? 500;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1 || batchSize > 10_000)
    throw new ByokConfigError(`${what}: batchSize must be an integer from 1 to 10,000`);
  const keySqlType = keyCol!.getSQLType();
  return {
    index,
    table,
    indexCol: t.index,
    sourceCol: src.column,
    tenantCol,
    keyCol: keyCol!,
    keyType: SERIAL[keySqlType] ?? keySqlType,
    sourceType: src.state.storage === 'text' ? 'text' : 'bytea',
    tenantColumnName: tenantCol.name,
    tableSql: sql`${sql.identifier(index.schema)}.${sql.identifier(index.tableName)}`,
    batchSize,
  };
}

function keyringOf(db: AnyPgDatabase): Keyring {
  return wrappedWith(db)!.keyring;
}

function loadState(r: Resolved, keyring: Keyring, tenantId: string, create: boolean) {
  const reg = registryFor(keyring);
  reg.drop(tenantId, r.index.context);
  return reg.load(tenantId, r.index.owner(r.tenantColumnName), { create });
}

/**
 * One re-index pass over the tenant's rows: every row whose index value is not the value under
 * `version` (missing, older version, stale) gets it. Resumes from the stored checkpoint when `resume`.
 */
async function reindexPass(
  database: AnyPgDatabase,
  keyring: Keyring,
  r: Resolved,
  st: IndexKeyState,
  version: IndexVersion,
  resume: boolean,
): Promise<ReindexPassReport> {
  const db = asPgDb(database);
  const tenantId = st.tenantId;
  const reg = registryFor(keyring);
  let cursor: string | undefined;
  if (resume) {
    const [row] = await store(() =>
      db
        .select({ progress: byokBlindIndexKeys.progress })
        .from(byokBlindIndexKeys)
        .where(versionWhere(tenantId, r.index.context, version.version)),
    );
    const p = row?.progress as { table?: unknown; cursor?: unknown } | null | undefined;
    if (p?.table === `${r.index.schema}.${r.index.tableName}` && typeof p.cursor === 'string')
      cursor = p.cursor;
  }
  let scanned = 0;
  let updated = 0;
  for (;;) {
    const after = cursor;
    const rows = (await withTenant(tenantId, async () => {
      return await db
        .select({
          k: sql<string>`${r.keyCol}::text`,
          v: r.sourceCol,
          raw: rawCiphertext(r.sourceCol) as SQL<unknown>,
          idx: r.indexCol,
        })
        .from(r.table)
        .where(
          and(
            eq(r.tenantCol, tenantId),
            after === undefined ? undefined : sql`${r.keyCol} > ${after}::text::${sql.raw(r.keyType)}`,
          ),
        )
        .orderBy(asc(r.keyCol))
        .limit(r.batchSize);
    })) as { k: string; v: unknown; raw: unknown; idx: unknown }[];
    if (rows.length === 0) break;
    scanned += rows.length;
    // Per batch: a pass can outlive its data key's cache entry (max age, eviction), which destroys
    // the index key; asking again reloads the data key through its KEK when needed.
    const key = await reg.key(st, version);
    const changes: SQL[] = [];
    for (const row of rows) {
      const want =
        row.v === null || row.v === undefined
          ? null
          : blindValue(
              key,
              version.version,
              indexInput(r.index, version.params, row.v),
              version.params.bytes,
            );
      const have = row.idx === null || row.idx === undefined ? null : (toBytes(row.idx) ?? null);
      if (want === null ? have === null : have !== null && want.equals(have)) continue;
      changes.push(
        sql`(${row.k}::text::${sql.raw(r.keyType)}, ${have}::bytea, ${row.raw}::${sql.raw(r.sourceType)}, ${want}::bytea)`,
      );
    }
    if (changes.length > 0) {
      const idx = sql.identifier(r.index.name);
      const src = sql.identifier(r.index.source().name);
      const k = sql.identifier(r.keyCol.name);
      const res = await store(() =>
        db.execute(
          sql`update ${r.tableSql} as t set ${idx} = v.n from (values ${sql.join(changes, sql`, `)}) as v(k, o, r, n)
            where t.${k} = v.k and t.${sql.identifier(r.tenantColumnName)} = ${tenantId}
            and t.${idx} is not distinct from v.o and t.${src} is not distinct from v.r returning 1 as x`,
        ),
      );
      updated += rowsOf(res).length;
    }
    cursor = rows[rows.length - 1]!.k;
    await store(() =>
      db
        .update(byokBlindIndexKeys)
        .set({
          progress: { table: `${r.index.schema}.${r.index.tableName}`, cursor },
          updatedAt: new Date(),
        })
        .where(versionWhere(tenantId, r.index.context, version.version)),
    );
    if (rows.length < r.batchSize) break;
  }
  return { scanned, updated };
}

function versionWhere(tenantId: string, context: string, version: number) {
  const k = byokBlindIndexKeys;
  return and(eq(k.tenantId, tenantId), eq(k.context, context), eq(k.version, version));
}

/** Rows of the tenant whose index is missing or not under `version`. */
async function stragglers(
  database: AnyPgDatabase,
  r: Resolved,
  tenantId: string,
  version: number,
): Promise<number> {
  const db = asPgDb(database);
  const idx = sql.identifier(r.index.name);
  const src = sql.identifier(r.index.source().name);
  const res = await store(() =>
    db.execute(
      sql`select count(*)::int as n from ${r.tableSql} where ${sql.identifier(r.tenantColumnName)} = ${tenantId}
        and ((${src} is not null and ${idx} is null)
          or (${idx} is not null and (length(${idx}) = 0 or get_byte(${idx}, 0) <> ${version}::int)))`,
    ),
  );
  return Number(rowsOf<{ n: number | string }>(res)[0]?.n ?? 0);
}

/**
 * Builds the index for rows written before it existed (the retrofit path), per tenant: every row of
 * the tenant gets its index value under the active key version, then the version is marked built
 * and lookups are allowed. `tenants`: default every tenant that has a row with a source value and no
 * index value, plus tenants whose index is not marked built. Safe while the app writes.
 */
export async function backfillBlindIndex(
  database: AnyPgDatabase,
  options: BlindIndexTarget & { tenants?: readonly string[] },
): Promise<BackfillReport> {
  const db = asPgDb(database);
  const r = resolve(db, options, 'backfillBlindIndex');
  const keyring = keyringOf(db);
  let tenants = options.tenants;
  if (tenants === undefined) {
    const idx = sql.identifier(r.index.name);
    const src = sql.identifier(r.index.source().name);
    const t = sql.identifier(r.tenantColumnName);
    const need = rowsOf<{ t: string }>(
      await store(() =>
        db.execute(
          sql`select distinct ${t}::text as t from ${r.tableSql} where ${src} is not null and ${idx} is null`,
        ),
      ),
    ).map((x) => x.t);
    const unbuilt = (
      await store(() =>
        db
          .select({ t: byokBlindIndexKeys.tenantId })
          .from(byokBlindIndexKeys)
          .where(
            and(
              eq(byokBlindIndexKeys.context, r.index.context),
              eq(byokBlindIndexKeys.state, 'active'),
              eq(byokBlindIndexKeys.built, false),
            ),
          ),
      )
    ).map((x) => x.t);
    tenants = [...new Set([...need, ...unbuilt])].sort();
  }
  const out: { tenantId: string; version: number; scanned: number; updated: number }[] = [];
  const shredded: string[] = [];
  for (const tenantId of tenants) {
    assertTenantId(tenantId);
    let st: IndexKeyState;
    try {
      st = (await loadState(r, keyring, tenantId, true))!;
    } catch (e) {
      if (e instanceof TenantShreddedError) {
        shredded.push(tenantId);
        continue;
      }
      throw e;
    }
    let scanned = 0;
    let updated = 0;
    for (let pass = 0; ; pass++) {
      const rep = await reindexPass(db, keyring, r, st, st.active, pass === 0);
      scanned += rep.scanned;
      updated += rep.updated;
      if ((await stragglers(db, r, tenantId, st.active.version)) === 0) break;
      if (pass >= 4) {
        throw new ByokError(
          `backfill of ${r.index.label} for tenant ${tenantId}: rows keep appearing without an index value ` +
            '(is an instance running code without the blind index?)',
          { tenantId },
        );
      }
    }
    await store(() =>
      db
        .update(byokBlindIndexKeys)
        .set({ built: true, progress: null, updatedAt: new Date() })
        .where(versionWhere(tenantId, r.index.context, st.active.version)),
    );
    registryFor(keyring).drop(tenantId, r.index.context);
    out.push({ tenantId, version: st.active.version, scanned, updated });
  }
  return { tenants: out, shredded };
}

/** Progress of a rotation, given to `onProgress` (awaited) at each step. */
export type RotationEvent =
  | { readonly phase: 'pending'; readonly from: number; readonly to: number }
  | { readonly phase: 'promoting'; readonly from: number; readonly to: number }
  | { readonly phase: 'promoted'; readonly from: number; readonly to: number }
  | {
      readonly phase: 'pass' | 'sweep';
      readonly from: number;
      readonly to: number;
      readonly report: ReindexPassReport;
    }
  | { readonly phase: 'retired'; readonly from: number; readonly to: number };

/**
 * Rotates a tenant's index key to a new version, derived from the tenant's current active data key
 * with the index's current normalization and length. Expand, migrate, contract, so that no lookup
 * misses a row on any instance, even one whose cached key versions are up to `graceMs` old:
 *
 * 1. `pending`: the new version is looked up (with the old one) but not written yet; wait `graceMs`
 *    so that every instance looks up both before any row has the new version.
 * 2. `promoted`: the new version is written, the old one only looked up (`retiring`); a re-index
 *    pass moves every row to the new version; wait `graceMs` (no instance writes the old version
 *    after that), then sweep the rows written under the old version meanwhile, until none is left.
 * 3. `retired`: the old version is no longer computed.
 *
 * Call it again after a failure: it resumes where it stopped (phase, and the pass's checkpoint).
 * `graceMs`: default the keyring's blind index `stateMaxAgeMs` + 30 s; it must exceed the longest
 * time an instance can act on old key versions (its cached state's max age plus the longest write
 * transaction). A rotation takes at least twice `graceMs`.
 *
 * Unique constraints on the index hold in phase 1; in phase 2 two rows with the same value can be
 * written under different versions, and the re-index then fails on them with `UniqueViolationError`
 * (resolve the duplicate, and call again).
 */
export async function rotateBlindIndex(
  database: AnyPgDatabase,
  options: BlindIndexTarget & {
    tenantId: string;
    graceMs?: number;
    onProgress?: (event: RotationEvent) => void | Promise<void>;
  },
): Promise<RotationReport> {
  const db = asPgDb(database);
  const r = resolve(db, options, 'rotateBlindIndex');
  const keyring = keyringOf(db);
  const tenantId = options.tenantId;
  assertTenantId(tenantId);
  const reg = registryFor(keyring);
  const graceMs = options.graceMs ?? reg.maxAgeMs + 30_000;
  if (!Number.isFinite(graceMs) || graceMs < 0)
    throw new ByokConfigError('rotateBlindIndex: graceMs must be >= 0');
  const context = r.index.context;
  const k = byokBlindIndexKeys;
  const progress = async (e: RotationEvent) => {
    await options.onProgress?.(e);
  };
  const locked = <T>(fn: (tx: PgDb) => Promise<T>) =>
    store(() =>
      asPgDb(keyring.db).transaction(async (tx) => {
        await tx.execute(
          sql`select pg_advisory_xact_lock(hashtextextended(${`byok:blind:${tenantId}:${context}`}, 0))`,
        );
        return fn(tx as unknown as PgDb);
      }),
    );
  const waitSince = async (version: number, column: typeof k.createdAt | typeof k.activatedAt) => {
    const [row] = await store(() =>
      db
        .select({ ms: sql<number>`extract(epoch from (now() - ${column})) * 1000`.mapWith(Number) })
        .from(k)
        .where(versionWhere(tenantId, context, version)),
    );
    const wait = graceMs - (row?.ms ?? 0);
    if (wait > 0) await new Promise((res) => setTimeout(res, wait));
  };

  // Phase 1: the new version exists, looked up but not written (or resume where a previous call stopped).
  await loadState(r, keyring, tenantId, true);
  const dek = await keysOf(keyring).getActiveDek(tenantId);
  const started = await locked(async (tx) => {
    const rows = await tx
      .select({ version: k.version, state: k.state })
      .from(k)
      .where(and(eq(k.tenantId, tenantId), eq(k.context, context)));
    const active = rows.find((x) => x.state === 'active')!;
    const pending = rows.find((x) => x.state === 'pending');
    const retiring = rows.find((x) => x.state === 'retiring');
    if (pending !== undefined) return { from: active.version, to: pending.version, phase: 1, resumed: true };
    if (retiring !== undefined)
      return { from: retiring.version, to: active.version, phase: 2, resumed: true };
    const next = Math.max(...rows.map((x) => x.version)) + 1;
    if (next > MAX_VERSION) {
      throw new ByokError(
        `blind index ${r.index.label} of tenant ${tenantId} has used all ${MAX_VERSION} key versions`,
        {
          tenantId,
        },
      );
    }
    await tx.insert(k).values({
      tenantId,
      context,
      version: next,
      dekVersion: dek.version,
      state: 'pending',
      params: encodeParams(r.index.params),
      built: false,
    });
    return { from: active.version, to: next, phase: 1, resumed: false };
  });
  const { from, to } = started;
  if (started.phase === 1) {
    await announce(keyring, tenantId, context);
    await progress({ phase: 'pending', from, to });
    await waitSince(to, k.createdAt);
    await progress({ phase: 'promoting', from, to });
    // Phase 2: the new version is written, the old one still looked up.
    await locked(async (tx) => {
      await tx
        .update(k)
        .set({ state: 'retiring', updatedAt: new Date() })
        .where(versionWhere(tenantId, context, from));
      await tx
        .update(k)
        .set({ state: 'active', activatedAt: sql`now()`, updatedAt: new Date() })
        .where(versionWhere(tenantId, context, to));
    });
    await announce(keyring, tenantId, context);
    await progress({ phase: 'promoted', from, to });
  }
  const passes: ReindexPassReport[] = [];
  const st = (await loadState(r, keyring, tenantId, false))!;
  const target = st.live.find((v) => v.version === to)!;
  const first = await reindexPass(db, keyring, r, st, target, started.resumed && started.phase === 2);
  passes.push(first);
  await progress({ phase: 'pass', from, to, report: first });
  await waitSince(to, k.activatedAt);
  for (let sweep = 0; ; sweep++) {
    const rep = await reindexPass(db, keyring, r, st, target, false);
    passes.push(rep);
    await progress({ phase: 'sweep', from, to, report: rep });
    if ((await stragglers(db, r, tenantId, to)) === 0) break;
    if (sweep >= 4) {
      throw new ByokError(
        `rotation of ${r.index.label} for tenant ${tenantId}: rows keep being written under an old index key ` +
          'version after the grace period (is an instance caching key versions longer than graceMs?)',
        { tenantId },
      );
    }
  }

  // Phase 3: the old version is retired; lookups compute the new one only.
  await locked(async (tx) => {
    await tx
      .update(k)
      .set({ state: 'retired', progress: null, updatedAt: new Date() })
      .where(and(eq(k.tenantId, tenantId), eq(k.context, context), eq(k.state, 'retiring')));
    await tx
      .update(k)
      .set({ built: true, progress: null, updatedAt: new Date() })
      .where(versionWhere(tenantId, context, to));
  });
  await announce(keyring, tenantId, context);
  await progress({ phase: 'retired', from, to });
  return { tenantId, from, to, passes, resumed: started.resumed };
}

/** Drops the cached key versions here, and tells other instances (LISTEN/NOTIFY) to drop theirs. */
async function announce(keyring: Keyring, tenantId: string, context: string): Promise<void> {
  registryFor(keyring).drop(tenantId, context);
  await keyring.notify(keyring.db, tenantId, 'blind-index-rotation').catch(() => undefined);
}

export interface BlindIndexStatus {
  readonly tenantId: string;
  readonly context: string;
  readonly versions: readonly {
    version: number;
    dekVersion: number;
    state: string;
    params: string;
    built: boolean;
    createdAt: Date;
    activatedAt: Date | null;
  }[];
  /** Whether the code's options differ from the active version's (they apply at the next rotation). */
  readonly optionsChanged: boolean;
}

/** Key versions of a tenant's index (no secrets). */
export async function blindIndexStatus(
  database: AnyPgDatabase,
  options: { index: PgColumn; tenantId: string },
): Promise<BlindIndexStatus> {
  const db = asPgDb(database);
  const index = blindState(options.index);
  if (index === undefined)
    throw new ByokConfigError('blindIndexStatus: options.index must be a blindIndex(...) column');
  const k = byokBlindIndexKeys;
  const rows = await store(() =>
    db
      .select({
        version: k.version,
        dekVersion: k.dekVersion,
        state: k.state,
        params: k.params,
        built: k.built,
        createdAt: k.createdAt,
        activatedAt: k.activatedAt,
      })
      .from(k)
      .where(and(eq(k.tenantId, options.tenantId), eq(k.context, index.context)))
      .orderBy(asc(k.version)),
  );
  const active = rows.find((x) => x.state === 'active');
  return {
    tenantId: options.tenantId,
    context: index.context,
    versions: rows,
    optionsChanged: active !== undefined && active.params !== encodeParams(index.params),
  };
}
