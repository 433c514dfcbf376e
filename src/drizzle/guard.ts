// One file: the fail-closed allowlist: one SQL-tree walk and the builder hooks sharing its refusal rules.
// A namespace import for helpers other Drizzle majors dropped: a missing one must not fail the
// import of the whole library (the supported-version check then reports a typed error instead).
import * as drizzleOrm from 'drizzle-orm';
import {
  aliasedTableColumn,
  Column,
  getOrderByOperators,
  is,
  isSQLWrapper,
  Name,
  Param,
  Placeholder,
  SQL,
  StringChunk,
  Subquery,
  sql,
  Table,
  View,
} from 'drizzle-orm';
import { looksLikeEnvelope, TEXT_PREFIX, toBytes } from '../crypto/envelope.ts';
import { ByokConfigError, EncryptedColumnUsageError } from '../errors.ts';
import { buildSetOperations, chunkText, isExcluded } from './chunks.ts';
import { encryptedState, guardedState } from './column-state.ts';
import { prepareRelationalV2, type RelationalV2Hooks, type TableConfigV2 } from './relational-v2.ts';
import { isTrustedSql, trustSql } from './sql-walk.ts';
import { scopePredicateOf } from './tenant-isolation.ts';

/**
 * The fail-closed guard: an allowlist of the places an encrypted (or blind index) column may appear
 * in a query. Ciphertext is randomized and opaque to SQL, so a column may appear only where its
 * meaning is preserved:
 *
 * (a) selected and decoded by its own column mapper: a select field, `.returning()`, a relational
 *     query column at any depth, a join / subquery / CTE that re-selects it unchanged, or an SQL
 *     field that is exactly the column with `.mapWith(thatColumn)`;
 * (b) the operand of `isNull` / `isNotNull`;
 * (c) a write target whose value is a parameter encoded by that same column, `null` or `DEFAULT`
 *     (plaintext defaults are refused when the schema is built), or a copy of that same column of
 *     the same row (`set({ c: t.c })`, `excluded.c`, `insert ... select` within the same table with
 *     the tenant column copied from the same row);
 * (d) inside the library's own blind index lookup (`eq`/`inArray` with values on an indexed column).
 *
 * Every other appearance, however it is wrapped (an `sql` template, a function, a cast, `.getSQL()`,
 * `order by`, `group by`, `distinct`, a join condition, a set operation, a subquery used as a value,
 * an `update ... set` or `insert` value, `insert ... select` into another column), and every value
 * encoded by an encrypted column outside a write, throws `EncryptedColumnUsageError` naming the
 * column and the construct while the query is built: nothing is sent. The explicit escape hatches
 * are `rawCiphertext(column)` / `restoreCiphertext(column, value)` (backups) and `reencrypt(...)`.
 *
 * The guard runs once per query build (not per row or field): it instruments the dialect's builders,
 * which receive each query form's parts structurally, and checks whatever reaches `sqlToQuery`
 * without a builder (`db.execute(sql...)`, `$count`) as a plain SQL expression.
 */

/** What a query projects at each output position: the guarded column state, and the bare column. */
interface Slot {
  readonly guard: Guarded | undefined;
  readonly column: Column | undefined;
}
type Projection = readonly Slot[];

interface Guarded {
  readonly label: string;
}

const NONE: Slot = { guard: undefined, column: undefined };

/** SQL built by a query builder through the instrumented dialect, and what it projects. */
const queries = new WeakMap<object, Projection>();
/** `rawCiphertext(column)` nodes. */
const rawReads = new WeakSet<object>();
/** `restoreCiphertext(column, value)` nodes, by the column state they were made for. */
const rawWrites = new WeakMap<object, Guarded>();

/** An encrypted column, or a column another plugin marks as protected (a blind index). */
const guardedOf: (c: unknown) => Guarded | undefined = guardedState;

/**
 * The SQL shapes the pipeline's plugins allow (their own rewritten nodes, `QueryPlugin.allowsSql`),
 * for the check running now: set by each instrumented builder and by `guardSql` for the length of
 * their synchronous check.
 */
let allowedShape: (chunks: readonly unknown[]) => boolean = () => false;

function withShapes<T>(shapes: (chunks: readonly unknown[]) => boolean, fn: () => T): T {
  const outer = allowedShape;
  allowedShape = shapes;
  try {
    return fn();
  } finally {
    allowedShape = outer;
  }
}

function refuse(g: Guarded, construct: string, hint?: string): never {
  throw new EncryptedColumnUsageError(g.label, construct, hint);
}

// -----------------------------------------------------------------------------------------------
// Expressions: no encrypted column, and no value encoded by one, except (b) and (d)

function expr(c: unknown, site: string): void {
  if (c === null || typeof c !== 'object' || c instanceof StringChunk) return;
  // Fast paths for the common chunks (instanceof first; drizzle's `is` below covers other installs).
  if (c instanceof SQL) {
    exprSql(c, site);
    return;
  }
  if (c instanceof Param) {
    if (c.encoder !== undefined && guardedOf(c.encoder) !== undefined) refuse(guardedOf(c.encoder)!, site);
    return;
  }
  if (c instanceof Column) {
    const g = guardedOf(c);
    if (g !== undefined) refuse(g, site);
    return;
  }
  if (ArrayBuffer.isView(c) || c instanceof Date) return;
  if (Array.isArray(c)) {
    for (const x of c) expr(x, site);
    return;
  }
  if (is(c, SQL)) {
    exprSql(c as SQL, site);
    return;
  }
  if (is(c, Column)) {
    const g = guardedOf(c);
    if (g !== undefined) refuse(g, site);
    return;
  }
  if (is(c, Param)) {
    const g = guardedOf((c as Param).encoder);
    if (g !== undefined) refuse(g, site);
    return;
  }
  if (is(c, Placeholder) || is(c, Name) || is(c, Table) || is(c, View)) return;
  if (is(c, SQL.Aliased)) {
    expr((c as unknown as { sql: SQL }).sql, site);
    return;
  }
  if (is(c, Subquery)) {
    const sq = c as unknown as { _: { sql: SQL; isWith?: boolean } };
    // A `with` reference renders as its name; the CTE itself was checked where it is defined.
    if (sq._.isWith) return;
    subqueryValue(sq._.sql, site);
    return;
  }
  if (isSQLWrapper(c)) {
    const inner = c.getSQL();
    if (inner !== (c as unknown) && !inner.queryChunks.includes(c)) {
      expr(inner, site);
      return;
    }
  }
}

function exprSql(s: SQL, site: string): void {
  if (rawReads.has(s) || isTrustedSql(s)) return;
  if (rawWrites.has(s)) {
    refuse(rawWrites.get(s)!, site, 'restoreCiphertext() is a write value only.');
    return;
  }
  if (queries.has(s)) {
    subqueryValue(s, site);
    return;
  }
  const chunks = s.queryChunks;
  const u = unary(chunks);
  if ((u !== undefined && (isNullCheck(u) || isExists(u))) || allowedShape(chunks)) return;
  for (const x of chunks) expr(x, site);
}

/** A query used as a value (`inArray(x, subquery)`, a scalar subquery): must project no ciphertext. */
function subqueryValue(s: SQL, site: string): void {
  const p = queries.get(s);
  if (p === undefined) {
    expr(s, site);
    return;
  }
  for (const slot of p)
    if (slot.guard !== undefined) refuse(slot.guard, `a subquery used as a value (${site})`);
}

/**
 * The single operand of a node `<text> <operand> <text>` and its text (trimmed, lower case, one
 * space), or undefined when the node has another number of operands. Most nodes have more than
 * one: they are rejected before any string is built.
 */
interface Unary {
  readonly text: string;
  readonly operand: unknown;
  /** The text before and after the operand (trimmed, lower case, one space). */
  readonly before: string;
  readonly after: string;
}

/** Longer texts around a single operand are none of the shapes `unary`'s callers recognize. */
const UNARY_MAX_TEXT = 64;

function unary(chunks: readonly unknown[]): Unary | undefined {
  let operand: unknown;
  let n = 0;
  for (const x of chunks) {
    if (!(x instanceof StringChunk) && x !== undefined && ++n > 1) return undefined;
    if (!(x instanceof StringChunk) && x !== undefined) operand = x;
  }
  if (n !== 1) return undefined;
  let before = '';
  let after = '';
  let seen = false;
  for (const x of chunks) {
    if (x instanceof StringChunk) {
      if (seen) after += chunkText(x);
      else before += chunkText(x);
    } else if (x !== undefined) seen = true;
  }
  // The shapes recognized here (`is [not] null`, `[not] exists`) have short texts: longer ones
  // (a condition with its text around one operand) are no match, without normalizing them.
  if (before.length + after.length > UNARY_MAX_TEXT) return undefined;
  const norm = (t: string) => t.trim().toLowerCase().replace(/\s+/g, ' ');
  return {
    text: norm(before + after),
    operand,
    before: norm(before),
    after: norm(after),
  };
}

/** `isNull(col)` / `isNotNull(col)`: `<column> is [not] null`, the column bare or as `sql\`${col}\``. */
function isNullCheck(u: Unary): boolean {
  // 0.45: `<col> is null`; 1.0: `(<col> is null)`.
  const plain = u.before === '' && (u.after === 'is null' || u.after === 'is not null');
  const parenthesized = u.before === '(' && (u.after === 'is null)' || u.after === 'is not null)');
  if (!plain && !parenthesized) return false;
  return bareColumn(u.operand) !== undefined;
}

/** `exists(subquery)` / `notExists(...)`: the subquery's projection is not used. */
function isExists(u: Unary): boolean {
  if (u.text !== 'exists' && u.text !== 'not exists') return false;
  const q = u.operand as object;
  const inner = is(q, Subquery)
    ? (q as unknown as { _: { sql: SQL } })._.sql
    : is(q, SQL)
      ? q
      : isSQLWrapper(q)
        ? q.getSQL()
        : undefined;
  return inner !== undefined && queries.has(inner);
}

/** The column an SQL node is exactly (`col`, `sql\`${col}\``, `col.getSQL()`), or undefined. */
function bareColumn(c: unknown): Column | undefined {
  for (let depth = 0; depth < 8; depth++) {
    if (c === null || typeof c !== 'object') return undefined;
    if (is(c, Column)) return c as Column;
    if (!is(c, SQL)) return undefined;
    let only: unknown;
    let n = 0;
    for (const x of (c as SQL).queryChunks) {
      if (x instanceof StringChunk) {
        if (chunkText(x).trim() !== '') return undefined;
      } else if (x !== undefined) {
        only = x;
        n++;
      }
    }
    if (n !== 1) return undefined;
    c = only;
  }
  return undefined;
}

// -----------------------------------------------------------------------------------------------
// Projections (a)

interface Field {
  readonly field: unknown;
}

function projection(fields: readonly Field[], site: string): Projection {
  return fields.map(({ field }) => slot(field, site));
}

function slot(field: unknown, site: string): Slot {
  if (is(field, Column)) return { guard: guardedOf(field), column: field as Column };
  if (is(field, SQL.Aliased))
    return { guard: projectedSql((field as unknown as { sql: SQL }).sql, site), column: undefined };
  if (is(field, SQL)) return { guard: projectedSql(field as SQL, site), column: undefined };
  if (is(field, Subquery)) {
    // A scalar subquery as a field: decoded by its single field's mapper when it selects one column.
    const inner = (field as unknown as { _: { sql: SQL } })._.sql;
    const p = queries.get(inner);
    if (p === undefined) {
      expr(inner, site);
      return NONE;
    }
    return { guard: p.length === 1 ? p[0]!.guard : undefined, column: undefined };
  }
  return NONE;
}

/** An SQL select field: a pass-through of a column mapped by that same column, or no ciphertext. */
function projectedSql(s: SQL, site: string): Guarded | undefined {
  if (rawReads.has(s)) return undefined;
  const decoder = guardedOf((s as unknown as { decoder?: unknown }).decoder);
  if (decoder !== undefined) {
    const col = bareColumn(s);
    if (col !== undefined && guardedOf(col) === decoder) return decoder;
    refuse(decoder, `.mapWith(${decoder.label}) of an expression that is not that column`);
  }
  const col = bareColumn(s);
  if (col !== undefined) {
    const g = guardedOf(col);
    if (g !== undefined) {
      refuse(
        g,
        `an sql template in ${site}`,
        `Select the column itself, or sql\`\${column}\`.mapWith(column); rawCiphertext(column) gives the stored bytes.`,
      );
    }
  }
  expr(s, `an expression in ${site}`);
  return undefined;
}

// -----------------------------------------------------------------------------------------------
// Sources: tables, views, subqueries and CTEs re-selected (checked where they were built)

function source(t: unknown, site: string): void {
  if (t === null || typeof t !== 'object' || t instanceof Table) return;
  if (is(t, Subquery)) {
    const inner = (t as unknown as { _: { sql: SQL } })._.sql;
    if (!queries.has(inner)) expr(inner, site);
    return;
  }
  if (is(t, SQL)) expr(t, site);
}

// -----------------------------------------------------------------------------------------------
// Writes (c)

const COLUMNS = Symbol.for('drizzle:Columns');
const ORIGINAL_NAME = Symbol.for('drizzle:OriginalName');
const SCHEMA = Symbol.for('drizzle:Schema');

function columnsOf(table: unknown): Record<string, Column> {
  return ((table as Record<symbol, unknown> | null)?.[COLUMNS] ?? {}) as Record<string, Column>;
}

function unset(v: unknown): boolean {
  return v === undefined || (is(v, Param) && (v as Param).value === undefined);
}

/** A value for an encrypted target: encoded by that same column, null, or its raw restore marker. */
function writeValue(col: Column, g: Guarded, v: unknown, site: string, update: boolean): void {
  if (unset(v)) return;
  if (is(v, Param)) {
    const p = v as Param;
    const inner = p.value;
    if (guardedOf(p.encoder) === g && (is(inner, Placeholder) || (!is(inner, SQL) && !isSQLWrapper(inner))))
      return;
    if (p.value === null) return;
    refuse(g, site);
  }
  if (v !== null && typeof v === 'object' && rawWrites.get(v) === g) return;
  // The same column of the same row: the binding (table, column, tenant, row) is unchanged.
  if (update && (v === col || isExcluded(v, col.name))) return;
  refuse(
    g,
    site,
    'Write a value (it is encrypted by the column), null, or use reencrypt() to move ciphertext.',
  );
}

function checkSet(table: unknown, set: Record<string, unknown>): void {
  const cols = columnsOf(table);
  for (const [key, v] of Object.entries(set)) {
    const col = cols[key];
    if (col === undefined || v === undefined) continue;
    const g = guardedOf(col);
    if (g !== undefined) writeValue(col, g, v, 'an update set value', true);
    else if (!is(v, Param)) expr(v, 'an update set value');
    else if (guardedOf((v as Param).encoder) !== undefined) expr(v, 'an update set value');
  }
}

function checkInsert(config: InsertConfig, tenantColumn: string | undefined): void {
  const cols = Object.entries(columnsOf(config.table)).filter(
    ([, c]) => !(c as unknown as { shouldDisableInsert(): boolean }).shouldDisableInsert(),
  );
  if (config.select) {
    const v = config.values as object;
    const src = is(v, SQL) ? (v as SQL) : (v as { getSQL(): SQL }).getSQL();
    const p = queries.get(src);
    if (p === undefined) {
      expr(src, 'insert ... select');
      for (const [, c] of cols) {
        const g = guardedOf(c);
        if (g !== undefined) refuse(g, 'insert ... select from an sql template');
      }
      return;
    }
    insertSelect(config.table, cols, p, tenantColumn);
    return;
  }
  for (const row of config.values as Record<string, unknown>[]) {
    for (const [key, col] of cols) {
      const v = row[key];
      const g = guardedOf(col);
      if (g !== undefined) writeValue(col, g, v, 'an insert value', false);
      else if (v !== undefined && !is(v, Param)) expr(v, 'an insert value');
    }
  }
}

/**
 * `insert ... select`: ciphertext may only be copied into the same column of the same table, with
 * the tenant column copied from the same source row (same binding: table, column, tenant).
 */
function insertSelect(
  table: unknown,
  cols: [string, Column][],
  p: Projection,
  tenantColumn: string | undefined,
): void {
  const hint =
    'Copy values to another table, column or tenant with reencrypt(), which decrypts and re-encrypts in the app.';
  let tenantSlot: Slot | undefined;
  cols.forEach(([, col], i) => {
    if (tenantColumn !== undefined && col.name === tenantColumn) tenantSlot = p[i];
  });
  cols.forEach(([, col], i) => {
    const g = guardedOf(col);
    const s = p[i] ?? NONE;
    if (g === undefined) {
      if (s.guard !== undefined)
        refuse(s.guard, 'insert ... select into a column that is not the same encrypted column', hint);
      return;
    }
    if (s.guard === undefined) {
      // Null, a default, or a plain value would all land as plaintext or undecryptable bytes.
      refuse(g, 'insert ... select of a value that is not this column', hint);
    }
    if (s.guard !== g) refuse(g, 'insert ... select from another encrypted column', hint);
    const source = s.column as unknown as { table?: unknown } | undefined;
    const tenant = tenantSlot?.column as unknown as { table?: unknown; name?: string } | undefined;
    if (
      source === undefined ||
      tenant === undefined ||
      tenant.table !== source.table ||
      !sameTable(tenant.table, table)
    ) {
      refuse(
        g,
        'insert ... select that does not copy the tenant column from the same row',
        tenantColumn === undefined
          ? `withEncryption(db, keyring, { tenantColumn }) is needed to prove the tenant. ${hint}`
          : hint,
      );
    }
  });
}

function sameTable(a: unknown, b: unknown): boolean {
  const x = a as Record<symbol, unknown> | undefined;
  const y = b as Record<symbol, unknown> | undefined;
  return (
    x !== undefined && y !== undefined && x[ORIGINAL_NAME] === y[ORIGINAL_NAME] && x[SCHEMA] === y[SCHEMA]
  );
}

// -----------------------------------------------------------------------------------------------
// Escape hatches

/**
 * The stored ciphertext of an encrypted column, undecoded: a `Buffer` envelope (`bytea` storage) or
 * the `byok1:` text (`text` storage). For backups and exports; restore with `restoreCiphertext`.
 * Allowed anywhere in a query (it is an explicit opt-out of the guard for this column reference).
 *
 * ```ts
 * const dump = await db.select({ id: patients.id, name: rawCiphertext(patients.name) }).from(patients);
 * ```
 */
export function rawCiphertext(column: Column): SQL<Buffer | string> {
  const g = guardedOf(column);
  if (g === undefined || encryptedState(column) === undefined) {
    throw new ByokConfigError('rawCiphertext(column): the column is not an encrypted.* column');
  }
  const text = encryptedState(column)!.storage === 'text';
  const node = sql`${column}`.mapWith((v: unknown): Buffer | string =>
    text ? (v as string) : ((toBytes(v) ?? v) as Buffer),
  );
  rawReads.add(node);
  return node;
}

/**
 * A stored ciphertext (from `rawCiphertext`) written back as it is into the same column, e.g. when
 * restoring a backup: an insert or update value for `column` only. The value must have the
 * envelope's shape; it decrypts only for the table, column and tenant it was made for.
 */
export function restoreCiphertext(column: Column, stored: Uint8Array | string): SQL {
  const st = encryptedState(column);
  if (st === undefined) {
    throw new ByokConfigError('restoreCiphertext(column, value): the column is not an encrypted.* column');
  }
  let value: Buffer | string;
  if (st.storage === 'text') {
    const b =
      typeof stored === 'string' && stored.startsWith(TEXT_PREFIX)
        ? Buffer.from(stored.slice(TEXT_PREFIX.length), 'base64')
        : undefined;
    if (b === undefined || !looksLikeEnvelope(b))
      throw new ByokConfigError(
        `restoreCiphertext(${st.label}, value): value is not a stored ciphertext (byok1: text)`,
      );
    value = stored as string;
  } else {
    const b = typeof stored === 'string' ? undefined : toBytes(stored);
    if (b === undefined || !looksLikeEnvelope(b))
      throw new ByokConfigError(
        `restoreCiphertext(${st.label}, value): value is not a stored ciphertext envelope`,
      );
    value = b;
  }
  const node = sql`${sql.param(value)}`;
  rawWrites.set(node, st);
  return node;
}

// -----------------------------------------------------------------------------------------------
// Dialect instrumentation

interface SelectConfig {
  withList?: readonly unknown[];
  fields: Record<string, unknown>;
  fieldsFlat?: readonly Field[];
  where?: unknown;
  having?: unknown;
  table: unknown;
  joins?: readonly { table: unknown; on?: unknown }[];
  orderBy?: readonly unknown[];
  groupBy?: readonly unknown[];
  limit?: unknown;
  offset?: unknown;
  distinct?: boolean | { on: readonly unknown[] };
  setOperators: readonly unknown[];
}
interface SetOperationConfig {
  leftSelect: SQL;
  setOperator: {
    type: string;
    isAll: boolean;
    rightSelect: { getSQL(): SQL };
    orderBy?: readonly unknown[];
    limit?: unknown;
    offset?: unknown;
  };
}
interface InsertConfig {
  table: unknown;
  values: unknown;
  select?: boolean;
  onConflict?: unknown;
  returning?: readonly Field[];
  withList?: readonly unknown[];
}
interface UpdateConfig {
  table: unknown;
  set: Record<string, unknown>;
  where?: unknown;
  returning?: readonly Field[];
  withList?: readonly unknown[];
  from?: unknown;
  joins?: readonly { table: unknown; on?: unknown }[];
}
interface DeleteConfig {
  table: unknown;
  where?: unknown;
  returning?: readonly Field[];
  withList?: readonly unknown[];
}
interface RelationalArgs {
  tableConfig: { columns: Record<string, Column> };
  queryConfig: true | Record<string, unknown> | undefined;
  tableAlias: string;
  joinOn?: unknown;
}
type Fn = (this: unknown, ...args: never[]) => unknown;
interface GuardedDialect {
  buildSelectQuery: (config: SelectConfig) => SQL;
  buildSetOperations: (left: SQL, ops: readonly unknown[]) => SQL;
  buildSetOperationQuery: (config: SetOperationConfig) => SQL;
  buildInsertQuery: (config: InsertConfig) => SQL;
  buildUpdateSet: (table: unknown, set: Record<string, unknown>) => SQL;
  buildUpdateQuery: (config: UpdateConfig) => SQL;
  buildDeleteQuery: (config: DeleteConfig) => SQL;
  buildRelationalQueryWithoutPK: (args: RelationalArgs) => { sql: SQL };
  buildRelationalQuery: (args: RelationalV2Args) => { sql: SQL };
}
interface RelationalV2Args {
  schema: Record<string, TableConfigV2>;
  tableConfig: TableConfigV2;
  queryConfig: unknown;
  [k: string]: unknown;
}

function value(v: unknown, site: string): void {
  if (v !== null && typeof v === 'object') expr(v, site);
}

function common(withList: readonly unknown[] | undefined, where: unknown): void {
  for (const w of withList ?? []) source(w, 'a with (CTE) query');
  if (where !== undefined) expr(where, 'where');
}

function joinsOf(joins: readonly { table: unknown; on?: unknown }[] | undefined): void {
  for (const j of joins ?? []) {
    source(j.table, 'a joined subquery');
    if (j.on !== undefined) expr(j.on, 'a join condition');
  }
}

function returningOf(returning: readonly Field[] | undefined): void {
  if (returning !== undefined) projection(returning, 'returning');
}

/**
 * Instruments a PostgreSQL dialect's query builders with the guard. Call after other builder
 * instrumentation (blind index writes), so the guard sees what the user wrote. `allowsSql`: the
 * shapes the pipeline's plugins make and allow.
 */
export function installGuard(
  dialect: object,
  tenantColumn: string | undefined,
  allowsSql: (chunks: readonly unknown[]) => boolean,
): void {
  installBuilders(dialect, tenantColumn);
  // Every hook runs its checks with this pipeline's allowed shapes.
  const d = dialect as unknown as Record<string, Fn>;
  for (const k of [
    'buildSelectQuery',
    'buildSetOperationQuery',
    'buildInsertQuery',
    'buildUpdateSet',
    'buildUpdateQuery',
    'buildDeleteQuery',
    'buildRelationalQueryWithoutPK',
    'buildRelationalQuery',
  ]) {
    const f = d[k];
    if (typeof f !== 'function' || !Object.hasOwn(d, k)) continue;
    d[k] = function (this: unknown, ...args: never[]) {
      return withShapes(allowsSql, () => f.apply(this, args));
    };
  }
}

function installBuilders(dialect: object, tenantColumn: string | undefined): void {
  const d = dialect as GuardedDialect;
  const orig = {
    select: d.buildSelectQuery,
    setOp: d.buildSetOperationQuery,
    insert: d.buildInsertQuery,
    updateSet: d.buildUpdateSet,
    update: d.buildUpdateQuery,
    del: d.buildDeleteQuery,
    relational: d.buildRelationalQueryWithoutPK ?? d.buildRelationalQuery,
  } as Record<string, Fn>;
  for (const [k, f] of Object.entries(orig)) {
    if (typeof f !== 'function') {
      throw new ByokConfigError(
        `withEncryption: this drizzle-orm version's dialect has no ${k} builder; the guard cannot run`,
      );
    }
  }
  /** Inside the library's relational query building: its internal selects are trusted. */
  let relational = 0;

  d.buildSelectQuery = function (this: GuardedDialect, config) {
    if (relational > 0) {
      const r = (orig.select as GuardedDialect['buildSelectQuery']).call(this, config);
      queries.set(r, []);
      return r;
    }
    const fields: readonly Field[] = config.fieldsFlat ?? orderFields(config.fields);
    const p = projection(fields, 'a select field');
    if (config.distinct === true) {
      for (const s of p) if (s.guard !== undefined) refuse(s.guard, 'select distinct');
    } else if (config.distinct !== undefined && config.distinct !== false) {
      for (const x of config.distinct.on) expr(x, 'distinct on');
    }
    source(config.table, 'a subquery in from');
    joinsOf(config.joins);
    common(config.withList, config.where);
    if (config.having !== undefined) expr(config.having, 'having');
    for (const x of config.orderBy ?? []) expr(x, 'order by');
    for (const x of config.groupBy ?? []) expr(x, 'group by');
    value(config.limit, 'limit');
    value(config.offset, 'offset');
    if (config.setOperators.length === 0) {
      const r = (orig.select as GuardedDialect['buildSelectQuery']).call(this, config);
      queries.set(r, p);
      return r;
    }
    const left = (orig.select as GuardedDialect['buildSelectQuery']).call(this, {
      ...config,
      setOperators: [],
    });
    queries.set(left, p);
    const r = buildSetOperations(this, left, config);
    queries.set(r, p);
    return r;
  };

  d.buildSetOperationQuery = function (this: GuardedDialect, config) {
    const { leftSelect, setOperator: op } = config;
    const left = queries.get(leftSelect);
    if (left === undefined) expr(leftSelect, 'a set operation');
    const right = queries.get(op.rightSelect.getSQL());
    if (right === undefined) expr(op.rightSelect.getSQL(), 'a set operation');
    const name = `${op.type}${op.isAll ? ' all' : ''}`;
    const n = Math.max(left?.length ?? 0, right?.length ?? 0);
    for (let i = 0; i < n; i++) {
      const a = left?.[i]?.guard;
      const b = right?.[i]?.guard;
      if (a === undefined && b === undefined) continue;
      // union all keeps rows as they are: allowed when each branch selects the same column.
      if (op.type === 'union' && op.isAll && a === b) continue;
      refuse(
        (a ?? b)!,
        name,
        op.type === 'union' && op.isAll
          ? 'Each branch must select the same encrypted column at that position.'
          : undefined,
      );
    }
    for (const x of op.orderBy ?? []) expr(x, `order by of ${name}`);
    value(op.limit, 'limit');
    value(op.offset, 'offset');
    const r = (orig.setOp as GuardedDialect['buildSetOperationQuery']).call(this, config);
    queries.set(r, left ?? []);
    return r;
  };

  d.buildInsertQuery = function (this: GuardedDialect, config) {
    checkInsert(config, tenantColumn);
    if (config.onConflict !== undefined) expr(config.onConflict, 'on conflict');
    returningOf(config.returning);
    for (const w of config.withList ?? []) source(w, 'a with (CTE) query');
    const r = (orig.insert as GuardedDialect['buildInsertQuery']).call(this, config);
    queries.set(r, []);
    return r;
  };

  d.buildUpdateSet = function (this: GuardedDialect, table, set) {
    checkSet(table, set);
    return trustSql((orig.updateSet as GuardedDialect['buildUpdateSet']).call(this, table, set));
  };

  d.buildUpdateQuery = function (this: GuardedDialect, config) {
    common(config.withList, config.where);
    source(config.from, 'update ... from');
    joinsOf(config.joins);
    returningOf(config.returning);
    const r = (orig.update as GuardedDialect['buildUpdateQuery']).call(this, config);
    queries.set(r, []);
    return r;
  };

  d.buildDeleteQuery = function (this: GuardedDialect, config) {
    common(config.withList, config.where);
    returningOf(config.returning);
    const r = (orig.del as GuardedDialect['buildDeleteQuery']).call(this, config);
    queries.set(r, []);
    return r;
  };

  if (typeof d.buildRelationalQueryWithoutPK !== 'function') {
    // Relational queries v2 (1.0): the config is prepared (checked, rewritten, scoped) up front.
    const hooks: RelationalV2Hooks = {
      expr,
      guarded: guardedOf,
      refuse,
      ...(tenantColumn === undefined ? {} : { scope: (t: unknown) => scopePredicateOf(t, tenantColumn) }),
    };
    d.buildRelationalQuery = function (this: GuardedDialect, args) {
      const queryConfig = prepareRelationalV2(args.queryConfig, args.tableConfig, args.schema, hooks);
      const r = (orig.relational as GuardedDialect['buildRelationalQuery']).call(this, {
        ...args,
        queryConfig,
      });
      queries.set(r.sql, []);
      return r;
    };
    return;
  }

  d.buildRelationalQueryWithoutPK = function (this: GuardedDialect, args) {
    const outer = relational;
    relational = 0;
    try {
      checkRelational(args);
    } finally {
      relational = outer;
    }
    relational++;
    let r: { sql: SQL };
    try {
      r = (orig.relational as GuardedDialect['buildRelationalQueryWithoutPK']).call(this, args);
    } finally {
      relational--;
    }
    queries.set(r.sql, []);
    return r;
  };
}

/** The user's parts of one level of a relational query: where, extras, orderBy, the relation keys. */
function checkRelational(args: RelationalArgs): void {
  if (args.joinOn !== undefined) expr(args.joinOn, 'a relation (its fields and references)');
  const config = args.queryConfig;
  if (config === true || config === undefined || config === null) return;
  const aliased = Object.fromEntries(
    Object.entries(args.tableConfig.columns).map(([k, v]) => [
      k,
      aliasedTableColumn(v as never, args.tableAlias),
    ]),
  );
  const where =
    typeof config.where === 'function'
      ? config.where(aliased, (drizzleOrm as unknown as { getOperators(): unknown }).getOperators())
      : config.where;
  if (where !== undefined) expr(where, 'a relational query where');
  const extras = typeof config.extras === 'function' ? config.extras(aliased, { sql }) : config.extras;
  // Drizzle rebuilds extras without their decoder (`.mapWith` is lost): no ciphertext in them at all.
  for (const v of Object.values((extras ?? {}) as Record<string, unknown>))
    expr(v, 'relational query extras');
  let orderBy =
    typeof config.orderBy === 'function' ? config.orderBy(aliased, getOrderByOperators()) : config.orderBy;
  if (orderBy !== undefined && !Array.isArray(orderBy)) orderBy = [orderBy];
  for (const x of (orderBy ?? []) as unknown[]) expr(x, 'a relational query order by');
}

/**
 * Checks SQL that reaches `sqlToQuery` without a builder (`db.execute(sql...)`, `$count`, a builder's
 * SQL was already checked when it was built): every encrypted column in it must be allowed.
 */
export function guardSql(root: SQL, allowsSql: (chunks: readonly unknown[]) => boolean): void {
  if (queries.has(root) || isTrustedSql(root)) return;
  withShapes(allowsSql, () => expr(root, 'an sql template'));
}

/** Drizzle's order of the fields of a selection object (nested objects and tables flattened). */
function orderFields(fields: Record<string, unknown>): Field[] {
  const out: Field[] = [];
  const walk = (o: Record<string, unknown>) => {
    for (const v of Object.values(o)) {
      if (v === null || typeof v !== 'object') continue;
      if (is(v, Column) || is(v, SQL) || is(v, SQL.Aliased) || is(v, Subquery)) out.push({ field: v });
      else if (is(v, Table)) walk(columnsOf(v) as Record<string, unknown>);
      else walk(v as Record<string, unknown>);
    }
  };
  walk(fields);
  return out;
}
