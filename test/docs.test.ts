import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { type DocBlock, docBlocks, forDrizzle } from './helpers/doc-blocks.ts';
import { DRIZZLE_1 } from './helpers/drizzle-version.ts';

const root = fileURLToPath(new URL('..', import.meta.url));

/** The package's public entry points, resolved to their sources (what `drizzle-byok/*` users import). */
const ENTRY_POINTS: Record<string, string> = {
  'drizzle-byok': 'src/index.ts',
  'drizzle-byok/schema': 'src/schema.ts',
  'drizzle-byok/aws': 'src/kms/aws/index.ts',
  'drizzle-byok/gcp': 'src/kms/gcp/index.ts',
  'drizzle-byok/azure': 'src/kms/azure/index.ts',
  'drizzle-byok/vault': 'src/kms/vault/index.ts',
  'drizzle-byok/testing': 'src/testing/index.ts',
  'drizzle-byok/testing/aws': 'src/testing/aws/index.ts',
  'drizzle-byok/testing/gcp': 'src/testing/gcp/index.ts',
  'drizzle-byok/testing/azure': 'src/testing/azure/index.ts',
  'drizzle-byok/testing/vault': 'src/testing/vault/index.ts',
};

interface Written {
  readonly block: DocBlock;
  /** Lines put before the block's code in its file (the prelude). */
  readonly offset: number;
}

/**
 * Writes a document's blocks as a small project under `dir` and typechecks it like the package's
 * own sources (strict tsconfig). Returns one line per error: `README.md:123 (ts block 4, "Quickstart"): TS2304 ...`.
 */
function checkDoc(docPath: string, docName: string, dir: string): { errors: string[]; checked: number } {
  const major = DRIZZLE_1 ? '1.0' : '0.45';
  const { blocks: all, prelude: common, preludes } = docBlocks(docPath, docName);
  const blocks = forDrizzle(all, major);
  const prelude = preludes[major] ?? common;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const written = new Map<string, Written>();
  const write = (path: string, block: DocBlock, text: string, offset: number) => {
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, text);
    written.set(path, { block, offset });
  };
  const files = new Map<string, DocBlock>();
  const variants: DocBlock[] = [];
  for (const b of blocks) {
    if (b.fragment) continue;
    if (b.file === undefined) {
      const pre = prelude.split('\n').length - 1;
      write(join(dir, `block-${b.index}.ts`), b, `${prelude}${b.code}\nexport {};\n`, pre);
    } else if (files.has(b.file)) variants.push(b);
    else {
      files.set(b.file, b);
      write(join(dir, b.file), b, b.code, 0);
    }
  }
  variants.forEach((v, i) => {
    const vdir = join(dir, `variant-${i + 1}`);
    for (const [name, b] of files) if (name !== v.file) write(join(vdir, name), b, b.code, 0);
    write(join(vdir, v.file!), v, v.code, 0);
  });
  const config = ts.getParsedCommandLineOfConfigFile(
    join(root, 'tsconfig.json'),
    {},
    {
      ...ts.sys,
      onUnRecoverableConfigFileDiagnostic: () => {},
    },
  )!;
  const paths: Record<string, string[]> = {};
  for (const [spec, file] of Object.entries(ENTRY_POINTS)) paths[spec] = [join(root, file)];
  const program = ts.createProgram([...written.keys()], { ...config.options, paths, noEmit: true });
  const errors: string[] = [];
  for (const d of ts.getPreEmitDiagnostics(program)) {
    const w = d.file === undefined ? undefined : written.get(d.file.fileName);
    if (w === undefined) {
      // An error outside the blocks (e.g. in a variant's copy of a file) still fails the check.
      if (d.file !== undefined && !d.file.fileName.startsWith(dir)) continue;
      errors.push(`${docName}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`);
      continue;
    }
    const { line } = d.file!.getLineAndCharacterOfPosition(d.start ?? 0);
    const docLine = w.block.line + 1 + (line - w.offset);
    errors.push(
      `${docName}:${docLine} (ts block ${w.block.index}${w.block.file ? ` ${w.block.file}` : ''}, "${w.block.section}"): ` +
        `TS${d.code} ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`,
    );
  }
  return { errors, checked: blocks.filter((b) => !b.fragment).length };
}

const DOCS = [
  'README.md',
  ...readdirSync(join(root, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
];

describe('documentation code blocks', () => {
  it.each(DOCS)('every TypeScript block of %s typechecks against the package', (doc) => {
    const { errors } = checkDoc(
      join(root, doc),
      doc,
      join(root, '.tmp', 'doc-check', doc.replace(/\W/g, '_')),
    );
    expect(
      errors,
      `TypeScript errors in ${doc} code blocks (file:line of the doc):\n${errors.join('\n')}`,
    ).toEqual([]);
  });

  it('fragments (blocks not typechecked) stay rare, and each is marked explicitly', () => {
    const all = DOCS.flatMap((d) => docBlocks(join(root, d), d).blocks);
    const fragments = all.filter((b) => b.fragment);
    expect(all.length).toBeGreaterThan(10);
    expect(fragments.length, fragments.map((b) => `${b.doc}:${b.line}`).join(', ')).toBeLessThanOrEqual(
      Math.ceil(all.length / 5),
    );
  });

  it('the check fails on a broken block and points at the document line', () => {
    const dir = join(root, '.tmp', 'doc-check', 'self-test');
    mkdirSync(dir, { recursive: true });
    const doc = join(dir, 'doc.md');
    writeFileSync(
      doc,
      [
        '# Title',
        '',
        '<!-- doc-check prelude',
        "import type { Keyring } from 'drizzle-byok';",
        'declare const keyring: Keyring;',
        '-->',
        '',
        '```ts',
        '// a.ts',
        "export const n: number = 'one';",
        '```',
        '',
        '```ts',
        "await keyring.status('acme');",
        'await keyring.noSuchMethod();',
        '```',
        '',
        '<!-- doc-check: fragment -->',
        '```ts',
        'name: encrypted.text(',
        '```',
        '',
      ].join('\n'),
    );
    const { errors, checked } = checkDoc(doc, 'doc.md', join(dir, 'out'));
    expect(checked).toBe(2);
    expect(errors).toHaveLength(2);
    expect(errors[0]).toMatch(/^doc\.md:10 \(ts block 1 a\.ts, "Title"\): TS2322 /);
    expect(errors[1]).toMatch(/^doc\.md:15 \(ts block 2, "Title"\): TS2339 Property 'noSuchMethod'/);
    expect(relative(root, dir)).toBe('.tmp/doc-check/self-test');
    rmSync(dir, { recursive: true, force: true });
  });
});
