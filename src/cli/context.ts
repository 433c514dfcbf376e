import { sql } from 'drizzle-orm';
import { ByokConfigError } from '../errors.ts';
import { rowsOf } from '../migrate/sql.ts';
import { CliConfigError, type LoadedConfig } from './config.ts';
import type { Io } from './output.ts';

/**
 * Exit codes of `drizzle-byok` (stable, documented in docs/retrofit.md):
 * - 0: done;
 * - 1: failure (database, KMS, unexpected error): nothing is left half-done that a rerun cannot finish;
 * - 2: usage or configuration error (bad flag, missing or invalid config file, missing tables or key store);
 * - 3: the command ran but found problems: `migrate verify` found plaintext, unreadable or mismatched
 *   values; `migrate run`/`rollback` left values it could not process; `keys health` found tenants
 *   that are not healthy; `migrate plan` found something that blocks `run`;
 * - 130: interrupted (Ctrl-C / SIGTERM): the backfill stopped after its current batch, checkpoint saved.
 */
export const EXIT = { ok: 0, failure: 1, usage: 2, problems: 3, interrupted: 130 } as const;

/** Parsed flags (node:util parseArgs values). */
export type Flags = {
  [name: string]: string | boolean | string[] | undefined;
  config?: string;
  json?: boolean;
  help?: boolean;
  table?: string[];
  tenant?: string[];
  kek?: string[];
  'aws-key-arn'?: string[];
  'gcp-key-name'?: string[];
};

/** A usage error: exit code 2. */
export class UsageError extends ByokConfigError {}

export interface Context {
  readonly io: Io;
  readonly flags: Flags;
  readonly args: string[];
  readonly json: boolean;
  readonly signal: AbortSignal;
  readonly config: () => Promise<LoadedConfig>;
  /** Prints a result: JSON on stdout with --json, else the human text. */
  out(json: unknown, human: () => string): void;
  /** A human line on stdout (nothing with --json). */
  say(line: string): void;
}

/** A positive integer flag. */
export function intFlag(flags: Flags, name: keyof Flags): number | undefined {
  const v = flags[name];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== 'string' || !Number.isFinite(n) || n <= 0) {
    throw new UsageError(`--${name} must be a positive number, got ${JSON.stringify(v)}`);
  }
  return n;
}

/** Checks that the retrofit checkpoint tables exist. */
export async function assertCheckpointTables(loaded: LoadedConfig): Promise<void> {
  const [r] = rowsOf<{ ok: boolean }>(
    await loaded.db.execute(sql`SELECT to_regclass('byok.retrofit_jobs') IS NOT NULL AS ok`),
  );
  if (!r?.ok) {
    throw new CliConfigError(
      'the retrofit checkpoint tables (byok.retrofit_jobs, byok.retrofit_chunks) do not exist: run ' +
        '`drizzle-byok migrate install`, or apply migrations/0002_retrofit.sql with your migration tool',
    );
  }
}
