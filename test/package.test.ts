import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { MIGRATIONS } from '../src/store/migrations.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const run = (args: string[]) => execFileSync(process.execPath, args, { cwd: root, encoding: 'utf8' });

/** The built package as users get it (`npm test` builds it first). */
describe('package', () => {
  it('is built with ESM, CJS and types for every entry point', () => {
    const pkg = JSON.parse(readFileSync(`${root}/package.json`, 'utf8'));
    for (const [sub, target] of Object.entries<Record<string, Record<string, string>> | string>(
      pkg.exports,
    )) {
      if (typeof target === 'string') continue;
      for (const cond of ['import', 'require']) {
        for (const file of Object.values(target[cond]!))
          expect(existsSync(`${root}/${file}`), `${sub} ${cond} ${file}`).toBe(true);
      }
    }
    expect(pkg.engines.node).toBe('>=22');
  });

  it('the main entry loads through require and import without loading any cloud SDK', () => {
    const cjs = run([
      '-e',
      `const m = require('drizzle-byok'); const loaded = Object.keys(require.cache);
       console.log(JSON.stringify({ ok: typeof m.withEncryption === 'function' && typeof m.encrypted.text === 'function',
         sdk: loaded.filter((k) => /@aws-sdk|@google-cloud|google-gax|@grpc/.test(k)).length }));`,
    ]);
    expect(JSON.parse(cjs)).toEqual({ ok: true, sdk: 0 });
    const esm = run([
      '--input-type=module',
      '-e',
      `const m = await import('drizzle-byok'); const s = await import('drizzle-byok/schema');
       const { createRequire } = await import('node:module'); const req = createRequire(import.meta.url);
       console.log(JSON.stringify({ ok: typeof m.createKeyring === 'function' && !!s.byokDeks,
         sdk: Object.keys(req.cache).filter((k) => /@aws-sdk|@google-cloud|google-gax|@grpc/.test(k)).length }));`,
    ]);
    expect(JSON.parse(esm)).toEqual({ ok: true, sdk: 0 });
  });

  it('provider and testing entry points load their SDKs on demand', () => {
    const out = run([
      '--input-type=module',
      '-e',
      `const aws = await import('drizzle-byok/aws'); const gcp = await import('drizzle-byok/gcp');
       const t = await import('drizzle-byok/testing');
       console.log(JSON.stringify([typeof aws.awsKms, typeof gcp.gcpKms, typeof t.startAwsKmsServer, typeof t.startGcpKmsServer]));`,
    ]);
    expect(JSON.parse(out)).toEqual(['function', 'function', 'function', 'function']);
  });

  it('installs a drizzle-byok command (bin) that runs from the build', () => {
    const pkg = JSON.parse(readFileSync(`${root}/package.json`, 'utf8'));
    const bin = `${root}/${pkg.bin['drizzle-byok']}`;
    expect(readFileSync(bin, 'utf8').startsWith('#!/usr/bin/env node')).toBe(true);
    expect(run([bin, '--help'])).toMatch(/^Usage: drizzle-byok <command>/);
  });

  it('packs LICENSE, README, dist and migrations, and no source maps, tests or sources', () => {
    const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], {
      cwd: root,
      encoding: 'utf8',
    });
    const files: string[] = JSON.parse(out)[0].files.map((f: { path: string }) => f.path);
    expect(files).toContain('LICENSE');
    expect(files).toContain('README.md');
    expect(files).toContain('migrations/0001_key_store.sql');
    const stray = files.filter(
      (f) => !/^(dist\/|migrations\/[^/]+\.sql$|LICENSE$|README\.md$|package\.json$)/.test(f),
    );
    expect(stray).toEqual([]);
    expect(files.filter((f) => f.endsWith('.map'))).toEqual([]);
    expect(readFileSync(`${root}/LICENSE`, 'utf8')).toMatch(/Apache License\s+Version 2\.0, January 2004/);
  });

  it('names its repository, home page and issue tracker, and README links work from the registry page', () => {
    const pkg = JSON.parse(readFileSync(`${root}/package.json`, 'utf8'));
    expect(pkg.license).toBe('Apache-2.0');
    expect(pkg.repository).toEqual({
      type: 'git',
      url: 'git+https://github.com/drizzle-byok/drizzle-byok.git',
    });
    expect(pkg.homepage).toBe('https://github.com/drizzle-byok/drizzle-byok#readme');
    expect(pkg.bugs).toEqual({ url: 'https://github.com/drizzle-byok/drizzle-byok/issues' });
    // docs/ and examples/ are not in the tarball: README links to them must be absolute.
    const readme = readFileSync(`${root}/README.md`, 'utf8');
    const relative = [...readme.matchAll(/\]\((?!https?:\/\/|#|mailto:)([^)]+)\)/g)].map((m) => m[1]);
    expect(relative).toEqual([]);
    for (const m of readme.matchAll(
      /\]\(https:\/\/github\.com\/drizzle-byok\/drizzle-byok\/blob\/main\/([^)#]+)/g,
    )) {
      expect(existsSync(`${root}/${m[1]}`), m[1]).toBe(true);
    }
  });

  it('types resolve for every subpath under moduleResolution node10 (typesVersions)', () => {
    const pkg = JSON.parse(readFileSync(`${root}/package.json`, 'utf8'));
    for (const sub of Object.keys(pkg.exports)) {
      if (sub === '.' || sub.includes('*') || sub.endsWith('.json')) continue;
      const target = pkg.typesVersions['*'][sub.slice(2)];
      expect(target, sub).toEqual([pkg.exports[sub].import.types]);
    }
  });

  it('npm run docs builds the TypeDoc API reference', () => {
    const out = `${root}/.tmp/api-docs-test`;
    execFileSync('npx', ['typedoc', '--out', out, '--logLevel', 'Error'], { cwd: root, encoding: 'utf8' });
    const index = readFileSync(`${out}/index.html`, 'utf8');
    expect(index).toMatch(/drizzle-byok/);
    expect(readdirSync(out)).toContain('modules');
    rmSync(out, { recursive: true, force: true });
  });

  it('the built package runs the shipped migrations/*.sql byte for byte, inlined (no file I/O in dist)', () => {
    const files = readdirSync(`${root}/migrations`)
      .filter((f) => f.endsWith('.sql'))
      .sort()
      .map((f) => readFileSync(`${root}/migrations/${f}`, 'utf8'));
    expect(files.length).toBe(MIGRATIONS.length);
    expect(MIGRATIONS).toEqual(files);
    const names = [
      'KEY_STORE_MIGRATION',
      'RETROFIT_MIGRATION',
      'BLIND_INDEX_MIGRATION',
      'KEY_IDENTITY_MIGRATION',
    ];
    const script = `console.log(JSON.stringify(${JSON.stringify(names)}.map((n) => m[n])))`;
    const cjs = run(['-e', `const m = require('drizzle-byok'); ${script}`]);
    const esm = run(['--input-type=module', '-e', `const m = await import('drizzle-byok'); ${script}`]);
    expect(JSON.parse(cjs)).toEqual(files);
    expect(JSON.parse(esm)).toEqual(files);
    for (const f of readdirSync(`${root}/dist`, { recursive: true, encoding: 'utf8' })) {
      if (!/\.c?js$/.test(f)) continue;
      expect(readFileSync(`${root}/dist/${f}`, 'utf8'), f).not.toMatch(/readFileSync\([^)]*migrations/);
    }
  });

  it('no schema DDL is written in src/ (error messages may suggest an ALTER): migrations/*.sql is its only source', () => {
    const offenders: string[] = [];
    for (const f of readdirSync(`${root}/src`, { recursive: true, encoding: 'utf8' })) {
      if (!f.endsWith('.ts')) continue;
      if (
        /\bCREATE\s+(TABLE|SCHEMA|(UNIQUE\s+)?INDEX|(OR\s+REPLACE\s+)?FUNCTION)\b/i.test(
          readFileSync(`${root}/src/${f}`, 'utf8'),
        )
      ) {
        offenders.push(f);
      }
    }
    expect(offenders).toEqual([]);
  });
});
