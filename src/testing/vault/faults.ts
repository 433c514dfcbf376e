/** Fault injection and call counters of the local Vault server. */

/** What the server counts and faults act on. */
export type VaultServerOperation =
  | 'encrypt'
  | 'decrypt'
  | 'rewrap'
  | 'read-key'
  | 'create-key'
  | 'rotate-key'
  | 'config-key'
  | 'delete-key'
  | 'login'
  | 'token'
  | 'sys'
  | 'other';

export interface VaultFaultFilter {
  readonly operations?: readonly VaultServerOperation[];
  /** Transit key names. */
  readonly keys?: readonly string[];
  /** Namespaces (`''` for the root namespace). */
  readonly namespaces?: readonly string[];
}

/** HTTP statuses `faults.fail` can answer: 429 (rate limit quota), 412, 500, 502, 503 (sealed / standby). */
export type VaultFaultStatus = 429 | 412 | 500 | 502 | 503;

/**
 * What `faults.corrupt` damages in a successful answer: `ciphertext` (encrypt / rewrap answer a
 * ciphertext with one bit flipped), `plaintext` (decrypt answers a flipped bit), `key_version`
 * (encrypt answers a version other than the ciphertext's), `not-json` (the answer is HTML, as from
 * a proxy).
 */
export type VaultCorruptibleField = 'ciphertext' | 'plaintext' | 'key_version' | 'not-json';

export interface VaultFaults {
  fail(count: number, status: VaultFaultStatus, filter?: VaultFaultFilter): void;
  latency(ms: number, filter?: VaultFaultFilter): void;
  /** Matching calls are never answered until `clear()` (then processed) or `close()`. */
  hang(filter?: VaultFaultFilter): void;
  corrupt(count: number, field: VaultCorruptibleField, filter?: VaultFaultFilter): void;
  readonly hungCalls: number;
  clear(): void;
}

export interface VaultCallRecord {
  readonly operation: VaultServerOperation;
  readonly path: string;
  readonly namespace: string;
  readonly key: string | undefined;
  /** Display name of the token's login (`approle`, `kubernetes-<ns>-<sa>`, `jwt-<sub>`, `token`). */
  readonly principal: string | undefined;
  status: number | undefined;
}

export interface VaultCounters {
  readonly total: number;
  operation(op: VaultServerOperation): number;
  key(name: string): number;
  principal(displayName: string): number;
  /** Calls answered with this status (any non-2xx when omitted). */
  errors(status?: number): number;
  readonly calls: readonly VaultCallRecord[];
  reset(): void;
}

interface Fault {
  readonly filter: VaultFaultFilter;
  remaining: number;
}

export interface FaultPlan {
  latencyMs: number;
  hang: boolean;
  fail: VaultFaultStatus | undefined;
  corrupt: VaultCorruptibleField | undefined;
}

export class FaultBox implements VaultFaults {
  #fails: (Fault & { status: VaultFaultStatus })[] = [];
  #latency: (Fault & { ms: number })[] = [];
  #hangs: Fault[] = [];
  #corrupts: (Fault & { field: VaultCorruptibleField })[] = [];
  readonly hung = new Set<() => void>();

  fail(count: number, status: VaultFaultStatus, filter: VaultFaultFilter = {}): void {
    this.#fails.push({ filter, remaining: count, status });
  }
  latency(ms: number, filter: VaultFaultFilter = {}): void {
    this.#latency.push({ filter, remaining: Number.POSITIVE_INFINITY, ms });
  }
  hang(filter: VaultFaultFilter = {}): void {
    this.#hangs.push({ filter, remaining: Number.POSITIVE_INFINITY });
  }
  corrupt(count: number, field: VaultCorruptibleField, filter: VaultFaultFilter = {}): void {
    this.#corrupts.push({ filter, remaining: count, field });
  }
  get hungCalls(): number {
    return this.hung.size;
  }
  clear(): void {
    this.#fails = [];
    this.#latency = [];
    this.#hangs = [];
    this.#corrupts = [];
    const release = [...this.hung];
    this.hung.clear();
    for (const r of release) r();
  }

  plan(c: VaultCallRecord): FaultPlan {
    const hit = (f: Fault) =>
      f.remaining > 0 &&
      (f.filter.operations === undefined || f.filter.operations.includes(c.operation)) &&
      (f.filter.keys === undefined || (c.key !== undefined && f.filter.keys.includes(c.key))) &&
      (f.filter.namespaces === undefined || f.filter.namespaces.includes(c.namespace));
    const take = <T extends Fault>(list: T[]): T | undefined => {
      const f = list.find(hit);
      if (f !== undefined) f.remaining--;
      return f;
    };
    const latencyMs = this.#latency.filter(hit).reduce((s, f) => s + f.ms, 0);
    return {
      latencyMs,
      hang: this.#hangs.some(hit),
      fail: take(this.#fails)?.status,
      corrupt: take(this.#corrupts)?.field,
    };
  }
}

export class CallLog implements VaultCounters {
  #calls: VaultCallRecord[] = [];
  #total = 0;
  record(c: VaultCallRecord): void {
    this.#total++;
    this.#calls.push(c);
    if (this.#calls.length > 10_000) this.#calls.shift();
  }
  get total(): number {
    return this.#total;
  }
  get calls(): readonly VaultCallRecord[] {
    return this.#calls;
  }
  operation(op: VaultServerOperation): number {
    return this.#calls.filter((c) => c.operation === op).length;
  }
  key(name: string): number {
    return this.#calls.filter((c) => c.key === name).length;
  }
  principal(displayName: string): number {
    return this.#calls.filter((c) => c.principal === displayName).length;
  }
  errors(status?: number): number {
    return this.#calls.filter((c) =>
      status === undefined
        ? c.status !== undefined && (c.status < 200 || c.status > 299)
        : c.status === status,
    ).length;
  }
  reset(): void {
    this.#calls = [];
    this.#total = 0;
  }
}
