/** `rewrapPlatform`: moving data keys and KEK secrets off older platform keys. */
import { and, eq, inArray, isNull, sql } from 'drizzle-orm';
import { ByokConfigError } from '../../errors.ts';
import { scopeStorage } from '../../scope.ts';
import { asPgDb } from '../../store/db.ts';
import { keysOf } from '../access.ts';
import type { KeyringContext } from '../context.ts';
import { unwrapIdentified, wrapIdentified } from '../identity.ts';
import { byokDeks, byokDekWraps, byokKeks } from '../../store/schema-key-store.ts';
import { lockTenant, rows } from './common.ts';

/**
 * Re-wraps data keys and re-seals KEK secrets still under an older platform key (see
 * `Keyring.rewrapPlatform`). Each data key is switched in a transaction under its tenant's lock:
 * the new wrap is written before the old one is deleted, so a crash leaves the key unwrappable.
 */
export interface RewrapPlatformProgress {
  /** Data keys re-wrapped so far. */
  readonly dataKeys: number;
  /** Data keys under an older platform key when the call started. */
  readonly total: number;
  readonly dataKeysPerSecond: number;
  readonly etaSeconds: number | null;
}

export async function rewrapPlatform(
  keyring: KeyringContext,
  options: { batchSize?: number; onProgress?: (p: RewrapPlatformProgress) => void } = {},
): Promise<{ dataKeys: number; secrets: number; remaining: number }> {
  const current = keysOf(keyring).platformKek.keyRef;
  const previous = keyring.previousPlatformKeyRefs;
  const batch = options.batchSize ?? 100;
  if (!Number.isInteger(batch) || batch < 1)
    throw new ByokConfigError('rewrapPlatform: batchSize must be a positive integer');
  return scopeStorage.exit(async () => {
    const db = asPgDb(keyring.db);
    let dataKeys = 0;
    const startedAt = performance.now();
    const [counted] =
      previous.length === 0 || options.onProgress === undefined
        ? [{ n: 0 }]
        : ((await rows(
            db.execute(
              sql`select count(*) as n from byok.dek_wraps where kek_id is null and kek_ref in (${sql.join(
                previous.map((r) => sql`${r}`),
                sql`, `,
              )})`,
            ),
          )) as { n: string | number }[]);
    const total = Number(counted?.n ?? 0);
    const report = () => {
      if (options.onProgress === undefined) return;
      const seconds = (performance.now() - startedAt) / 1000;
      const rate = seconds > 0 ? dataKeys / seconds : 0;
      try {
        options.onProgress({
          dataKeys,
          total,
          dataKeysPerSecond: rate,
          etaSeconds: rate > 0 ? Math.max(0, total - dataKeys) / rate : null,
        });
      } catch {
        // a progress callback must not break the operation
      }
    };
    report();
    for (;;) {
      if (previous.length === 0) break;
      const wraps = await db
        .select({
          dekId: byokDekWraps.dekId,
          kekRef: byokDekWraps.kekRef,
          wrapped: byokDekWraps.wrapped,
          wrappedBy: byokDekWraps.wrappedBy,
          tenantId: byokDeks.tenantId,
        })
        .from(byokDekWraps)
        .innerJoin(byokDeks, eq(byokDeks.id, byokDekWraps.dekId))
        .where(and(isNull(byokDekWraps.kekId), inArray(byokDekWraps.kekRef, previous)))
        .limit(batch);
      if (wraps.length === 0) break;
      for (const w of wraps) {
        const old = keysOf(keyring).platformKekFor(w.kekRef);
        if (old === undefined) {
          throw new ByokConfigError(
            `data key ${w.dekId} of tenant ${w.tenantId} is wrapped under platform key ${w.kekRef}: add it to previousPlatformKeks`,
            { tenantId: w.tenantId },
          );
        }
        const context = { tenantId: w.tenantId, dekId: w.dekId };
        const raw = Buffer.from(
          await keyring.timedKms('unwrap', old, w.tenantId, () =>
            unwrapIdentified(old, w.wrapped, context, w.wrappedBy),
          ),
        );
        try {
          const next = await keyring.timedKms('wrap', keysOf(keyring).platformKek, w.tenantId, () =>
            wrapIdentified(keysOf(keyring).platformKek, raw, context),
          );
          await asPgDb(db).transaction(async (tx) => {
            await lockTenant(tx, w.tenantId, 30_000);
            await tx
              .insert(byokDekWraps)
              .values({ dekId: w.dekId, kekId: null, kekRef: current, ...next })
              .onConflictDoUpdate({ target: [byokDekWraps.dekId, byokDekWraps.kekRef], set: next });
            await tx
              .delete(byokDekWraps)
              .where(and(eq(byokDekWraps.dekId, w.dekId), eq(byokDekWraps.kekRef, w.kekRef)));
          });
        } finally {
          raw.fill(0);
        }
        dataKeys++;
        report();
      }
    }
    const sealed =
      previous.length === 0
        ? []
        : await db
            .select()
            .from(byokKeks)
            .where(and(sql`${byokKeks.secret} is not null`, inArray(byokKeks.secretKeyRef, previous)));
    for (const k of sealed) {
      const secret = await keysOf(keyring).openSecret(k.tenantId, k.id, k);
      const resealed = await keysOf(keyring).sealSecret(k.tenantId, k.id, secret);
      await db.update(byokKeks).set(resealed).where(eq(byokKeks.id, k.id));
    }
    const [left] = (await rows(
      db.execute(
        sql`select (select count(*) from byok.dek_wraps where kek_id is null and kek_ref <> ${current})
                 + (select count(*) from byok.keks where secret is not null and secret_key_ref <> ${current}) as n`,
      ),
    )) as { n: string | number }[];
    const remaining = Number(left?.n ?? 0);
    const detail = { dataKeys, secrets: sealed.length, remaining };
    keyring.emit({
      type: 'lifecycle',
      operation: 'rewrap-platform',
      tenantId: '*',
      keyRef: current,
      outcome: 'ok',
      latencyMs: 0,
      detail,
    });
    await keyring.audit({ operation: 'rewrap-platform', keyRef: current, outcome: 'ok', detail });
    return { dataKeys, secrets: sealed.length, remaining };
  });
}
