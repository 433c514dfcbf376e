/**
 * `drizzle-byok/testing/gcp`: a local Cloud KMS server speaking gRPC (KeyManagementService from the
 * `.proto` files of `@google-cloud/kms`), so the real `KeyManagementServiceClient` and
 * `drizzle-byok/gcp` run unchanged in your tests. Needs `@google-cloud/kms`, `google-gax`,
 * `@grpc/grpc-js` and `@grpc/proto-loader`; no AWS package. Loopback only.
 */
export * from './gcp-kms-server.ts';
