import { type Column, sql, type Table } from 'drizzle-orm';
import { customType, type PgColumn, type PgTable } from 'drizzle-orm/pg-core';
import {
  type BlindNormalize,
  type BlindParams,
  DEFAULT_BYTES,
  EXACT_MIN_BYTES,
  MAX_BYTES,
  MIN_BYTES,
  normalizeText,
} from '../crypto/blind-hmac.ts';
import { assertWellFormed } from '../crypto/codecs.ts';
import { toBytes } from '../crypto/envelope.ts';
import { markGuarded } from '../drizzle/column-state.ts';
import { type EncryptedColumnState, encryptedState, refuseDatabaseDefaults } from '../drizzle/columns.ts';
import { ByokConfigError, EncryptedComparisonError } from '../errors.ts';
import type { AnyPgDatabase } from '../keys/keyring.ts';
import { type IndexKeyOwner, store } from './keys.ts';

/**
 * Blind indexes: equality search on encrypted columns.
 *
 * ```ts
 * export const users = pgTable('users', {
 *   id: uuid('id').primaryKey().defaultRandom(),
 *   tenantId: text('tenant_id').notNull(),
 *   email: encrypted.text('email'),
 *   emailIdx: blindIndex('email_idx', { of: () => users.email, normalize: { trim: true, caseFold: true } }),
 * }, (t) => [unique('users_email_uq').on(t.tenantId, t.emailIdx)]);
 *
 * await withTenant(tenantId, () => db.select().from(users).where(eq(users.email, 'Ada@Example.com')));
 * ```
 *
 * - Write path: whenever the source column is written (insert, multi-row insert, update, upsert's
 *   `set`, prepared statements with placeholders), the middleware writes the index column too.
 *   Setting the index column yourself is refused.
 * - Query path: `eq(source, value)` and `inArray(source, values)` (or the same on the index column)
 *   become `(tenant = $tenant and (index = $v1 or index = $v2))` (one slot per live index key
 *   version) and `(tenant = $tenant and index = any($values))`, computed under the tenant in scope.
 *   Anything else on an encrypted column still throws `EncryptedComparisonError` (fail closed).
 * - See docs/blind-index.md for key derivation, rotation, leakage and false positives.
 */

export interface BlindIndexOptions {
  /**
   * The encrypted column this index is computed from, in the same table: its property name
   * (`'email'`), or a function returning it (`(): AnyPgColumn => users.email`; TypeScript needs the
   * return type annotation there, as for Drizzle's self-references).
   */
  of: string | (() => PgColumn);
  /** Text normalization before hashing (text columns only). Default: none. */
  normalize?: BlindNormalize;
  /**
   * Bytes of HMAC kept, 1..32. Default 16. Below 12 the index is lossy: lookups go through
   * `findByBlindIndex`, which re-checks candidates by decrypting (see `blind-hmac.ts`).
   */
  bytes?: number;
  /**
   * Context bound into the index key. Default `schema.table.column` of the index column as declared;
   * set it explicitly to keep the index valid across a rename.
   */
  context?: string;
}

/** The source column of an index, resolved lazily (the table is not built when `of` is declared). */
export interface BlindSource {
  readonly column: PgColumn;
  readonly state: EncryptedColumnState;
  /** Property name of the source column in the table object. */
  readonly key: string;
  /** Database name. */
  readonly name: string;
}

export interface BlindIndexState {
  readonly name: string;
  readonly context: string;
  /** `table.column`, for messages. */
  readonly label: string;
  readonly schema: string;
  readonly tableName: string;
  readonly table: PgTable;
  /** Options for new key versions. */
  readonly params: BlindParams;
  /** Whether the options give an exact index (`bytes >= 12`). */
  readonly exact: boolean;
  source(): BlindSource;
  /** The key registry's view of this index, given the tenant column name (for the built check). */
  owner(tenantColumn: string | undefined): IndexKeyOwner;
}

const TABLE_SCHEMA = Symbol.for('drizzle:Schema');
const TABLE_ORIGINAL_NAME = Symbol.for('drizzle:OriginalName');
const TABLE_COLUMNS = Symbol.for('drizzle:Columns');
export const BLIND_STATE: unique symbol = Symbol.for('drizzle-byok:blind-index') as never;

/** Every blind index column built in this process (to name the column of a unique violation). */
export const allIndexes = new Set<BlindIndexState>();

/** The blind index state of a Drizzle column (also through aliases), or undefined. */
export function blindState(column: unknown): BlindIndexState | undefined {
  return (column as { [BLIND_STATE]?: BlindIndexState } | null)?.[BLIND_STATE];
}

export function columnsOf(table: unknown): Record<string, Column> | undefined {
  return (table as Record<symbol, Record<string, Column> | undefined> | null | undefined)?.[TABLE_COLUMNS];
}

type Built = ReturnType<ReturnType<typeof customType<{ data: Buffer; driverData: Buffer }>>>;

/**
 * A blind index column (`bytea`): a keyed HMAC of the normalized value of an encrypted column of the
 * same table, under a key of the row's tenant. Written by the middleware; read back as a Buffer.
 */
export function blindIndex(name: string, options: BlindIndexOptions): Built {
  if (typeof name !== 'string' || name.length === 0)
    throw new ByokConfigError('blindIndex(name, options): name must be the database column name');
  if (
    options === null ||
    typeof options !== 'object' ||
    (typeof options.of !== 'function' && (typeof options.of !== 'string' || options.of.length === 0))
  ) {
    throw new ByokConfigError(
      `blindIndex('${name}'): options.of must name the encrypted column ('email') or return it (() => users.email)`,
    );
  }
  const bytes = options.bytes ?? DEFAULT_BYTES;
  if (!Number.isInteger(bytes) || bytes < MIN_BYTES || bytes > MAX_BYTES)
    throw new ByokConfigError(
      `blindIndex('${name}'): bytes must be an integer from ${MIN_BYTES} to ${MAX_BYTES}`,
    );
  const n = options.normalize ?? {};
  if (n === null || typeof n !== 'object')
    throw new ByokConfigError(`blindIndex('${name}'): normalize must be an object`);
  for (const k of Object.keys(n)) {
    if (k !== 'trim' && k !== 'caseFold' && k !== 'nfc')
      throw new ByokConfigError(
        `blindIndex('${name}'): unknown normalize option '${k}' (trim, caseFold, nfc)`,
      );
  }
  if (options.context !== undefined && (typeof options.context !== 'string' || options.context.length === 0))
    throw new ByokConfigError(`blindIndex('${name}'): context must be a non-empty string`);
  const params: BlindParams = {
    bytes,
    trim: n.trim === true,
    caseFold: n.caseFold === true,
    nfc: n.nfc === true,
  };
  const normalizes = params.trim || params.caseFold || params.nfc;

  const type = customType<{ data: Buffer; driverData: Buffer }>({
    dataType: () => 'bytea',
    toDriver: refuseIndexValue as unknown as (value: Buffer) => Buffer,
    fromDriver: (v: unknown) => (toBytes(v) ?? v) as Buffer,
  });
  const builder = type(name) as Built;
  refuseDatabaseDefaults(builder, `blind index ${name}`);
  const hook = builder as unknown as { build: (table: Table) => PgColumn };
  const build = hook.build;
  hook.build = function (this: unknown, table: Table) {
    const col = build.call(this, table);
    const schema = (table as unknown as Record<symbol, string | undefined>)[TABLE_SCHEMA] ?? 'public';
    const tableName = (table as unknown as Record<symbol, string>)[TABLE_ORIGINAL_NAME]!;
    const label = `${tableName}.${col.name}`;
    let source: BlindSource | undefined;
    const owners = new Map<string | undefined, IndexKeyOwner>();
    const state: BlindIndexState = {
      name: col.name,
      context: options.context ?? `${schema}.${tableName}.${col.name}`,
      label,
      schema,
      tableName,
      table: table as unknown as PgTable,
      params,
      exact: bytes >= EXACT_MIN_BYTES,
      source() {
        if (source !== undefined) return source;
        const of = options.of;
        let c: PgColumn | undefined;
        try {
          c = typeof of === 'string' ? (columnsOf(table)?.[of] as PgColumn | undefined) : of();
        } catch {
          throw new ByokConfigError(`blind index ${label}: options.of() failed`);
        }
        const st = encryptedState(c);
        const entry = Object.entries(columnsOf(table) ?? {}).find(([, x]) => x === c);
        if (c === undefined || st === undefined || entry === undefined) {
          throw new ByokConfigError(
            `blind index ${label}: options.of must designate an encrypted.* column of the same table`,
          );
        }
        if (st.codec.name === 'json') {
          throw new ByokConfigError(
            `blind index ${label}: encrypted.json values have no canonical form; index a text column instead`,
          );
        }
        if (normalizes && st.codec.name !== 'text')
          throw new ByokConfigError(`blind index ${label}: normalize applies to encrypted.text columns only`);
        source = { column: c, state: st, key: entry[0], name: c.name };
        return source;
      },
      owner(tenantColumn) {
        let o = owners.get(tenantColumn);
        if (o === undefined) {
          o = {
            context: state.context,
            label,
            params,
            hasUnindexedRows: (db, tenantId) => hasUnindexedRows(state, db, tenantId, tenantColumn),
          };
          owners.set(tenantColumn, o);
        }
        return o;
      },
    };
    Object.defineProperty(col, BLIND_STATE, { value: state, enumerable: false });
    // Opaque to SQL like its encrypted column: the guard refuses it wherever it refuses that one.
    markGuarded(col, state);
    allIndexes.add(state);
    return col;
  };
  return builder;
}

function refuseIndexValue(this: PgColumn): never {
  const label = blindState(this)?.label ?? 'a blind index column';
  throw new EncryptedComparisonError(
    `${label} is a blind index written by drizzle-byok: it cannot be set, and compares only through ` +
      'eq() or inArray() with plain values (on the index or its encrypted column)',
  );
}

/** Whether rows of the tenant have a source value but no index value (written before the index existed). */
async function hasUnindexedRows(
  state: BlindIndexState,
  db: AnyPgDatabase,
  tenantId: string,
  tenantColumn: string | undefined,
): Promise<boolean> {
  const src = state.source();
  const hasTenant = tenantColumn !== undefined && columnOf(state.table, tenantColumn) !== undefined;
  const q = sql`select 1 as x from ${sql.identifier(state.schema)}.${sql.identifier(state.tableName)} where ${
    hasTenant ? sql`${sql.identifier(tenantColumn!)} = ${tenantId} and ` : sql``
  }${sql.identifier(src.name)} is not null and ${sql.identifier(state.name)} is null limit 1`;
  return rowsOf(await store(() => db.execute(q))).length > 0;
}

export function rowsOf<T>(result: unknown): T[] {
  if (Array.isArray(result)) return result as T[];
  const rows = (result as { rows?: unknown } | null)?.rows;
  return Array.isArray(rows) ? (rows as T[]) : [];
}

export function columnOf(table: unknown, dbName: string): Column | undefined {
  const cols = columnsOf(table);
  if (cols === undefined) return undefined;
  for (const c of Object.values(cols)) if (c.name === dbName) return c;
  return undefined;
}

/** The bytes hashed for `value` under version parameters `p`. Errors never contain the value. */
export function indexInput(index: BlindIndexState, p: BlindParams, value: unknown): Uint8Array {
  const src = index.source();
  if (src.state.codec.name === 'text') {
    if (typeof value !== 'string')
      throw new ByokConfigError(`blind index ${index.label}: expected a string, got a ${typeof value}`);
    try {
      assertWellFormed(value);
    } catch (e) {
      throw new ByokConfigError(`blind index ${index.label}: ${(e as Error).message}`);
    }
    return Buffer.from(normalizeText(value, p), 'utf8');
  }
  try {
    return src.state.codec.encode(value);
  } catch (e) {
    throw new ByokConfigError(`blind index ${index.label}: ${(e as Error).message}`);
  }
}
