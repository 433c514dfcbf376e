import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const check = createRequire(import.meta.url)('../scripts/check-node.cjs') as {
  problem(version: string, needed: number): string | null;
  requiredMajor(): number;
};

/** A Node.js older than 22 on this machine (the system one), if any: the real refusal is tested with it. */
function oldNode(): string | undefined {
  const candidates = ['/usr/bin/node', '/usr/local/bin/node', '/bin/node'];
  for (const dir of (process.env.PATH ?? '').split(delimiter)) candidates.push(join(dir, 'node'));
  for (const c of candidates) {
    if (!existsSync(c)) continue;
    const r = spawnSync(c, ['-p', 'process.versions.node'], { encoding: 'utf8' });
    if (r.status === 0 && Number(r.stdout.split('.')[0]) < 22) return c;
  }
  return undefined;
}

const OLD_NODE = oldNode();

describe('Node.js version guard (scripts/check-node.cjs)', () => {
  it('asks for the major version of package.json engines.node', () => {
    expect(check.requiredMajor()).toBe(22);
  });

  it('refuses every version below the required major, accepts every one from it, and says how to get one', () => {
    fc.assert(
      fc.property(fc.nat(40), fc.nat(99), fc.nat(99), fc.boolean(), (major, minor, patch, v) => {
        const version = `${v ? 'v' : ''}${major}.${minor}.${patch}`;
        const message = check.problem(version, 22);
        if (major >= 22) return message === null;
        return (
          message?.includes('needs Node.js >= 22') &&
          message.includes(`this is Node.js v${major}.${minor}.${patch}`) &&
          message.includes('nvm install') &&
          message.includes('https://nodejs.org')
        );
      }),
    );
  });

  it('is wired before install, test, demo and bench, and npm is engine-strict', () => {
    const pkg = JSON.parse(
      execFileSync('node', ['-p', 'JSON.stringify(require("./package.json"))'], {
        cwd: root,
        encoding: 'utf8',
      }),
    );
    for (const s of ['preinstall', 'pretest', 'predemo', 'prebench'])
      expect(pkg.scripts[s], s).toMatch(/check-node\.cjs/);
    expect(
      execFileSync('npm', ['config', 'get', 'engine-strict'], { cwd: root, encoding: 'utf8' }).trim(),
    ).toBe('true');
  });

  // The machine's own old Node (CI and dev machines ship Node 20): the commands a newcomer types.
  describe.runIf(OLD_NODE !== undefined)(`with ${OLD_NODE ?? 'an old Node.js'}`, () => {
    const env = () => {
      const bin = dirname(OLD_NODE!);
      const clean: Record<string, string> = {
        HOME: process.env.HOME ?? '/root',
        PATH: `${bin}${delimiter}/usr/bin${delimiter}/bin`,
      };
      return clean;
    };

    it('the check script itself exits 1 with the message', () => {
      const r = spawnSync(OLD_NODE!, [join(root, 'scripts/check-node.cjs')], {
        encoding: 'utf8',
        env: env(),
      });
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/drizzle-byok needs Node\.js >= 22 \(tested on 24\); this is Node\.js v\d+\./);
      expect(r.stderr).toMatch(/nvm install/);
    });

    it('npm install, npm test, npm run demo and npm run bench stop at once, installing nothing', () => {
      const dir = mkdtempSync(join(tmpdir(), 'byok-old-node-'));
      try {
        for (const f of ['package.json', '.npmrc', '.nvmrc']) copyFileSync(join(root, f), join(dir, f));
        mkdirSync(join(dir, 'scripts'));
        copyFileSync(join(root, 'scripts/check-node.cjs'), join(dir, 'scripts/check-node.cjs'));
        const npm = (args: string[]) =>
          spawnSync('npm', args, { cwd: dir, encoding: 'utf8', env: env(), timeout: 120_000 });
        const install = npm(['install', '--no-audit', '--no-fund', '--prefer-offline']);
        expect(install.status, install.stderr).not.toBe(0);
        expect(install.stderr).toMatch(/EBADENGINE|needs Node\.js >= 22/);
        expect(install.stderr).toMatch(/>=22/);
        expect(existsSync(join(dir, 'node_modules')) ? readdirSync(join(dir, 'node_modules')) : []).toEqual(
          [],
        );
        // Past engine-strict (turned off, or another package manager): the preinstall check refuses.
        const forced = npm([
          'install',
          '--no-audit',
          '--no-fund',
          '--engine-strict=false',
          '--dry-run',
          '--prefer-offline',
        ]);
        expect(forced.status).not.toBe(0);
        expect(forced.stderr).toMatch(/needs Node\.js >= 22/);
        for (const script of ['test', 'demo', 'bench']) {
          const r = npm(['run', script]);
          expect(r.status, script).not.toBe(0);
          expect(r.stderr, script).toMatch(/drizzle-byok needs Node\.js >= 22[^\n]*\n[^\n]*Get a newer one/);
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }, 400_000);
  });
});
