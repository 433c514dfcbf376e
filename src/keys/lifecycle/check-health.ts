/** `checkHealth`: the describe sweep over BYOK tenants' KEKs. */
import { and, eq, inArray, isNull } from 'drizzle-orm';
import { isByokError, KeyDisabledError, KeyUsageError } from '../../errors.ts';
import { scopeStorage } from '../../scope.ts';
import { asPgDb } from '../../store/db.ts';
import { keysOf } from '../access.ts';
import type { KeyringContext } from '../context.ts';
import { isRefusal } from '../heartbeat.ts';
import { mapLimit } from '../map-limit.ts';
import { byokKeks, byokTenants } from '../../store/schema-key-store.ts';
import type { TenantStatus } from './common.ts';
import { status } from './status.ts';

/**
 * Health sweep over BYOK tenants: DescribeKey / GetCryptoKey on every active KEK, recording health,
 * last verified time and last error. A revoked or disabled key evicts the tenant's cached data keys
 * here and, through NOTIFY, on every instance.
 */
export async function checkHealth(
  keyring: KeyringContext,
  options: { tenants?: readonly string[]; concurrency?: number } = {},
): Promise<TenantStatus[]> {
  return scopeStorage.exit(async () => {
    const db = asPgDb(keyring.db);
    const keks = await db
      .select()
      .from(byokKeks)
      .innerJoin(byokTenants, eq(byokTenants.tenantId, byokKeks.tenantId))
      .where(
        and(
          eq(byokKeks.state, 'active'),
          eq(byokTenants.mode, 'byok'),
          options.tenants === undefined ? undefined : inArray(byokKeks.tenantId, [...options.tenants]),
        ),
      );
    const failures = new Map<string, string>();
    await mapLimit(keks, options.concurrency ?? 8, async ({ keks: row }) => {
      let health = 'ok';
      let lastError: string | null = null;
      let currentKeyId = row.currentKeyId;
      try {
        const kek = await keysOf(keyring).kekFor(row as never);
        const d = await keyring.timedKms('describe', kek, row.tenantId, () => kek.describe());
        if (typeof d.currentKeyId === 'string') currentKeyId = d.currentKeyId;
        if (d.state !== 'enabled')
          throw new KeyDisabledError(`${row.keyRef} is ${d.providerState ?? d.state}`, {
            tenantId: row.tenantId,
          });
        if (d.details?.canWrap === false)
          throw new KeyUsageError(`${row.keyRef} can no longer wrap data keys`, { tenantId: row.tenantId });
      } catch (e) {
        health = 'error';
        lastError = isByokError(e) ? `${e.code}: ${e.message}` : 'unexpected failure';
        failures.set(row.tenantId, lastError);
        if (isRefusal(e)) await keyring.reportRevocation(row.tenantId, row.keyRef, e);
      }
      await db
        .update(byokKeks)
        .set({ health, lastError, lastVerifiedAt: new Date(), currentKeyId })
        .where(eq(byokKeks.id, row.id));
    });
    const tenants = [...new Set(keks.map((k) => k.keks.tenantId))];
    for (const t of tenants) {
      const err = failures.get(t) ?? null;
      await db
        .update(byokTenants)
        .set({ health: err === null ? 'ok' : 'error', lastError: err, lastVerifiedAt: new Date() })
        .where(and(eq(byokTenants.tenantId, t), isNull(byokTenants.progress)));
    }
    return Promise.all(tenants.map((t) => status(keyring, t)));
  });
}
