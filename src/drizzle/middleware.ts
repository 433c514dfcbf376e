// One file: withEncryption's dialect, session, transaction and prepared-query hooks share one query context.
import { AsyncLocalStorage } from 'node:async_hooks';
import { Column, is, Param, Placeholder, SQL, StringChunk } from 'drizzle-orm';
import { ByokConfigError, DecryptionFailedError, TenantMismatchError } from '../errors.ts';
import type { DekEntry } from '../keys/cache.ts';
import { type AnyPgDatabase, type Keyring, keysOf, isKeyring } from '../keys/keyring.ts';
import {
  instrumentBlindWrites,
  isBlindPending,
  resolveBlindParams,
  rewriteBlindLookups,
  translateBlindError,
} from './blind-index.ts';
import {
  type BuildContext,
  checkReadTenant,
  encryptedState,
  inBuildContext,
  openFor,
  type QueryContext,
  sealFor,
} from './columns.ts';
import { columnTable, instrumentInsertLayout, placeholderName } from './chunks.ts';
import { guardSql, installGuard } from './guard.ts';
import { PendingRead, PendingWrite } from './placeholders.ts';
import { assertPgDatabase } from '../store/pg.ts';
import { type RlsOptions, rlsStatements } from './rls.ts';
import { wrappedWith } from './blind-index.ts';
import type { RlsConfig } from './rls.ts';
import { assertTenantId, scopeStorage } from '../scope.ts';
import { nestedSql } from './sql-walk.ts';
import {
  checkTenantColumn,
  collectChecks,
  instrumentCount,
  instrumentTenantIsolation,
  runChecks,
  SCOPE_PLACEHOLDER,
  type TenantCheck,
} from './tenant-isolation.ts';

export interface WithEncryptionOptions {
  /**
   * The tenant column, by database name (`'tenant_id'`) or property name (`'tenantId'`). When set:
   * - inside `withTenant(t)`, every query on a table that has this column reads, updates, deletes,
   *   upserts and copies only tenant `t`'s rows (a bound-parameter predicate on every table reference:
   *   FROM, joins, subqueries, CTEs, set operations, `$count`, relational queries at every level);
   * - every row written gets tenant `t`, or is refused with `TenantMismatchError`;
   * - each inserted row's encrypted values are encrypted under that row's tenant (batches across
   *   tenants work in `withAnyTenant`, which turns the predicate off).
   * With a schema given to `drizzle(...)`, every table with encrypted columns must have the column
   * (else `ByokConfigError` listing the candidates). Default: none (the tenant comes from
   * `withTenant` only and queries are not scoped).
   */
  tenantColumn?: string;
  /**
   * Database-enforced isolation (PostgreSQL row-level security) in addition to the query scoping:
   * the middleware runs every query inside `withTenant(t)` in a transaction that has set
   * `set_config(rls.setting, t, true)`, which the policies from `tenantPolicy(...)` compare with.
   * Covers raw `db.execute(sql...)` too. See docs/security.md. Default: off.
   */
  rls?: RlsOptions | boolean;
}

const WRAPPED = Symbol.for('drizzle-byok:wrapped');

interface MutableDb {
  dialect: {
    sqlToQuery: (sql: SQL, invokeSource?: unknown) => Query;
    _sqlToQuery?: (sql: SQL) => Query;
    [WRAPPED]?: Keyring;
  };
  session: Session;
}
interface Query {
  sql: string;
  params: unknown[];
  typings?: unknown[];
}
interface Prepared {
  execute: (placeholderValues?: Record<string, unknown>, token?: unknown) => Promise<unknown>;
  all?: (placeholderValues?: Record<string, unknown>) => Promise<unknown>;
  values?: (placeholderValues?: Record<string, unknown>) => Promise<unknown>;
}
interface Session {
  prepareQuery: (query: Query, ...rest: unknown[]) => Prepared;
  transaction?: (cb: (tx: unknown) => Promise<unknown>, config?: unknown) => Promise<unknown>;
  [WRAPPED]?: Keyring;
}
interface Tx {
  session: Session;
  transaction: (cb: (tx: unknown) => Promise<unknown>) => Promise<unknown>;
  [WRAPPED]?: Keyring;
}

/**
 * Makes a Drizzle PostgreSQL database encrypt and decrypt its `encrypted.*` columns. Returns the
 * same instance, instrumented in place: its dialect (to refuse comparisons of encrypted columns
 * with plain values, and to find each inserted row's tenant), its session's prepared queries (to
 * finish encryption and decryption that wait on a data key), and every transaction and savepoint
 * session it creates.
 */
export function withEncryption<TDb extends AnyPgDatabase>(
  db: TDb,
  keyring: Keyring,
  options: WithEncryptionOptions = {},
): TDb {
  const d = db as unknown as MutableDb;
  if (d === null || typeof d !== 'object' || d.dialect === undefined || d.session === undefined) {
    throw new ByokConfigError(
      'withEncryption(db, keyring): db must be a Drizzle PostgreSQL database (drizzle(...))',
    );
  }
  assertPgDatabase(d, 'withEncryption(db, keyring)');
  if (keyring === undefined || !isKeyring(keyring)) {
    throw new ByokConfigError('withEncryption(db, keyring): keyring must come from createKeyring(...)');
  }
  const tenantColumn = options.tenantColumn;
  if (tenantColumn !== undefined && (typeof tenantColumn !== 'string' || tenantColumn.length === 0)) {
    throw new ByokConfigError(
      'withEncryption: tenantColumn must name a column (database or property name), e.g. "tenant_id"',
    );
  }
  const rls = rlsStatements(options.rls);
  if (rls !== undefined && tenantColumn === undefined) {
    throw new ByokConfigError('withEncryption: rls needs tenantColumn (the column the policies compare)');
  }
  if (tenantColumn !== undefined) checkTenantColumn(schemaTables(d), tenantColumn);
  // withReplicas(primary, replicas): the object shares the primary's dialect and session; every
  // replica is a Drizzle instance of its own and is instrumented the same way.
  const replicas = (d as { $replicas?: unknown }).$replicas;
  const targets: MutableDb[] = [d, ...(Array.isArray(replicas) ? (replicas as MutableDb[]) : [])];
  for (const t of targets) {
    if (t !== d) assertPgDatabase(t, 'withEncryption: a replica');
    const existing = t.dialect[WRAPPED];
    if (existing !== undefined) {
      if (existing !== keyring)
        throw new ByokConfigError('this Drizzle instance is already wrapped with another keyring');
      continue;
    }
    instrumentDialect(t.dialect, keyring, tenantColumn);
    instrumentSession(t.session, keyring, undefined, rls);
    if (tenantColumn !== undefined) instrumentCount(t, tenantColumn);
  }
  const primary = (d as { $primary?: MutableDb }).$primary;
  if (primary !== undefined && tenantColumn !== undefined) instrumentCount(primary, tenantColumn);
  return db;
}

/**
 * Tables of the schema given to `drizzle({ client, schema })` (0.45) or of the relations given to
 * `drizzle({ client, relations })` (1.0), if any.
 */
function schemaTables(d: MutableDb): unknown[] {
  const meta = (d as { _?: { fullSchema?: Record<string, unknown>; relations?: Record<string, unknown> } })._;
  if (meta?.fullSchema !== undefined) return Object.values(meta.fullSchema);
  if (meta?.relations !== undefined && meta.relations !== null && typeof meta.relations === 'object')
    return Object.values(meta.relations).map((r) => (r as { table?: unknown } | null)?.table);
  return [];
}

// -----------------------------------------------------------------------------------------------
// Dialect: SQL inspection before Drizzle maps parameters

function instrumentDialect(
  dialect: MutableDb['dialect'],
  keyring: Keyring,
  tenantColumn: string | undefined,
): void {
  // Every path that turns SQL into a query string and parameters: `sqlToQuery`, and on 1.0 also
  // `_sqlToQuery` (the tagged-template form selects use on drivers such as Bun SQL).
  const toQuery = (original: (sql: SQL, ...rest: unknown[]) => Query) =>
    function (this: unknown, sqlObj: SQL, ...rest: unknown[]): Query {
      const ctx: BuildContext = { keyring, rowTenants: [], cursor: 0 };
      // The fail-closed guard (allowlist, src/drizzle/guard.ts) first, then blind index lookups.
      guardSql(sqlObj);
      const restore = rewriteBlindLookups(sqlObj, tenantColumn);
      try {
        inspectChunks(sqlObj.queryChunks, ctx, tenantColumn);
        const query = inBuildContext(ctx, () => original.call(this, sqlObj, ...rest));
        if (tenantColumn !== undefined) attachTenantChecks(query, collectChecks(sqlObj));
        return query;
      } finally {
        restore();
      }
    };
  dialect.sqlToQuery = toQuery(dialect.sqlToQuery);
  if (typeof dialect._sqlToQuery === 'function') dialect._sqlToQuery = toQuery(dialect._sqlToQuery);
  instrumentInsertLayout(dialect, 'inner');
  if (tenantColumn !== undefined) instrumentTenantIsolation(dialect, tenantColumn);
  instrumentBlindWrites(dialect, keyring, tenantColumn);
  installGuard(dialect, tenantColumn);
  instrumentInsertLayout(dialect, 'outer');
  Object.defineProperty(dialect, WRAPPED, { value: keyring });
}

/** Walks the SQL tree once: records each inserted row's tenant when a tenant column is configured. */
function inspectChunks(
  chunks: readonly unknown[],
  ctx: BuildContext,
  tenantColumn: string | undefined,
): void {
  for (let i = 0; i < chunks.length; i++) {
    const c = chunks[i];
    if (c === null || typeof c !== 'object') continue;
    if (c instanceof StringChunk) continue;
    if (c instanceof SQL) {
      inspectChunks(c.queryChunks, ctx, tenantColumn);
    } else if (Array.isArray(c)) {
      if (tenantColumn !== undefined) collectRowTenant(c, ctx, tenantColumn);
      inspectChunks(c, ctx, tenantColumn);
    } else if (!is(c, Column)) {
      const inner = nestedSql(c);
      if (inner !== undefined) inspectChunks([inner], ctx, tenantColumn);
    }
  }
}

/**
 * An insert row is an array of Params of several columns (an `inArray` list has one column only).
 * When the row has the tenant column, the row's tenant must match the scope, and its encrypted
 * values are encrypted under the row's tenant.
 */
function collectRowTenant(row: readonly unknown[], ctx: BuildContext, tenantColumn: string): void {
  let tenant: Param | undefined;
  let encrypted = false;
  let firstEncoder: unknown;
  let columns = 0;
  for (const el of row) {
    if (!is(el, Param)) continue;
    const p = el as Param;
    if (columns === 0 || (columns === 1 && p.encoder !== firstEncoder)) {
      columns++;
      firstEncoder ??= p.encoder;
    }
    if (encryptedState(p.encoder) !== undefined) encrypted = true;
    else if (isTenantColumn(p.encoder, tenantColumn)) tenant = p;
  }
  if (columns < 2 || tenant === undefined || tenant.value === null || tenant.value === undefined) return;
  if (is(tenant.value, Placeholder)) return; // checked when the statement executes
  assertTenantId(tenant.value, `the tenant column ${tenantColumn} of a row`);
  const rowTenant = tenant.value;
  const scoped = scopeStorage.getStore()?.tenantId;
  if (typeof scoped === 'string' && scoped !== rowTenant) {
    throw new TenantMismatchError(
      `a row of tenant ${rowTenant} was written inside the scope of tenant ${scoped}`,
      {
        tenantId: scoped,
      },
    );
  }
  if (!encrypted) return;
  for (const el of row) {
    if (!is(el, Param)) continue;
    const p = el as Param;
    if (encryptedState(p.encoder) !== undefined && p.value !== null && !is(p.value, Placeholder)) {
      ctx.rowTenants.push({ value: p.value, tenantId: rowTenant });
    }
  }
}

/** The tenant column by database name, or by property name on its table. */
function isTenantColumn(encoder: unknown, tenantColumn: string): boolean {
  if (!is(encoder, Column)) return false;
  const c = encoder as Column;
  if (c.name === tenantColumn) return true;
  const columns = (columnTable(c) as Record<symbol, Record<string, Column> | undefined>)[
    Symbol.for('drizzle:Columns')
  ];
  return columns?.[tenantColumn] === c || columns?.[tenantColumn]?.name === c.name;
}

// -----------------------------------------------------------------------------------------------
// Tenant checks carried from the built SQL to execution

const TENANT_CHECKS: unique symbol = Symbol('drizzle-byok:query-tenant-checks') as never;

function attachTenantChecks(query: Query, checks: TenantCheck[]): void {
  if (checks.length > 0) Object.defineProperty(query, TENANT_CHECKS, { value: checks, enumerable: false });
}

/** What a statement needs from the scope it executes in: the scope tenant, write checks. */
interface TenantNeeds {
  readonly scope: boolean;
  readonly checks: readonly TenantCheck[];
}

function tenantNeeds(query: Query): TenantNeeds | undefined {
  const checks = (query as { [TENANT_CHECKS]?: TenantCheck[] })[TENANT_CHECKS] ?? [];
  let scope = false;
  for (const p of query.params) {
    const ph = is(p, Param) ? (p as Param).value : p;
    if (is(ph, Placeholder) && placeholderName(ph) === SCOPE_PLACEHOLDER) {
      scope = true;
      break;
    }
  }
  return scope || checks.length > 0 ? { scope, checks } : undefined;
}

/** Fills the scope tenant into the placeholder values and checks written tenants. */
function applyTenant(
  needs: TenantNeeds,
  placeholderValues: Record<string, unknown> | undefined,
): { values: Record<string, unknown>; rowTenants: Map<Param, string> | undefined } {
  const values = { ...placeholderValues };
  if (needs.scope) {
    const t = scopeStorage.getStore()?.tenantId;
    values[SCOPE_PLACEHOLDER] = typeof t === 'string' ? t : null;
  }
  return { values, rowTenants: runChecks(needs.checks, values) };
}

// -----------------------------------------------------------------------------------------------
// Session: prepared queries, transactions, savepoints

function instrumentSession(
  session: Session,
  keyring: Keyring,
  txDb: AnyPgDatabase | undefined,
  rls: RlsConfig | undefined,
): void {
  if (session[WRAPPED] !== undefined) return;
  Object.defineProperty(session, WRAPPED, { value: keyring });
  const prepareQuery = session.prepareQuery;
  const base = session;
  session.prepareQuery = function (this: Session, query: Query, ...rest: unknown[]): Prepared {
    const prepared = prepareQuery.call(this, query, ...rest);
    const reprepare = (params: unknown[]) => prepareQuery.call(this, { ...query, params }, ...rest);
    const rlsRun: RlsRun | undefined =
      rls === undefined
        ? undefined
        : {
            rls,
            setConfig: (tenant) =>
              prepareQuery
                .call(
                  base,
                  { sql: 'select set_config($1, $2, true)', params: [rls.setting, tenant] },
                  undefined,
                )
                .execute() as Promise<unknown>,
            inTransaction: (method, values, token) =>
              (base.transaction as NonNullable<Session['transaction']>)(async (tx) => {
                const inner = (tx as Tx).session.prepareQuery(query, ...rest);
                return (inner[method] as Prepared['execute']).call(
                  inner,
                  values as Record<string, unknown> | undefined,
                  token,
                );
              }),
          };
    return instrumentPrepared(prepared, query, reprepare, keyring, txDb, rlsRun, base);
  };
  const transaction = session.transaction;
  if (typeof transaction === 'function') {
    session.transaction = function (this: Session, cb, config) {
      return transaction.call(
        this,
        (tx: unknown) => {
          instrumentTransaction(tx as Tx, keyring, rls);
          if (txDb === undefined) keyring.openTransaction(tx as AnyPgDatabase, undefined);
          return txStorage.run({ tx: tx as AnyPgDatabase, session: (tx as Tx).session }, () => cb(tx));
        },
        config,
      );
    };
  }
}

function instrumentTransaction(tx: Tx, keyring: Keyring, rls: RlsConfig | undefined): void {
  instrumentSession(tx.session, keyring, tx as unknown as AnyPgDatabase, rls);
  if (tx[WRAPPED] !== undefined) return;
  Object.defineProperty(tx, WRAPPED, { value: keyring });
  const tenantColumn = wrappedTenantColumn(tx);
  if (tenantColumn !== undefined) instrumentCount(tx, tenantColumn);
  const transaction = tx.transaction;
  tx.transaction = function (this: Tx, cb) {
    let savepoint: AnyPgDatabase | undefined;
    return transaction
      .call(this, (inner: unknown) => {
        savepoint = inner as AnyPgDatabase;
        instrumentTransaction(inner as Tx, keyring, rls);
        keyring.openTransaction(savepoint, this as unknown as AnyPgDatabase);
        return txStorage.run({ tx: savepoint, session: (inner as Tx).session }, () => cb(inner));
      })
      .then(
        (r) => {
          // Released: keys the savepoint created now belong to the enclosing transaction.
          if (savepoint !== undefined) keyring.releaseTransaction(savepoint);
          rlsTenantOf.delete(this as unknown as object);
          return r;
        },
        (e) => {
          rlsTenantOf.delete(this as unknown as object);
          throw e;
        },
      );
  };
}

function wrappedTenantColumn(db: unknown): string | undefined {
  return wrappedWith(db as AnyPgDatabase)?.tenantColumn;
}

/** What a prepared query needs before it can run: pending encryptions and encrypted placeholders. */
function needsParams(params: readonly unknown[]): boolean {
  for (const p of params) {
    if (p instanceof PendingWrite || isBlindPending(p)) return true;
    if (p instanceof Param && p.value instanceof Placeholder && encryptedState(p.encoder) !== undefined)
      return true;
  }
  return false;
}

interface RlsRun {
  readonly rls: RlsConfig;
  /** Sets the tenant setting for the rest of the current transaction (on this session). */
  setConfig(tenant: string): Promise<unknown>;
  /** Outside a transaction: runs the statement in one of its own, after setting the tenant. */
  inTransaction(method: 'execute' | 'all' | 'values', values: unknown, token: unknown): Promise<unknown>;
}

/** The tenant setting last made in each transaction or savepoint (RLS mode). */
const rlsTenantOf = new WeakMap<object, string>();

/**
 * The innermost transaction (or savepoint) the current code runs in, with its session. Savepoints
 * share their transaction's session, and a node-postgres `Client`'s transactions share the
 * database's: a statement belongs to this transaction when it runs on the same session.
 */
const txStorage = new AsyncLocalStorage<{ tx: AnyPgDatabase; session: Session }>();

/** The transaction a statement prepared on `session` runs in, if any. */
function transactionOf(session: Session, bound: AnyPgDatabase | undefined): AnyPgDatabase | undefined {
  const active = txStorage.getStore();
  return active !== undefined && active.session === session ? active.tx : bound;
}

function instrumentPrepared(
  prepared: Prepared,
  query: Query,
  reprepare: (params: unknown[]) => Prepared,
  keyring: Keyring,
  txDb: AnyPgDatabase | undefined,
  rlsRun: RlsRun | undefined,
  session: Session,
): Prepared {
  const needs = needsParams(query.params);
  const tenant = tenantNeeds(query);
  for (const method of ['execute', 'all', 'values'] as const) {
    const original = prepared[method];
    if (typeof original !== 'function') continue;
    prepared[method] = function (
      this: Prepared,
      placeholderValues?: Record<string, unknown>,
      token?: unknown,
    ) {
      const tx = transactionOf(session, txDb);
      if (rlsRun !== undefined) {
        const t = scopeStorage.getStore()?.tenantId;
        if (typeof t === 'string') {
          if (tx === undefined) return rlsRun.inTransaction(method, placeholderValues, token);
          if (rlsTenantOf.get(tx) !== t) {
            return rlsRun.setConfig(t).then(() => {
              rlsTenantOf.set(tx, t);
              return (this[method] as Prepared['execute']).call(this, placeholderValues, token);
            });
          }
        }
      }
      return runQuery(
        keyring,
        async (ctx) => {
          let target: Prepared = this;
          let values = placeholderValues;
          let rowTenants: Map<Param, string> | undefined;
          if (tenant !== undefined) ({ values, rowTenants } = applyTenant(tenant, placeholderValues));
          if (needs) {
            target = reprepare(
              await resolveParams(keyring, query.params, values ?? {}, ctx.txDb, rowTenants),
            );
            values = {};
          }
          const fn = target === this ? original : (target[method] as typeof original);
          let result: unknown;
          try {
            result = await fn.call(target, values, token);
          } catch (e) {
            throw translateBlindError(e);
          }
          return ctx.pending.length === 0 ? result : resolveReads(keyring, ctx, result);
        },
        tx,
      );
    } as Prepared['execute'];
  }
  return prepared;
}

/** Runs `fn` in a fresh query context that inherits the caller's tenant scope. */
export function runQuery<T>(
  keyring: Keyring,
  fn: (ctx: QueryContext) => Promise<T>,
  txDb?: AnyPgDatabase,
): Promise<T> {
  const outer = scopeStorage.getStore() as Partial<QueryContext> | undefined;
  const ctx: QueryContext = {
    keyring,
    tenantId: outer === undefined ? null : (outer.tenantId ?? null),
    scoped: outer !== undefined && (outer.scoped ?? true),
    pending: [],
    now: Date.now(),
    txDb: txDb ?? outer?.txDb,
  };
  return scopeStorage.run(ctx, () => fn(ctx));
}

/**
 * Fills placeholders (encrypting encrypted ones) and finishes pending encryptions. Never mutates
 * `params`. `rowTenants`: the tenant of encrypted placeholders whose row has a tenant placeholder.
 */
async function resolveParams(
  keyring: Keyring,
  params: readonly unknown[],
  values: Record<string, unknown>,
  txDb: AnyPgDatabase | undefined,
  rowTenants?: Map<Param, string>,
): Promise<unknown[]> {
  const build: BuildContext = { keyring, rowTenants: [], cursor: 0 };
  const filled = inBuildContext(build, () =>
    params.map((p) => {
      if (p instanceof Placeholder) {
        const name = placeholderName(p);
        if (!(name in values)) throw new ByokConfigError(`no value for placeholder "${name}"`);
        return values[name];
      }
      if (p instanceof Param && p.value instanceof Placeholder) {
        const name = placeholderName(p.value);
        if (!(name in values)) throw new ByokConfigError(`no value for placeholder "${name}"`);
        const v = values[name];
        if (v === null || v === undefined) return null;
        const rowTenant = rowTenants?.get(p);
        if (rowTenant === undefined) return p.encoder.mapToDriverValue(v);
        build.rowTenants.length = 0;
        build.rowTenants.push({ value: v, tenantId: rowTenant });
        build.cursor = 0;
        return p.encoder.mapToDriverValue(v);
      }
      return p;
    }),
  );
  await resolveBlindParams(keyring, filled, values, txDb);
  const tenants = new Set<string>();
  for (const p of filled) if (p instanceof PendingWrite) tenants.add(p.tenantId);
  if (tenants.size === 0) return filled;
  return withLiveKeys(
    [...tenants],
    (t) => keysOf(keyring).getActiveDek(t, txDb),
    (entries) => {
      for (let i = 0; i < filled.length; i++) {
        const p = filled[i];
        if (p instanceof PendingWrite)
          filled[i] = sealFor(keyring, p.column, entries.get(p.tenantId)!, p.plaintext());
      }
      return filled;
    },
  );
}

/**
 * Loads the data keys for `keys`, loads again any that was evicted (cache cleared, revocation) while
 * the others were still loading, and runs `use` in the same synchronous step as the check that all
 * are live: no await lies between them, so no key can be evicted (and zeroed) before its use. After
 * a few rounds of evictions `use` runs anyway and the evicted key's use fails with a retryable error.
 */
async function withLiveKeys<T>(
  keys: readonly string[],
  load: (key: string) => Promise<DekEntry>,
  use: (entries: ReadonlyMap<string, DekEntry>) => T,
): Promise<T> {
  const entries = new Map(await Promise.all(keys.map(async (k) => [k, await load(k)] as const)));
  for (let round = 0; round < 5; round++) {
    const stale = keys.filter((k) => entries.get(k)!.evicted);
    if (stale.length === 0) break;
    for (const [k, e] of await Promise.all(stale.map(async (k) => [k, await load(k)] as const)))
      entries.set(k, e);
  }
  return use(entries);
}

/** Loads the data keys pending reads need (one batch), decrypts, and swaps placeholders for values. */
export async function resolveReads<T>(keyring: Keyring, ctx: QueryContext, result: T): Promise<T> {
  const pending = ctx.pending.splice(0);
  const labels = new Map<string, string>();
  for (const p of pending) if (!labels.has(p.dekId)) labels.set(p.dekId, p.column.label);
  const keys = keysOf(keyring);
  // In a tenant's scope only its own data keys are loaded: any other id is the one decryption error.
  const load = (id: string) =>
    keys.getDekForRead(id, ctx.tenantId, ctx.txDb).catch((e: unknown) => {
      if (!(e instanceof DecryptionFailedError)) throw e;
      throw new DecryptionFailedError({
        column: labels.get(id)!,
        ...(ctx.tenantId ? { tenantId: ctx.tenantId } : {}),
      });
    });
  return withLiveKeys([...labels.keys()], load, (entries) => {
    for (const p of pending) {
      const entry = entries.get(p.dekId)!;
      checkReadTenant(ctx, p.column, entry);
      p.resolve(openFor(keyring, p.column, entry, p.bytes));
    }
    return replacePending(result) as T;
  });
}

function replacePending(v: unknown): unknown {
  if (v === null || typeof v !== 'object') return v;
  if (v instanceof PendingRead) return v.value();
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      const x = v[i];
      if (x !== null && typeof x === 'object') v[i] = replacePending(x);
    }
    return v;
  }
  const proto = Object.getPrototypeOf(v);
  if (proto !== Object.prototype && proto !== null) return v;
  const o = v as Record<string, unknown>;
  for (const k in o) {
    const x = o[k];
    if (x !== null && typeof x === 'object') o[k] = replacePending(x);
  }
  return v;
}
