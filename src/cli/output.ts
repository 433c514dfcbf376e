/** Terminal output of the CLI: numbers, durations, the progress bar, JSON. No colors, no dependencies. */

export interface Io {
  readonly stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  readonly stderr: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
}

export const fmtInt = (n: number): string => Math.round(n).toLocaleString('en-US');

export function fmtDuration(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds)) return '--:--';
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  const mm = h > 0 ? String(m).padStart(2, '0') : String(m);
  return `${h > 0 ? `${h}:` : ''}${mm}:${String(r).padStart(2, '0')}`;
}

export function fmtMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** JSON with Dates as ISO strings and bigints as strings. */
export function toJson(value: unknown): string {
  return JSON.stringify(
    value,
    (_k, v) => (typeof v === 'bigint' ? v.toString() : v instanceof Date ? v.toISOString() : v),
    2,
  );
}

export interface ProgressState {
  readonly label: string;
  readonly done: number;
  readonly total: number;
  readonly rate: number;
  readonly eta: number | null;
}

/** One line: `label [#######-----]  52.3%  52,300/100,000 rows  18,230 rows/s  ETA 0:03`, at most `width - 1` long. */
export function progressLine(p: ProgressState, width: number): string {
  const pct = p.total > 0 ? Math.min(1, p.done / p.total) : 1;
  const tail = `${(pct * 100).toFixed(1).padStart(5)}%  ${fmtInt(p.done)}/${fmtInt(p.total)} rows  ${fmtInt(p.rate)} rows/s  ETA ${fmtDuration(p.eta)}`;
  const room = width - 1 - tail.length - 4;
  const barWidth = Math.max(10, Math.min(40, room - p.label.length));
  let label = p.label;
  if (label.length > room - barWidth) {
    const keep = Math.max(0, room - barWidth - 1);
    label = keep === 0 ? '' : `${label.slice(0, keep)}…`;
  }
  const filled = Math.round(pct * barWidth);
  return `${label}${label === '' ? '' : ' '}[${'#'.repeat(filled)}${'-'.repeat(barWidth - filled)}] ${tail}`;
}

/**
 * Progress reporting: a live bar redrawn in place on a terminal (stderr), or, when stderr is not a
 * terminal, a plain line (or a JSON line with `--json`) every `everyMs`.
 */
export class Progress {
  readonly io: Io;
  readonly json: boolean;
  readonly everyMs: number;
  readonly enabled: boolean;
  readonly tty: boolean;
  #last = 0;
  #drawn = false;
  #pending: ProgressState | undefined;

  constructor(io: Io, options: { json: boolean; everyMs: number; enabled: boolean }) {
    this.io = io;
    this.json = options.json;
    this.everyMs = options.everyMs;
    this.enabled = options.enabled;
    this.tty = io.stderr.isTTY === true;
  }

  update(p: ProgressState): void {
    if (!this.enabled) return;
    const now = Date.now();
    const interval = this.tty ? 100 : this.everyMs;
    this.#pending = p;
    if (now - this.#last < interval) return;
    this.#last = now;
    this.#draw(p);
  }

  #draw(p: ProgressState): void {
    this.#pending = undefined;
    if (this.tty) {
      const width = this.io.stderr.columns || 100;
      this.io.stderr.write(`\r${progressLine(p, width)}\u001b[K`);
      this.#drawn = true;
    } else if (this.json) {
      this.io.stderr.write(
        `${JSON.stringify({ event: 'progress', label: p.label, rowsDone: p.done, rowsTotal: p.total, rowsPerSecond: Math.round(p.rate), etaSeconds: p.eta === null ? null : Math.round(p.eta) })}\n`,
      );
    } else {
      this.io.stderr.write(`progress: ${progressLine(p, 120)}\n`);
    }
  }

  /** Draws the last state (so the bar ends at its final value) and ends the line. */
  end(): void {
    if (!this.enabled) return;
    if (this.tty && this.#pending !== undefined) this.#draw(this.#pending);
    if (this.#drawn) this.io.stderr.write('\n');
    this.#drawn = false;
    this.#pending = undefined;
  }
}
