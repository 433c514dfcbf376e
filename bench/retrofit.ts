/**
 * Section "retrofit": backfill throughput on a real PostgreSQL (drizzle-orm + postgres.js).
 *
 * 1,000,000 rows (BENCH_QUICK: 100,000) × 3 plaintext text columns of 32–63 B, 100 tenants, bigint
 * primary key. The same rows are rewritten three ways, each on its own freshly seeded copy of the table:
 * - `runBackfill`: in-place encryption (`storage: 'text'`), the shipped defaults (batches of 1,000
 *   rows, chunks of 20,000): keyset read, data keys loaded per batch, rows locked and re-read,
 *   AES-256-GCM per value, UPDATE and checkpoint in one transaction;
 * - a plain batched UPDATE from the client, the shape of a hand-written script: keyset read of 1,000
 *   rows, then `UPDATE ... FROM (VALUES ...)` writing the same values back, no locks, no checkpoint;
 * - a plain batched UPDATE on the server: `UPDATE t SET a = a, b = b, c = c WHERE id > $lo AND
 *   id <= $hi`, 1,000 rows per statement (no data travels: the floor of any rewrite).
 * Ratios are backfill time / baseline time, measured in the same run.
 */
import { randomBytes } from 'node:crypto';
import { drizzle } from 'drizzle-orm/postgres-js';
import postgres from 'postgres';
import { createKeyring, localKek } from '../src/index.ts';
import { runBackfill, verifyBackfill } from '../src/migrate/index.ts';
import { retrofitSchema } from '../test/fixtures/retrofit-schema.ts';
import { type BenchContext, fmtRatio, markdownTable, printSectionHeader, type Section } from './lib.ts';

const SCHEMA = 'byok_bench_retrofit';
const BATCH = 1000;

async function seed(sql: postgres.Sql, table: string, rows: number, prefix: string): Promise<void> {
  await sql.unsafe(`drop table if exists ${table}`);
  await sql.unsafe(
    `create table ${table} (id bigserial primary key, tenant_id text not null, name text, email text, note text)`,
  );
  await sql.unsafe(`insert into ${table} (id, tenant_id, name, email, note)
    select g, '${prefix}-' || (g % 100),
      md5(g::text) || substr(md5((g * 7)::text), 1, g % 32),
      md5((g * 3)::text) || substr(md5((g * 11)::text), 1, (g * 5) % 32),
      md5((g * 13)::text) || substr(md5((g * 17)::text), 1, (g * 3) % 32)
    from generate_series(1, ${rows}) g`);
  await sql.unsafe(`vacuum analyze ${table}`);
}

async function clientUpdate(sql: postgres.Sql, table: string): Promise<number> {
  let last = 0;
  let n = 0;
  for (;;) {
    const rows = await sql.unsafe<{ id: string; name: string; email: string; note: string }[]>(
      `select id, name, email, note from ${table} where id > $1 order by id limit ${BATCH}`,
      [last],
    );
    if (rows.length === 0) return n;
    const params: unknown[] = [];
    const values = rows.map((r, i) => {
      params.push(r.id, r.name, r.email, r.note);
      return `($${i * 4 + 1}::bigint, $${i * 4 + 2}::text, $${i * 4 + 3}::text, $${i * 4 + 4}::text)`;
    });
    await sql.unsafe(
      `update ${table} as t set name = v.name, email = v.email, note = v.note
         from (values ${values.join(', ')}) as v(id, name, email, note) where t.id = v.id`,
      params as never[],
    );
    n += rows.length;
    last = Number(rows[rows.length - 1]!.id);
  }
}

async function serverUpdate(sql: postgres.Sql, table: string, rows: number): Promise<number> {
  for (let lo = 0; lo < rows; lo += BATCH) {
    await sql.unsafe(
      `update ${table} set name = name, email = email, note = note where id > $1 and id <= $2`,
      [lo, lo + BATCH],
    );
  }
  return rows;
}

async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = performance.now();
  const value = await fn();
  return { ms: performance.now() - t0, value };
}

async function run({ quick }: BenchContext): Promise<void> {
  const rows = quick ? 100_000 : 1_000_000;
  printSectionHeader(
    `Retrofit backfill: ${rows.toLocaleString('en-US')} rows × 3 text columns on PostgreSQL (drizzle-orm + postgres.js)`,
    [
      "runBackfill with its defaults (batches of 1,000 rows, chunks of 20,000), in-place `storage: 'text'` columns, 100 tenants, one worker",
      'baselines rewrite the same rows of an identical table, 1,000 rows per statement, in the same run',
      'client round trip: keyset SELECT then UPDATE ... FROM (VALUES ...) with the same values; server side: UPDATE ... SET c = c by id range',
    ],
  );
  const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
  const sql = postgres(url, { max: 4, onnotice: () => {} });
  const db = drizzle(sql);
  const prefix = `bench-${process.pid}-${Date.now()}`;
  const keyring = createKeyring({ db, platformKek: localKek({ key: randomBytes(32) }) });
  try {
    await keyring.installKeyStore();
    await sql.unsafe(`create schema if not exists ${SCHEMA}`);
    await sql.unsafe(`delete from byok.retrofit_jobs where table_name = '${SCHEMA}.accounts'`);
    const s = retrofitSchema(SCHEMA);
    const target = s.target(s.enc('passthrough'));

    await seed(sql, `${SCHEMA}.baseline`, rows, prefix);
    const client = await timed(() => clientUpdate(sql, `${SCHEMA}.baseline`));
    await seed(sql, `${SCHEMA}.baseline`, rows, prefix);
    const server = await timed(() => serverUpdate(sql, `${SCHEMA}.baseline`, rows));
    await sql.unsafe(`drop table ${SCHEMA}.baseline`);

    await seed(sql, `${SCHEMA}.accounts`, rows, prefix);
    const backfill = await timed(() => runBackfill(db, keyring, target));
    const r = backfill.value;
    if (r.written !== rows * 3 || r.rowsSeen !== rows)
      throw new Error(`backfill wrote ${r.written} values of ${rows * 3}`);
    const verify = await verifyBackfill(db, keyring, target, { deep: false, batchSize: 10_000 });
    if (!verify.ok || verify.plaintext !== 0) throw new Error('plaintext left after the backfill');

    const perSec = (ms: number) => `${Math.round((rows * 1000) / ms).toLocaleString('en-US')}`;
    const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
    console.log(
      markdownTable(
        ['rewrite of every row', 'time', 'rows/s', 'values/s', 'backfill / this'],
        [
          [
            'runBackfill (encrypt 3 columns)',
            secs(backfill.ms),
            perSec(backfill.ms),
            perSec(backfill.ms / 3),
            '1.00×',
          ],
          [
            'plain batched UPDATE, client round trip',
            secs(client.ms),
            perSec(client.ms),
            perSec(client.ms / 3),
            fmtRatio(backfill.ms / client.ms),
          ],
          [
            'plain batched UPDATE, server side',
            secs(server.ms),
            perSec(server.ms),
            perSec(server.ms / 3),
            fmtRatio(backfill.ms / server.ms),
          ],
        ],
      ),
    );
    console.log(
      `\n_backfill: ${r.chunks} chunks, ${r.busyRetries} busy retries; verified: ${verify.rows.toLocaleString('en-US')} rows, 0 plaintext_`,
    );
    await sql.unsafe(`drop table ${SCHEMA}.accounts`);
    await sql.unsafe(`delete from byok.retrofit_jobs where table_name = '${SCHEMA}.accounts'`);
  } finally {
    await keyring.close();
    await sql.end();
  }
}

export const retrofitBench: Section = {
  name: 'retrofit',
  title: 'Retrofit backfill throughput vs a plain batched UPDATE (PostgreSQL)',
  run,
};
