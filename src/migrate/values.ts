import { envelopeDekId, looksLikeEnvelope, TEXT_PREFIX, toBytes } from '../crypto/envelope.ts';
import { type EncryptedColumnState, passthrough } from '../drizzle/columns.ts';
import { ByokConfigError } from '../errors.ts';
import type { ResolvedColumn } from './target.ts';

/** What a stored value of an encrypted column is. */
export type Stored =
  | { readonly kind: 'null' }
  | { readonly kind: 'envelope'; readonly env: Buffer; readonly dekId: string }
  /** Looks like ciphertext (`byok1:` prefix) but is not a well-formed envelope. */
  | { readonly kind: 'malformed' }
  | { readonly kind: 'plain' };

const NULL: Stored = { kind: 'null' };
const MALFORMED: Stored = { kind: 'malformed' };
const PLAIN: Stored = { kind: 'plain' };

/** Classifies a raw value of an encrypted column as read from the driver (string, Buffer, Uint8Array). */
export function classify(state: EncryptedColumnState, raw: unknown): Stored {
  if (raw === null || raw === undefined) return NULL;
  if (state.storage === 'text') {
    if (typeof raw !== 'string') return MALFORMED;
    if (!raw.startsWith(TEXT_PREFIX)) return PLAIN;
    const env = Buffer.from(raw.slice(TEXT_PREFIX.length), 'base64');
    return looksLikeEnvelope(env) ? { kind: 'envelope', env, dekId: envelopeDekId(env) } : MALFORMED;
  }
  const b = toBytes(raw);
  if (b === undefined) return typeof raw === 'string' ? PLAIN : MALFORMED;
  return looksLikeEnvelope(b) ? { kind: 'envelope', env: b, dekId: envelopeDekId(b) } : PLAIN;
}

/** Codecs whose plaintext an in-place `text` column can hold (as the passthrough read mode reads it). */
const TEXT_PLAIN_CODECS = new Set(['text', 'numeric', 'json']);

/** Refuses in-place columns whose plaintext form the engine could not read back (see `passthrough`). */
export function assertRetrofittable(c: ResolvedColumn, where: string): void {
  if (c.kind === 'in-place' && c.state.storage === 'text' && !TEXT_PLAIN_CODECS.has(c.state.codec.name)) {
    throw new ByokConfigError(
      `${where}: ${c.label} is an encrypted.${c.state.codec.name} column with text storage; in-place text ` +
        'retrofit supports encrypted.text, encrypted.numeric and encrypted.json. Use the shadow-column ' +
        'path ({ source, target }) for this column.',
    );
  }
}

/**
 * The app value of an in-place plaintext value (the same rules as the passthrough read mode).
 * Throws when the stored value is not a valid plain form.
 */
export function inPlacePlainValue(state: EncryptedColumnState, raw: unknown): unknown {
  return passthrough(state, raw);
}

/** The stored plain form of an app value for an in-place column (what rollback writes). */
export function inPlaceStoredPlain(state: EncryptedColumnState, value: unknown): string | Buffer {
  if (state.storage === 'text') {
    if (state.codec.name === 'json') return JSON.stringify(value);
    return value as string;
  }
  return Buffer.from(state.codec.encode(value));
}

/**
 * SQL expression reading a shadow source column as text in a form `sourceValue` parses: `::text` for
 * every type but timestamps, read as ISO 8601 through `to_json`.
 */
export function sourceSelectSql(type: string): string {
  return type.startsWith('timestamp') ? "to_json(%s) #>> '{}'" : '%s::text';
}

/** The app value of a shadow source column's text form, for the target column's codec. */
export function sourceValue(state: EncryptedColumnState, text: string): unknown {
  switch (state.codec.name) {
    case 'text':
    case 'numeric':
      return text;
    case 'json':
      return JSON.parse(text);
    case 'integer': {
      const n = Number(text);
      if (!Number.isSafeInteger(n)) throw new TypeError('not an integer');
      return n;
    }
    case 'bigint':
      return BigInt(text);
    case 'boolean':
      if (text === 't' || text === 'true') return true;
      if (text === 'f' || text === 'false') return false;
      throw new TypeError('not a boolean');
    case 'timestamp': {
      const d = new Date(text);
      if (Number.isNaN(d.getTime())) throw new TypeError('not a timestamp');
      return d;
    }
    case 'bytes': {
      const b = toBytes(text);
      if (b === undefined) throw new TypeError('not bytea text');
      return new Uint8Array(b);
    }
    default:
      throw new TypeError(`no plain form for codec ${state.codec.name}`);
  }
}

/** The text form of an app value written back to a shadow source column (cast by the database). */
export function sourceText(state: EncryptedColumnState, value: unknown): string {
  switch (state.codec.name) {
    case 'json':
      return JSON.stringify(value);
    case 'timestamp':
      return (value as Date).toISOString();
    case 'bytes':
      return `\\x${Buffer.from(value as Uint8Array).toString('hex')}`;
    default:
      return String(value);
  }
}

/** Value equality of two app values of a codec (verify: shadow source against decrypted target). */
export function sameValue(state: EncryptedColumnState, a: unknown, b: unknown): boolean {
  try {
    return Buffer.from(state.codec.encode(a)).equals(Buffer.from(state.codec.encode(b)));
  } catch {
    return false;
  }
}
