/**
 * `drizzle-byok/aws`: a tenant's AWS KMS key as key-encryption key (KEK).
 *
 * ```ts
 * const kek = awsKms({
 *   keyArn: 'arn:aws:kms:eu-west-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ab',
 *   auth: { type: 'assume-role', roleArn: 'arn:aws:iam::444455556666:role/byok', externalId: 'acme-7f3a' },
 * });
 * ```
 *
 * Wrapping is `Encrypt` / `Decrypt` with the EncryptionContext
 * `{ "byok:tenant": <tenantId>, "byok:dek": <dekId> }`: a wrapped data key only unwraps for the same
 * tenant and DEK record, and the context appears in the tenant's CloudTrail, so a tenant can pin its
 * key policy to its own tenant id with a `kms:EncryptionContext:byok:tenant` condition.
 *
 * This folder (and `drizzle-byok/testing`) is the only one that imports AWS SDK packages.
 */
export { type AwsKmsKeyArnParts, parseAwsKmsKeyArn } from './arn.ts';
export { type AwsKekFactoryOptions, awsKekFactory, createAwsKekFactory } from './factory.ts';
export { AWS_ENCRYPTION_CONTEXT_KEYS, AwsKmsKek, awsKms } from './kms-kek.ts';
export type {
  AwsAccessKeysAuth,
  AwsAssumeRoleAuth,
  AwsAuth,
  AwsDefaultAuth,
  AwsKmsClientLike,
  AwsKmsOptions,
  AwsWebIdentityFileAuth,
  AwsWebIdentityTokenAuth,
} from './options.ts';
