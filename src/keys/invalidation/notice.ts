/** The invalidation notice: its channel and its payload, written and read. */

/** PostgreSQL NOTIFY channel on which instances tell each other to drop a tenant's cached keys. */
export const INVALIDATION_CHANNEL = 'byok_invalidate';

/** A notice: drop `tenantId`'s cached keys (and why), sent by the instance `origin`. */
export interface Notice {
  readonly tenantId: string;
  readonly reason: string;
  readonly origin: unknown;
  /** The key reference a KMS refused (`reason` 'revoked'), when known. */
  readonly keyRef?: unknown;
}

/** The NOTIFY payload of a notice (short keys: a payload is limited to 8,000 bytes). */
export function formatNotice(tenantId: string, reason: string, origin: string, keyRef?: string): string {
  return JSON.stringify({ t: tenantId, r: reason, o: origin, ...(keyRef ? { k: keyRef } : {}) });
}

/** Reads a payload; undefined for anything that is not a notice (ignored by the listener). */
export function parseNotice(payload: string | undefined): Notice | undefined {
  // Anyone who may NOTIFY on the channel writes payloads: every one that is not exactly a notice
  // (not JSON, `null`, an array, a number, fields of other types) is ignored, never thrown.
  let msg: unknown;
  try {
    msg = JSON.parse(payload ?? '');
  } catch {
    return undefined;
  }
  if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) return undefined;
  const m = msg as { t?: unknown; r?: unknown; o?: unknown; k?: unknown };
  if (typeof m.t !== 'string' || typeof m.r !== 'string') return undefined;
  return { tenantId: m.t, reason: m.r, origin: m.o, keyRef: m.k };
}
