import { StringChunk, sql } from 'drizzle-orm';
import { describe, expect, it } from 'vitest';
import { chunkText } from '../src/drizzle/chunks.ts';

/** A StringChunk whose `value` has the given layout, as another drizzle-orm version would build it. */
function chunkWith(value: unknown): StringChunk {
  const c = new StringChunk('');
  (c as unknown as { value: unknown }).value = value;
  return c;
}

describe('SQL-chunk layouts the seam understands', () => {
  it('reads drizzle-orm 0.44 / 0.45 chunks (value: string[])', () => {
    expect(chunkText(chunkWith(['a = ', 'b']))).toBe('a = b');
    expect(chunkText(chunkWith([]))).toBe('');
  });

  it('reads drizzle-orm 1.0 chunks (value: string)', () => {
    expect(chunkText(chunkWith(' = '))).toBe(' = ');
    expect(chunkText(chunkWith(''))).toBe('');
  });

  it('reads the chunks the installed drizzle-orm builds', () => {
    const s = sql`select ${1} as one`;
    const text = s.queryChunks
      .filter((c) => c instanceof StringChunk)
      .map((c) => chunkText(c as StringChunk));
    expect(text.join('|')).toBe('select | as one');
  });

  it('refuses a layout it does not know rather than guessing (fail closed)', () => {
    for (const v of [undefined, null, 42, [1, 2], ['a', 3], { text: 'x' }]) {
      expect(() => chunkText(chunkWith(v))).toThrow(/unrecognised StringChunk layout/);
    }
  });
});
