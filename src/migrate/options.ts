/** The public options and results of a backfill run (`runBackfill`, `rollbackBackfill`). */
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

/** Counts of nothing yet. */
export function emptyCounts(): ValueCounts {
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
