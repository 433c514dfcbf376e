import { Column, is, Param, Placeholder, SQL, StringChunk, sql } from 'drizzle-orm';
import { PgTable } from 'drizzle-orm/pg-core';
import { ByokConfigError, NoTenantError, TenantMismatchError } from '../errors.ts';
import { chunkText, columnTable, placeholderName } from './chunks.ts';
import { encryptedState } from './columns.ts';
import { assertTenantId, scopeStorage } from '../scope.ts';

/**
 * Tenant isolation in the query builders: with a tenant column configured, every table reference
 * that has that column (FROM, every join, UPDATE / DELETE targets, `update ... from`, `$count`,
 * relational queries at every level, both sides of set operations, subqueries and CTEs, which are
 * built by the same builders) gets the predicate `tenant = <scope tenant>`, and every tenant value a
 * statement writes (insert rows, `set`, `onConflictDoUpdate`, `insert ... select`) is checked.
 *
 * Invariants:
 * - The tenant is a bound parameter filled when the statement executes, from the scope it executes
 *   in: statements built or prepared outside a scope and run inside one are scoped to that tenant.
 *   `withAnyTenant` (and no scope at all) fills it with NULL, which turns the predicate off.
 * - Inside `withTenant(t)` a written tenant value is accepted only when it is provably `t`: a
 *   value or placeholder equal to `t` (checked at execution), or the tenant column of a table the
 *   statement reads scoped. Anything else (an SQL expression) is `TenantMismatchError`.
 * - Every tenant value written, in any scope, passes `assertTenantId`.
 * - The key store's own tables (schema `byok`) are never scoped.
 */

/** Name of the placeholder that carries the tenant of the scope a statement executes in. */
export const SCOPE_PLACEHOLDER = '\u0000byok:scope-tenant';
const scopeTenant = sql.placeholder(SCOPE_PLACEHOLDER);

const KEY_STORE_SCHEMA = 'byok';
/** Drizzle's table symbols (registered with Symbol.for, stable across installs). */
const Sym = {
  Schema: Symbol.for('drizzle:Schema'),
  Columns: Symbol.for('drizzle:Columns'),
  Name: Symbol.for('drizzle:Name'),
  OriginalName: Symbol.for('drizzle:OriginalName'),
  IsAlias: Symbol.for('drizzle:IsAlias'),
};
const CHECKS: unique symbol = Symbol('drizzle-byok:tenant-checks') as never;

/** A tenant value a statement writes, checked when it executes. */
export type TenantCheck =
  | { readonly kind: 'value'; readonly value: unknown; readonly where: string }
  | {
      readonly kind: 'placeholder';
      readonly name: string;
      readonly where: string;
      /** Encrypted placeholder params of the same row: encrypted under the row's tenant. */
      readonly rowParams: readonly Param[];
    }
  | { readonly kind: 'scope'; readonly where: string }
  | { readonly kind: 'scoped'; readonly where: string }
  | { readonly kind: 'expr'; readonly where: string };

interface TenantColumnInfo {
  readonly key: string;
  readonly column: Column;
}

/** `tenantColumnOf` per table (and alias) object and tenant column name: tables do not change. */
const tenantColumns = new WeakMap<object, Map<string, TenantColumnInfo | null>>();

/** The tenant column of a table (database or property name), or undefined (not scoped). */
export function tenantColumnOf(table: unknown, tenantColumn: string): TenantColumnInfo | undefined {
  if (!is(table, PgTable)) return undefined;
  let byName = tenantColumns.get(table as object);
  const known = byName?.get(tenantColumn);
  if (known !== undefined) return known ?? undefined;
  const info = findTenantColumn(table, tenantColumn);
  if (byName === undefined) {
    byName = new Map();
    tenantColumns.set(table as object, byName);
  }
  byName.set(tenantColumn, info ?? null);
  return info;
}

function findTenantColumn(table: unknown, tenantColumn: string): TenantColumnInfo | undefined {
  const t = table as unknown as Record<symbol, unknown>;
  if (t[Sym.Schema] === KEY_STORE_SCHEMA) return undefined;
  const columns = t[Sym.Columns] as Record<string, Column> | undefined;
  if (columns === undefined) return undefined;
  let byKey: TenantColumnInfo | undefined;
  for (const key in columns) {
    const c = columns[key]!;
    if (c.name === tenantColumn) return { key, column: c };
    if (key === tenantColumn) byKey = { key, column: c };
  }
  return byKey;
}

function tableLabel(table: unknown): string {
  const t = table as Record<symbol, unknown>;
  const schema = t[Sym.Schema] as string | undefined;
  const name = (t[Sym.OriginalName] ?? t[Sym.Name]) as string;
  return schema === undefined ? name : `${schema}.${name}`;
}

/** One predicate node per column: it holds no per-statement value (the tenant is a placeholder). */
const predicates = new WeakMap<Column, SQL>();

/** `tenant = $scope`, off when the scope tenant is NULL (withAnyTenant, no scope). */
function predicate(info: TenantColumnInfo): SQL {
  let p = predicates.get(info.column);
  if (p === undefined) {
    p = sql`(${info.column} = ${scopeTenant} or ${scopeTenant}::text is null)`;
    predicates.set(info.column, p);
  }
  return p;
}

/** The same for a table that an outer join may have null-extended (its ctid is then NULL). */
function nullablePredicate(table: unknown, info: TenantColumnInfo): SQL {
  const t = table as Record<symbol, unknown>;
  const name = t[Sym.Name] as string;
  const schema = t[Sym.Schema] as string | undefined;
  const ref =
    t[Sym.IsAlias] === true || schema === undefined
      ? sql`${sql.identifier(name)}`
      : sql`${sql.identifier(schema)}.${sql.identifier(name)}`;
  return sql`(${ref}.ctid is null or ${predicate(info)})`;
}

/**
 * `(c1) and (c2) ...`: each operand in its own parentheses, so a user's raw `sql\`a or b\`` keeps
 * its meaning next to the tenant predicate (Drizzle's `and` does not parenthesize raw SQL).
 */
function all(...conds: (SQL | undefined)[]): SQL | undefined {
  const present = conds.filter((c): c is SQL => c !== undefined);
  if (present.length <= 1) return present[0];
  const chunks: unknown[] = [new StringChunk('((')];
  for (let i = 0; i < present.length; i++) {
    if (i > 0) chunks.push(new StringChunk(') and ('));
    chunks.push(present[i]);
  }
  chunks.push(new StringChunk('))'));
  return new SQL(chunks as SQL['queryChunks']);
}

interface JoinMeta {
  table: unknown;
  joinType: string;
  on?: SQL;
  [k: string]: unknown;
}

/**
 * Scopes a FROM table and its joins. Inner and left joins get the joined table's predicate in ON;
 * right and full joins also get every earlier table's in ON, and the tables they can null-extend
 * are filtered in WHERE by a form that keeps null-extended rows. The FROM table is filtered in WHERE.
 */
function scopeSources(
  tenantColumn: string,
  from: unknown,
  joins: readonly JoinMeta[] | undefined,
  where: SQL | undefined,
): { joins: JoinMeta[] | undefined; where: SQL | undefined; changed: boolean } {
  const conds: (SQL | undefined)[] = [where];
  const seen: { table: unknown; info: TenantColumnInfo }[] = [];
  let changed = false;
  const fromInfo = tenantColumnOf(from, tenantColumn);
  const outerRight = joins?.some((j) => j.joinType === 'right' || j.joinType === 'full') ?? false;
  if (fromInfo !== undefined) {
    conds.push(outerRight ? nullablePredicate(from, fromInfo) : predicate(fromInfo));
    seen.push({ table: from, info: fromInfo });
    changed = true;
  }
  let newJoins: JoinMeta[] | undefined;
  if (joins !== undefined && joins.length > 0) {
    newJoins = joins.map((j) => {
      const info = tenantColumnOf(j.table, tenantColumn);
      const rightSide = j.joinType === 'right' || j.joinType === 'full';
      const on: (SQL | undefined)[] = [j.on];
      if (rightSide) for (const s of seen) on.push(nullablePredicate(s.table, s.info));
      if (info !== undefined) {
        if (j.on === undefined && !rightSide) {
          conds.push(nullablePredicate(j.table, info)); // cross join: no ON clause
        } else {
          on.push(predicate(info));
          if (rightSide) conds.push(nullablePredicate(j.table, info));
        }
        seen.push({ table: j.table, info });
      }
      if (on.length === 1) return j;
      changed = true;
      return { ...j, on: all(...on) };
    });
  }
  return { joins: newJoins ?? (joins as JoinMeta[] | undefined), where: all(...conds), changed };
}

// -----------------------------------------------------------------------------------------------
// Write checks

function attach(target: SQL, checks: TenantCheck[]): SQL {
  if (checks.length === 0) return target;
  const existing = (target as unknown as { [CHECKS]?: TenantCheck[] })[CHECKS];
  if (existing !== undefined) existing.push(...checks);
  else Object.defineProperty(target, CHECKS, { value: checks, enumerable: false });
  return target;
}

/**
 * The write checks attached to one SQL node (insert, update set, conflict update), if any. The
 * pipeline's single SQL walk reaches every node of a statement (CTEs, subqueries) and collects them.
 */
export function checksOf(node: SQL): readonly TenantCheck[] | undefined {
  return (node as unknown as { [CHECKS]?: TenantCheck[] })[CHECKS];
}

/** One value a statement writes to a tenant column: what must be checked when it runs. */
function checkFor(value: unknown, where: string, rowParams: readonly Param[]): TenantCheck {
  if (is(value, Param)) {
    const v = (value as Param).value;
    if (is(v, Placeholder)) return { kind: 'placeholder', name: placeholderName(v), where, rowParams };
    return { kind: 'value', value: v, where };
  }
  if (is(value, Placeholder)) return { kind: 'placeholder', name: placeholderName(value), where, rowParams };
  if (is(value, SQL) || is(value, SQL.Aliased)) {
    const inner = is(value, SQL.Aliased) ? (value as unknown as { sql: SQL }).sql : (value as SQL);
    const parts = inner.queryChunks.filter((c) => !(c instanceof StringChunk && chunkText(c).trim() === ''));
    if (parts.length === 1) {
      const only = parts[0];
      if (is(only, Param) || is(only, Placeholder)) return checkFor(only, where, rowParams);
      if (typeof only === 'string') return { kind: 'value', value: only, where };
    }
  }
  return { kind: 'expr', where };
}

/**
 * Checks a statement's written tenant values against the scope it executes in. Returns the tenant
 * of each encrypted placeholder param whose row takes its tenant from a placeholder.
 */
export function runChecks(
  checks: readonly TenantCheck[],
  values: Readonly<Record<string, unknown>>,
): Map<Param, string> | undefined {
  const scoped = scopeStorage.getStore()?.tenantId;
  let rowTenants: Map<Param, string> | undefined;
  for (const c of checks) {
    if (c.kind === 'expr') {
      if (typeof scoped === 'string') {
        throw new TenantMismatchError(
          `${c.where}: the tenant column is given as an SQL expression, which cannot be verified to be ` +
            `the scope's tenant ${scoped}: pass the tenant id as a value (or run it in withAnyTenant)`,
          { tenantId: scoped },
        );
      }
      continue;
    }
    if (c.kind === 'scoped') continue;
    if (c.kind === 'scope') {
      if (typeof scoped !== 'string') {
        throw new NoTenantError(
          `${c.where}: the row has no value for the tenant column and no tenant is in scope: ` +
            'give the row its tenant, or run it inside withTenant(tenantId, ...)',
        );
      }
      continue;
    }
    let v: unknown;
    if (c.kind === 'value') v = c.value;
    else {
      if (!(c.name in values)) throw new ByokConfigError(`no value for placeholder "${c.name}"`);
      v = values[c.name];
    }
    if (v === null || v === undefined) {
      if (typeof scoped === 'string') {
        throw new TenantMismatchError(
          `${c.where}: a row without a tenant was written inside the scope of tenant ${scoped}`,
          {
            tenantId: scoped,
          },
        );
      }
      continue;
    }
    assertTenantId(v, `${c.where}: the tenant column value`);
    if (typeof scoped === 'string' && v !== scoped) {
      throw new TenantMismatchError(
        `${c.where}: a row of tenant ${v} was written inside the scope of tenant ${scoped}`,
        {
          tenantId: scoped,
        },
      );
    }
    if (c.kind === 'placeholder' && c.rowParams.length > 0) {
      rowTenants ??= new Map();
      for (const p of c.rowParams) rowTenants.set(p, v);
    }
  }
  return rowTenants;
}

// -----------------------------------------------------------------------------------------------
// Dialect instrumentation

interface InsertConfig {
  table: unknown;
  values: unknown;
  select?: boolean;
  onConflict?: SQL;
  [k: string]: unknown;
}
interface ScopedDialect {
  buildSelectQuery(config: { table: unknown; joins?: JoinMeta[]; where?: SQL; [k: string]: unknown }): SQL;
  buildUpdateQuery(config: {
    table: unknown;
    where?: SQL;
    from?: unknown;
    joins?: JoinMeta[];
    [k: string]: unknown;
  }): SQL;
  buildDeleteQuery(config: { table: unknown; where?: SQL; [k: string]: unknown }): SQL;
  buildInsertQuery(config: InsertConfig): SQL;
  buildUpdateSet(table: unknown, set: Record<string, unknown>): SQL;
}

/** Instruments a PgDialect's query builders to scope every statement to the tenant in scope. */
export function instrumentTenantIsolation(dialect: object, tenantColumn: string): void {
  const d = dialect as ScopedDialect;
  const select = d.buildSelectQuery;
  const update = d.buildUpdateQuery;
  const del = d.buildDeleteQuery;
  const insert = d.buildInsertQuery;
  const updateSet = d.buildUpdateSet;
  if ([select, update, del, insert, updateSet].some((f) => typeof f !== 'function')) {
    throw new ByokConfigError(
      'withEncryption: this Drizzle version has no PgDialect query builders to scope tenants in',
    );
  }

  d.buildSelectQuery = function (this: unknown, config) {
    const s = scopeSources(tenantColumn, config.table, config.joins, config.where);
    return select.call(this, s.changed ? { ...config, joins: s.joins, where: s.where } : config);
  };

  d.buildUpdateQuery = function (this: unknown, config) {
    const target = tenantColumnOf(config.table, tenantColumn);
    const s = scopeSources(tenantColumn, config.from, config.joins, config.where);
    const where = target === undefined ? s.where : all(s.where, predicate(target));
    if (!s.changed && target === undefined) return update.call(this, config);
    return update.call(this, { ...config, joins: s.joins, where });
  };

  d.buildDeleteQuery = function (this: unknown, config) {
    const target = tenantColumnOf(config.table, tenantColumn);
    if (target === undefined) return del.call(this, config);
    return del.call(this, { ...config, where: all(config.where, predicate(target)) });
  };

  d.buildUpdateSet = function (this: unknown, table, set) {
    const built = updateSet.call(this, table, set);
    const info = tenantColumnOf(table, tenantColumn);
    if (info === undefined || set[info.key] === undefined) return built;
    return attach(built, [checkFor(set[info.key], `update of ${tableLabel(table)}`, [])]);
  };

  d.buildInsertQuery = function (this: unknown, config) {
    const info = tenantColumnOf(config.table, tenantColumn);
    if (info === undefined) return insert.call(this, config);
    const where = `insert into ${tableLabel(config.table)}`;
    const checks: TenantCheck[] = [];
    let next = config;
    if (config.select) {
      checks.push(selectCheck(config.values, info, tenantColumn, where));
    } else {
      const rows = config.values as Record<string, unknown>[];
      let copied: Record<string, unknown>[] | undefined;
      for (let i = 0; i < rows.length; i++) {
        const row = rows[i]!;
        const v = row[info.key];
        if (v === undefined || (is(v, Param) && (v as Param).value === undefined)) {
          copied ??= rows.slice();
          copied[i] = { ...row, [info.key]: new Param(scopeTenant, info.column) };
          checks.push({ kind: 'scope', where });
          continue;
        }
        let rowParams: Param[] = [];
        if (is(v, Param) && is((v as Param).value, Placeholder)) {
          rowParams = [];
          for (const k in row) {
            const p = row[k];
            if (is(p, Param) && is((p as Param).value, Placeholder) && encryptedState((p as Param).encoder))
              rowParams.push(p as Param);
          }
        }
        checks.push(checkFor(v, where, rowParams));
      }
      if (copied !== undefined) next = { ...config, values: copied };
    }
    if (config.onConflict !== undefined) {
      const scopedConflict = scopeConflictUpdate(config.onConflict, info);
      if (scopedConflict !== config.onConflict) next = { ...next, onConflict: scopedConflict };
    }
    return attach(insert.call(this, next), checks);
  };
}

/** `insert ... select`: the selected tenant must provably be the scope's. */
function selectCheck(
  source: unknown,
  info: TenantColumnInfo,
  tenantColumn: string,
  where: string,
): TenantCheck {
  const what = `${where} ... select`;
  if (is(source, SQL)) return { kind: 'expr', where: what };
  const fields = (source as { _?: { selectedFields?: Record<string, unknown> } })._?.selectedFields;
  const field = fields?.[info.key];
  if (field === undefined) return { kind: 'expr', where: what };
  if (is(field, Column)) {
    const col = field as Column;
    const own = tenantColumnOf(columnTable(col), tenantColumn);
    // The tenant column of a table the select reads: scoped by the select's own predicate.
    if (own !== undefined && own.column.name === col.name && selectReads(source, columnTable(col))) {
      return { kind: 'scoped', where: what };
    }
    return { kind: 'expr', where: what };
  }
  return checkFor(field, what, []);
}

function selectReads(source: unknown, table: unknown): boolean {
  const config = (source as { config?: { table?: unknown; joins?: { table: unknown }[] } }).config;
  if (config === undefined) return false;
  const name = (t: unknown) => (t as Record<symbol, unknown>)[Sym.Name];
  const target = name(table);
  if (is(config.table, PgTable) && name(config.table) === target) return true;
  return (config.joins ?? []).some((j) => is(j.table, PgTable) && name(j.table) === target);
}

/**
 * `on conflict ... do update set ... [where w]`: the existing row must be the scope tenant's, so
 * the condition becomes `where (w) and tenant = $scope`. Rows of another tenant are left alone.
 */
function scopeConflictUpdate(onConflict: SQL, info: TenantColumnInfo): SQL {
  const chunks = onConflict.queryChunks;
  const at = chunks.findIndex((c) => c instanceof StringChunk && chunkText(c).includes('do update set'));
  if (at < 0) return onConflict; // do nothing
  const head = chunks.slice(0, at + 2); // ... do update set <set>
  const conds: SQL[] = [];
  for (const c of chunks.slice(at + 2)) {
    if (c === undefined) continue;
    if (c instanceof StringChunk && chunkText(c).trim() === '') continue;
    const inner = is(c, SQL) ? (c as SQL).queryChunks : undefined;
    const first = inner?.[0];
    if (
      inner === undefined ||
      !(first instanceof StringChunk) ||
      chunkText(first).trim() !== 'where' ||
      inner.length < 2
    ) {
      throw new ByokConfigError(
        'onConflictDoUpdate: unrecognized conflict clause; cannot scope it to the tenant',
      );
    }
    conds.push(sql`(${new SQL(inner.slice(1))})`);
  }
  conds.push(predicate(info));
  return new SQL([...head, sql` where ${all(...conds)}`]);
}

// -----------------------------------------------------------------------------------------------
// $count

/** Scopes `db.$count(table, where)` (it builds raw SQL, not through the dialect). */
export function instrumentCount(db: object, tenantColumn: string): void {
  const d = db as { $count?: (source: unknown, filters?: SQL) => unknown };
  const count = d.$count;
  if (typeof count !== 'function' || Object.hasOwn(d, '$count')) return;
  d.$count = function (this: unknown, source: unknown, filters?: SQL) {
    const info = tenantColumnOf(source, tenantColumn);
    return count.call(this, source, info === undefined ? filters : all(filters, predicate(info)));
  };
}

// -----------------------------------------------------------------------------------------------
// Configuration check

/**
 * With a schema given to drizzle, checks that `tenantColumn` names a column (database or property
 * name) of every table that has encrypted columns, and lists the candidates when it does not.
 */
export function checkTenantColumn(tables: readonly unknown[], tenantColumn: string): void {
  for (const table of tables) {
    if (!is(table, PgTable)) continue;
    const columns = (table as unknown as Record<symbol, Record<string, Column>>)[Sym.Columns] ?? {};
    const hasEncrypted = Object.values(columns).some((c) => encryptedState(c) !== undefined);
    if (!hasEncrypted || tenantColumnOf(table, tenantColumn) !== undefined) continue;
    const candidates = Object.entries(columns)
      .filter(([, c]) => encryptedState(c) === undefined)
      .map(([key, c]) => (key === c.name ? `'${c.name}'` : `'${c.name}' (property ${key})`));
    throw new ByokConfigError(
      `withEncryption: tenantColumn '${tenantColumn}' is not a column of table ${tableLabel(table)}, ` +
        `which has encrypted columns; its plain columns are ${candidates.join(', ') || 'none'}`,
    );
  }
}

/**
 * The tenant predicate for one table reference (a relational query level's aliased table), or
 * undefined when the table has no tenant column.
 */
export function scopePredicateOf(table: unknown, tenantColumn: string): SQL | undefined {
  const info = tenantColumnOf(table, tenantColumn);
  return info === undefined ? undefined : predicate(info);
}
