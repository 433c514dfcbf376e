/**
 * The gRPC side of the local Cloud KMS server: the methods it implements, status codes and the
 * errors answered on the wire, and the message field helpers (bytes, Int64Value, Timestamp,
 * Duration, pages).
 */
import * as grpc from '@grpc/grpc-js';

/** The KeyManagementService methods the server implements (others answer `UNIMPLEMENTED`). */
export type GcpKmsMethod =
  | 'Encrypt'
  | 'Decrypt'
  | 'GetKeyRing'
  | 'ListKeyRings'
  | 'CreateKeyRing'
  | 'GetCryptoKey'
  | 'ListCryptoKeys'
  | 'CreateCryptoKey'
  | 'UpdateCryptoKeyPrimaryVersion'
  | 'GetCryptoKeyVersion'
  | 'ListCryptoKeyVersions'
  | 'CreateCryptoKeyVersion'
  | 'UpdateCryptoKeyVersion'
  | 'DestroyCryptoKeyVersion'
  | 'RestoreCryptoKeyVersion';

/** gRPC status names, as `grpc.status` spells them. */
export type GrpcStatusName =
  | 'OK'
  | 'CANCELLED'
  | 'UNKNOWN'
  | 'INVALID_ARGUMENT'
  | 'DEADLINE_EXCEEDED'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'PERMISSION_DENIED'
  | 'RESOURCE_EXHAUSTED'
  | 'FAILED_PRECONDITION'
  | 'ABORTED'
  | 'OUT_OF_RANGE'
  | 'UNIMPLEMENTED'
  | 'INTERNAL'
  | 'UNAVAILABLE'
  | 'DATA_LOSS'
  | 'UNAUTHENTICATED';

/** An error answered on the wire. */
export class RpcError extends Error {
  readonly code: grpc.status;
  constructor(code: grpc.status, message: string) {
    super(message);
    this.code = code;
  }
}

const STATUS_NAMES = new Map<number, GrpcStatusName>(
  Object.entries(grpc.status)
    .filter((e): e is [GrpcStatusName, number] => typeof e[1] === 'number')
    .map(([name, code]) => [code, name]),
);
export const statusName = (code: number): GrpcStatusName => STATUS_NAMES.get(code) ?? 'UNKNOWN';

export function invalid(message: string): RpcError {
  return new RpcError(grpc.status.INVALID_ARGUMENT, message);
}

/** A request message, as proto-loader decodes it (camelCase fields). */
export type Req = Record<string, unknown>;

export const str = (v: unknown): string => (typeof v === 'string' ? v : '');
export const bytes = (v: unknown): Buffer =>
  Buffer.isBuffer(v) ? v : v instanceof Uint8Array ? Buffer.from(v) : Buffer.alloc(0);
/** The value of a google.protobuf.Int64Value field, or undefined when the field is unset. */
export function int64Value(v: unknown): number | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const raw = (v as { value?: unknown }).value;
  if (raw === undefined || raw === null) return 0;
  const n = Number(raw);
  return Number.isFinite(n) ? n : Number.NaN;
}
export const timestamp = (d: Date) => ({
  seconds: Math.floor(d.getTime() / 1000),
  nanos: (d.getTime() % 1000) * 1e6,
});
export const duration = (seconds: number) => ({ seconds: Math.floor(seconds), nanos: 0 });
export function durationSeconds(v: unknown): number | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const d = v as { seconds?: unknown; nanos?: unknown };
  return Number(d.seconds ?? 0) + Number(d.nanos ?? 0) / 1e9;
}

/** One page of a List answer (`page_size` at most 1000, `page_token` an offset). */
export function page<T>(items: T[], req: Req): { items: T[]; nextPageToken: string; totalSize: number } {
  const size = Number(req.pageSize) > 0 ? Math.min(Number(req.pageSize), 1000) : 1000;
  const token = str(req.pageToken);
  const start = token === '' ? 0 : Number(token);
  if (!Number.isInteger(start) || start < 0 || start > items.length) throw invalid('Invalid page_token.');
  const end = start + size;
  return {
    items: items.slice(start, end),
    nextPageToken: end < items.length ? String(end) : '',
    totalSize: items.length,
  };
}
