import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DATABASE_URL, uniqueName } from './helpers/db.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const CONFIG = join(root, 'test/fixtures/first-hour-config.ts');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: Record<string, string>): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(root, 'src/cli/main.ts'), '--config', CONFIG, ...args], {
      cwd: root,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Words of the library's API that the CLI must not print: it speaks of commands and flags. */
const API_WORDS =
  /\b(installKeyStore|enableByok|rotateKek|disableByok|rotateDek|checkHealth|runBackfill|allowNoKeys|createKeyring)\b|\bshred\(|Failed query|params:/;

describe(`drizzle-byok CLI on a new database (${DATABASE_URL ? 'PostgreSQL' : 'PGlite data directory'})`, () => {
  let env: Record<string, string>;
  let cleanup: () => Promise<void>;

  beforeAll(async () => {
    const base = { PLATFORM_KEY: randomBytes(32).toString('base64') };
    if (DATABASE_URL) {
      const name = uniqueName('byok_cli_new');
      const admin = postgres(DATABASE_URL, { max: 1, onnotice: () => {} });
      await admin.unsafe(`create database "${name}"`);
      const url = new URL(DATABASE_URL);
      url.pathname = `/${name}`;
      env = { ...base, FH_DATABASE_URL: url.toString() };
      cleanup = async () => {
        await admin.unsafe(`drop database if exists "${name}" with (force)`);
        await admin.end();
      };
    } else {
      const dir = mkdtempSync(join(tmpdir(), 'byok-cli-new-'));
      env = { ...base, FH_DATABASE_URL: '', FH_PGLITE_DIR: dir };
      cleanup = async () => rmSync(dir, { recursive: true, force: true });
    }
  });
  afterAll(() => cleanup?.());

  it('--version and -v print the package version', async () => {
    const { version } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
    for (const flag of ['--version', '-v']) {
      const r = await cli([flag], env);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`drizzle-byok ${version}\n`);
    }
    const j = await cli(['--version', '--json'], env);
    expect(JSON.parse(j.stdout)).toEqual({ version });
  });

  it('without the key store: says to run `drizzle-byok migrate install`, in CLI words, without the query', async () => {
    const r = await cli(['keys', 'status', 'acme'], env);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(
      /^drizzle-byok: the drizzle-byok key store does not exist in this database \(relation "byok\.[a-z_]+" does not exist\): create it with `drizzle-byok migrate install`.* \[ERR_BYOK_KEY_STORE_MISSING\]\n$/,
    );
    expect(r.stderr).not.toMatch(API_WORDS);
    const j = await cli(['keys', 'status', 'acme', '--json'], env);
    expect(JSON.parse(j.stdout).error.code).toBe('ERR_BYOK_KEY_STORE_MISSING');
  });

  it('after `migrate install`: shred of a tenant without keys is refused unless --allow-no-keys', async () => {
    const install = await cli(['migrate', 'install'], env);
    expect(install.code, install.stderr).toBe(0);
    expect(install.stderr).toBe('');
    expect(install.stdout).not.toMatch(/NOTICE|already exists/i);
    expect((await cli(['migrate', 'install'], env)).stdout).toBe(
      'key store and retrofit checkpoint tables are installed\n',
    );
    const typo = await cli(['keys', 'shred', 'acme ', '--confirm', 'acme '], env);
    expect(typo.code).toBe(1);
    expect(typo.stderr).toMatch(
      /tenant "acme " has no data keys \(note: the id has leading or trailing spaces\)/,
    );
    expect(typo.stderr).toMatch(/add --allow-no-keys/);
    expect(typo.stderr).not.toMatch(API_WORDS);
    const dry = await cli(['keys', 'shred', 'acme', '--confirm', 'acme', '--dry-run'], env);
    expect(dry.code).toBe(1);
    expect(dry.stderr).toMatch(/keys shred would refuse.*--allow-no-keys/);
    const forced = await cli(['keys', 'shred', 'acme', '--confirm', 'acme', '--allow-no-keys'], env);
    expect(forced.code, forced.stderr).toBe(0);
    expect(forced.stdout).toMatch(/tenant acme shredded: 0 data key version\(s\) destroyed/);
    const wrong = await cli(['keys', 'shred', 'acme', '--confirm', 'acne'], env);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toMatch(/--confirm acme/);
  });

  it('an unreachable database: a clear message naming the address, exit 1', async () => {
    const r = await cli(['keys', 'status', 'acme'], {
      ...env,
      FH_DATABASE_URL: 'postgres://app@127.0.0.1:1/app',
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /^drizzle-byok: error: cannot use the database: .*ECONNREFUSED.*127\.0\.0\.1:1.*Check that PostgreSQL is running.* \[ERR_BYOK_DATABASE_UNAVAILABLE\]\n$/,
    );
    expect(r.stderr).not.toMatch(API_WORDS);
  });
});
