/**
 * The rewriter of a batch: classifies each value of each row read (plaintext, ciphertext under the
 * active or an older data key, null, unreadable...), and computes the new values: ciphertext under
 * the tenant's active data key and blind index values (encrypt), or the plain form (decrypt). No I/O
 * but the batch's key loading.
 */
import type { FieldKey } from '../crypto/aead.ts';
import { open, seal } from '../crypto/aead.ts';
import { blindValue } from '../crypto/blind-hmac.ts';
import { indexInput } from '../blind/index.ts';
import { openFor, storedEnvelope } from '../drizzle/columns.ts';
import type { DekEntry } from '../keys/cache.ts';
import { keysOf } from '../keys/keyring.ts';
import { loadKeys } from './batch-keys.ts';
import {
  type Action,
  type BatchKeys,
  COUNT,
  type ColumnWrite,
  NEED_KEY,
  type Plan,
  type Prepared,
  type Row,
  type Run,
  WORK,
} from './run.ts';
import type { ResolvedColumn } from './target.ts';
import { inPlacePlainValue, inPlaceStoredPlain, type Stored, sourceText, sourceValue } from './values.ts';

/** The blind index values of a row when the table has no blind index of the columns rewritten. */
const NO_INDEX: ReadonlyMap<number, Buffer> = new Map();

/** Rows encrypted between two turns of the event loop while a batch is prepared. */
const PLAN_SLICE = 100;

export class Rewriter {
  readonly run: Run;
  /** Field keys by data key entry, per column (see `fieldKey`). */
  readonly #fieldKeys = new WeakMap<DekEntry, (FieldKey | undefined)[]>();

  constructor(run: Run) {
    this.run = run;
  }

  /**
   * Loads the keys a batch needs and computes its new values (no lock, no write).
   *
   * The rows are encrypted in slices with a turn of the event loop between them: the previous
   * batch's statement is in flight meanwhile, and a driver that answers a round trip of its own
   * before sending the values (postgres.js describes an unnamed statement first) only sends them
   * when this process reads its socket. Without the turns, the database would wait for the whole
   * batch to be encrypted before it starts writing the previous one.
   */
  async prepare(rows: Row[]): Promise<Prepared> {
    const keys = await loadKeys(this.run, rows);
    const plan: Plan = { writes: [], needKey: [], settled: [] };
    for (let i = 0; i < rows.length; i += PLAN_SLICE) {
      if (i > 0) await new Promise((r) => setImmediate(r));
      this.planInto(rows, i, Math.min(rows.length, i + PLAN_SLICE), keys, plan);
    }
    return { rows, keys, ...plan };
  }

  /** Classifies rows and computes their new values with the loaded keys. */
  planRows(todo: readonly Row[], keys: BatchKeys): Plan {
    const plan: Plan = { writes: [], needKey: [], settled: [] };
    this.planInto(todo, 0, todo.length, keys, plan);
    return plan;
  }

  planInto(
    todo: readonly Row[],
    from: number,
    to: number,
    keys: BatchKeys,
    { writes, needKey, settled }: Plan,
  ): void {
    for (let r = from; r < to; r++) {
      const row = todo[r]!;
      const actions = this.plan(row, keys);
      let need = false;
      let work = false;
      for (const a of actions) {
        if (a.kind === 'need-key') need = true;
        else if (a.kind === 'work') work = true;
      }
      if (need) {
        needKey.push(row);
        continue;
      }
      const w =
        work || (this.run.op === 'encrypt' && this.run.indexes.length > 0 && this.run.missingIndex(row))
          ? this.rewrite(row, actions, keys)
          : undefined;
      if (w === undefined || (w.cols.size === 0 && w.index.size === 0)) settled.push(actions);
      else writes.push({ row, writes: w.cols, index: w.index, actions });
    }
  }

  /**
   * The field key of column `i` under a data key: kept per data key entry and column, so rows of
   * interleaved tenants each find theirs at once.
   */
  fieldKey(entry: DekEntry, i: number): FieldKey {
    let a = this.#fieldKeys.get(entry);
    if (a === undefined) {
      a = new Array<FieldKey | undefined>(this.run.t.columns.length);
      this.#fieldKeys.set(entry, a);
    }
    let fk = a[i];
    if (fk === undefined || entry.evicted) {
      fk = keysOf(this.run.keyring).fieldKey(entry, this.run.t.columns[i]!.state.context);
      a[i] = fk;
    }
    return fk;
  }

  /** Whether an index key of `tenant` was loaded and since destroyed (its data key evicted). */
  #indexKeyLost(tenant: string, keys: BatchKeys): boolean {
    for (let j = 0; j < this.run.indexes.length; j++)
      if (keys.index.get(`${tenant}\u0000${j}`)?.key.destroyed === true) return true;
    return false;
  }

  /** The value of index `j` for an app value of its column, or undefined without a key (dry run). */
  indexValue(j: number, tenant: string, value: unknown, keys: BatchKeys): Buffer | undefined {
    const k = keys.index.get(`${tenant}\u0000${j}`);
    if (k === undefined) return undefined;
    return blindValue(
      k.key,
      k.version,
      indexInput(this.run.indexes[j]!.state, k.params, value),
      k.params.bytes,
    );
  }

  /** What to do with each column of a row, given the loaded keys. */
  plan(row: Row, keys: BatchKeys): Action[] {
    return this.run.t.columns.map((c, i) => {
      const stored = this.run.stored(row, i);
      const source = c.source === undefined ? undefined : (row[this.run.sn[i]!] as string | null);
      return this.run.op === 'encrypt'
        ? this.#planEncrypt(c, stored, source, row.t, keys)
        : this.#planDecrypt(c, stored, row.t, keys);
    });
  }

  #planEncrypt(
    c: ResolvedColumn,
    stored: Stored,
    source: string | null | undefined,
    tenant: string | null,
    keys: BatchKeys,
  ): Action {
    if (stored.kind === 'null') {
      if (c.kind === 'in-place' || source === null || source === undefined) return COUNT('nulls');
    } else if (stored.kind === 'malformed') return COUNT('unreadable');
    else if (stored.kind === 'plain' && c.kind === 'shadow') return COUNT('unreadable');
    if (tenant === null) return COUNT('noTenant');
    if (keys.failedTenants.has(tenant)) return COUNT('tenantSkipped');
    const active = keys.active.get(tenant);
    if (active === undefined || active.evicted || this.#indexKeyLost(tenant, keys)) return NEED_KEY;
    if (stored.kind !== 'envelope') return WORK;
    if (stored.dekId === active.id) return COUNT('alreadyDone');
    if (!this.run.reencrypt) return COUNT('stale');
    if (keys.deadDeks.has(stored.dekId)) return COUNT('unreadable');
    const old = keys.old.get(stored.dekId);
    if (old === undefined || old.evicted) return NEED_KEY;
    if (old.tenantId !== tenant) return COUNT('unreadable');
    if (old.version > active.version) {
      // Written under a newer key than the one this process knows as active: ours is outdated.
      keysOf(this.run.keyring).cache.deactivate(tenant);
      keys.active.delete(tenant);
      return COUNT('alreadyDone');
    }
    return WORK;
  }

  #planDecrypt(c: ResolvedColumn, stored: Stored, tenant: string | null, keys: BatchKeys): Action {
    if (stored.kind === 'null') return c.kind === 'shadow' ? COUNT('alreadyDone') : COUNT('nulls');
    if (stored.kind === 'malformed') return COUNT('unreadable');
    if (stored.kind === 'plain') return c.kind === 'shadow' ? COUNT('unreadable') : COUNT('alreadyDone');
    if (tenant === null) return COUNT('noTenant');
    if (keys.deadDeks.has(stored.dekId)) return COUNT('unreadable');
    const old = keys.old.get(stored.dekId);
    if (old === undefined || old.evicted) return NEED_KEY;
    if (old.tenantId !== tenant) return COUNT('unreadable');
    return WORK;
  }

  /**
   * Computes the new values of a locked row's columns marked `work`. A value that turns out not to
   * be rewritable (bad plaintext, ciphertext that fails to decrypt) is counted and left as it is.
   *
   * `encrypt` also computes the blind index values of those columns: for a plaintext value it
   * encrypts, always (what the middleware writes with a value); for a ciphertext it re-encrypts or
   * leaves (already under the active data key, or `stale`), only where the index value is missing
   * (index keys do not depend on data key versions, so an existing value stays valid).
   */
  rewrite(
    row: Row,
    actions: Action[],
    keys: BatchKeys,
  ): { cols: Map<number, ColumnWrite>; index: ReadonlyMap<number, Buffer> } {
    const out = new Map<number, ColumnWrite>();
    const engineIndexes = this.run.indexes;
    // Without blind indexes (the common case) every row shares one empty map, never written.
    const index = engineIndexes.length === 0 ? (NO_INDEX as Map<number, Buffer>) : new Map<number, Buffer>();
    const indexes = (i: number, value: () => unknown, onlyMissing: boolean) => {
      for (let j = 0; j < engineIndexes.length; j++) {
        if (engineIndexes[j]!.col !== i || (onlyMissing && row[this.run.in[j]!] != null)) continue;
        const v = this.indexValue(j, row.t!, value(), keys);
        if (v !== undefined) index.set(j, v);
      }
    };
    actions.forEach((a, i) => {
      const c = this.run.t.columns[i]!;
      const stored = this.run.stored(row, i);
      const kr = this.run.keyring;
      if (a.kind === 'count' && this.run.op === 'encrypt') {
        // A ciphertext left as it is: its missing index values, from the decrypted value.
        if (
          stored.kind !== 'envelope' ||
          (a.counter !== 'alreadyDone' && a.counter !== 'stale') ||
          !this.run.missingIndex(row, i)
        )
          return;
        const entry = a.counter === 'alreadyDone' ? keys.active.get(row.t!) : keys.old.get(stored.dekId);
        if (entry === undefined || entry.evicted || entry.id !== stored.dekId || entry.tenantId !== row.t)
          return;
        let plaintext: Buffer;
        try {
          plaintext = open(this.fieldKey(entry, i), stored.env);
        } catch {
          return; // left without an index value: the tenant's index is not marked built
        }
        indexes(i, () => c.state.codec.decode(plaintext), true);
        return;
      }
      if (a.kind !== 'work') return;
      if (this.run.op === 'encrypt') {
        const active = keys.active.get(row.t!)!;
        let plaintext: Uint8Array;
        if (stored.kind === 'envelope') {
          try {
            const old = keys.old.get(stored.dekId)!;
            plaintext = open(this.fieldKey(old, i), stored.env);
          } catch {
            actions[i] = COUNT('unreadable');
            return;
          }
          actions[i] = COUNT('reencrypted');
          const pt = plaintext as Buffer;
          indexes(i, () => c.state.codec.decode(pt), true);
        } else {
          let value: unknown;
          try {
            value =
              c.kind === 'in-place'
                ? inPlacePlainValue(c.state, row[this.run.vn[i]!])
                : sourceValue(c.state, row[this.run.sn[i]!] as string);
            plaintext = c.state.codec.encode(value);
          } catch {
            actions[i] = COUNT('invalid');
            return;
          }
          actions[i] = COUNT('written');
          indexes(i, () => value, false);
        }
        out.set(i, { target: storedEnvelope(c.state, seal(this.fieldKey(active, i), plaintext)) });
        return;
      }
      if (stored.kind !== 'envelope') return;
      let value: unknown;
      try {
        value = openFor(kr, c.state, keys.old.get(stored.dekId)!, stored.env);
      } catch {
        actions[i] = COUNT('unreadable');
        return;
      }
      actions[i] = COUNT('written');
      out.set(
        i,
        c.kind === 'in-place'
          ? { target: inPlaceStoredPlain(c.state, value) }
          : { source: sourceText(c.state, value) },
      );
    });
    return { cols: out, index };
  }
}
