import {
  and,
  Column,
  eq,
  inArray,
  is,
  isNotNull,
  isNull,
  isSQLWrapper,
  not,
  or,
  type SQL,
} from 'drizzle-orm';

/**
 * Relational queries v2 (drizzle-orm 1.0: `defineRelations`, `db.query.t.findMany({ where: {...} })`).
 *
 * Drizzle builds a v2 query straight into one flat chunk list, so the library prepares the query
 * config before Drizzle sees it, at every level (`with`, relation filters):
 * - `where` on an encrypted column becomes the equivalent `eq` / `inArray` / `isNull` SQL as a
 *   `RAW` filter, which then meets the same rules as everywhere else: a blind-indexed column is
 *   looked up by its index (`{ email: 'x' }`, `{ email: { in: [...] } }`), `isNull` / `isNotNull`
 *   are allowed, anything else is refused with `EncryptedColumnUsageError` (fail closed);
 * - `RAW` filters, `orderBy` and `extras` callbacks are checked on what they return; an encrypted
 *   column in an `orderBy` object is refused;
 * - with a tenant column, every level (and every relation filter's subquery) gets the tenant
 *   predicate, as selects do.
 */
export interface RelationalV2Hooks {
  /** The guard on an expression (throws `EncryptedColumnUsageError`). */
  expr(x: unknown, site: string): void;
  /** The encrypted / blind index state of a column, if any. */
  guarded(c: unknown): { readonly label: string } | undefined;
  refuse(g: { readonly label: string }, site: string, hint?: string): never;
  /** The tenant predicate of a table reference, when scoping is on and the table has the column. */
  scope?: (table: unknown) => SQL | undefined;
}

interface RelationV2 {
  readonly targetTableName: string;
}
export interface TableConfigV2 {
  readonly table: unknown;
  readonly relations: Record<string, RelationV2>;
}
type Filter = Record<string, unknown>;
type Config = Record<string, unknown>;

const COLUMNS = Symbol.for('drizzle:Columns');
const WHERE = 'a relational query where';
const ORDER = 'a relational query order by';
const EXTRAS = 'relational query extras';
const HINT =
  'On an encrypted column a relational filter may use equality on a blind-indexed column ({ col: value }, { col: { eq } }, { col: { in: [...] } }) and isNull / isNotNull.';

function columnsOf(tableConfig: TableConfigV2): Record<string, Column> {
  return ((tableConfig.table as Record<symbol, unknown>)[COLUMNS] ?? {}) as Record<string, Column>;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const p = Object.getPrototypeOf(v);
  return p === Object.prototype || p === null;
}

/** The prepared copy of a v2 query config (the user's object is never changed). */
export function prepareRelationalV2(
  queryConfig: unknown,
  tableConfig: TableConfigV2,
  schema: Record<string, TableConfigV2>,
  hooks: RelationalV2Hooks,
): unknown {
  const config: Config = isPlainObject(queryConfig) ? { ...queryConfig } : {};
  if (queryConfig !== true && queryConfig !== undefined && !isPlainObject(queryConfig)) return queryConfig;
  const where = 'where' in config ? prepareFilter(config.where, tableConfig, schema, hooks) : undefined;
  const scoped = scopeFilter(tableConfig, hooks);
  if (scoped !== undefined) config.where = where === undefined ? scoped : { AND: [where, scoped] };
  else if ('where' in config) config.where = where;
  if (config.orderBy !== undefined) config.orderBy = prepareOrder(config.orderBy, tableConfig, schema, hooks);
  if (config.extras !== undefined) config.extras = prepareExtras(config.extras, hooks);
  if (isPlainObject(config.with)) {
    const withs: Config = {};
    for (const [k, v] of Object.entries(config.with)) {
      const rel = tableConfig.relations[k];
      const target = rel === undefined ? undefined : schema[rel.targetTableName];
      // Unknown relations and falsy entries: left to Drizzle (it names the unknown relation).
      withs[k] = target === undefined || !v ? v : prepareRelationalV2(v, target, schema, hooks);
    }
    config.with = withs;
  }
  if (queryConfig === true && scoped === undefined && Object.keys(config).length === 0) return true;
  return config;
}

function scopeFilter(tableConfig: TableConfigV2, hooks: RelationalV2Hooks): Filter | undefined {
  const scope = hooks.scope;
  if (scope === undefined || scope(tableConfig.table) === undefined) return undefined;
  return { RAW: (t: unknown) => scope(t) };
}

function prepareFilter(
  filter: unknown,
  tableConfig: TableConfigV2,
  schema: Record<string, TableConfigV2>,
  hooks: RelationalV2Hooks,
): unknown {
  if (!isPlainObject(filter)) return filter; // Drizzle's own errors for malformed filters
  const columns = columnsOf(tableConfig);
  const out: Filter = {};
  /** Conditions added by the library, joined with the user's (an `AND` of the user's own stays its own). */
  const extra: Filter[] = [];
  for (const [key, value] of Object.entries(filter)) {
    if (key === 'RAW') {
      out.RAW = checkedRaw(value, hooks);
    } else if (key === 'AND' || key === 'OR') {
      out[key] = Array.isArray(value)
        ? value.map((f) => prepareFilter(f, tableConfig, schema, hooks))
        : value;
    } else if (key === 'NOT') {
      out.NOT = prepareFilter(value, tableConfig, schema, hooks);
    } else if (Object.hasOwn(columns, key) && columns[key] !== undefined) {
      const col = columns[key]!;
      if (hooks.guarded(col) !== undefined) {
        // Built against the level's aliased table when Drizzle runs it, then guarded like any SQL.
        const raw = (t: Record<string, unknown>) => {
          const sqlNode = encryptedFilter(
            (t as Record<symbol, Record<string, Column>>)[COLUMNS]?.[key] ?? col,
            value,
            col,
            hooks,
          );
          if (sqlNode !== undefined) hooks.expr(sqlNode, WHERE);
          return sqlNode;
        };
        extra.push({ RAW: raw });
      } else {
        checkValues(value, hooks);
        out[key] = value;
      }
    } else {
      const rel = tableConfig.relations[key];
      const target = rel === undefined ? undefined : schema[rel.targetTableName];
      if (target === undefined) {
        out[key] = value; // Drizzle refuses the unknown filter field
        continue;
      }
      const scoped = scopeFilter(target, hooks);
      if (typeof value === 'boolean') {
        // exists / not exists of related rows: of the tenant's rows only.
        if (scoped === undefined) out[key] = value;
        else if (value) out[key] = scoped;
        else extra.push({ NOT: { [key]: scoped } });
        continue;
      }
      const inner = prepareFilter(value, target, schema, hooks);
      out[key] = scoped === undefined ? inner : { AND: [inner, scoped] };
    }
  }
  if (extra.length === 0) return out;
  return Object.keys(out).length === 0
    ? extra.length === 1
      ? extra[0]
      : { AND: extra }
    : { AND: [out, ...extra] };
}

/** The SQL of a filter on an encrypted column: eq / inArray / isNull / isNotNull, else refused. */
function encryptedFilter(
  col: Column,
  value: unknown,
  original: Column,
  hooks: RelationalV2Hooks,
): SQL | undefined {
  const g = hooks.guarded(original)!;
  if (!isPlainObject(value)) return eq(col, value);
  const parts: SQL[] = [];
  for (const [op, v] of Object.entries(value)) {
    if (v === undefined) continue;
    switch (op) {
      case 'eq':
        parts.push(eq(col, v));
        break;
      case 'in':
        if (!Array.isArray(v)) hooks.refuse(g, WHERE, HINT);
        parts.push(inArray(col, v as unknown[]));
        break;
      case 'isNull':
        if (v) parts.push(isNull(col));
        break;
      case 'isNotNull':
        if (v) parts.push(isNotNull(col));
        break;
      case 'OR':
      case 'AND': {
        if (!Array.isArray(v)) hooks.refuse(g, WHERE, HINT);
        const subs = (v as unknown[])
          .map((x) => encryptedFilter(col, x, original, hooks))
          .filter((x): x is SQL => x !== undefined);
        const joined = op === 'OR' ? or(...subs) : and(...subs);
        if (joined !== undefined) parts.push(joined);
        break;
      }
      case 'NOT': {
        const inner = encryptedFilter(col, v, original, hooks);
        if (inner !== undefined) parts.push(not(inner) as SQL);
        break;
      }
      default:
        hooks.refuse(g, `${WHERE} (${op})`, HINT);
    }
  }
  return parts.length === 0 ? undefined : parts.length === 1 ? parts[0] : and(...parts);
}

function checkValues(value: unknown, hooks: RelationalV2Hooks): void {
  if (value === null || typeof value !== 'object') return;
  if (is(value, Column) || isSQLWrapper(value)) {
    hooks.expr(value, WHERE);
    return;
  }
  if (Array.isArray(value)) for (const v of value) checkValues(v, hooks);
  else if (isPlainObject(value)) for (const v of Object.values(value)) checkValues(v, hooks);
}

function checkedRaw(raw: unknown, hooks: RelationalV2Hooks): unknown {
  if (typeof raw === 'function') {
    return (...args: unknown[]) => {
      const r = (raw as (...a: unknown[]) => unknown)(...args);
      hooks.expr(r, WHERE);
      return r;
    };
  }
  hooks.expr(raw, WHERE);
  return raw;
}

function prepareOrder(
  orderBy: unknown,
  tableConfig: TableConfigV2,
  schema: Record<string, TableConfigV2>,
  hooks: RelationalV2Hooks,
): unknown {
  if (typeof orderBy === 'function') {
    return (...args: unknown[]) => {
      const r = (orderBy as (...a: unknown[]) => unknown)(...args);
      for (const x of Array.isArray(r) ? r : [r]) hooks.expr(x, ORDER);
      return r;
    };
  }
  if (!isPlainObject(orderBy)) {
    hooks.expr(orderBy, ORDER);
    return orderBy;
  }
  const columns = columnsOf(tableConfig);
  const out: Config = {};
  for (const [key, v] of Object.entries(orderBy)) {
    const col = Object.hasOwn(columns, key) ? columns[key] : undefined;
    if (col !== undefined) {
      const g = hooks.guarded(col);
      if (g !== undefined) hooks.refuse(g, ORDER);
      out[key] = v;
      continue;
    }
    const rel = tableConfig.relations[key];
    const target = rel === undefined ? undefined : schema[rel.targetTableName];
    out[key] = target !== undefined && isPlainObject(v) ? prepareOrder(v, target, schema, hooks) : v;
  }
  return out;
}

function prepareExtras(extras: unknown, hooks: RelationalV2Hooks): unknown {
  if (!isPlainObject(extras)) {
    hooks.expr(extras, EXTRAS);
    return extras;
  }
  const out: Config = {};
  for (const [k, v] of Object.entries(extras)) {
    out[k] =
      typeof v === 'function'
        ? (...args: unknown[]) => {
            const r = (v as (...a: unknown[]) => unknown)(...args);
            hooks.expr(r, EXTRAS);
            return r;
          }
        : (hooks.expr(v, EXTRAS), v);
  }
  return out;
}
