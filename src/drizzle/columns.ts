import { is, SQL, type Table } from 'drizzle-orm';
import { customType, type PgColumn } from 'drizzle-orm/pg-core';
import { type FieldKey, idEquals, open, openChecked, seal } from '../crypto/aead.ts';
import {
  bigintCodec,
  booleanCodec,
  bytesCodec,
  type Codec,
  integerCodec,
  jsonCodec,
  numericCodec,
  textCodec,
  timestampCodec,
} from '../crypto/codecs.ts';
import {
  DEK_ID_OFFSET,
  envelopeDekId,
  FORMAT_VERSION,
  looksLikeEnvelope,
  OVERHEAD,
  TEXT_PREFIX,
  toBytes,
} from '../crypto/envelope.ts';
import {
  ByokConfigError,
  DecryptionFailedError,
  NoTenantError,
  NotWrappedError,
  TenantMismatchError,
  WriteRefusedError,
} from '../errors.ts';
import type { DekEntry } from '../keys/cache.ts';
import { type AnyPgDatabase, type Keyring, keysOf } from '../keys/keyring.ts';
import { COLUMN_STATE, type EncryptedColumnState, encryptedState, type ReadMode } from './column-state.ts';
import { PendingRead, PendingWrite } from './placeholders.ts';
import { scopeStorage, type TenantScope } from '../scope.ts';

export { COLUMN_STATE, type EncryptedColumnState, encryptedState, type ReadMode };

export interface EncryptedColumnOptions {
  /**
   * `bytea` (default): the binary envelope in a `bytea` column. `text`: `byok1:` + base64 of the
   * envelope in a `text` column, for in-place retrofit of existing text columns.
   */
  storage?: 'bytea' | 'text';
  /**
   * The context bound into the ciphertext (AAD and key derivation). Default `schema.table.column`
   * as declared (schema `public` when none). Set it explicitly to keep data readable across a later
   * rename of the table or column.
   */
  context?: string;
  /** Retrofit read mode; default `strict`. */
  mode?: ReadMode;
}

const TABLE_SCHEMA = Symbol.for('drizzle:Schema');
const TABLE_ORIGINAL_NAME = Symbol.for('drizzle:OriginalName');

/** Per-query context the middleware puts in the async scope around execution. */
export interface QueryContext extends TenantScope {
  readonly keyring: Keyring;
  /** undefined when the query runs outside any tenant scope. */
  readonly tenantId: string | null;
  readonly scoped: boolean;
  readonly pending: PendingRead[];
  /** Clock read once per query: cache freshness is judged at query start. */
  readonly now: number;
  /** The transaction the query runs in, if any (for single-connection databases). */
  readonly txDb?: AnyPgDatabase;
}

/** Set synchronously by the wrapped dialect while Drizzle turns SQL into a query string. */
export interface BuildContext {
  readonly keyring: Keyring;
  /** Row tenants of encrypted insert values, in the order Drizzle maps them. */
  readonly rowTenants: { value: unknown; tenantId: string }[];
  cursor: number;
}

let currentBuild: BuildContext | undefined;

/** Runs `fn` (synchronous) with `ctx` as the build context. */
export function inBuildContext<T>(ctx: BuildContext, fn: () => T): T {
  const prev = currentBuild;
  currentBuild = ctx;
  try {
    return fn();
  } finally {
    currentBuild = prev;
  }
}

function writeTenant(state: EncryptedColumnState, build: BuildContext, value: unknown): string {
  let rowTenant: string | undefined;
  const q = build.rowTenants;
  if (build.cursor < q.length) {
    const next = q[build.cursor]!;
    if (next.value === value) {
      rowTenant = next.tenantId;
      build.cursor++;
    }
  }
  const scope = scopeStorage.getStore();
  const scoped = scope?.tenantId;
  if (rowTenant !== undefined) {
    if (typeof scoped === 'string' && scoped !== rowTenant) {
      throw new TenantMismatchError(
        `a row for tenant ${rowTenant} was written to ${state.label} inside the scope of tenant ${scoped}`,
        {
          tenantId: scoped,
        },
      );
    }
    return rowTenant;
  }
  if (typeof scoped === 'string') return scoped;
  throw new NoTenantError(
    `writing encrypted column ${state.label} needs a tenant: run it inside keyring.withTenant(tenantId, ...)` +
      (scoped === null ? ' (withAnyTenant allows reads only), or give the row a tenant column' : ''),
  );
}

function toDriver(this: PgColumn, value: unknown): Buffer | string | PendingWrite {
  const state = encryptedState(this)!;
  const build = currentBuild;
  if (build === undefined) {
    throw new NotWrappedError(
      `encrypted column ${state.label} was used through a Drizzle instance not wrapped by withEncryption(db, keyring)`,
    );
  }
  if (state.mode === 'read-only')
    throw new WriteRefusedError(`writes to ${state.label} are refused (mode 'read-only')`);
  const tenantId = writeTenant(state, build, value);
  let plaintext: Uint8Array;
  try {
    plaintext = state.codec.encode(value);
  } catch (e) {
    throw new ByokConfigError(
      `encrypted.${state.codec.name} column ${state.label}: ${(e as Error).message}`,
      { tenantId },
    );
  }
  const entry = keysOf(build.keyring).cache.active(tenantId);
  if (entry === undefined) return new PendingWrite(tenantId, state, plaintext);
  build.keyring.countHotHit();
  return sealFor(build.keyring, state, entry, plaintext);
}

/** Encrypts for a column with a known data key, in the column's storage format. */
export function sealFor(
  keyring: Keyring,
  state: EncryptedColumnState,
  entry: DekEntry,
  plaintext: Uint8Array,
): Buffer | string {
  return storedEnvelope(state, seal(fieldKeyFor(keyring, state, entry), plaintext));
}

/** An envelope in a column's storage format (bytes, or `byok1:` + base64 for text storage). */
export function storedEnvelope(state: EncryptedColumnState, env: Buffer): Buffer | string {
  return state.storage === 'text' ? TEXT_PREFIX + env.toString('base64') : env;
}

function fieldKeyFor(keyring: Keyring, state: EncryptedColumnState, entry: DekEntry): FieldKey {
  const m = state.memo;
  if (m !== undefined && m.entry === entry && !entry.evicted) return m.fk;
  const fk = keysOf(keyring).fieldKey(entry, state.context);
  state.memo = { entry, fk };
  return fk;
}

function noReadScope(state: EncryptedColumnState): NoTenantError {
  return new NoTenantError(
    `reading encrypted column ${state.label} needs a tenant scope: keyring.withTenant(tenantId, ...) or keyring.withAnyTenant(...)`,
  );
}

export function checkReadTenant(q: QueryContext, state: EncryptedColumnState, entry: DekEntry): void {
  if (!q.scoped) throw noReadScope(state);
  // A ciphertext of another tenant is, for this tenant, a value that does not decrypt: the one
  // generic decryption error (no oracle telling whose it is).
  if (q.tenantId !== null && entry.tenantId !== q.tenantId) {
    throw new DecryptionFailedError({ column: state.label, tenantId: q.tenantId });
  }
}

/** Decrypts an envelope with a loaded data key and decodes it. */
export function openFor(
  keyring: Keyring,
  state: EncryptedColumnState,
  entry: DekEntry,
  env: Buffer,
): unknown {
  return openField(state, entry.tenantId, fieldKeyFor(keyring, state, entry), env, false);
}

/**
 * Opens `env` with `fk` and decodes it; every failure is the one `DecryptionFailedError`, naming the
 * column (not secret, no oracle: which field failed is what an operator needs). `headerChecked`:
 * the caller has checked what `open` checks first (`openChecked`).
 */
function openField(
  state: EncryptedColumnState,
  tenantId: string,
  fk: FieldKey,
  env: Buffer,
  headerChecked: boolean,
): unknown {
  let pt: Buffer;
  try {
    pt = headerChecked ? openChecked(fk, env) : open(fk, env);
  } catch (cause) {
    throw new DecryptionFailedError({ column: state.label, tenantId, cause });
  }
  try {
    return state.codec.decode(pt);
  } catch {
    throw new DecryptionFailedError({ column: state.label, tenantId });
  }
}

/** Parses a stored value into envelope bytes; undefined means "plaintext" (passthrough modes). */
export function envelopeOf(state: EncryptedColumnState, value: unknown): Buffer | undefined {
  if (state.storage === 'text') {
    if (typeof value !== 'string' || !value.startsWith(TEXT_PREFIX)) return undefined;
    const b = Buffer.from(value.slice(TEXT_PREFIX.length), 'base64');
    return looksLikeEnvelope(b) ? b : Buffer.alloc(0);
  }
  const b = toBytes(value);
  if (b === undefined || !looksLikeEnvelope(b)) return undefined;
  return b;
}

function fromDriver(this: PgColumn, value: unknown): unknown {
  const state = encryptedState(this)!;
  const q = scopeStorage.getStore() as QueryContext | undefined;
  if (q?.pending === undefined) {
    throw new NotWrappedError(
      `encrypted column ${state.label} was read through a Drizzle instance not wrapped by withEncryption(db, keyring)`,
    );
  }
  if (!q.scoped) throw noReadScope(state);
  // Hot path: a bytea envelope of the key this column used last, already touched at this query's
  // clock reading (so fresh and in LRU order) and of the query's tenant. Every condition is one the
  // general path below checks too; anything else takes that path.
  const m = state.memo;
  if (m !== undefined && value instanceof Buffer && state.storage === 'bytea') {
    const e = m.entry;
    if (
      e.lastUsed === q.now &&
      e.expiresAt > q.now &&
      !e.evicted &&
      (q.tenantId === null || e.tenantId === q.tenantId) &&
      value.length >= OVERHEAD &&
      value[0] === FORMAT_VERSION &&
      value[1] === 0 &&
      idEquals(value, DEK_ID_OFFSET, e.idWords)
    ) {
      q.keyring.countHotHit();
      return openField(state, e.tenantId, m.fk, value, true);
    }
  }
  const env = envelopeOf(state, value);
  if (env === undefined || env.length === 0) {
    if (env === undefined && state.mode !== 'strict') return passthrough(state, value);
    throw new DecryptionFailedError({ column: state.label });
  }
  const entry = keysOf(q.keyring).cache.lookupEnvelope(env, q.now, state.memo?.entry);
  if (entry === undefined) {
    const p = new PendingRead(env, envelopeDekId(env), state);
    q.pending.push(p);
    return p;
  }
  checkReadTenant(q, state, entry);
  q.keyring.countHotHit();
  return openFor(q.keyring, state, entry, env);
}

/**
 * The app value of a stored value that is not ciphertext (passthrough and read-only modes; the
 * retrofit engine reads plaintext the same way). Throws `DecryptionFailedError` when the value is not
 * a valid plain form for the column's codec.
 */
export function passthrough(state: EncryptedColumnState, value: unknown): unknown {
  if (state.storage === 'text' && typeof value === 'string') {
    if (state.codec.name === 'json') {
      try {
        return JSON.parse(value);
      } catch {
        throw new DecryptionFailedError({ column: state.label });
      }
    }
    if (state.codec.name === 'text' || state.codec.name === 'numeric') return value;
  }
  const b = toBytes(value);
  if (b !== undefined) {
    try {
      return state.codec.decode(b);
    } catch {
      throw new DecryptionFailedError({ column: state.label });
    }
  }
  throw new DecryptionFailedError({ column: state.label });
}

/**
 * An encrypted column holds only ciphertext: a database default (`.default(...)`) or a generated
 * expression would be stored as plaintext and never decrypt. Both are refused when the schema is
 * built; `$defaultFn(() => value)` gives defaults that are encrypted like any other value.
 */
export function refuseDatabaseDefaults(builder: unknown, what: string): void {
  const b = builder as {
    default?: unknown;
    generatedAlwaysAs?: unknown;
    config?: { default?: unknown; generated?: unknown };
  };
  const c = b.config;
  if (c !== undefined && (c.default !== undefined || c.generated !== undefined)) {
    throw new ByokConfigError(
      `${what}: a database default or generated value would be stored in plaintext and never decrypt. ` +
        'Use .$defaultFn(() => value) instead: its values are encrypted like any other.',
    );
  }
  const refuse = () => {
    throw new ByokConfigError(
      `${what}: .default(...) would be stored in plaintext by the database and never decrypt. ` +
        'Use .$defaultFn(() => value) instead: its values are encrypted like any other.',
    );
  };
  Object.defineProperty(b, 'default', { value: refuse, configurable: true, writable: true });
  Object.defineProperty(b, 'generatedAlwaysAs', {
    value: () => {
      throw new ByokConfigError(
        `${what}: a generated column is computed in SQL, in plaintext: encrypted columns cannot be generated`,
      );
    },
    configurable: true,
    writable: true,
  });
}

/** `$defaultFn` / `$onUpdateFn` values are encrypted: an SQL expression returned by one is refused. */
function encryptedFunctionValues(col: PgColumn, label: string): void {
  const c = col as unknown as { defaultFn?: () => unknown; onUpdateFn?: () => unknown };
  for (const key of ['defaultFn', 'onUpdateFn'] as const) {
    const fn = c[key];
    if (typeof fn !== 'function') continue;
    c[key] = () => {
      const v = fn();
      if (is(v, SQL)) {
        throw new ByokConfigError(
          `encrypted column ${label}: $${key} returned an SQL expression, which the database would ` +
            'store in plaintext; return a value (it is encrypted)',
        );
      }
      return v;
    };
  }
}

type Built<T> = ReturnType<ReturnType<typeof customType<{ data: T; driverData: Buffer | string }>>>;

function encryptedType<T>(codecFactory: () => Codec<T>) {
  function column(name: string, options?: EncryptedColumnOptions): Built<T>;
  function column(options?: EncryptedColumnOptions): Built<T>;
  function column(a?: string | EncryptedColumnOptions, b?: EncryptedColumnOptions): Built<T> {
    const name = typeof a === 'string' ? a : undefined;
    const options = (typeof a === 'string' ? b : a) ?? {};
    const storage = options.storage ?? 'bytea';
    if (storage !== 'bytea' && storage !== 'text')
      throw new ByokConfigError(`storage must be 'bytea' or 'text', got '${String(storage)}'`);
    const mode = options.mode ?? 'strict';
    if (mode !== 'strict' && mode !== 'passthrough' && mode !== 'read-only') {
      throw new ByokConfigError(`mode must be 'strict', 'passthrough' or 'read-only', got '${String(mode)}'`);
    }
    if (
      options.context !== undefined &&
      (typeof options.context !== 'string' || options.context.length === 0)
    ) {
      throw new ByokConfigError('context must be a non-empty string');
    }
    const codec = codecFactory() as Codec<unknown>;
    const type = customType<{ data: T; driverData: Buffer | string }>({
      dataType: () => (storage === 'text' ? 'text' : 'bytea'),
      toDriver: toDriver as unknown as (value: T) => Buffer | string,
      fromDriver: fromDriver as unknown as (value: Buffer | string) => T,
    });
    const builder = (name === undefined ? type() : type(name)) as Built<T>;
    refuseDatabaseDefaults(builder, `encrypted column${name === undefined ? '' : ` ${name}`}`);
    const hook = builder as unknown as { build: (table: Table) => PgColumn };
    const build = hook.build;
    hook.build = function (this: unknown, table: Table) {
      refuseDatabaseDefaults(this, `encrypted column ${(this as { config: { name: string } }).config.name}`);
      const col = build.call(this, table);
      const schema = (table as unknown as Record<symbol, string | undefined>)[TABLE_SCHEMA] ?? 'public';
      const tableName = (table as unknown as Record<symbol, string>)[TABLE_ORIGINAL_NAME];
      const state: EncryptedColumnState = {
        codec,
        context: options.context ?? `${schema}.${tableName}.${col.name}`,
        label: `${tableName}.${col.name}`,
        storage,
        mode,
        memo: undefined,
      };
      Object.defineProperty(col, COLUMN_STATE, { value: state, enumerable: false });
      encryptedFunctionValues(col, state.label);
      return col;
    };
    return builder;
  }
  return column;
}

/**
 * Encrypted column types. Each stores ciphertext (bytea by default) and gives the app plaintext of
 * the declared type; null stays SQL NULL.
 *
 * ```ts
 * export const patients = pgTable('patients', {
 *   id: uuid('id').primaryKey().defaultRandom(),
 *   tenantId: text('tenant_id').notNull(),
 *   name: encrypted.text('name').notNull(),
 *   record: encrypted.json<MedicalRecord>('record'),
 * });
 * ```
 */
export const encrypted = {
  text: encryptedType<string>(() => textCodec),
  json: <T>(name: string, options?: EncryptedColumnOptions) =>
    encryptedType<T>(() => jsonCodec<T>())(name, options),
  integer: encryptedType<number>(() => integerCodec),
  bigint: encryptedType<bigint>(() => bigintCodec),
  numeric: encryptedType<string>(() => numericCodec),
  boolean: encryptedType<boolean>(() => booleanCodec),
  timestamp: encryptedType<Date>(() => timestampCodec),
  bytes: encryptedType<Uint8Array>(() => bytesCodec),
};
