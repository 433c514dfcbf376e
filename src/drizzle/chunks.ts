// The Drizzle version seam: every difference between the SQL trees of drizzle-orm 0.44/0.45 and
// 1.0 that the library depends on is bridged here, by feature detection (never a version string),
// and every other module sees one layout. Unknown layouts are refused (fail closed).
import * as drizzleOrm from 'drizzle-orm';
import { type Column, is, Name, Param, SQL, StringChunk } from 'drizzle-orm';

/**
 * The text of a StringChunk on every supported Drizzle version: 0.45 keeps `value: string[]`,
 * 1.0 keeps `value: string`. Anything else is not a layout this library understands and is
 * refused (fail closed) rather than guessed at.
 */
export function chunkText(c: StringChunk): string {
  const v = (c as { value: unknown }).value;
  if (typeof v === 'string') return v;
  if (Array.isArray(v) && v.every((s) => typeof s === 'string')) return v.join('');
  throw new TypeError('drizzle-byok: unrecognised StringChunk layout (unsupported drizzle-orm version)');
}

/**
 * The chunks of an SQL node without the empty text around its operands: 0.45 builds
 * `eq(c, v)` as `['', c, ' = ', v, '']` (a template), 1.0 as `[c, ' = ', v]`. Both give `[c, ' = ', v]`.
 */
export function significantChunks(chunks: readonly unknown[]): unknown[] {
  const out: unknown[] = [];
  for (const c of chunks) {
    if (c === undefined) continue;
    if (c instanceof StringChunk && chunkText(c) === '') continue;
    out.push(c);
  }
  return out;
}

/** 1.0 keeps insert rows as raw cells in one `ValueRows` chunk; 0.45 as arrays of `Param`s. */
interface ValueRowsLike {
  readonly cells: readonly unknown[];
  readonly encoders: readonly unknown[];
}
const ValueRows = (drizzleOrm as Record<string, unknown>).ValueRows as
  | (abstract new (
      ...args: never[]
    ) => ValueRowsLike)
  | undefined;

/** Whether this Drizzle builds insert rows from raw values (1.0) rather than `Param`s (0.45). */
export const RAW_INSERT_CELLS: boolean = typeof ValueRows === 'function';

function isValueRows(c: unknown): c is ValueRowsLike {
  return ValueRows !== undefined && c !== null && typeof c === 'object' && is(c, ValueRows as never);
}

/**
 * Insert rows in the 0.45 layout: each value a `Param` bound to its column (SQL values as they are,
 * `undefined` left out). On 1.0 the builder receives raw values; the library's insert checks
 * (tenant of each row, blind index values, the guard) are written for `Param`s, and the `Param`
 * objects they inspect must be the ones the query is built from.
 */
export function paramRows(
  table: unknown,
  rows: readonly Record<string, unknown>[],
): Record<string, unknown>[] | undefined {
  if (!RAW_INSERT_CELLS) return undefined;
  const columns = (table as Record<symbol, Record<string, Column> | undefined>)[
    Symbol.for('drizzle:Columns')
  ];
  if (columns === undefined) return undefined;
  return rows.map((row) => {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(row)) {
      const v = row[key];
      const col = columns[key];
      if (v === undefined || col === undefined) {
        out[key] = v;
        continue;
      }
      // As 0.45's insert builder: SQL as it is, everything else (placeholders too) a Param.
      out[key] = v !== null && typeof v === 'object' && (is(v, SQL) || is(v, Param)) ? v : new Param(v, col);
    }
    return out;
  });
}

/**
 * Rewrites, in the SQL an insert builder returned, a 1.0 `ValueRows` chunk into the 0.45 layout:
 * one array per row (`(a, b), (c, d)`), each cell kept as the object the rows held (so a `Param`
 * the library inspected is the `Param` sent). Same SQL text, same parameters. Only SQL nodes the
 * builder just created are changed (never the shared constant chunks).
 */
export function valueRowsAsArrays(built: SQL): SQL {
  if (!RAW_INSERT_CELLS) return built;
  const visit = (s: SQL, depth: number): boolean => {
    if (depth > 4) return false;
    const chunks = s.queryChunks as unknown[];
    for (let i = 0; i < chunks.length; i++) {
      const c = chunks[i];
      if (isValueRows(c)) {
        const width = c.encoders.length;
        const rows: unknown[] = [];
        for (let r = 0; r < c.cells.length; r += width) {
          if (rows.length > 0) rows.push(new StringChunk(', '));
          rows.push(
            c.cells.slice(r, r + width).map((cell, j) => {
              if (
                cell !== null &&
                typeof cell === 'object' &&
                (is(cell, SQL) || is(cell, StringChunk) || is(cell, Param))
              )
                return cell;
              return new Param(cell, c.encoders[j] as never);
            }),
          );
        }
        chunks[i] = new SQL(rows as never);
        return true;
      }
      if (c instanceof SQL && visit(c, depth + 1)) return true;
    }
    return false;
  };
  visit(built, 0);
  return built;
}

interface InsertBuilder {
  buildInsertQuery: (config: { table: unknown; values: unknown; select?: boolean }) => SQL;
}

/**
 * The insert half of the seam, in two wrappers around a dialect's `buildInsertQuery`: `inner`
 * (install first, next to Drizzle's own) turns the built `ValueRows` into row arrays; `outer`
 * (install last, so every other instrumentation sees it) binds raw row values to their columns.
 * Both are no-ops on a Drizzle that already builds `Param` rows.
 */
export function instrumentInsertLayout(dialect: object, part: 'inner' | 'outer'): void {
  if (!RAW_INSERT_CELLS) return;
  const d = dialect as InsertBuilder;
  const original = d.buildInsertQuery;
  if (part === 'inner') {
    d.buildInsertQuery = function (this: unknown, config) {
      return valueRowsAsArrays(original.call(this, config));
    };
    return;
  }
  d.buildInsertQuery = function (this: unknown, config) {
    if (config.select === true || !Array.isArray(config.values)) return original.call(this, config);
    const rows = paramRows(config.table, config.values as Record<string, unknown>[]);
    return original.call(this, rows === undefined ? config : { ...config, values: rows });
  };
}

interface SetOperationsBuilder {
  buildSetOperations: (left: SQL, ...rest: never[]) => SQL;
}

/**
 * `dialect.buildSetOperations` for a select's set operators on either signature: 0.45 takes
 * `(left, setOperators)`, 1.0 `(left, setFieldsFlat, useSelectionCastCodecs, setOperators)`.
 */
export function buildSetOperations(
  dialect: object,
  left: SQL,
  config: { setOperators: readonly unknown[]; setFieldsFlat?: unknown; useSelectionCastCodecs?: unknown },
): SQL {
  const d = dialect as SetOperationsBuilder;
  const f = d.buildSetOperations as (...args: unknown[]) => SQL;
  if (f.length >= 4)
    return f.call(d, left, config.setFieldsFlat, config.useSelectionCastCodecs, config.setOperators);
  if (f.length === 2) return f.call(d, left, config.setOperators);
  throw new TypeError(
    'drizzle-byok: unrecognised buildSetOperations signature (unsupported drizzle-orm version)',
  );
}

/** A placeholder's name (a public field on 0.45, protected in 1.0's types; the same at run time). */
export function placeholderName(p: unknown): string {
  return (p as { name: string }).name;
}

/** The table a column belongs to (`column.table`; not in 1.0's public column type). */
export function columnTable(c: unknown): unknown {
  return (c as { table?: unknown }).table;
}

/**
 * Whether `v` is `excluded.<name>` (an upsert's value proposed for the same column of the same row),
 * written as sql`excluded.name`, sql.raw(...) or sql`excluded.${sql.identifier(name)}`.
 */
export function isExcluded(v: unknown, name: string): boolean {
  if (!is(v, SQL)) return false;
  let text = '';
  for (const c of (v as SQL).queryChunks) {
    if (c instanceof StringChunk) text += chunkText(c);
    else if (is(c, Name)) text += `"${(c as Name).value}"`;
    else return false;
  }
  const t = text.trim();
  return t === `excluded.${name}` || t === `excluded."${name}"`;
}
