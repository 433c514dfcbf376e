import { randomBytes, randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { awsKms } from '../src/kms/aws/index.ts';
import { gcpKms } from '../src/kms/gcp/index.ts';
import type { Kek } from '../src/kms/kek.ts';

/**
 * Against real clouds, only when credentials are in the environment (the only tests allowed to
 * skip). AWS: BYOK_LIVE_AWS_KEY_ARN plus the SDK's default credential chain (AWS_PROFILE,
 * AWS_ACCESS_KEY_ID..., or BYOK_LIVE_AWS_ROLE_ARN + BYOK_LIVE_AWS_EXTERNAL_ID to assume a role).
 * Cloud KMS: BYOK_LIVE_GCP_KEY_NAME plus GOOGLE_APPLICATION_CREDENTIALS (a service-account key file).
 */
async function roundTrip(kek: Kek) {
  const dek = randomBytes(32);
  const context = { tenantId: `live-${randomUUID()}`, dekId: randomUUID() };
  const description = await kek.describe();
  expect(description.state).toBe('enabled');
  const wrapped = await kek.wrap(dek, context);
  expect(Buffer.from(await kek.unwrap(wrapped, context)).equals(dek)).toBe(true);
  await expect(kek.unwrap(wrapped, { ...context, tenantId: 'someone-else' })).rejects.toBeInstanceOf(Error);
  await kek.close?.();
}

const awsArn = process.env.BYOK_LIVE_AWS_KEY_ARN;
describe.skipIf(!awsArn)('live AWS KMS', () => {
  it('describes, wraps and unwraps with the EncryptionContext bound', async () => {
    const role = process.env.BYOK_LIVE_AWS_ROLE_ARN;
    await roundTrip(
      awsKms({
        keyArn: awsArn!,
        auth: role
          ? { type: 'assume-role', roleArn: role, externalId: process.env.BYOK_LIVE_AWS_EXTERNAL_ID ?? '' }
          : { type: 'default' },
      }),
    );
  });
});

const gcpKey = process.env.BYOK_LIVE_GCP_KEY_NAME;
describe.skipIf(!gcpKey || !process.env.GOOGLE_APPLICATION_CREDENTIALS)('live Google Cloud KMS', () => {
  it('describes, wraps and unwraps with the AAD bound and CRC32C checked', async () => {
    await roundTrip(gcpKms({ keyName: gcpKey!, credentials: { type: 'default' } }));
  });
});
