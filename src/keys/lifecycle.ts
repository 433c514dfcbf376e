// One file: the lifecycle operations share the tenant lock, KEK replacement, status (docs/architecture.md).
import { randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { and, eq, inArray, isNull, ne, notInArray, sql } from 'drizzle-orm';
import { assertTenantId, scopeStorage } from '../scope.ts';
import {
  ByokConfigError,
  isByokError,
  KeyDisabledError,
  KeyNotFoundError,
  KeyUsageError,
  KmsIntegrityError,
  LifecycleBusyError,
  TenantShreddedError,
} from '../errors.ts';
import type { Kek, KekKind, KeyDescription } from '../kms/kek.ts';
import { dekMaterial } from './cache.ts';
import { isRefusal } from './heartbeat.ts';
import { isMoved, unwrapIdentified, wrapIdentified } from './identity.ts';
import { type AnyPgDatabase, asPgDb } from '../store/db.ts';
import { keysOf } from './access.ts';
import type { Keyring } from './keyring.ts';
import { mapLimit } from './map-limit.ts';
import { checkIssuedExternalId } from './onboarding.ts';
import { byokDeks, byokDekWraps, byokKeks, byokTenants } from './schema.ts';

/**
 * The key lifecycle of one tenant: enable / rotate / disable BYOK, rotate the data key, shred,
 * status and health. Every change of a tenant's keys
 * - is verified before anything is saved (key state, usage, and a wrap/unwrap round trip);
 * - runs in one transaction holding the tenant's advisory lock (the lock lazy data key creation
 *   takes too), so changes are serialized across processes and a process killed in the middle
 *   leaves the store exactly as it was: every data key stays wrapped under the KEKs recorded for it;
 * - re-wraps data keys only: no field is re-encrypted for a KEK change;
 * - is broadcast to other instances (PostgreSQL NOTIFY, delivered at commit) so they drop cached keys.
 */
export interface TenantKekStatus {
  /**
   * The configured reference: AWS key or alias ARN, Cloud KMS CryptoKey name, Key Vault key id
   * without a version, or the Vault transit key's URL.
   */
  readonly keyRef: string;
  /**
   * What `keyRef` resolved to at the last health check: the key ARN an AWS alias points to, the
   * primary CryptoKeyVersion of a Cloud KMS key, the current version of a Key Vault key, the latest
   * version of a transit key. Null until a health check (or a re-wrap) ran.
   */
  readonly currentKeyId: string | null;
  /**
   * The keys that actually wrap the tenant's data keys under this KEK, with how many each
   * (`keyId` null: wrapped before key identity was recorded).
   */
  readonly wrappedBy: readonly { keyId: string | null; dataKeys: number }[];
  /**
   * Data keys wrapped under another key than `currentKeyId` (an AWS alias moved, a Cloud KMS primary
   * version changed, a Key Vault or transit key rotated). They still unwrap while the old key (or
   * version) is enabled; `rewrapMovedKeys` moves them to the current one.
   */
  readonly moved: number;
  readonly kind: string;
  readonly region: string | null;
  readonly priority: number;
  readonly health: string;
  readonly lastVerifiedAt: Date | null;
  readonly lastError: string | null;
}

export interface TenantStatus {
  readonly tenantId: string;
  /** 'platform': data keys wrapped by the platform KEK; 'byok': by the tenant's KEKs; 'none': no keys yet. */
  readonly mode: 'platform' | 'byok' | 'none';
  readonly state: 'active' | 'shredded' | 'none';
  readonly health: 'ok' | 'degraded' | 'error';
  readonly lastVerifiedAt: Date | null;
  readonly lastError: string | null;
  readonly keks: readonly TenantKekStatus[];
  readonly dekVersions: readonly {
    version: number;
    state: string;
    createdAt: Date;
    wrappedUnder: string[];
  }[];
  /** The lifecycle operation in progress on some instance, if any: { operation, startedAt, total, done }. */
  readonly progress: unknown | null;
}

export interface LifecycleOptions {
  /** Most time to wait for another instance's lifecycle operation on the same tenant. Default 30 s. */
  lockTimeoutMs?: number;
}

const LOCK_POLL_MS = 50;

function lockKey(tenantId: string): string {
  return `byok:tenant:${tenantId}`;
}

/** Takes the tenant's transaction-scoped advisory lock, waiting at most `timeoutMs`. */
export async function lockTenant(tx: AnyPgDatabase, tenantId: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [row] = (await rows(
      tx.execute(sql`select pg_try_advisory_xact_lock(hashtextextended(${lockKey(tenantId)}, 0)) as ok`),
    )) as { ok: boolean }[];
    if (row?.ok === true) return;
    if (Date.now() >= deadline) {
      throw new LifecycleBusyError(`another key lifecycle operation on tenant ${tenantId} is still running`, {
        tenantId,
      });
    }
    await new Promise((r) => setTimeout(r, LOCK_POLL_MS));
  }
}

/** Whether some transaction holds the tenant's lifecycle lock right now. */
async function lockHeld(db: AnyPgDatabase, tenantId: string): Promise<boolean> {
  return asPgDb(db).transaction(async (tx) => {
    const [row] = (await rows(
      tx.execute(sql`select pg_try_advisory_xact_lock(hashtextextended(${lockKey(tenantId)}, 0)) as ok`),
    )) as { ok: boolean }[];
    return row?.ok !== true;
  });
}

async function rows(p: PromiseLike<unknown>): Promise<unknown[]> {
  const r = await p;
  return Array.isArray(r) ? r : ((r as { rows?: unknown[] }).rows ?? []);
}

function asKeks(keks: Kek | readonly Kek[], what: string): Kek[] {
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

/** What each provider's key must be to wrap data keys, in that provider's words (for refusals). */
const KEY_NEEDED: Partial<Record<KekKind, string>> = {
  'aws-kms': 'an AWS KMS symmetric encryption key (key spec SYMMETRIC_DEFAULT, key usage ENCRYPT_DECRYPT)',
  'gcp-kms': 'a Cloud KMS key of purpose ENCRYPT_DECRYPT (algorithm GOOGLE_SYMMETRIC_ENCRYPTION)',
  'azure-key-vault':
    'a Key Vault RSA key (RSA or RSA-HSM) permitting wrapKey and unwrapKey for RSA-OAEP-256, or a Managed HSM oct-HSM key for A256KW',
  'vault-transit':
    'a Vault transit key of an AEAD type (aes256-gcm96, aes128-gcm96 or chacha20-poly1305), derived or not as the KEK is configured',
};

/**
 * Verifies a tenant's KEK before it is used: the keyring can rebuild it from configuration, the key
 * is enabled and can wrap, and a wrap/unwrap round trip under the tenant's context succeeds.
 * Throws the provider's typed error (not found, disabled, access denied, usage, unreachable...).
 */
export async function verifyKek(keyring: Keyring, tenantId: string, kek: Kek): Promise<KeyDescription> {
  if (!keyring.hasFactory(kek.kind)) {
    throw new ByokConfigError(
      `KEKs of kind '${kek.kind}' cannot be rebuilt by other instances: pass kekFactories: { '${kek.kind}': ... } to createKeyring`,
      { tenantId },
    );
  }
  const description = await keyring.timedKms('describe', kek, tenantId, () => kek.describe());
  const d = description.details ?? {};
  const need = KEY_NEEDED[kek.kind] ?? 'a key that can encrypt and decrypt (wrap and unwrap) data keys';
  // AWS (keyUsage, keySpec) and Cloud KMS (purpose) name usage and spec; Key Vault and Vault
  // Transit report what they lack through canWrap and their own words in providerState.
  const usage = d.keyUsage ?? d.purpose;
  const wrongUsage =
    (usage !== undefined && usage !== null && usage !== 'ENCRYPT_DECRYPT') ||
    (d.keySpec !== undefined && d.keySpec !== null && d.keySpec !== 'SYMMETRIC_DEFAULT');
  if (wrongUsage) {
    const spec = d.keySpec ?? d.algorithm;
    throw new KeyUsageError(
      `${kek.keyRef} cannot wrap data keys (usage ${usage ?? 'unknown'}, spec ${spec ?? 'unknown'}): use ${need}`,
      { tenantId },
    );
  }
  if (description.state !== 'enabled') {
    const words = description.providerState ?? description.state;
    const fix = /expired|not ?yet ?valid/i.test(words)
      ? 'move its expiry or activation date (or use another key version) first'
      : 'enable it first';
    throw new KeyDisabledError(`${kek.keyRef} is ${words}: ${fix}`, { tenantId });
  }
  if (d.canWrap === false) {
    throw new KeyUsageError(
      `${kek.keyRef} cannot wrap data keys (${description.providerState ?? 'unknown state'}): use ${need}`,
      { tenantId },
    );
  }
  const probe = randomBytes(32);
  const context = { tenantId, dekId: `verify-${randomUUID()}` };
  const { wrapped, wrappedBy } = await keyring.timedKms('wrap', kek, tenantId, () =>
    wrapIdentified(kek, probe, context),
  );
  const back = Buffer.from(
    await keyring.timedKms('unwrap', kek, tenantId, () => unwrapIdentified(kek, wrapped, context, wrappedBy)),
  );
  const ok = back.length === 32 && timingSafeEqual(back, probe);
  probe.fill(0);
  back.fill(0);
  if (!ok) throw new KmsIntegrityError(`${kek.keyRef} did not return the data it wrapped`, { tenantId });
  return description;
}

interface Change {
  readonly operation: 'enable-byok' | 'rotate-kek' | 'disable-byok';
  /** The new KEK set; empty means the platform KEK. */
  readonly keks: readonly Kek[];
}

/**
 * Replaces the tenant's KEK set: verify the new KEKs, then in one transaction under the tenant's
 * lock, record them, re-wrap every data key under each, drop the old wraps, switch the mode.
 */
async function replaceKeks(
  keyring: Keyring,
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
async function checkMode(keyring: Keyring, tenantId: string, operation: Change['operation']): Promise<void> {
  const [tenant] = await keyring.db.select().from(byokTenants).where(eq(byokTenants.tenantId, tenantId));
  assertMode(tenantId, tenant, operation);
}

async function setProgress(db: AnyPgDatabase, tenantId: string, progress: object): Promise<void> {
  await scopeStorage.exit(() =>
    db.update(byokTenants).set({ progress, updatedAt: new Date() }).where(eq(byokTenants.tenantId, tenantId)),
  );
}

/** After a failed operation, clear the progress it published (its transaction rolled back). */
async function clearProgressIfIdle(keyring: Keyring, tenantId: string): Promise<void> {
  await scopeStorage.exit(() =>
    keyring.db.update(byokTenants).set({ progress: null }).where(eq(byokTenants.tenantId, tenantId)),
  );
}

export function enableByok(
  keyring: Keyring,
  tenantId: string,
  keks: Kek | readonly Kek[],
  options: LifecycleOptions = {},
): Promise<TenantStatus> {
  return scopeStorage.exit(() =>
    replaceKeks(keyring, tenantId, { operation: 'enable-byok', keks: asKeks(keks, 'enableByok') }, options),
  );
}

export function rotateKek(
  keyring: Keyring,
  tenantId: string,
  keks: Kek | readonly Kek[],
  options: LifecycleOptions = {},
): Promise<TenantStatus> {
  return scopeStorage.exit(() =>
    replaceKeks(keyring, tenantId, { operation: 'rotate-kek', keks: asKeks(keks, 'rotateKek') }, options),
  );
}

export function disableByok(
  keyring: Keyring,
  tenantId: string,
  options: LifecycleOptions = {},
): Promise<TenantStatus> {
  return scopeStorage.exit(() =>
    replaceKeks(keyring, tenantId, { operation: 'disable-byok', keks: [] }, options),
  );
}

/** A new data key version for new writes; older versions stay readable until re-encrypted. */
export async function rotateDek(
  keyring: Keyring,
  tenantId: string,
): Promise<{ tenantId: string; version: number }> {
  assertTenantId(tenantId);
  const started = performance.now();
  return scopeStorage.exit(async () => {
    const entry = await keysOf(keyring).createDek(tenantId, { rotate: true });
    await keyring.notify(keyring.db, tenantId, 'rotate-dek');
    keyring.emit({
      type: 'lifecycle',
      operation: 'rotate-dek',
      tenantId,
      outcome: 'ok',
      latencyMs: performance.now() - started,
      detail: { version: entry.version },
    });
    await keyring.audit({
      tenantId,
      operation: 'rotate-dek',
      outcome: 'ok',
      latencyMs: performance.now() - started,
      detail: { version: entry.version },
    });
    return { tenantId, version: entry.version };
  });
}

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
  keyring: Keyring,
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

/** The tenant's key status. Never contains secrets (no credentials, no wrapped keys). */
export async function status(keyring: Keyring, tenantId: string): Promise<TenantStatus> {
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

/**
 * Health sweep over BYOK tenants: DescribeKey / GetCryptoKey on every active KEK, recording health,
 * last verified time and last error. A revoked or disabled key evicts the tenant's cached data keys
 * here and, through NOTIFY, on every instance.
 */
export async function checkHealth(
  keyring: Keyring,
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
  keyring: Keyring,
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
