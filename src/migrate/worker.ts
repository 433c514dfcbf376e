/**
 * The worker: claims chunks and walks each from its checkpoint to its end, one batch at a time (read,
 * keys, new values, guarded write with the checkpoint), retrying rows the app changed or holds,
 * under the rate limit, pipelined one batch deep and across chunks; and the dry run.
 */
import type { BackfillResult } from './options.ts';
import { loadKeys, loadKeysForDryRun } from './batch-keys.ts';
import {
  claim as claimChunk,
  countRows,
  ensureJob,
  markIndexesBuilt,
  release,
  tryFinish,
} from './planner.ts';
import { Progress } from './progress.ts';
import { Rewriter } from './rewriter.ts';
import { type Chunk, COUNT, LeaseLost, type Prepared, type Row, type Run, sleep } from './run.ts';
import { RetrofitBusyError } from '../errors.ts';
import { Writer } from './writer.ts';

/** A finished chunk whose last batch is still being written. */
interface Tail {
  readonly chunk: Chunk;
  readonly done: Promise<void>;
}

export class Worker {
  readonly run: Run;
  readonly #writer: Writer;
  readonly #rewriter: Rewriter;
  readonly #progress: Progress;
  /** Rows read by this worker (the rate limit counts reads, including the batch read ahead). */
  #rowsRead = 0;

  constructor(run: Run) {
    this.run = run;
    this.#writer = new Writer(run);
    this.#rewriter = new Rewriter(run);
    this.#progress = new Progress(run);
  }

  /** Runs the backfill (or the dry run) to the end of the job, an abort, or an error. */
  async backfill(): Promise<BackfillResult> {
    if (this.run.opts.dryRun) return this.#dryRun();
    await ensureJob(this.run);
    const signal = this.run.opts.signal;
    const poll = Math.min(1000, Math.max(50, this.run.leaseMs / 2));
    /** The chunk finished last, its last batch still being written while the next one starts. */
    let tail: Tail | undefined;
    while (!signal?.aborted) {
      const claim = await claimChunk(this.run);
      if ((claim === 'done' || claim === 'wait') && tail !== undefined) {
        // The chunk still being written may be the last open one: settle it, then claim again.
        const t = tail;
        tail = undefined;
        if ((await this.#settleTail(t)) && (await tryFinish(this.run))) {
          this.run.result.jobDone = true;
          break;
        }
        continue;
      }
      if (claim === 'done') {
        await tryFinish(this.run);
        this.run.result.jobDone = true;
        break;
      }
      if (claim === 'wait') {
        if (this.run.opts.waitForOthers === false) break;
        await this.#progress.emitThrottled();
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
        await release(this.run, claim).catch(() => undefined);
        throw e;
      }
    }
    if (tail !== undefined && (await this.#settleTail(tail)) && (await tryFinish(this.run))) {
      this.run.result.jobDone = true;
    }
    if (signal?.aborted) this.run.result.aborted = true;
    if (this.run.result.jobDone && this.run.op === 'encrypt') await markIndexesBuilt(this.run);
    this.#progress.emit(true);
    return this.#finish();
  }

  #finish(): BackfillResult {
    const r = this.run.result;
    r.pass = this.run.pass;
    r.elapsedMs = performance.now() - this.run.started;
    r.rowsPerSecond = r.elapsedMs > 0 ? (r.rowsSeen * 1000) / r.elapsedMs : 0;
    return r;
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
    const signal = this.run.opts.signal;
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
        const rows = await (next ?? this.#writer.readBatch(from, chunk.hi, this.run.batchSize));
        next = undefined;
        this.#rowsRead += rows.length;
        const end = rows.length < this.run.batchSize;
        const last = rows.length > 0 ? rows[rows.length - 1]!.k : from;
        if (!end) {
          // Read the next batch (without locks) while this one is prepared and written.
          next = this.#writer.readBatch(last, chunk.hi, this.run.batchSize);
          next.catch(() => undefined);
        }
        const prepared = await this.#rewriter.prepare(rows);
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
    await release(this.run, chunk);
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
      await release(this.run, t.chunk).catch(() => undefined);
      throw e;
    }
    this.run.result.chunks++;
    return true;
  }

  /** Writes a prepared batch (retrying its busy rows), then records it as seen. */
  async #commitBatch(chunk: Chunk, prepared: Prepared, last: string | null, end: boolean): Promise<void> {
    await this.#processBatch(chunk, prepared, last, end);
    chunk.lastKey = last;
    this.run.result.rowsSeen += prepared.rows.length;
    this.#progress.record();
    await this.#progress.emitThrottled();
  }

  async #rateLimit(): Promise<void> {
    if (this.run.rate === undefined) return;
    const due = (this.#rowsRead / this.run.rate) * 1000;
    const elapsed = performance.now() - this.run.started;
    if (due > elapsed) await sleep(due - elapsed, this.run.opts.signal);
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
    const deadline = performance.now() + this.run.busyTimeoutMs;
    const advance = { last, rows: prepared.rows.length, end };
    for (;;) {
      if (first) {
        first = false;
        await this.run.opts.hooks?.beforeLock?.(writes.map((w) => w.row.k));
      } else {
        ({ writes, needKey, settled } = this.#rewriter.planRows(todo, keys));
      }
      for (const actions of settled) this.run.count(actions);
      const out = await this.#writer.write(chunk, writes, needKey.length === 0 ? advance : undefined);
      if (!out.owned) throw new LeaseLost();
      // Every planned row written (the common case), or the ones the statement names.
      const done = out.all ? undefined : new Set(out.updated);
      const written = done === undefined ? writes : writes.filter((w) => done.has(w.row.k));
      for (const w of written) {
        this.run.count(w.actions);
        this.run.result.indexed += w.index.size;
      }
      if (out.updated.length > 0) await this.run.opts.hooks?.afterCommit?.(out.updated);
      if (out.advanced) return;
      const failed = done === undefined ? [] : writes.filter((w) => !done.has(w.row.k)).map((w) => w.row);
      if (failed.length === 0 && needKey.length === 0) break;
      // Read the rows again: changed ones are planned from their new value; deleted ones drop out.
      const again = await this.#writer.readKeys([...failed, ...needKey].map((r) => r.k));
      const before = new Map([...failed, ...needKey].map((r) => [r.k, r.x]));
      const busy = again.filter((r) => before.get(r.k) === r.x).length;
      this.run.result.busyRetries += failed.length;
      if (needKey.length > 0) keys = await loadKeys(this.run, again, keys);
      todo = again;
      if (todo.length === 0) break;
      if (busy > 0) {
        if (performance.now() > deadline) {
          throw new RetrofitBusyError(
            `${busy} row(s) of ${this.run.t.qualified} stayed locked by other transactions for more than ` +
              `${this.run.busyTimeoutMs} ms; the checkpoint is kept: run again to resume`,
          );
        }
        await sleep(Math.min(1000, 10 * 2 ** attempt++), this.run.opts.signal);
        if (this.run.opts.signal?.aborted) {
          await release(this.run, chunk);
          throw new LeaseLost();
        }
      }
    }
    const owned = await this.#writer.checkpoint(chunk, 0, advance);
    if (!owned) throw new LeaseLost();
  }

  // -------------------------------------------------------------------------------------------
  // Dry run: the same classification, no writes

  async #dryRun(): Promise<BackfillResult> {
    this.run.total = await countRows(this.run);
    let from: string | null = null;
    for (;;) {
      if (this.run.opts.signal?.aborted) {
        this.run.result.aborted = true;
        break;
      }
      const rows = await this.#writer.readBatch(from, null, this.run.batchSize);
      const keys = await loadKeysForDryRun(this.run, rows);
      for (const row of rows) {
        const actions = this.#rewriter.plan(row, keys);
        this.#rewriter.rewrite(row, actions, keys);
        this.run.count(actions.map((a) => (a.kind === 'need-key' ? COUNT('unreadable') : a)));
      }
      this.run.result.rowsSeen += rows.length;
      this.#progress.local();
      this.#progress.record();
      this.#progress.emit(false);
      if (rows.length < this.run.batchSize) break;
      from = rows[rows.length - 1]!.k;
    }
    this.run.result.jobDone = false;
    return this.#finish();
  }
}
