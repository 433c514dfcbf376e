/**
 * `keyring.rewrapMovedKeys(tenantId)`: after a tenant's alias was moved to a new key (AWS manual
 * rotation) or its Cloud KMS key got a new primary version, re-wraps every data key of the tenant
 * that is wrapped under another key than the one its KEK reference names now, so the old key (or
 * version) can be disabled with no loss.
 *
 * A wrap by an older version of the same key is re-wrapped inside the KMS when the provider can
 * (`Kek.rewrap`: Vault Transit `rewrap`), else unwrapped and wrapped again.
 *
 * Like `rotateKek`, each KEK is verified first (DescribeKey / GetCryptoKey, a wrap/unwrap round
 * trip through its current key); then, in one transaction under the tenant's lifecycle lock, each
 * such data key is unwrapped by the key that wrapped it and wrapped again through the reference.
 * Data is never re-encrypted. A process killed in the middle leaves every wrap as it was.
 */
import { and, eq, ne } from 'drizzle-orm';
import { assertTenantId, scopeStorage } from '../../scope.ts';
import { ByokConfigError, isByokError } from '../../errors.ts';
import { wrapIdentified } from '../identity.ts';
import { dekMaterial } from '../cache.ts';
import { type AnyPgDatabase, asPgDb } from '../../store/db.ts';
import { keysOf } from '../access.ts';
import type { KeyringContext } from '../context.ts';
import { type LifecycleOptions, lockTenant, type TenantStatus } from './common.ts';
import { status } from './status.ts';
import { verifyKek } from './verify.ts';
import { byokDeks, byokDekWraps, byokKeks, byokTenants } from '../../store/schema-key-store.ts';

export interface RewrapMovedResult {
  readonly tenantId: string;
  /** Data key wraps moved to the key each KEK reference names now. */
  readonly rewrapped: number;
  readonly status: TenantStatus;
}

export async function rewrapMovedKeys(
  keyring: KeyringContext,
  tenantId: string,
  options: LifecycleOptions = {},
): Promise<RewrapMovedResult> {
  assertTenantId(tenantId);
  return scopeStorage.exit(async () => {
    const started = performance.now();
    const db = asPgDb(keyring.db);
    const [tenant] = await db.select().from(byokTenants).where(eq(byokTenants.tenantId, tenantId));
    if (tenant?.mode !== 'byok') {
      throw new ByokConfigError(`tenant ${tenantId} does not use BYOK: nothing to re-wrap`, { tenantId });
    }
    try {
      const rows = await db
        .select()
        .from(byokKeks)
        .where(and(eq(byokKeks.tenantId, tenantId), eq(byokKeks.state, 'active')));
      // Verify every KEK through the key its reference names now, before anything changes.
      const targets: { id: string; keyRef: string; current: string | null }[] = [];
      for (const row of rows) {
        const kek = await keysOf(keyring).kekFor(row as never);
        const d = await verifyKek(keyring, tenantId, kek);
        targets.push({ id: row.id, keyRef: row.keyRef, current: d.currentKeyId ?? null });
      }
      let rewrapped = 0;
      await asPgDb(db).transaction(async (tx) => {
        await lockTenant(tx, tenantId, options.lockTimeoutMs ?? 30_000);
        for (const t of targets) {
          const row = rows.find((r) => r.id === t.id)!;
          const kek = await keysOf(keyring).kekFor(row as never);
          const wraps = await tx
            .select({ dekId: byokDekWraps.dekId, wrappedBy: byokDekWraps.wrappedBy })
            .from(byokDekWraps)
            .innerJoin(byokDeks, eq(byokDeks.id, byokDekWraps.dekId))
            .where(
              and(
                eq(byokDekWraps.kekId, t.id),
                eq(byokDeks.tenantId, tenantId),
                ne(byokDeks.state, 'destroyed'),
              ),
            );
          const stale = wraps.filter(
            (w) => w.wrappedBy === null || (t.current !== null && w.wrappedBy !== t.current),
          );
          for (const w of stale) {
            const context = { tenantId, dekId: w.dekId };
            const sameKey = w.wrappedBy !== null && w.wrappedBy.startsWith(`${row.keyRef}/`);
            let next: { wrapped: Buffer; wrappedBy: string | null };
            if (sameKey && typeof kek.rewrap === 'function') {
              // An older version of the same key: re-wrapped inside the KMS (Vault Transit rewrap).
              const [current] = await tx
                .select({ wrapped: byokDekWraps.wrapped })
                .from(byokDekWraps)
                .where(and(eq(byokDekWraps.dekId, w.dekId), eq(byokDekWraps.kekId, t.id)));
              const r = await keyring.timedKms('wrap', kek, tenantId, () =>
                kek.rewrap!(current!.wrapped, context, w.wrappedBy!),
              );
              next = { wrapped: Buffer.from(r.wrapped), wrappedBy: r.wrappedBy };
            } else {
              const entry = await keysOf(keyring).getDek(w.dekId, tx as AnyPgDatabase);
              next = await keyring.timedKms('wrap', kek, tenantId, () =>
                wrapIdentified(kek, dekMaterial(entry).raw, context),
              );
            }
            await tx
              .update(byokDekWraps)
              .set(next)
              .where(and(eq(byokDekWraps.dekId, w.dekId), eq(byokDekWraps.kekId, t.id)));
            rewrapped++;
          }
          await tx
            .update(byokKeks)
            .set({ currentKeyId: t.current, health: 'ok', lastError: null, lastVerifiedAt: new Date() })
            .where(eq(byokKeks.id, t.id));
        }
        await tx
          .update(byokTenants)
          .set({ health: 'ok', lastError: null, lastVerifiedAt: new Date(), updatedAt: new Date() })
          .where(eq(byokTenants.tenantId, tenantId));
        if (rewrapped > 0) await keyring.notify(tx as AnyPgDatabase, tenantId, 'rewrap-moved');
      });
      if (rewrapped > 0) keyring.evictTenant(tenantId, 'rewrap-moved');
      const detail = { rewrapped };
      keyring.emit({
        type: 'lifecycle',
        operation: 'rewrap-moved',
        tenantId,
        keyRef: rows.map((r) => r.keyRef).join(','),
        outcome: 'ok',
        latencyMs: performance.now() - started,
        detail,
      });
      await keyring.audit({ tenantId, operation: 'rewrap-moved', outcome: 'ok', detail });
      return { tenantId, rewrapped, status: await status(keyring, tenantId) };
    } catch (e) {
      keyring.emit({
        type: 'lifecycle',
        operation: 'rewrap-moved',
        tenantId,
        outcome: 'error',
        errorCode: isByokError(e) ? e.code : 'ERR_UNKNOWN',
        latencyMs: performance.now() - started,
      });
      throw e;
    }
  });
}
