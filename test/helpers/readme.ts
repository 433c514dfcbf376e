import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));

/** The fenced blocks of `lang` in the README section that starts with `heading` (up to the next `## `). */
export function readmeBlocks(heading: string, lang: string): string[] {
  const readme = readFileSync(path.join(root, 'README.md'), 'utf8');
  const at = readme.indexOf(heading);
  if (at < 0) throw new Error(`README.md has no section ${heading}`);
  const next = readme.indexOf('\n## ', at + heading.length);
  const section = readme.slice(at, next < 0 ? undefined : next);
  return [...section.matchAll(new RegExp(`\`\`\`${lang}\\n([\\s\\S]*?)\`\`\``, 'g'))].map((m) => m[1]!);
}

/** The `index`th fenced block of `lang` in a README section. */
export function readmeBlock(heading: string, lang: string, index = 0): string {
  const block = readmeBlocks(heading, lang)[index];
  if (block === undefined) throw new Error(`README.md ${heading} has no ${lang} block ${index}`);
  return block;
}
