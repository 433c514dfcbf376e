/** `status`: a tenant's mode, KEKs, health, data key versions and progress. */
import { and, eq } from 'drizzle-orm';
import { assertTenantId, scopeStorage } from '../../scope.ts';
import { asPgDb } from '../../store/db.ts';
import type { KeyringContext } from '../context.ts';
import { isMoved } from '../identity.ts';
import { byokDeks, byokDekWraps, byokKeks, byokTenants } from '../../store/schema-key-store.ts';
import { lockHeld, type TenantStatus } from './common.ts';

/** The tenant's key status. Never contains secrets (no credentials, no wrapped keys). */
export async function status(keyring: KeyringContext, tenantId: string): Promise<TenantStatus> {
  assertTenantId(tenantId);
  return scopeStorage.exit(async () => {
    const db = asPgDb(keyring.db);
    const [t] = await db.select().from(byokTenants).where(eq(byokTenants.tenantId, tenantId));
    if (t === undefined) {
      return {
        tenantId,
        mode: 'none',
        state: 'none',
        health: 'ok',
        lastVerifiedAt: null,
        lastError: null,
        keks: [],
        dekVersions: [],
        progress: null,
      };
    }
    const keks = await db
      .select()
      .from(byokKeks)
      .where(and(eq(byokKeks.tenantId, tenantId), eq(byokKeks.state, 'active')))
      .orderBy(byokKeks.priority);
    const deks = await db
      .select({
        id: byokDeks.id,
        version: byokDeks.version,
        state: byokDeks.state,
        createdAt: byokDeks.createdAt,
        kekRef: byokDekWraps.kekRef,
        kekId: byokDekWraps.kekId,
        wrappedBy: byokDekWraps.wrappedBy,
      })
      .from(byokDeks)
      .leftJoin(byokDekWraps, eq(byokDekWraps.dekId, byokDeks.id))
      .where(eq(byokDeks.tenantId, tenantId))
      .orderBy(byokDeks.version);
    const versions = new Map<
      number,
      { version: number; state: string; createdAt: Date; wrappedUnder: string[] }
    >();
    for (const d of deks) {
      let v = versions.get(d.version);
      if (v === undefined) {
        v = { version: d.version, state: d.state, createdAt: d.createdAt, wrappedUnder: [] };
        versions.set(d.version, v);
      }
      if (d.kekRef !== null) v.wrappedUnder.push(d.kekRef);
    }
    const kekStatuses = keks.map((k) => {
      const byKey = new Map<string | null, number>();
      let moved = 0;
      for (const d of deks) {
        if (d.kekId !== k.id) continue;
        const by = d.wrappedBy ?? null;
        byKey.set(by, (byKey.get(by) ?? 0) + 1);
        if (isMoved(k.keyRef, k.currentKeyId, by)) moved++;
      }
      return {
        keyRef: k.keyRef,
        currentKeyId: k.currentKeyId,
        wrappedBy: [...byKey].map(([keyId, dataKeys]) => ({ keyId, dataKeys })),
        moved,
        kind: k.kind,
        region: k.region,
        priority: k.priority,
        health: k.health,
        lastVerifiedAt: k.lastVerifiedAt,
        lastError: k.lastError,
      };
    });
    const unhealthy = kekStatuses.filter((k) => k.health !== 'ok').length;
    const health =
      t.health === 'error' || (unhealthy > 0 && unhealthy === kekStatuses.length)
        ? 'error'
        : unhealthy > 0 || kekStatuses.some((k) => k.moved > 0)
          ? 'degraded'
          : 'ok';
    // Progress left by an operation whose process died: its transaction rolled back and released the lock.
    let progress = t.progress ?? null;
    if (progress !== null && !(await lockHeld(db, tenantId))) {
      progress = null;
      await db.update(byokTenants).set({ progress: null }).where(eq(byokTenants.tenantId, tenantId));
    }
    return {
      tenantId,
      mode: t.mode === 'byok' ? 'byok' : 'platform',
      state: t.state === 'shredded' ? 'shredded' : 'active',
      health,
      lastVerifiedAt: t.lastVerifiedAt,
      lastError: t.lastError,
      keks: kekStatuses,
      dekVersions: [...versions.values()],
      progress,
    };
  });
}
