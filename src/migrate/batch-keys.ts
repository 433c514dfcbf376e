/**
 * The keys a batch needs: tenants' active data keys, older data key versions of the envelopes read,
 * blind index keys; a tenant whose key cannot be loaded fails the run or is skipped
 * (`skipTenantErrors`). The dry run's variant never creates a data key.
 */
import { randomBytes } from 'node:crypto';
import { sql } from 'drizzle-orm';
import { registryFor } from '../blind/index.ts';
import { ByokError, isByokError } from '../errors.ts';
import type { DekEntry } from '../keys/cache.ts';
import { type AnyPgDatabase, type Keyring, keysOf } from '../keys/keyring.ts';
import { type BatchKeys, emptyKeys, type IndexKey, type Row, type Run, TRANSIENT } from './run.ts';
import { query } from './sql.ts';

/**
 * Loads, in two batched calls to the keyring (one `getActiveDek` batch for the tenants, one `getDek`
 * batch for older data key versions), the keys `rows` need, adding to `prev` when given.
 */
export async function loadKeys(run: Run, rows: readonly Row[], prev?: BatchKeys): Promise<BatchKeys> {
  const keys = prev ?? emptyKeys();
  const tenants = new Set<string>();
  /** Tenants that need their blind index keys (a value of an indexed column). */
  const indexTenants = new Set<string>();
  const envelopes: { tenant: string; dekId: string; needIndex: boolean }[] = [];
  const cols = run.t.columns;
  const encrypt = run.op === 'encrypt';
  for (const row of rows) {
    const tenant = row.t;
    if (tenant === null) continue;
    for (let i = 0; i < cols.length; i++) {
      const s = run.stored(row, i);
      if (s.kind === 'envelope')
        envelopes.push({ tenant, dekId: s.dekId, needIndex: run.missingIndex(row, i) });
      if (encrypt && (s.kind !== 'null' || (cols[i]!.source !== undefined && row[run.sn[i]!] != null))) {
        tenants.add(tenant);
        if (run.indexes.some((ix) => ix.col === i)) indexTenants.add(tenant);
      }
    }
  }
  if (encrypt) {
    const wanted = [...tenants].filter((x) => !keys.failedTenants.has(x));
    for (const x of wanted) if (keys.active.get(x)?.evicted) keys.active.delete(x);
    const missing = wanted.filter((x) => !keys.active.has(x));
    const loaded = await Promise.allSettled(missing.map((x) => keysOf(run.keyring).getActiveDek(x)));
    loaded.forEach((r, i) => {
      const tenantId = missing[i]!;
      if (r.status === 'fulfilled') keys.active.set(tenantId, r.value);
      else tenantError(run, tenantId, r.reason, keys);
    });
    // The dry run never creates an index key version: it computes no index value.
    if (!run.opts.dryRun) await loadIndexKeys(run, indexTenants, keys);
  }
  const ids = new Set<string>();
  for (const e of envelopes) {
    const active = keys.active.get(e.tenant);
    if (encrypt && (active === undefined || active.id === e.dekId || (!run.reencrypt && !e.needIndex)))
      continue;
    const have = keys.old.get(e.dekId);
    if ((have === undefined || have.evicted) && !keys.deadDeks.has(e.dekId)) ids.add(e.dekId);
  }
  const list = [...ids];
  const loaded = await Promise.allSettled(list.map((id) => keysOf(run.keyring).getDek(id)));
  loaded.forEach((r, i) => {
    const id = list[i]!;
    if (r.status === 'fulfilled') keys.old.set(id, r.value);
    else if (isByokError(r.reason) && TRANSIENT.has(r.reason.code)) throw r.reason;
    else keys.deadDeks.add(id);
  });
  return keys;
}

/**
 * The active blind index key of each tenant for each index (the version the middleware writes),
 * creating the tenant's first version when it has none (not built if rows lack an index value).
 */
async function loadIndexKeys(run: Run, tenants: Set<string>, keys: BatchKeys): Promise<void> {
  if (run.indexes.length === 0) return;
  const reg = registryFor(run.keyring);
  const wanted: { tenant: string; j: number }[] = [];
  for (const tenant of tenants) {
    if (keys.failedTenants.has(tenant) || !keys.active.has(tenant)) continue;
    run.indexes.forEach((_, j) => {
      // A destroyed key: its data key was evicted from the cache since it was loaded.
      if (keys.index.get(`${tenant}\u0000${j}`)?.key.destroyed !== false) wanted.push({ tenant, j });
    });
  }
  const loaded = await Promise.allSettled(
    wanted.map(async ({ tenant, j }): Promise<IndexKey> => {
      const st = (await reg.load(tenant, run.indexes[j]!.owner, { create: true }))!;
      const v = st.active;
      return { version: v.version, params: v.params, key: await reg.key(st, v) };
    }),
  );
  loaded.forEach((r, n) => {
    const { tenant, j } = wanted[n]!;
    if (r.status === 'fulfilled') keys.index.set(`${tenant}\u0000${j}`, r.value);
    else tenantError(run, tenant, r.reason, keys);
  });
}

/** A tenant's key failure: thrown, or (`skipTenantErrors`, a typed non-transient error) the tenant skipped and reported. */
function tenantError(run: Run, tenantId: string, reason: unknown, keys: BatchKeys): void {
  const e = reason instanceof Error ? reason : new ByokError('unexpected failure');
  if (!run.opts.skipTenantErrors || (isByokError(e) && TRANSIENT.has(e.code)) || !isByokError(e)) throw e;
  keys.failedTenants.add(tenantId);
  if (!run.result.tenantErrors.some((x) => x.tenantId === tenantId)) {
    run.result.tenantErrors.push({ tenantId, code: e.code, message: e.message });
  }
}

/** Dry run: never creates a data key; a tenant without one counts its plaintext as to be written. */
export async function loadKeysForDryRun(run: Run, rows: readonly Row[]): Promise<BatchKeys> {
  if (run.op === 'decrypt') return loadKeys(run, rows);
  const tenants = [...new Set(rows.map((r) => r.t).filter((x): x is string => x !== null))];
  const active = await activeDeks(run.db, run.keyring, tenants);
  const keys = emptyKeys();
  for (const tenant of tenants) {
    const id = active.get(tenant);
    keys.active.set(
      tenant,
      id === undefined ? placeholderEntry(run.keyring, tenant) : await keysOf(run.keyring).getDek(id),
    );
  }
  return loadKeys(run, rows, keys);
}

/** Active data key ids of tenants, read from the key store (never creates one). */
export async function activeDeks(
  db: AnyPgDatabase,
  _keyring: Keyring,
  tenants: readonly string[],
): Promise<Map<string, string>> {
  if (tenants.length === 0) return new Map();
  const rows = await query<{ tenant_id: string; id: string }>(
    db,
    sql`SELECT tenant_id, id::text AS id FROM byok.deks WHERE state = 'active' AND tenant_id IN (${sql.join(
      tenants.map((x) => sql`${x}::text`),
      sql`, `,
    )})`,
  );
  return new Map(rows.map((r) => [r.tenant_id, r.id]));
}

/** A stand-in active key for a tenant that has none yet (dry run): encrypts with a throwaway key. */
function placeholderEntry(keyring: Keyring, tenantId: string): DekEntry {
  return keysOf(keyring).cache.uncached(
    '00000000-0000-0000-0000-000000000000',
    Buffer.alloc(16),
    tenantId,
    0,
    randomBytes(32),
  );
}
