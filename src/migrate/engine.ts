// One file: the retrofit engine: planner, chunk claims, batch read/encrypt/write pipeline and checkpoints share one run state.
import { createHash, type KeyObject, randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { type SQL, sql } from 'drizzle-orm';
import { type FieldKey, open, seal } from '../crypto/aead.ts';
import { type BlindParams, blindValue } from '../crypto/blind-hmac.ts';
import { type BlindIndexState, indexInput, tableBlindIndexes } from '../blind/index.ts';
import { type IndexKeyOwner, registryFor } from '../blind/index.ts';
import { openFor, storedEnvelope } from '../drizzle/columns.ts';
import {
  ByokConfigError,
  ByokError,
  isByokError,
  KmsThrottledError,
  KmsUnavailableError,
  RetrofitBusyError,
} from '../errors.ts';
import type { DekEntry } from '../keys/cache.ts';
import { type AnyPgDatabase, asPgDb, type Keyring, keysOf, isKeyring } from '../keys/keyring.ts';
import { ident, keysIn, query, rangeSql, tableSql, textElements } from './sql.ts';
import {
  type ResolvedColumn,
  type ResolvedTarget,
  type RetrofitTableConfig,
  resolveTarget,
} from './target.ts';
import {
  assertRetrofittable,
  classify,
  inPlacePlainValue,
  inPlaceStoredPlain,
  type Stored,
  sourceText,
  sourceValue,
} from './values.ts';

/** `encrypt`: plaintext → ciphertext (and older data key versions → the active one). `decrypt`: rollback. */
export type RetrofitOperation = 'encrypt' | 'decrypt';

export interface BackfillOptions {
  /** Rows read per batch (one short transaction rewrites the rows of a batch that need it). Default 1,000. */
  batchSize?: number;
  /** Rows per chunk, the unit workers claim. Default 20,000. */
  chunkSize?: number;
  /**
   * How long a claimed chunk stays reserved without a checkpoint before another worker may take it
   * over (a worker renews it at every batch). Default 30,000 ms. A chunk of a worker that died on this
   * same host is taken over at once.
   */
  leaseMs?: number;
  /** Most rows read per second by this worker. Default unlimited. */
  rowsPerSecond?: number;
  /**
   * `encrypt` only: re-encrypt values under an older data key version of their tenant (after
   * `rotateDek`) with the active one. Default true.
   */
  reencrypt?: boolean;
  /** Only rows of these tenants. Default every row. */
  tenants?: readonly string[];
  /** Scan and count what would be written; write nothing (no checkpoint either). */
  dryRun?: boolean;
  /** Discard the checkpoints of an unfinished job and start a new pass. */
  restart?: boolean;
  /**
   * `encrypt` only: when a tenant's data key cannot be loaded or created (revoked BYOK key, shredded
   * tenant), leave its rows as they are, report it in `tenantErrors` and go on. Default false (fail).
   */
  skipTenantErrors?: boolean;
  /** How long rows locked by other transactions are waited for (retried) before failing. Default 60,000 ms. */
  busyTimeoutMs?: number;
  /** Wait for chunks other live workers hold until the whole job is done. Default true. */
  waitForOthers?: boolean;
  /** Stops after the current batch (its checkpoint committed); the result has `aborted: true`. */
  signal?: AbortSignal;
  onProgress?: (progress: BackfillProgress) => void;
  /** Worker id recorded in the checkpoint table. Default `<hostname>:<pid>:<random>`. */
  workerId?: string;
  /** @internal test hooks */
  hooks?: BackfillHooks;
}

/** @internal */
export interface BackfillHooks {
  /** After a batch was read and its keys loaded, before its rows are locked and rewritten. */
  beforeLock?: (keys: readonly string[]) => void | Promise<void>;
  /** After a batch's transaction committed, with the keys of the rows it rewrote. */
  afterCommit?: (written: readonly string[]) => void | Promise<void>;
}

export interface BackfillProgress {
  readonly operation: RetrofitOperation;
  readonly job: string;
  readonly table: string;
  /** Rows processed by every worker of the job, this pass. */
  readonly rowsDone: number;
  /** Rows of the table (of the selected tenants) when the pass started. */
  readonly rowsTotal: number;
  /** Values this worker wrote. */
  readonly valuesWritten: number;
  /** Recent rate of this worker. */
  readonly rowsPerSecond: number;
  /** Estimated seconds left (every worker), or null when unknown. */
  readonly etaSeconds: number | null;
  readonly elapsedMs: number;
}

/** Counts per value (a row with 3 columns counts 3). */
export interface ValueCounts {
  /** Values encrypted (encrypt), or decrypted back to plaintext (decrypt). */
  written: number;
  /** Of `written`: values re-encrypted from an older data key version. */
  reencrypted: number;
  /** Already in the wanted state (ciphertext under the active key, or plaintext for decrypt). */
  alreadyDone: number;
  /** Ciphertext under an older data key version left as is (`reencrypt: false`). */
  stale: number;
  nulls: number;
  /** Ciphertext that does not decrypt (malformed, wrong tenant, destroyed key): left untouched. */
  unreadable: number;
  /** Plaintext that is not a valid value of the column's type (e.g. bad JSON): left untouched. */
  invalid: number;
  /** Values of rows without a tenant: left untouched. */
  noTenant: number;
  /** Values of tenants whose key could not be loaded (`skipTenantErrors`): left untouched. */
  tenantSkipped: number;
}

export interface BackfillResult extends ValueCounts {
  readonly operation: RetrofitOperation;
  readonly job: string;
  pass: number;
  readonly table: string;
  readonly columns: readonly string[];
  readonly worker: string;
  readonly dryRun: boolean;
  /** Rows this worker read. */
  rowsSeen: number;
  /** Chunks this worker finished. */
  chunks: number;
  /** Row locks that were busy (held by the app) and retried. */
  busyRetries: number;
  tenantErrors: { tenantId: string; code: string; message: string }[];
  /**
   * `encrypt` only: blind index values this worker wrote (for the blind indexes of the encrypted
   * columns: with every value it encrypts, and for rows whose index value is missing).
   */
  indexed: number;
  /**
   * `encrypt` only, once the job is done: the tenants whose blind index this run marked built (every
   * row with a value has an index value), so lookups for them are allowed. `index` is `table.column`.
   */
  indexesBuilt: { index: string; tenantId: string }[];
  /** True when every chunk of the job is done (by this worker or others). */
  jobDone: boolean;
  aborted: boolean;
  elapsedMs: number;
  rowsPerSecond: number;
}

const DEFAULTS = { batchSize: 1000, chunkSize: 20_000, leaseMs: 30_000, busyTimeoutMs: 60_000 } as const;
/** Rows encrypted between two turns of the event loop while a batch is prepared. */
const PLAN_SLICE = 100;
const TRANSIENT = new Set([KmsUnavailableError.code, KmsThrottledError.code]);

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
  return new Backfill(db, keyring, table, 'encrypt', options).run();
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
  return new Backfill(db, keyring, table, 'decrypt', options).run();
}

/** The checkpoint job id of an operation over a table's columns (and tenants). */
export function backfillJobId(
  operation: RetrofitOperation,
  target: ResolvedTarget,
  tenants?: readonly string[],
): string {
  const cols = target.columns.map((c) => (c.source === undefined ? c.target : `${c.source}>${c.target}`));
  let id = `${operation}:${target.qualified}:${cols.join(',')}`;
  if (tenants !== undefined) {
    const h = createHash('sha256')
      .update(JSON.stringify([...tenants].sort()))
      .digest('hex')
      .slice(0, 16);
    id += `:tenants-${h}`;
  }
  return id;
}

export function defaultWorkerId(): string {
  return `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
}

function positive(n: number | undefined, fallback: number, name: string): number {
  if (n === undefined) return fallback;
  if (!Number.isFinite(n) || n <= 0) throw new ByokConfigError(`${name} must be a positive number`);
  return n;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

function emptyCounts(): ValueCounts {
  return {
    written: 0,
    reencrypted: 0,
    alreadyDone: 0,
    stale: 0,
    nulls: 0,
    unreadable: 0,
    invalid: 0,
    noTenant: 0,
    tenantSkipped: 0,
  };
}

/** A row as read: key and tenant as text, raw target values `v<i>`, source text `s<i>`, blind index values `i<j>`. */
type Row = Record<string, unknown> & { k: string; t: string | null; x: string; [STORED]?: Stored[] };

/** Per row, the classification of each target value (computed once, used by every step). */
const STORED: unique symbol = Symbol('stored');

interface Chunk {
  readonly seq: number;
  readonly lo: string | null;
  readonly hi: string | null;
  lastKey: string | null;
}

/** Keys loaded for a batch. */
interface BatchKeys {
  readonly active: Map<string, DekEntry>;
  readonly old: Map<string, DekEntry>;
  /** Tenants skipped (skipTenantErrors). */
  readonly failedTenants: Set<string>;
  /** DEK ids that could not be loaded for good (destroyed, unknown). */
  readonly deadDeks: Set<string>;
  /** Active blind index key of each tenant, per index (`tenant\0j`). */
  readonly index: Map<string, IndexKey>;
}

/** A tenant's active key version of one blind index. */
interface IndexKey {
  readonly version: number;
  readonly params: BlindParams;
  readonly key: KeyObject;
}

/** A blind index of one of the columns the engine rewrites. */
interface EngineIndex {
  /** Index of the encrypted column in `ResolvedTarget.columns`. */
  readonly col: number;
  readonly state: BlindIndexState;
  readonly owner: IndexKeyOwner;
}

/** One value's fate. */
type Action =
  | { readonly kind: 'count'; readonly counter: keyof ValueCounts }
  | { readonly kind: 'work' }
  /** A key is missing: reload keys and retry the row. */
  | { readonly kind: 'need-key' };

const COUNT = (counter: keyof ValueCounts): Action => ({ kind: 'count', counter });
const WORK: Action = { kind: 'work' };
const NEED_KEY: Action = { kind: 'need-key' };

/** A row to rewrite: the row as read, its new column values, and the counts to record once written. */
interface PlannedWrite {
  readonly row: Row;
  readonly writes: Map<number, ColumnWrite>;
  /** New blind index values, by index number (`EngineIndex` position). */
  readonly index: Map<number, Buffer>;
  readonly actions: Action[];
}

/** A computed rewrite of one column of one row. */
interface ColumnWrite {
  /** New raw value of the target column (ciphertext, or in-place plaintext for decrypt). */
  readonly target?: string | Buffer;
  /** New text form of the shadow source column (decrypt); the target is then cleared. */
  readonly source?: string;
}

/** A batch read, its keys loaded and its new values computed, not yet written. */
interface Prepared {
  readonly rows: Row[];
  readonly keys: BatchKeys;
  /** Rows to rewrite, by key. */
  readonly writes: Map<string, PlannedWrite>;
  /** Rows whose keys must be reloaded before they can be planned. */
  readonly needKey: Row[];
  /** Actions of rows that need no write, counted when the batch is written. */
  readonly settled: Action[][];
}

class LeaseLost extends Error {}

/** A finished chunk whose last batch is still being written. */
interface Tail {
  readonly chunk: Chunk;
  readonly done: Promise<void>;
}

class Backfill {
  readonly db: AnyPgDatabase;
  readonly keyring: Keyring;
  readonly op: RetrofitOperation;
  readonly t: ResolvedTarget;
  readonly jobId: string;
  readonly worker: string;
  readonly batchSize: number;
  readonly chunkSize: number;
  readonly leaseMs: number;
  readonly rate: number | undefined;
  readonly reencrypt: boolean;
  readonly tenants: readonly string[] | undefined;
  readonly opts: BackfillOptions;
  readonly result: BackfillResult;
  /** Blind indexes of the columns rewritten (their source is one of `t.columns`). */
  readonly indexes: readonly EngineIndex[];
  readonly started = performance.now();
  #pass = 1;
  #total = 0;
  #globalDone = 0;
  #globalAt = 0;
  #globalLocalAt = 0;
  #rateWindow: { at: number; rows: number }[] = [];
  #lastEmitted = -1;
  /** Rows read by this worker (the rate limit counts reads, including the batch read ahead). */
  #rowsRead = 0;
  /**
   * Property names of a batch row's values (`v<i>` target, `s<i>` source, `i<j>` blind index), made
   * once: a name built at each access is a new string to hash at every lookup.
   */
  /** Field keys by data key entry, per column (see `#fieldKey`). */
  readonly #fieldKeys = new WeakMap<DekEntry, (FieldKey | undefined)[]>();
  readonly #vn: readonly string[];
  readonly #sn: readonly string[];
  readonly #in: readonly string[];

  constructor(
    db: AnyPgDatabase,
    keyring: Keyring,
    table: RetrofitTableConfig,
    op: RetrofitOperation,
    opts: BackfillOptions,
  ) {
    if (db === undefined || typeof (db as { execute?: unknown })?.execute !== 'function') {
      throw new ByokConfigError('backfill: `db` must be a Drizzle PostgreSQL database');
    }
    if (keyring === undefined || !isKeyring(keyring)) {
      throw new ByokConfigError('backfill: `keyring` must come from createKeyring(...)');
    }
    this.db = db;
    this.keyring = keyring;
    this.op = op;
    this.opts = opts;
    this.t = resolveTarget(table, op === 'encrypt' ? 'runBackfill' : 'rollbackBackfill');
    for (const c of this.t.columns) assertRetrofittable(c, this.t.qualified);
    this.indexes = tableBlindIndexes(this.t.config.table).flatMap(({ state }) => {
      const col = this.t.columns.findIndex((c) => c.target === state.source().name);
      return col < 0 ? [] : [{ col, state, owner: state.owner(this.t.tenant) }];
    });
    this.#vn = this.t.columns.map((_, i) => `v${i}`);
    this.#sn = this.t.columns.map((_, i) => `s${i}`);
    this.#in = this.indexes.map((_, j) => `i${j}`);
    this.batchSize = Math.floor(positive(opts.batchSize, DEFAULTS.batchSize, 'batchSize'));
    this.chunkSize = Math.floor(positive(opts.chunkSize, DEFAULTS.chunkSize, 'chunkSize'));
    this.leaseMs = Math.floor(positive(opts.leaseMs, DEFAULTS.leaseMs, 'leaseMs'));
    this.rate =
      opts.rowsPerSecond === undefined ? undefined : positive(opts.rowsPerSecond, 1, 'rowsPerSecond');
    this.reencrypt = opts.reencrypt ?? true;
    if (opts.tenants !== undefined) {
      if (
        !Array.isArray(opts.tenants) ||
        opts.tenants.length === 0 ||
        opts.tenants.some((x) => typeof x !== 'string')
      ) {
        throw new ByokConfigError('tenants must be a non-empty array of tenant ids');
      }
    }
    this.tenants = opts.tenants;
    this.jobId = backfillJobId(op, this.t, this.tenants);
    this.worker = opts.workerId ?? defaultWorkerId();
    this.result = {
      operation: op,
      job: this.jobId,
      pass: 1,
      table: this.t.qualified,
      columns: this.t.columns.map((c) => c.label),
      worker: this.worker,
      dryRun: opts.dryRun === true,
      rowsSeen: 0,
      chunks: 0,
      busyRetries: 0,
      tenantErrors: [],
      indexed: 0,
      indexesBuilt: [],
      jobDone: false,
      aborted: false,
      elapsedMs: 0,
      rowsPerSecond: 0,
      ...emptyCounts(),
    };
  }

  async run(): Promise<BackfillResult> {
    if (this.opts.dryRun) return this.#dryRun();
    await this.#ensureJob();
    const signal = this.opts.signal;
    const poll = Math.min(1000, Math.max(50, this.leaseMs / 2));
    /** The chunk finished last, its last batch still being written while the next one starts. */
    let tail: Tail | undefined;
    while (!signal?.aborted) {
      const claim = await this.#claim();
      if ((claim === 'done' || claim === 'wait') && tail !== undefined) {
        // The chunk still being written may be the last open one: settle it, then claim again.
        const t = tail;
        tail = undefined;
        if ((await this.#settleTail(t)) && (await this.#tryFinish())) {
          this.result.jobDone = true;
          break;
        }
        continue;
      }
      if (claim === 'done') {
        await this.#tryFinish();
        this.result.jobDone = true;
        break;
      }
      if (claim === 'wait') {
        if (this.opts.waitForOthers === false) break;
        await this.#emitThrottled();
        await sleep(poll, signal);
        continue;
      }
      try {
        const t = tail;
        tail = undefined;
        const out = await this.#processChunk(claim, t);
        if (out !== false) tail = out;
      } catch (e) {
        if (e instanceof LeaseLost) continue;
        await this.#release(claim).catch(() => undefined);
        throw e;
      }
    }
    if (tail !== undefined && (await this.#settleTail(tail)) && (await this.#tryFinish())) {
      this.result.jobDone = true;
    }
    if (signal?.aborted) this.result.aborted = true;
    if (this.result.jobDone && this.op === 'encrypt') await this.#markIndexesBuilt();
    this.#emit(true);
    return this.#finish();
  }

  /**
   * Once the job is done: marks built the active index key version of every tenant (of the run's
   * tenants) that has no row with a value and no index value left, so lookups for it are allowed.
   * A tenant with rows the run could not index (unreadable, invalid, skipped) stays not built.
   */
  async #markIndexesBuilt(): Promise<void> {
    const reg = registryFor(this.keyring);
    for (const ix of this.indexes) {
      const tenantFilter =
        this.tenants === undefined
          ? sql``
          : sql` AND k.tenant_id IN (${sql.join(
              this.tenants.map((x) => sql`${x}::text`),
              sql`, `,
            )})`;
      const src = ident(ix.state.source().name);
      const idx = ident(ix.state.name);
      const rows = await query<{ tenant_id: string }>(
        this.db,
        sql`UPDATE byok.blind_index_keys AS k SET built = true, updated_at = now()
             WHERE k.context = ${ix.state.context} AND k.state = 'active' AND NOT k.built${tenantFilter}
               AND NOT EXISTS (SELECT 1 FROM ${tableSql(this.t)} AS t
                                WHERE t.${ident(this.t.tenant)}::text = k.tenant_id
                                  AND t.${src} IS NOT NULL AND t.${idx} IS NULL)
           RETURNING k.tenant_id`,
      );
      for (const { tenant_id } of rows) {
        reg.drop(tenant_id, ix.state.context);
        this.result.indexesBuilt.push({ index: ix.state.label, tenantId: tenant_id });
      }
    }
  }

  #finish(): BackfillResult {
    const r = this.result;
    r.pass = this.#pass;
    r.elapsedMs = performance.now() - this.started;
    r.rowsPerSecond = r.elapsedMs > 0 ? (r.rowsSeen * 1000) / r.elapsedMs : 0;
    return r;
  }

  // -------------------------------------------------------------------------------------------
  // Job and chunks

  async #countRows(db: AnyPgDatabase = this.db): Promise<number> {
    const [r] = await query<{ n: unknown }>(
      db,
      sql`SELECT count(*)::float8 AS n FROM ${tableSql(this.t)} AS t WHERE ${rangeSql(this.t, sql.raw('t'), null, null, this.tenants)}`,
    );
    return Number(r?.n ?? 0);
  }

  async #ensureJob(): Promise<void> {
    const other = backfillJobId(this.op === 'encrypt' ? 'decrypt' : 'encrypt', this.t, this.tenants);
    const columns = JSON.stringify(
      this.t.columns.map((c) => ({ target: c.target, source: c.source ?? null })),
    );
    await asPgDb(this.db).transaction(async (tx) => {
      await tx.execute(
        sql`SELECT pg_advisory_xact_lock(hashtextextended(${`byok:retrofit:${this.t.qualified}`}, 0))`,
      );
      // The opposite operation on the same columns must not run at the same time.
      const [live] = await query<{ n: number }>(
        tx,
        sql`SELECT count(*)::int AS n FROM byok.retrofit_chunks c JOIN byok.retrofit_jobs j ON j.id = c.job_id
             WHERE j.id = ${other} AND j.state = 'running' AND c.state = 'running' AND c.lease_until >= now()`,
      );
      if ((live?.n ?? 0) > 0) {
        throw new RetrofitBusyError(
          `${this.op === 'encrypt' ? 'a rollback' : 'an encryption backfill'} of ${this.t.qualified} is running ` +
            `(job ${other}): stop it before starting ${this.op === 'encrypt' ? 'the backfill' : 'the rollback'}`,
        );
      }
      await tx.execute(
        sql`UPDATE byok.retrofit_jobs SET state = 'cancelled', updated_at = now() WHERE id = ${other} AND state = 'running'`,
      );
      const [job] = await query<{ state: string; pass: number }>(
        tx,
        sql`SELECT state, pass FROM byok.retrofit_jobs WHERE id = ${this.jobId} FOR UPDATE`,
      );
      if (job === undefined) {
        const total = await this.#countRows(tx);
        await tx.execute(sql`INSERT INTO byok.retrofit_jobs (id, operation, table_name, columns, chunk_size, total_rows)
          VALUES (${this.jobId}, ${this.op}, ${this.t.qualified}, ${columns}::text::jsonb, ${this.chunkSize}, ${total})`);
        this.#pass = 1;
        this.#total = total;
        return;
      }
      if (job.state === 'running' && !this.opts.restart) {
        const [j] = await query<{ pass: number; total: unknown }>(
          tx,
          sql`SELECT pass, total_rows::float8 AS total FROM byok.retrofit_jobs WHERE id = ${this.jobId}`,
        );
        this.#pass = Number(j?.pass ?? 1);
        this.#total = Number(j?.total ?? 0);
        return;
      }
      if (job.state === 'running') {
        const [busy] = await query<{ n: number }>(
          tx,
          sql`SELECT count(*)::int AS n FROM byok.retrofit_chunks
               WHERE job_id = ${this.jobId} AND state = 'running' AND lease_until >= now()`,
        );
        if ((busy?.n ?? 0) > 0) {
          throw new RetrofitBusyError(
            `job ${this.jobId} has live workers: stop them before restarting it (or wait for their leases to expire)`,
          );
        }
      }
      const total = await this.#countRows(tx);
      await tx.execute(sql`DELETE FROM byok.retrofit_chunks WHERE job_id = ${this.jobId}`);
      const [n] = await query<{ pass: number }>(
        tx,
        sql`UPDATE byok.retrofit_jobs SET state = 'running', pass = pass + 1, chunk_size = ${this.chunkSize},
              next_key = NULL, planned = false, total_rows = ${total}, columns = ${columns}::text::jsonb,
              started_at = now(), updated_at = now(), finished_at = NULL
             WHERE id = ${this.jobId} RETURNING pass`,
      );
      this.#pass = Number(n?.pass ?? 1);
      this.#total = total;
    });
  }

  /** Workers of this host whose process is gone: their chunks are taken over without waiting for the lease. */
  async #deadWorkers(): Promise<string[]> {
    const rows = await query<{ worker: string }>(
      this.db,
      sql`SELECT DISTINCT worker FROM byok.retrofit_chunks
           WHERE job_id = ${this.jobId} AND state = 'running' AND lease_until >= now() AND worker IS NOT NULL`,
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

  #leaseSql(): SQL {
    return sql`now() + ${this.leaseMs}::int * interval '1 millisecond'`;
  }

  async #claim(): Promise<Chunk | 'wait' | 'done'> {
    const dead = await this.#deadWorkers();
    return asPgDb(this.db).transaction(async (tx) => {
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
             WHERE job_id = ${this.jobId} AND state = 'running' AND (lease_until IS NULL OR lease_until < now()${deadSql})
             ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED`,
      );
      if (c !== undefined) {
        await tx.execute(sql`UPDATE byok.retrofit_chunks SET worker = ${this.worker}, lease_until = ${this.#leaseSql()},
          updated_at = now() WHERE job_id = ${this.jobId} AND seq = ${c.seq}`);
        return { seq: Number(c.seq), lo: c.lo, hi: c.hi, lastKey: c.last_key };
      }
      const [job] = await query<{
        next_key: string | null;
        planned: boolean;
        chunk_size: number;
        state: string;
      }>(
        tx,
        sql`SELECT next_key, planned, chunk_size, state FROM byok.retrofit_jobs WHERE id = ${this.jobId} FOR UPDATE`,
      );
      if (job === undefined || job.state !== 'running') {
        if (job?.state === 'cancelled') {
          throw new RetrofitBusyError(
            `job ${this.jobId} was cancelled by the opposite operation on the same columns`,
          );
        }
        return 'done';
      }
      if (job.planned) {
        const [open] = await query<{ n: number }>(
          tx,
          sql`SELECT count(*)::int AS n FROM byok.retrofit_chunks WHERE job_id = ${this.jobId} AND state <> 'done'`,
        );
        return (open?.n ?? 0) > 0 ? 'wait' : 'done';
      }
      const lo = job.next_key;
      const a = sql.raw('t');
      const [b] = await query<{ k: string }>(
        tx,
        sql`SELECT t.${ident(this.t.key)}::text AS k FROM ${tableSql(this.t)} AS t
             WHERE ${rangeSql(this.t, a, lo, null, this.tenants)}
             ORDER BY t.${ident(this.t.key)} OFFSET ${Number(job.chunk_size) - 1} LIMIT 1`,
      );
      const hi = b?.k ?? null;
      const [ins] = await query<{ seq: number }>(
        tx,
        sql`INSERT INTO byok.retrofit_chunks (job_id, seq, lo, hi, worker, lease_until)
             SELECT ${this.jobId}, coalesce(max(seq), 0) + 1, ${lo}::text, ${hi}::text, ${this.worker}, ${this.#leaseSql()}
               FROM byok.retrofit_chunks WHERE job_id = ${this.jobId}
             RETURNING seq`,
      );
      await tx.execute(sql`UPDATE byok.retrofit_jobs SET next_key = ${hi}::text, planned = ${hi === null},
        updated_at = now() WHERE id = ${this.jobId}`);
      return { seq: Number(ins!.seq), lo, hi, lastKey: null };
    });
  }

  /** Gives a chunk back at once (after an error or an abort): another run resumes it from its checkpoint. */
  async #release(chunk: Chunk): Promise<void> {
    await this.db.execute(sql`UPDATE byok.retrofit_chunks SET lease_until = now() - interval '1 second', updated_at = now()
      WHERE job_id = ${this.jobId} AND seq = ${chunk.seq} AND worker = ${this.worker} AND state = 'running'`);
  }

  async #tryFinish(): Promise<boolean> {
    const rows = await query(
      this.db,
      sql`UPDATE byok.retrofit_jobs SET state = 'done', finished_at = now(), updated_at = now()
           WHERE id = ${this.jobId} AND state = 'running' AND planned
             AND NOT EXISTS (SELECT 1 FROM byok.retrofit_chunks WHERE job_id = ${this.jobId} AND state <> 'done')
           RETURNING id`,
    );
    if (rows.length > 0) return true;
    const [j] = await query<{ state: string }>(
      this.db,
      sql`SELECT state FROM byok.retrofit_jobs WHERE id = ${this.jobId}`,
    );
    return j?.state === 'done';
  }

  // -------------------------------------------------------------------------------------------
  // Batches

  #selectFields(): SQL {
    const parts: SQL[] = [
      sql`t.${ident(this.t.key)}::text AS "k"`,
      sql`t.${ident(this.t.tenant)}::text AS "t"`,
      sql`t.xmin::text AS "x"`,
    ];
    this.t.columns.forEach((c, i) => {
      parts.push(sql`t.${ident(c.target)} AS ${sql.identifier(`v${i}`)}`);
      if (c.source !== undefined) {
        const col = sql`t.${ident(c.source)}`;
        const expr = c.sourceType?.startsWith('timestamp')
          ? sql`to_json(${col}) #>> '{}'`
          : sql`${col}::text`;
        parts.push(sql`${expr} AS ${sql.identifier(`s${i}`)}`);
      }
    });
    this.indexes.forEach((ix, j) => {
      parts.push(sql`t.${ident(ix.state.name)} AS ${sql.identifier(`i${j}`)}`);
    });
    return sql.join(parts, sql`, `);
  }

  #readBatch(
    lo: string | null,
    hi: string | null,
    limit: number,
    db: AnyPgDatabase = this.db,
  ): Promise<Row[]> {
    return query<Row>(
      db,
      sql`SELECT ${this.#selectFields()} FROM ${tableSql(this.t)} AS t
           WHERE ${rangeSql(this.t, sql.raw('t'), lo, hi, this.tenants)}
           ORDER BY t.${ident(this.t.key)} LIMIT ${limit}`,
    );
  }

  /**
   * Processes a chunk from its checkpoint to its end. Returns, once every batch but the last is
   * written, the chunk with its last batch's write in flight (`Tail`), or false when stopped.
   *
   * Batches are pipelined one deep: while batch N's statement runs on the database, batch N+1 is
   * read (on another connection) and its values are encrypted here, so the database and this
   * process work at the same time. Statements still commit in key order, one at a time: batch N+1 is
   * written only once batch N and its checkpoint are committed (or its busy rows retried), so a
   * checkpoint never passes a row that was not handled. The pipeline runs across chunks too: `tail`,
   * the previous chunk's last write, is awaited before this chunk's first batch is written.
   */
  async #processChunk(chunk: Chunk, tail?: Tail): Promise<Tail | false> {
    const signal = this.opts.signal;
    let next: Promise<Row[]> | undefined;
    let inflight: Promise<void> | undefined;
    let from = chunk.lastKey ?? chunk.lo;
    let previous = tail;
    const settlePrevious = async () => {
      if (previous === undefined) return;
      const t = previous;
      previous = undefined;
      await this.#settleTail(t);
    };
    try {
      for (;;) {
        if (signal?.aborted) break;
        await this.#rateLimit();
        const rows = await (next ?? this.#readBatch(from, chunk.hi, this.batchSize));
        next = undefined;
        this.#rowsRead += rows.length;
        const end = rows.length < this.batchSize;
        const last = rows.length > 0 ? rows[rows.length - 1]!.k : from;
        if (!end) {
          // Read the next batch (without locks) while this one is prepared and written.
          next = this.#readBatch(last, chunk.hi, this.batchSize);
          next.catch(() => undefined);
        }
        const prepared = await this.#prepare(rows);
        await settlePrevious();
        if (inflight !== undefined) {
          const done = inflight;
          inflight = undefined;
          await done;
        }
        if (signal?.aborted) break;
        inflight = this.#commitBatch(chunk, prepared, last, end);
        inflight.catch(() => undefined);
        from = last;
        // The last batch is still being written when the chunk is handed back: the next chunk is
        // claimed, read and encrypted meanwhile (its first batch is written once this one is).
        if (end) return { chunk, done: inflight };
        // Let other work of this process run between batches (with an in-process database such as
        // PGlite every await resolves without ever reaching the event loop).
        await new Promise((r) => setImmediate(r));
      }
    } catch (e) {
      if (inflight !== undefined) await inflight.catch(() => undefined);
      await settlePrevious().catch(() => undefined);
      throw e;
    }
    await settlePrevious();
    if (inflight !== undefined) await inflight;
    await this.#release(chunk);
    return false;
  }

  /**
   * Waits for the last batch of a finished chunk. Returns true when it was written (the chunk is
   * done), false when the chunk's lease was lost meanwhile; any other failure releases the chunk
   * and is thrown.
   */
  async #settleTail(t: Tail): Promise<boolean> {
    try {
      await t.done;
    } catch (e) {
      if (e instanceof LeaseLost) return false;
      await this.#release(t.chunk).catch(() => undefined);
      throw e;
    }
    this.result.chunks++;
    return true;
  }

  /** Writes a prepared batch (retrying its busy rows), then records it as seen. */
  async #commitBatch(chunk: Chunk, prepared: Prepared, last: string | null, end: boolean): Promise<void> {
    await this.#processBatch(chunk, prepared, last, end);
    chunk.lastKey = last;
    this.result.rowsSeen += prepared.rows.length;
    this.#rateWindow.push({ at: performance.now(), rows: this.result.rowsSeen });
    await this.#emitThrottled();
  }

  async #rateLimit(): Promise<void> {
    if (this.rate === undefined) return;
    const due = (this.#rowsRead / this.rate) * 1000;
    const elapsed = performance.now() - this.started;
    if (due > elapsed) await sleep(due - elapsed, this.opts.signal);
  }

  /**
   * Loads the keys a batch needs and computes its new values (no lock, no write).
   *
   * The rows are encrypted in slices with a turn of the event loop between them: the previous
   * batch's statement is in flight meanwhile, and a driver that answers a round trip of its own
   * before sending the values (postgres.js describes an unnamed statement first) only sends them
   * when this process reads its socket. Without the turns, the database would wait for the whole
   * batch to be encrypted before it starts writing the previous one.
   */
  async #prepare(rows: Row[]): Promise<Prepared> {
    const keys = await this.#loadKeys(rows);
    const plan: Omit<Prepared, 'rows' | 'keys'> = { writes: new Map(), needKey: [], settled: [] };
    for (let i = 0; i < rows.length; i += PLAN_SLICE) {
      if (i > 0) await new Promise((r) => setImmediate(r));
      this.#planInto(rows, i, Math.min(rows.length, i + PLAN_SLICE), keys, plan);
    }
    return { rows, keys, ...plan };
  }

  /** Classifies rows and computes their new values with the loaded keys. */
  #planRows(todo: readonly Row[], keys: BatchKeys): Omit<Prepared, 'rows' | 'keys'> {
    const plan: Omit<Prepared, 'rows' | 'keys'> = { writes: new Map(), needKey: [], settled: [] };
    this.#planInto(todo, 0, todo.length, keys, plan);
    return plan;
  }

  #planInto(
    todo: readonly Row[],
    from: number,
    to: number,
    keys: BatchKeys,
    { writes, needKey, settled }: Omit<Prepared, 'rows' | 'keys'>,
  ): void {
    for (let r = from; r < to; r++) {
      const row = todo[r]!;
      const actions = this.#plan(row, keys);
      if (actions.some((a) => a.kind === 'need-key')) {
        needKey.push(row);
        continue;
      }
      const w =
        actions.some((a) => a.kind === 'work') || (this.op === 'encrypt' && this.#missingIndex(row))
          ? this.#rewrite(row, actions, keys)
          : undefined;
      if (w === undefined || (w.cols.size === 0 && w.index.size === 0)) settled.push(actions);
      else writes.set(row.k, { row, writes: w.cols, index: w.index, actions });
    }
  }

  /**
   * One batch: the rows read were classified and their new values computed (`#prepare`); write them
   * in one statement that locks (`FOR UPDATE SKIP LOCKED`) and rewrites only the rows whose version
   * (`xmin`) is still the one that was read, and moves the checkpoint. A row the app changed or holds
   * meanwhile is not written: it is read again and retried (until `busyTimeoutMs`), so a value is only
   * ever replaced by the encryption of that very value. The checkpoint passes the batch only once
   * every row is handled.
   */
  async #processBatch(chunk: Chunk, prepared: Prepared, last: string | null, end: boolean): Promise<void> {
    let { keys, writes, needKey, settled } = prepared;
    let todo: readonly Row[] = prepared.rows;
    let first = true;
    let attempt = 0;
    const deadline = performance.now() + (this.opts.busyTimeoutMs ?? DEFAULTS.busyTimeoutMs);
    const advance = { last, rows: prepared.rows.length, end };
    for (;;) {
      if (first) {
        first = false;
        await this.opts.hooks?.beforeLock?.([...writes.keys()]);
      } else {
        ({ writes, needKey, settled } = this.#planRows(todo, keys));
      }
      for (const actions of settled) this.#count(actions);
      const out = await this.#write(chunk, writes, needKey.length === 0 ? advance : undefined);
      if (!out.owned) throw new LeaseLost();
      for (const k of out.updated) {
        const w = writes.get(k)!;
        this.#count(w.actions);
        this.result.indexed += w.index.size;
      }
      if (out.updated.length > 0) await this.opts.hooks?.afterCommit?.(out.updated);
      if (out.advanced) return;
      const done = new Set(out.updated);
      const failed = [...writes.values()].filter((w) => !done.has(w.row.k)).map((w) => w.row);
      if (failed.length === 0 && needKey.length === 0) break;
      // Read the rows again: changed ones are planned from their new value; deleted ones drop out.
      const again = await this.#readKeys([...failed, ...needKey].map((r) => r.k));
      const before = new Map([...failed, ...needKey].map((r) => [r.k, r.x]));
      const busy = again.filter((r) => before.get(r.k) === r.x).length;
      this.result.busyRetries += failed.length;
      if (needKey.length > 0) keys = await this.#loadKeys(again, keys);
      todo = again;
      if (todo.length === 0) break;
      if (busy > 0) {
        if (performance.now() > deadline) {
          throw new RetrofitBusyError(
            `${busy} row(s) of ${this.t.qualified} stayed locked by other transactions for more than ` +
              `${this.opts.busyTimeoutMs ?? DEFAULTS.busyTimeoutMs} ms; the checkpoint is kept: run again to resume`,
          );
        }
        await sleep(Math.min(1000, 10 * 2 ** attempt++), this.opts.signal);
        if (this.opts.signal?.aborted) {
          await this.#release(chunk);
          throw new LeaseLost();
        }
      }
    }
    const owned = await this.#checkpoint(this.db, chunk, 0, advance);
    if (!owned) throw new LeaseLost();
  }

  #readKeys(keys: readonly string[]): Promise<Row[]> {
    return query<Row>(
      this.db,
      sql`SELECT ${this.#selectFields()} FROM ${tableSql(this.t)} AS t WHERE ${keysIn(this.t, sql.raw('t'), keys)}`,
    );
  }

  /**
   * Loads, in two batched calls to the keyring (one `getActiveDek` batch for the tenants, one `getDek`
   * batch for older data key versions), the keys `rows` need.
   */
  async #loadKeys(rows: readonly Row[], prev?: BatchKeys): Promise<BatchKeys> {
    const keys: BatchKeys = prev ?? {
      active: new Map(),
      old: new Map(),
      failedTenants: new Set(),
      deadDeks: new Set(),
      index: new Map(),
    };
    const tenants = new Set<string>();
    /** Tenants that need their blind index keys (a value of an indexed column). */
    const indexTenants = new Set<string>();
    const envelopes: { tenant: string; dekId: string; needIndex: boolean }[] = [];
    for (const row of rows) {
      if (row.t === null) continue;
      this.t.columns.forEach((c, i) => {
        const s = this.#stored(row, i);
        if (s.kind === 'envelope')
          envelopes.push({ tenant: row.t!, dekId: s.dekId, needIndex: this.#missingIndex(row, i) });
        if (
          this.op === 'encrypt' &&
          (s.kind !== 'null' || (c.source !== undefined && row[this.#sn[i]!] != null))
        ) {
          tenants.add(row.t!);
          if (this.indexes.some((ix) => ix.col === i)) indexTenants.add(row.t!);
        }
      });
    }
    if (this.op === 'encrypt') {
      const wanted = [...tenants].filter((x) => !keys.failedTenants.has(x));
      for (const x of wanted) if (keys.active.get(x)?.evicted) keys.active.delete(x);
      const missing = wanted.filter((x) => !keys.active.has(x));
      const loaded = await Promise.allSettled(missing.map((x) => keysOf(this.keyring).getActiveDek(x)));
      loaded.forEach((r, i) => {
        const tenantId = missing[i]!;
        if (r.status === 'fulfilled') keys.active.set(tenantId, r.value);
        else this.#tenantError(tenantId, r.reason, keys);
      });
      // The dry run never creates an index key version: it computes no index value.
      if (!this.opts.dryRun) await this.#loadIndexKeys(indexTenants, keys);
    }
    const ids = new Set<string>();
    for (const e of envelopes) {
      const active = keys.active.get(e.tenant);
      if (
        this.op === 'encrypt' &&
        (active === undefined || active.id === e.dekId || (!this.reencrypt && !e.needIndex))
      )
        continue;
      const have = keys.old.get(e.dekId);
      if ((have === undefined || have.evicted) && !keys.deadDeks.has(e.dekId)) ids.add(e.dekId);
    }
    const list = [...ids];
    const loaded = await Promise.allSettled(list.map((id) => keysOf(this.keyring).getDek(id)));
    loaded.forEach((r, i) => {
      const id = list[i]!;
      if (r.status === 'fulfilled') keys.old.set(id, r.value);
      else if (isByokError(r.reason) && TRANSIENT.has(r.reason.code)) throw r.reason;
      else keys.deadDeks.add(id);
    });
    return keys;
  }

  /**
   * The active blind index key of each tenant for each index (the version the middleware writes),
   * creating the tenant's first version when it has none (not built if rows lack an index value).
   */
  async #loadIndexKeys(tenants: Set<string>, keys: BatchKeys): Promise<void> {
    if (this.indexes.length === 0) return;
    const reg = registryFor(this.keyring);
    const wanted: { tenant: string; j: number }[] = [];
    for (const tenant of tenants) {
      if (keys.failedTenants.has(tenant) || !keys.active.has(tenant)) continue;
      this.indexes.forEach((_, j) => {
        if (!keys.index.has(`${tenant}\u0000${j}`)) wanted.push({ tenant, j });
      });
    }
    const loaded = await Promise.allSettled(
      wanted.map(async ({ tenant, j }): Promise<IndexKey> => {
        const st = (await reg.load(tenant, this.indexes[j]!.owner, { create: true }))!;
        const v = st.active;
        return { version: v.version, params: v.params, key: await reg.key(st, v) };
      }),
    );
    loaded.forEach((r, n) => {
      const { tenant, j } = wanted[n]!;
      if (r.status === 'fulfilled') keys.index.set(`${tenant}\u0000${j}`, r.value);
      else this.#tenantError(tenant, r.reason, keys);
    });
  }

  /**
   * The field key of column `i` under a data key: kept per data key entry and column, so rows of
   * interleaved tenants each find theirs at once.
   */
  #fieldKey(entry: DekEntry, i: number): FieldKey {
    let a = this.#fieldKeys.get(entry);
    if (a === undefined) {
      a = new Array<FieldKey | undefined>(this.t.columns.length);
      this.#fieldKeys.set(entry, a);
    }
    let fk = a[i];
    if (fk === undefined || entry.evicted) {
      fk = keysOf(this.keyring).fieldKey(entry, this.t.columns[i]!.state.context);
      a[i] = fk;
    }
    return fk;
  }

  /** The classification of `row`'s value of column `i`, memoized on the row. */
  #stored(row: Row, i: number): Stored {
    let all = row[STORED];
    if (all === undefined) {
      all = new Array<Stored>(this.t.columns.length);
      row[STORED] = all;
    }
    let s = all[i];
    if (s === undefined) {
      s = classify(this.t.columns[i]!.state, row[this.#vn[i]!]);
      all[i] = s;
    }
    return s;
  }

  /** Whether a blind index of column `col` (of any column when omitted) has no value in `row`. */
  #missingIndex(row: Row, col?: number): boolean {
    return this.indexes.some((ix, j) => (col === undefined || ix.col === col) && row[this.#in[j]!] == null);
  }

  /** The value of index `j` for an app value of its column, or undefined without a key (dry run). */
  #indexValue(j: number, tenant: string, value: unknown, keys: BatchKeys): Buffer | undefined {
    const k = keys.index.get(`${tenant}\u0000${j}`);
    if (k === undefined) return undefined;
    return blindValue(k.key, k.version, indexInput(this.indexes[j]!.state, k.params, value), k.params.bytes);
  }

  #tenantError(tenantId: string, reason: unknown, keys: BatchKeys): void {
    const e = reason instanceof Error ? reason : new ByokError('unexpected failure');
    if (!this.opts.skipTenantErrors || (isByokError(e) && TRANSIENT.has(e.code)) || !isByokError(e)) throw e;
    keys.failedTenants.add(tenantId);
    if (!this.result.tenantErrors.some((x) => x.tenantId === tenantId)) {
      this.result.tenantErrors.push({ tenantId, code: e.code, message: e.message });
    }
  }

  /** What to do with each column of a row, given the loaded keys. */
  #plan(row: Row, keys: BatchKeys): Action[] {
    return this.t.columns.map((c, i) => {
      const stored = this.#stored(row, i);
      const source = c.source === undefined ? undefined : (row[this.#sn[i]!] as string | null);
      return this.op === 'encrypt'
        ? this.#planEncrypt(c, stored, source, row.t, keys)
        : this.#planDecrypt(c, stored, row.t, keys);
    });
  }

  #planEncrypt(
    c: ResolvedColumn,
    stored: Stored,
    source: string | null | undefined,
    tenant: string | null,
    keys: BatchKeys,
  ): Action {
    if (stored.kind === 'null') {
      if (c.kind === 'in-place' || source === null || source === undefined) return COUNT('nulls');
    } else if (stored.kind === 'malformed') return COUNT('unreadable');
    else if (stored.kind === 'plain' && c.kind === 'shadow') return COUNT('unreadable');
    if (tenant === null) return COUNT('noTenant');
    if (keys.failedTenants.has(tenant)) return COUNT('tenantSkipped');
    const active = keys.active.get(tenant);
    if (active === undefined || active.evicted) return NEED_KEY;
    if (stored.kind !== 'envelope') return WORK;
    if (stored.dekId === active.id) return COUNT('alreadyDone');
    if (!this.reencrypt) return COUNT('stale');
    if (keys.deadDeks.has(stored.dekId)) return COUNT('unreadable');
    const old = keys.old.get(stored.dekId);
    if (old === undefined || old.evicted) return NEED_KEY;
    if (old.tenantId !== tenant) return COUNT('unreadable');
    if (old.version > active.version) {
      // Written under a newer key than the one this process knows as active: ours is outdated.
      keysOf(this.keyring).cache.deactivate(tenant);
      keys.active.delete(tenant);
      return COUNT('alreadyDone');
    }
    return WORK;
  }

  #planDecrypt(c: ResolvedColumn, stored: Stored, tenant: string | null, keys: BatchKeys): Action {
    if (stored.kind === 'null') return c.kind === 'shadow' ? COUNT('alreadyDone') : COUNT('nulls');
    if (stored.kind === 'malformed') return COUNT('unreadable');
    if (stored.kind === 'plain') return c.kind === 'shadow' ? COUNT('unreadable') : COUNT('alreadyDone');
    if (tenant === null) return COUNT('noTenant');
    if (keys.deadDeks.has(stored.dekId)) return COUNT('unreadable');
    const old = keys.old.get(stored.dekId);
    if (old === undefined || old.evicted) return NEED_KEY;
    if (old.tenantId !== tenant) return COUNT('unreadable');
    return WORK;
  }

  /**
   * Computes the new values of a locked row's columns marked `work`. A value that turns out not to
   * be rewritable (bad plaintext, ciphertext that fails to decrypt) is counted and left as it is.
   *
   * `encrypt` also computes the blind index values of those columns: for a plaintext value it
   * encrypts, always (what the middleware writes with a value); for a ciphertext it re-encrypts or
   * leaves (already under the active data key, or `stale`), only where the index value is missing
   * (index keys do not depend on data key versions, so an existing value stays valid).
   */
  #rewrite(
    row: Row,
    actions: Action[],
    keys: BatchKeys,
  ): { cols: Map<number, ColumnWrite>; index: Map<number, Buffer> } {
    const out = new Map<number, ColumnWrite>();
    const index = new Map<number, Buffer>();
    const indexes = (i: number, value: () => unknown, onlyMissing: boolean) => {
      this.indexes.forEach((ix, j) => {
        if (ix.col !== i || (onlyMissing && row[this.#in[j]!] != null)) return;
        const v = this.#indexValue(j, row.t!, value(), keys);
        if (v !== undefined) index.set(j, v);
      });
    };
    actions.forEach((a, i) => {
      const c = this.t.columns[i]!;
      const stored = this.#stored(row, i);
      const kr = this.keyring;
      if (a.kind === 'count' && this.op === 'encrypt') {
        // A ciphertext left as it is: its missing index values, from the decrypted value.
        if (
          stored.kind !== 'envelope' ||
          (a.counter !== 'alreadyDone' && a.counter !== 'stale') ||
          !this.#missingIndex(row, i)
        )
          return;
        const entry = a.counter === 'alreadyDone' ? keys.active.get(row.t!) : keys.old.get(stored.dekId);
        if (entry === undefined || entry.evicted || entry.id !== stored.dekId || entry.tenantId !== row.t)
          return;
        let plaintext: Buffer;
        try {
          plaintext = open(this.#fieldKey(entry, i), stored.env);
        } catch {
          return; // left without an index value: the tenant's index is not marked built
        }
        indexes(i, () => c.state.codec.decode(plaintext), true);
        return;
      }
      if (a.kind !== 'work') return;
      if (this.op === 'encrypt') {
        const active = keys.active.get(row.t!)!;
        let plaintext: Uint8Array;
        if (stored.kind === 'envelope') {
          try {
            const old = keys.old.get(stored.dekId)!;
            plaintext = open(this.#fieldKey(old, i), stored.env);
          } catch {
            actions[i] = COUNT('unreadable');
            return;
          }
          actions[i] = COUNT('reencrypted');
          const pt = plaintext as Buffer;
          indexes(i, () => c.state.codec.decode(pt), true);
        } else {
          let value: unknown;
          try {
            value =
              c.kind === 'in-place'
                ? inPlacePlainValue(c.state, row[this.#vn[i]!])
                : sourceValue(c.state, row[this.#sn[i]!] as string);
            plaintext = c.state.codec.encode(value);
          } catch {
            actions[i] = COUNT('invalid');
            return;
          }
          actions[i] = COUNT('written');
          indexes(i, () => value, false);
        }
        out.set(i, { target: storedEnvelope(c.state, seal(this.#fieldKey(active, i), plaintext)) });
        return;
      }
      if (stored.kind !== 'envelope') return;
      let value: unknown;
      try {
        value = openFor(kr, c.state, keys.old.get(stored.dekId)!, stored.env);
      } catch {
        actions[i] = COUNT('unreadable');
        return;
      }
      actions[i] = COUNT('written');
      out.set(
        i,
        c.kind === 'in-place'
          ? { target: inPlaceStoredPlain(c.state, value) }
          : { source: sourceText(c.state, value) },
      );
    });
    return { cols: out, index };
  }

  #count(actions: readonly Action[]): void {
    for (const a of actions) {
      if (a.kind !== 'count') continue;
      if (a.counter === 'reencrypted') {
        this.result.reencrypted++;
        this.result.written++;
      } else this.result[a.counter]++;
    }
  }

  /** UPDATE of the rewritten rows and the chunk checkpoint, in one statement. Returns false when the lease was lost. */
  /**
   * Writes the planned rows whose version is unchanged and unlocked, and the checkpoint, in one
   * statement; nothing is written unless this worker still holds the chunk (its row is locked first). Returns the keys written; `advanced` when the checkpoint moved past the batch.
   */
  async #write(
    chunk: Chunk,
    writes: Map<string, PlannedWrite>,
    advance: { last: string | null; rows: number; end: boolean } | undefined,
  ): Promise<{ owned: boolean; updated: string[]; advanced: boolean }> {
    if (writes.size === 0) {
      const owned = await this.#checkpoint(this.db, chunk, 0, advance);
      return { owned, updated: [], advanced: owned && advance !== undefined };
    }
    const used = new Map<number, 'target' | 'source'>();
    for (const w of writes.values()) {
      for (const [i, cw] of w.writes) used.set(i, cw.source !== undefined ? 'source' : 'target');
    }
    const cols = [...used.keys()].sort((a, b) => a - b);
    const idxUsed = new Set<number>();
    for (const w of writes.values()) for (const j of w.index.keys()) idxUsed.add(j);
    const idxCols = [...idxUsed].sort((a, b) => a - b);
    // The new values travel column-wise, one text parameter per column (comma-separated when no
    // value holds a comma, as ciphertext and base64 never do; else a JSON array), zipped back into
    // rows by ROWS FROM: a handful of parameters whatever the batch size, no per-row object or key
    // names to build and parse.
    const list = [...writes.values()];
    const n = list.length;
    const keys = new Array<string>(n);
    const xmins = new Array<string>(n);
    const counts = new Array<string>(n);
    const colValues = cols.map(() => new Array<string | null>(n));
    const idxValues = idxCols.map(() => new Array<string | null>(n));
    for (let r = 0; r < n; r++) {
      const { row, writes: w, index } = list[r]!;
      keys[r] = row.k;
      xmins[r] = row.x;
      counts[r] = String(w.size);
      for (let c = 0; c < cols.length; c++) {
        const cw = w.get(cols[c]!);
        const v = cw === undefined ? undefined : (cw.source ?? cw.target);
        colValues[c]![r] = v === undefined ? null : typeof v === 'string' ? v : v.toString('base64');
      }
      for (let c = 0; c < idxCols.length; c++) {
        idxValues[c]![r] = index.get(idxCols[c]!)?.toString('base64') ?? null;
      }
    }
    // Ciphertext (`byok1:` + base64 or base64 of bytes), blind index values, xmins and counts are
    // never empty and never hold a comma; keys and what a rollback writes (plaintext) are checked.
    const arrays = [
      textElements(keys),
      textElements(xmins, true),
      textElements(counts, true),
      ...colValues.map((a) => textElements(a, this.op === 'encrypt')),
      ...idxValues.map((a) => textElements(a, true)),
    ];
    const names = [
      sql`k`,
      sql`x`,
      sql`n`,
      ...cols.map((i) => sql.identifier(`c${i}`)),
      ...idxCols.map((j) => sql.identifier(`i${j}`)),
    ];
    const sets: SQL[] = [];
    for (const i of cols) {
      const c = this.t.columns[i]!;
      const v = sql`v.${sql.identifier(`c${i}`)}`;
      if (used.get(i) === 'source') {
        sets.push(
          sql`${ident(c.source!)} = COALESCE(${v}::${sql.raw(c.sourceType!)}, t.${ident(c.source!)})`,
        );
        sets.push(sql`${ident(c.target)} = CASE WHEN ${v} IS NULL THEN t.${ident(c.target)} ELSE NULL END`);
        // Rollback of a shadow pair clears the target, hence its blind indexes (the index of NULL is NULL).
        for (const ix of this.indexes) {
          if (ix.col !== i) continue;
          const idx = ident(ix.state.name);
          sets.push(sql`${idx} = CASE WHEN ${v} IS NULL THEN t.${idx} ELSE NULL END`);
        }
      } else if (c.state.storage === 'text') {
        sets.push(sql`${ident(c.target)} = COALESCE(${v}, t.${ident(c.target)})`);
      } else {
        sets.push(sql`${ident(c.target)} = COALESCE(decode(${v}, 'base64'), t.${ident(c.target)})`);
      }
    }
    for (const j of idxCols) {
      const idx = ident(this.indexes[j]!.state.name);
      sets.push(sql`${idx} = COALESCE(decode(v.${sql.identifier(`i${j}`)}, 'base64'), t.${idx})`);
    }
    const key = ident(this.t.key);
    const keyType = sql.raw(this.t.keyType);
    const all = sql`(SELECT count(*) FROM u) = ${writes.size}::int`;
    const [r] = await query<{ updated: string | null; owned: number; advanced: boolean }>(
      this.db,
      sql`WITH v AS (
            SELECT * FROM ROWS FROM (${sql.join(arrays, sql`, `)}) AS v(${sql.join(names, sql`, `)})
          ), own AS (
            SELECT 1 FROM byok.retrofit_chunks
             WHERE job_id = ${this.jobId} AND seq = ${chunk.seq} AND worker = ${this.worker} AND state = 'running'
            FOR UPDATE
          ), l AS (
            SELECT t.ctid AS tid, v.* FROM ${tableSql(this.t)} AS t JOIN v ON t.${key} = v.k::${keyType} AND t.xmin = v.x::xid
             WHERE EXISTS (SELECT 1 FROM own)
            FOR UPDATE OF t SKIP LOCKED
          ), u AS (
            UPDATE ${tableSql(this.t)} AS t SET ${sql.join(sets, sql`, `)}
              FROM l AS v
             WHERE t.ctid = v.tid
            RETURNING v.k AS k, v.n::int AS n
          ), c AS (${this.#checkpointSql(chunk, sql`(SELECT coalesce(sum(n), 0) FROM u)::int`, advance, all)})
          SELECT CASE WHEN ${all} THEN NULL ELSE (SELECT coalesce(json_agg(k), '[]'::json) FROM u)::text END AS updated,
                 (SELECT count(*) FROM c)::int AS owned,
                 ${advance === undefined ? sql`false` : all} AS advanced`,
    );
    const owned = (r?.owned ?? 0) > 0;
    // Every planned row written: the statement leaves the list out (the keys are the planned ones).
    const updated = r?.updated == null ? (owned ? keys : []) : (JSON.parse(r.updated) as string[]);
    return { owned, updated, advanced: owned && r?.advanced === true };
  }

  #checkpointSql(
    chunk: Chunk,
    values: SQL | number,
    advance: { last: string | null; rows: number; end: boolean } | undefined,
    when?: SQL,
  ): SQL {
    const v = typeof values === 'number' ? sql`${values}::int` : values;
    const cond = (then: SQL, otherwise: SQL) =>
      when === undefined ? then : sql`CASE WHEN ${when} THEN ${then} ELSE ${otherwise} END`;
    const more =
      advance === undefined
        ? sql``
        : sql`, last_key = ${cond(sql`${advance.last}::text`, sql`last_key`)},
              rows_seen = rows_seen + ${cond(sql`${advance.rows}::int`, sql`0`)},
              state = ${cond(sql`${advance.end ? 'done' : 'running'}::text`, sql`state`)}`;
    return sql`UPDATE byok.retrofit_chunks SET values_written = values_written + ${v},
                 lease_until = ${this.#leaseSql()}, updated_at = now()${more}
               WHERE job_id = ${this.jobId} AND seq = ${chunk.seq} AND worker = ${this.worker} AND state = 'running'
               RETURNING 1`;
  }

  async #checkpoint(
    db: AnyPgDatabase,
    chunk: Chunk,
    values: number,
    advance: { last: string | null; rows: number; end: boolean } | undefined,
  ): Promise<boolean> {
    const rows = await query(db, this.#checkpointSql(chunk, values, advance));
    return rows.length > 0;
  }

  // -------------------------------------------------------------------------------------------
  // Progress

  async #emitThrottled(): Promise<void> {
    if (this.opts.onProgress === undefined) return;
    const now = performance.now();
    if (now - this.#globalAt > 1000) {
      const [r] = await query<{ done: unknown }>(
        this.db,
        sql`SELECT coalesce(sum(rows_seen), 0)::float8 AS done FROM byok.retrofit_chunks WHERE job_id = ${this.jobId}`,
      );
      this.#globalDone = Number(r?.done ?? 0);
      this.#globalAt = now;
      this.#globalLocalAt = this.result.rowsSeen;
    }
    this.#emit(false);
  }

  #emit(final: boolean): void {
    const cb = this.opts.onProgress;
    if (cb === undefined) return;
    const now = performance.now();
    const w = this.#rateWindow;
    while (w.length > 2 && now - w[0]!.at > 5000) w.shift();
    const first = w[0];
    const lastW = w[w.length - 1];
    const rate =
      first !== undefined && lastW !== undefined && lastW.at > first.at
        ? ((lastW.rows - first.rows) * 1000) / (lastW.at - first.at)
        : first !== undefined
          ? (first.rows * 1000) / Math.max(1, first.at - this.started)
          : 0;
    const done =
      final && this.result.jobDone
        ? Math.max(this.#total, this.#globalDone)
        : this.#globalDone + (this.result.rowsSeen - this.#globalLocalAt);
    const total = Math.max(this.#total, done);
    if (done === this.#lastEmitted) return;
    this.#lastEmitted = done;
    try {
      cb({
        operation: this.op,
        job: this.jobId,
        table: this.t.qualified,
        rowsDone: done,
        rowsTotal: total,
        valuesWritten: this.result.written,
        rowsPerSecond: rate,
        etaSeconds: rate > 0 ? Math.max(0, (total - done) / rate) : null,
        elapsedMs: now - this.started,
      });
    } catch {
      // a progress listener must not stop the backfill
    }
  }

  // -------------------------------------------------------------------------------------------
  // Dry run: the same classification, no writes

  async #dryRun(): Promise<BackfillResult> {
    this.#total = await this.#countRows();
    let from: string | null = null;
    for (;;) {
      if (this.opts.signal?.aborted) {
        this.result.aborted = true;
        break;
      }
      const rows = await this.#readBatch(from, null, this.batchSize);
      const keys = await this.#loadKeysForDryRun(rows);
      for (const row of rows) {
        const actions = this.#plan(row, keys);
        this.#rewrite(row, actions, keys);
        this.#count(actions.map((a) => (a.kind === 'need-key' ? COUNT('unreadable') : a)));
      }
      this.result.rowsSeen += rows.length;
      this.#globalDone = this.result.rowsSeen;
      this.#globalLocalAt = this.result.rowsSeen;
      this.#rateWindow.push({ at: performance.now(), rows: this.result.rowsSeen });
      this.#emit(false);
      if (rows.length < this.batchSize) break;
      from = rows[rows.length - 1]!.k;
    }
    this.result.jobDone = false;
    return this.#finish();
  }

  /** Dry run: never creates a data key; a tenant without one counts its plaintext as to be written. */
  async #loadKeysForDryRun(rows: readonly Row[]): Promise<BatchKeys> {
    if (this.op === 'decrypt') return this.#loadKeys(rows);
    const tenants = [...new Set(rows.map((r) => r.t).filter((x): x is string => x !== null))];
    const active = await activeDeks(this.db, this.keyring, tenants);
    const keys: BatchKeys = {
      active: new Map(),
      old: new Map(),
      failedTenants: new Set(),
      deadDeks: new Set(),
      index: new Map(),
    };
    for (const tenant of tenants) {
      const id = active.get(tenant);
      keys.active.set(
        tenant,
        id === undefined ? placeholderEntry(this.keyring, tenant) : await keysOf(this.keyring).getDek(id),
      );
    }
    return this.#loadKeys(rows, keys);
  }
}

/** Active data key ids of tenants, read from the key store (never creates one). */
export async function activeDeks(
  db: AnyPgDatabase,
  _keyring: Keyring,
  tenants: readonly string[],
): Promise<Map<string, string>> {
  if (tenants.length === 0) return new Map();
  const rows = await query<{ tenant_id: string; id: string }>(
    db,
    sql`SELECT tenant_id, id::text AS id FROM byok.deks WHERE state = 'active' AND tenant_id IN (${sql.join(
      tenants.map((x) => sql`${x}::text`),
      sql`, `,
    )})`,
  );
  return new Map(rows.map((r) => [r.tenant_id, r.id]));
}

/** A stand-in active key for a tenant that has none yet (dry run): encrypts with a throwaway key. */
function placeholderEntry(keyring: Keyring, tenantId: string): DekEntry {
  return keysOf(keyring).cache.uncached(
    '00000000-0000-0000-0000-000000000000',
    Buffer.alloc(16),
    tenantId,
    0,
    randomBytes(32),
  );
}
