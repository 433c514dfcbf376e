import { randomBytes } from 'node:crypto';
import { eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyNotFoundError, localKek, withTenant } from '../src/index.ts';
import { awsKekFactory, awsKms } from '../src/kms/aws/index.ts';
import { type AwsKmsServer, startAwsKmsServer } from '../src/testing/aws/index.ts';
import { MAIN_DRIVER, uniqueTenant } from './helpers/db.ts';
import { type EncryptedDb, setupEncryptedDb, sibling } from './helpers/setup.ts';

describe('replacing the platform key', () => {
  let aws: AwsKmsServer;
  let e: EncryptedDb;
  const k1 = localKek({ key: randomBytes(32) });
  const k2 = localKek({ key: randomBytes(32) });
  const factories = { 'aws-kms': awsKekFactory };
  beforeAll(async () => {
    aws = await startAwsKmsServer();
    e = await setupEncryptedDb(MAIN_DRIVER, { kek: k1, keyring: { kekFactories: factories } });
  });
  afterAll(async () => {
    await e?.close();
    await aws?.close();
  });
  const read = (x: EncryptedDb, t: string) =>
    withTenant(t, () =>
      x.db.select({ n: x.s.patients.name }).from(x.s.patients).where(eq(x.s.patients.tenantId, t)),
    );

  it('rewrapPlatform moves data keys and KEK secrets to the new platform key; the old key can then go', async () => {
    const P1 = uniqueTenant('plat1');
    const P2 = uniqueTenant('plat2');
    const B = uniqueTenant('byok');
    for (const t of [P1, P2, B])
      await withTenant(t, () => e.db.insert(e.s.patients).values({ tenantId: t, name: `row of ${t}` }));
    await e.keyring.rotateDek(P1);
    const user = aws.addUser();
    const key = aws.createKey();
    await e.keyring.enableByok(
      B,
      awsKms({
        keyArn: key.arn,
        endpoint: aws.endpoint,
        auth: { type: 'access-keys', accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
      }),
    );

    const next = await sibling(e, {
      kek: k2,
      keyring: { previousPlatformKeks: [k1], kekFactories: factories },
    });
    try {
      for (const t of [P1, P2, B]) expect(await read(next, t)).toEqual([{ n: `row of ${t}` }]);
      const before = await e.tdb.raw<{ n: number }>(
        `select count(*)::int as n from byok.dek_wraps where kek_id is null and kek_ref = $1`,
        [k1.keyRef],
      );
      expect(before[0]!.n).toBeGreaterThanOrEqual(3);
      const done = await next.keyring.rewrapPlatform({ batchSize: 2 });
      expect(done.dataKeys).toBe(before[0]!.n);
      expect(done.secrets).toBeGreaterThanOrEqual(1);
      expect(await next.keyring.rewrapPlatform()).toMatchObject({ dataKeys: 0, secrets: 0 });
    } finally {
      await next.close();
    }
    const left = await e.tdb.raw<{ n: number }>(
      `select (select count(*) from byok.dek_wraps where kek_ref = $1) + (select count(*) from byok.keks where secret_key_ref = $1) as n`,
      [k1.keyRef],
    );
    expect(Number(left[0]!.n)).toBe(0);

    // an instance that only knows the new key reads everything, BYOK tenant included (secret re-sealed)
    const only2 = await sibling(e, { kek: k2, keyring: { kekFactories: factories } });
    try {
      for (const t of [P1, P2, B]) expect(await read(only2, t)).toEqual([{ n: `row of ${t}` }]);
    } finally {
      await only2.close();
    }
    // and one that only knows the old key can no longer unwrap anything
    const only1 = await sibling(e, { kek: k1, keyring: { kekFactories: factories } });
    try {
      await expect(read(only1, P2)).rejects.toBeInstanceOf(KeyNotFoundError);
    } finally {
      await only1.close();
    }
  });
});
