import { type SQL, sql } from 'drizzle-orm';
import { openFor } from '../drizzle/columns.ts';
import {
  ByokConfigError,
  DatabaseUnavailableError,
  isByokError,
  KeyNotFoundError,
  KeyStoreMissingError,
  TenantShreddedError,
} from '../errors.ts';
import { translateStoreError } from '../store/errors.ts';
import type { DekEntry } from '../keys/cache.ts';
import { type AnyPgDatabase, type Keyring, keysOf } from '../keys/keyring.ts';
import { backfillJobId } from './run.ts';
import { ident, query, rangeSql, tableSql } from './sql.ts';
import {
  type ResolvedColumn,
  type ResolvedTarget,
  type RetrofitTableConfig,
  resolveTarget,
} from './target.ts';
import { classify, sameValue, sourceValue } from './values.ts';

export interface VerifyOptions {
  /** Decrypt every ciphertext (and compare shadow targets with their source). Default true. */
  deep?: boolean;
  /** Rows per batch. Default 2,000. */
  batchSize?: number;
  /** Only rows of these tenants. */
  tenants?: readonly string[];
  signal?: AbortSignal;
  onProgress?: (p: {
    rowsDone: number;
    rowsTotal: number;
    rowsPerSecond: number;
    etaSeconds: number | null;
  }) => void;
}

export interface VerifyColumnReport {
  readonly column: string;
  readonly kind: 'in-place' | 'shadow';
  nulls: number;
  /** Values not encrypted yet (shadow: a source value whose target is still empty). */
  plaintext: number;
  /** Ciphertext under the tenant's active data key. */
  current: number;
  /** Ciphertext under an older data key version (re-encrypted by the next `run`). */
  stale: number;
  /** Ciphertext that does not decrypt for the row's tenant (or malformed, or under a destroyed key). */
  unreadable: number;
  /**
   * Deep: ciphertext whose data key could not be loaded now (KMS unreachable or throttling, access
   * denied, key disabled, credentials rejected, no KEK factory configured...). Says nothing about
   * the value itself: fix the cause (see `problems`) and verify again.
   */
  unavailable: number;
  /** Shadow columns, deep: the decrypted target differs from the source. */
  mismatched: number;
}

/** Why values of one tenant were unreadable or their key unavailable, with how many values. */
export interface VerifyProblem {
  /** The row's tenant (null for rows without a tenant). */
  readonly tenantId: string | null;
  readonly kind: 'unreadable' | 'key-unavailable';
  /** Error code of the cause (`ERR_BYOK_*`), or `MALFORMED` / `NO_TENANT` / `PLAIN_IN_SHADOW`. */
  readonly code: string;
  /** The cause's message (no plaintext, keys or parameters: messages of typed errors never carry them). */
  readonly message: string;
  values: number;
}

export interface VerifyReport {
  readonly table: string;
  rows: number;
  readonly deep: boolean;
  readonly columns: VerifyColumnReport[];
  plaintext: number;
  unreadable: number;
  /** Values whose data key could not be loaded (see `problems` for tenants and causes). */
  unavailable: number;
  stale: number;
  mismatched: number;
  /** Per tenant and cause, largest first: what made values unreadable or their keys unavailable. */
  problems: VerifyProblem[];
  /** No plaintext, nothing unreadable or unavailable, no mismatch. */
  ok: boolean;
  aborted: boolean;
  elapsedMs: number;
}

type VerifyRow = Record<string, unknown> & { k: string; t: string | null };

const STORE_FAILURES = new Set([KeyStoreMissingError.code, DatabaseUnavailableError.code]);

/**
 * Failures to load a data key that say the key is gone for good (destroyed by shred, or an id the
 * store does not know): the values are unreadable. Every other failure (KMS down or throttling,
 * access denied, disabled key, credentials, configuration) is "key unavailable": fixable, and no
 * verdict on the values.
 */
const KEY_GONE = new Set([TenantShreddedError.code, KeyNotFoundError.code]);

type Problem = Omit<VerifyProblem, 'tenantId' | 'values'>;

function causeOf(e: unknown): { code: string; message: string } {
  if (isByokError(e)) return { code: e.code, message: e.message };
  return { code: 'ERR_UNKNOWN', message: 'unexpected failure while loading the data key' };
}

/** Active data key (id, version) of tenants, read from the key store (never creates one). */
async function activeVersions(
  db: AnyPgDatabase,
  tenants: readonly string[],
): Promise<Map<string, { id: string; version: number }>> {
  if (tenants.length === 0) return new Map();
  const rows = await query<{ tenant_id: string; id: string; version: number }>(
    db,
    sql`SELECT tenant_id, id::text AS id, version FROM byok.deks WHERE state = 'active' AND tenant_id IN (${sql.join(
      tenants.map((x) => sql`${x}::text`),
      sql`, `,
    )})`,
  );
  return new Map(rows.map((r) => [r.tenant_id, { id: r.id, version: Number(r.version) }]));
}

/**
 * Counts, per column, what is still plaintext, what is encrypted under the active or an older data
 * key, and what cannot be decrypted. Read-only; never creates a data key. `ok` is false while
 * anything is plaintext, unreadable or (shadow columns) differs from its source.
 */
export async function verifyBackfill(
  db: AnyPgDatabase,
  keyring: Keyring,
  table: RetrofitTableConfig,
  options: VerifyOptions = {},
): Promise<VerifyReport> {
  const started = performance.now();
  const t = resolveTarget(table, 'verifyBackfill');
  const deep = options.deep ?? true;
  const batchSize = options.batchSize ?? 2000;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1)
    throw new ByokConfigError('batchSize must be a positive integer');
  const report: VerifyReport = {
    table: t.qualified,
    rows: 0,
    deep,
    columns: t.columns.map((c) => ({
      column: c.label,
      kind: c.kind,
      nulls: 0,
      plaintext: 0,
      current: 0,
      stale: 0,
      unreadable: 0,
      unavailable: 0,
      mismatched: 0,
    })),
    plaintext: 0,
    unreadable: 0,
    unavailable: 0,
    stale: 0,
    mismatched: 0,
    problems: [],
    ok: false,
    aborted: false,
    elapsedMs: 0,
  };
  const [cnt] = await query<{ n: unknown }>(
    db,
    sql`SELECT count(*)::float8 AS n FROM ${tableSql(t)} AS t WHERE ${rangeSql(t, sql.raw('t'), null, null, options.tenants)}`,
  );
  const total = Number(cnt?.n ?? 0);
  const active = new Map<string, { id: string; version: number } | null>();
  const entries = new Map<string, DekEntry | null>();
  /** Why a data key could not be loaded, by DEK id. */
  const failures = new Map<string, unknown>();
  const problems = new Map<string, VerifyProblem>();
  let from: string | null = null;
  for (;;) {
    if (options.signal?.aborted) {
      report.aborted = true;
      break;
    }
    const rows: VerifyRow[] = await query<VerifyRow>(
      db,
      sql`SELECT ${selectFields(t)} FROM ${tableSql(t)} AS t WHERE ${rangeSql(t, sql.raw('t'), from, null, options.tenants)}
           ORDER BY t.${ident(t.key)} LIMIT ${batchSize}`,
    );
    const tenants = [
      ...new Set(rows.map((r) => r.t).filter((x): x is string => x !== null && !active.has(x))),
    ];
    const found = await activeVersions(db, tenants);
    for (const x of tenants) active.set(x, found.get(x) ?? null);
    if (deep) {
      const ids = new Set<string>();
      for (const row of rows) {
        t.columns.forEach((c, i) => {
          const s = classify(c.state, row[`v${i}`]);
          if (s.kind === 'envelope' && !entries.has(s.dekId)) ids.add(s.dekId);
        });
      }
      const list = [...ids];
      const loaded = await Promise.allSettled(list.map((id) => keysOf(keyring).getDek(id)));
      loaded.forEach((r, i) => {
        if (r.status === 'fulfilled') entries.set(list[i]!, r.value);
        else {
          // The store itself failing (missing tables, database down) ends the verification.
          const e = translateStoreError(r.reason);
          if (isByokError(e) && STORE_FAILURES.has(e.code)) throw e;
          entries.set(list[i]!, null);
          failures.set(list[i]!, e);
        }
      });
    }
    for (const row of rows) {
      t.columns.forEach((c, i) => {
        const problem = countValue(keyring, c, report.columns[i]!, row, i, active, entries, deep, failures);
        if (problem !== undefined) {
          const key = `${row.t}\u0000${problem.kind}\u0000${problem.code}\u0000${problem.message}`;
          const p = problems.get(key);
          if (p === undefined) problems.set(key, { tenantId: row.t, ...problem, values: 1 });
          else p.values++;
        }
      });
    }
    report.rows += rows.length;
    const elapsed = performance.now() - started;
    const rate = elapsed > 0 ? (report.rows * 1000) / elapsed : 0;
    options.onProgress?.({
      rowsDone: report.rows,
      rowsTotal: Math.max(total, report.rows),
      rowsPerSecond: rate,
      etaSeconds: rate > 0 ? Math.max(0, total - report.rows) / rate : null,
    });
    if (rows.length < batchSize) break;
    from = rows[rows.length - 1]!.k;
  }
  report.problems = [...problems.values()].sort((a, b) => b.values - a.values);
  for (const c of report.columns) {
    report.plaintext += c.plaintext;
    report.unreadable += c.unreadable;
    report.unavailable += c.unavailable;
    report.stale += c.stale;
    report.mismatched += c.mismatched;
  }
  report.ok =
    !report.aborted &&
    report.plaintext === 0 &&
    report.unreadable === 0 &&
    report.unavailable === 0 &&
    report.mismatched === 0;
  report.elapsedMs = performance.now() - started;
  return report;
}

function selectFields(t: ResolvedTarget) {
  const parts = [sql`t.${ident(t.key)}::text AS "k"`, sql`t.${ident(t.tenant)}::text AS "t"`];
  t.columns.forEach((c, i) => {
    parts.push(sql`t.${ident(c.target)} AS ${sql.identifier(`v${i}`)}`);
    if (c.source !== undefined) {
      const col = sql`t.${ident(c.source)}`;
      const expr = c.sourceType?.startsWith('timestamp') ? sql`to_json(${col}) #>> '{}'` : sql`${col}::text`;
      parts.push(sql`${expr} AS ${sql.identifier(`s${i}`)}`);
    }
  });
  return sql.join(parts, sql`, `);
}

function countValue(
  keyring: Keyring,
  c: ResolvedColumn,
  r: VerifyColumnReport,
  row: Record<string, unknown> & { t: string | null },
  i: number,
  active: Map<string, { id: string; version: number } | null>,
  entries: Map<string, DekEntry | null>,
  deep: boolean,
  failures: Map<string, unknown>,
): Problem | undefined {
  const stored = classify(c.state, row[`v${i}`]);
  const source = c.source === undefined ? undefined : (row[`s${i}`] as string | null);
  if (stored.kind === 'null') {
    if (source === undefined || source === null) r.nulls++;
    else r.plaintext++;
    return undefined;
  }
  if (stored.kind === 'malformed') {
    r.unreadable++;
    return {
      kind: 'unreadable',
      code: 'MALFORMED',
      message: 'the stored value is not a drizzle-byok envelope',
    };
  }
  if (stored.kind === 'plain' && c.kind === 'shadow') {
    r.unreadable++;
    return {
      kind: 'unreadable',
      code: 'PLAIN_IN_SHADOW',
      message: 'the shadow (encrypted) column holds a value that is not ciphertext',
    };
  }
  if (stored.kind === 'plain') {
    r.plaintext++;
    return undefined;
  }
  const tenant = row.t;
  if (tenant === null) {
    r.unreadable++;
    return {
      kind: 'unreadable',
      code: 'NO_TENANT',
      message: 'the row has no tenant: its ciphertext cannot be checked',
    };
  }
  const act = active.get(tenant) ?? null;
  if (!deep) {
    if (act !== null && act.id === stored.dekId) r.current++;
    else r.stale++;
    return undefined;
  }
  const entry = entries.get(stored.dekId) ?? null;
  if (entry === null) {
    const cause = causeOf(failures.get(stored.dekId));
    if (KEY_GONE.has(cause.code)) {
      r.unreadable++;
      return { kind: 'unreadable', ...cause };
    }
    r.unavailable++;
    return { kind: 'key-unavailable', ...cause };
  }
  if (entry.tenantId !== tenant) {
    r.unreadable++;
    return {
      kind: 'unreadable',
      code: 'ERR_BYOK_TENANT_MISMATCH',
      message: "the value is encrypted under another tenant's data key",
    };
  }
  let value: unknown;
  try {
    value = openFor(keyring, c.state, entry, stored.env);
  } catch {
    r.unreadable++;
    return { kind: 'unreadable', code: 'ERR_BYOK_DECRYPTION_FAILED', message: 'decryption operation failed' };
  }
  if (source !== undefined && source !== null) {
    let same = false;
    try {
      same = sameValue(c.state, value, sourceValue(c.state, source));
    } catch {
      same = false;
    }
    if (!same) {
      r.mismatched++;
      return undefined;
    }
  }
  if (act !== null && (act.id === stored.dekId || entry.version >= act.version)) r.current++;
  else r.stale++;
  return undefined;
}

// -----------------------------------------------------------------------------------------------
// Plan

export interface PlanColumn {
  readonly column: string;
  readonly kind: 'in-place' | 'shadow';
  readonly codec: string;
  readonly storage: 'bytea' | 'text';
  readonly mode: string;
  /** Database type of the encrypted (target) column, or null when it does not exist. */
  readonly dbType: string | null;
  /** Database type of the shadow source column. */
  readonly sourceDbType: string | null;
  /** Quick counts by SQL (prefix / first byte; no decryption). */
  readonly plaintext: number;
  readonly encrypted: number;
  readonly nulls: number;
}

export interface PlanJob {
  readonly id: string;
  readonly operation: string;
  readonly state: string;
  readonly pass: number;
  readonly rowsTotal: number;
  readonly rowsDone: number;
  readonly valuesWritten: number;
  readonly chunks: number;
  readonly chunksDone: number;
  readonly liveWorkers: number;
  readonly startedAt: string | null;
  readonly finishedAt: string | null;
}

export interface PlanReport {
  readonly table: string;
  readonly key: string;
  readonly tenantColumn: string;
  readonly rows: number;
  readonly tenants: number;
  readonly columns: PlanColumn[];
  readonly jobs: PlanJob[];
  /** Things to do before `run` can start (missing column, wrong type, missing checkpoint tables). */
  readonly errors: string[];
  /** Things worth knowing (strict mode over plaintext...). */
  readonly warnings: string[];
}

const BYTEA_ENVELOPE = (col: SQL) =>
  sql`(length(${col}) >= 46 AND get_byte(${col}, 0) = 1 AND get_byte(${col}, 1) IN (0, 1))`;

/**
 * What `run` would do, quickly: row counts, plaintext / encrypted counts by SQL, the database types
 * of the columns against their declaration (with the SQL to fix them), and the state of checkpoint jobs.
 */
export async function planBackfill(
  db: AnyPgDatabase,
  _keyring: Keyring,
  table: RetrofitTableConfig,
): Promise<PlanReport> {
  const t = resolveTarget(table, 'planBackfill');
  const errors: string[] = [];
  const warnings: string[] = [];
  const types = new Map(
    (
      await query<{ column_name: string; data_type: string }>(
        db,
        sql`SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ${t.schema} AND table_name = ${t.table}`,
      )
    ).map((r) => [r.column_name, r.data_type]),
  );
  const tableRef = `"${t.schema}"."${t.table}"`;
  if (types.size === 0) {
    errors.push(`table ${t.qualified} does not exist in the database`);
    return {
      table: t.qualified,
      key: t.key,
      tenantColumn: t.tenant,
      rows: 0,
      tenants: 0,
      columns: [],
      jobs: [],
      errors,
      warnings,
    };
  }
  for (const name of [t.key, t.tenant]) {
    if (!types.has(name)) errors.push(`column ${t.table}.${name} does not exist in the database`);
  }
  const usable: ResolvedColumn[] = [];
  for (const c of t.columns) {
    const want = c.state.storage === 'text' ? ['text', 'character varying'] : ['bytea'];
    const have = types.get(c.target);
    if (c.kind === 'shadow') {
      if (c.source !== undefined && !types.has(c.source)) {
        errors.push(`shadow source column ${t.table}.${c.source} does not exist in the database`);
        continue;
      }
      if (have === undefined) {
        errors.push(
          `shadow target column ${t.table}.${c.target} does not exist: ALTER TABLE ${tableRef} ADD COLUMN "${c.target}" ${c.state.storage === 'text' ? 'text' : 'bytea'};`,
        );
        continue;
      }
    } else if (have === undefined) {
      errors.push(`column ${t.table}.${c.target} does not exist in the database`);
      continue;
    }
    if (!want.includes(have)) {
      errors.push(
        c.state.storage === 'bytea' && c.kind === 'in-place'
          ? `column ${t.table}.${c.target} is ${have} but is declared with bytea storage: declare it ` +
              `encrypted.${c.state.codec.name}('${c.target}', { storage: 'text', mode: 'passthrough' }) to encrypt in place, ` +
              'or use the shadow-column path ({ source, target }) to move to bytea (see docs/retrofit.md)'
          : `column ${t.table}.${c.target} is ${have}, but its declared storage needs ${want.join(' or ')}`,
      );
      continue;
    }
    usable.push(c);
  }
  const parts = [sql`count(*)::float8 AS rows`, sql`count(DISTINCT t.${ident(t.tenant)})::float8 AS tenants`];
  usable.forEach((c, i) => {
    const col = sql`t.${ident(c.target)}`;
    const enc = c.state.storage === 'text' ? sql`(${col} LIKE 'byok1:%')` : BYTEA_ENVELOPE(col);
    if (c.kind === 'in-place') {
      parts.push(
        sql`count(*) FILTER (WHERE ${col} IS NOT NULL AND NOT ${enc})::float8 AS ${sql.identifier(`p${i}`)}`,
      );
      parts.push(
        sql`count(*) FILTER (WHERE ${col} IS NOT NULL AND ${enc})::float8 AS ${sql.identifier(`e${i}`)}`,
      );
      parts.push(sql`count(*) FILTER (WHERE ${col} IS NULL)::float8 AS ${sql.identifier(`n${i}`)}`);
    } else {
      const src = sql`t.${ident(c.source!)}`;
      parts.push(
        sql`count(*) FILTER (WHERE ${src} IS NOT NULL AND ${col} IS NULL)::float8 AS ${sql.identifier(`p${i}`)}`,
      );
      parts.push(sql`count(*) FILTER (WHERE ${col} IS NOT NULL)::float8 AS ${sql.identifier(`e${i}`)}`);
      parts.push(
        sql`count(*) FILTER (WHERE ${src} IS NULL AND ${col} IS NULL)::float8 AS ${sql.identifier(`n${i}`)}`,
      );
    }
  });
  const canCount = types.has(t.tenant);
  const [counts] = canCount
    ? await query<Record<string, unknown>>(
        db,
        sql`SELECT ${sql.join(parts, sql`, `)} FROM ${tableSql(t)} AS t`,
      )
    : [{} as Record<string, unknown>];
  const columns: PlanColumn[] = t.columns.map((c) => {
    const i = usable.indexOf(c);
    const num = (p: string) => (i < 0 ? 0 : Number(counts?.[`${p}${i}`] ?? 0));
    const plan: PlanColumn = {
      column: c.label,
      kind: c.kind,
      codec: c.state.codec.name,
      storage: c.state.storage,
      mode: c.state.mode,
      dbType: types.get(c.target) ?? null,
      sourceDbType: c.source === undefined ? null : (types.get(c.source) ?? null),
      plaintext: num('p'),
      encrypted: num('e'),
      nulls: num('n'),
    };
    if (c.kind === 'in-place' && plan.plaintext > 0 && c.state.mode === 'strict') {
      warnings.push(
        `${c.label} holds ${plan.plaintext} plaintext value(s) and is declared in strict mode: the app fails to ` +
          "read them until the backfill is done. Declare it with mode: 'passthrough' during the migration.",
      );
    }
    if (c.state.mode === 'read-only')
      warnings.push(`${c.label} is in read-only mode: the app cannot write it`);
    return plan;
  });
  let jobs: PlanJob[] = [];
  const [hasJobs] = await query<{ ok: boolean }>(
    db,
    sql`SELECT to_regclass('byok.retrofit_jobs') IS NOT NULL AS ok`,
  );
  if (!hasJobs?.ok) {
    errors.push(
      'the checkpoint tables do not exist: run installKeyStore(db) or migrations/0002_retrofit.sql',
    );
  } else {
    const ids = [backfillJobId('encrypt', t), backfillJobId('decrypt', t)];
    const rows = await query<Record<string, unknown>>(
      db,
      sql`SELECT j.id, j.operation, j.state, j.pass, j.total_rows::float8 AS total, j.started_at::text AS started,
                 j.finished_at::text AS finished,
                 coalesce(sum(c.rows_seen), 0)::float8 AS done, coalesce(sum(c.values_written), 0)::float8 AS written,
                 count(c.seq)::int AS chunks, count(c.seq) FILTER (WHERE c.state = 'done')::int AS chunks_done,
                 count(DISTINCT c.worker) FILTER (WHERE c.state = 'running' AND c.lease_until >= now())::int AS live
            FROM byok.retrofit_jobs j LEFT JOIN byok.retrofit_chunks c ON c.job_id = j.id
           WHERE j.table_name = ${t.qualified} OR j.id IN (${sql.join(
             ids.map((x) => sql`${x}::text`),
             sql`, `,
           )})
           GROUP BY j.id ORDER BY j.started_at`,
    );
    jobs = rows.map((r) => ({
      id: String(r.id),
      operation: String(r.operation),
      state: String(r.state),
      pass: Number(r.pass),
      rowsTotal: Number(r.total ?? 0),
      rowsDone: Number(r.done ?? 0),
      valuesWritten: Number(r.written ?? 0),
      chunks: Number(r.chunks ?? 0),
      chunksDone: Number(r.chunks_done ?? 0),
      liveWorkers: Number(r.live ?? 0),
      startedAt: r.started === null ? null : String(r.started),
      finishedAt: r.finished === null ? null : String(r.finished),
    }));
  }
  return {
    table: t.qualified,
    key: t.key,
    tenantColumn: t.tenant,
    rows: Number(counts?.rows ?? 0),
    tenants: Number(counts?.tenants ?? 0),
    columns,
    jobs,
    errors,
    warnings,
  };
}
