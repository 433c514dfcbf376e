/**
 * Fault injection and call counters of the local AWS server: throttling, server errors, latency
 * and hung calls, filtered by operation and key; and the counts and log of every call.
 */
import { asList } from './policies.ts';
import { commonError } from './protocol.ts';

const RECENT_CALLS = 10_000;

/** Restricts a fault to some calls. Empty: every call (KMS and STS). */
export interface FaultFilter {
  /** Operation name(s), e.g. `'Decrypt'`, `['Encrypt', 'GenerateDataKey']`, `'AssumeRole'`. */
  operation?: string | readonly string[];
  /** Key the call targets: key id, key ARN, alias name or alias ARN (resolved when the fault is added). */
  key?: string;
}

/** Fault injection. Faults apply to authenticated calls, before authorization. */
export interface AwsKmsFaults {
  /** The next `count` matching calls fail with `ThrottlingException` (STS: `Throttling`), HTTP 400. */
  throttle(count: number, filter?: FaultFilter): void;
  /**
   * The next `count` matching calls fail with a server error: 500 `KMSInternalException`
   * (STS: `InternalFailure`) or 503 `ServiceUnavailableException` (STS: `ServiceUnavailable`).
   */
  fail(count: number, options?: FaultFilter & { status?: 500 | 503 }): void;
  /** Every matching call is delayed by `ms` (cumulative over matching latency faults). */
  latency(ms: number, filter?: FaultFilter): void;
  /** Matching calls are never answered until {@link clear} (then they proceed) or `close()`. */
  hang(filter?: FaultFilter): void;
  /** Number of calls currently held by {@link hang}. */
  readonly hungRequests: number;
  /** Removes every fault and lets hung calls proceed. */
  clear(): void;
}

/** One call seen by the server (kept for the last 10,000 calls). */
export interface AwsKmsCallRecord {
  readonly service: 'kms' | 'sts';
  readonly operation: string;
  readonly region: string;
  /** ARN of the calling principal, when authenticated. */
  readonly principal: string | undefined;
  /** ARN of the key the call targeted, when resolved. */
  readonly keyArn: string | undefined;
  /** EncryptionContext of the request (KMS), if any. */
  readonly encryptionContext: Readonly<Record<string, string>> | undefined;
  /** HTTP status; 0 while the call is in progress (or hung). */
  readonly status: number;
  /** Error name (`__type` / `Code`) when the call failed. */
  readonly error: string | undefined;
}

/** Call counters. Every HTTP request counts, including retries and faulted calls. */
export interface AwsKmsCounters {
  /** All calls. */
  readonly total: number;
  /** Calls of one operation (`'Encrypt'`, `'AssumeRole'`...). */
  operation(name: string): number;
  /** Calls that targeted a key (key id, key ARN, alias name or alias ARN). */
  key(ref: string): number;
  /** Calls made by a principal (user ARN, role ARN = all its sessions, or session ARN). */
  principal(arn: string): number;
  /** Failed calls, all or with one error name. */
  errors(name?: string): number;
  /** The call log, oldest first. */
  readonly calls: readonly AwsKmsCallRecord[];
  reset(): void;
}

interface Fault {
  readonly kind: 'throttle' | 'fail' | 'latency' | 'hang';
  readonly operations?: readonly string[];
  readonly keyArns?: readonly string[];
  remaining: number;
  readonly status?: 500 | 503;
  readonly ms?: number;
}

export interface MutableCallRecord {
  service: 'kms' | 'sts';
  operation: string;
  region: string;
  principal: string | undefined;
  roleArn: string | undefined;
  keyArn: string | undefined;
  encryptionContext: Record<string, string> | undefined;
  status: number;
  error: string | undefined;
}

type FaultOptions = FaultFilter & { status?: 500 | 503; ms?: number };

/** The faults of one server, and the calls they hold. */
export class FaultBox {
  private faultList: Fault[] = [];
  private readonly hung = new Set<() => void>();
  private readonly sleeping = new Set<{ timer: NodeJS.Timeout; resolve: () => void }>();
  private isClosed = false;
  /** The ARNs a fault's key filter matches (the key and, for multi-region keys, all its replicas). */
  private readonly keyArns: (ref: string) => string[];

  constructor(keyArns: (ref: string) => string[]) {
    this.keyArns = keyArns;
  }

  /** True once the server is closing: no call is answered any more. */
  get closed(): boolean {
    return this.isClosed;
  }

  add(kind: Fault['kind'], count: number, filter: FaultOptions = {}): void {
    if (kind !== 'latency' && kind !== 'hang' && (!Number.isInteger(count) || count < 1)) {
      throw new Error('fault count must be a positive integer');
    }
    const fault: Fault = {
      kind,
      remaining: count,
      ...(filter.operation === undefined ? {} : { operations: asList(filter.operation) }),
      ...(filter.key === undefined ? {} : { keyArns: this.keyArns(filter.key) }),
      ...(filter.status === undefined ? {} : { status: filter.status }),
      ...(filter.ms === undefined ? {} : { ms: filter.ms }),
    };
    this.faultList.push(fault);
  }

  clear(): void {
    this.faultList = [];
    const release = [...this.hung];
    this.hung.clear();
    for (const r of release) r();
  }

  get hungCount(): number {
    return this.hung.size;
  }

  private matchingFaults(operation: string, keyArn: string | undefined): Fault[] {
    return this.faultList.filter(
      (f) =>
        (f.operations === undefined || f.operations.includes(operation)) &&
        (f.keyArns === undefined || (keyArn !== undefined && f.keyArns.includes(keyArn))),
    );
  }

  /** Applies latency, hang and one counted fault (throttle/fail) to a call. */
  async apply(operation: string, keyArn: string | undefined): Promise<void> {
    const faults = this.matchingFaults(operation, keyArn);
    const delay = faults.filter((f) => f.kind === 'latency').reduce((sum, f) => sum + (f.ms ?? 0), 0);
    if (delay > 0) await this.sleep(delay);
    if (faults.some((f) => f.kind === 'hang' && this.faultList.includes(f))) {
      await new Promise<void>((resolve) => this.hung.add(resolve));
    }
    if (this.isClosed) return;
    const counted = faults.find((f) => (f.kind === 'throttle' || f.kind === 'fail') && f.remaining > 0);
    if (counted === undefined) return;
    counted.remaining--;
    if (counted.remaining === 0) this.faultList = this.faultList.filter((f) => f !== counted);
    if (counted.kind === 'throttle') throw commonError('ThrottlingException', 'Rate exceeded', 400);
    if (counted.status === 503) {
      throw commonError('ServiceUnavailableException', 'Service is unavailable. Retry the request.', 503);
    }
    throw commonError('KMSInternalException', 'An internal error occurred. Retry the request.', 500);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const entry = {
        timer: setTimeout(() => {
          this.sleeping.delete(entry);
          resolve();
        }, ms),
        resolve,
      };
      this.sleeping.add(entry);
    });
  }

  shutdown(): void {
    this.isClosed = true;
    this.faultList = [];
    for (const s of this.sleeping) {
      clearTimeout(s.timer);
      s.resolve();
    }
    this.sleeping.clear();
    const release = [...this.hung];
    this.hung.clear();
    for (const r of release) r();
  }

  /** The test-side `faults` handle. */
  api(): AwsKmsFaults {
    const self = this;
    return {
      throttle: (count, filter) => this.add('throttle', count, filter),
      fail: (count, o) => this.add('fail', count, o),
      latency: (ms, filter) => {
        if (!Number.isFinite(ms) || ms < 0) throw new Error('latency must be a non-negative number of ms');
        this.add('latency', Number.POSITIVE_INFINITY, { ...filter, ms });
      },
      hang: (filter) => this.add('hang', Number.POSITIVE_INFINITY, filter),
      get hungRequests() {
        return self.hungCount;
      },
      clear: () => this.clear(),
    };
  }
}

/** The counters and recent calls of one server. */
export class CallLog {
  private callLog: MutableCallRecord[] = [];
  private totalCalls = 0;
  private byOperation = new Map<string, number>();
  private byKey = new Map<string, number>();
  private byPrincipal = new Map<string, number>();
  private byError = new Map<string, number>();
  private errorTotal = 0;
  private readonly defaultRegion: string;
  /** The ARN of a key reference of the test-side API. */
  private readonly keyArn: (ref: string) => string;

  constructor(defaultRegion: string, keyArn: (ref: string) => string) {
    this.defaultRegion = defaultRegion;
    this.keyArn = keyArn;
  }

  reset(): void {
    this.callLog = [];
    this.totalCalls = 0;
    this.errorTotal = 0;
    this.byOperation = new Map();
    this.byKey = new Map();
    this.byPrincipal = new Map();
    this.byError = new Map();
  }

  readonly counters: AwsKmsCounters = (() => {
    const self = this;
    return {
      get total() {
        return self.totalCalls;
      },
      operation: (name: string) => self.byOperation.get(name) ?? 0,
      key: (ref: string) => {
        const m = /^arn:aws:kms:[^:]+:\d{12}:key\//.exec(ref);
        const arn = m ? ref : self.keyArn(ref);
        return self.byKey.get(arn) ?? 0;
      },
      principal: (arn: string) => self.byPrincipal.get(arn) ?? 0,
      errors: (name?: string) => (name === undefined ? self.errorTotal : (self.byError.get(name) ?? 0)),
      get calls(): readonly AwsKmsCallRecord[] {
        return self.callLog;
      },
      reset: () => self.reset(),
    };
  })();

  private bump(map: Map<string, number>, k: string): void {
    map.set(k, (map.get(k) ?? 0) + 1);
  }

  count(rec: MutableCallRecord): void {
    this.totalCalls++;
    this.bump(this.byOperation, rec.operation);
    if (rec.keyArn !== undefined) this.bump(this.byKey, rec.keyArn);
    if (rec.principal !== undefined) this.bump(this.byPrincipal, rec.principal);
    if (rec.roleArn !== undefined) this.bump(this.byPrincipal, rec.roleArn);
    this.callLog.push(rec);
    if (this.callLog.length > RECENT_CALLS) this.callLog.splice(0, this.callLog.length - RECENT_CALLS);
  }

  finish(rec: MutableCallRecord, status: number, error?: string): void {
    rec.status = status;
    if (error !== undefined) {
      rec.error = error;
      this.errorTotal++;
      this.bump(this.byError, error);
    }
  }

  /** A call record before authentication: filled in as the request is understood. */
  start(service: 'kms' | 'sts', operation: string): MutableCallRecord {
    return {
      service,
      operation,
      region: this.defaultRegion,
      principal: undefined,
      roleArn: undefined,
      keyArn: undefined,
      encryptionContext: undefined,
      status: 0,
      error: undefined,
    };
  }
}
