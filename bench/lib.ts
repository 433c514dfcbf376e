import type postgres from 'postgres';
import { cpus } from 'node:os';
import { Bench, type FnReturnedObject } from 'tinybench';

/** What every section gets from the runner. */
export interface BenchContext {
  /** `BENCH_QUICK=1`: fewer rounds, shorter budgets (a smoke run, not figures to publish). */
  readonly quick: boolean;
}

/** One part of `npm run bench`. Register new ones in `bench/run.ts`. */
export interface Section {
  /** Short id used by the CLI filter (`npm run bench -- crypto`). */
  readonly name: string;
  readonly title: string;
  run(ctx: BenchContext): Promise<void>;
}

/** Node, OpenSSL and CPU, printed at the top of every section so a copied table keeps its context. */
export function envLine(): string {
  const cpu = cpus();
  const model = (cpu[0]?.model ?? 'unknown CPU').replace(/\s+/g, ' ').trim();
  return `Node ${process.version} · OpenSSL ${process.versions.openssl} · ${model} · ${cpu.length} logical CPUs · ${process.platform}/${process.arch}`;
}

export function printSectionHeader(title: string, notes: readonly string[] = []): void {
  console.log(`\n## ${title}\n`);
  console.log(`${envLine()}\n`);
  for (const n of notes) console.log(`- ${n}`);
  if (notes.length > 0) console.log('');
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

/** Median of the element-wise ratios `a[i] / b[i]` (pairs measured in the same round). */
export function pairedRatio(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  const r: number[] = [];
  for (let i = 0; i < n; i++) r.push((a[i] as number) / (b[i] as number));
  return median(r);
}

export function fmtNs(ns: number): string {
  if (!Number.isFinite(ns)) return 'n/a';
  if (ns >= 1e6) return `${(ns / 1e6).toFixed(2)} ms`;
  if (ns >= 1e4) return `${(ns / 1e3).toFixed(1)} µs`;
  return `${Math.round(ns).toLocaleString('en-US')} ns`;
}

export function fmtMs(ms: number): string {
  return Number.isFinite(ms) ? `${ms.toFixed(1)} ms` : 'n/a';
}

export function fmtRatio(r: number): string {
  if (!Number.isFinite(r)) return 'n/a';
  return r >= 100 ? `${Math.round(r)}×` : r >= 10 ? `${r.toFixed(1)}×` : `${r.toFixed(2)}×`;
}

/** A GitHub-flavoured Markdown table (first column left-aligned, the others right-aligned). */
export function markdownTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] as number) : c.padStart(widths[i] as number))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (i === 0 ? `:${'-'.repeat(w + 1)}` : `${'-'.repeat(w + 1)}:`)).join('|')}|`;
  return [line(headers), rule, ...rows.map(line)].join('\n');
}

/**
 * A micro-benchmark task. `run(n)` performs `n` operations; each tinybench sample is one batch and
 * records the mean time per operation of that batch (timer overhead amortized over the batch).
 */
export interface MicroTask {
  readonly id: string;
  /** Operations per sample: large enough to dwarf timer overhead (1 for ms-scale async work). */
  readonly batch: number;
  readonly run: (n: number) => void | Promise<void>;
}

export interface RoundOptions {
  rounds: number;
  /** Measuring time per task per round. */
  timeMs: number;
  /** Warmup time per task per round. */
  warmupMs: number;
}

const now = () => process.hrtime.bigint();

/**
 * Runs every task in `rounds` rounds with tinybench, rotating the task order each round so no task
 * always runs first or last on a noisy machine. Returns, per task id, the median ns/op of each round
 * (the median of that round's batch means), in round order: callers pair rounds for ratios.
 */
export async function measureRounds(
  tasks: readonly MicroTask[],
  options: RoundOptions,
): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>(tasks.map((t) => [t.id, []]));
  for (let round = 0; round < options.rounds; round++) {
    const bench = new Bench({
      name: `round ${round + 1}`,
      time: options.timeMs,
      iterations: 5,
      warmup: true,
      warmupTime: options.warmupMs,
      warmupIterations: 2,
      throws: true,
    });
    const shift = (round * 7) % tasks.length;
    const ordered = [...tasks.slice(shift), ...tasks.slice(0, shift)];
    for (const t of ordered) {
      const n = t.batch;
      const probe = t.run(1);
      if (probe instanceof Promise) {
        await probe;
        bench.add(t.id, async (): Promise<FnReturnedObject> => {
          const t0 = now();
          await t.run(n);
          const ms = Number(now() - t0) / 1e6;
          return { overriddenDuration: ms / n, overriddenIterationCost: ms };
        });
      } else {
        bench.add(t.id, (): FnReturnedObject => {
          const t0 = now();
          t.run(n);
          const ms = Number(now() - t0) / 1e6;
          return { overriddenDuration: ms / n, overriddenIterationCost: ms };
        });
      }
    }
    await bench.run();
    for (const task of bench.tasks) {
      const r = task.result;
      if (r.state !== 'completed' && r.state !== 'aborted-with-statistics') {
        throw new Error(`bench task ${task.name} did not complete (${r.state})`);
      }
      out.get(task.name)?.push(r.latency.p50 * 1e6);
    }
  }
  return out;
}

/**
 * The ratio of two synchronous tasks' costs measured in tightly interleaved pairs: each pair runs a
 * batch of `a` and a batch of `b` back to back (which goes first alternates), so both see the same
 * machine conditions to within a fraction of a millisecond; the result is the median of the pairs'
 * ratios. Slow drifts of a shared machine (another process, the host's steal time) that shift a
 * whole measurement window cancel out, which window-per-task rounds cannot do.
 */
export function interleavedRatio(
  a: MicroTask,
  b: MicroTask,
  options: { pairs: number; warmupPairs?: number },
): number {
  const batch = Math.max(a.batch, b.batch);
  const ratios: number[] = [];
  const total = (options.warmupPairs ?? 50) + options.pairs;
  for (let i = 0; i < total; i++) {
    const aFirst = i % 2 === 0;
    const t0 = now();
    if (aFirst) a.run(batch);
    else b.run(batch);
    const t1 = now();
    if (aFirst) b.run(batch);
    else a.run(batch);
    const t2 = now();
    if (i < total - options.pairs) continue;
    const ta = aFirst ? t1 - t0 : t2 - t1;
    const tb = aFirst ? t2 - t1 : t1 - t0;
    ratios.push(Number(ta) / Number(tb));
  }
  return median(ratios);
}

/** Keeps results observable so the optimizer cannot drop the work. */
export const sink: { value: unknown } = { value: undefined };

/** PostgreSQL server version, for section headers. */
export async function serverVersion(client: postgres.Sql): Promise<string> {
  const [r] = await client`show server_version`;
  return String(r?.server_version ?? '?').split(' ')[0] ?? '?';
}

/** A database URL without its password, for printing. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== '') u.password = '***';
    return u.toString();
  } catch {
    return '(DATABASE_URL)';
  }
}

/** A figure judged against a target, printed where it is measured and again in the closing summary. */
export interface TargetResult {
  readonly section: string;
  readonly label: string;
  readonly value: string;
  readonly goal: string;
  readonly met: boolean;
}

const targets: TargetResult[] = [];

/**
 * Records and prints one target: `value` (formatted by `fmt`) against `goal` with `op`. Every target
 * of the run is listed again, met or not, at the end of `npm run bench`.
 */
export function checkTarget(
  section: string,
  label: string,
  value: number,
  op: '<=' | '>=',
  goal: number,
  fmt: (n: number) => string = fmtRatio,
): TargetResult {
  const met = Number.isFinite(value) && (op === '<=' ? value <= goal : value >= goal);
  const t: TargetResult = {
    section,
    label,
    value: fmt(value),
    goal: `${op === '<=' ? '≤' : '≥'} ${fmt(goal)}`,
    met,
  };
  targets.push(t);
  console.log(`- target: ${label}: **${t.value}** (target ${t.goal}) → ${met ? 'met' : 'not met'}`);
  return t;
}

/** Every target recorded so far, in order. */
export function recordedTargets(): readonly TargetResult[] {
  return targets;
}

/** CPU seconds (user + system) used so far by the given processes (Linux `/proc`), or NaN when unreadable. */
export async function processCpuSeconds(pids: readonly number[]): Promise<number> {
  const { readFile } = await import('node:fs/promises');
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
      // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(rest[11]) + Number(rest[12]);
    } catch {
      return Number.NaN;
    }
  }
  return ticks / 100;
}

/** The server process ids behind a postgres.js client's connections (opens up to `n` of them). */
export async function backendPids(client: postgres.Sql, n: number): Promise<number[]> {
  const rows = await Promise.all(
    Array.from({ length: n }, () => client`select pg_backend_pid() as pid, pg_sleep(0.05)`),
  );
  return [...new Set(rows.map((r) => Number(r[0]?.pid)))];
}
