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
 *   names its snippets use (`declare const db: ...`);
 * - `<!-- doc-check: fragment -->` on the line before a fence: a deliberate fragment (a few
 *   properties of an object, a single column): not typechecked. Kept rare.
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
}

export function docBlocks(path: string, doc: string): { blocks: DocBlock[]; prelude: string } {
  const lines = readFileSync(path, 'utf8').split('\n');
  const blocks: DocBlock[] = [];
  let prelude = '';
  let section = '';
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (/^#{1,6} /.test(line)) section = line.replace(/^#+ /, '');
    const pre = /^<!-- doc-check prelude\s*$/.exec(line);
    if (pre) {
      const body: string[] = [];
      for (i++; i < lines.length && !/^-->\s*$/.test(lines[i]!); i++) body.push(lines[i]!);
      prelude = `${body.join('\n')}\n`;
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
    const file = /^\/\/ ([\w./-]+\.ts)\b/.exec(body[0] ?? '')?.[1];
    blocks.push({
      doc,
      line: start + 1,
      index: blocks.length + 1,
      code: `${body.join('\n')}\n`,
      file,
      fragment,
      section,
    });
  }
  return { blocks, prelude };
}
