import { is } from 'drizzle-orm';
import { getTableConfig, PgColumn, PgTable } from 'drizzle-orm/pg-core';
import { type EncryptedColumnState, encryptedState } from '../drizzle/columns.ts';
import { ByokConfigError } from '../errors.ts';
import { columnTable } from '../drizzle/chunks.ts';

/**
 * A column to retrofit:
 * - an encrypted column (`encrypted.text('note', { storage: 'text' })`, or any `encrypted.*` column
 *   whose database column already holds plaintext in the column's own plain form): encrypted in place;
 * - `{ source, target }`: the shadow-column path. `source` is the existing plaintext column (any
 *   plain Drizzle column), `target` the new encrypted column (usually `bytea`) that the backfill fills
 *   from it; rollback writes the plaintext back to `source` and clears `target`.
 */
export type RetrofitColumn = PgColumn | { readonly source: PgColumn; readonly target: PgColumn };

/** One table to retrofit. */
export interface RetrofitTableConfig {
  /** The Drizzle table (`pgTable(...)` or `pgSchema(...).table(...)`). */
  readonly table: PgTable;
  /** The column holding each row's tenant id: every value is encrypted under that tenant's data key. */
  readonly tenantColumn: PgColumn;
  /** The columns to encrypt (at least one). */
  readonly columns: readonly RetrofitColumn[];
  /**
   * The key the backfill walks the table by (keyset pagination, chunks, checkpoints): a unique, not
   * null, orderable column. Default: the table's primary key, which must then be a single column.
   */
  readonly key?: PgColumn;
}

/** A column resolved for the engine. */
export interface ResolvedColumn {
  readonly kind: 'in-place' | 'shadow';
  /** `target` for in-place columns too: the encrypted column's database name. */
  readonly target: string;
  readonly targetType: string;
  /** The plaintext source column (shadow path). */
  readonly source: string | undefined;
  readonly sourceType: string | undefined;
  readonly state: EncryptedColumnState;
  /** `table.column` (in place) or `table.source→target` (shadow), for messages and reports. */
  readonly label: string;
}

export interface ResolvedTarget {
  readonly schema: string;
  readonly table: string;
  /** `schema.table`, for messages and job ids. */
  readonly qualified: string;
  readonly key: string;
  /** SQL type the key's text form is cast back to (`uuid`, `bigint`, `text`...). */
  readonly keyType: string;
  readonly tenant: string;
  readonly columns: readonly ResolvedColumn[];
  readonly config: RetrofitTableConfig;
}

/** Types a key can be cast back to from its text form, by Drizzle SQL type. */
const SERIAL: Record<string, string> = { serial: 'integer', bigserial: 'bigint', smallserial: 'smallint' };

function sqlType(c: PgColumn): string {
  const t = c.getSQLType();
  return SERIAL[t] ?? t;
}

function describe(v: unknown): string {
  if (v === null || v === undefined) return String(v);
  if (is(v, PgTable)) return `table ${getTableConfig(v as PgTable).name}`;
  if (is(v, PgColumn)) return `column ${(v as PgColumn).name}`;
  return typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

function ownColumn(table: PgTable, c: unknown, what: string, tableName: string): PgColumn {
  if (!is(c, PgColumn)) {
    throw new ByokConfigError(
      `${what} must be a column of the Drizzle table ${tableName}, got ${describe(c)}`,
    );
  }
  const col = c as PgColumn;
  if (columnTable(col) !== table) {
    throw new ByokConfigError(
      `${what} (column ${col.name}) belongs to another table than ${tableName}: use a column of the same table object`,
    );
  }
  return col;
}

/**
 * Validates a table configuration and resolves database names. Throws `ByokConfigError` naming what
 * to fix (missing primary key, a column of another table, a plain column where an encrypted one is
 * needed...).
 */
export function resolveTarget(config: RetrofitTableConfig, where = 'retrofit table'): ResolvedTarget {
  if (config === null || typeof config !== 'object') {
    throw new ByokConfigError(`${where}: expected { table, tenantColumn, columns }, got ${describe(config)}`);
  }
  if (!is(config.table, PgTable)) {
    throw new ByokConfigError(
      `${where}: \`table\` must be a Drizzle PostgreSQL table (pgTable(...)), got ${describe(config.table)}`,
    );
  }
  const tc = getTableConfig(config.table);
  const schema = tc.schema ?? 'public';
  const qualified = `${schema}.${tc.name}`;
  const at = `${where} ${qualified}`;
  if (config.tenantColumn === undefined) {
    throw new ByokConfigError(
      `${at}: \`tenantColumn\` is required (the column holding each row's tenant id)`,
    );
  }
  const tenant = ownColumn(config.table, config.tenantColumn, `${at}: tenantColumn`, qualified);
  if (encryptedState(tenant) !== undefined) {
    throw new ByokConfigError(`${at}: tenantColumn ${tenant.name} is encrypted; it must be a plain column`);
  }
  let key: PgColumn;
  if (config.key !== undefined) {
    key = ownColumn(config.table, config.key, `${at}: key`, qualified);
  } else {
    const primary = tc.columns.filter((c) => c.primary);
    const composite = tc.primaryKeys.flatMap((pk) => pk.columns);
    if (primary.length === 1 && composite.length === 0) key = primary[0]!;
    else if (primary.length === 0 && composite.length === 1) key = composite[0] as PgColumn;
    else {
      throw new ByokConfigError(
        `${at}: the backfill walks the table by a single-column key, and ${
          primary.length + composite.length === 0
            ? 'the table has no primary key'
            : 'its primary key is composite'
        }: pass \`key\` (a unique, not null column)`,
      );
    }
  }
  if (encryptedState(key) !== undefined) {
    throw new ByokConfigError(`${at}: the key column ${key.name} is encrypted; choose a plain unique column`);
  }
  if (!Array.isArray(config.columns) || config.columns.length === 0) {
    throw new ByokConfigError(`${at}: \`columns\` must list at least one column to encrypt`);
  }
  const seen = new Set<string>();
  const columns: ResolvedColumn[] = config.columns.map((entry, i) => {
    const what = `${at}: columns[${i}]`;
    let resolved: ResolvedColumn;
    if (is(entry, PgColumn)) {
      const col = ownColumn(config.table, entry, what, qualified);
      const state = encryptedState(col);
      if (state === undefined) {
        throw new ByokConfigError(
          `${what} (${col.name}) is not an encrypted column: declare it with encrypted.*(...) ` +
            "(e.g. encrypted.text('" +
            col.name +
            "', { storage: 'text', mode: 'passthrough' })), or use { source, target } for a shadow column",
        );
      }
      resolved = {
        kind: 'in-place',
        target: col.name,
        targetType: sqlType(col),
        source: undefined,
        sourceType: undefined,
        state,
        label: `${tc.name}.${col.name}`,
      };
    } else if (entry !== null && typeof entry === 'object' && 'source' in entry && 'target' in entry) {
      const source = ownColumn(config.table, entry.source, `${what}.source`, qualified);
      const target = ownColumn(config.table, entry.target, `${what}.target`, qualified);
      const state = encryptedState(target);
      if (state === undefined) {
        throw new ByokConfigError(
          `${what}.target (${target.name}) must be an encrypted column (encrypted.*(...))`,
        );
      }
      if (encryptedState(source) !== undefined) {
        throw new ByokConfigError(
          `${what}.source (${source.name}) must be the plain column, not an encrypted one`,
        );
      }
      if (source === target) throw new ByokConfigError(`${what}: source and target are the same column`);
      resolved = {
        kind: 'shadow',
        target: target.name,
        targetType: sqlType(target),
        source: source.name,
        sourceType: sqlType(source),
        state,
        label: `${tc.name}.${source.name}→${target.name}`,
      };
    } else {
      throw new ByokConfigError(
        `${what} must be an encrypted column of the table or { source, target }, got ${describe(entry)}`,
      );
    }
    for (const name of [resolved.target, resolved.source]) {
      if (name === undefined) continue;
      if (name === key.name || name === tenant.name) {
        throw new ByokConfigError(`${what}: column ${name} is the key or the tenant column`);
      }
      if (seen.has(name)) throw new ByokConfigError(`${what}: column ${name} is listed twice`);
      seen.add(name);
    }
    return resolved;
  });
  return {
    schema,
    table: tc.name,
    qualified,
    key: key.name,
    keyType: sqlType(key),
    tenant: tenant.name,
    columns,
    config,
  };
}
