/**
 * One backfill run: its validated configuration, the result it fills, and the shapes the planner,
 * the worker, the rewriter and the writer pass to each other.
 */
import { createHash, randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { type SQL, sql } from 'drizzle-orm';
import type { BlindKey, BlindParams } from '../crypto/blind-hmac.ts';
import { type BlindIndexState, tableBlindIndexes } from '../blind/index.ts';
import type { IndexKeyOwner } from '../blind/index.ts';
import { ByokConfigError, KmsThrottledError, KmsUnavailableError } from '../errors.ts';
import type { DekEntry } from '../keys/cache.ts';
import { type AnyPgDatabase, isKeyring, type Keyring } from '../keys/keyring.ts';
import {
  type BackfillOptions,
  type BackfillResult,
  emptyCounts,
  type RetrofitOperation,
  type ValueCounts,
} from './options.ts';
import { type ResolvedTarget, type RetrofitTableConfig, resolveTarget } from './target.ts';
import { assertRetrofittable, classify, type Stored } from './values.ts';

export const DEFAULTS = {
  batchSize: 1000,
  chunkSize: 20_000,
  leaseMs: 30_000,
  busyTimeoutMs: 60_000,
} as const;

/** Error codes of failures worth retrying later (the run stops; the checkpoint stays). */
export const TRANSIENT = new Set([KmsUnavailableError.code, KmsThrottledError.code]);

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

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
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

/** A row as read: key and tenant as text, raw target values `v<i>`, source text `s<i>`, blind index values `i<j>`. */
export type Row = Record<string, unknown> & { k: string; t: string | null; x: string; [STORED]?: Stored[] };

/** Per row, the classification of each target value (computed once, used by every step). */
export const STORED: unique symbol = Symbol('stored');

export interface Chunk {
  readonly seq: number;
  readonly lo: string | null;
  readonly hi: string | null;
  lastKey: string | null;
}

/** How a write moves the chunk's checkpoint: past `last`, `rows` more rows seen, done at the `end`. */
export interface Advance {
  readonly last: string | null;
  readonly rows: number;
  readonly end: boolean;
}

/** Keys loaded for a batch. */
export interface BatchKeys {
  readonly active: Map<string, DekEntry>;
  readonly old: Map<string, DekEntry>;
  /** Tenants skipped (skipTenantErrors). */
  readonly failedTenants: Set<string>;
  /** DEK ids that could not be loaded for good (destroyed, unknown). */
  readonly deadDeks: Set<string>;
  /** Active blind index key of each tenant, per index (`tenant\0j`). */
  readonly index: Map<string, IndexKey>;
}

export function emptyKeys(): BatchKeys {
  return {
    active: new Map(),
    old: new Map(),
    failedTenants: new Set(),
    deadDeks: new Set(),
    index: new Map(),
  };
}

/** A tenant's active key version of one blind index. */
export interface IndexKey {
  readonly version: number;
  readonly params: BlindParams;
  readonly key: BlindKey;
}

/** A blind index of one of the columns the engine rewrites. */
export interface EngineIndex {
  /** Index of the encrypted column in `ResolvedTarget.columns`. */
  readonly col: number;
  readonly state: BlindIndexState;
  readonly owner: IndexKeyOwner;
}

/** One value's fate. */
export type Action =
  | { readonly kind: 'count'; readonly counter: keyof ValueCounts }
  | { readonly kind: 'work' }
  /** A key is missing: reload keys and retry the row. */
  | { readonly kind: 'need-key' };

const COUNTS = new Map<keyof ValueCounts, Action>();
/** The (shared, immutable) action counting a value under `counter`. */
export const COUNT = (counter: keyof ValueCounts): Action => {
  let a = COUNTS.get(counter);
  if (a === undefined) {
    a = { kind: 'count', counter };
    COUNTS.set(counter, a);
  }
  return a;
};
export const WORK: Action = { kind: 'work' };
export const NEED_KEY: Action = { kind: 'need-key' };

/** A row to rewrite: the row as read, its new column values, and the counts to record once written. */
export interface PlannedWrite {
  readonly row: Row;
  readonly writes: Map<number, ColumnWrite>;
  /** New blind index values, by index number (`EngineIndex` position). */
  readonly index: ReadonlyMap<number, Buffer>;
  readonly actions: Action[];
}

/** A computed rewrite of one column of one row. */
export interface ColumnWrite {
  /** New raw value of the target column (ciphertext, or in-place plaintext for decrypt). */
  readonly target?: string | Buffer;
  /** New text form of the shadow source column (decrypt); the target is then cleared. */
  readonly source?: string;
}

/** The classification of a batch's rows: what to write, what to retry, what to count. */
export interface Plan {
  /** Rows to rewrite (each row of a batch once). */
  readonly writes: PlannedWrite[];
  /** Rows whose keys must be reloaded before they can be planned. */
  readonly needKey: Row[];
  /** Actions of rows that need no write, counted when the batch is written. */
  readonly settled: Action[][];
}

/** A batch read, its keys loaded and its new values computed, not yet written. */
export interface Prepared extends Plan {
  readonly rows: Row[];
  readonly keys: BatchKeys;
}

/** Thrown when another worker took the chunk over (its lease expired): the chunk is left to it. */
export class LeaseLost extends Error {}

/** The configuration of one run, validated, and the state its roles share. */
export class Run {
  readonly db: AnyPgDatabase;
  readonly keyring: Keyring;
  readonly op: RetrofitOperation;
  readonly t: ResolvedTarget;
  readonly jobId: string;
  readonly worker: string;
  readonly batchSize: number;
  readonly chunkSize: number;
  readonly leaseMs: number;
  readonly busyTimeoutMs: number;
  readonly rate: number | undefined;
  readonly reencrypt: boolean;
  readonly tenants: readonly string[] | undefined;
  readonly opts: BackfillOptions;
  readonly result: BackfillResult;
  /** Blind indexes of the columns rewritten (their source is one of `t.columns`). */
  readonly indexes: readonly EngineIndex[];
  readonly started = performance.now();
  /** The job's pass and its row count when the pass started (set by the planner). */
  pass = 1;
  total = 0;
  /**
   * Property names of a batch row's values (`v<i>` target, `s<i>` source, `i<j>` blind index), made
   * once: a name built at each access is a new string to hash at every lookup.
   */
  readonly vn: readonly string[];
  readonly sn: readonly string[];
  readonly in: readonly string[];

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
    this.vn = this.t.columns.map((_, i) => `v${i}`);
    this.sn = this.t.columns.map((_, i) => `s${i}`);
    this.in = this.indexes.map((_, j) => `i${j}`);
    this.batchSize = Math.floor(positive(opts.batchSize, DEFAULTS.batchSize, 'batchSize'));
    this.chunkSize = Math.floor(positive(opts.chunkSize, DEFAULTS.chunkSize, 'chunkSize'));
    this.leaseMs = Math.floor(positive(opts.leaseMs, DEFAULTS.leaseMs, 'leaseMs'));
    this.busyTimeoutMs = opts.busyTimeoutMs ?? DEFAULTS.busyTimeoutMs;
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

  /** `now()` plus the lease. */
  leaseSql(): SQL {
    return sql`now() + ${this.leaseMs}::int * interval '1 millisecond'`;
  }

  /** The classification of `row`'s value of column `i`, memoized on the row. */
  stored(row: Row, i: number): Stored {
    let all = row[STORED];
    if (all === undefined) {
      all = new Array<Stored>(this.t.columns.length);
      row[STORED] = all;
    }
    let s = all[i];
    if (s === undefined) {
      s = classify(this.t.columns[i]!.state, row[this.vn[i]!]);
      all[i] = s;
    }
    return s;
  }

  /** Whether a blind index of column `col` (of any column when omitted) has no value in `row`. */
  missingIndex(row: Row, col?: number): boolean {
    return this.indexes.some((ix, j) => (col === undefined || ix.col === col) && row[this.in[j]!] == null);
  }

  /** Counts the actions of a row written (or needing no write). */
  count(actions: readonly Action[]): void {
    for (const a of actions) {
      if (a.kind !== 'count') continue;
      if (a.counter === 'reencrypted') {
        this.result.reencrypted++;
        this.result.written++;
      } else this.result[a.counter]++;
    }
  }
}
