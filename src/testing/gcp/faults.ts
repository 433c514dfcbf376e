/**
 * Fault injection and call counters of the local Cloud KMS server: failures with a gRPC status,
 * latency, hung calls and corrupted requests or answers, filtered by method, key and principal;
 * and the counts and log of every call.
 */
import * as grpc from '@grpc/grpc-js';
import type { GcpKmsTokenInfo, Principal } from './auth.ts';
import { type GcpKmsMethod, type GrpcStatusName, RpcError, statusName } from './protocol.ts';

const MAX_CALL_RECORDS = 10_000;

const bump = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);

/** Restricts a fault to some calls; an empty filter matches every call. */
export interface GcpFaultFilter {
  readonly methods?: readonly GcpKmsMethod[];
  /** CryptoKey names; a call matches when it names the key or one of its versions. */
  readonly keys?: readonly string[];
  /** Service-account emails. */
  readonly principals?: readonly string[];
}

/** Status codes `faults.fail` can inject. */
export type GcpFaultStatus =
  | 'RESOURCE_EXHAUSTED'
  | 'UNAVAILABLE'
  | 'INTERNAL'
  | 'DEADLINE_EXCEEDED'
  | 'ABORTED'
  | 'UNKNOWN';

/**
 * What `faults.corrupt` damages:
 * - `request`: the request data arrives altered (one bit of `plaintext` for Encrypt, `ciphertext`
 *   for Decrypt), so a client that sent CRC32C checksums gets `INVALID_ARGUMENT`;
 * - `ciphertext`: Encrypt answers a ciphertext with one bit flipped (and the checksum of the
 *   original), as after corruption in transit;
 * - `ciphertextCrc32c`, `plaintextCrc32c`: the checksum field is wrong;
 * - `verifiedPlaintextCrc32c`, `verifiedAdditionalAuthenticatedDataCrc32c`: Encrypt reports the
 *   request checksum as not verified;
 * - `plaintext`: Decrypt answers a plaintext with one bit flipped (and the checksum of the original);
 * - `name`: Encrypt answers the name of another key's version.
 */
export type GcpCorruptibleField =
  | 'request'
  | 'ciphertext'
  | 'ciphertextCrc32c'
  | 'verifiedPlaintextCrc32c'
  | 'verifiedAdditionalAuthenticatedDataCrc32c'
  | 'plaintext'
  | 'plaintextCrc32c'
  | 'name';

/**
 * Fault injection. Faults apply to authenticated calls, before authorization, in this order:
 * latency, hang, fail; `corrupt` applies to the request or the answer of a successful call.
 */
/** The fields `faults.corrupt` damages in one call. */
export type Corruptions = Set<GcpCorruptibleField>;

export interface GcpKmsFaults {
  /** The next `count` matching calls fail with `status`. */
  fail(count: number, status: GcpFaultStatus, filter?: GcpFaultFilter): void;
  /** Every matching call waits `ms` before being processed (until `clear()`). */
  latency(ms: number, filter?: GcpFaultFilter): void;
  /** Matching calls are never answered until `clear()` (then processed) or `close()`. */
  hang(filter?: GcpFaultFilter): void;
  /** The next `count` matching calls get `field` corrupted. */
  corrupt(count: number, field: GcpCorruptibleField, filter?: GcpFaultFilter): void;
  /** Calls currently held by `hang`. */
  readonly hungCalls: number;
  /** Removes every fault and releases hung calls. */
  clear(): void;
}

/** One call seen by the server (the last 10,000 are kept). */
export interface GcpKmsCallRecord {
  readonly method: GcpKmsMethod;
  /** CryptoKey the call names (for version names: their key), if any. */
  readonly key: string | undefined;
  /** Authenticated service-account email; undefined when authentication failed. */
  readonly principal: string | undefined;
  /** The accepted bearer token: a self-signed JWT (with its `aud` or `scope` claim) or an opaque token. */
  readonly token: GcpKmsTokenInfo | undefined;
  /** Final status; undefined while the call is in progress (or hung). */
  readonly status: GrpcStatusName | undefined;
}

/** Call counters. Every call counts, including failed, faulted and retried ones. */
export interface GcpKmsCounters {
  readonly total: number;
  method(name: GcpKmsMethod): number;
  /** Calls naming this CryptoKey or one of its versions. */
  key(cryptoKeyName: string): number;
  /** Calls authenticated as this service-account email. */
  principal(email: string): number;
  /** Calls that ended with this status (any non-OK status when omitted). */
  errors(status?: GrpcStatusName): number;
  readonly calls: readonly GcpKmsCallRecord[];
  reset(): void;
}

interface FaultEntry {
  readonly kind: 'fail' | 'latency' | 'hang' | 'corrupt';
  readonly filter: GcpFaultFilter;
  remaining: number;
  readonly status?: GcpFaultStatus;
  readonly ms?: number;
  readonly field?: GcpCorruptibleField;
}

export interface MutableCallRecord {
  method: GcpKmsMethod;
  key: string | undefined;
  principal: string | undefined;
  token: GcpKmsTokenInfo | undefined;
  status: GrpcStatusName | undefined;
}

function matches(f: GcpFaultFilter, method: GcpKmsMethod, key: string | undefined, email: string): boolean {
  if (f.methods && f.methods.length > 0 && !f.methods.includes(method)) return false;
  if (f.keys && f.keys.length > 0 && (key === undefined || !f.keys.includes(key))) return false;
  if (f.principals && f.principals.length > 0 && !f.principals.includes(email)) return false;
  return true;
}

function faultError(status: GcpFaultStatus): RpcError {
  switch (status) {
    case 'RESOURCE_EXHAUSTED':
      return new RpcError(
        grpc.status.RESOURCE_EXHAUSTED,
        "Quota exceeded for quota metric 'Cryptographic requests' and limit 'Cryptographic requests " +
          "per minute per region' of service 'cloudkms.googleapis.com'.",
      );
    case 'UNAVAILABLE':
      return new RpcError(grpc.status.UNAVAILABLE, 'The service is currently unavailable.');
    case 'INTERNAL':
      return new RpcError(grpc.status.INTERNAL, 'Internal error encountered.');
    case 'DEADLINE_EXCEEDED':
      return new RpcError(grpc.status.DEADLINE_EXCEEDED, 'Deadline exceeded.');
    case 'ABORTED':
      return new RpcError(grpc.status.ABORTED, 'The operation was aborted.');
    default:
      return new RpcError(grpc.status.UNKNOWN, 'Unknown error.');
  }
}

/** The faults of one server, and the calls they hold. */
export class FaultBox {
  private faultList: FaultEntry[] = [];
  private readonly hung = new Set<{ release: (outcome: 'go' | 'closed') => void }>();

  /** Applies latency, hang and fail to a call; returns what to corrupt in it. */
  async apply(
    method: GcpKmsMethod,
    key: string | undefined,
    principal: Principal,
    call: grpc.ServerUnaryCall<unknown, unknown>,
  ): Promise<Corruptions> {
    const active = this.faultList.filter((f) => matches(f.filter, method, key, principal.email));
    const delay = active.filter((f) => f.kind === 'latency').reduce((sum, f) => sum + (f.ms ?? 0), 0);
    if (delay > 0) await new Promise((r) => setTimeout(r, delay));
    if (active.some((f) => f.kind === 'hang' && this.faultList.includes(f))) {
      if (call.cancelled) throw new RpcError(grpc.status.CANCELLED, 'The call was cancelled.');
      const outcome = await new Promise<'go' | 'closed'>((resolve) => {
        const entry = {
          release: (o: 'go' | 'closed') => {
            this.hung.delete(entry);
            resolve(o);
          },
        };
        this.hung.add(entry);
        call.once('cancelled', () => entry.release('closed'));
      });
      if (outcome === 'closed') throw new RpcError(grpc.status.CANCELLED, 'The call was cancelled.');
    }
    const failure = active.find((f) => f.kind === 'fail' && f.remaining > 0 && this.faultList.includes(f));
    if (failure) {
      failure.remaining--;
      throw faultError(failure.status ?? 'UNAVAILABLE');
    }
    const corrupt: Corruptions = new Set();
    for (const f of active) {
      if (f.kind === 'corrupt' && f.remaining > 0 && f.field && this.faultList.includes(f)) {
        f.remaining--;
        corrupt.add(f.field);
      }
    }
    this.faultList = this.faultList.filter(
      (f) => f.kind === 'latency' || f.kind === 'hang' || f.remaining > 0,
    );
    return corrupt;
  }

  private add(entry: FaultEntry): void {
    if (!Number.isInteger(entry.remaining) || entry.remaining < 0) {
      throw new Error('fault count must be a non-negative integer');
    }
    this.faultList.push(entry);
  }

  /** The test-side `faults` handle. */
  api(): GcpKmsFaults {
    const self = this;
    return {
      fail: (count, status, filter = {}) => self.add({ kind: 'fail', filter, remaining: count, status }),
      latency: (ms, filter = {}) => self.add({ kind: 'latency', filter, remaining: 1, ms }),
      hang: (filter = {}) => self.add({ kind: 'hang', filter, remaining: 1 }),
      corrupt: (count, field, filter = {}) => self.add({ kind: 'corrupt', filter, remaining: count, field }),
      get hungCalls() {
        return self.hung.size;
      },
      clear: () => self.clear(),
    };
  }

  /** Removes every fault and lets hung calls proceed. */
  clear(): void {
    this.faultList = [];
    for (const h of [...this.hung]) h.release('go');
  }

  /** Fails every hung call (the server is closing). */
  closeHung(): void {
    for (const h of [...this.hung]) h.release('closed');
  }
}

/** The counters and recent calls of one server. */
export class CallLog {
  private records: MutableCallRecord[] = [];
  private readonly tally = { total: 0, method: new Map<string, number>(), key: new Map<string, number>() };
  private readonly principalTally = new Map<string, number>();
  private readonly errorTally = new Map<GrpcStatusName, number>();

  /** A new call, counted for its method and key. */
  record(method: GcpKmsMethod, key: string | undefined): MutableCallRecord {
    const r: MutableCallRecord = { method, key, principal: undefined, token: undefined, status: undefined };
    this.records.push(r);
    if (this.records.length > MAX_CALL_RECORDS) this.records = this.records.slice(-MAX_CALL_RECORDS);
    this.tally.total++;
    bump(this.tally.method, method);
    if (key !== undefined) bump(this.tally.key, key);
    return r;
  }

  /** The call authenticated as `principal`. */
  authenticated(rec: MutableCallRecord, principal: Principal): void {
    rec.principal = principal.email;
    rec.token = principal.token;
    this.principalTally.set(principal.email, (this.principalTally.get(principal.email) ?? 0) + 1);
  }

  /** The call ended with `code`. */
  finished(rec: MutableCallRecord, code: grpc.status): void {
    rec.status = statusName(code);
    if (code !== grpc.status.OK) this.errorTally.set(rec.status, (this.errorTally.get(rec.status) ?? 0) + 1);
  }

  readonly counters: GcpKmsCounters = (() => {
    const self = this;
    return {
      get total() {
        return self.tally.total;
      },
      method: (name) => self.tally.method.get(name) ?? 0,
      key: (name) => self.tally.key.get(name) ?? 0,
      principal: (email) => self.principalTally.get(email) ?? 0,
      errors: (status) =>
        status === undefined
          ? [...self.errorTally.values()].reduce((a, b) => a + b, 0)
          : (self.errorTally.get(status) ?? 0),
      get calls() {
        return self.records.map((r) => Object.freeze({ ...r }));
      },
      reset() {
        self.records = [];
        self.tally.total = 0;
        self.tally.method.clear();
        self.tally.key.clear();
        self.principalTally.clear();
        self.errorTally.clear();
      },
    };
  })();
}
