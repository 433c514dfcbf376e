/**
 * Events for audit and observability. Never carry key material, wrapped keys, plaintext or
 * query parameters: tenants, key references, operations, outcomes and timings only.
 */
export type ByokEvent =
  | {
      readonly type: 'kms';
      /** 'wrap' | 'unwrap' | 'describe' | 'heartbeat' (the heartbeat's unwrap) */
      readonly operation: string;
      readonly tenantId: string;
      readonly keyRef: string;
      readonly kekKind: string;
      readonly outcome: 'ok' | 'error';
      /** Stable error code when outcome is 'error'. */
      readonly errorCode?: string;
      readonly latencyMs: number;
    }
  | {
      readonly type: 'cache';
      /** 'hit' | 'miss' for loader lookups; hot-path hits are counted in `keyring.stats()` only. */
      readonly outcome: 'hit' | 'miss';
      readonly tenantId?: string;
      readonly dekId: string;
    }
  | {
      readonly type: 'dek-batch';
      /** How many distinct data keys one batch unwrapped (or tried to). */
      readonly size: number;
      readonly latencyMs: number;
    }
  | {
      readonly type: 'lifecycle';
      readonly operation: string;
      readonly tenantId: string;
      readonly keyRef?: string;
      readonly outcome: 'ok' | 'error';
      readonly errorCode?: string;
      readonly latencyMs: number;
      readonly detail?: Readonly<Record<string, string | number | boolean | null>>;
    }
  | {
      readonly type: 'revocation';
      readonly tenantId: string;
      readonly keyRef: string;
      readonly errorCode: string;
      /** 'local' when this instance saw the KMS refuse; 'remote' when told by another instance. */
      readonly source: 'local' | 'remote';
    }
  | {
      /** One key heartbeat tick (see `Keyring.startHeartbeat`). */
      readonly type: 'heartbeat';
      readonly tenants: number;
      readonly kmsCalls: number;
      readonly refused: number;
      readonly recovered: number;
      readonly unreachable: number;
      readonly latencyMs: number;
    }
  | {
      readonly type: 'invalidation';
      readonly tenantId: string;
      readonly reason: string;
      readonly source: 'local' | 'remote';
    };

export type ByokEventListener = (event: ByokEvent) => void;

/** A keyring's event listeners. */
export class EventHub {
  readonly #listeners = new Set<ByokEventListener>();

  /** Subscribes; returns an unsubscribe function. */
  add(listener: ByokEventListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Calls every listener; a listener that throws is skipped (listeners must not break queries). */
  emit(event: ByokEvent): void {
    for (const l of this.#listeners) {
      try {
        l(event);
      } catch {
        // listeners must not break queries
      }
    }
  }
}

/** The counters behind `keyring.stats()`, shared by the keyring's parts. */
export interface KeyringCounters {
  hotHits: number;
  unwraps: number;
  batches: number;
  created: number;
}
