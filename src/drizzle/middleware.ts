import { Column, is, Param, Placeholder, SQL, StringChunk } from 'drizzle-orm';
import { ByokConfigError, DecryptionFailedError, TenantMismatchError } from '../errors.ts';
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
import { guardSql, installGuard } from './guard.ts';
import { PendingRead, PendingWrite } from './placeholders.ts';
import { scopeStorage } from './scope.ts';
import { nestedSql } from './sql-walk.ts';

export interface WithEncryptionOptions {
  /**
   * Database name of the tenant column (e.g. `'tenant_id'`). When set, every inserted row that has
   * this column and encrypted values is encrypted under that row's tenant, and a row whose tenant
   * differs from the tenant in scope is refused with `TenantMismatchError`. Default: none (the tenant
   * comes from `withTenant` only).
   */
  tenantColumn?: string;
}

const WRAPPED = Symbol.for('drizzle-byok:wrapped');

interface MutableDb {
  dialect: { sqlToQuery: (sql: SQL, invokeSource?: unknown) => Query; [WRAPPED]?: Keyring };
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
  if (keyring === undefined || !isKeyring(keyring)) {
    throw new ByokConfigError('withEncryption(db, keyring): keyring must come from createKeyring(...)');
  }
  const tenantColumn = options.tenantColumn;
  if (tenantColumn !== undefined && (typeof tenantColumn !== 'string' || tenantColumn.length === 0)) {
    throw new ByokConfigError(
      'withEncryption: tenantColumn must be the database name of a column, e.g. "tenant_id"',
    );
  }
  const existing = d.dialect[WRAPPED];
  if (existing !== undefined) {
    if (existing !== keyring)
      throw new ByokConfigError('this Drizzle instance is already wrapped with another keyring');
    return db;
  }
  instrumentDialect(d.dialect, keyring, tenantColumn);
  instrumentSession(d.session, keyring, undefined);
  return db;
}

// -----------------------------------------------------------------------------------------------
// Dialect: SQL inspection before Drizzle maps parameters

function instrumentDialect(
  dialect: MutableDb['dialect'],
  keyring: Keyring,
  tenantColumn: string | undefined,
): void {
  const original = dialect.sqlToQuery;
  dialect.sqlToQuery = function (this: unknown, sqlObj: SQL, invokeSource?: unknown): Query {
    const ctx: BuildContext = { keyring, rowTenants: [], cursor: 0 };
    // The fail-closed guard (allowlist, src/drizzle/guard.ts) first, then blind index lookups.
    guardSql(sqlObj);
    const restore = rewriteBlindLookups(sqlObj, tenantColumn);
    try {
      inspectChunks(sqlObj.queryChunks, ctx, tenantColumn);
      return inBuildContext(ctx, () => original.call(this, sqlObj, invokeSource));
    } finally {
      restore();
    }
  };
  instrumentBlindWrites(dialect, keyring, tenantColumn);
  installGuard(dialect, tenantColumn);
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
    else if ((p.encoder as { name?: unknown } | undefined)?.name === tenantColumn && is(p.encoder, Column))
      tenant = p;
  }
  if (columns < 2 || tenant === undefined || typeof tenant.value !== 'string') return;
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

// -----------------------------------------------------------------------------------------------
// Session: prepared queries, transactions, savepoints

function instrumentSession(session: Session, keyring: Keyring, txDb: AnyPgDatabase | undefined): void {
  if (session[WRAPPED] !== undefined) return;
  Object.defineProperty(session, WRAPPED, { value: keyring });
  const prepareQuery = session.prepareQuery;
  session.prepareQuery = function (this: Session, query: Query, ...rest: unknown[]): Prepared {
    const prepared = prepareQuery.call(this, query, ...rest);
    const reprepare = (params: unknown[]) => prepareQuery.call(this, { ...query, params }, ...rest);
    return instrumentPrepared(prepared, query, reprepare, keyring, txDb);
  };
  const transaction = session.transaction;
  if (typeof transaction === 'function') {
    session.transaction = function (this: Session, cb, config) {
      return transaction.call(
        this,
        (tx: unknown) => {
          instrumentTransaction(tx as Tx, keyring);
          return cb(tx);
        },
        config,
      );
    };
  }
}

function instrumentTransaction(tx: Tx, keyring: Keyring): void {
  instrumentSession(tx.session, keyring, tx as unknown as AnyPgDatabase);
  if (tx[WRAPPED] !== undefined) return;
  Object.defineProperty(tx, WRAPPED, { value: keyring });
  const transaction = tx.transaction;
  tx.transaction = function (this: Tx, cb) {
    return transaction.call(this, (inner: unknown) => {
      instrumentTransaction(inner as Tx, keyring);
      return cb(inner);
    });
  };
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

function instrumentPrepared(
  prepared: Prepared,
  query: Query,
  reprepare: (params: unknown[]) => Prepared,
  keyring: Keyring,
  txDb: AnyPgDatabase | undefined,
): Prepared {
  const needs = needsParams(query.params);
  for (const method of ['execute', 'all', 'values'] as const) {
    const original = prepared[method];
    if (typeof original !== 'function') continue;
    prepared[method] = function (
      this: Prepared,
      placeholderValues?: Record<string, unknown>,
      token?: unknown,
    ) {
      return runQuery(
        keyring,
        async (ctx) => {
          let target: Prepared = this;
          let values = placeholderValues;
          if (needs) {
            target = reprepare(await resolveParams(keyring, query.params, placeholderValues ?? {}, txDb));
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
        txDb,
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

/** Fills placeholders (encrypting encrypted ones) and finishes pending encryptions. Never mutates `params`. */
async function resolveParams(
  keyring: Keyring,
  params: readonly unknown[],
  values: Record<string, unknown>,
  txDb: AnyPgDatabase | undefined,
): Promise<unknown[]> {
  const filled = inBuildContext({ keyring, rowTenants: [], cursor: 0 }, () =>
    params.map((p) => {
      if (p instanceof Placeholder) {
        if (!(p.name in values)) throw new ByokConfigError(`no value for placeholder "${p.name}"`);
        return values[p.name];
      }
      if (p instanceof Param && p.value instanceof Placeholder) {
        const name = p.value.name;
        if (!(name in values)) throw new ByokConfigError(`no value for placeholder "${name}"`);
        const v = values[name];
        return v === null || v === undefined ? null : p.encoder.mapToDriverValue(v);
      }
      return p;
    }),
  );
  await resolveBlindParams(keyring, filled, values, txDb);
  const tenants = new Set<string>();
  for (const p of filled) if (p instanceof PendingWrite) tenants.add(p.tenantId);
  if (tenants.size === 0) return filled;
  const entries = new Map(
    await Promise.all(
      [...tenants].map(async (t) => [t, await keysOf(keyring).getActiveDek(t, txDb)] as const),
    ),
  );
  for (let i = 0; i < filled.length; i++) {
    const p = filled[i];
    if (p instanceof PendingWrite)
      filled[i] = sealFor(keyring, p.column, entries.get(p.tenantId)!, p.plaintext());
  }
  return filled;
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
  const entries = new Map(
    await Promise.all([...labels.keys()].map(async (id) => [id, await load(id)] as const)),
  );
  for (const p of pending) {
    const entry = entries.get(p.dekId)!;
    checkReadTenant(ctx, p.column, entry);
    p.resolve(openFor(keyring, p.column, entry, p.bytes));
  }
  return replacePending(result) as T;
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
