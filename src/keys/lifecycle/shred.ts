/** `shred`: crypto-shredding a tenant. */
import { and, eq, inArray, ne } from 'drizzle-orm';
import { ByokConfigError, KeyNotFoundError } from '../../errors.ts';
import { assertTenantId, scopeStorage } from '../../scope.ts';
import { asPgDb } from '../../store/db.ts';
import type { KeyringContext } from '../context.ts';
import { byokDeks, byokDekWraps, byokKeks, byokTenants } from '../../store/schema-key-store.ts';
import { type LifecycleOptions, lockTenant } from './common.ts';

/** Options of `shred`. */
export interface ShredOptions extends LifecycleOptions {
  /** Must repeat the tenant id: shredding is irreversible. */
  readonly confirm: string;
  /**
   * Shred a tenant that has no data keys (never written, or a misspelled id): it only blocks the id
   * from ever getting keys. Default false: refused with `KeyNotFoundError`.
   */
  readonly allowNoKeys?: boolean;
}

/**
 * Crypto-shredding: destroys every wrapped data key of the tenant (and its KEK configuration).
 * Afterwards no instance can decrypt the tenant's rows, and the tenant cannot get new keys.
 * `confirm` must repeat the tenant id.
 */
export async function shred(
  keyring: KeyringContext,
  tenantId: string,
  options: ShredOptions,
): Promise<{ tenantId: string; destroyedVersions: number }> {
  assertTenantId(tenantId);
  if (options?.confirm !== tenantId) {
    throw new ByokConfigError(
      `shred(${JSON.stringify(tenantId)}) is irreversible: pass { confirm: ${JSON.stringify(tenantId)} }`,
      { tenantId },
    );
  }
  const started = performance.now();
  return scopeStorage.exit(async () => {
    const destroyed = await asPgDb(keyring.db).transaction(async (tx) => {
      await lockTenant(tx, tenantId, options.lockTimeoutMs ?? 30_000);
      const deks = await tx.select({ id: byokDeks.id }).from(byokDeks).where(eq(byokDeks.tenantId, tenantId));
      // A tenant that never had a data key is most often a typo ('acme ' for 'acme'): shredding it
      // would block that id for good and destroy nothing. Refused unless asked for explicitly.
      if (deks.length === 0 && options.allowNoKeys !== true) {
        const spaces = tenantId.trim() !== tenantId ? ' (note: the id has leading or trailing spaces)' : '';
        throw new KeyNotFoundError(
          `tenant ${JSON.stringify(tenantId)} has no data keys${spaces}: nothing to shred. Check the tenant id; ` +
            'to block this id from ever getting keys anyway, pass { allowNoKeys: true }',
          { tenantId },
        );
      }
      await tx.insert(byokTenants).values({ tenantId }).onConflictDoNothing();
      if (deks.length > 0) {
        await tx.delete(byokDekWraps).where(
          inArray(
            byokDekWraps.dekId,
            deks.map((d) => d.id),
          ),
        );
      }
      const count = await tx
        .update(byokDeks)
        .set({ state: 'destroyed' })
        .where(and(eq(byokDeks.tenantId, tenantId), ne(byokDeks.state, 'destroyed')))
        .returning({ id: byokDeks.id });
      const keks = await tx
        .delete(byokKeks)
        .where(eq(byokKeks.tenantId, tenantId))
        .returning({ id: byokKeks.id });
      keyring.dropKekInstances(keks.map((k) => k.id));
      await tx
        .update(byokTenants)
        .set({ state: 'shredded', mode: 'platform', progress: null, lastError: null, updatedAt: new Date() })
        .where(eq(byokTenants.tenantId, tenantId));
      await keyring.notify(tx, tenantId, 'shred');
      return count.length;
    });
    keyring.evictTenant(tenantId, 'shred');
    keyring.emit({
      type: 'lifecycle',
      operation: 'shred',
      tenantId,
      outcome: 'ok',
      latencyMs: performance.now() - started,
      detail: { destroyedVersions: destroyed },
    });
    await keyring.audit({
      tenantId,
      operation: 'shred',
      outcome: 'ok',
      latencyMs: performance.now() - started,
      detail: { destroyedVersions: destroyed },
    });
    return { tenantId, destroyedVersions: destroyed };
  });
}
