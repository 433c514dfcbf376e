import type { StringChunk } from 'drizzle-orm';

/**
 * The text of a StringChunk on every supported Drizzle version: 0.45 keeps `value: string[]`,
 * 1.0 keeps `value: string`. Anything else is not a layout this library understands and is
 * refused (fail closed) rather than guessed at.
 */
export function chunkText(c: StringChunk): string {
  const v = (c as { value: unknown }).value;
  if (typeof v === 'string') return v;
  if (Array.isArray(v) && v.every((s) => typeof s === 'string')) return v.join('');
  throw new TypeError('drizzle-byok: unrecognised StringChunk layout (unsupported drizzle-orm version)');
}
