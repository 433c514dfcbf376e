import { is, Param, type SQL, sql } from 'drizzle-orm';
import { isExcluded } from '../drizzle/chunks.ts';
import { ByokConfigError } from '../errors.ts';
import type { Keyring } from '../keys/keyring.ts';
import { type BlindIndexState, type BlindSource, blindState, columnsOf } from './column.ts';
import { BlindWriteSource, WRITE_ENCODER } from './sealed.ts';

// -----------------------------------------------------------------------------------------------
// Write path: the dialect adds the index value wherever the source column is written

interface TableIndexes {
  readonly indexes: readonly { key: string; state: BlindIndexState; source: BlindSource }[];
  readonly tenantKey: string | undefined;
}

const tableCache = new WeakMap<object, Map<string | undefined, TableIndexes>>();
const NONE: TableIndexes = { indexes: [], tenantKey: undefined };

export function tableIndexes(table: unknown, tenantColumn: string | undefined): TableIndexes {
  if (table === null || typeof table !== 'object') return NONE;
  let byTenant = tableCache.get(table);
  const hit = byTenant?.get(tenantColumn);
  if (hit !== undefined) return hit;
  const cols = columnsOf(table) ?? {};
  const indexes: { key: string; state: BlindIndexState; source: BlindSource }[] = [];
  let tenantKey: string | undefined;
  for (const [key, c] of Object.entries(cols)) {
    const st = blindState(c);
    if (st !== undefined) indexes.push({ key, state: st, source: st.source() });
    if (tenantColumn !== undefined && c.name === tenantColumn) tenantKey = key;
  }
  const info: TableIndexes = indexes.length === 0 ? NONE : { indexes, tenantKey };
  if (byTenant === undefined) {
    byTenant = new Map();
    tableCache.set(table, byTenant);
  }
  byTenant.set(tenantColumn, info);
  return info;
}

interface WritableDialect {
  buildInsertQuery: (config: {
    table: unknown;
    values: unknown;
    select?: boolean;
    [k: string]: unknown;
  }) => SQL;
  buildUpdateSet: (table: unknown, set: Record<string, unknown>) => SQL;
}

/**
 * Instruments a dialect's insert and update-set builders: rows and `set` objects that write a
 * source column get the index column's value too (computed when the statement is mapped).
 */
export function instrumentBlindWrites(
  dialect: object,
  keyring: Keyring,
  tenantColumn: string | undefined,
): void {
  const d = dialect as WritableDialect;
  const insert = d.buildInsertQuery;
  const updateSet = d.buildUpdateSet;
  if (typeof insert !== 'function' || typeof updateSet !== 'function') return;
  d.buildInsertQuery = function (this: unknown, config) {
    const info = tableIndexes(config.table, tenantColumn);
    if (info.indexes.length === 0) return insert.call(this, config);
    if (config.select) {
      throw new ByokConfigError(
        `insert ... select into a table with blind index ${info.indexes[0]!.state.label}: the index cannot be ` +
          'computed in SQL; insert values instead',
      );
    }
    const values = (config.values as Record<string, unknown>[]).map((row) =>
      withIndexValues(row, info, keyring, tenantColumn, false),
    );
    return insert.call(this, { ...config, values });
  };
  d.buildUpdateSet = function (this: unknown, table, set) {
    const info = tableIndexes(table, tenantColumn);
    if (info.indexes.length === 0) return updateSet.call(this, table, set);
    return updateSet.call(this, table, withIndexValues(set, info, keyring, tenantColumn, true));
  };
}

function unset(v: unknown): boolean {
  return v === undefined || (is(v, Param) && (v as Param).value === undefined);
}

function withIndexValues(
  row: Record<string, unknown>,
  info: TableIndexes,
  keyring: Keyring,
  tenantColumn: string | undefined,
  isUpdate: boolean,
): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  const t = info.tenantKey === undefined || isUpdate ? undefined : row[info.tenantKey];
  const rowTenant =
    is(t, Param) && typeof (t as Param).value === 'string' ? ((t as Param).value as string) : undefined;
  for (const ix of info.indexes) {
    if (!unset(row[ix.key])) {
      throw new ByokConfigError(
        `${ix.state.label} is a blind index: drizzle-byok writes it from ${ix.source.state.label}; do not set it`,
      );
    }
    const src = row[ix.source.key];
    if (unset(src)) continue;
    let value: unknown;
    if (is(src, Param)) {
      const v = (src as Param).value;
      value =
        v === null
          ? new Param(null, WRITE_ENCODER)
          : new Param(new BlindWriteSource(keyring, ix.state, v, rowTenant, tenantColumn), WRITE_ENCODER);
    } else if (isUpdate && isExcluded(src, ix.source.name)) {
      value = sql`excluded.${sql.identifier(ix.state.name)}`;
    } else {
      throw new ByokConfigError(
        `${ix.source.state.label} is written from an SQL expression or a column: its blind index ` +
          `${ix.state.label} cannot be computed. Write a value (or excluded.${ix.source.name} in an upsert).`,
      );
    }
    out ??= { ...row };
    out[ix.key] = value;
  }
  return out ?? row;
}
