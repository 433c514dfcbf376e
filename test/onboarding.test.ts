/**
 * Onboarding artifacts and the README's key policy, applied verbatim to the local AWS server (key
 * policy and role trust with the external id) through the real SDK clients: enableByok succeeds; a
 * wrong external id, an external id other than the one issued, and the old README policy
 * (DescribeKey under the EncryptionContext condition) fail with the documented errors.
 */
import { randomBytes } from 'node:crypto';
import { CreateAliasCommand, CreateKeyCommand, KMSClient, ReplicateKeyCommand } from '@aws-sdk/client-kms';
import { eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type AwsOnboarding,
  ByokConfigError,
  type GcpOnboarding,
  KeyAccessDeniedError,
  KmsCredentialsError,
  localKek,
  withTenant,
} from '../src/index.ts';
import { type AwsKmsOptions, awsKekFactory, awsKms } from '../src/kms/aws/index.ts';
import {
  type AwsKmsServer,
  type IamRole,
  type IamUser,
  type PolicyDocument,
  startAwsKmsServer,
} from '../src/testing/aws/index.ts';
import { MAIN_DRIVER, uniqueTenant } from './helpers/db.ts';
import { readmeBlocks } from './helpers/readme.ts';
import { type EncryptedDb, setupEncryptedDb } from './helpers/setup.ts';

const PLATFORM_ACCOUNT = '111122223333';
const TENANT_ACCOUNT = '444455556666';

describe('onboarding: the README and the generated policies, applied verbatim', () => {
  let aws: AwsKmsServer;
  let platformUser: IamUser;
  let app: IamRole;
  let tenantAdmin: IamUser;
  let e: EncryptedDb;
  beforeAll(async () => {
    aws = await startAwsKmsServer({ accountId: PLATFORM_ACCOUNT });
    platformUser = aws.addUser({ name: 'platform' });
    // the platform runs as role `app` (assumed from its own credentials)
    app = aws.addRole({
      name: 'app',
      trust: { principals: [platformUser.arn], externalId: 'platform-internal' },
    });
    tenantAdmin = aws.addUser({ name: 'admin', accountId: TENANT_ACCOUNT });
    e = await setupEncryptedDb(MAIN_DRIVER, {
      kek: localKek({ key: randomBytes(32) }),
      keyring: { kekFactories: { 'aws-kms': awsKekFactory } },
    });
  });
  afterAll(async () => {
    await e?.close();
    await aws?.close();
  });

  const kek = (keyArn: string, roleArn: string, externalId: string, extra: Partial<AwsKmsOptions> = {}) =>
    awsKms({
      keyArn,
      endpoint: aws.endpoint,
      stsEndpoint: aws.stsEndpoint,
      timeoutMs: 2000,
      maxAttempts: 1,
      auth: {
        type: 'assume-role',
        roleArn,
        externalId,
        source: {
          type: 'assume-role',
          roleArn: app.arn,
          externalId: 'platform-internal',
          source: {
            type: 'access-keys',
            accessKeyId: platformUser.accessKeyId,
            secretAccessKey: platformUser.secretAccessKey,
          },
        },
      },
      ...extra,
    });
  const adminClient = (region = aws.region) =>
    new KMSClient({
      region,
      endpoint: aws.endpoint,
      credentials: { accessKeyId: tenantAdmin.accessKeyId, secretAccessKey: tenantAdmin.secretAccessKey },
    });
  const write = (t: string) =>
    withTenant(t, () => e.db.insert(e.s.patients).values({ tenantId: t, name: `row of ${t}` }));
  const read = async (t: string) =>
    (
      await withTenant(t, () =>
        e.db.select({ n: e.s.patients.name }).from(e.s.patients).where(eq(e.s.patients.tenantId, t)),
      )
    ).map((r) => r.n);

  it("the README's key policy and role trust policy (JSON blocks) make enableByok succeed; a wrong external id and the old README policy fail typed", async () => {
    const blocks = readmeBlocks('### AWS KMS', 'json').map((b) => JSON.parse(b) as PolicyDocument);
    expect(blocks).toHaveLength(2);
    const [keyPolicy, trust] = blocks as [PolicyDocument, PolicyDocument];
    const statements = [keyPolicy.Statement].flat();
    // DescribeKey is allowed in a statement without any EncryptionContext condition
    expect(
      statements.some((s) => [s.Action].flat().includes('kms:DescribeKey') && s.Condition === undefined),
    ).toBe(true);
    const tenant = 'acme';
    const roleArn = `arn:aws:iam::${TENANT_ACCOUNT}:role/drizzle-byok`;
    // the role has no IAM policy of its own: only the key policy's statements naming it apply
    aws.addRole({ name: 'drizzle-byok', accountId: TENANT_ACCOUNT, trust, iamAllowsKms: false });
    const key = aws.createKey({ accountId: TENANT_ACCOUNT, policy: JSON.stringify(keyPolicy) });
    const externalId = [trust.Statement].flat()[0]!.Condition!.StringEquals!['sts:ExternalId'] as string;
    await write(tenant);
    // a wrong external id: STS refuses AssumeRole
    const wrong = await e.keyring
      .enableByok(tenant, kek(key.arn, roleArn, 'byok-not-the-one'))
      .catch((x) => x);
    expect(wrong).toBeInstanceOf(KmsCredentialsError);
    // the old README policy: DescribeKey under the EncryptionContext condition is never allowed
    const old = aws.createKey({
      accountId: TENANT_ACCOUNT,
      policy: {
        Version: '2012-10-17',
        Statement: [
          {
            Sid: 'AllowPlatformToWrapDataKeys',
            Effect: 'Allow',
            Principal: { AWS: roleArn },
            Action: ['kms:Encrypt', 'kms:Decrypt', 'kms:DescribeKey'],
            Resource: '*',
            Condition: { StringEquals: { 'kms:EncryptionContext:byok:tenant': tenant } },
          },
        ],
      },
    });
    const refused = await e.keyring.enableByok(tenant, kek(old.arn, roleArn, externalId)).catch((x) => x);
    expect(refused).toBeInstanceOf(KeyAccessDeniedError);
    expect((refused as Error).message).toMatch(/DescribeKey/);
    expect((await e.keyring.status(tenant)).mode).toBe('platform');
    // the README's documents as written
    const st = await e.keyring.enableByok(tenant, kek(key.arn, roleArn, externalId));
    expect(st).toMatchObject({ mode: 'byok', health: 'ok' });
    e.keyring.clearCache();
    expect(await read(tenant)).toEqual([`row of ${tenant}`]);
    // the policy pins the key to its tenant: another tenant cannot use it
    const other = uniqueTenant('other');
    await write(other);
    expect(
      await e.keyring.enableByok(other, kek(key.arn, roleArn, externalId)).catch((x) => x),
    ).toBeInstanceOf(KeyAccessDeniedError);
  });

  it('generated artifacts (multi-region, two regions), applied verbatim with the aws SDK as the tenant admin would, enable BYOK; the external id is issued once and checked', async () => {
    const T = uniqueTenant('onb');
    const suffix = randomBytes(3).toString('hex');
    const options = {
      provider: 'aws' as const,
      platformPrincipal: app.arn,
      tenantAccountId: TENANT_ACCOUNT,
      regions: ['us-east-1', 'eu-west-1'],
      roleName: `byok-${suffix}`,
      keyAlias: `alias/byok-${suffix}`,
    };
    const a = (await e.keyring.onboarding(T, options)) as AwsOnboarding;
    expect(a.externalId).toMatch(/^byok-[0-9a-f]{32}$/);
    expect(((await e.keyring.onboarding(T, options)) as AwsOnboarding).externalId).toBe(a.externalId);
    expect(a.roleArn).toBe(`arn:aws:iam::${TENANT_ACCOUNT}:role/byok-${suffix}`);
    expect(a.keyArns).toEqual([
      `arn:aws:kms:us-east-1:${TENANT_ACCOUNT}:alias/byok-${suffix}`,
      `arn:aws:kms:eu-west-1:${TENANT_ACCOUNT}:alias/byok-${suffix}`,
    ]);
    const describe = a.keyPolicyStatements.find((s) => s.Action === 'kms:DescribeKey')!;
    expect(describe.Condition).toBeUndefined();
    const wrapStmt = a.keyPolicyStatements.find((s) => Array.isArray(s.Action))!;
    expect(wrapStmt.Condition).toEqual({ StringEquals: { 'kms:EncryptionContext:byok:tenant': T } });
    for (const text of [a.shell, a.terraform]) {
      expect(text).toContain(a.externalId);
      expect(text).toContain(app.arn);
      expect(text).toContain(`"kms:EncryptionContext:byok:tenant": "${T}"`);
      expect(text).toContain('eu-west-1');
    }
    expect(a.shell).toMatch(/--multi-region/);
    expect(a.shell).toMatch(/aws kms replicate-key .*--replica-region eu-west-1/);
    expect(a.terraform).toMatch(/resource "aws_kms_replica_key"/);
    expect(a.enableCommand).toBe(
      `drizzle-byok keys enable '${T}' --aws-key-arn ${a.keyArns[0]} --aws-key-arn ${a.keyArns[1]} --aws-role-arn ${a.roleArn}`,
    );
    // the tenant admin applies them: role with the trust policy, multi-region key with the key policy,
    // aliases, a replica with the same policy
    aws.addRole({
      name: `byok-${suffix}`,
      accountId: TENANT_ACCOUNT,
      trust: JSON.parse(JSON.stringify(a.roleTrustPolicy)),
    });
    const east = adminClient('us-east-1');
    const west = adminClient('eu-west-1');
    try {
      const created = await east.send(
        new CreateKeyCommand({
          KeySpec: 'SYMMETRIC_DEFAULT',
          KeyUsage: 'ENCRYPT_DECRYPT',
          MultiRegion: true,
          Policy: JSON.stringify(a.keyPolicy),
        }),
      );
      const keyArn = created.KeyMetadata!.Arn!;
      await east.send(new CreateAliasCommand({ AliasName: options.keyAlias, TargetKeyId: keyArn }));
      const replica = await east.send(
        new ReplicateKeyCommand({
          KeyId: keyArn,
          ReplicaRegion: 'eu-west-1',
          Policy: JSON.stringify(a.keyPolicy),
        }),
      );
      await west.send(
        new CreateAliasCommand({
          AliasName: options.keyAlias,
          TargetKeyId: replica.ReplicaKeyMetadata!.Arn!,
        }),
      );
    } finally {
      east.destroy();
      west.destroy();
    }
    await write(T);
    const keks = (id: string) => [
      kek(a.keyArns[0]!, a.roleArn, id),
      kek(a.keyArns[1]!, a.roleArn, id, { region: 'eu-west-1' }),
    ];
    // an external id other than the one issued: refused before any KMS or STS call
    aws.counters.reset();
    const other = await e.keyring.enableByok(T, keks('byok-someone-elses')).catch((x) => x);
    expect(other).toBeInstanceOf(ByokConfigError);
    expect((other as Error).message).toMatch(/not the one issued to tenant/);
    expect(aws.counters.total).toBe(0);
    const st = await e.keyring.enableByok(T, keks(a.externalId));
    expect(st.keks.map((k) => [k.keyRef, k.region])).toEqual([
      [a.keyArns[0], 'us-east-1'],
      [a.keyArns[1], 'eu-west-1'],
    ]);
    e.keyring.clearCache();
    expect(await read(T)).toEqual([`row of ${T}`]);
    // rotating the external id issues a new one (the old trust policy no longer matches it)
    const rotated = (await e.keyring.onboarding(T, { ...options, rotateExternalId: true })) as AwsOnboarding;
    expect(rotated.externalId).not.toBe(a.externalId);
  });

  it('Cloud KMS artifacts and option checks name what to fix', async () => {
    const T = uniqueTenant('gonb');
    const g = (await e.keyring.onboarding(T, {
      provider: 'gcp',
      serviceAccount: 'byok-platform@platform-project.iam.gserviceaccount.com',
      project: 'acme-prod',
      regions: ['europe-west1'],
    })) as GcpOnboarding;
    expect(g.keyNames).toEqual([
      'projects/acme-prod/locations/europe-west1/keyRings/drizzle-byok/cryptoKeys/drizzle-byok',
    ]);
    expect(g.iamBindings.map((b) => b.role)).toEqual([
      'roles/cloudkms.cryptoKeyEncrypterDecrypter',
      'roles/cloudkms.viewer',
    ]);
    expect(g.shell).toMatch(
      /gcloud kms keys add-iam-policy-binding drizzle-byok .*\n.*serviceAccount:byok-platform@platform-project/,
    );
    expect(g.terraform).toMatch(/google_kms_crypto_key_iam_member/);
    const bad = (o: unknown) =>
      e.keyring.onboarding(T, o as never).then(
        () => new Error('accepted'),
        (x: unknown) => x as Error,
      );
    expect((await bad({ provider: 'kmip' })).message).toMatch(
      /provider must be "aws", "gcp", "azure" or "vault"/,
    );
    expect(
      (
        await bad({
          provider: 'aws',
          platformPrincipal: 'me',
          tenantAccountId: TENANT_ACCOUNT,
          regions: ['us-east-1'],
        })
      ).message,
    ).toMatch(/platformPrincipal must be the ARN/);
    expect(
      (
        await bad({
          provider: 'aws',
          platformPrincipal: app.arn,
          tenantAccountId: '12',
          regions: ['us-east-1'],
        })
      ).message,
    ).toMatch(/tenantAccountId/);
    expect(
      (
        await bad({
          provider: 'aws',
          platformPrincipal: app.arn,
          tenantAccountId: TENANT_ACCOUNT,
          regions: [],
        })
      ).message,
    ).toMatch(/regions must list at least one/);
    expect(
      (await bad({ provider: 'gcp', serviceAccount: 'x', project: 'acme-prod', regions: ['global'] }))
        .message,
    ).toMatch(/serviceAccount/);
  });
});
