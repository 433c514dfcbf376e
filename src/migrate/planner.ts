/**
 * The planner of a backfill job: the job row (pass, total, the opposite operation), chunk ranges cut
 * lazily and claimed with `FOR UPDATE SKIP LOCKED` under a lease, their release, the job's end, and
 * the blind indexes marked built once it is done.
 */
import { hostname } from 'node:os';
import { sql } from 'drizzle-orm';
import { registryFor } from '../blind/index.ts';
import { RetrofitBusyError } from '../errors.ts';
import { type AnyPgDatabase, asPgDb } from '../keys/keyring.ts';
import { backfillJobId, type Chunk, type Run } from './run.ts';
import { ident, query, rangeSql, tableSql } from './sql.ts';

/** Rows of the table (of the run's tenants). */
export async function countRows(run: Run, db: AnyPgDatabase = run.db): Promise<number> {
  const [r] = await query<{ n: unknown }>(
    db,
    sql`SELECT count(*)::float8 AS n FROM ${tableSql(run.t)} AS t WHERE ${rangeSql(run.t, sql.raw('t'), null, null, run.tenants)}`,
  );
  return Number(r?.n ?? 0);
}

/**
 * Creates the job, resumes it (its pass and total), or starts a new pass (`restart`, or a job done
 * before); cancels an unfinished opposite operation on the same columns, refused while it has live
 * workers. Sets `run.pass` and `run.total`.
 */
export async function ensureJob(run: Run): Promise<void> {
  const other = backfillJobId(run.op === 'encrypt' ? 'decrypt' : 'encrypt', run.t, run.tenants);
  const columns = JSON.stringify(run.t.columns.map((c) => ({ target: c.target, source: c.source ?? null })));
  await asPgDb(run.db).transaction(async (tx) => {
    await tx.execute(
      sql`SELECT pg_advisory_xact_lock(hashtextextended(${`byok:retrofit:${run.t.qualified}`}, 0))`,
    );
    // The opposite operation on the same columns must not run at the same time.
    const [live] = await query<{ n: number }>(
      tx,
      sql`SELECT count(*)::int AS n FROM byok.retrofit_chunks c JOIN byok.retrofit_jobs j ON j.id = c.job_id
           WHERE j.id = ${other} AND j.state = 'running' AND c.state = 'running' AND c.lease_until >= now()`,
    );
    if ((live?.n ?? 0) > 0) {
      throw new RetrofitBusyError(
        `${run.op === 'encrypt' ? 'a rollback' : 'an encryption backfill'} of ${run.t.qualified} is running ` +
          `(job ${other}): stop it before starting ${run.op === 'encrypt' ? 'the backfill' : 'the rollback'}`,
      );
    }
    await tx.execute(
      sql`UPDATE byok.retrofit_jobs SET state = 'cancelled', updated_at = now() WHERE id = ${other} AND state = 'running'`,
    );
    const [job] = await query<{ state: string; pass: number }>(
      tx,
      sql`SELECT state, pass FROM byok.retrofit_jobs WHERE id = ${run.jobId} FOR UPDATE`,
    );
    if (job === undefined) {
      const total = await countRows(run, tx);
      await tx.execute(sql`INSERT INTO byok.retrofit_jobs (id, operation, table_name, columns, chunk_size, total_rows)
        VALUES (${run.jobId}, ${run.op}, ${run.t.qualified}, ${columns}::text::jsonb, ${run.chunkSize}, ${total})`);
      run.pass = 1;
      run.total = total;
      return;
    }
    if (job.state === 'running' && !run.opts.restart) {
      const [j] = await query<{ pass: number; total: unknown }>(
        tx,
        sql`SELECT pass, total_rows::float8 AS total FROM byok.retrofit_jobs WHERE id = ${run.jobId}`,
      );
      run.pass = Number(j?.pass ?? 1);
      run.total = Number(j?.total ?? 0);
      return;
    }
    if (job.state === 'running') {
      const [busy] = await query<{ n: number }>(
        tx,
        sql`SELECT count(*)::int AS n FROM byok.retrofit_chunks
             WHERE job_id = ${run.jobId} AND state = 'running' AND lease_until >= now()`,
      );
      if ((busy?.n ?? 0) > 0) {
        throw new RetrofitBusyError(
          `job ${run.jobId} has live workers: stop them before restarting it (or wait for their leases to expire)`,
        );
      }
    }
    const total = await countRows(run, tx);
    await tx.execute(sql`DELETE FROM byok.retrofit_chunks WHERE job_id = ${run.jobId}`);
    const [n] = await query<{ pass: number }>(
      tx,
      sql`UPDATE byok.retrofit_jobs SET state = 'running', pass = pass + 1, chunk_size = ${run.chunkSize},
            next_key = NULL, planned = false, total_rows = ${total}, columns = ${columns}::text::jsonb,
            started_at = now(), updated_at = now(), finished_at = NULL
           WHERE id = ${run.jobId} RETURNING pass`,
    );
    run.pass = Number(n?.pass ?? 1);
    run.total = total;
  });
}

/** Workers of this host whose process is gone: their chunks are taken over without waiting for the lease. */
async function deadWorkers(run: Run): Promise<string[]> {
  const rows = await query<{ worker: string }>(
    run.db,
    sql`SELECT DISTINCT worker FROM byok.retrofit_chunks
         WHERE job_id = ${run.jobId} AND state = 'running' AND lease_until >= now() AND worker IS NOT NULL`,
  );
  const host = hostname();
  const dead: string[] = [];
  for (const { worker } of rows) {
    const m = /^(.*):(\d+):[0-9a-f]+$/.exec(worker);
    if (m === null || m[1] !== host || Number(m[2]) === process.pid) continue;
    try {
      process.kill(Number(m[2]), 0);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ESRCH') dead.push(worker);
    }
  }
  return dead;
}

/**
 * Claims a chunk: an open one whose lease expired (or whose worker died on this host), else the next
 * range cut from the job's `next_key` (`chunkSize` rows on; the last one open-ended). `wait` when
 * every open chunk is held by a live worker, `done` when none is left.
 */
export async function claim(run: Run): Promise<Chunk | 'wait' | 'done'> {
  const dead = await deadWorkers(run);
  return asPgDb(run.db).transaction(async (tx) => {
    const deadSql =
      dead.length === 0
        ? sql``
        : sql` OR worker IN (${sql.join(
            dead.map((w) => sql`${w}`),
            sql`, `,
          )})`;
    const [c] = await query<{ seq: number; lo: string | null; hi: string | null; last_key: string | null }>(
      tx,
      sql`SELECT seq, lo, hi, last_key FROM byok.retrofit_chunks
           WHERE job_id = ${run.jobId} AND state = 'running' AND (lease_until IS NULL OR lease_until < now()${deadSql})
           ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED`,
    );
    if (c !== undefined) {
      await tx.execute(sql`UPDATE byok.retrofit_chunks SET worker = ${run.worker}, lease_until = ${run.leaseSql()},
        updated_at = now() WHERE job_id = ${run.jobId} AND seq = ${c.seq}`);
      return { seq: Number(c.seq), lo: c.lo, hi: c.hi, lastKey: c.last_key };
    }
    const [job] = await query<{
      next_key: string | null;
      planned: boolean;
      chunk_size: number;
      state: string;
    }>(
      tx,
      sql`SELECT next_key, planned, chunk_size, state FROM byok.retrofit_jobs WHERE id = ${run.jobId} FOR UPDATE`,
    );
    if (job === undefined || job.state !== 'running') {
      if (job?.state === 'cancelled') {
        throw new RetrofitBusyError(
          `job ${run.jobId} was cancelled by the opposite operation on the same columns`,
        );
      }
      return 'done';
    }
    if (job.planned) {
      const [open] = await query<{ n: number }>(
        tx,
        sql`SELECT count(*)::int AS n FROM byok.retrofit_chunks WHERE job_id = ${run.jobId} AND state <> 'done'`,
      );
      return (open?.n ?? 0) > 0 ? 'wait' : 'done';
    }
    const lo = job.next_key;
    const a = sql.raw('t');
    const [b] = await query<{ k: string }>(
      tx,
      sql`SELECT t.${ident(run.t.key)}::text AS k FROM ${tableSql(run.t)} AS t
           WHERE ${rangeSql(run.t, a, lo, null, run.tenants)}
           ORDER BY t.${ident(run.t.key)} OFFSET ${Number(job.chunk_size) - 1} LIMIT 1`,
    );
    const hi = b?.k ?? null;
    const [ins] = await query<{ seq: number }>(
      tx,
      sql`INSERT INTO byok.retrofit_chunks (job_id, seq, lo, hi, worker, lease_until)
           SELECT ${run.jobId}, coalesce(max(seq), 0) + 1, ${lo}::text, ${hi}::text, ${run.worker}, ${run.leaseSql()}
             FROM byok.retrofit_chunks WHERE job_id = ${run.jobId}
           RETURNING seq`,
    );
    await tx.execute(sql`UPDATE byok.retrofit_jobs SET next_key = ${hi}::text, planned = ${hi === null},
      updated_at = now() WHERE id = ${run.jobId}`);
    return { seq: Number(ins!.seq), lo, hi, lastKey: null };
  });
}

/** Gives a chunk back at once (after an error or an abort): another run resumes it from its checkpoint. */
export async function release(run: Run, chunk: Chunk): Promise<void> {
  await run.db.execute(sql`UPDATE byok.retrofit_chunks SET lease_until = now() - interval '1 second', updated_at = now()
    WHERE job_id = ${run.jobId} AND seq = ${chunk.seq} AND worker = ${run.worker} AND state = 'running'`);
}

/** Marks the job done when every chunk is; true when it is done (by this call or before). */
export async function tryFinish(run: Run): Promise<boolean> {
  const rows = await query(
    run.db,
    sql`UPDATE byok.retrofit_jobs SET state = 'done', finished_at = now(), updated_at = now()
         WHERE id = ${run.jobId} AND state = 'running' AND planned
           AND NOT EXISTS (SELECT 1 FROM byok.retrofit_chunks WHERE job_id = ${run.jobId} AND state <> 'done')
         RETURNING id`,
  );
  if (rows.length > 0) return true;
  const [j] = await query<{ state: string }>(
    run.db,
    sql`SELECT state FROM byok.retrofit_jobs WHERE id = ${run.jobId}`,
  );
  return j?.state === 'done';
}

/** Rows processed by every worker of the job, this pass. */
export async function jobRowsDone(run: Run): Promise<number> {
  const [r] = await query<{ done: unknown }>(
    run.db,
    sql`SELECT coalesce(sum(rows_seen), 0)::float8 AS done FROM byok.retrofit_chunks WHERE job_id = ${run.jobId}`,
  );
  return Number(r?.done ?? 0);
}

/**
 * Once the job is done: marks built the active index key version of every tenant (of the run's
 * tenants) that has no row with a value and no index value left, so lookups for it are allowed.
 * A tenant with rows the run could not index (unreadable, invalid, skipped) stays not built.
 */
export async function markIndexesBuilt(run: Run): Promise<void> {
  const reg = registryFor(run.keyring);
  for (const ix of run.indexes) {
    const tenantFilter =
      run.tenants === undefined
        ? sql``
        : sql` AND k.tenant_id IN (${sql.join(
            run.tenants.map((x) => sql`${x}::text`),
            sql`, `,
          )})`;
    const src = ident(ix.state.source().name);
    const idx = ident(ix.state.name);
    const rows = await query<{ tenant_id: string }>(
      run.db,
      sql`UPDATE byok.blind_index_keys AS k SET built = true, updated_at = now()
           WHERE k.context = ${ix.state.context} AND k.state = 'active' AND NOT k.built${tenantFilter}
             AND NOT EXISTS (SELECT 1 FROM ${tableSql(run.t)} AS t
                              WHERE t.${ident(run.t.tenant)}::text = k.tenant_id
                                AND t.${src} IS NOT NULL AND t.${idx} IS NULL)
         RETURNING k.tenant_id`,
    );
    for (const { tenant_id } of rows) {
      reg.drop(tenant_id, ix.state.context);
      run.result.indexesBuilt.push({ index: ix.state.label, tenantId: tenant_id });
    }
  }
}
