/**
 * `drizzle-byok/testing/gcp`: a local Cloud KMS server speaking gRPC (KeyManagementService from the
 * `.proto` files of `@google-cloud/kms`), so the real `KeyManagementServiceClient` and
 * `drizzle-byok/gcp` run unchanged in your tests. Needs `@google-cloud/kms`, `google-gax`,
 * `@grpc/grpc-js` and `@grpc/proto-loader`; no AWS package. Loopback only.
 */
export { crc32c } from '../../crypto/crc32c.ts';
export type { CreateServiceAccountOptions, GcpKmsTokenInfo, GcpServiceAccountKey } from './auth.ts';
export type {
  GcpCorruptibleField,
  GcpFaultFilter,
  GcpFaultStatus,
  GcpKmsCallRecord,
  GcpKmsCounters,
  GcpKmsFaults,
} from './faults.ts';
export type { GcpIamBinding, GcpIamPolicy, GcpKmsRole } from './iam.ts';
export type {
  CreateCryptoKeyOptions,
  GcpCryptoKeyInfo,
  GcpCryptoKeyVersionInfo,
  GcpKeyPurpose,
  GcpKeyVersionState,
  GcpProtectionLevel,
} from './keys.ts';
export type { GcpKmsMethod, GrpcStatusName } from './protocol.ts';
export { type GcpKmsServer, type GcpKmsServerOptions, startGcpKmsServer } from './server.ts';
