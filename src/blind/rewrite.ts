import { Column, is, Param, Placeholder, type SQL, StringChunk } from 'drizzle-orm';
import { chunkText, placeholderName, significantChunks } from '../drizzle/chunks.ts';
import { encryptedState } from '../drizzle/columns.ts';
import type { SqlVisitor } from '../drizzle/pipeline.ts';
import { trustSql, untrustSql } from '../drizzle/sql-walk.ts';
import { ByokConfigError, EncryptedComparisonError } from '../errors.ts';
import { type BlindIndexState, blindState, columnOf, columnsOf } from './column.ts';
import { LOOKUP_ENCODER, type LookupValue, PendingBlind } from './sealed.ts';

// -----------------------------------------------------------------------------------------------
// Query path: eq / inArray on an indexed column become index lookups

interface LookupTarget {
  readonly index: BlindIndexState;
  /** The index column as the query references it (through the same alias as the compared column). */
  readonly indexColumn: Column;
  readonly tenantColumn: Column | undefined;
}

/** The index an `eq`/`inArray` on `col` uses, or undefined when `col` has none. */
export function lookupTarget(col: Column, tenantColumn: string | undefined): LookupTarget | undefined {
  const table = (col as unknown as { table?: unknown }).table;
  const cols = columnsOf(table);
  let index = blindState(col);
  let indexColumn: Column = col;
  if (index === undefined) {
    const es = encryptedState(col);
    if (es === undefined || cols === undefined) return undefined;
    const found = Object.values(cols).filter((c) => blindState(c)?.source().state === es);
    if (found.length === 0) return undefined;
    if (found.length > 1) {
      throw new ByokConfigError(
        `${es.label} has several blind indexes (${found.map((c) => c.name).join(', ')}): compare the index column you mean, e.g. eq(table.${found[0]!.name}, value)`,
      );
    }
    indexColumn = found[0]!;
    index = blindState(indexColumn)!;
  }
  return {
    index,
    indexColumn,
    tenantColumn: tenantColumn === undefined ? undefined : columnOf(table, tenantColumn),
  };
}

function lookupValue(c: unknown): LookupValue | null | undefined {
  if (is(c, Placeholder)) return { placeholder: placeholderName(c) };
  if (!is(c, Param)) return undefined;
  const v = (c as Param).value;
  if (v === null || v === undefined) return null;
  if (is(v, Placeholder)) return { placeholder: placeholderName(v) };
  return { value: v };
}

/**
 * SQL chunks of a lookup. `eq`: `(tenant = $t and (index = $a or index = $b))`, two slots, one per
 * live key version. `inArray` (`set`): `(tenant = $t and index = any($values::text::bytea[]))`.
 */
export function lookupChunks(
  target: LookupTarget,
  values: readonly LookupValue[],
  tenantColumn: string | undefined,
  allowLossy: boolean,
  set: boolean,
): unknown[] {
  if (!target.index.exact && !allowLossy) {
    throw new EncryptedComparisonError(
      `blind index ${target.index.label} keeps ${target.index.params.bytes} bytes: a lookup can match other ` +
        'values. Use findByBlindIndex(db, table, column, value), which re-checks candidates by decrypting.',
    );
  }
  if (values.length === 0) return [new StringChunk('false')];
  const base = { tenantColumn, allowLossy };
  const tenantChunks: unknown[] =
    target.tenantColumn === undefined
      ? []
      : [
          target.tenantColumn,
          new StringChunk(' = '),
          new Param(new PendingBlind('tenant', target.index, base), LOOKUP_ENCODER),
          new StringChunk(' and '),
        ];
  if (set) {
    // inArray: every value under every live key version in one array parameter (a text literal the
    // database casts), so the statement has two parameters whatever the number of values.
    const param = new Param(
      new PendingBlind('lookup-set', target.index, { ...base, items: values }),
      LOOKUP_ENCODER,
    );
    return [
      new StringChunk('('),
      ...tenantChunks,
      target.indexColumn,
      new StringChunk(' = any('),
      param,
      new StringChunk('::text::bytea[]))'),
    ];
  }
  // One equality per (value, slot): `(index = $a or index = $b)`. A slot without a live key version
  // is sent as NULL (`index = NULL` matches nothing), so with one live version the database plans a
  // single index equality; the statement text is the same whatever the number of live versions.
  const out: unknown[] = [new StringChunk('('), ...tenantChunks, new StringChunk('(')];
  for (const v of values) {
    for (const slot of [0, 1]) {
      if (out.length > tenantChunks.length + 2) out.push(new StringChunk(' or '));
      out.push(
        target.indexColumn,
        new StringChunk(' = '),
        new Param(
          new PendingBlind('lookup', target.index, {
            ...base,
            slot,
            ...('placeholder' in v ? { placeholder: v.placeholder } : { value: v.value }),
          }),
          LOOKUP_ENCODER,
        ),
      );
    }
  }
  out.push(new StringChunk('))'));
  return out;
}

function emptyChunk(c: unknown): boolean {
  return c instanceof StringChunk && chunkText(c).trim() === '';
}

/** The replacement chunks of an `eq`/`inArray` SQL node on an indexed column, or undefined. */
function rewriteNode(chunks: readonly unknown[], tenantColumn: string | undefined): unknown[] | undefined {
  const shape = lookupShape(chunks, tenantColumn);
  return shape === undefined
    ? undefined
    : lookupChunks(shape.target, shape.values, tenantColumn, false, shape.set);
}

/**
 * Whether an SQL node's chunks are a lookup the blind index rewrite turns into an index lookup
 * (`eq`/`inArray` of an indexed column with plain values or placeholders). The guard allows these.
 */
export function isBlindLookup(chunks: readonly unknown[]): boolean {
  return lookupShape(chunks, undefined) !== undefined;
}

function lookupShape(
  chunks: readonly unknown[],
  tenantColumn: string | undefined,
): { target: LookupTarget; values: LookupValue[]; set: boolean } | undefined {
  // `eq` / `inArray` on either Drizzle layout (see chunks.ts): `[col, ' = ' | ' in ', rhs]`.
  if (chunks.length !== 3 && chunks.length !== 5) return undefined;
  const parts = significantChunks(chunks);
  if (parts.length !== 3 || (chunks.length === 5 && (!emptyChunk(chunks[0]) || !emptyChunk(chunks[4]))))
    return undefined;
  const [col, op, rhs] = parts;
  if (!(op instanceof StringChunk) || !is(col, Column)) return undefined;
  const text = chunkText(op);
  if (text !== ' = ' && text !== ' in ') return undefined;
  const items = text === ' = ' ? [rhs] : Array.isArray(rhs) ? rhs : undefined;
  if (items === undefined) return undefined;
  const values: LookupValue[] = [];
  for (const item of items) {
    const v = lookupValue(item);
    if (v === undefined) return undefined;
    if (v !== null) values.push(v);
  }
  // `= null` matches nothing and sends nothing: leave it.
  if (text === ' = ' && values.length === 0) return undefined;
  const target = lookupTarget(col as Column, tenantColumn);
  if (target === undefined) return undefined;
  return { target, values, set: text === ' in ' };
}

/**
 * The blind index's part of a build's SQL walk: rewrites, in place, every `eq`/`inArray` of an
 * indexed column with plain values or placeholders into an index lookup, and restores the tree once
 * the query string is built (builders are reused, and the rewrite must not outlive one build).
 */
export function lookupRewriter(tenantColumn: string | undefined): SqlVisitor {
  const undo: [SQL, unknown[]][] = [];
  return {
    sql(s) {
      const replaced = rewriteNode(s.queryChunks, tenantColumn);
      if (replaced === undefined) return;
      undo.push([s, s.queryChunks]);
      (s as { queryChunks: unknown[] }).queryChunks = replaced;
      // Builders nested in the tree are built again while the query string is made: the guard
      // must recognize the rewritten node as the library's own lookup until it is restored.
      trustSql(s);
    },
    restore: () => restore(undo),
  };
}

function restore(undo: [SQL, unknown[]][]): void {
  for (let i = undo.length - 1; i >= 0; i--) {
    const [s, chunks] = undo[i]!;
    (s as { queryChunks: unknown[] }).queryChunks = chunks;
    untrustSql(s);
  }
  undo.length = 0;
}
