import { type Name, type SQL, sql } from 'drizzle-orm';
import type { AnyPgDatabase } from '../keys/keyring.ts';
import type { ResolvedTarget } from './target.ts';

/** Rows of a `db.execute` result, whatever the driver (postgres.js: an array; node-postgres, PGlite: `{ rows }`). */
export function rowsOf<T>(result: unknown): T[] {
  if (Array.isArray(result)) return result as T[];
  const rows = (result as { rows?: unknown } | null)?.rows;
  return Array.isArray(rows) ? (rows as T[]) : [];
}

export async function query<T = Record<string, unknown>>(db: AnyPgDatabase, q: SQL): Promise<T[]> {
  return rowsOf<T>(await db.execute(q));
}

export const ident = (name: string): Name => sql.identifier(name);

/** `"schema"."table"`. */
export function tableSql(t: ResolvedTarget): SQL {
  return sql`${sql.identifier(t.schema)}.${sql.identifier(t.table)}`;
}

/** A key value given as text, cast back to the key's type (so the key's index is used). */
export function keyParam(t: ResolvedTarget, key: string): SQL {
  return sql`${key}::text::${sql.raw(t.keyType)}`;
}

/** `k > $lo AND k <= $hi` (either bound may be absent) plus the tenant filter. */
export function rangeSql(
  t: ResolvedTarget,
  alias: SQL,
  lo: string | null,
  hi: string | null,
  tenants: readonly string[] | undefined,
): SQL {
  const k = sql`${alias}.${ident(t.key)}`;
  const parts: SQL[] = [sql`${k} IS NOT NULL`];
  if (lo !== null) parts.push(sql`${k} > ${keyParam(t, lo)}`);
  if (hi !== null) parts.push(sql`${k} <= ${keyParam(t, hi)}`);
  if (tenants !== undefined) {
    parts.push(
      sql`${alias}.${ident(t.tenant)}::text IN (${sql.join(
        tenants.map((x) => sql`${x}::text`),
        sql`, `,
      )})`,
    );
  }
  return sql.join(parts, sql` AND `);
}

/**
 * `alias.key IN (<keys>)` with the keys sent as one JSON text parameter: one parameter whatever the
 * batch size, and no per-driver array serialization.
 */
export function keysIn(t: ResolvedTarget, alias: SQL, keys: readonly string[]): SQL {
  return sql`${alias}.${ident(t.key)} IN (SELECT x::${sql.raw(t.keyType)} FROM json_array_elements_text(${JSON.stringify(keys)}::text::json) AS x)`;
}

/**
 * A set-returning expression yielding `values` as text, in order (NULL for null), for `ROWS FROM`.
 * Values that hold no comma and are not empty (keys of integer or UUID type, xmins, counts,
 * ciphertext text, base64) travel as one comma-separated text parameter split by `string_to_array`,
 * which PostgreSQL parses several times faster than JSON; anything else as one JSON array.
 * `commaFree`: the caller knows every value is non-empty or null and holds no comma (not checked).
 */
export function textElements(values: readonly (string | null)[], commaFree = false): SQL {
  for (let i = 0; !commaFree && i < values.length; i++) {
    const v = values[i];
    if (v === '' || v?.includes(',')) {
      return sql`json_array_elements_text(${JSON.stringify(values)}::text::json)`;
    }
  }
  return sql`unnest(string_to_array(${values.join(',')}::text, ',', ''))`;
}
