/**
 * `drizzle-byok/testing/aws`: a local AWS KMS + STS server speaking the real wire protocols (JSON 1.1
 * and the STS Query protocol, SigV4 verified, key policies and role trust enforced), so the real
 * `@aws-sdk/client-kms` client and `drizzle-byok/aws` run unchanged in your tests. Node built-ins
 * only: it needs no Google Cloud or gRPC package. Loopback only.
 */
export type { AwsKmsCallRecord, AwsKmsCounters, AwsKmsFaults, FaultFilter } from './faults.ts';
export type {
  AddRoleOptions,
  AddUserOptions,
  AddWebIdentityProviderOptions,
  IamRole,
  IamUser,
  RoleTrust,
  WebIdentityProvider,
  WebIdentityTokenOptions,
} from './identity.ts';
export type { AwsKeySpec, AwsKeyState, AwsKeyUsage, AwsKmsKeyInfo, CreateKeyOptions } from './keys.ts';
export type { PolicyDocument, PolicyStatement } from './policies.ts';
export { type AwsKmsServer, type AwsKmsServerOptions, startAwsKmsServer } from './server.ts';
