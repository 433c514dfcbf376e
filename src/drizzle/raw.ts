import type { Column } from 'drizzle-orm';
import { ByokConfigError } from '../errors.ts';
import type { Keyring } from '../keys/keyring.ts';
import { encryptedState } from './columns.ts';
import { resolveReads, runQuery } from './middleware.ts';

/**
 * Decrypts rows returned by raw SQL (`db.execute(sql...)`), which Drizzle does not map: the
 * driver returns encrypted columns as ciphertext. Give the result (an array of rows, or a
 * `{ rows }` result object) and which result field holds which encrypted column. Runs in the
 * current tenant scope, with the same checks as any query. Returns new row objects.
 *
 * ```ts
 * const res = await db.execute(sql`select id, name from patients where id = ${id}`);
 * const rows = await decryptRows(keyring, res, { name: patients.name });
 * ```
 */
export async function decryptRows<T extends Record<string, unknown>>(
  keyring: Keyring,
  result: readonly T[] | { rows: readonly T[] },
  columns: Readonly<Record<string, Column>>,
): Promise<T[]> {
  const rows = Array.isArray(result) ? (result as readonly T[]) : (result as { rows: readonly T[] }).rows;
  if (!Array.isArray(rows))
    throw new ByokConfigError('decryptRows: expected an array of rows or a { rows } result');
  const mapping = Object.entries(columns).map(([field, column]) => {
    if (encryptedState(column) === undefined)
      throw new ByokConfigError(`decryptRows: field "${field}" is not mapped to an encrypted column`);
    return [field, column] as const;
  });
  return runQuery(keyring, async (ctx) => {
    const out = rows.map((row) => {
      const copy: Record<string, unknown> = { ...row };
      for (const [field, column] of mapping) {
        const v = copy[field];
        if (v !== null && v !== undefined) copy[field] = column.mapFromDriverValue(v);
      }
      return copy as T;
    });
    return ctx.pending.length === 0 ? out : resolveReads(keyring, ctx, out);
  });
}
