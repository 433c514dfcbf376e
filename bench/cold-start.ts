/**
 * Section "cold-start": the first reads of an instance whose key cache is empty, against a KMS with
 * a realistic round-trip latency (the local AWS KMS server, real AWS SDK client, `faults.latency`).
 *
 * 1,000 tenants (BENCH_QUICK: 200), each with its own data key wrapped under the platform's KMS key
 * (so every cold tenant costs one `Decrypt`), 2 rows × 2 encrypted columns each, on PostgreSQL. Each
 * round builds a new keyring (a fresh instance: empty cache, new KMS client) and measures:
 * - a `withAnyTenant` select of every row (all tenants at once) with the cold cache;
 * - `keyring.prefetch(tenantIds)` on another fresh keyring, then the same select (warm);
 * - the same select on a warm cache, for reference.
 * Target for both cold paths: ≤ 1.2 × ceil(tenants / unwrapConcurrency) × latency.
 */
import { randomBytes } from 'node:crypto';
import { integer, pgTable, text } from 'drizzle-orm/pg-core';
import { drizzle } from 'drizzle-orm/postgres-js';
import postgres from 'postgres';
import { createKeyring, encrypted, type Keyring, withEncryption } from '../src/index.ts';
import { awsKms } from '../src/kms/aws/index.ts';
import { startKmsProcess } from './kms-process.ts';
import {
  type BenchContext,
  checkTarget,
  fmtMs,
  markdownTable,
  median,
  printSectionHeader,
  redactUrl,
  type Section,
  serverVersion,
} from './lib.ts';

const TABLE = 'byok_bench_cold';
const LATENCY_MS = 20;
const UNWRAP_CONCURRENCY = 16;

const table = pgTable(TABLE, {
  id: integer('id').primaryKey(),
  tenantId: text('tenant_id').notNull(),
  a: encrypted.text('a'),
  b: encrypted.text('b'),
});

async function run({ quick }: BenchContext): Promise<void> {
  const tenantsN = quick ? 200 : 1000;
  const rounds = 3;
  const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
  const client = postgres(url, { max: 8, onnotice: () => {} });
  const aws = await startKmsProcess();
  const runId = `bench-cold-${process.pid}-${Date.now()}`;
  const tenants = Array.from({ length: tenantsN }, (_, i) => `${runId}-${i}`);
  const keyrings: Keyring[] = [];
  try {
    const platformKek = () =>
      awsKms({
        keyArn: aws.keyArn,
        auth: { type: 'access-keys', accessKeyId: aws.accessKeyId, secretAccessKey: aws.secretAccessKey },
        endpoint: aws.endpoint,
        timeoutMs: 10_000,
        maxAttempts: 1,
      });
    /** A new instance: keyring with an empty cache, its own KMS client, a Drizzle instance wrapped by it. */
    const instance = () => {
      const db = drizzle({ client });
      const keyring = createKeyring({
        db: drizzle({ client }),
        platformKek: platformKek(),
        unwrapConcurrency: UNWRAP_CONCURRENCY,
        cache: { maxAgeMs: 3_600_000 },
      });
      withEncryption(db, keyring, { tenantColumn: 'tenant_id' });
      keyrings.push(keyring);
      return { db, keyring };
    };

    const writer = instance();
    await writer.keyring.installKeyStore();
    await client.unsafe(`drop table if exists ${TABLE}`);
    await client.unsafe(
      `create table ${TABLE} (id integer primary key, tenant_id text not null, a bytea, b bytea)`,
    );
    const rows = tenants.flatMap((t, i) =>
      [0, 1].map((j) => ({
        id: i * 2 + j + 1,
        tenantId: t,
        a: `name ${i}.${j} ${randomBytes(8).toString('hex')}`,
        b: `note ${i}.${j} ${randomBytes(16).toString('hex')}`,
      })),
    );
    const t0 = performance.now();
    await writer.keyring.withAnyTenant(() => writer.db.insert(table).values(rows));
    const loadMs = performance.now() - t0;
    const expected = new Map(rows.map((r) => [r.id, r]));
    const check = (got: { id: number; a: string | null; b: string | null }[]) => {
      if (got.length !== rows.length) throw new Error(`cold-start: ${got.length} rows of ${rows.length}`);
      for (const r of got) {
        const e = expected.get(r.id);
        if (e === undefined || e.a !== r.a || e.b !== r.b) throw new Error('cold-start: wrong plaintext');
      }
    };

    const cold: number[] = [];
    const prefetch: number[] = [];
    const afterPrefetch: number[] = [];
    const warm: number[] = [];
    const callsPerTenant: number[] = [];
    const prefetchCallsPerTenant: number[] = [];
    for (let r = 0; r < rounds; r++) {
      await aws.latency(LATENCY_MS, ['Decrypt', 'Encrypt', 'DescribeKey']);
      // Cold select: every tenant's data key unwrapped on the way.
      const a = instance();
      await aws.reset();
      let s = performance.now();
      check(await a.keyring.withAnyTenant(() => a.db.select().from(table)));
      cold.push(performance.now() - s);
      callsPerTenant.push((await aws.total()) / tenantsN);
      // Warm cache, same instance.
      s = performance.now();
      check(await a.keyring.withAnyTenant(() => a.db.select().from(table)));
      warm.push(performance.now() - s);
      // Prefetch at instance start, then the select.
      const b = instance();
      await aws.reset();
      s = performance.now();
      const p = await b.keyring.prefetch(tenants);
      prefetch.push(performance.now() - s);
      prefetchCallsPerTenant.push((await aws.total()) / tenantsN);
      if (p.loaded !== tenantsN || p.failed.length > 0) throw new Error('cold-start: prefetch failed');
      await aws.reset();
      s = performance.now();
      check(await b.keyring.withAnyTenant(() => b.db.select().from(table)));
      afterPrefetch.push(performance.now() - s);
      if ((await aws.total()) !== 0) throw new Error('cold-start: KMS called after prefetch');
      await aws.clear();
      await a.keyring.close();
      await b.keyring.close();
    }

    const rounds16 = Math.ceil(tenantsN / UNWRAP_CONCURRENCY);
    const bound = 1.2 * rounds16 * LATENCY_MS;
    printSectionHeader(
      `Cold start: a select spanning ${tenantsN.toLocaleString('en-US')} tenants, KMS at ${LATENCY_MS} ms per call`,
      [
        `PostgreSQL ${await serverVersion(client)} at ${redactUrl(url)}, drizzle-orm + postgres.js; local AWS KMS server in its own process (real AWS SDK v3 client, SigV4) with ${LATENCY_MS} ms added to every KMS call.`,
        `${tenantsN.toLocaleString('en-US')} tenants × 2 rows × 2 encrypted text columns (${rows.length.toLocaleString('en-US')} rows, loaded in ${(loadMs / 1000).toFixed(1)} s with ${tenantsN.toLocaleString('en-US')} data keys created); each data key wrapped under the platform's KMS key.`,
        `Each round builds fresh keyrings (empty cache, new KMS client); unwrapConcurrency ${UNWRAP_CONCURRENCY}, maxBatchSize 500 (defaults). Median of ${rounds} rounds; every select checked row by row.`,
        `Bound: 1.2 × ceil(${tenantsN} / ${UNWRAP_CONCURRENCY}) × ${LATENCY_MS} ms = ${fmtMs(bound)}.`,
      ],
    );
    const med = (xs: number[]) => median(xs);
    console.log(
      markdownTable(
        ['path', 'time (median)', 'rounds', 'KMS calls per cold tenant'],
        [
          [
            'select, cold cache',
            fmtMs(med(cold)),
            cold.map((x) => x.toFixed(0)).join(', '),
            med(callsPerTenant).toFixed(2),
          ],
          [
            '`keyring.prefetch(tenantIds)`',
            fmtMs(med(prefetch)),
            prefetch.map((x) => x.toFixed(0)).join(', '),
            med(prefetchCallsPerTenant).toFixed(2),
          ],
          [
            'select after the prefetch',
            fmtMs(med(afterPrefetch)),
            afterPrefetch.map((x) => x.toFixed(0)).join(', '),
            '0',
          ],
          ['select, warm cache', fmtMs(med(warm)), warm.map((x) => x.toFixed(0)).join(', '), '0'],
        ],
      ),
    );
    console.log('');
    checkTarget('cold-start', `cold select of ${tenantsN} tenants`, med(cold), '<=', bound, fmtMs);
    checkTarget('cold-start', `prefetch of ${tenantsN} tenants`, med(prefetch), '<=', bound, fmtMs);
    checkTarget('cold-start', 'KMS calls per cold tenant', med(callsPerTenant), '<=', 1, (n) => n.toFixed(2));
  } finally {
    await aws.clear().catch(() => undefined);
    for (const k of keyrings) await k.close().catch(() => undefined);
    await client.unsafe(`drop table if exists ${TABLE}`).catch(() => undefined);
    await client`delete from byok.tenants where tenant_id like ${`${runId}-%`}`.catch(() => undefined);
    await client.end({ timeout: 5 });
    await aws.close();
  }
}

export const coldStartBench: Section = {
  name: 'cold-start',
  title: 'Cold cache against a KMS with 20 ms latency: select spanning 1,000 tenants, prefetch',
  run,
};
