/**
 * The `byok.audit` table writer (`auditTable: true`): records are buffered, flushed every second,
 * when 100 are waiting, and at once for anything but a KMS call (lifecycle changes, revocations).
 */
import type { KeyStore } from './key-store.ts';
import { byokAudit } from '../store/schema-key-store.ts';

/** One audit row, as the keyring's parts record it. */
export interface AuditRecord {
  tenantId?: string;
  operation: string;
  keyRef?: string;
  outcome: string;
  latencyMs?: number;
  detail?: Record<string, unknown>;
}

export class AuditLog {
  readonly #store: KeyStore;
  readonly #enabled: boolean;
  #buffer: (typeof byokAudit.$inferInsert)[] = [];
  #timer: NodeJS.Timeout | undefined;

  /** `enabled` false: every record is dropped and nothing is written. */
  constructor(store: KeyStore, enabled: boolean) {
    this.#store = store;
    this.#enabled = enabled;
    if (enabled) {
      this.#timer = setInterval(() => void this.flush().catch(() => undefined), 1000);
      this.#timer.unref();
    }
  }

  /** Records an audit row (when enabled). */
  async record(record: AuditRecord): Promise<void> {
    if (!this.#enabled) return;
    this.#buffer.push({
      tenantId: record.tenantId ?? null,
      operation: record.operation,
      keyRef: record.keyRef ?? null,
      outcome: record.outcome,
      latencyMs: record.latencyMs === undefined ? null : Math.round(record.latencyMs),
      detail: record.detail ?? null,
    });
    if (this.#buffer.length >= 100 || record.operation !== 'kms') await this.flush();
  }

  /** Writes buffered audit rows now. */
  async flush(): Promise<void> {
    if (this.#buffer.length === 0) return;
    const batch = this.#buffer;
    this.#buffer = [];
    await this.#store.run(() => this.#store.writeDb.insert(byokAudit).values(batch));
  }

  /** Stops the periodic flush (the keyring's `close`, which flushes once more). */
  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
  }
}
