import { installKeyStore } from '../store/migrations.ts';
import {
  type BackfillOptions,
  type BackfillResult,
  rollbackBackfill,
  runBackfill,
} from '../migrate/backfill.ts';
import { type PlanReport, planBackfill, type VerifyReport, verifyBackfill } from '../migrate/verify.ts';
import { assertCheckpointTables, type Context, EXIT, intFlag, UsageError } from './context.ts';
import { selectTables } from './config.ts';
import { fmtInt, fmtMs, Progress } from './output.ts';
import { cliMessage } from './speak.ts';

export async function migrateCommand(sub: string, ctx: Context): Promise<number> {
  if (ctx.args.length > 0)
    throw new UsageError(`migrate ${sub} takes no arguments (got ${ctx.args.join(' ')})`);
  switch (sub) {
    case 'plan':
      return plan(ctx);
    case 'run':
      return backfill(ctx, 'encrypt');
    case 'rollback':
      return backfill(ctx, 'decrypt');
    case 'verify':
      return verify(ctx);
    case 'install': {
      const loaded = await ctx.config();
      await installKeyStore(loaded.db);
      ctx.out(
        { ok: true, installed: ['key store', 'retrofit checkpoints'] },
        () => 'key store and retrofit checkpoint tables are installed',
      );
      return EXIT.ok;
    }
    default:
      throw new UsageError(`unknown command "migrate ${sub}"`);
  }
}

function progress(ctx: Context): Progress {
  const every = ctx.flags['progress-every'] === undefined ? 5 : intFlag(ctx.flags, 'progress-every')!;
  return new Progress(ctx.io, {
    json: ctx.json,
    everyMs: every * 1000,
    enabled: ctx.flags['no-progress'] !== true,
  });
}

async function plan(ctx: Context): Promise<number> {
  const loaded = await ctx.config();
  const targets = selectTables(loaded, ctx.flags.table ?? []);
  const reports: PlanReport[] = [];
  for (const t of targets) reports.push(await planBackfill(loaded.db, loaded.keyring, t.config));
  const blocked = reports.some((r) => r.errors.length > 0);
  ctx.out({ ok: !blocked, tables: reports }, () => reports.map(planText).join('\n\n'));
  return blocked ? EXIT.problems : EXIT.ok;
}

function planText(r: PlanReport): string {
  const lines = [
    `${r.table}: key ${r.key}, tenant column ${r.tenantColumn}, ${fmtInt(r.rows)} rows, ${fmtInt(r.tenants)} tenants`,
  ];
  if (r.columns.length > 0) {
    const head = ['column', 'kind', 'codec', 'storage', 'mode', 'db type', 'plaintext', 'encrypted', 'null'];
    const rows = r.columns.map((c) => [
      c.column,
      c.kind,
      c.codec,
      c.storage,
      c.mode,
      c.kind === 'shadow' ? `${c.sourceDbType ?? '?'}→${c.dbType ?? 'missing'}` : (c.dbType ?? 'missing'),
      fmtInt(c.plaintext),
      fmtInt(c.encrypted),
      fmtInt(c.nulls),
    ]);
    lines.push(...table(head, rows, 6).map((l) => `  ${l}`));
  }
  for (const j of r.jobs) {
    lines.push(
      `  job ${j.id}: ${j.state}, pass ${j.pass}, ${fmtInt(j.rowsDone)}/${fmtInt(j.rowsTotal)} rows, ` +
        `${fmtInt(j.valuesWritten)} values written, ${j.chunksDone}/${j.chunks} chunks, ${j.liveWorkers} live worker(s)`,
    );
  }
  if (r.jobs.length === 0) lines.push('  no backfill job yet');
  for (const w of r.warnings) lines.push(`  warning: ${w}`);
  for (const e of r.errors) lines.push(`  error: ${e}`);
  if (r.errors.length === 0) {
    const todo = r.columns.reduce((n, c) => n + c.plaintext, 0);
    lines.push(
      todo > 0
        ? `  next: drizzle-byok migrate run --table ${r.table}`
        : '  nothing is plaintext (run `migrate verify` to decrypt-check)',
    );
  }
  return lines.join('\n');
}

/** Left-aligned columns; columns from `numericFrom` on are right-aligned. */
function table(head: string[], rows: string[][], numericFrom: number): string[] {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i >= numericFrom ? c.padStart(w[i]!) : c.padEnd(w[i]!)))
      .join('  ')
      .trimEnd();
  return [line(head), ...rows.map(line)];
}

async function backfill(ctx: Context, op: 'encrypt' | 'decrypt'): Promise<number> {
  const f = ctx.flags;
  const dryRun = f['dry-run'] === true;
  if (op === 'decrypt' && !dryRun && f.yes !== true) {
    throw new UsageError(
      'migrate rollback writes plaintext back into the database: pass --yes to confirm (or --dry-run to see what it would do)',
    );
  }
  const loaded = await ctx.config();
  const targets = selectTables(loaded, f.table ?? []);
  if (!dryRun) await assertCheckpointTables(loaded);
  const defaults = loaded.config.backfill ?? {};
  const options: BackfillOptions = {
    ...defaults,
    ...(f.tenant === undefined ? {} : { tenants: f.tenant }),
    ...(f['batch-size'] === undefined ? {} : { batchSize: intFlag(f, 'batch-size')! }),
    ...(f['chunk-size'] === undefined ? {} : { chunkSize: intFlag(f, 'chunk-size')! }),
    ...(f['lease-ms'] === undefined ? {} : { leaseMs: intFlag(f, 'lease-ms')! }),
    ...(f['busy-timeout-ms'] === undefined ? {} : { busyTimeoutMs: intFlag(f, 'busy-timeout-ms')! }),
    ...(f.rate === undefined ? {} : { rowsPerSecond: intFlag(f, 'rate')! }),
    ...(f['no-reencrypt'] ? { reencrypt: false } : {}),
    ...(f['skip-tenant-errors'] ? { skipTenantErrors: true } : {}),
    ...(f.restart ? { restart: true } : {}),
    ...(f['no-wait'] ? { waitForOthers: false } : {}),
    dryRun,
    signal: ctx.signal,
  };
  const results: BackfillResult[] = [];
  for (const t of targets) {
    const bar = progress(ctx);
    const label = `${op === 'encrypt' ? 'encrypt' : 'rollback'} ${t.qualified}`;
    ctx.say(`${dryRun ? '[dry run] ' : ''}${label}: ${t.columns.map((c) => c.label).join(', ')}`);
    let r: BackfillResult;
    try {
      r = await (op === 'encrypt' ? runBackfill : rollbackBackfill)(loaded.db, loaded.keyring, t.config, {
        ...options,
        onProgress: (p) =>
          bar.update({
            label,
            done: p.rowsDone,
            total: p.rowsTotal,
            rate: p.rowsPerSecond,
            eta: p.etaSeconds,
          }),
      });
    } finally {
      bar.end();
    }
    results.push(r);
    ctx.say(resultText(r));
    if (r.aborted) break;
  }
  const aborted = results.some((r) => r.aborted);
  const problems = results.some(
    (r) => r.unreadable + r.invalid + r.noTenant + r.tenantSkipped > 0 || r.tenantErrors.length > 0,
  );
  if (ctx.json) ctx.out({ ok: !aborted && !problems, results }, () => '');
  return aborted ? EXIT.interrupted : problems ? EXIT.problems : EXIT.ok;
}

function resultText(r: BackfillResult): string {
  const verb = r.operation === 'encrypt' ? 'encrypted' : 'decrypted';
  const lines: string[] = [];
  const head = r.dryRun
    ? `  would write ${fmtInt(r.written)} value(s) (${verb}${r.operation === 'encrypt' ? `, of which ${fmtInt(r.reencrypted)} re-encrypted from an older key version` : ''})`
    : `  ${fmtInt(r.written)} value(s) ${verb}${r.operation === 'encrypt' ? ` (${fmtInt(r.reencrypted)} re-encrypted from an older key version)` : ''}`;
  lines.push(head);
  lines.push(
    `  ${fmtInt(r.rowsSeen)} rows read · ${fmtInt(r.alreadyDone)} already done · ${fmtInt(r.nulls)} null` +
      (r.stale > 0 ? ` · ${fmtInt(r.stale)} under an older key (left)` : '') +
      (r.busyRetries > 0 ? ` · ${fmtInt(r.busyRetries)} busy row retries` : ''),
  );
  if (r.indexed > 0 || r.indexesBuilt.length > 0)
    lines.push(
      `  ${fmtInt(r.indexed)} blind index value(s) written · index built for ${fmtInt(r.indexesBuilt.length)} tenant index(es)`,
    );
  const bad: string[] = [];
  if (r.unreadable > 0) bad.push(`${fmtInt(r.unreadable)} unreadable`);
  if (r.invalid > 0) bad.push(`${fmtInt(r.invalid)} invalid plaintext`);
  if (r.noTenant > 0) bad.push(`${fmtInt(r.noTenant)} without tenant`);
  if (r.tenantSkipped > 0) bad.push(`${fmtInt(r.tenantSkipped)} of failing tenants`);
  if (bad.length > 0) lines.push(`  left untouched: ${bad.join(' · ')}`);
  for (const e of r.tenantErrors) lines.push(`  tenant ${e.tenantId}: ${e.message} [${e.code}]`);
  const rate = `${fmtMs(r.elapsedMs)}, ${fmtInt(r.rowsPerSecond)} rows/s`;
  if (r.dryRun) lines.push(`  dry run: nothing was written (${rate})`);
  else if (r.aborted)
    lines.push(`  interrupted after ${rate}: the checkpoint is saved, run again to resume (job ${r.job})`);
  else
    lines.push(
      `  ${r.jobDone ? 'job complete' : 'this worker is done; other workers still hold chunks'} (job ${r.job}, pass ${r.pass}, ${r.chunks} chunk(s), ${rate})`,
    );
  return lines.join('\n');
}

async function verify(ctx: Context): Promise<number> {
  const loaded = await ctx.config();
  const targets = selectTables(loaded, ctx.flags.table ?? []);
  const reports: VerifyReport[] = [];
  for (const t of targets) {
    const bar = progress(ctx);
    const label = `verify ${t.qualified}`;
    try {
      reports.push(
        await verifyBackfill(loaded.db, loaded.keyring, t.config, {
          deep: ctx.flags.shallow !== true,
          ...(ctx.flags.tenant === undefined ? {} : { tenants: ctx.flags.tenant }),
          ...(ctx.flags['batch-size'] === undefined ? {} : { batchSize: intFlag(ctx.flags, 'batch-size')! }),
          signal: ctx.signal,
          onProgress: (p) =>
            bar.update({
              label,
              done: p.rowsDone,
              total: p.rowsTotal,
              rate: p.rowsPerSecond,
              eta: p.etaSeconds,
            }),
        }),
      );
    } finally {
      bar.end();
    }
  }
  const ok = reports.every((r) => r.ok);
  ctx.out({ ok, tables: reports }, () => reports.map(verifyText).join('\n\n'));
  if (reports.some((r) => r.aborted)) return EXIT.interrupted;
  return ok ? EXIT.ok : EXIT.problems;
}

function verifyText(r: VerifyReport): string {
  const head = [
    'column',
    'kind',
    'plaintext',
    'current',
    'stale',
    'unreadable',
    'key unavailable',
    'mismatched',
    'null',
  ];
  const rows = r.columns.map((c) => [
    c.column,
    c.kind,
    fmtInt(c.plaintext),
    fmtInt(c.current),
    fmtInt(c.stale),
    fmtInt(c.unreadable),
    fmtInt(c.unavailable),
    fmtInt(c.mismatched),
    fmtInt(c.nulls),
  ]);
  const shown = r.problems.slice(0, 20);
  const problemLines = shown.map(
    (p) =>
      `  ${p.tenantId === null ? 'rows without tenant' : `tenant ${p.tenantId}`}: ${fmtInt(p.values)} value(s) ` +
      `${p.kind === 'key-unavailable' ? 'not checked, data key unavailable' : 'unreadable'}: ${cliMessage(p.message, p.code)} [${p.code}]`,
  );
  if (r.problems.length > shown.length)
    problemLines.push(`  ... and ${r.problems.length - shown.length} more (see --json)`);
  const verdict = r.ok
    ? `OK: every value is encrypted${r.deep ? ' and decrypts' : ''}${r.stale > 0 ? ` (${fmtInt(r.stale)} under an older key version: \`migrate run\` re-encrypts them)` : ''}`
    : `NOT OK: ${fmtInt(r.plaintext)} plaintext, ${fmtInt(r.unreadable)} unreadable, ` +
      `${fmtInt(r.unavailable)} with the data key unavailable (not checked), ${fmtInt(r.mismatched)} mismatched`;
  return [
    `${r.table}: ${fmtInt(r.rows)} rows${r.deep ? ', every ciphertext decrypted' : ' (shallow: not decrypted)'} in ${fmtMs(r.elapsedMs)}`,
    ...table(head, rows, 2).map((l) => `  ${l}`),
    `  ${verdict}`,
    ...problemLines,
  ].join('\n');
}
