// Packs the package as `npm publish` would (from the current build, without re-running prepack),
// then lints the tarball with publint (strict) and @arethetypeswrong/cli (every resolution mode,
// node10 included). Part of `npm test`; exits non-zero on any finding.
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const dir = join(root, '.tmp', 'check-package');
rmSync(dir, { recursive: true, force: true });
mkdirSync(dir, { recursive: true });
const out = execFileSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], {
  cwd: root,
  encoding: 'utf8',
});
const [info] = JSON.parse(out);
const tarball = join(dir, info.filename);
console.log(`check-package: ${info.filename}, ${info.entryCount} files, ${info.size} bytes packed`);
const bin = (name) => join(root, 'node_modules', '.bin', name);
try {
  execFileSync(bin('publint'), ['run', tarball, '--strict'], { cwd: root, stdio: 'inherit' });
  execFileSync(bin('attw'), [tarball, '--format', 'table-flipped', '--no-emoji'], {
    cwd: root,
    stdio: 'inherit',
  });
} catch {
  process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
