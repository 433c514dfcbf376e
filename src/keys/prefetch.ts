/** `keyring.prefetch`: loading tenants' data keys into the cache ahead of use. */
import { and, eq, inArray, ne } from 'drizzle-orm';
import { ByokConfigError, ByokError, isByokError } from '../errors.ts';
import { asPgDb } from '../store/db.ts';
import type { DekCache, DekEntry } from './cache.ts';
import type { KeyStore } from './key-store.ts';
import { byokDeks } from '../store/schema-key-store.ts';
import { asError } from './unwrap.ts';

/** What `keyring.prefetch` did. */
export interface PrefetchResult {
  /** Distinct tenants asked for. */
  readonly tenants: number;
  /** Data keys unwrapped (or joined in flight) and now cached. */
  loaded: number;
  /** Data keys that were already cached. */
  cached: number;
  /** Tenants without a data key (never wrote encrypted data, or shredded): nothing to load. */
  readonly noKey: string[];
  /** Tenants whose keys were not loaded because the cache is full (`cache.maxEntries`). */
  readonly skipped: string[];
  /** Keys that could not be loaded: the tenant, the error's stable code and its message. */
  readonly failed: { tenantId: string; code: string; message: string }[];
  elapsedMs: number;
}

/** See `Keyring.prefetch`. `getDek`: the keyring's batched, deduplicated load of a data key by id. */
export async function prefetch(
  store: KeyStore,
  cache: DekCache,
  getDek: (id: string) => Promise<DekEntry>,
  tenantIds: readonly string[],
  options: { versions?: 'active' | 'all' },
): Promise<PrefetchResult> {
  if (!Array.isArray(tenantIds) || tenantIds.some((t) => typeof t !== 'string' || t.length === 0)) {
    throw new ByokConfigError('prefetch(tenantIds): tenantIds must be an array of non-empty tenant ids');
  }
  const versions = options?.versions ?? 'active';
  if (versions !== 'active' && versions !== 'all') {
    throw new ByokConfigError(`prefetch: versions must be 'active' or 'all', got '${String(versions)}'`);
  }
  const started = performance.now();
  const unique = [...new Set(tenantIds)];
  const rows: { id: string; tenantId: string; version: number }[] = [];
  for (let i = 0; i < unique.length; i += 1000) {
    const part = unique.slice(i, i + 1000);
    rows.push(
      ...(await store.run(() =>
        asPgDb(store.db)
          .select({ id: byokDeks.id, tenantId: byokDeks.tenantId, version: byokDeks.version })
          .from(byokDeks)
          .where(
            and(
              inArray(byokDeks.tenantId, part),
              versions === 'active' ? eq(byokDeks.state, 'active') : ne(byokDeks.state, 'destroyed'),
            ),
          ),
      )),
    );
  }
  // Tenants in the caller's order, newest version first within a tenant.
  const order = new Map(unique.map((t, i) => [t, i]));
  rows.sort((a, b) => order.get(a.tenantId)! - order.get(b.tenantId)! || b.version - a.version);
  const withKeys = new Set(rows.map((r) => r.tenantId));
  const result: PrefetchResult = {
    tenants: unique.length,
    loaded: 0,
    cached: 0,
    noKey: unique.filter((t) => !withKeys.has(t)),
    skipped: [],
    failed: [],
    elapsedMs: 0,
  };
  const wanted: { id: string; tenantId: string }[] = [];
  const skipped = new Set<string>();
  for (const r of rows) {
    if (cache.get(r.id) !== undefined) {
      result.cached++;
      continue;
    }
    if (wanted.length + result.cached >= cache.maxEntries) {
      skipped.add(r.tenantId);
      continue;
    }
    wanted.push(r);
  }
  result.skipped.push(...skipped);
  const loaded = await Promise.allSettled(wanted.map((r) => getDek(r.id)));
  loaded.forEach((r, i) => {
    if (r.status === 'fulfilled') {
      result.loaded++;
      return;
    }
    const e = asError(r.reason);
    result.failed.push({
      tenantId: wanted[i]!.tenantId,
      code: isByokError(e) ? e.code : ByokError.code,
      // Only the library's own messages: they never carry key material or query parameters.
      message: isByokError(e) ? e.message : 'unexpected failure loading the data key',
    });
  });
  result.elapsedMs = performance.now() - started;
  return result;
}
