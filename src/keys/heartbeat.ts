/**
 * The key heartbeat: active revocation detection.
 *
 * A tenant who disables its key, removes the platform's key-policy statement or revokes a grant
 * changes nothing a cached data key needs, and key-policy and grant removals show only on
 * `Decrypt`, not on `DescribeKey`. So every `intervalMs` (jittered) the heartbeat proves access with
 * a real unwrap: for every BYOK tenant whose data keys this instance has cached, and every tenant it
 * saw refused (to notice recovery), one unwrap through each of its active KEKs of the active data
 * key, and of one cached data key per other key that wrapped cached data keys (after an alias move
 * or a Cloud KMS rotation, until `rewrapMovedKeys`), at most `concurrency` KMS calls at once.
 * - A refusal (`KeyAccessDeniedError`, `KeyDisabledError`, `KekNotFoundError`) evicts the tenant's
 *   keys here, records `health: 'error'` in the key store and NOTIFYs every other instance, which
 *   evict too: reads fail on every listening instance within one interval plus NOTIFY delivery.
 * - A success for a tenant recorded as refused sets its health back to `ok` (and tells the others),
 *   with no call from anyone; reads themselves never needed it (nothing negative is cached).
 * - An unwrapped key that differs from the cached one evicts the tenant (`KmsIntegrityError`).
 * - An unreachable or throttling KMS changes nothing (no eviction on a KMS outage), and is reported
 *   in the tick's result and events.
 *
 * Cost: one KMS `Decrypt` per active KEK of each watched tenant per interval, per instance (plus one
 * per other wrapping key while data keys are left under one; AWS
 * counts cross-account calls against the caller's request quota), plus one key store query and at
 * most two updates per tick.
 */
import { timingSafeEqual } from 'node:crypto';
import { and, eq, inArray, ne, or, sql } from 'drizzle-orm';
import { scopeStorage } from '../scope.ts';
import {
  ByokConfigError,
  type ByokError,
  KekNotFoundError,
  KeyAccessDeniedError,
  KeyDisabledError,
  KmsIntegrityError,
} from '../errors.ts';
import { unwrapIdentified } from './identity.ts';
import { dekMaterial } from './cache.ts';
import { asPgDb } from '../store/db.ts';
import { keysOf } from './access.ts';
import type { KeyringContext } from './context.ts';
import { mapLimit } from './map-limit.ts';
import { byokDeks, byokDekWraps, byokKeks, byokTenants } from '../store/schema-key-store.ts';

export interface HeartbeatOptions {
  /** Time between two ticks, in ms (1,000 to 3,600,000). Default 30,000. */
  intervalMs?: number;
  /** Each wait is `intervalMs` times a random factor in [1 - jitter, 1 + jitter]; 0 to 0.5. Default 0.1. */
  jitter?: number;
  /** Most KMS calls in flight at once. Default 4. */
  concurrency?: number;
}

/** What one tick did. */
export interface HeartbeatTick {
  /** Tenants probed (cached keys, or seen refused). */
  readonly tenants: number;
  /** KMS unwrap calls made. */
  readonly kmsCalls: number;
  /** Tenants refused by their KMS in this tick (evicted, recorded, announced). */
  readonly refused: readonly string[];
  /** Tenants recorded as refused that the KMS accepted again (health set back to ok). */
  readonly recovered: readonly string[];
  /** Tenants whose KMS could not be reached or throttled (nothing changed for them). */
  readonly unreachable: readonly string[];
}

export interface Heartbeat {
  readonly intervalMs: number;
  /** Runs one tick now (also what the timer runs); ticks never overlap. */
  tick(): Promise<HeartbeatTick>;
  stop(): Promise<void>;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export const DEFAULT_HEARTBEAT = { intervalMs: 30_000, jitter: 0.1, concurrency: 4 } as const;

/** The refusals that mean "this tenant's key may not be used now". */
export function isRefusal(e: unknown): e is ByokError {
  return e instanceof KeyAccessDeniedError || e instanceof KeyDisabledError || e instanceof KekNotFoundError;
}

function checkOptions(o: HeartbeatOptions): Required<HeartbeatOptions> {
  if (o === null || typeof o !== 'object') throw new ByokConfigError('heartbeat options must be an object');
  const intervalMs = o.intervalMs ?? DEFAULT_HEARTBEAT.intervalMs;
  if (!Number.isInteger(intervalMs) || intervalMs < 1000 || intervalMs > 3_600_000) {
    throw new ByokConfigError('heartbeat.intervalMs must be an integer from 1000 to 3600000 (ms)');
  }
  const jitter = o.jitter ?? DEFAULT_HEARTBEAT.jitter;
  if (typeof jitter !== 'number' || !(jitter >= 0 && jitter <= 0.5)) {
    throw new ByokConfigError('heartbeat.jitter must be a number from 0 to 0.5');
  }
  const concurrency = o.concurrency ?? DEFAULT_HEARTBEAT.concurrency;
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 256) {
    throw new ByokConfigError('heartbeat.concurrency must be an integer from 1 to 256');
  }
  return { intervalMs, jitter, concurrency };
}

/** Starts a heartbeat on a keyring (see `Keyring.startHeartbeat`). */
export function startHeartbeat(keyring: KeyringContext, options: HeartbeatOptions = {}): Heartbeat {
  const o = checkOptions(options);
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<HeartbeatTick> | undefined;

  const tick = (): Promise<HeartbeatTick> => {
    running ??= scopeStorage
      .exit(() => runTick(keyring, o.concurrency))
      .finally(() => {
        running = undefined;
      });
    return running;
  };
  const schedule = (first: boolean) => {
    if (stopped) return;
    // The first wait is spread over the second half of an interval, so instances started together
    // do not tick together.
    const factor = first ? 1 - Math.random() / 2 : 1 + (Math.random() * 2 - 1) * o.jitter;
    timer = setTimeout(
      () => {
        tick()
          .catch(() => undefined)
          .finally(() => schedule(false));
      },
      Math.max(1, Math.round(o.intervalMs * factor)),
    );
    timer.unref();
  };
  schedule(true);
  return {
    intervalMs: o.intervalMs,
    tick,
    stop: async () => {
      stopped = true;
      if (timer !== undefined) clearTimeout(timer);
      await running?.catch(() => undefined);
    },
  };
}

async function runTick(keyring: KeyringContext, concurrency: number): Promise<HeartbeatTick> {
  const started = performance.now();
  const watched = new Set([...keysOf(keyring).cache.tenants(), ...keyring.watchedTenants]);
  const empty: HeartbeatTick = { tenants: 0, kmsCalls: 0, refused: [], recovered: [], unreachable: [] };
  if (watched.size === 0) return empty;
  const db = asPgDb(keyring.db);
  // The active data key of each watched BYOK tenant, wrapped under each active KEK.
  const cachedIds = keysOf(keyring)
    .cache.ids()
    .filter((id) => UUID_RE.test(id));
  const candidates = await db
    .select({
      tenantId: byokDeks.tenantId,
      dekId: byokDeks.id,
      active: sql<boolean>`${byokDeks.state} = 'active'`,
      wrapped: byokDekWraps.wrapped,
      wrappedBy: byokDekWraps.wrappedBy,
      health: byokTenants.health,
      kek: byokKeks,
    })
    .from(byokDeks)
    .innerJoin(byokTenants, eq(byokTenants.tenantId, byokDeks.tenantId))
    .innerJoin(byokDekWraps, eq(byokDekWraps.dekId, byokDeks.id))
    .innerJoin(byokKeks, eq(byokKeks.id, byokDekWraps.kekId))
    .where(
      and(
        inArray(byokDeks.tenantId, [...watched]),
        cachedIds.length === 0
          ? eq(byokDeks.state, 'active')
          : or(eq(byokDeks.state, 'active'), inArray(byokDeks.id, cachedIds)),
        eq(byokTenants.mode, 'byok'),
        ne(byokTenants.state, 'shredded'),
        eq(byokKeks.state, 'active'),
      ),
    );
  // One unwrap per key a data key of the tenant depends on: per KEK and recorded wrapping key (an
  // alias's old and new key, Cloud KMS versions), the active data key first.
  const byKey = new Map<string, (typeof candidates)[number]>();
  for (const r of [...candidates].sort((a, b) => Number(b.active) - Number(a.active))) {
    const k = `${r.tenantId}\u0000${r.kek.id}\u0000${r.wrappedBy ?? ''}`;
    if (!byKey.has(k)) byKey.set(k, r);
  }
  const rows = [...byKey.values()];
  const probed = new Set(rows.map((r) => r.tenantId));
  // Watched tenants that are no longer BYOK (disabled, shredded) need no probe.
  for (const t of keyring.watchedTenants) if (!probed.has(t)) keyring.watchedTenants.delete(t);
  const refused = new Map<string, { keyRef: string; error: ByokError }>();
  const unreachable = new Set<string>();
  let kmsCalls = 0;
  await mapLimit(rows, concurrency, async (r) => {
    if (refused.has(r.tenantId)) return;
    const context = { tenantId: r.tenantId, dekId: r.dekId };
    try {
      const kek = await keysOf(keyring).kekFor(r.kek as never);
      kmsCalls++;
      const raw = await keyring.timedKms('heartbeat', kek, r.tenantId, () =>
        unwrapIdentified(kek, r.wrapped, context, r.wrappedBy),
      );
      const cached = keysOf(keyring).cache.get(r.dekId);
      // Compared in place (a view, no copy), then zeroed.
      const view = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
      const same =
        cached === undefined ||
        (view.length === dekMaterial(cached).raw.length && timingSafeEqual(view, dekMaterial(cached).raw));
      raw.fill(0);
      if (!same) {
        throw new KmsIntegrityError(
          `the heartbeat unwrap of tenant ${r.tenantId}'s data key through ${kek.keyRef} differs from the cached key`,
          { tenantId: r.tenantId },
        );
      }
    } catch (e) {
      if (isRefusal(e) || e instanceof KmsIntegrityError) {
        if (!refused.has(r.tenantId)) refused.set(r.tenantId, { keyRef: r.kek.keyRef, error: e });
      } else {
        unreachable.add(r.tenantId);
      }
    }
  });
  for (const [tenantId, { keyRef, error }] of refused) {
    await keyring.reportRevocation(tenantId, keyRef, error);
  }
  const healthy = [...probed].filter((t) => !refused.has(t) && !unreachable.has(t));
  const recovered = [
    ...new Set(rows.filter((r) => healthy.includes(r.tenantId) && r.health !== 'ok').map((r) => r.tenantId)),
  ];
  const now = new Date();
  if (healthy.length > 0) {
    await db
      .update(byokTenants)
      .set({ health: 'ok', lastError: null, lastVerifiedAt: now })
      .where(and(inArray(byokTenants.tenantId, healthy), sql`${byokTenants.progress} is null`));
    await db
      .update(byokKeks)
      .set({ health: 'ok', lastError: null, lastVerifiedAt: now })
      .where(and(inArray(byokKeks.tenantId, healthy), eq(byokKeks.state, 'active')));
  }
  for (const t of healthy) keyring.watchedTenants.delete(t);
  for (const t of recovered) {
    await keyring.notify(db, t, 'recovered').catch(() => undefined);
    keyring.emit({
      type: 'lifecycle',
      operation: 'recovered',
      tenantId: t,
      outcome: 'ok',
      latencyMs: performance.now() - started,
    });
  }
  const result: HeartbeatTick = {
    tenants: probed.size,
    kmsCalls,
    refused: [...refused.keys()],
    recovered,
    unreachable: [...unreachable],
  };
  keyring.emit({
    type: 'heartbeat',
    tenants: result.tenants,
    kmsCalls,
    refused: result.refused.length,
    recovered: recovered.length,
    unreachable: result.unreachable.length,
    latencyMs: performance.now() - started,
  });
  return result;
}
