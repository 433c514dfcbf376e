import { readFileSync } from 'node:fs';

/**
 * The TypeScript blocks of a Markdown document, as the docs test typechecks them.
 *
 * Rules (also in docs/README: "Code blocks"):
 * - every ```ts (or ```typescript) fence is a block, indented ones (inside list items) included;
 * - a block whose first line is `// <path>.ts` (text may follow) is a file of the document's small
 *   project: other blocks import it by that path (`import { db } from './db.ts'`). A later block
 *   with the same path is a variant (e.g. db.ts on a server instead of PGlite): it is checked in
 *   place of the first, with the other files;
 * - any other block is a module of its own; the document's prelude, an HTML comment
 *   `<!-- doc-check prelude ... -->` (invisible when rendered), is put before it, to declare the
 *   names its snippets use (`declare const db: ...`); `<!-- doc-check prelude drizzle 1.0 ... -->`
 *   is the prelude on that major instead (a database typed by its relations, for example);
 * - `<!-- doc-check: fragment -->` on the line before a fence: a deliberate fragment (a few
 *   properties of an object, a single column): not typechecked. Kept rare.
 * - `<!-- doc-check: drizzle 0.45 -->` / `<!-- doc-check: drizzle 1.0 -->` on the line before a
 *   fence: the block is for that Drizzle ORM major only (relations v1 / v2); it is checked on that
 *   major and left out on the other (see `forDrizzle`).
 */
export interface DocBlock {
  readonly doc: string;
  /** 1-based line of the opening fence. */
  readonly line: number;
  /** 1-based index among the document's TypeScript blocks. */
  readonly index: number;
  readonly code: string;
  /** `// schema.ts` → 'schema.ts'. */
  readonly file: string | undefined;
  readonly fragment: boolean;
  /** The heading the block is under. */
  readonly section: string;
  /** The Drizzle ORM major the block is written for, when it is for one only. */
  readonly drizzle: '0.45' | '1.0' | undefined;
}

/** The blocks a document shows users of one Drizzle major (blocks for the other major left out). */
export function forDrizzle(blocks: readonly DocBlock[], major: '0.45' | '1.0'): DocBlock[] {
  return blocks.filter((b) => b.drizzle === undefined || b.drizzle === major);
}

export function docBlocks(
  path: string,
  doc: string,
): { blocks: DocBlock[]; prelude: string; preludes: { '0.45'?: string; '1.0'?: string } } {
  const lines = readFileSync(path, 'utf8').split('\n');
  const blocks: DocBlock[] = [];
  let prelude = '';
  const preludes: { '0.45'?: string; '1.0'?: string } = {};
  let section = '';
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (/^#{1,6} /.test(line)) section = line.replace(/^#+ /, '');
    const pre = /^<!-- doc-check prelude(?: drizzle (0\.45|1\.0))?\s*$/.exec(line);
    if (pre) {
      const body: string[] = [];
      for (i++; i < lines.length && !/^-->\s*$/.test(lines[i]!); i++) body.push(lines[i]!);
      if (pre[1] === undefined) prelude = `${body.join('\n')}\n`;
      else preludes[pre[1] as '0.45' | '1.0'] = `${body.join('\n')}\n`;
      continue;
    }
    const open = /^(\s*)(`{3,})(ts|typescript)\s*$/.exec(line);
    if (!open) {
      const other = /^(\s*)(`{3,})\S*\s*$/.exec(line);
      if (other) {
        // Skip any other fenced block whole, so its contents are never read as Markdown.
        for (i++; i < lines.length && !new RegExp(`^\\s*${other[2]}\\s*$`).test(lines[i]!); i++);
      }
      continue;
    }
    const indent = open[1]!.length;
    const fence = open[2]!;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && !new RegExp(`^\\s*${fence}\\s*$`).test(lines[i]!); i++) {
      body.push(lines[i]!.slice(Math.min(indent, lines[i]!.length - lines[i]!.trimStart().length)));
    }
    const fragment = start > 0 && /^\s*<!-- doc-check: fragment -->\s*$/.test(lines[start - 1]!);
    const drizzle =
      start > 0 ? /^\s*<!-- doc-check: drizzle (0\.45|1\.0) -->\s*$/.exec(lines[start - 1]!)?.[1] : undefined;
    const file = /^\/\/ ([\w./-]+\.ts)\b/.exec(body[0] ?? '')?.[1];
    blocks.push({
      doc,
      line: start + 1,
      index: blocks.length + 1,
      code: `${body.join('\n')}\n`,
      file,
      fragment,
      section,
      drizzle: drizzle as DocBlock['drizzle'],
    });
  }
  return { blocks, prelude, preludes };
}
