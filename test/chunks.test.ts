import * as orm from 'drizzle-orm';
import { eq, inArray, isNull, Param, SQL, StringChunk, sql } from 'drizzle-orm';
import { integer, pgTable, text } from 'drizzle-orm/pg-core';
import { PgDialect } from 'drizzle-orm/pg-core';
import { describe, expect, it } from 'vitest';
import {
  buildSetOperations,
  chunkText,
  columnTable,
  instrumentInsertLayout,
  paramRows,
  placeholderName,
  RAW_INSERT_CELLS,
  significantChunks,
  valueRowsAsArrays,
} from '../src/drizzle/chunks.ts';
import { DRIZZLE_1 } from './helpers/drizzle-version.ts';

const t = pgTable('t', { id: integer('id'), name: text('name'), note: text('note') });

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

  it('comparisons in either layout reduce to [column, operator, operand]', () => {
    const v045 = [new StringChunk(''), t.id, new StringChunk(' = '), new Param(1, t.id), new StringChunk('')];
    const v1 = [t.id, new StringChunk(' = '), new Param(1, t.id)];
    for (const layout of [v045, v1]) {
      const [col, op, rhs] = significantChunks(layout);
      expect(col).toBe(t.id);
      expect(chunkText(op as StringChunk)).toBe(' = ');
      expect((rhs as Param).value).toBe(1);
    }
    // what the installed Drizzle builds for eq / inArray reduces the same way
    const e = significantChunks(eq(t.id, 1).queryChunks);
    expect(e).toHaveLength(3);
    expect(e[0]).toBe(t.id);
    const i = significantChunks(inArray(t.id, [1, 2]).queryChunks);
    expect(i).toHaveLength(3);
    expect(Array.isArray(i[2])).toBe(true);
    // isNull: `<col> is null` on 0.45, `(<col> is null)` on 1.0 — the guard accepts exactly these
    const n = isNull(t.id)
      .queryChunks.filter((c) => c instanceof StringChunk)
      .map((c) => chunkText(c as StringChunk));
    expect(n.join('').trim()).toBe(DRIZZLE_1 ? '( is null)' : 'is null');
  });

  it('insert rows: 1.0 raw cells become Params bound to their columns (0.45 is left alone)', () => {
    expect(RAW_INSERT_CELLS).toBe(typeof (orm as Record<string, unknown>).ValueRows === 'function');
    expect(RAW_INSERT_CELLS).toBe(DRIZZLE_1);
    const rows = [
      { id: 1, name: 'a', note: undefined },
      { id: 2, name: sql`default` },
    ];
    const out = paramRows(t, rows);
    if (!DRIZZLE_1) {
      expect(out).toBeUndefined();
      return;
    }
    expect(out![0]!.id).toBeInstanceOf(Param);
    expect((out![0]!.id as Param).encoder).toBe(t.id);
    expect(out![0]!.note).toBeUndefined(); // left for the builder: the column default
    expect(out![1]!.name).toBeInstanceOf(SQL); // SQL values as they are
    expect((out![0]!.name as Param).value).toBe('a');
  });

  it('1.0 ValueRows are rebuilt as row arrays holding the very same Param objects, same SQL text', () => {
    const dialect = new PgDialect();
    const plain = new PgDialect();
    instrumentInsertLayout(dialect, 'inner');
    instrumentInsertLayout(dialect, 'outer');
    const values = [
      { id: 1, name: 'a', note: 'x' },
      { id: 2, name: 'b', note: 'y' },
    ];
    const config = { table: t, values, select: false, withList: [] } as never;
    const ours = dialect.sqlToQuery(
      (dialect as unknown as { buildInsertQuery(c: unknown): SQL }).buildInsertQuery(config),
    );
    const theirs = plain.sqlToQuery(
      (plain as unknown as { buildInsertQuery(c: unknown): SQL }).buildInsertQuery(
        DRIZZLE_1
          ? config
          : ({ table: t, values: paramRows045(values), select: false, withList: [] } as never),
      ),
    );
    expect(ours.sql).toBe(theirs.sql);
    expect(ours.params).toEqual(theirs.params);
    expect(ours.sql).toMatch(/values \(\$1, \$2, \$3\), \(\$4, \$5, \$6\)$/);
    if (DRIZZLE_1) {
      const built = valueRowsAsArrays(
        (plain as unknown as { buildInsertQuery(c: unknown): SQL }).buildInsertQuery({
          ...(config as object),
          values: paramRows(t, values),
        }),
      );
      const arrays: unknown[][] = [];
      const walk = (c: unknown) => {
        if (Array.isArray(c)) arrays.push(c);
        else if (c instanceof SQL) for (const x of c.queryChunks) walk(x);
      };
      walk(built);
      expect(arrays).toHaveLength(2);
      expect(arrays.every((r) => r.length === 3 && r.every((x) => x instanceof Param))).toBe(true);
    }
  });

  it('set operations are built through the signature the installed dialect has, others refused', () => {
    const calls: unknown[][] = [];
    const two = { buildSetOperations: (a: unknown, b: unknown) => (calls.push([a, b]), a) };
    const four = {
      buildSetOperations: (a: unknown, b: unknown, c: unknown, d: unknown) => (calls.push([a, b, c, d]), a),
    };
    const left = sql`select 1`;
    const config = { setOperators: ['op'], setFieldsFlat: ['f'], useSelectionCastCodecs: true };
    buildSetOperations(two, left, config);
    buildSetOperations(four, left, config);
    expect(calls).toEqual([
      [left, ['op']],
      [left, ['f'], true, ['op']],
    ]);
    const three = { buildSetOperations: (a: unknown, _b: unknown, _c: unknown) => a };
    expect(() => buildSetOperations(three, left, config)).toThrow(
      /unrecognised buildSetOperations signature/,
    );
    expect(new PgDialect().buildSetOperations.length).toBe(DRIZZLE_1 ? 4 : 2);
  });

  it('placeholder names and column tables read on either version', () => {
    expect(placeholderName(sql.placeholder('who'))).toBe('who');
    expect(columnTable(t.id)).toBe(t);
  });
});

/** 0.45's insert builder gets rows of Params from `.values()`: the same rows built by hand. */
function paramRows045(values: Record<string, unknown>[]): Record<string, unknown>[] {
  const cols = t as unknown as Record<string, never>;
  return values.map((v) => Object.fromEntries(Object.entries(v).map(([k, x]) => [k, new Param(x, cols[k])])));
}
