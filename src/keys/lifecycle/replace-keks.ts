/**
 * Replacing a tenant's KEK set, the operation behind `enableByok`, `rotateKek` and `disableByok`:
 * verify the new KEKs, then in one transaction under the tenant's lock record them, re-wrap every
 * data key under each, drop the old wraps and switch the mode.
 */
import { randomUUID } from 'node:crypto';
import { and, eq, inArray, ne, notInArray, sql } from 'drizzle-orm';
import { ByokConfigError, isByokError, TenantShreddedError } from '../../errors.ts';
import type { Kek, KeyDescription } from '../../kms/kek.ts';
import { assertTenantId, scopeStorage } from '../../scope.ts';
import { type AnyPgDatabase, asPgDb } from '../../store/db.ts';
import { keysOf } from '../access.ts';
import { dekMaterial } from '../cache.ts';
import type { KeyringContext } from '../context.ts';
import { wrapIdentified } from '../identity.ts';
import { checkIssuedExternalId } from '../onboarding.ts';
import { byokDeks, byokDekWraps, byokKeks, byokTenants } from '../../store/schema-key-store.ts';
import { type LifecycleOptions, lockTenant, type TenantStatus } from './common.ts';
import { status } from './status.ts';
import { verifyKek } from './verify.ts';

export interface Change {
  readonly operation: 'enable-byok' | 'rotate-kek' | 'disable-byok';
  /** The new KEK set; empty means the platform KEK. */
  readonly keks: readonly Kek[];
}

/**
 * Replaces the tenant's KEK set: verify the new KEKs, then in one transaction under the tenant's
 * lock, record them, re-wrap every data key under each, drop the old wraps, switch the mode.
 */
export async function replaceKeks(
  keyring: KeyringContext,
  tenantId: string,
  change: Change,
  options: LifecycleOptions,
): Promise<TenantStatus> {
  assertTenantId(tenantId);
  const started = performance.now();
  const keyRef = change.keks.map((k) => k.keyRef).join(',') || keysOf(keyring).platformKek.keyRef;
  try {
    await checkMode(keyring, tenantId, change.operation);
    await checkIssuedExternalId(keyring, tenantId, change.keks);
    const described = new Map<Kek, KeyDescription>();
    for (const kek of change.keks) described.set(kek, await verifyKek(keyring, tenantId, kek));
    // Secrets are sealed before the transaction (platform KMS calls stay out of it).
    const prepared = await Promise.all(
      change.keks.map(async (kek, priority) => {
        const id = randomUUID();
        const config = kek.toConfig();
        const sealed =
          config.secret === undefined || Object.keys(config.secret).length === 0
            ? undefined
            : await keysOf(keyring).sealSecret(tenantId, id, config.secret);
        return { id, kek, priority, config, sealed };
      }),
    );
    const db = asPgDb(keyring.db);
    const progressDb = (tx: AnyPgDatabase) => (keyring.singleConnection ? tx : db);
    await asPgDb(db).transaction(async (tx) => {
      await lockTenant(tx, tenantId, options.lockTimeoutMs ?? 30_000);
      await tx.insert(byokTenants).values({ tenantId }).onConflictDoNothing();
      const [tenant] = await tx.select().from(byokTenants).where(eq(byokTenants.tenantId, tenantId));
      assertMode(tenantId, tenant, change.operation);
      const oldKeks = await tx
        .select({ id: byokKeks.id })
        .from(byokKeks)
        .where(and(eq(byokKeks.tenantId, tenantId), eq(byokKeks.state, 'active')));
      for (const p of prepared) {
        await tx.insert(byokKeks).values({
          id: p.id,
          tenantId,
          kind: p.kek.kind,
          keyRef: p.kek.keyRef,
          region: p.kek.region ?? null,
          priority: p.priority,
          state: 'active',
          params: p.config.params as Record<string, unknown>,
          secret: p.sealed?.secret ?? null,
          secretKey: p.sealed?.secretKey ?? null,
          secretKeyRef: p.sealed?.secretKeyRef ?? null,
          secretKeyBy: p.sealed?.secretKeyBy ?? null,
          currentKeyId: described.get(p.kek)?.currentKeyId ?? null,
          health: 'ok',
          lastVerifiedAt: new Date(),
        });
      }
      const deks = await tx
        .select({ id: byokDeks.id, version: byokDeks.version })
        .from(byokDeks)
        .where(and(eq(byokDeks.tenantId, tenantId), ne(byokDeks.state, 'destroyed')));
      const progress = {
        operation: change.operation,
        startedAt: new Date().toISOString(),
        total: deks.length,
        done: 0,
      };
      await setProgress(progressDb(tx), tenantId, progress);
      for (const d of deks) {
        // Unwrap through the KEKs recorded now (cached if warm), wrap under each new KEK.
        const entry = await keysOf(keyring).getDek(d.id, tx);
        const raw = dekMaterial(entry).raw;
        if (prepared.length === 0) {
          const w = await keyring.timedKms('wrap', keysOf(keyring).platformKek, tenantId, () =>
            wrapIdentified(keysOf(keyring).platformKek, raw, { tenantId, dekId: d.id }),
          );
          await tx
            .insert(byokDekWraps)
            .values({ dekId: d.id, kekId: null, kekRef: keysOf(keyring).platformKek.keyRef, ...w })
            .onConflictDoUpdate({
              target: [byokDekWraps.dekId, byokDekWraps.kekRef],
              set: { ...w, kekId: null },
            });
        } else {
          for (const p of prepared) {
            const w = await keyring.timedKms('wrap', p.kek, tenantId, () =>
              wrapIdentified(p.kek, raw, { tenantId, dekId: d.id }),
            );
            await tx
              .insert(byokDekWraps)
              .values({ dekId: d.id, kekId: p.id, kekRef: p.kek.keyRef, ...w })
              .onConflictDoUpdate({
                target: [byokDekWraps.dekId, byokDekWraps.kekRef],
                set: { ...w, kekId: p.id },
              });
          }
        }
        progress.done++;
        await setProgress(progressDb(tx), tenantId, progress);
      }
      // Drop every wrap that is not under the new KEK set; retire the old KEKs.
      const keepIds = prepared.map((p) => p.id);
      const dekIds = deks.map((d) => d.id);
      if (dekIds.length > 0) {
        await tx
          .delete(byokDekWraps)
          .where(
            and(
              inArray(byokDekWraps.dekId, dekIds),
              keepIds.length === 0
                ? sql`${byokDekWraps.kekId} is not null`
                : sql`(${byokDekWraps.kekId} is null or ${notInArray(byokDekWraps.kekId, keepIds)})`,
            ),
          );
      }
      if (oldKeks.length > 0) {
        await tx
          .update(byokKeks)
          .set({ state: 'retired', secret: null, secretKey: null })
          .where(
            inArray(
              byokKeks.id,
              oldKeks.map((k) => k.id),
            ),
          );
      }
      await tx
        .update(byokTenants)
        .set({
          mode: prepared.length === 0 ? 'platform' : 'byok',
          health: 'ok',
          lastError: null,
          lastVerifiedAt: new Date(),
          progress: null,
          updatedAt: new Date(),
        })
        .where(eq(byokTenants.tenantId, tenantId));
      await keyring.notify(tx, tenantId, change.operation);
      keyring.dropKekInstances(oldKeks.map((k) => k.id));
    });
    keyring.evictTenant(tenantId, change.operation);
    keyring.emit({
      type: 'lifecycle',
      operation: change.operation,
      tenantId,
      keyRef,
      outcome: 'ok',
      latencyMs: performance.now() - started,
    });
    await keyring.audit({
      tenantId,
      operation: change.operation,
      keyRef,
      outcome: 'ok',
      latencyMs: performance.now() - started,
    });
    return status(keyring, tenantId);
  } catch (e) {
    await clearProgressIfIdle(keyring, tenantId).catch(() => undefined);
    const errorCode = isByokError(e) ? e.code : 'ERR_UNKNOWN';
    keyring.emit({
      type: 'lifecycle',
      operation: change.operation,
      tenantId,
      keyRef,
      outcome: 'error',
      errorCode,
      latencyMs: performance.now() - started,
    });
    await keyring
      .audit({
        tenantId,
        operation: change.operation,
        keyRef,
        outcome: 'error',
        latencyMs: performance.now() - started,
        detail: { errorCode },
      })
      .catch(() => undefined);
    throw e;
  }
}

function assertMode(
  tenantId: string,
  tenant: { state: string; mode: string } | undefined,
  operation: Change['operation'],
): void {
  if (tenant?.state === 'shredded')
    throw new TenantShreddedError(`tenant ${tenantId} was crypto-shredded`, { tenantId });
  if (operation === 'enable-byok' && tenant?.mode === 'byok') {
    throw new ByokConfigError(`tenant ${tenantId} already uses BYOK: use rotateKek to change its keys`, {
      tenantId,
    });
  }
  if (operation !== 'enable-byok' && tenant?.mode !== 'byok') {
    throw new ByokConfigError(`tenant ${tenantId} does not use BYOK: use enableByok first`, { tenantId });
  }
}

/** Early mode check (before any KMS call); repeated under the lock inside the transaction. */
async function checkMode(
  keyring: KeyringContext,
  tenantId: string,
  operation: Change['operation'],
): Promise<void> {
  const [tenant] = await keyring.db.select().from(byokTenants).where(eq(byokTenants.tenantId, tenantId));
  assertMode(tenantId, tenant, operation);
}

async function setProgress(db: AnyPgDatabase, tenantId: string, progress: object): Promise<void> {
  await scopeStorage.exit(() =>
    db.update(byokTenants).set({ progress, updatedAt: new Date() }).where(eq(byokTenants.tenantId, tenantId)),
  );
}

/** After a failed operation, clear the progress it published (its transaction rolled back). */
async function clearProgressIfIdle(keyring: KeyringContext, tenantId: string): Promise<void> {
  await scopeStorage.exit(() =>
    keyring.db.update(byokTenants).set({ progress: null }).where(eq(byokTenants.tenantId, tenantId)),
  );
}

export function asKeks(keks: Kek | readonly Kek[], what: string): Kek[] {
  const list = Array.isArray(keks) ? [...keks] : [keks as Kek];
  if (list.length === 0) throw new ByokConfigError(`${what}: give at least one KEK`);
  for (const k of list) {
    if (
      k === null ||
      typeof k !== 'object' ||
      typeof (k as Kek).wrap !== 'function' ||
      typeof (k as Kek).keyRef !== 'string'
    ) {
      throw new ByokConfigError(
        `${what}: every KEK must come from awsKms(...), gcpKms(...), azureKeyVault(...), vaultTransit(...) or another Kek provider`,
      );
    }
  }
  const refs = new Set(list.map((k) => k.keyRef));
  if (refs.size !== list.length) throw new ByokConfigError(`${what}: the same key is listed twice`);
  return list;
}
