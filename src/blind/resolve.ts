import { type BlindKey, blindValue, EXACT_MIN_BYTES, NO_MATCH } from '../crypto/blind-hmac.ts';
import { ByokConfigError, EncryptedComparisonError, NoTenantError } from '../errors.ts';
import type { AnyPgDatabase, Keyring } from '../keys/keyring.ts';
import { scopeStorage } from '../scope.ts';
import { type BlindIndexState, indexInput } from './column.ts';
import { type IndexKeyState, type IndexVersion, registryFor } from './keys.ts';
import { PendingBlind, writeTenant } from './sealed.ts';

// -----------------------------------------------------------------------------------------------
// Execution: compute pending index values, lookup values and tenants

/**
 * Replaces every `PendingBlind` in `filled` (a fresh params array) by its value: index values of
 * writes under the active key version, lookup values under each live version, the lookup's tenant.
 * Runs inside the query's context (the tenant in scope is the lookup's tenant).
 */
export async function resolveBlindParams(
  keyring: Keyring,
  filled: unknown[],
  values: Record<string, unknown>,
  txDb: AnyPgDatabase | undefined,
): Promise<void> {
  let any = false;
  for (const p of filled) if (p instanceof PendingBlind) any = true;
  if (!any) return;
  const reg = registryFor(keyring);
  const scope = scopeStorage.getStore() as { tenantId?: string | null; scoped?: boolean } | undefined;
  const scoped = scope === undefined || scope.scoped === false ? undefined : scope.tenantId;
  const memo = new Map<string, Promise<unknown>>();
  const once = <T>(key: string, fn: () => Promise<T>): Promise<T> => {
    let p = memo.get(key) as Promise<T> | undefined;
    if (p === undefined) {
      p = fn();
      memo.set(key, p);
    }
    return p;
  };
  const stateOf = (tenantId: string, p: PendingBlind, create: boolean) =>
    once(`s\u0000${tenantId}\u0000${p.index.context}\u0000${create}`, () =>
      reg.load(tenantId, p.index.owner(p.tenantColumn), { create, txDb }),
    );
  // The cached state of the last (tenant, index) asked for, with the keys of its live versions
  // (undefined where a data key is not cached): a statement's slots and values share one lookup.
  let hotFor:
    | { tenantId: string; index: BlindIndexState; st: IndexKeyState; keys: (BlindKey | undefined)[] }
    | undefined;
  const hotOf = (tenantId: string, index: BlindIndexState) => {
    if (hotFor === undefined || hotFor.tenantId !== tenantId || hotFor.index !== index) {
      const st = reg.fresh(tenantId, index.context);
      if (st === undefined) return undefined;
      hotFor = { tenantId, index, st, keys: st.live.map((v) => reg.hotKey(st, v)) };
    }
    return hotFor;
  };
  // Every check that can throw runs before any query starts (no promise is left unobserved).
  const tasks: (() => Promise<void>)[] = [];
  for (let i = 0; i < filled.length; i++) {
    const p = filled[i];
    if (!(p instanceof PendingBlind)) continue;
    if (p.kind === 'lookup-set') {
      const tenantId = lookupTenant(p.index, scoped);
      const items = p.items.map((item) => {
        if (!('placeholder' in item)) return item.value;
        if (!(item.placeholder in values))
          throw new ByokConfigError(`no value for placeholder "${item.placeholder}"`);
        return values[item.placeholder];
      });
      const fill = (st: IndexKeyState, keys: readonly BlindKey[]) => {
        checkLookup(p, st);
        filled[i] = setLiteral(p.index, st, keys, items);
      };
      const hot = hotOf(tenantId, p.index);
      if (hot?.keys.every((k) => k !== undefined)) {
        keyring.countHotHit();
        fill(hot.st, hot.keys as BlindKey[]);
        continue;
      }
      tasks.push(async () => {
        const st = await stateOf(tenantId, p, false);
        if (st === undefined) {
          const unindexed = await once(`u\u0000${tenantId}\u0000${p.index.context}`, () =>
            p.index.owner(p.tenantColumn).hasUnindexedRows(reg.dbFor(txDb), tenantId),
          );
          if (unindexed) throw notBuilt(p.index, tenantId);
          filled[i] = '{}';
          return;
        }
        // A key loaded first can be destroyed (its data key evicted) while a later one loads:
        // load again until all are live together, then use them in the same synchronous step.
        const keys: BlindKey[] = [];
        for (let round = 0; round < 5; round++) {
          for (let j = 0; j < st.live.length; j++)
            if (keys[j]?.destroyed !== false) keys[j] = await reg.key(st, st.live[j]!, txDb);
          if (keys.every((k) => !k.destroyed)) break;
        }
        fill(st, keys);
      });
      continue;
    }
    let value: unknown;
    if (p.placeholder !== undefined) {
      if (!(p.placeholder in values))
        throw new ByokConfigError(`no value for placeholder "${p.placeholder}"`);
      value = values[p.placeholder];
    } else {
      value = p.value();
    }
    if (p.kind === 'write') {
      const tenantId = p.tenantId ?? writeTenant(p.index, undefined);
      if (value === null || value === undefined) {
        filled[i] = null;
        continue;
      }
      tasks.push(async () => {
        const st = (await stateOf(tenantId, p, true))!;
        const v = st.active;
        const input = indexInput(p.index, v.params, value);
        filled[i] = blindValue(await reg.key(st, v, txDb), v.version, input, v.params.bytes);
      });
      continue;
    }
    const tenantId = lookupTenant(p.index, scoped);
    if (p.kind === 'tenant') {
      filled[i] = tenantId;
      continue;
    }
    // Hot path, synchronous: the tenant's index state is fresh and its key's data key cached (the
    // same checks as below, without a promise per value). Each slot is one live version: a slot
    // past the live versions is NULL.
    const hot = hotOf(tenantId, p.index);
    if (hot !== undefined) {
      checkLookup(p, hot.st);
      if (value === null || value === undefined) {
        filled[i] = NO_MATCH;
        continue;
      }
      const v = hot.st.live[p.slot];
      if (v === undefined) {
        filled[i] = null; // no live version for this slot: `index = NULL` matches nothing
        continue;
      }
      const key = hot.keys[p.slot];
      if (key !== undefined) {
        keyring.countHotHit();
        filled[i] = lookupIndexValue(p.index, key, v, value);
        continue;
      }
    }
    tasks.push(async () => {
      const st = await stateOf(tenantId, p, false);
      if (st === undefined) {
        // Nothing was ever indexed for this tenant: no row can match, unless rows predate the index.
        const unindexed = await once(`u\u0000${tenantId}\u0000${p.index.context}`, () =>
          p.index.owner(p.tenantColumn).hasUnindexedRows(reg.dbFor(txDb), tenantId),
        );
        if (unindexed) throw notBuilt(p.index, tenantId);
        filled[i] = NO_MATCH;
        return;
      }
      checkLookup(p, st);
      if (value === null || value === undefined) {
        filled[i] = NO_MATCH;
        return;
      }
      const v = st.live[p.slot];
      if (v === undefined) {
        filled[i] = null;
        return;
      }
      filled[i] = lookupIndexValue(p.index, await reg.key(st, v, txDb), v, value);
    });
  }
  if (tasks.length === 0) return;
  const results = await Promise.allSettled(tasks.map((t) => t()));
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/** The index value of a looked-up `value` under key version `v` (with `key`, that version's key). */
function lookupIndexValue(index: BlindIndexState, key: BlindKey, v: IndexVersion, value: unknown): Buffer {
  return blindValue(key, v.version, indexInput(index, v.params, value), v.params.bytes);
}

/**
 * The array literal (`{"\\x…",…}`, cast to `bytea[]` by the statement) of every value's index value
 * under every live key version of `st` (`keys[j]` the key of `st.live[j]`), each distinct value
 * once; `{}` when every value is null.
 */
function setLiteral(
  index: BlindIndexState,
  st: IndexKeyState,
  keys: readonly BlindKey[],
  items: readonly unknown[],
): string {
  const values = new Set<unknown>();
  const out = new Set<string>();
  for (const value of items) {
    if (value === null || value === undefined || values.has(value)) continue;
    values.add(value);
    for (let j = 0; j < st.live.length; j++) {
      out.add(`"\\\\x${lookupIndexValue(index, keys[j]!, st.live[j]!, value).toString('hex')}"`);
    }
  }
  return `{${[...out].join(',')}}`;
}

export function lookupTenant(index: BlindIndexState, scoped: string | null | undefined): string {
  if (typeof scoped === 'string') return scoped;
  throw new NoTenantError(
    `a lookup on blind index ${index.label} needs one tenant: index values are per tenant. Run it inside ` +
      `keyring.withTenant(tenantId, ...)${scoped === null ? ' (withAnyTenant cannot look up by index)' : ''}`,
  );
}

function notBuilt(index: BlindIndexState, tenantId: string): EncryptedComparisonError {
  return new EncryptedComparisonError(
    `blind index ${index.label} is not built for tenant ${tenantId} yet (rows written before the index ` +
      'existed have no index value): run runBackfill(...) over the column or backfillBlindIndex(...) first',
    { tenantId },
  );
}

function checkLookup(p: PendingBlind, st: IndexKeyState): void {
  if (!st.live.some((v) => v.built)) throw notBuilt(p.index, st.tenantId);
  if (!p.allowLossy) {
    const lossy = st.live.find((v) => v.params.bytes < EXACT_MIN_BYTES);
    if (lossy !== undefined) {
      throw new EncryptedComparisonError(
        `blind index ${p.index.label} version ${lossy.version} keeps ${lossy.params.bytes} bytes: use findByBlindIndex(...)`,
        { tenantId: st.tenantId },
      );
    }
  }
}
