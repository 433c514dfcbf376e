import { type Column, eq, type InferSelectModel, inArray, SQL } from 'drizzle-orm';
import type { PgColumn, PgTable } from 'drizzle-orm/pg-core';
import { blindValue } from '../crypto/blind-hmac.ts';
import { wrappedWith } from '../drizzle/middleware.ts';
import { trustSql } from '../drizzle/sql-walk.ts';
import { ByokConfigError } from '../errors.ts';
import type { AnyPgDatabase, Keyring } from '../keys/keyring.ts';
import { scopeStorage } from '../scope.ts';
import { type BlindIndexState, indexInput } from './column.ts';
import { registryFor } from './keys.ts';
import { lookupTenant } from './resolve.ts';
import { lookupChunks, lookupTarget } from './rewrite.ts';
import { tableIndexes } from './writes.ts';

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
