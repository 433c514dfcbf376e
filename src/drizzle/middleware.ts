import { AsyncLocalStorage } from 'node:async_hooks';
import { Param, Placeholder, type SQL } from 'drizzle-orm';
import { ByokConfigError, DecryptionFailedError } from '../errors.ts';
import type { DekEntry } from '../keys/cache.ts';
import { type AnyPgDatabase, type Keyring, keysOf, isKeyring } from '../keys/keyring.ts';
import { scopeStorage } from '../scope.ts';
import { assertPgDatabase } from '../store/pg.ts';
import { placeholderName } from './chunks.ts';
import {
  type BuildContext,
  checkReadTenant,
  encryptedState,
  inBuildContext,
  openFor,
  type QueryContext,
  sealFor,
} from './columns.ts';
import {
  type BuiltQuery,
  type ExecutionHooks,
  type PipelineEnv,
  type QueryPlugin,
  type SqlVisitor,
  walkSql,
} from './pipeline.ts';
import { PendingRead, PendingWrite } from './placeholders.ts';
import { type RlsConfig, type RlsOptions, rlsStatements } from './rls.ts';
import { checkTenantColumn } from './tenant-isolation.ts';

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
type Query = BuiltQuery;
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

/** One `withEncryption` call's plugins, in order, and what they were given. */
interface Pipeline {
  readonly env: PipelineEnv;
  readonly plugins: readonly QueryPlugin[];
  /** The plugins with a `pendingParam` hook (checked for every parameter of every statement). */
  readonly pending: readonly QueryPlugin[];
  /** The plugins with a `resolveParams` hook (awaited in order before a statement runs). */
  readonly resolvers: readonly QueryPlugin[];
}

/** The pipeline each instrumented dialect (shared by a database, its transactions) runs. */
const pipelines = new WeakMap<object, Pipeline>();

/**
 * Instruments a Drizzle PostgreSQL database in place with `plugins` (in pipeline order, see
 * `pipeline.ts`; the public `withEncryption` passes the library's own): its dialect (each plugin's
 * builder wrappers, and around `sqlToQuery` the single SQL walk), its session's prepared queries (to
 * fill placeholders, finish encryption and decryption that wait on a data key, and run the plugins'
 * execution hooks), and every transaction and savepoint session it creates.
 */
export function withPlugins<TDb extends AnyPgDatabase>(
  db: TDb,
  keyring: Keyring,
  options: WithEncryptionOptions,
  plugins: readonly QueryPlugin[],
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
  const shapes = plugins.filter((p) => p.allowsSql !== undefined);
  const pipeline: Pipeline = {
    env: {
      keyring,
      tenantColumn,
      allowsSql: (chunks) => {
        for (const p of shapes) if (p.allowsSql!(chunks)) return true;
        return false;
      },
    },
    plugins,
    pending: plugins.filter((p) => p.pendingParam !== undefined),
    resolvers: plugins.filter((p) => p.resolveParams !== undefined),
  };
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
    instrumentDialect(t.dialect, pipeline);
    instrumentSession(t.session, pipeline, undefined, rls);
    for (const p of plugins) p.instrumentDatabase?.(t, pipeline.env);
  }
  const primary = (d as { $primary?: MutableDb }).$primary;
  if (primary !== undefined) for (const p of plugins) p.instrumentDatabase?.(primary, pipeline.env);
  return db;
}

/** The keyring and tenant column name `withEncryption` was given for this database, if wrapped. */
export function wrappedWith(
  db: AnyPgDatabase,
): { keyring: Keyring; tenantColumn: string | undefined } | undefined {
  const dialect = (db as unknown as { dialect?: object }).dialect;
  return dialect === undefined ? undefined : pipelines.get(dialect)?.env;
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
// Dialect: the plugins' builder wrappers, and the SQL walk before Drizzle maps parameters

function instrumentDialect(dialect: MutableDb['dialect'], pipeline: Pipeline): void {
  const { env, plugins } = pipeline;
  const builders = plugins.filter((p) => p.beginBuild !== undefined);
  // Every path that turns SQL into a query string and parameters: `sqlToQuery`, and on 1.0 also
  // `_sqlToQuery` (the tagged-template form selects use on drivers such as Bun SQL).
  const toQuery = (original: (sql: SQL, ...rest: unknown[]) => Query) =>
    function (this: unknown, sqlObj: SQL, ...rest: unknown[]): Query {
      const ctx: BuildContext = { keyring: env.keyring, rowTenants: [], cursor: 0 };
      const visitors: SqlVisitor[] = [];
      try {
        for (const p of builders) {
          const v = p.beginBuild!(sqlObj, ctx, env);
          if (v !== undefined) visitors.push(v);
        }
        walkSql(sqlObj, visitors);
        const query = inBuildContext(ctx, () => original.call(this, sqlObj, ...rest));
        for (const v of visitors) v.built?.(query);
        return query;
      } finally {
        for (let i = visitors.length - 1; i >= 0; i--) visitors[i]!.restore?.();
      }
    };
  dialect.sqlToQuery = toQuery(dialect.sqlToQuery);
  if (typeof dialect._sqlToQuery === 'function') dialect._sqlToQuery = toQuery(dialect._sqlToQuery);
  for (const p of plugins) p.instrumentDialect?.(dialect, env);
  pipelines.set(dialect, pipeline);
  Object.defineProperty(dialect, WRAPPED, { value: env.keyring });
}

// -----------------------------------------------------------------------------------------------
// Session: prepared queries, transactions, savepoints

function instrumentSession(
  session: Session,
  pipeline: Pipeline,
  txDb: AnyPgDatabase | undefined,
  rls: RlsConfig | undefined,
): void {
  const keyring = pipeline.env.keyring;
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
    return instrumentPrepared(prepared, query, reprepare, pipeline, txDb, rlsRun, base);
  };
  const transaction = session.transaction;
  if (typeof transaction === 'function') {
    session.transaction = function (this: Session, cb, config) {
      return transaction.call(
        this,
        (tx: unknown) => {
          instrumentTransaction(tx as Tx, pipeline, rls);
          if (txDb === undefined) keyring.openTransaction(tx as AnyPgDatabase, undefined);
          return txStorage.run({ tx: tx as AnyPgDatabase, session: (tx as Tx).session }, () => cb(tx));
        },
        config,
      );
    };
  }
}

function instrumentTransaction(tx: Tx, pipeline: Pipeline, rls: RlsConfig | undefined): void {
  const keyring = pipeline.env.keyring;
  instrumentSession(tx.session, pipeline, tx as unknown as AnyPgDatabase, rls);
  if (tx[WRAPPED] !== undefined) return;
  Object.defineProperty(tx, WRAPPED, { value: keyring });
  // The transaction builds with its database's dialect: that dialect's pipeline instruments it.
  const own = pipelines.get((tx as { dialect?: object }).dialect ?? {});
  if (own !== undefined) for (const p of own.plugins) p.instrumentDatabase?.(tx, own.env);
  const transaction = tx.transaction;
  tx.transaction = function (this: Tx, cb) {
    let savepoint: AnyPgDatabase | undefined;
    return transaction
      .call(this, (inner: unknown) => {
        savepoint = inner as AnyPgDatabase;
        instrumentTransaction(inner as Tx, pipeline, rls);
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

/**
 * What a prepared query needs before it can run: pending encryptions, encrypted placeholders, a
 * plugin's pending values.
 */
function needsParams(params: readonly unknown[], plugins: readonly QueryPlugin[]): boolean {
  for (const p of params) {
    if (p instanceof PendingWrite) return true;
    for (const plugin of plugins) if (plugin.pendingParam!(p)) return true;
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
  pipeline: Pipeline,
  txDb: AnyPgDatabase | undefined,
  rlsRun: RlsRun | undefined,
  session: Session,
): Prepared {
  const { env, plugins } = pipeline;
  const keyring = env.keyring;
  const needs = needsParams(query.params, pipeline.pending);
  const all: ExecutionHooks[] = [];
  for (const p of plugins) {
    const h = p.prepare?.(query, env);
    if (h !== undefined) all.push(h);
  }
  const hooks = all.length === 0 ? undefined : all;
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
          if (hooks !== undefined) {
            for (const h of hooks) {
              const r = h.values(values);
              values = r.values;
              if (r.rowTenants !== undefined) {
                if (rowTenants === undefined) rowTenants = r.rowTenants;
                else for (const [k, v] of r.rowTenants) rowTenants.set(k, v);
              }
            }
          }
          if (needs) {
            target = reprepare(
              await resolveParams(pipeline, query.params, values ?? {}, ctx.txDb, rowTenants),
            );
            values = {};
          }
          const fn = target === this ? original : (target[method] as typeof original);
          let result: unknown;
          try {
            result = await fn.call(target, values, token);
          } catch (e) {
            let out = e;
            for (const p of plugins) if (p.translateError !== undefined) out = p.translateError(out);
            throw out;
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
  pipeline: Pipeline,
  params: readonly unknown[],
  values: Record<string, unknown>,
  txDb: AnyPgDatabase | undefined,
  rowTenants?: Map<Param, string>,
): Promise<unknown[]> {
  const keyring = pipeline.env.keyring;
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
  for (const p of pipeline.resolvers) await p.resolveParams!(filled, values, { keyring, txDb });
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
