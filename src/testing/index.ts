/**
 * `drizzle-byok/testing`: local servers that speak the real KMS wire protocols, so the real
 * `@aws-sdk/client-kms` and `@google-cloud/kms` clients run unchanged in your tests. Loopback only.
 */
export * from './aws-kms-server.ts';
export * from './gcp-kms-server.ts';
