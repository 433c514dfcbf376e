/**
 * The testing kit as a user installs it: the packed tarball (`npm pack`, the build `npm test` made)
 * unpacked into a temporary app's node_modules next to only the AWS SDK packages, drizzle-orm and
 * the package's own dependency. `drizzle-byok/testing/aws` and `drizzle-byok/aws` work there, and
 * the README's testing-kit code runs as written; `drizzle-byok/testing/gcp` names what it misses.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readmeBlock } from './helpers/readme.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
let app: string;

const node = (args: string[]) =>
  execFileSync(process.execPath, args, {
    cwd: app,
    encoding: 'utf8',
    env: { ...process.env, NODE_PATH: '' },
  });

describe('testing kit, installed from the packed tarball with only the AWS SDK', () => {
  beforeAll(() => {
    app = mkdtempSync(path.join(tmpdir(), 'byok-app-'));
    const out = execFileSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', app], {
      cwd: root,
      encoding: 'utf8',
    });
    const tarball = path.join(app, (JSON.parse(out) as { filename: string }[])[0]!.filename);
    const pkgDir = path.join(app, 'node_modules', 'drizzle-byok');
    mkdirSync(pkgDir, { recursive: true });
    execFileSync('tar', ['-xzf', tarball, '-C', pkgDir, '--strip-components=1']);
    writeFileSync(
      path.join(app, 'package.json'),
      JSON.stringify({ name: 'app', private: true, type: 'module' }),
    );
    // What `npm install drizzle-byok @aws-sdk/client-kms @aws-sdk/credential-providers` puts beside it:
    // its dependency, its required peer, the two AWS packages. Nothing from Google Cloud or gRPC.
    for (const dep of ['dataloader', 'drizzle-orm', '@aws-sdk/client-kms', '@aws-sdk/credential-providers']) {
      const target = path.join(app, 'node_modules', dep);
      mkdirSync(path.dirname(target), { recursive: true });
      symlinkSync(path.join(root, 'node_modules', dep), target, 'dir');
    }
  });
  afterAll(() => {
    if (app !== undefined) rmSync(app, { recursive: true, force: true });
  });

  it('the app has no Google Cloud or gRPC package', () => {
    const top = readdirSync(path.join(app, 'node_modules'));
    expect(top.filter((d) => /^@grpc|^@google-cloud|^google-gax/.test(d))).toEqual([]);
  });

  it("import('drizzle-byok/testing/aws') and require() work, and the README's code runs as written", () => {
    const esm = node([
      '--input-type=module',
      '-e',
      `const t = await import('drizzle-byok/testing/aws'); const s = await t.startAwsKmsServer();
       const k = s.createKey(); console.log(JSON.stringify([typeof t.startAwsKmsServer, k.arn.startsWith('arn:aws:kms:')])); await s.close();`,
    ]);
    expect(JSON.parse(esm)).toEqual(['function', true]);
    const cjs = node(['-e', `console.log(typeof require('drizzle-byok/testing/aws').startAwsKmsServer)`]);
    expect(cjs.trim()).toBe('function');
    writeFileSync(path.join(app, 'kms-test.mjs'), readmeBlock('### Testing kit', 'js'));
    expect(node(['kms-test.mjs']).trim()).toBe('32 1 enabled');
  });

  it('drizzle-byok/testing/gcp (and the sum, drizzle-byok/testing) say which package is missing', () => {
    for (const entry of ['drizzle-byok/testing/gcp', 'drizzle-byok/testing']) {
      const out = node([
        '--input-type=module',
        '-e',
        `try { await import('${entry}'); console.log('loaded'); } catch (e) { console.log(e.code, e.message.split('\\n')[0]); }`,
      ]);
      expect(out).toMatch(/^ERR_MODULE_NOT_FOUND .*(@grpc|@google-cloud|google-gax)/);
    }
  });
});
