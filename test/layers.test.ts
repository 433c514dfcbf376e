import {
  appendFileSync,
  cpSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cruise, type ICruiseOptions, type ICruiseResult, type IViolation } from 'dependency-cruiser';
import extractDepcruiseOptions from 'dependency-cruiser/config-utl/extract-depcruise-options';
import extractTSConfig from 'dependency-cruiser/config-utl/extract-ts-config';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

/**
 * The dependency rules of `.dependency-cruiser.cjs` (run by `npm run check:layers` in `npm test`):
 * the real src/ passes, and a copy of src/ with deliberate violations added fails on each, by the
 * rule meant to catch it.
 */

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

async function cruiseSrc(baseDir: string, overrides: ICruiseOptions = {}): Promise<ICruiseResult> {
  const options = await extractDepcruiseOptions(join(root, '.dependency-cruiser.cjs'));
  const tsConfig = extractTSConfig(join(baseDir, 'tsconfig.json'));
  const r = await cruise(
    ['src'],
    { ...options, baseDir, outputType: 'json', ...overrides },
    {},
    { tsConfig },
  );
  return (typeof r.output === 'string' ? JSON.parse(r.output) : r.output) as ICruiseResult;
}

const errors = (r: ICruiseResult): IViolation[] =>
  r.summary.violations.filter((v) => v.rule.severity === 'error');

const brief = (v: IViolation) => `${v.rule.name}: ${v.from} -> ${v.to}`;

describe('dependency rules on the real src/', () => {
  it('holds: no error-level violation', async () => {
    const r = await cruiseSrc(root);
    expect(r.summary.totalCruised).toBeGreaterThan(100);
    expect(errors(r).map(brief)).toEqual([]);
  });

  // dependency-cruiser reports one cycle per import, the first it finds: a cycle through a
  // type-only import could hide a run-time one through the same import. The graph without
  // type-only imports has no cycle at all.
  it('has no cycle among run-time imports', async () => {
    const r = await cruiseSrc(root, { tsPreCompilationDeps: false });
    const cycles = r.summary.violations.filter((v) => v.rule.name.startsWith('no-circular'));
    expect(cycles.map(brief)).toEqual([]);
    expect(r.summary.totalDependenciesCruised).toBeGreaterThan(100);
  });

  it('runs in npm test, right after lint', () => {
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
      scripts: Record<string, string>;
    };
    expect(pkg.scripts['check:layers']).toBe('depcruise src --config .dependency-cruiser.cjs');
    expect(pkg.scripts.test).toMatch(/npm run lint && npm run check:layers &&/);
  });
});

describe('dependency rules on a copy of src/ with deliberate violations', () => {
  let dir: string;
  let result: ICruiseResult;

  /** Files added to the copy, each breaking one rule (or, for type-only cycles, warned about). */
  const added: Record<string, string> = {
    // crypto/ is pure: no drizzle-orm.
    'src/crypto/uses-orm.ts': "import { sql } from 'drizzle-orm';\nexport const one = sql`1`;\n",
    // kms/ sits below keys/.
    'src/kms/uses-keys.ts': "import { keysOf } from '../keys/access.ts';\nexport const access = keysOf;\n",
    // store/ sits below the tenant scope.
    'src/store/uses-scope.ts':
      "import { currentTenant } from '../scope.ts';\nexport const tenant = currentTenant;\n",
    // keys/ sits below drizzle/ (type-only imports count too).
    'src/keys/uses-drizzle.ts':
      "import type { ReadMode } from '../drizzle/columns.ts';\nexport type Mode = ReadMode;\n",
    // drizzle/ sits below blind/: the core knows no plugin of the layer above.
    'src/drizzle/uses-blind.ts':
      "import { blindIndexPlugin } from '../blind/plugin.ts';\nexport const p = blindIndexPlugin;\n",
    // blind/ sits below migrate/.
    'src/blind/uses-migrate.ts':
      "import type { RetrofitColumn } from '../migrate/index.ts';\nexport type C = RetrofitColumn;\n",
    // A run-time cycle.
    'src/keys/cycle-a.ts': "import { b } from './cycle-b.ts';\nexport const a = () => b;\n",
    'src/keys/cycle-b.ts': "import { a } from './cycle-a.ts';\nexport const b = () => a;\n",
    // A cycle through a type-only import: a warning, not an error.
    'src/keys/type-cycle-a.ts':
      "import type { B } from './type-cycle-b.ts';\nexport interface A { b?: B }\nexport const aa = 1;\n",
    'src/keys/type-cycle-b.ts':
      "import { aa } from './type-cycle-a.ts';\nexport interface B { n: typeof aa }\n",
    // An SDK outside its folder, and one provider's SDK in another provider's files.
    'src/keys/uses-aws-sdk.ts':
      "import { KMSClient } from '@aws-sdk/client-kms';\nexport const C = KMSClient;\n",
    'src/kms/aws/with-gax.ts': "import { GoogleError } from 'google-gax';\nexport const E = GoogleError;\n",
    'src/testing/vault/uses-azure.ts':
      "import { KeyClient } from '@azure/keyvault-keys';\nexport const K = KeyClient;\n",
    // The test servers are imported by nothing outside src/testing/, and import no CLI.
    'src/drizzle/uses-testing.ts':
      "import { startAwsKmsServer } from '../testing/aws/index.ts';\nexport const s = startAwsKmsServer;\n",
    'src/testing/uses-cli.ts':
      "import { defineConfig } from '../cli/config.ts';\nexport const d = defineConfig;\n",
    // Nothing imports an entry point (errors.ts importing a layer is appended below).
    'src/migrate/uses-entry.ts': "import { withTenant } from '../index.ts';\nexport const w = withTenant;\n",
    // A typo: an import that resolves to nothing would escape every other rule.
    'src/drizzle/typo.ts': "import { x } from './no-such-file.ts';\nexport const y = x;\n",
  };

  const expected = [
    'drizzle-orm-where-needed: src/crypto/uses-orm.ts -> node_modules/drizzle-orm',
    'layer-kms: src/kms/uses-keys.ts -> src/keys/access.ts',
    'layer-store: src/store/uses-scope.ts -> src/scope.ts',
    'layer-keys: src/keys/uses-drizzle.ts -> src/drizzle/columns.ts',
    'layer-drizzle: src/drizzle/uses-blind.ts -> src/blind/plugin.ts',
    'layer-blind: src/blind/uses-migrate.ts -> src/migrate/index.ts',
    'no-circular: src/keys/cycle-a.ts <-> src/keys/cycle-b.ts',
    'sdk-aws: src/keys/uses-aws-sdk.ts -> node_modules/@aws-sdk/client-kms',
    'sdk-gcp: src/kms/aws/with-gax.ts -> node_modules/google-gax',
    'sdk-azure: src/testing/vault/uses-azure.ts -> node_modules/@azure/keyvault-keys',
    'testing-is-a-leaf: src/drizzle/uses-testing.ts -> src/testing/aws/index.ts',
    'testing-not-cli: src/testing/uses-cli.ts -> src/cli/config.ts',
    'entry-files-not-imported: src/migrate/uses-entry.ts -> src/index.ts',
    'errors-is-a-leaf: src/errors.ts -> src/crypto/crc32c.ts',
    'not-to-unresolvable: src/drizzle/typo.ts -> ./no-such-file.ts',
  ];

  /**
   * `rule: from -> to`, with a package's resolved file cut to the package; a cycle (reported once,
   * from whichever of its files comes first) as `rule: a <-> b` in file order.
   */
  const short = (v: IViolation) =>
    v.cycle
      ? `${v.rule.name}: ${[v.from, v.to].sort().join(' <-> ')}`
      : `${v.rule.name}: ${v.from} -> ${v.to.replace(/^(node_modules\/(@[^/]+\/)?[^/]+)\/.*$/, '$1')}`;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'byok-layers-'));
    cpSync(join(root, 'src'), join(dir, 'src'), { recursive: true });
    cpSync(join(root, 'tsconfig.json'), join(dir, 'tsconfig.json'));
    symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'), 'dir');
    for (const [file, text] of Object.entries(added)) writeFileSync(join(dir, file), text);
    // errors.ts, shared by every layer, made to import a layer.
    appendFileSync(join(dir, 'src/errors.ts'), "export { crc32c as checksum } from './crypto/crc32c.ts';\n");
    // The symlinked node_modules is kept as `node_modules/...` in paths, as in the repository.
    result = await cruiseSrc(dir, { preserveSymlinks: true });
  });

  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('reports each deliberate violation by the rule meant for it, and nothing else', () => {
    expect(errors(result).map(short).sort()).toEqual([...expected].sort());
  });

  it('the copy still resolves its packages: the unchanged files raise no error', () => {
    const fromAdded = new Set([...Object.keys(added), 'src/errors.ts']);
    expect(errors(result).filter((v) => !fromAdded.has(v.from))).toEqual([]);
    expect(result.summary.totalCruised).toBeGreaterThan(Object.keys(added).length + 100);
  });

  it('warns about a cycle through a type-only import, without failing', () => {
    const warned = result.summary.violations.filter((v) => v.rule.severity === 'warn').map(short);
    expect(warned).toContain('no-circular-type-only: src/keys/type-cycle-a.ts <-> src/keys/type-cycle-b.ts');
    expect(errors(result).some((v) => v.from.includes('type-cycle'))).toBe(false);
  });

  it('without type-only imports, sees the run-time cycle and not the type-only one', async () => {
    const r = await cruiseSrc(dir, { preserveSymlinks: true, tsPreCompilationDeps: false });
    const cycles = r.summary.violations.filter((v) => v.rule.name.startsWith('no-circular')).map(short);
    expect(cycles).toEqual(['no-circular: src/keys/cycle-a.ts <-> src/keys/cycle-b.ts']);
  });

  it('fails the command: the advised exit code is non-zero', () => {
    expect(result.summary.error).toBe(expected.length);
    expect(result.summary.advisedExitCode).not.toBe(0);
  });
});
