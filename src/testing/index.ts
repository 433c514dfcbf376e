/**
 * `drizzle-byok/testing`: local servers that speak the real KMS wire protocols, so the real
 * `@aws-sdk/client-kms` and `@google-cloud/kms` clients run unchanged in your tests. Loopback only.
 * The sum of `drizzle-byok/testing/aws` and `drizzle-byok/testing/vault` (Node built-ins only) and `drizzle-byok/testing/gcp` (needs
 * the Cloud KMS and gRPC packages): import the one you need to install only its SDK.
 */
export * from './aws/index.ts';
export * from './gcp/index.ts';
export * from './vault/index.ts';
export * from './azure/index.ts';
