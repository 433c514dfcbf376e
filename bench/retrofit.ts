/**
 * Section "retrofit": backfill throughput on a real PostgreSQL (drizzle-orm + postgres.js).
 *
 * 1,000,000 rows (BENCH_QUICK: 100,000) × 3 plaintext text columns of 32–63 B, 100 tenants, bigint
 * primary key. The same rows are rewritten four ways, each on its own freshly seeded copy of the table:
 * - `runBackfill` in one worker process, in-place encryption (`storage: 'text'`), the shipped
 *   defaults (batches of 1,000 rows, chunks of 20,000): keyset read of the next batch while the
 *   current one is encrypted and written, data keys loaded per batch, one statement per batch that
 *   locks the rows (`SKIP LOCKED`), rewrites those whose `xmin` is unchanged and moves the checkpoint;
 * - the same with two worker processes sharing the job (chunks claimed with `SKIP LOCKED`);
 * - a plain batched UPDATE from the client, the shape of a hand-written script: keyset read of 1,000
 *   rows, then `UPDATE ... FROM (VALUES ...)` writing the same values back, no locks, no checkpoint;
 * - a plain batched UPDATE on the server: `UPDATE t SET a = a, b = b, c = c WHERE id > $lo AND
 *   id <= $hi`, 1,000 rows per statement (no data travels: the floor of any rewrite).
 * Ratios are taken within the run. CPU per row is read from /proc for the client process and the
 * PostgreSQL server processes of its connections.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { drizzle } from 'drizzle-orm/postgres-js';
import postgres from 'postgres';
import { deriveFieldKey, seal } from '../src/crypto/aead.ts';
import { createKeyring, localKek } from '../src/index.ts';
import { verifyBackfill } from '../src/migrate/index.ts';
import { retrofitSchema } from '../test/fixtures/retrofit-schema.ts';
import {
  type BenchContext,
  backendPids,
  checkTarget,
  fmtRatio,
  markdownTable,
  median,
  printSectionHeader,
  processCpuSeconds,
  type Section,
} from './lib.ts';

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

interface WorkerReport {
  startedAt: number;
  endedAt: number;
  rowsSeen: number;
  written: number;
  chunks: number;
  busyRetries: number;
  jobDone: boolean;
  cpuSeconds: number;
  dbCpuSeconds: number;
}

/** Runs `n` backfill worker processes over `<schema>.accounts`, started at the same moment. */
async function backfillProcesses(n: number, url: string, platformKey: string): Promise<WorkerReport[]> {
  const script = fileURLToPath(new URL('./retrofit-worker.ts', import.meta.url));
  const startAt = Date.now() + 1500;
  const one = () =>
    new Promise<WorkerReport>((resolve, reject) => {
      const child = spawn(process.execPath, ['--experimental-strip-types', '--no-warnings', script], {
        env: {
          ...process.env,
          DATABASE_URL: url,
          SCHEMA,
          PLATFORM_KEY: platformKey,
          START_AT: String(startAt),
        },
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString('utf8');
      });
      child.on('error', reject);
      child.on('exit', (code) => {
        if (code !== 0) return reject(new Error(`backfill worker exited with code ${code}`));
        try {
          resolve(JSON.parse(out.trim().split('\n').at(-1)!) as WorkerReport);
        } catch (e) {
          reject(e);
        }
      });
    });
  return Promise.all(Array.from({ length: n }, one));
}

/**
 * CPU time of one AES-256-GCM seal of a value of the seeded size (~48 B), µs: the encryption floor
 * per value (CPU time, not wall time: comparable with the CPU columns on a shared machine).
 */
function sealMicros(): number {
  const fk = deriveFieldKey(randomBytes(32), randomBytes(16), 'bench', 'bench.accounts.name');
  const pt = Buffer.from('0123456789abcdef0123456789abcdef0123456789abcdef');
  const runs: number[] = [];
  for (let r = 0; r < 5; r++) {
    const n = 50_000;
    const c0 = process.cpuUsage();
    for (let i = 0; i < n; i++) seal(fk, pt);
    const c = process.cpuUsage(c0);
    runs.push((c.user + c.system) / n);
  }
  return median(runs);
}

async function run({ quick }: BenchContext): Promise<void> {
  const rows = quick ? 100_000 : 1_000_000;
  printSectionHeader(
    `Retrofit backfill: ${rows.toLocaleString('en-US')} rows × 3 text columns on PostgreSQL (drizzle-orm + postgres.js)`,
    [
      "runBackfill with its defaults (batches of 1,000 rows, chunks of 20,000), in-place `storage: 'text'` columns, 100 tenants (data keys created by the run), each worker a process of its own",
      'baselines rewrite the same rows of an identical table, 1,000 rows per statement, in the same run',
      'client round trip: keyset SELECT then UPDATE ... FROM (VALUES ...) with the same values; server side: UPDATE ... SET c = c by id range',
      'CPU columns: the client process and its PostgreSQL server processes (from /proc), per row',
    ],
  );
  const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
  const sql = postgres(url, { max: 4, onnotice: () => {} });
  const db = drizzle({ client: sql });
  const runId = `bench-${process.pid}-${Date.now()}`;
  const platformKey = randomBytes(32).toString('base64');
  const keyring = createKeyring({ db, platformKek: localKek({ key: platformKey }) });
  try {
    await keyring.installKeyStore();
    await sql.unsafe(`create schema if not exists ${SCHEMA}`);
    const clearJobs = () =>
      sql.unsafe(`delete from byok.retrofit_jobs where table_name = '${SCHEMA}.accounts'`);
    await clearJobs();
    const s = retrofitSchema(SCHEMA);
    const target = s.target(s.enc('strict'));
    const pids = await backendPids(sql, 4);

    await seed(sql, `${SCHEMA}.baseline`, rows, `${runId}-c`);
    const db0 = await processCpuSeconds(pids);
    const cpu0 = process.cpuUsage();
    const client = await timed(() => clientUpdate(sql, `${SCHEMA}.baseline`));
    const clientCpu = process.cpuUsage(cpu0);
    const clientDb = (await processCpuSeconds(pids)) - db0;
    await seed(sql, `${SCHEMA}.baseline`, rows, `${runId}-s`);
    const server = await timed(() => serverUpdate(sql, `${SCHEMA}.baseline`, rows));
    await sql.unsafe(`drop table ${SCHEMA}.baseline`);

    const backfill = async (workers: number) => {
      await seed(sql, `${SCHEMA}.accounts`, rows, `${runId}-w${workers}`);
      await clearJobs();
      const reports = await backfillProcesses(workers, url, platformKey);
      const ms = Math.max(...reports.map((r) => r.endedAt)) - Math.min(...reports.map((r) => r.startedAt));
      const seen = reports.reduce((n, r) => n + r.rowsSeen, 0);
      const written = reports.reduce((n, r) => n + r.written, 0);
      if (written !== rows * 3 || seen !== rows || !reports.some((r) => r.jobDone))
        throw new Error(`backfill with ${workers} worker(s) wrote ${written} values of ${rows * 3}`);
      const verify = await verifyBackfill(db, keyring, target, { deep: false, batchSize: 10_000 });
      if (!verify.ok || verify.plaintext !== 0) throw new Error('plaintext left after the backfill');
      return {
        ms,
        reports,
        cpu: reports.reduce((n, r) => n + r.cpuSeconds, 0),
        dbCpu: reports.reduce((n, r) => n + r.dbCpuSeconds, 0),
        chunks: reports.reduce((n, r) => n + r.chunks, 0),
        busy: reports.reduce((n, r) => n + r.busyRetries, 0),
        split: reports.map((r) => r.rowsSeen),
      };
    };
    const one = await backfill(1);
    const two = await backfill(2);
    await sql.unsafe(`drop table ${SCHEMA}.accounts`);
    await clearJobs();
    const sealUs = sealMicros();

    const perSec = (ms: number) => `${Math.round((rows * 1000) / ms).toLocaleString('en-US')}`;
    const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
    const usRow = (seconds: number) =>
      Number.isFinite(seconds) ? `${((seconds * 1e6) / rows).toFixed(1)} µs` : 'n/a';
    console.log(
      markdownTable(
        [
          'rewrite of every row',
          'time',
          'rows/s',
          'client CPU/row',
          'db CPU/row',
          'rate / backfill (1 worker)',
        ],
        [
          [
            'runBackfill, 1 worker (encrypt 3 columns)',
            secs(one.ms),
            perSec(one.ms),
            usRow(one.cpu),
            usRow(one.dbCpu),
            '1.00×',
          ],
          [
            `runBackfill, 2 workers (rows ${two.split.map((n) => n.toLocaleString('en-US')).join(' + ')})`,
            secs(two.ms),
            perSec(two.ms),
            usRow(two.cpu),
            usRow(two.dbCpu),
            fmtRatio(one.ms / two.ms),
          ],
          [
            'plain batched UPDATE, client round trip',
            secs(client.ms),
            perSec(client.ms),
            usRow((clientCpu.user + clientCpu.system) / 1e6),
            usRow(clientDb),
            fmtRatio(one.ms / client.ms),
          ],
          [
            'plain batched UPDATE, server side',
            secs(server.ms),
            perSec(server.ms),
            '–',
            '–',
            fmtRatio(one.ms / server.ms),
          ],
        ],
      ),
    );
    console.log(
      `\n_backfill: ${one.chunks} chunks, ${one.busy} busy retries (1 worker); ${two.chunks} chunks, ${two.busy} busy retries (2 workers); verified after each: ${rows.toLocaleString('en-US')} rows, 0 plaintext. ` +
        `AES-256-GCM seal of one value: ${sealUs.toFixed(2)} µs of CPU, so ${(sealUs * 3).toFixed(1)} µs of each row's client CPU is encryption; the machine has ${cpus().length} cores shared by the client and PostgreSQL._\n`,
    );
    checkTarget(
      'retrofit',
      'backfill rows/s / plain client-side UPDATE rows/s (1 worker)',
      client.ms / one.ms,
      '>=',
      0.6,
      fmtPct,
    );
    // What two workers can gain at most here: every row costs the CPU time of one worker and its
    // database connections (background writers of PostgreSQL not counted), spread over every core.
    const cpuPerRow = (one.cpu + one.dbCpu) / rows;
    const ceiling = Math.min(2, one.ms / 1000 / rows / (cpuPerRow / cpus().length));
    console.log(
      `_2 workers, CPU ceiling with both cores free for this work: ${((cpuPerRow * 1e6) / cpus().length).toFixed(1)} µs of wall per row at best ` +
        `(${(cpuPerRow * 1e6).toFixed(1)} µs of CPU per row over ${cpus().length} cores) against ${((one.ms * 1000) / rows).toFixed(1)} µs with 1 worker: ` +
        `at most ${fmtRatio(ceiling)} from a second worker; measured ${fmtRatio(one.ms / two.ms)}._\n`,
    );
    checkTarget('retrofit', 'backfill with 2 workers / 1 worker (rows/s)', one.ms / two.ms, '>=', 1.6);
  } finally {
    await keyring.close();
    await sql.end();
  }
}

const fmtPct = (r: number) => (Number.isFinite(r) ? `${Math.round(r * 100)}%` : 'n/a');

export const retrofitBench: Section = {
  name: 'retrofit',
  title: 'Retrofit backfill throughput vs a plain batched UPDATE (PostgreSQL)',
  run,
};
