import { getTableConfig } from 'drizzle-orm/pg-core';
import { UniqueViolationError } from '../errors.ts';
import { scopeStorage } from '../scope.ts';
import { allIndexes, type BlindIndexState, columnsOf } from './column.ts';

// -----------------------------------------------------------------------------------------------
// Unique violations on an index

/** A unique constraint on a blind index was violated: `column` names the encrypted column. */
export class BlindIndexUniqueViolationError extends UniqueViolationError {
  /** The encrypted column, `table.column`. */
  readonly column: string;
  /** The blind index column, `table.column`. */
  readonly indexColumn: string;
  /** The constraint or unique index name, when the database gave it. */
  readonly constraint: string | undefined;

  constructor(index: BlindIndexState, constraint: string | undefined, tenantId: string | undefined) {
    const column = index.source().state.label;
    super(
      `unique constraint ${constraint === undefined ? '' : `"${constraint}" `}violated: a row with the same ${column} already exists` +
        `${tenantId === undefined ? '' : ` for tenant ${tenantId}`} (blind index ${index.label})`,
      {
        ...(tenantId === undefined ? {} : { tenantId }),
        cause: { code: '23505', constraint, table: `${index.schema}.${index.tableName}` },
      },
    );
    this.name = 'UniqueViolationError';
    this.column = column;
    this.indexColumn = index.label;
    this.constraint = constraint;
  }
}

interface PgErrorFields {
  code?: unknown;
  constraint?: unknown;
  constraint_name?: unknown;
  table?: unknown;
  table_name?: unknown;
  schema?: unknown;
  schema_name?: unknown;
  detail?: unknown;
  cause?: unknown;
}

/**
 * Maps a PostgreSQL unique violation (23505) on a blind index to `UniqueViolationError` naming the
 * encrypted column; anything else is returned unchanged. The driver error (and Drizzle's wrapper,
 * whose message lists the params) is not kept: the detail carries index values.
 */
export function translateBlindError(e: unknown): unknown {
  let d = e as PgErrorFields | undefined;
  for (let i = 0; i < 3 && d !== undefined && d !== null; i++) {
    if (d.code === '23505') break;
    d = d.cause as PgErrorFields | undefined;
  }
  if (d === undefined || d === null || d.code !== '23505' || allIndexes.size === 0) return e;
  const str = (x: unknown) => (typeof x === 'string' && x.length > 0 ? x : undefined);
  const table = str(d.table) ?? str(d.table_name);
  const schema = str(d.schema) ?? str(d.schema_name);
  const constraint = str(d.constraint) ?? str(d.constraint_name);
  const keyCols = /^Key \((.*?)\)=/s.exec(str(d.detail) ?? '')?.[1];
  const cols = keyCols?.split(', ').map((c) => (c.startsWith('"') ? c.slice(1, -1).replace(/""/g, '"') : c));
  for (const ix of allIndexes) {
    if (table !== undefined && ix.tableName !== table) continue;
    if (schema !== undefined && ix.schema !== schema) continue;
    const hit =
      cols !== undefined
        ? cols.includes(ix.name)
        : constraint !== undefined && constraintCovers(ix, constraint);
    if (hit) {
      const scoped = scopeStorage.getStore()?.tenantId;
      return new BlindIndexUniqueViolationError(
        ix,
        constraint,
        typeof scoped === 'string' ? scoped : undefined,
      );
    }
  }
  return e;
}

/** Whether a unique constraint or unique index declared on the table covers the index column. */
function constraintCovers(ix: BlindIndexState, name: string): boolean {
  const cols = columnsOf(ix.table) ?? {};
  for (const c of Object.values(cols)) {
    if (c.name === ix.name && c.isUnique && (c.uniqueName === name || c.uniqueName === undefined))
      return true;
  }
  const cfg = getTableConfig(ix.table);
  for (const u of cfg.uniqueConstraints) {
    if (u.getName() === name && u.columns.some((c) => c.name === ix.name)) return true;
  }
  for (const i of cfg.indexes) {
    if (
      i.config.unique &&
      i.config.name === name &&
      i.config.columns.some((c) => (c as { name?: string }).name === ix.name)
    )
      return true;
  }
  return false;
}
