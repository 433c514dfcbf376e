import {
  bigint,
  boolean,
  foreignKey,
  integer,
  jsonb,
  primaryKey,
  text,
  timestamp,
} from 'drizzle-orm/pg-core';
import { byok } from './schema-key-store.ts';

/**
 * Checkpoint tables of the retrofit engine (`runBackfill`, `rollbackBackfill`), in the `byok` schema
 * next to the key store. Created by `migrations/0002_retrofit.sql` (also run by `installKeyStore`).
 *
 * A job is one operation (`encrypt` or `decrypt`) over some columns of one table. Its rows are split
 * into chunks of consecutive primary keys; a worker claims a chunk with `FOR UPDATE SKIP LOCKED`,
 * holds it by a lease, and records its progress (`last_key`) in the same transaction as each batch
 * of rows it rewrites, so a killed worker's chunk is resumed exactly where its last commit left it.
 * Nothing here is secret: keys are primary key values as text, counts, and worker ids.
 */
export const byokRetrofitJobs = byok.table('retrofit_jobs', {
  /** `<operation>:<schema>.<table>:<columns>[:<tenants>]`. */
  id: text('id').primaryKey(),
  operation: text('operation').notNull(),
  tableName: text('table_name').notNull(),
  columns: jsonb('columns').notNull(),
  /** 'running' | 'done' | 'cancelled'. */
  state: text('state').notNull().default('running'),
  /** Incremented each time a finished job is run again. */
  pass: integer('pass').notNull().default(1),
  chunkSize: integer('chunk_size').notNull(),
  /** Exclusive lower bound of the next chunk to plan (primary key as text); null: from the first row. */
  nextKey: text('next_key'),
  /** True once the last, open-ended chunk has been planned. */
  planned: boolean('planned').notNull().default(false),
  totalRows: bigint('total_rows', { mode: 'number' }),
  startedAt: timestamp('started_at', { withTimezone: true }).notNull().defaultNow(),
  updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
  finishedAt: timestamp('finished_at', { withTimezone: true }),
});

export const byokRetrofitChunks = byok.table(
  'retrofit_chunks',
  {
    jobId: text('job_id').notNull(),
    seq: integer('seq').notNull(),
    /** Exclusive lower bound (primary key as text); null: from the first row. */
    lo: text('lo'),
    /** Inclusive upper bound; null: to the last row (the last chunk is open-ended). */
    hi: text('hi'),
    /** 'running' | 'done'. */
    state: text('state').notNull().default('running'),
    /** Last key committed: the worker that resumes this chunk starts after it. */
    lastKey: text('last_key'),
    rowsSeen: bigint('rows_seen', { mode: 'number' }).notNull().default(0),
    valuesWritten: bigint('values_written', { mode: 'number' }).notNull().default(0),
    /** `host:pid:random` of the worker holding (or that last held) the chunk. */
    worker: text('worker'),
    leaseUntil: timestamp('lease_until', { withTimezone: true }),
    updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    primaryKey({ name: 'retrofit_chunks_pkey', columns: [t.jobId, t.seq] }),
    foreignKey({
      name: 'retrofit_chunks_job_id_fkey',
      columns: [t.jobId],
      foreignColumns: [byokRetrofitJobs.id],
    }).onDelete('cascade'),
  ],
);
