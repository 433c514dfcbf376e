import { Column, is, isSQLWrapper, Name, Param, Placeholder, SQL, Subquery, Table, View } from 'drizzle-orm';

/**
 * The SQL tree a chunk is rendered from, when Drizzle renders it by rendering another tree: a
 * subquery, an aliased SQL expression, a query builder used as a value. Undefined for leaves
 * (columns, params, placeholders, names, tables, views, `with` references). SQL nodes and arrays
 * are walked directly by the callers. Shared by every walk over a query before it is built.
 */
export function nestedSql(c: object): SQL | undefined {
  if (is(c, Column) || is(c, Param) || is(c, Placeholder) || is(c, Name) || is(c, Table) || is(c, View)) {
    return undefined;
  }
  if (is(c, Subquery)) {
    const sq = c as unknown as { _: { sql: SQL; isWith?: boolean } };
    return sq._.isWith ? undefined : sq._.sql;
  }
  if (is(c, SQL.Aliased)) return (c as unknown as { sql: SQL }).sql;
  if (isSQLWrapper(c)) {
    const inner = c.getSQL();
    return inner.queryChunks.includes(c) ? undefined : inner;
  }
  return undefined;
}

const trusted = new WeakSet<object>();

/**
 * Marks an SQL node the library built itself (a blind index lookup, a vetted `set` list) as allowed
 * where the guard would otherwise refuse an encrypted or blind index column. Returns the node.
 */
export function trustSql<T extends object>(node: T): T {
  trusted.add(node);
  return node;
}

export function isTrustedSql(node: object): boolean {
  return trusted.has(node);
}

/** Drops the mark of `trustSql` (a rewrite undone). */
export function untrustSql(node: object): void {
  trusted.delete(node);
}
