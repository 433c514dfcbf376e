import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PGlite } from '@electric-sql/pglite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AwsKmsServer, startAwsKmsServer } from '../src/testing/index.ts';
import { retrofitSchema, seedSql } from './fixtures/retrofit-schema.ts';
import { DATABASE_URL, openDb, type TestDb, uniqueName } from './helpers/db.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const CONFIG = 'test/fixtures/retrofit-config.ts';
const hasScript = spawnSync('script', ['--version']).status === 0;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI as a user does: `node src/cli/main.ts ...` in a child process. */
function cli(
  args: string[],
  env: Record<string, string>,
  options: { cwd?: string; signalAfter?: RegExp } = {},
): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(root, 'src/cli/main.ts'), ...args], {
      cwd: options.cwd ?? root,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let signalled = false;
    const check = () => {
      if (options.signalAfter && !signalled && options.signalAfter.test(stdout + stderr)) {
        signalled = true;
        child.kill('SIGINT');
      }
    };
    child.stdout.on('data', (d) => {
      stdout += d;
      check();
    });
    child.stderr.on('data', (d) => {
      stderr += d;
      check();
    });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/** The same under a pseudo-terminal (`script`), as on an interactive terminal: stdout and stderr merged. */
function cliTty(args: string[], env: Record<string, string>): Run {
  const cmd = [process.execPath, join(root, 'src/cli/main.ts'), ...args]
    .map((a) => `'${a.replace(/'/g, `'\\''`)}'`)
    .join(' ');
  const r = spawnSync('script', ['-qfec', cmd, '/dev/null'], {
    cwd: root,
    env: { ...process.env, ...env, COLUMNS: '120' },
    encoding: 'utf8',
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const json = (r: Run) => JSON.parse(r.stdout) as Record<string, any>;

// Each test spawns the CLI 10-20 times (a Node start, TypeScript stripping and a config load each):
// on a loaded 2-core machine that alone can pass the default 60 s.
describe(`drizzle-byok CLI (spawned; ${DATABASE_URL ? 'PostgreSQL' : 'PGlite data directory'})`, {
  timeout: 180_000,
}, () => {
  const schema = uniqueName('cli');
  const prefix = uniqueName('ct');
  const N = 3000;
  const T = 5;
  let dir: string | undefined;
  let aws: AwsKmsServer;
  let env: Record<string, string>;
  let keyArn: string;
  let keyArn2: string;

  /** Opens the database from the test process (never while a CLI process has the PGlite directory). */
  async function withDb<T>(fn: (db: TestDb) => Promise<T>): Promise<T> {
    let pg: PGlite | undefined;
    if (!DATABASE_URL) {
      pg = new PGlite(dir!);
      await pg.waitReady;
    }
    const tdb = await openDb(DATABASE_URL ? 'postgres-js' : 'pglite', undefined, pg);
    try {
      return await fn(tdb);
    } finally {
      await tdb.close();
      await pg?.close();
    }
  }

  beforeAll(async () => {
    if (!DATABASE_URL) dir = mkdtempSync(join(tmpdir(), 'byok-cli-'));
    aws = await startAwsKmsServer();
    const user = aws.addUser();
    keyArn = aws.createKey().arn;
    keyArn2 = aws.createKey().arn;
    env = {
      RETROFIT_SCHEMA: schema,
      PLATFORM_KEY: randomBytes(32).toString('base64'),
      ...(DATABASE_URL ? { DATABASE_URL } : { PGLITE_DIR: dir!, DATABASE_URL: '' }),
      AWS_ACCESS_KEY_ID: user.accessKeyId,
      AWS_SECRET_ACCESS_KEY: user.secretAccessKey,
      AWS_EC2_METADATA_DISABLED: 'true',
      AWS_KEY_ARN: keyArn2,
      AWS_KMS_ENDPOINT: aws.endpoint,
      AWS_KEY_ID: user.accessKeyId,
      AWS_SECRET: user.secretAccessKey,
    };
    const s = retrofitSchema(schema);
    await withDb(async (db) => {
      for (const d of s.ddl) await db.raw(d);
      for (const q of seedSql(schema, N, prefix, T)) await db.raw(q);
      await db.raw(`insert into "${schema}".contacts (tenant_id, email, profile)
        select '${prefix}-' || (g % ${T}), 'c' || g || '@x', ('{"plan":"p","seats":' || g || '}')::jsonb from generate_series(1, 400) g`);
    });
  });
  afterAll(async () => {
    await aws?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('prints usage; refuses unknown commands and flags with exit code 2', async () => {
    const help = await cli(['--help'], env);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/Usage: drizzle-byok <command>/);
    expect(help.stdout).toMatch(/Exit codes: 0 ok · 1 failure · 2 usage\/config error · 3 problems found/);
    expect((await cli([], env)).code).toBe(2);
    const unknown = await cli(['migrate', 'explode'], env);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(
      /unknown command "migrate explode": migrate commands: plan, run, verify, rollback, install/,
    );
    const flag = await cli(['migrate', 'plan', '--bogus'], env);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toMatch(/Unknown option '--bogus'/);
    const misplaced = await cli(['migrate', 'verify', '--yes', '--config', CONFIG], env);
    expect(misplaced.code).toBe(2);
    expect(misplaced.stderr).toMatch(/migrate verify does not take --yes/);
    // tenant ids: the same rule as everywhere else, before any configuration is loaded
    const long = await cli(['keys', 'status', 'x'.repeat(300)], env, { cwd: tmpdir() });
    expect(long.code).toBe(2);
    expect(long.stderr).toMatch(/is longer than 255 characters/);
    const ctl = await cli(['keys', 'health', '--tenant', 'a\u0007b'], env, { cwd: tmpdir() });
    expect(ctl.code).toBe(2);
    expect(ctl.stderr).toMatch(/contains control characters/);
  });

  it('explains configuration errors: missing file, invalid exports (text and --json)', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'byok-cfg-'));
    try {
      const none = await cli(['migrate', 'plan'], env, { cwd: empty });
      expect(none.code).toBe(2);
      expect(none.stderr).toMatch(
        /no config file: create drizzle-byok\.config\.ts in .* or pass --config <path>/,
      );
      writeFileSync(join(empty, 'drizzle-byok.config.ts'), 'export default { db: 42, tabels: [] };\n');
      const bad = await cli(['migrate', 'plan'], env, { cwd: empty });
      expect(bad.code).toBe(2);
      expect(bad.stderr).toMatch(/invalid configuration/);
      expect(bad.stderr).toMatch(
        /`db` must be a Drizzle PostgreSQL database or a function returning one, got a number/,
      );
      expect(bad.stderr).toMatch(/`keyring` must be a keyring \(createKeyring\(\.\.\.\)\)/);
      expect(bad.stderr).toMatch(/unknown option `tabels`/);
      const asJson = await cli(['keys', 'health', '--json'], env, { cwd: empty });
      expect(asJson.code).toBe(2);
      expect(json(asJson)).toMatchObject({ ok: false, error: { code: 'ERR_BYOK_CONFIG' } });
      writeFileSync(join(empty, 'broken.mjs'), 'throw new Error("boom at load");\n');
      const broken = await cli(['migrate', 'plan', '--config', 'broken.mjs'], env, { cwd: empty });
      expect(broken.code).toBe(2);
      expect(broken.stderr).toMatch(/failed to load: boom at load/);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it('retrofits end to end: install, plan, verify, dry run, run with progress, verify, rotate, re-encrypt', async () => {
    const c = ['--config', CONFIG];
    expect((await cli(['migrate', 'install', ...c], env)).code).toBe(0);

    const plan = await cli(['migrate', 'plan', ...c], env);
    expect(plan.code).toBe(0);
    expect(plan.stdout).toMatch(
      new RegExp(`${schema}\\.accounts: key id, tenant column tenant_id, 3,000 rows, 5 tenants`),
    );
    expect(plan.stdout).toMatch(
      /accounts\.name\s+in-place\s+text\s+text\s+passthrough\s+text\s+3,000\s+0\s+0/,
    );
    expect(plan.stdout).toMatch(
      /contacts\.email→email_enc\s+shadow\s+text\s+bytea\s+strict\s+text→bytea\s+400/,
    );

    const before = await cli(['migrate', 'verify', '--json', ...c], env);
    expect(before.code).toBe(3);
    expect(json(before)).toMatchObject({ ok: false });
    expect(json(before).tables[0].plaintext).toBe(3 * N - Math.floor(N / 11));

    const dry = await cli(['migrate', 'run', '--dry-run', '--json', ...c], env);
    expect(dry.code).toBe(0);
    expect(json(dry).results.map((r: any) => [r.dryRun, r.written])).toEqual([
      [true, 3 * N - Math.floor(N / 11)],
      [true, 800],
    ]);
    expect((await cli(['migrate', 'verify', '--json', '--shallow', ...c], env)).code).toBe(3); // still plaintext

    const refused = await cli(['migrate', 'rollback', ...c], env);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/pass --yes to confirm/);

    // Not a terminal: progress as plain lines on stderr, the summary on stdout.
    const run = await cli(
      ['migrate', 'run', '--table', 'accounts', '--rate', '3000', '--progress-every', '1', ...c],
      env,
    );
    expect(run.stderr).toBe(run.stderr.replace(/\r/g, ''));
    expect(run.code).toBe(0);
    expect(run.stderr).toMatch(
      /progress: encrypt .*accounts \[#*-*\] +\d+\.\d% +[\d,]+\/3,000 rows +[\d,]+ rows\/s +ETA \d+:\d\d/,
    );
    expect(run.stdout).toMatch(
      new RegExp(`${(3 * N - Math.floor(N / 11)).toLocaleString('en-US')} value\\(s\\) encrypted`),
    );
    expect(run.stdout).toMatch(/job complete \(job encrypt:.*accounts:name,email,note, pass 1/);

    // On a terminal: a live bar redrawn in place, with rate and ETA.
    if (hasScript) {
      const tty = cliTty(
        ['migrate', 'run', '--table', 'contacts', '--batch-size', '50', '--rate', '800', ...c],
        env,
      );
      expect(tty.code).toBe(0);
      expect(tty.stdout).toMatch(
        /\rencrypt .*contacts \[#+-*\] +\d+\.\d% +[\d,]+\/400 rows +[\d,]+ rows\/s +ETA \d+:\d\d/,
      );
      expect(tty.stdout).toMatch(/\[#+\] 100\.0% +400\/400 rows/);
      expect(tty.stdout.split('\r').length).toBeGreaterThan(3);
      expect(tty.stdout).toMatch(/800 value\(s\) encrypted/);
    } else {
      expect((await cli(['migrate', 'run', '--table', 'contacts', ...c], env)).code).toBe(0);
    }

    const after = await cli(['migrate', 'verify', ...c], env);
    expect(after.code).toBe(0);
    expect(after.stdout).toMatch(/OK: every value is encrypted and decrypts/);

    // keys rotate (no KEK given): a new data key version; verify sees stale values; run re-encrypts them.
    const tenant = `${prefix}-2`;
    const status = await cli(['keys', 'status', tenant, '--json', ...c], env);
    expect(status.code).toBe(0);
    expect(json(status)).toMatchObject({ tenantId: tenant, mode: 'platform', state: 'active' });
    expect(json(status).dekVersions).toHaveLength(1);
    const rotated = await cli(['keys', 'rotate', tenant, ...c], env);
    expect(rotated.code).toBe(0);
    expect(rotated.stdout).toMatch(/data key version 2 is now active/);
    const stale = await cli(['migrate', 'verify', '--json', ...c], env);
    expect(stale.code).toBe(0);
    const staleCount = json(stale).tables.reduce((n: number, t: any) => n + t.stale, 0);
    expect(staleCount).toBeGreaterThan(0);
    const re = await cli(['migrate', 'run', '--json', '--no-progress', ...c], env);
    expect(re.code).toBe(0);
    expect(json(re).results.reduce((n: number, r: any) => n + r.reencrypted, 0)).toBe(staleCount);
  }, 150_000); // spawns the CLI a dozen times: slow on a busy shared machine

  it('keys: enable BYOK with a local AWS KMS, health (exit 3 when a key is disabled), rotate KEK, disable, shred', async () => {
    const c = ['--config', CONFIG];
    const tenant = `${prefix}-1`;
    const kekFlags = ['--aws-key-arn', keyArn, '--aws-endpoint', aws.endpoint];
    const dry = await cli(['keys', 'enable', tenant, ...kekFlags, '--dry-run', ...c], env);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toMatch(/\[dry run\] .*verified .*nothing changed/);
    const enabled = await cli(['keys', 'enable', tenant, ...kekFlags, '--json', ...c], env);
    expect(enabled.code).toBe(0);
    expect(json(enabled)).toMatchObject({
      tenantId: tenant,
      mode: 'byok',
      keks: [{ keyRef: keyArn, kind: 'aws-kms' }],
    });
    // --tenant: the test database is shared with other suites' tenants
    const health = await cli(['keys', 'health', '--tenant', tenant, '--json', ...c], env);
    expect(health.code).toBe(0);
    expect(json(health).tenants.find((t: any) => t.tenantId === tenant)).toMatchObject({ health: 'ok' });
    // The data stays readable through the tenant's key (a new process unwraps through AWS KMS).
    expect((await cli(['migrate', 'verify', '--table', 'accounts', ...c], env)).code).toBe(0);
    aws.setKeyState(keyArn, 'Disabled');
    const sick = await cli(['keys', 'health', '--tenant', tenant, ...c], env);
    expect(sick.code).toBe(3);
    expect(sick.stdout).toMatch(new RegExp(`${tenant}\\s+(error|degraded)`));
    aws.setKeyState(keyArn, 'Enabled');
    // Rotate to the KEK named `aws` in the config file.
    const kek = await cli(['keys', 'rotate', tenant, '--kek', 'aws', ...c], env);
    expect(kek.code).toBe(0);
    expect(kek.stdout).toMatch(new RegExp(`KEK ${keyArn2.replace(/[/]/g, '\\/')}\\s+aws-kms`));
    const unknownKek = await cli(['keys', 'rotate', tenant, '--kek', 'nope', ...c], env);
    expect(unknownKek.code).toBe(2);
    expect(unknownKek.stderr).toMatch(/no KEK named nope .* \(known: aws\)/);
    const disabled = await cli(['keys', 'disable', tenant, '--json', ...c], env);
    expect(disabled.code).toBe(0);
    expect(json(disabled)).toMatchObject({ mode: 'platform' });

    const victim = `${prefix}-4`;
    const noConfirm = await cli(['keys', 'shred', victim, ...c], env);
    expect(noConfirm.code).toBe(2);
    expect(noConfirm.stderr).toMatch(new RegExp(`Repeat the tenant id to confirm: --confirm ${victim}`));
    const shred = await cli(['keys', 'shred', victim, '--confirm', victim, ...c], env);
    expect(shred.code).toBe(0);
    expect(shred.stdout).toMatch(/shredded: \d+ data key version\(s\) destroyed/);
    const gone = await cli(['migrate', 'verify', '--table', 'accounts', '--json', ...c], env);
    expect(gone.code).toBe(3);
    expect(json(gone).tables[0].unreadable).toBeGreaterThan(0);
    // Rollback decrypts what it can; the shredded tenant's values stay as they are (exit 3).
    const rb = await cli(['migrate', 'rollback', '--table', 'accounts', '--yes', '--json', ...c], env);
    expect(rb.code).toBe(3);
    const r = json(rb).results[0];
    expect(r.unreadable).toBe(json(gone).tables[0].unreadable);
    expect(r.written).toBeGreaterThan(0);
    await withDb(async (db) => {
      const [row] = await db.raw<{ name: string }>(`select name from "${schema}".accounts where id = 3`);
      expect(row!.name).toBe('name 3');
    });
  });

  it('Ctrl-C stops a run after its current batch (exit 130); running again resumes and finishes', async () => {
    const c = ['--config', CONFIG, '--table', 'accounts'];
    // The previous test rolled back every readable value: encrypt again, interrupted on the way.
    const first = await cli(
      ['migrate', 'run', '--rate', '1500', '--progress-every', '1', '--skip-tenant-errors', ...c],
      env,
      {
        signalAfter: /progress: /,
      },
    );
    expect(first.code).toBe(130);
    expect(first.stderr).toMatch(/SIGINT: stopping after the current batch/);
    expect(first.stdout).toMatch(/interrupted after .*the checkpoint is saved, run again to resume/);
    const second = await cli(
      ['migrate', 'run', '--json', '--no-progress', '--skip-tenant-errors', ...c],
      env,
    );
    expect(second.code).toBe(3); // the shredded tenant's rows are reported, not encrypted
    const r = json(second).results[0];
    expect(r.jobDone).toBe(true);
    expect(r.rowsSeen).toBeLessThan(N);
    expect(r.tenantErrors).toEqual([expect.objectContaining({ code: 'ERR_BYOK_TENANT_SHREDDED' })]);
  });
});
