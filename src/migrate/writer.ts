/**
 * The writer: the statements of a batch. The keyset read of a batch (and the re-read of rows to
 * retry), the guarded rewrite (rows whose version is unchanged locked `SKIP LOCKED` and rewritten
 * through their ctid, the checkpoint moved in the same statement, only while this worker holds the
 * chunk), and the checkpoint alone.
 */
import { type SQL, sql } from 'drizzle-orm';
import type { AnyPgDatabase } from '../keys/keyring.ts';
import type { Advance, Chunk, PlannedWrite, Row, Run } from './run.ts';
import { ident, keysIn, query, rangeSql, tableSql, textElements } from './sql.ts';

/** The text of small value counts (one per row written), made once. */
const COUNT_TEXT = Array.from({ length: 17 }, (_, i) => String(i));

export class Writer {
  readonly run: Run;
  /** The select list of a batch read (key, tenant, xmin, target, source and index values). */
  readonly #fields: SQL;

  constructor(run: Run) {
    this.run = run;
    this.#fields = this.#selectFields();
  }

  #selectFields(): SQL {
    const parts: SQL[] = [
      sql`t.${ident(this.run.t.key)}::text AS "k"`,
      sql`t.${ident(this.run.t.tenant)}::text AS "t"`,
      sql`t.xmin::text AS "x"`,
    ];
    this.run.t.columns.forEach((c, i) => {
      parts.push(sql`t.${ident(c.target)} AS ${sql.identifier(`v${i}`)}`);
      if (c.source !== undefined) {
        const col = sql`t.${ident(c.source)}`;
        const expr = c.sourceType?.startsWith('timestamp')
          ? sql`to_json(${col}) #>> '{}'`
          : sql`${col}::text`;
        parts.push(sql`${expr} AS ${sql.identifier(`s${i}`)}`);
      }
    });
    this.run.indexes.forEach((ix, j) => {
      parts.push(sql`t.${ident(ix.state.name)} AS ${sql.identifier(`i${j}`)}`);
    });
    return sql.join(parts, sql`, `);
  }

  readBatch(
    lo: string | null,
    hi: string | null,
    limit: number,
    db: AnyPgDatabase = this.run.db,
  ): Promise<Row[]> {
    return query<Row>(
      db,
      sql`SELECT ${this.#fields} FROM ${tableSql(this.run.t)} AS t
           WHERE ${rangeSql(this.run.t, sql.raw('t'), lo, hi, this.run.tenants)}
           ORDER BY t.${ident(this.run.t.key)} LIMIT ${limit}`,
    );
  }

  readKeys(keys: readonly string[]): Promise<Row[]> {
    return query<Row>(
      this.run.db,
      sql`SELECT ${this.#fields} FROM ${tableSql(this.run.t)} AS t WHERE ${keysIn(this.run.t, sql.raw('t'), keys)}`,
    );
  }

  /**
   * Writes the planned rows whose version is unchanged and unlocked, and the checkpoint, in one
   * statement; nothing is written unless this worker still holds the chunk (its row is locked first). Returns the keys written; `advanced` when the checkpoint moved past the batch.
   */
  async write(
    chunk: Chunk,
    writes: readonly PlannedWrite[],
    advance: Advance | undefined,
  ): Promise<{ owned: boolean; updated: string[]; all: boolean; advanced: boolean }> {
    if (writes.length === 0) {
      const owned = await this.checkpoint(chunk, 0, advance);
      return { owned, updated: [], all: owned, advanced: owned && advance !== undefined };
    }
    const n = writes.length;
    // The columns and indexes written by any row (a column's kind, target or source, is the
    // column's): most batches write every one, found in the first rows.
    const used = new Map<number, 'target' | 'source'>();
    const idxUsed = new Set<number>();
    const nCols = this.run.t.columns.length;
    const nIdx = this.run.indexes.length;
    for (let r = 0; r < n && (used.size < nCols || idxUsed.size < nIdx); r++) {
      const w = writes[r]!;
      w.writes.forEach((cw, i) => {
        if (!used.has(i)) used.set(i, cw.source !== undefined ? 'source' : 'target');
      });
      if (w.index.size > 0) for (const j of w.index.keys()) idxUsed.add(j);
    }
    const cols = [...used.keys()].sort((a, b) => a - b);
    const idxCols = [...idxUsed].sort((a, b) => a - b);
    // The new values travel column-wise, one text parameter per column (comma-separated when no
    // value holds a comma, as ciphertext and base64 never do; else a JSON array), zipped back into
    // rows by ROWS FROM: a handful of parameters whatever the batch size, no per-row object or key
    // names to build and parse.
    const keys = new Array<string>(n);
    const xmins = new Array<string>(n);
    const counts = new Array<string>(n);
    const colValues = cols.map(() => new Array<string | null>(n));
    const idxValues = idxCols.map(() => new Array<string | null>(n));
    for (let r = 0; r < n; r++) {
      const { row, writes: w, index } = writes[r]!;
      keys[r] = row.k;
      xmins[r] = row.x;
      counts[r] = COUNT_TEXT[w.size] ?? String(w.size);
      for (let c = 0; c < cols.length; c++) {
        const cw = w.get(cols[c]!);
        const v = cw === undefined ? undefined : (cw.source ?? cw.target);
        colValues[c]![r] = v === undefined ? null : typeof v === 'string' ? v : v.toString('base64');
      }
      for (let c = 0; c < idxCols.length; c++) {
        idxValues[c]![r] = index.get(idxCols[c]!)?.toString('base64') ?? null;
      }
    }
    // Ciphertext (`byok1:` + base64 or base64 of bytes), blind index values, xmins and counts are
    // never empty and never hold a comma; keys and what a rollback writes (plaintext) are checked.
    const arrays = [
      textElements(keys),
      textElements(xmins, true),
      textElements(counts, true),
      ...colValues.map((a) => textElements(a, this.run.op === 'encrypt')),
      ...idxValues.map((a) => textElements(a, true)),
    ];
    const names = [
      sql`k`,
      sql`x`,
      sql`n`,
      ...cols.map((i) => sql.identifier(`c${i}`)),
      ...idxCols.map((j) => sql.identifier(`i${j}`)),
    ];
    const sets: SQL[] = [];
    for (const i of cols) {
      const c = this.run.t.columns[i]!;
      const v = sql`v.${sql.identifier(`c${i}`)}`;
      if (used.get(i) === 'source') {
        sets.push(
          sql`${ident(c.source!)} = COALESCE(${v}::${sql.raw(c.sourceType!)}, t.${ident(c.source!)})`,
        );
        sets.push(sql`${ident(c.target)} = CASE WHEN ${v} IS NULL THEN t.${ident(c.target)} ELSE NULL END`);
        // Rollback of a shadow pair clears the target, hence its blind indexes (the index of NULL is NULL).
        for (const ix of this.run.indexes) {
          if (ix.col !== i) continue;
          const idx = ident(ix.state.name);
          sets.push(sql`${idx} = CASE WHEN ${v} IS NULL THEN t.${idx} ELSE NULL END`);
        }
      } else if (c.state.storage === 'text') {
        sets.push(sql`${ident(c.target)} = COALESCE(${v}, t.${ident(c.target)})`);
      } else {
        sets.push(sql`${ident(c.target)} = COALESCE(decode(${v}, 'base64'), t.${ident(c.target)})`);
      }
    }
    for (const j of idxCols) {
      const idx = ident(this.run.indexes[j]!.state.name);
      sets.push(sql`${idx} = COALESCE(decode(v.${sql.identifier(`i${j}`)}, 'base64'), t.${idx})`);
    }
    const key = ident(this.run.t.key);
    const keyType = sql.raw(this.run.t.keyType);
    const all = sql`(SELECT count(*) FROM u) = ${n}::int`;
    const [r] = await query<{ updated: string | null; owned: number; advanced: boolean }>(
      this.run.db,
      sql`WITH v AS (
            SELECT * FROM ROWS FROM (${sql.join(arrays, sql`, `)}) AS v(${sql.join(names, sql`, `)})
          ), own AS (
            SELECT 1 FROM byok.retrofit_chunks
             WHERE job_id = ${this.run.jobId} AND seq = ${chunk.seq} AND worker = ${this.run.worker} AND state = 'running'
            FOR UPDATE
          ), l AS (
            SELECT t.ctid AS tid, v.* FROM ${tableSql(this.run.t)} AS t JOIN v ON t.${key} = v.k::${keyType} AND t.xmin = v.x::xid
             WHERE EXISTS (SELECT 1 FROM own)
            FOR UPDATE OF t SKIP LOCKED
          ), u AS (
            UPDATE ${tableSql(this.run.t)} AS t SET ${sql.join(sets, sql`, `)}
              FROM l AS v
             WHERE t.ctid = v.tid
            RETURNING v.k AS k, v.n::int AS n
          ), c AS (${this.checkpointSql(chunk, sql`(SELECT coalesce(sum(n), 0) FROM u)::int`, advance, all)})
          SELECT CASE WHEN ${all} THEN NULL ELSE (SELECT coalesce(json_agg(k), '[]'::json) FROM u)::text END AS updated,
                 (SELECT count(*) FROM c)::int AS owned,
                 ${advance === undefined ? sql`false` : all} AS advanced`,
    );
    const owned = (r?.owned ?? 0) > 0;
    // Every planned row written: the statement leaves the list out (the keys are the planned ones).
    const everyRow = owned && r?.updated == null;
    const updated = everyRow ? keys : r?.updated == null ? [] : (JSON.parse(r.updated) as string[]);
    return { owned, updated, all: everyRow, advanced: owned && r?.advanced === true };
  }

  checkpointSql(chunk: Chunk, values: SQL | number, advance: Advance | undefined, when?: SQL): SQL {
    const v = typeof values === 'number' ? sql`${values}::int` : values;
    const cond = (then: SQL, otherwise: SQL) =>
      when === undefined ? then : sql`CASE WHEN ${when} THEN ${then} ELSE ${otherwise} END`;
    const more =
      advance === undefined
        ? sql``
        : sql`, last_key = ${cond(sql`${advance.last}::text`, sql`last_key`)},
              rows_seen = rows_seen + ${cond(sql`${advance.rows}::int`, sql`0`)},
              state = ${cond(sql`${advance.end ? 'done' : 'running'}::text`, sql`state`)}`;
    return sql`UPDATE byok.retrofit_chunks SET values_written = values_written + ${v},
                 lease_until = ${this.run.leaseSql()}, updated_at = now()${more}
               WHERE job_id = ${this.run.jobId} AND seq = ${chunk.seq} AND worker = ${this.run.worker} AND state = 'running'
               RETURNING 1`;
  }

  /** Moves the checkpoint alone (and renews the lease); false when this worker no longer holds the chunk. */
  async checkpoint(chunk: Chunk, values: number, advance: Advance | undefined): Promise<boolean> {
    const rows = await query(this.run.db, this.checkpointSql(chunk, values, advance));
    return rows.length > 0;
  }
}
