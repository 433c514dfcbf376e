/**
 * The backfill entry points: `runBackfill` (encrypt) and `rollbackBackfill` (decrypt), one worker
 * each. The roles: `planner.ts` (job, chunks, claims), `worker.ts` (the loop over chunks and
 * batches), `batch-keys.ts` and `rewriter.ts` (a batch's keys and new values), `writer.ts` (its
 * statements), `progress.ts`; `run.ts` holds a run's configuration and the shapes they share.
 */
import type { AnyPgDatabase, Keyring } from '../keys/keyring.ts';
import type { BackfillOptions, BackfillResult } from './options.ts';
import { Run } from './run.ts';
import type { RetrofitTableConfig } from './target.ts';
import { Worker } from './worker.ts';

export type {
  BackfillHooks,
  BackfillOptions,
  BackfillProgress,
  BackfillResult,
  RetrofitOperation,
  ValueCounts,
} from './options.ts';
export { backfillJobId, defaultWorkerId } from './run.ts';

/**
 * Encrypts the plaintext values of a table's columns online, in place or into shadow columns, and
 * re-encrypts values under older data key versions. Resumable (checkpoints in `byok.retrofit_*`),
 * idempotent, safe against concurrent writes by the app (each batch's rows are locked, re-read and
 * rewritten in one short transaction; rows the app holds are skipped and retried), and shareable by
 * several worker processes (chunks claimed with `FOR UPDATE SKIP LOCKED`).
 *
 * The app must already write ciphertext for these columns (read mode `passthrough`, or dual writes
 * for shadow columns) before the backfill starts: rows inserted behind the backfill are not revisited.
 *
 * Blind indexes of these columns are built on the way: each plaintext value encrypted gets its index
 * value in the same statement, a ciphertext without one gets it too, and when the job is done the
 * tenants with no unindexed row left are marked built (lookups allowed).
 */
export async function runBackfill(
  db: AnyPgDatabase,
  keyring: Keyring,
  table: RetrofitTableConfig,
  options: BackfillOptions = {},
): Promise<BackfillResult> {
  return new Worker(new Run(db, keyring, table, 'encrypt', options)).backfill();
}

/**
 * Decrypts a table's encrypted values back to plaintext (in place; for shadow columns, into the
 * source column, clearing the target). Same machinery as `runBackfill`. Freeze app writes to these
 * columns first (read mode `read-only`), or the app keeps encrypting rows behind the rollback.
 */
export async function rollbackBackfill(
  db: AnyPgDatabase,
  keyring: Keyring,
  table: RetrofitTableConfig,
  options: BackfillOptions = {},
): Promise<BackfillResult> {
  return new Worker(new Run(db, keyring, table, 'decrypt', options)).backfill();
}
