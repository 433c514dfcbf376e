/** What the lifecycle operations share: their result types, options and the tenant's lifecycle lock. */
import { sql } from 'drizzle-orm';
import { LifecycleBusyError } from '../../errors.ts';
import { type AnyPgDatabase, asPgDb } from '../../store/db.ts';

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
export async function lockHeld(db: AnyPgDatabase, tenantId: string): Promise<boolean> {
  return asPgDb(db).transaction(async (tx) => {
    const [row] = (await rows(
      tx.execute(sql`select pg_try_advisory_xact_lock(hashtextextended(${lockKey(tenantId)}, 0)) as ok`),
    )) as { ok: boolean }[];
    return row?.ok !== true;
  });
}

export async function rows(p: PromiseLike<unknown>): Promise<unknown[]> {
  const r = await p;
  return Array.isArray(r) ? r : ((r as { rows?: unknown[] }).rows ?? []);
}
