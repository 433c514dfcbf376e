/**
 * Progress of a run for `onProgress`: rows done by every worker of the job (read from the chunks at
 * most once a second, plus this worker's rows since), this worker's recent rate, and the ETA.
 */
import { jobRowsDone } from './planner.ts';
import type { Run } from './run.ts';

export class Progress {
  readonly #run: Run;
  #globalDone = 0;
  #globalAt = 0;
  #globalLocalAt = 0;
  #rateWindow: { at: number; rows: number }[] = [];
  #lastEmitted = -1;

  constructor(run: Run) {
    this.#run = run;
  }

  /** Records the rows this worker has seen so far (the rate window). */
  record(): void {
    this.#rateWindow.push({ at: performance.now(), rows: this.#run.result.rowsSeen });
  }

  /** Dry run: this worker alone is the job. */
  local(): void {
    this.#globalDone = this.#run.result.rowsSeen;
    this.#globalLocalAt = this.#run.result.rowsSeen;
  }

  /** Emits, reading every worker's rows from the chunks when the last read is over a second old. */
  async emitThrottled(): Promise<void> {
    const run = this.#run;
    if (run.opts.onProgress === undefined) return;
    const now = performance.now();
    if (now - this.#globalAt > 1000) {
      this.#globalDone = await jobRowsDone(run);
      this.#globalAt = now;
      this.#globalLocalAt = run.result.rowsSeen;
    }
    this.emit(false);
  }

  emit(final: boolean): void {
    const run = this.#run;
    const cb = run.opts.onProgress;
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
          ? (first.rows * 1000) / Math.max(1, first.at - run.started)
          : 0;
    const done =
      final && run.result.jobDone
        ? Math.max(run.total, this.#globalDone)
        : this.#globalDone + (run.result.rowsSeen - this.#globalLocalAt);
    const total = Math.max(run.total, done);
    if (done === this.#lastEmitted) return;
    this.#lastEmitted = done;
    try {
      cb({
        operation: run.op,
        job: run.jobId,
        table: run.t.qualified,
        rowsDone: done,
        rowsTotal: total,
        valuesWritten: run.result.written,
        rowsPerSecond: rate,
        etaSeconds: rate > 0 ? Math.max(0, (total - done) / rate) : null,
        elapsedMs: now - run.started,
      });
    } catch {
      // a progress listener must not stop the backfill
    }
  }
}
