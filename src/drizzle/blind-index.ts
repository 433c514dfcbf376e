// One file: the blind index column, its lookup rewrite and write maintenance share one index state (docs/architecture.md).
import type { KeyObject } from 'node:crypto';
import { inspect } from 'node:util';
import {
  Column,
  eq,
  inArray,
  is,
  Name,
  Param,
  Placeholder,
  SQL,
  StringChunk,
  sql,
  type InferSelectModel,
  type Table,
} from 'drizzle-orm';
import { customType, getTableConfig, type PgColumn, type PgTable } from 'drizzle-orm/pg-core';
import {
  type BlindNormalize,
  type BlindParams,
  blindValue,
  DEFAULT_BYTES,
  EXACT_MIN_BYTES,
  MAX_BYTES,
  MIN_BYTES,
  NO_MATCH,
  normalizeText,
} from '../crypto/blind-hmac.ts';
import { assertWellFormed } from '../crypto/codecs.ts';
import { toBytes } from '../crypto/envelope.ts';
import {
  ByokConfigError,
  EncryptedComparisonError,
  NoTenantError,
  PlaceholderLeakError,
  TenantMismatchError,
  UniqueViolationError,
} from '../errors.ts';
import type { AnyPgDatabase, Keyring } from '../keys/keyring.ts';
import {
  type IndexKeyOwner,
  type IndexKeyState,
  type IndexVersion,
  registryFor,
  store,
} from './blind-keys.ts';
import { chunkText, placeholderName, significantChunks } from './chunks.ts';
import { type EncryptedColumnState, encryptedState, refuseDatabaseDefaults } from './columns.ts';
import { scopeStorage } from './scope.ts';
import { nestedSql, trustSql, untrustSql } from './sql-walk.ts';

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
 *   become `(tenant = $tenant and index in ($v1, $v2, ...))`, computed under the tenant in scope, for
 *   every live index key version. Anything else on an encrypted column still throws
 *   `EncryptedComparisonError` (fail closed).
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
const allIndexes = new Set<BlindIndexState>();

/** The blind index state of a Drizzle column (also through aliases), or undefined. */
export function blindState(column: unknown): BlindIndexState | undefined {
  return (column as { [BLIND_STATE]?: BlindIndexState } | null)?.[BLIND_STATE];
}

function columnsOf(table: unknown): Record<string, Column> | undefined {
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

function columnOf(table: unknown, dbName: string): Column | undefined {
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

// -----------------------------------------------------------------------------------------------
// Sealed values: what stands for an index value until it is computed

/** Never serializable: every conversion throws, `util.inspect` shows a redacted tag. */
abstract class BlindSealed {
  abstract readonly index: BlindIndexState;

  toJSON(): never {
    throw new PlaceholderLeakError(`a blind index value of ${this.index.label} was about to be serialized`);
  }

  toString(): never {
    throw new PlaceholderLeakError(
      `a blind index value of ${this.index.label} was about to be turned into text`,
    );
  }

  [Symbol.toPrimitive](): never {
    throw new PlaceholderLeakError(
      `a blind index value of ${this.index.label} was about to be turned into a primitive`,
    );
  }

  toPostgres(): never {
    throw new PlaceholderLeakError(
      `a blind index value of ${this.index.label} reached the driver uncomputed`,
    );
  }

  [inspect.custom](): string {
    return `[drizzle-byok sealed blind index ${this.index.label}]`;
  }
}

/** In the SQL tree of an insert or update: the index value of one written source value. */
class BlindWriteSource extends BlindSealed {
  readonly index: BlindIndexState;
  readonly keyring: Keyring;
  readonly rowTenant: string | undefined;
  readonly tenantColumn: string | undefined;
  readonly placeholder: string | undefined;
  readonly #value: unknown;

  constructor(
    keyring: Keyring,
    index: BlindIndexState,
    value: unknown,
    rowTenant: string | undefined,
    tenantColumn: string | undefined,
  ) {
    super();
    this.keyring = keyring;
    this.index = index;
    this.rowTenant = rowTenant;
    this.tenantColumn = tenantColumn;
    this.placeholder = is(value, Placeholder) ? placeholderName(value) : undefined;
    this.#value = value;
  }

  /** @internal */
  value(): unknown {
    return this.#value;
  }
}

type PendingKind = 'write' | 'lookup' | 'lookup-set' | 'tenant';

/** In query params: an index value (or the lookup's tenant) computed by the middleware before execution. */
export class PendingBlind extends BlindSealed {
  readonly kind: PendingKind;
  readonly index: BlindIndexState;
  readonly tenantColumn: string | undefined;
  /** Writes: the row's tenant when known when the statement was built. */
  readonly tenantId: string | undefined;
  readonly placeholder: string | undefined;
  /** Lookups: which live key version (0: active, 1: retiring or the active again). */
  readonly slot: number;
  readonly allowLossy: boolean;
  /** `lookup-set`: the values looked up (or their placeholders), matched under every live version. */
  readonly items: readonly LookupValue[];
  readonly #value: unknown;

  constructor(
    kind: PendingKind,
    index: BlindIndexState,
    init: {
      tenantColumn: string | undefined;
      tenantId?: string;
      value?: unknown;
      placeholder?: string;
      slot?: number;
      allowLossy?: boolean;
      items?: readonly LookupValue[];
    },
  ) {
    super();
    this.kind = kind;
    this.index = index;
    this.tenantColumn = init.tenantColumn;
    this.tenantId = init.tenantId;
    this.placeholder = init.placeholder;
    this.slot = init.slot ?? 0;
    this.allowLossy = init.allowLossy ?? false;
    this.items = init.items ?? [];
    this.#value = init.value;
  }

  /** @internal */
  value(): unknown {
    return this.#value;
  }
}

export function isBlindPending(p: unknown): boolean {
  return p instanceof PendingBlind;
}

/** Encoder of lookup and tenant params: they stay sealed until execution (the tenant is known then). */
const LOOKUP_ENCODER = { mapToDriverValue: (v: unknown) => v };

/** Encoder of written index values: computed now when the key is cached, else sealed until execution. */
const WRITE_ENCODER = {
  mapToDriverValue(ws: unknown): unknown {
    if (!(ws instanceof BlindWriteSource)) {
      throw new ByokConfigError('internal: unexpected blind index write value');
    }
    const base = { tenantColumn: ws.tenantColumn };
    if (ws.placeholder !== undefined) {
      return new PendingBlind('write', ws.index, {
        ...base,
        tenantId: ws.rowTenant,
        placeholder: ws.placeholder,
      });
    }
    const tenantId = writeTenant(ws.index, ws.rowTenant);
    const value = ws.value();
    const reg = registryFor(ws.keyring);
    const state = reg.fresh(tenantId, ws.index.context);
    if (state !== undefined) {
      const key = reg.hotKey(state, state.active);
      if (key !== undefined) {
        ws.keyring.countHotHit();
        const v = state.active;
        return blindValue(key, v.version, indexInput(ws.index, v.params, value), v.params.bytes);
      }
    }
    return new PendingBlind('write', ws.index, { ...base, tenantId, value });
  },
};

function writeTenant(index: BlindIndexState, rowTenant: string | undefined): string {
  const scoped = scopeStorage.getStore()?.tenantId;
  if (rowTenant !== undefined) {
    if (typeof scoped === 'string' && scoped !== rowTenant) {
      throw new TenantMismatchError(
        `a row for tenant ${rowTenant} was written to ${index.label} inside the scope of tenant ${scoped}`,
        { tenantId: scoped },
      );
    }
    return rowTenant;
  }
  if (typeof scoped === 'string') return scoped;
  throw new NoTenantError(
    `writing blind index ${index.label} needs a tenant: run it inside keyring.withTenant(tenantId, ...)` +
      (scoped === null ? ' (withAnyTenant allows reads only), or give the row a tenant column' : ''),
  );
}

// -----------------------------------------------------------------------------------------------
// Write path: the dialect adds the index value wherever the source column is written

interface TableIndexes {
  readonly indexes: readonly { key: string; state: BlindIndexState; source: BlindSource }[];
  readonly tenantKey: string | undefined;
}

const tableCache = new WeakMap<object, Map<string | undefined, TableIndexes>>();
const NONE: TableIndexes = { indexes: [], tenantKey: undefined };

function tableIndexes(table: unknown, tenantColumn: string | undefined): TableIndexes {
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

const dialects = new WeakMap<object, { keyring: Keyring; tenantColumn: string | undefined }>();

/**
 * Instruments a dialect's insert and update-set builders: rows and `set` objects that write a
 * source column get the index column's value too (computed when the statement is mapped).
 */
export function instrumentBlindWrites(
  dialect: object,
  keyring: Keyring,
  tenantColumn: string | undefined,
): void {
  dialects.set(dialect, { keyring, tenantColumn });
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

/** The keyring and tenant column name `withEncryption` was given for this database, if wrapped. */
export function wrappedWith(
  db: AnyPgDatabase,
): { keyring: Keyring; tenantColumn: string | undefined } | undefined {
  const dialect = (db as unknown as { dialect?: object }).dialect;
  return dialect === undefined ? undefined : dialects.get(dialect);
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

/** `excluded.<name>` written as sql`excluded.name`, sql.raw(...) or sql`excluded.${sql.identifier(name)}`. */
function isExcluded(v: unknown, name: string): boolean {
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

// -----------------------------------------------------------------------------------------------
// Query path: eq / inArray on an indexed column become index lookups

interface LookupTarget {
  readonly index: BlindIndexState;
  /** The index column as the query references it (through the same alias as the compared column). */
  readonly indexColumn: Column;
  readonly tenantColumn: Column | undefined;
}

/** The index an `eq`/`inArray` on `col` uses, or undefined when `col` has none. */
function lookupTarget(col: Column, tenantColumn: string | undefined): LookupTarget | undefined {
  const table = (col as unknown as { table?: unknown }).table;
  const cols = columnsOf(table);
  let index = blindState(col);
  let indexColumn: Column = col;
  if (index === undefined) {
    const es = encryptedState(col);
    if (es === undefined || cols === undefined) return undefined;
    const found = Object.values(cols).filter((c) => blindState(c)?.source().state === es);
    if (found.length === 0) return undefined;
    if (found.length > 1) {
      throw new ByokConfigError(
        `${es.label} has several blind indexes (${found.map((c) => c.name).join(', ')}): compare the index column you mean, e.g. eq(table.${found[0]!.name}, value)`,
      );
    }
    indexColumn = found[0]!;
    index = blindState(indexColumn)!;
  }
  return {
    index,
    indexColumn,
    tenantColumn: tenantColumn === undefined ? undefined : columnOf(table, tenantColumn),
  };
}

type LookupValue = { value: unknown } | { placeholder: string };

function lookupValue(c: unknown): LookupValue | null | undefined {
  if (is(c, Placeholder)) return { placeholder: placeholderName(c) };
  if (!is(c, Param)) return undefined;
  const v = (c as Param).value;
  if (v === null || v === undefined) return null;
  if (is(v, Placeholder)) return { placeholder: placeholderName(v) };
  return { value: v };
}

/**
 * SQL chunks of a lookup. `eq`: `(tenant = $t and index in ($a, $b))`, two slots, one per live key
 * version. `inArray` (`set`): `(tenant = $t and index = any($values::text::bytea[]))`.
 */
function lookupChunks(
  target: LookupTarget,
  values: readonly LookupValue[],
  tenantColumn: string | undefined,
  allowLossy: boolean,
  set: boolean,
): unknown[] {
  if (!target.index.exact && !allowLossy) {
    throw new EncryptedComparisonError(
      `blind index ${target.index.label} keeps ${target.index.params.bytes} bytes: a lookup can match other ` +
        'values. Use findByBlindIndex(db, table, column, value), which re-checks candidates by decrypting.',
    );
  }
  if (values.length === 0) return [new StringChunk('false')];
  const base = { tenantColumn, allowLossy };
  const tenantChunks: unknown[] =
    target.tenantColumn === undefined
      ? []
      : [
          target.tenantColumn,
          new StringChunk(' = '),
          new Param(new PendingBlind('tenant', target.index, base), LOOKUP_ENCODER),
          new StringChunk(' and '),
        ];
  if (set) {
    // inArray: every value under every live key version in one array parameter (a text literal the
    // database casts), so the statement has two parameters whatever the number of values.
    const param = new Param(
      new PendingBlind('lookup-set', target.index, { ...base, items: values }),
      LOOKUP_ENCODER,
    );
    return [
      new StringChunk('('),
      ...tenantChunks,
      target.indexColumn,
      new StringChunk(' = any('),
      param,
      new StringChunk('::text::bytea[]))'),
    ];
  }
  const params = values.flatMap((v) =>
    [0, 1].map(
      (slot) =>
        new Param(
          new PendingBlind('lookup', target.index, {
            ...base,
            slot,
            ...('placeholder' in v ? { placeholder: v.placeholder } : { value: v.value }),
          }),
          LOOKUP_ENCODER,
        ),
    ),
  );
  return [
    new StringChunk('('),
    ...tenantChunks,
    target.indexColumn,
    new StringChunk(' in '),
    params,
    new StringChunk(')'),
  ];
}

function emptyChunk(c: unknown): boolean {
  return c instanceof StringChunk && chunkText(c).trim() === '';
}

/** The replacement chunks of an `eq`/`inArray` SQL node on an indexed column, or undefined. */
function rewriteNode(chunks: readonly unknown[], tenantColumn: string | undefined): unknown[] | undefined {
  const shape = lookupShape(chunks, tenantColumn);
  return shape === undefined
    ? undefined
    : lookupChunks(shape.target, shape.values, tenantColumn, false, shape.set);
}

/**
 * Whether an SQL node's chunks are a lookup the blind index rewrite turns into an index lookup
 * (`eq`/`inArray` of an indexed column with plain values or placeholders). The guard allows these.
 */
export function isBlindLookup(chunks: readonly unknown[]): boolean {
  return lookupShape(chunks, undefined) !== undefined;
}

function lookupShape(
  chunks: readonly unknown[],
  tenantColumn: string | undefined,
): { target: LookupTarget; values: LookupValue[]; set: boolean } | undefined {
  // `eq` / `inArray` on either Drizzle layout (see chunks.ts): `[col, ' = ' | ' in ', rhs]`.
  if (chunks.length !== 3 && chunks.length !== 5) return undefined;
  const parts = significantChunks(chunks);
  if (parts.length !== 3 || (chunks.length === 5 && (!emptyChunk(chunks[0]) || !emptyChunk(chunks[4]))))
    return undefined;
  const [col, op, rhs] = parts;
  if (!(op instanceof StringChunk) || !is(col, Column)) return undefined;
  const text = chunkText(op);
  if (text !== ' = ' && text !== ' in ') return undefined;
  const items = text === ' = ' ? [rhs] : Array.isArray(rhs) ? rhs : undefined;
  if (items === undefined) return undefined;
  const values: LookupValue[] = [];
  for (const item of items) {
    const v = lookupValue(item);
    if (v === undefined) return undefined;
    if (v !== null) values.push(v);
  }
  // `= null` matches nothing and sends nothing: leave it.
  if (text === ' = ' && values.length === 0) return undefined;
  const target = lookupTarget(col as Column, tenantColumn);
  if (target === undefined) return undefined;
  return { target, values, set: text === ' in ' };
}

/**
 * Rewrites, in place, every `eq`/`inArray` of an indexed column with plain values or placeholders in
 * the SQL tree into an index lookup. Returns the function that restores the tree (call it once the
 * query string is built: builders are reused, and the rewrite must not outlive one build).
 */
export function rewriteBlindLookups(root: SQL, tenantColumn: string | undefined): () => void {
  const undo: [SQL, unknown[]][] = [];
  const seen = new Set<unknown>();
  const visitSql = (s: SQL) => {
    if (seen.has(s)) return;
    seen.add(s);
    const replaced = rewriteNode(s.queryChunks, tenantColumn);
    if (replaced !== undefined) {
      undo.push([s, s.queryChunks]);
      (s as { queryChunks: unknown[] }).queryChunks = replaced;
      // Builders nested in the tree are built again while the query string is made: the guard
      // must recognize the rewritten node as the library's own lookup until it is restored.
      trustSql(s);
      return;
    }
    visit(s.queryChunks);
  };
  const visit = (chunks: readonly unknown[]) => {
    for (const c of chunks) {
      if (c === null || typeof c !== 'object' || c instanceof StringChunk) continue;
      // fast paths: leaves that hold no SQL (values, params)
      if (c instanceof Param || ArrayBuffer.isView(c) || c instanceof Date) continue;
      if (c instanceof SQL || is(c, SQL)) visitSql(c as SQL);
      else if (Array.isArray(c)) visit(c);
      else {
        const inner = nestedSql(c);
        if (inner !== undefined) visitSql(inner);
      }
    }
  };
  try {
    visitSql(root);
  } catch (e) {
    restore(undo);
    throw e;
  }
  return () => restore(undo);
}

function restore(undo: [SQL, unknown[]][]): void {
  for (let i = undo.length - 1; i >= 0; i--) {
    const [s, chunks] = undo[i]!;
    (s as { queryChunks: unknown[] }).queryChunks = chunks;
    untrustSql(s);
  }
  undo.length = 0;
}

// -----------------------------------------------------------------------------------------------
// Execution: compute pending index values, lookup values and tenants

/**
 * Replaces every `PendingBlind` in `filled` (a fresh params array) by its value: index values of
 * writes under the active key version, lookup values under each live version, the lookup's tenant.
 * Runs inside the query's context (the tenant in scope is the lookup's tenant).
 */
export async function resolveBlindParams(
  keyring: Keyring,
  filled: unknown[],
  values: Record<string, unknown>,
  txDb: AnyPgDatabase | undefined,
): Promise<void> {
  let any = false;
  for (const p of filled) if (p instanceof PendingBlind) any = true;
  if (!any) return;
  const reg = registryFor(keyring);
  const scope = scopeStorage.getStore() as { tenantId?: string | null; scoped?: boolean } | undefined;
  const scoped = scope === undefined || scope.scoped === false ? undefined : scope.tenantId;
  const memo = new Map<string, Promise<unknown>>();
  const once = <T>(key: string, fn: () => Promise<T>): Promise<T> => {
    let p = memo.get(key) as Promise<T> | undefined;
    if (p === undefined) {
      p = fn();
      memo.set(key, p);
    }
    return p;
  };
  const stateOf = (tenantId: string, p: PendingBlind, create: boolean) =>
    once(`s\u0000${tenantId}\u0000${p.index.context}\u0000${create}`, () =>
      reg.load(tenantId, p.index.owner(p.tenantColumn), { create, txDb }),
    );
  // Every check that can throw runs before any query starts (no promise is left unobserved).
  const tasks: (() => Promise<void>)[] = [];
  const macs = new Map<string, Buffer>();
  for (let i = 0; i < filled.length; i++) {
    const p = filled[i];
    if (!(p instanceof PendingBlind)) continue;
    if (p.kind === 'lookup-set') {
      const tenantId = lookupTenant(p.index, scoped);
      const items = p.items.map((item) => {
        if (!('placeholder' in item)) return item.value;
        if (!(item.placeholder in values))
          throw new ByokConfigError(`no value for placeholder "${item.placeholder}"`);
        return values[item.placeholder];
      });
      const fill = (st: IndexKeyState, keyOf: (v: IndexVersion) => KeyObject) => {
        checkLookup(p, st);
        filled[i] = setLiteral(macs, tenantId, p.index, st, keyOf, items);
      };
      const hot = reg.fresh(tenantId, p.index.context);
      if (hot !== undefined && hot.live.every((v) => reg.hotKey(hot, v) !== undefined)) {
        keyring.countHotHit();
        fill(hot, (v) => reg.hotKey(hot, v)!);
        continue;
      }
      tasks.push(async () => {
        const st = await stateOf(tenantId, p, false);
        if (st === undefined) {
          const unindexed = await once(`u\u0000${tenantId}\u0000${p.index.context}`, () =>
            p.index.owner(p.tenantColumn).hasUnindexedRows(reg.dbFor(txDb), tenantId),
          );
          if (unindexed) throw notBuilt(p.index, tenantId);
          filled[i] = '{}';
          return;
        }
        const keys = new Map<number, KeyObject>();
        for (const v of st.live) keys.set(v.version, await reg.key(st, v, txDb));
        fill(st, (v) => keys.get(v.version)!);
      });
      continue;
    }
    let value: unknown;
    if (p.placeholder !== undefined) {
      if (!(p.placeholder in values))
        throw new ByokConfigError(`no value for placeholder "${p.placeholder}"`);
      value = values[p.placeholder];
    } else {
      value = p.value();
    }
    if (p.kind === 'write') {
      const tenantId = p.tenantId ?? writeTenant(p.index, undefined);
      if (value === null || value === undefined) {
        filled[i] = null;
        continue;
      }
      tasks.push(async () => {
        const st = (await stateOf(tenantId, p, true))!;
        const v = st.active;
        const input = indexInput(p.index, v.params, value);
        filled[i] = blindValue(await reg.key(st, v, txDb), v.version, input, v.params.bytes);
      });
      continue;
    }
    const tenantId = lookupTenant(p.index, scoped);
    if (p.kind === 'tenant') {
      filled[i] = tenantId;
      continue;
    }
    // Hot path, synchronous: the tenant's index state is fresh and its key's data key cached (the
    // same checks as below, without a promise per value; a value looked up under one version is
    // computed once, whichever slots ask for it).
    const hot = reg.fresh(tenantId, p.index.context);
    if (hot !== undefined) {
      checkLookup(p, hot);
      if (value === null || value === undefined) {
        filled[i] = NO_MATCH;
        continue;
      }
      const v: IndexVersion = hot.live[p.slot] ?? hot.live[0]!;
      const key = reg.hotKey(hot, v);
      if (key !== undefined) {
        keyring.countHotHit();
        filled[i] = lookupValueOf(macs, tenantId, p.index, key, v, value);
        continue;
      }
    }
    tasks.push(async () => {
      const st = await stateOf(tenantId, p, false);
      if (st === undefined) {
        // Nothing was ever indexed for this tenant: no row can match, unless rows predate the index.
        const unindexed = await once(`u\u0000${tenantId}\u0000${p.index.context}`, () =>
          p.index.owner(p.tenantColumn).hasUnindexedRows(reg.dbFor(txDb), tenantId),
        );
        if (unindexed) throw notBuilt(p.index, tenantId);
        filled[i] = NO_MATCH;
        return;
      }
      checkLookup(p, st);
      if (value === null || value === undefined) {
        filled[i] = NO_MATCH;
        return;
      }
      const v: IndexVersion = st.live[p.slot] ?? st.live[0]!;
      filled[i] = lookupValueOf(macs, tenantId, p.index, await reg.key(st, v, txDb), v, value);
    });
  }
  const results = await Promise.allSettled(tasks.map((t) => t()));
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/**
 * The index value of a looked-up `value` under key version `v`, computed once per (tenant, index,
 * version, value) within one statement: both slots of a value ask for the same one while a single version is live.
 */
function lookupValueOf(
  macs: Map<string, Buffer>,
  tenantId: string,
  index: BlindIndexState,
  key: KeyObject,
  v: IndexVersion,
  value: unknown,
): Buffer {
  const memo =
    typeof value === 'string'
      ? `${tenantId}\u0000${index.context}\u0000${v.version}\u0000${value}`
      : undefined;
  if (memo !== undefined) {
    const done = macs.get(memo);
    if (done !== undefined) return done;
  }
  const out = blindValue(key, v.version, indexInput(index, v.params, value), v.params.bytes);
  if (memo !== undefined) macs.set(memo, out);
  return out;
}

/**
 * The array literal (`{"\\x…",…}`, cast to `bytea[]` by the statement) of every value's index value
 * under every live key version of `st`, each distinct value once; `{}` when every value is null.
 */
function setLiteral(
  macs: Map<string, Buffer>,
  tenantId: string,
  index: BlindIndexState,
  st: IndexKeyState,
  keyOf: (v: IndexVersion) => KeyObject,
  items: readonly unknown[],
): string {
  const out = new Set<string>();
  for (const value of items) {
    if (value === null || value === undefined) continue;
    for (const v of st.live) {
      out.add(`"\\\\x${lookupValueOf(macs, tenantId, index, keyOf(v), v, value).toString('hex')}"`);
    }
  }
  return `{${[...out].join(',')}}`;
}

function lookupTenant(index: BlindIndexState, scoped: string | null | undefined): string {
  if (typeof scoped === 'string') return scoped;
  throw new NoTenantError(
    `a lookup on blind index ${index.label} needs one tenant: index values are per tenant. Run it inside ` +
      `keyring.withTenant(tenantId, ...)${scoped === null ? ' (withAnyTenant cannot look up by index)' : ''}`,
  );
}

function notBuilt(index: BlindIndexState, tenantId: string): EncryptedComparisonError {
  return new EncryptedComparisonError(
    `blind index ${index.label} is not built for tenant ${tenantId} yet (rows written before the index ` +
      'existed have no index value): run runBackfill(...) over the column or backfillBlindIndex(...) first',
    { tenantId },
  );
}

function checkLookup(p: PendingBlind, st: IndexKeyState): void {
  if (!st.live.some((v) => v.built)) throw notBuilt(p.index, st.tenantId);
  if (!p.allowLossy) {
    const lossy = st.live.find((v) => v.params.bytes < EXACT_MIN_BYTES);
    if (lossy !== undefined) {
      throw new EncryptedComparisonError(
        `blind index ${p.index.label} version ${lossy.version} keeps ${lossy.params.bytes} bytes: use findByBlindIndex(...)`,
        { tenantId: st.tenantId },
      );
    }
  }
}

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

// -----------------------------------------------------------------------------------------------
// Explicit lookups (lossy indexes) and values for code that writes rows itself

/**
 * `eq(column, value)`, or `inArray(column, values)` for an array, typed for the values of the source
 * column: the explicit spelling of a blind index lookup. `column` is an indexed encrypted column or a
 * blind index column (compare the index column when a column has several indexes). Throws when the
 * column has no blind index.
 */
export function matches(column: PgColumn, value: unknown): SQL {
  if (lookupTarget(column as unknown as Column, undefined) === undefined) {
    throw new ByokConfigError(
      'matches(column, value): the column is neither a blind index nor an indexed encrypted column',
    );
  }
  return Array.isArray(value)
    ? inArray(column as never, value as never[])
    : eq(column as never, value as never);
}

/**
 * Rows of `table` whose `column` (the encrypted column or its blind index) equals `value` (or one of
 * `values`), in the tenant in scope. Works with lossy indexes: the candidates the index returns are
 * decrypted and re-checked, so a false positive never comes back. Equality is on the normalized
 * value (the index's normalization).
 */
export async function findByBlindIndex<T extends PgTable>(
  db: AnyPgDatabase,
  table: T,
  column: PgColumn,
  value: unknown,
): Promise<InferSelectModel<T>[]> {
  const wrapped = wrappedWith(db);
  if (wrapped === undefined) {
    throw new ByokConfigError('findByBlindIndex: db must be wrapped by withEncryption(db, keyring)');
  }
  const { keyring, tenantColumn } = wrapped;
  const target = lookupTarget(column as unknown as Column, tenantColumn);
  if (target === undefined) {
    throw new ByokConfigError(
      'findByBlindIndex: the column is neither a blind index nor an indexed encrypted column',
    );
  }
  const items = (Array.isArray(value) ? value : [value]).filter((v) => v !== null && v !== undefined);
  const cond = trustSql(
    new SQL(
      lookupChunks(
        target,
        items.map((v) => ({ value: v })),
        tenantColumn,
        true,
        Array.isArray(value),
      ) as never,
    ),
  );
  const rows = (await (db
    .select()
    .from(table as PgTable)
    .where(cond) as unknown as Promise<unknown[]>)) as Record<string, unknown>[];
  if (rows.length === 0) return [];
  const tenantId = lookupTenant(target.index, scopeStorage.getStore()?.tenantId);
  const st = await registryFor(keyring).load(tenantId, target.index.owner(tenantColumn), { create: false });
  if (st === undefined) return [];
  const src = target.index.source();
  const wanted = st.live.map((v) => new Set(items.map((x) => hex(indexInput(target.index, v.params, x)))));
  return rows.filter((r) => {
    const got = r[src.key];
    if (got === null || got === undefined) return false;
    return st.live.some((v, i) => wanted[i]!.has(hex(indexInput(target.index, v.params, got))));
  }) as InferSelectModel<T>[];
}

function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

/**
 * Index values, under the tenant's active index key version, of the source values in `row` (keyed
 * by the table's property names), for code that writes rows without the middleware (a retrofit
 * engine writing raw SQL). Returns `{ [index column database name]: Buffer | null }`.
 */
export async function blindIndexValues(
  keyring: Keyring,
  table: PgTable,
  tenantId: string,
  row: Readonly<Record<string, unknown>>,
  options: { tenantColumn?: string; txDb?: AnyPgDatabase } = {},
): Promise<Record<string, Buffer | null>> {
  const info = tableIndexes(table, options.tenantColumn);
  const out: Record<string, Buffer | null> = {};
  const reg = registryFor(keyring);
  for (const ix of info.indexes) {
    if (!(ix.source.key in row)) continue;
    const v = row[ix.source.key];
    if (v === null || v === undefined) {
      out[ix.state.name] = null;
      continue;
    }
    const st = (await reg.load(tenantId, ix.state.owner(options.tenantColumn), {
      create: true,
      ...(options.txDb ? { txDb: options.txDb } : {}),
    }))!;
    const av = st.active;
    out[ix.state.name] = blindValue(
      await reg.key(st, av, options.txDb),
      av.version,
      indexInput(ix.state, av.params, v),
      av.params.bytes,
    );
  }
  return out;
}

/** Every blind index of a table: `[property name, state]`. */
export function tableBlindIndexes(table: PgTable): readonly { key: string; state: BlindIndexState }[] {
  return tableIndexes(table, undefined).indexes.map(({ key, state }) => ({ key, state }));
}
