import type { FieldKey } from '../crypto/aead.ts';
import type { Codec } from '../crypto/codecs.ts';
import type { DekEntry } from '../keys/cache.ts';

/**
 * The state the library attaches to the columns it protects, apart from the column types that
 * build it: the encrypted-column state (`columns.ts`), which the sealed placeholders and the query
 * plugins read, and the generic protected-column mark the guard reads (any plugin's column, e.g. a
 * blind index, sets it).
 */

/**
 * How a column behaves while a retrofit is under way:
 * - `strict` (default): only ciphertext is accepted on read; plaintext is a decryption failure.
 * - `passthrough`: values that are not ciphertext are returned as they are (text storage, during a
 *   backfill); every write is encrypted.
 * - `read-only`: reads as `passthrough`, and every write is refused with `WriteRefusedError`
 *   (freeze a column while it is rolled back or re-keyed).
 */
export type ReadMode = 'strict' | 'passthrough' | 'read-only';

/** What the middleware knows about an encrypted column; attached to the built Drizzle column. */
export interface EncryptedColumnState {
  readonly codec: Codec<unknown>;
  readonly context: string;
  /** `table.column`, for messages. */
  readonly label: string;
  readonly storage: 'bytea' | 'text';
  readonly mode: ReadMode;
  /** Last (entry, field key) used: avoids a map lookup per field on the hot path. */
  memo: { entry: DekEntry; fk: FieldKey } | undefined;
}

export const COLUMN_STATE: unique symbol = Symbol.for('drizzle-byok:encrypted-column') as never;

/** The encrypted-column state of a Drizzle column (also through table aliases), or undefined. */
export function encryptedState(column: unknown): EncryptedColumnState | undefined {
  return (column as { [COLUMN_STATE]?: EncryptedColumnState } | null)?.[COLUMN_STATE];
}

/** What the guard needs of a column it protects: the name it gives in its refusals. */
export interface GuardedColumnState {
  /** `table.column`, for messages. */
  readonly label: string;
}

/**
 * The mark of a column the guard treats like an encrypted one (its values are opaque to SQL) without
 * being one: set by the plugin that defines the column type (a blind index column).
 */
export const GUARDED_STATE: unique symbol = Symbol.for('drizzle-byok:guarded-column') as never;

/** Marks a built column as protected by the guard. */
export function markGuarded(column: object, state: GuardedColumnState): void {
  Object.defineProperty(column, GUARDED_STATE, { value: state, enumerable: false });
}

/** The state of a column the guard protects, encrypted or marked, or undefined. */
export function guardedState(c: unknown): GuardedColumnState | undefined {
  if (c === null || typeof c !== 'object') return undefined;
  return (
    (c as { [COLUMN_STATE]?: EncryptedColumnState })[COLUMN_STATE] ??
    (c as { [GUARDED_STATE]?: GuardedColumnState })[GUARDED_STATE]
  );
}
