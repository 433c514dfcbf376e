/**
 * Unwrapping data key rows: each through the KEKs that wrap it, the preferred region first, failing
 * over to the next only when a KMS is unreachable (an explicit refusal stands and is reported as a
 * revocation); and the timing of every KMS call (`kms` events, audit rows, OpenTelemetry spans).
 */
import { uuidToBytes } from '../crypto/envelope.ts';
import {
  ByokError,
  isByokError,
  KeyAccessDeniedError,
  KeyDisabledError,
  KeyNotFoundError,
  KmsThrottledError,
  KmsUnavailableError,
  TenantShreddedError,
} from '../errors.ts';
import type { Kek, WrapContext } from '../kms/kek.ts';
import type { PgDb } from '../store/db.ts';
import type { AuditLog } from './audit.ts';
import type { DekCache, DekEntry } from './cache.ts';
import type { EventHub, KeyringCounters } from './events.ts';
import { unwrapIdentified } from './identity.ts';
import type { KekInstances } from './kek-instances.ts';
import type { DekRow, KekRow, KeyStore, WrapRow } from './key-store.ts';
import { mapLimit } from './map-limit.ts';
import { withSpan } from './telemetry.ts';

const FAILOVER_CODES = new Set([KmsUnavailableError.code, KmsThrottledError.code]);

/** What the unwrap needs of the keyring. */
export interface UnwrapParts {
  readonly store: KeyStore;
  readonly cache: DekCache;
  readonly keks: KekInstances;
  readonly events: EventHub;
  readonly audit: AuditLog;
  readonly counters: KeyringCounters;
  /** The platform KEK (current or previous) with this key reference, if configured. */
  platformKekFor(keyRef: string): Kek | undefined;
  /** A KMS refused a tenant's key (see `Keyring.reportRevocation`). */
  reportRevocation(tenantId: string, keyRef: string, e: ByokError): Promise<void>;
  readonly preferredRegion: string | undefined;
  readonly unwrapConcurrency: number;
}

export class Unwrapper {
  readonly #p: UnwrapParts;

  constructor(parts: UnwrapParts) {
    this.#p = parts;
  }

  /** Unwraps every row (bounded concurrency); failures become Error values in the map. */
  async unwrapAll(
    rows: readonly DekRow[],
    db: PgDb = this.#p.store.readDb,
    cacheIt = true,
  ): Promise<Map<string, DekEntry | Error>> {
    const inTx = !this.#p.store.isStoreDb(db);
    const out = new Map<string, DekEntry | Error>();
    const kekIds = new Set<string>();
    for (const r of rows) for (const w of r.wraps) if (w.kekId !== null) kekIds.add(w.kekId);
    const kekRows = await this.#p.store.selectKeks([...kekIds], db);
    await mapLimit(rows, this.#p.unwrapConcurrency, async (r) => {
      try {
        out.set(r.id, await this.#unwrapRow(r, kekRows, cacheIt, inTx));
      } catch (e) {
        out.set(r.id, asError(e));
      }
    });
    return out;
  }

  async #unwrapRow(
    row: DekRow,
    kekRows: Map<string, KekRow>,
    cacheIt: boolean,
    inTx: boolean,
  ): Promise<DekEntry> {
    if (row.state === 'destroyed' || row.wraps.length === 0) {
      throw new TenantShreddedError(
        `data key version ${row.version} of tenant ${row.tenantId} was destroyed`,
        {
          tenantId: row.tenantId,
        },
      );
    }
    const candidates: { kek: () => Promise<Kek>; wrap: WrapRow; region: string | null; priority: number }[] =
      [];
    for (const w of row.wraps) {
      if (w.kekId === null) {
        const kek = this.#p.platformKekFor(w.kekRef);
        if (kek !== undefined)
          candidates.push({ kek: async () => kek, wrap: w, region: kek.region ?? null, priority: 1000 });
      } else {
        const kr = kekRows.get(w.kekId);
        if (kr !== undefined)
          candidates.push({
            kek: () => this.#p.keks.kekFor(kr),
            wrap: w,
            region: kr.region,
            priority: kr.priority,
          });
      }
    }
    if (candidates.length === 0) {
      throw new KeyNotFoundError(
        `no configured KEK can unwrap data key version ${row.version} of tenant ${row.tenantId} ` +
          `(wrapped under ${row.wraps.map((w) => w.kekRef).join(', ')})`,
        { tenantId: row.tenantId },
      );
    }
    const preferred = this.#p.preferredRegion;
    candidates.sort(
      (a, b) =>
        Number(b.region === preferred && preferred !== undefined) -
          Number(a.region === preferred && preferred !== undefined) || a.priority - b.priority,
    );
    const context: WrapContext = { tenantId: row.tenantId, dekId: row.id };
    const errors: unknown[] = [];
    for (const c of candidates) {
      let kek: Kek;
      try {
        kek = await c.kek();
      } catch (e) {
        errors.push(e);
        continue;
      }
      try {
        const raw = await this.timedKms('unwrap', kek, row.tenantId, () =>
          unwrapIdentified(kek, c.wrap.wrapped, context, c.wrap.wrappedBy),
        );
        if (raw.length !== 32) throw new ByokError(`unwrapped data key has ${raw.length} bytes, expected 32`);
        this.#p.counters.unwraps++;
        const rawBuf = Buffer.allocUnsafeSlow(32);
        rawBuf.set(raw);
        raw.fill(0);
        const idBytes = uuidToBytes(row.id);
        return cacheIt
          ? this.#p.cache.put(row.id, idBytes, row.tenantId, row.version, rawBuf, row.state === 'active')
          : this.#p.cache.uncached(row.id, idBytes, row.tenantId, row.version, rawBuf);
      } catch (e) {
        errors.push(e);
        if (isRevocation(e)) {
          // Record it before the query fails, so the tenant's status already shows it. Inside a
          // transaction the connection may be the only one: record it in the background.
          if (!inTx) await this.#p.reportRevocation(row.tenantId, kek.keyRef, e);
          else void this.#p.reportRevocation(row.tenantId, kek.keyRef, e);
        }
        // Fail over to another KEK only when this one is unreachable; an explicit refusal stands.
        if (!(isByokError(e) && FAILOVER_CODES.has(e.code))) throw e;
      }
    }
    const last = errors.at(-1);
    throw last instanceof Error
      ? last
      : new KmsUnavailableError('no KEK could unwrap the data key', { tenantId: row.tenantId });
  }

  /** @internal Runs a KMS call: emits a `kms` event, an audit row and an OpenTelemetry span. */
  async timedKms<T>(operation: string, kek: Kek, tenantId: string, fn: () => Promise<T>): Promise<T> {
    const started = performance.now();
    const attributes = {
      'byok.tenant': tenantId,
      'byok.key_ref': kek.keyRef,
      'byok.kek_kind': kek.kind,
      'byok.operation': operation,
    };
    try {
      const r = await withSpan(`byok.kms.${operation}`, attributes, fn);
      const latencyMs = performance.now() - started;
      this.#p.events.emit({
        type: 'kms',
        operation,
        tenantId,
        keyRef: kek.keyRef,
        kekKind: kek.kind,
        outcome: 'ok',
        latencyMs,
      });
      void this.#p.audit
        .record({
          tenantId,
          operation: 'kms',
          keyRef: kek.keyRef,
          outcome: 'ok',
          latencyMs,
          detail: { call: operation },
        })
        .catch(() => undefined);
      return r;
    } catch (e) {
      const latencyMs = performance.now() - started;
      const errorCode = isByokError(e) ? e.code : 'ERR_UNKNOWN';
      this.#p.events.emit({
        type: 'kms',
        operation,
        tenantId,
        keyRef: kek.keyRef,
        kekKind: kek.kind,
        outcome: 'error',
        errorCode,
        latencyMs,
      });
      void this.#p.audit
        .record({
          tenantId,
          operation: 'kms',
          keyRef: kek.keyRef,
          outcome: 'error',
          latencyMs,
          detail: { call: operation, errorCode },
        })
        .catch(() => undefined);
      throw e;
    }
  }
}

function isRevocation(e: unknown): e is ByokError {
  return e instanceof KeyAccessDeniedError || e instanceof KeyDisabledError;
}

export function asError(e: unknown): Error {
  return e instanceof Error ? e : new ByokError('unexpected failure');
}
