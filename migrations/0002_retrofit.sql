-- drizzle-byok retrofit checkpoints. Idempotent: safe to run more than once.
-- Matches byokRetrofitJobs / byokRetrofitChunks exported by `drizzle-byok/schema`.
CREATE SCHEMA IF NOT EXISTS byok;

CREATE TABLE IF NOT EXISTS byok.retrofit_jobs (
  id          text PRIMARY KEY,
  operation   text NOT NULL,
  table_name  text NOT NULL,
  columns     jsonb NOT NULL,
  state       text NOT NULL DEFAULT 'running',
  pass        integer NOT NULL DEFAULT 1,
  chunk_size  integer NOT NULL,
  next_key    text,
  planned     boolean NOT NULL DEFAULT false,
  total_rows  bigint,
  started_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz
);

CREATE TABLE IF NOT EXISTS byok.retrofit_chunks (
  job_id         text NOT NULL REFERENCES byok.retrofit_jobs (id) ON DELETE CASCADE,
  seq            integer NOT NULL,
  lo             text,
  hi             text,
  state          text NOT NULL DEFAULT 'running',
  last_key       text,
  rows_seen      bigint NOT NULL DEFAULT 0,
  values_written bigint NOT NULL DEFAULT 0,
  worker         text,
  lease_until    timestamptz,
  updated_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (job_id, seq)
);
