/**
 * The AWS KMS KEK against the local AWS KMS + STS server, with the real `@aws-sdk/client-kms` and
 * `@aws-sdk/credential-providers` on both sides of the wire.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import {
  CancelKeyDeletionCommand,
  CreateAliasCommand,
  CreateKeyCommand,
  DecryptCommand,
  DescribeKeyCommand,
  DisableKeyCommand,
  EnableKeyCommand,
  EncryptCommand,
  GenerateDataKeyCommand,
  GetKeyPolicyCommand,
  KMSClient,
  ListAliasesCommand,
  MalformedPolicyDocumentException,
  NotFoundException,
  PutKeyPolicyCommand,
  ReEncryptCommand,
  ScheduleKeyDeletionCommand,
} from '@aws-sdk/client-kms';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  ByokConfigError,
  KekNotFoundError,
  KeyAccessDeniedError,
  KeyDisabledError,
  KeyUsageError,
  KmsCredentialsError,
  KmsIntegrityError,
  KmsThrottledError,
  KmsUnavailableError,
} from '../src/errors.ts';
import {
  type AwsAuth,
  type AwsKmsKek,
  type AwsKmsOptions,
  awsKekFactory,
  awsKms,
  createAwsKekFactory,
  parseAwsKmsKeyArn,
} from '../src/kms/aws/index.ts';
import type { Kek } from '../src/kms/kek.ts';
import {
  type AwsKmsKeyInfo,
  type AwsKmsServer,
  type IamRole,
  type IamUser,
  startAwsKmsServer,
  type WebIdentityProvider,
} from '../src/testing/aws/index.ts';

const PLATFORM = '111122223333';
const TENANT = '444455556666';
const EXTERNAL_ID = 'acme-ext-7f3a91';
const SUBJECT = 'system:serviceaccount:byok:api';
const ctx = { tenantId: 'acme', dekId: '0b7e8c1e-8f7a-4c53-9d2b-5b7a3f2e1c00' };

let aws: AwsKmsServer;
let platformUser: IamUser;
let tenantRole: IamRole;
let wiRole: IamRole;
let oidc: WebIdentityProvider;
let tokenDir: string;
const keks: Kek[] = [];

/** A key in the tenant's account whose policy lets the platform's principals use it. */
function tenantKey(extra: { multiRegion?: boolean; principals?: string[] } = {}): AwsKmsKeyInfo {
  return aws.createKey({
    accountId: TENANT,
    ...(extra.multiRegion ? { multiRegion: true } : {}),
    policy: {
      Version: '2012-10-17',
      Statement: [
        {
          Effect: 'Allow',
          Principal: { AWS: `arn:aws:iam::${TENANT}:root` },
          Action: 'kms:*',
          Resource: '*',
        },
        {
          Effect: 'Allow',
          Principal: { AWS: extra.principals ?? [platformUser.arn, tenantRole.arn, wiRole.arn] },
          Action: ['kms:Encrypt', 'kms:Decrypt', 'kms:DescribeKey'],
          Resource: '*',
        },
      ],
    },
  });
}

const accessKeys = (): AwsAuth => ({
  type: 'access-keys',
  accessKeyId: platformUser.accessKeyId,
  secretAccessKey: platformUser.secretAccessKey,
});

const assumeRole = (externalId = EXTERNAL_ID): AwsAuth => ({
  type: 'assume-role',
  roleArn: tenantRole.arn,
  externalId,
  source: accessKeys(),
});

/** A KEK on the local server, closed after the test. */
function kek(keyArn: string, options: Partial<AwsKmsOptions> = {}): AwsKmsKek {
  const k = awsKms({
    keyArn,
    endpoint: aws.endpoint,
    stsEndpoint: aws.stsEndpoint,
    auth: accessKeys(),
    ...options,
  });
  keks.push(k);
  return k;
}

function dek(): Uint8Array {
  return new Uint8Array(randomBytes(32));
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a rejection');
}

/** A raw SDK client on the local server, signing as `user`. */
function rawClient(user: IamUser, region = aws.region): KMSClient {
  return new KMSClient({
    region,
    endpoint: aws.endpoint,
    credentials: { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
  });
}

beforeAll(async () => {
  aws = await startAwsKmsServer({ accountId: PLATFORM, region: 'us-east-1' });
  platformUser = aws.addUser({ name: 'platform-app' });
  tenantRole = aws.addRole({
    accountId: TENANT,
    name: 'byok-access',
    trust: { principals: [platformUser.arn], externalId: EXTERNAL_ID },
  });
  oidc = aws.addWebIdentityProvider({
    issuer: 'https://oidc.cluster.test/id/ABC',
    audiences: ['sts.amazonaws.com'],
  });
  wiRole = aws.addRole({
    name: 'byok-web-identity',
    trust: { webIdentity: { providerArn: oidc.arn, audience: 'sts.amazonaws.com', subject: SUBJECT } },
  });
  tokenDir = mkdtempSync(join(tmpdir(), 'byok-aws-'));
});

afterEach(async () => {
  aws.reset();
  await Promise.all(keks.splice(0).map((k) => k.close?.()));
  vi.unstubAllEnvs();
});

afterAll(async () => {
  await aws.close();
  rmSync(tokenDir, { recursive: true, force: true });
});

describe('awsKms: authentication modes', () => {
  it('access keys: wraps and unwraps, signed as the IAM user', async () => {
    const key = tenantKey();
    const k = kek(key.arn);
    const d = dek();
    const wrapped = await k.wrap(d, ctx);
    expect(Buffer.from(wrapped).includes(Buffer.from(d))).toBe(false);
    expect(await k.unwrap(wrapped, ctx)).toEqual(d);
    expect(aws.counters.principal(platformUser.arn)).toBe(2);
    expect(aws.counters.key(key.arn)).toBe(2);
  });

  it('assume-role with the right ExternalId: calls KMS as the tenant role, assuming it once', async () => {
    const key = tenantKey();
    const k = kek(key.arn, { auth: assumeRole() });
    const d = dek();
    expect(await k.unwrap(await k.wrap(d, ctx), ctx)).toEqual(d);
    expect(aws.counters.operation('AssumeRole')).toBe(1);
    expect(aws.counters.principal(tenantRole.arn)).toBe(2);
    const encrypt = aws.counters.calls.find((c) => c.operation === 'Encrypt');
    expect(encrypt?.principal).toBe(`arn:aws:sts::${TENANT}:assumed-role/byok-access/drizzle-byok`);
  });

  it('assume-role with a wrong ExternalId fails with KmsCredentialsError', async () => {
    const k = kek(tenantKey().arn, { auth: assumeRole('not-the-tenant-external-id') });
    const err = await rejection(k.wrap(dek(), ctx));
    expect(err).toBeInstanceOf(KmsCredentialsError);
    expect(err.message).toContain('AccessDenied');
    expect(err.message).toContain(tenantRole.arn);
    expect(aws.counters.errors('AccessDenied')).toBe(1);
    expect(aws.counters.operation('Encrypt')).toBe(0);
  });

  it('assume-role by a principal the trust policy does not name fails with KmsCredentialsError', async () => {
    const stranger = aws.addUser();
    const k = kek(tenantKey().arn, {
      auth: {
        type: 'assume-role',
        roleArn: tenantRole.arn,
        externalId: EXTERNAL_ID,
        source: {
          type: 'access-keys',
          accessKeyId: stranger.accessKeyId,
          secretAccessKey: stranger.secretAccessKey,
        },
      },
    });
    expect(await rejection(k.describe())).toBeInstanceOf(KmsCredentialsError);
  });

  it('revoking the role trust stops new sessions', async () => {
    const role = aws.addRole({
      accountId: TENANT,
      name: 'byok-revocable',
      trust: { principals: [platformUser.arn], externalId: EXTERNAL_ID },
    });
    const key = tenantKey({ principals: [role.arn] });
    const auth: AwsAuth = {
      type: 'assume-role',
      roleArn: role.arn,
      externalId: EXTERNAL_ID,
      source: accessKeys(),
    };
    await kek(key.arn, { auth }).describe();
    aws.setRoleTrust(role.arn, { principals: [`arn:aws:iam::${TENANT}:root`] });
    expect(await rejection(kek(key.arn, { auth }).describe())).toBeInstanceOf(KmsCredentialsError);
  });

  it('STS throttling and 5xx are retried by the STS client', async () => {
    const k = kek(tenantKey().arn, { auth: assumeRole() });
    aws.faults.throttle(1, { operation: 'AssumeRole' });
    aws.faults.fail(1, { operation: 'AssumeRole', status: 503 });
    expect((await k.describe()).state).toBe('enabled');
    expect(aws.counters.operation('AssumeRole')).toBe(3);
    expect(aws.counters.errors('Throttling')).toBe(1);
    expect(aws.counters.errors('ServiceUnavailable')).toBe(1);
  });

  it('assume-role chains: source may itself be an assumed role', async () => {
    const hop = aws.addRole({
      name: 'byok-hop',
      trust: { principals: [platformUser.arn], externalId: 'hop-ext-1' },
    });
    const target = aws.addRole({
      accountId: TENANT,
      name: 'byok-chained',
      trust: { principals: [hop.arn], externalId: 'chain-ext-2' },
    });
    const key = tenantKey({ principals: [target.arn] });
    const k = kek(key.arn, {
      auth: {
        type: 'assume-role',
        roleArn: target.arn,
        externalId: 'chain-ext-2',
        source: { type: 'assume-role', roleArn: hop.arn, externalId: 'hop-ext-1', source: accessKeys() },
      },
    });
    const d = dek();
    expect(await k.unwrap(await k.wrap(d, ctx), ctx)).toEqual(d);
    expect(aws.counters.operation('AssumeRole')).toBe(2);
    expect(aws.counters.principal(target.arn)).toBe(2);
  });

  it('assume-role without a source uses the default credential chain (environment)', async () => {
    vi.stubEnv('AWS_ACCESS_KEY_ID', platformUser.accessKeyId);
    vi.stubEnv('AWS_SECRET_ACCESS_KEY', platformUser.secretAccessKey);
    const key = tenantKey();
    const k = kek(key.arn, {
      auth: { type: 'assume-role', roleArn: tenantRole.arn, externalId: EXTERNAL_ID },
    });
    expect((await k.describe()).state).toBe('enabled');
    expect(aws.counters.principal(tenantRole.arn)).toBe(1);
  });

  it('default: the SDK default credential chain', async () => {
    vi.stubEnv('AWS_ACCESS_KEY_ID', platformUser.accessKeyId);
    vi.stubEnv('AWS_SECRET_ACCESS_KEY', platformUser.secretAccessKey);
    const k = kek(tenantKey().arn, { auth: { type: 'default' } });
    const d = dek();
    expect(await k.unwrap(await k.wrap(d, ctx), ctx)).toEqual(d);
    expect(aws.counters.principal(platformUser.arn)).toBe(2);
  });

  it('web identity with a token function: the function is called and STS maps the token to the role', async () => {
    const token = vi.fn(async () => oidc.issueToken({ subject: SUBJECT }));
    const k = kek(tenantKey().arn, { auth: { type: 'web-identity', roleArn: wiRole.arn, token } });
    const d = dek();
    expect(await k.unwrap(await k.wrap(d, ctx), ctx)).toEqual(d);
    expect(token).toHaveBeenCalledTimes(1);
    expect(aws.counters.operation('AssumeRoleWithWebIdentity')).toBe(1);
    expect(aws.counters.principal(wiRole.arn)).toBe(2);
  });

  it('web identity with a token file', async () => {
    const file = join(tokenDir, 'token-ok');
    writeFileSync(file, oidc.issueToken({ subject: SUBJECT }));
    const k = kek(tenantKey().arn, {
      auth: { type: 'web-identity', roleArn: wiRole.arn, tokenFile: file, sessionName: 'pod-1' },
    });
    const d = dek();
    expect(await k.unwrap(await k.wrap(d, ctx), ctx)).toEqual(d);
    expect(aws.counters.calls.find((c) => c.operation === 'Encrypt')?.principal).toBe(
      `arn:aws:sts::${PLATFORM}:assumed-role/byok-web-identity/pod-1`,
    );
  });

  it.each([
    ['a token with a forged signature', () => `${oidc.issueToken({ subject: SUBJECT }).slice(0, -4)}AAAA`],
    ['an expired token', () => oidc.issueToken({ subject: SUBJECT, expiresInSeconds: -60 })],
    ['a token for another audience', () => oidc.issueToken({ subject: SUBJECT, audience: 'someone-else' })],
    ['a token for another subject', () => oidc.issueToken({ subject: 'system:serviceaccount:other:app' })],
    ['something that is not a JWT', () => 'not-a-jwt'],
  ])('web identity with %s fails with KmsCredentialsError', async (_label, makeToken) => {
    const k = kek(tenantKey().arn, { auth: { type: 'web-identity', roleArn: wiRole.arn, token: makeToken } });
    const err = await rejection(k.wrap(dek(), ctx));
    expect(err).toBeInstanceOf(KmsCredentialsError);
    expect(err.message).toContain(wiRole.arn);
    expect(aws.counters.errors()).toBe(1);
    expect(aws.counters.operation('Encrypt')).toBe(0);
  });

  it('a bad token file fails with KmsCredentialsError', async () => {
    const file = join(tokenDir, 'token-expired');
    writeFileSync(file, oidc.issueToken({ subject: SUBJECT, expiresInSeconds: -5 }));
    const k = kek(tenantKey().arn, { auth: { type: 'web-identity', roleArn: wiRole.arn, tokenFile: file } });
    const err = await rejection(k.describe());
    expect(err).toBeInstanceOf(KmsCredentialsError);
    expect(aws.counters.errors('ExpiredTokenException')).toBe(1);
  });

  it('a wrong secret key fails with KmsCredentialsError (InvalidSignatureException)', async () => {
    const k = kek(tenantKey().arn, {
      auth: {
        type: 'access-keys',
        accessKeyId: platformUser.accessKeyId,
        secretAccessKey: 'wrong-secret-0123456789',
      },
    });
    const err = await rejection(k.wrap(dek(), ctx));
    expect(err).toBeInstanceOf(KmsCredentialsError);
    expect(err.message).toContain('InvalidSignatureException');
    expect(aws.counters.errors('InvalidSignatureException')).toBe(1);
  });

  it('an unknown access key fails with KmsCredentialsError (UnrecognizedClientException)', async () => {
    const k = kek(tenantKey().arn, {
      auth: {
        type: 'access-keys',
        accessKeyId: 'AKIAUNKNOWNUNKNOWN00',
        secretAccessKey: 'whatever-secret-0123',
      },
    });
    const err = await rejection(k.describe());
    expect(err).toBeInstanceOf(KmsCredentialsError);
    expect(err.message).toContain('UnrecognizedClientException');
  });

  it('temporary credentials the server expires early are rejected as KmsCredentialsError', async () => {
    const key = tenantKey();
    const k = kek(key.arn, { auth: assumeRole() });
    await k.describe();
    aws.expireSessions();
    const err = await rejection(k.describe());
    // The SDK keeps cached credentials until their announced expiry: an early expiry is a rejection.
    expect(err).toBeInstanceOf(KmsCredentialsError);
    expect(err.message).toContain('ExpiredTokenException');
  });
});

describe('awsKms: wrap / unwrap', () => {
  it('binds tenant and DEK id in the EncryptionContext', async () => {
    const k = kek(tenantKey().arn);
    const wrapped = await k.wrap(dek(), ctx);
    expect(aws.counters.calls.find((c) => c.operation === 'Encrypt')?.encryptionContext).toEqual({
      'byok:tenant': ctx.tenantId,
      'byok:dek': ctx.dekId,
    });
    const otherTenant = await rejection(k.unwrap(wrapped, { ...ctx, tenantId: 'globex' }));
    expect(otherTenant).toBeInstanceOf(KmsIntegrityError);
    expect(otherTenant.message).toContain('InvalidCiphertextException');
    expect((otherTenant as KmsIntegrityError).tenantId).toBe('globex');
    expect(
      await rejection(k.unwrap(wrapped, { ...ctx, dekId: '5f1c0b0e-0000-4000-8000-000000000000' })),
    ).toBeInstanceOf(KmsIntegrityError);
  });

  it('a corrupted wrapped key fails with KmsIntegrityError', async () => {
    const k = kek(tenantKey().arn);
    const wrapped = await k.wrap(dek(), ctx);
    const tampered = Uint8Array.from(wrapped);
    tampered[tampered.length - 1]! ^= 1;
    expect(await rejection(k.unwrap(tampered, ctx))).toBeInstanceOf(KmsIntegrityError);
    expect(await rejection(k.unwrap(new Uint8Array(0), ctx))).toBeInstanceOf(KmsIntegrityError);
  });

  it('a key wrapped under another KMS key is refused (Decrypt names the configured key)', async () => {
    const a = kek(tenantKey().arn);
    const b = kek(tenantKey().arn);
    const err = await rejection(b.unwrap(await a.wrap(dek(), ctx), ctx));
    expect(err).toBeInstanceOf(KmsIntegrityError);
    expect(err.message).toContain('IncorrectKeyException');
  });

  it('refuses a plaintext that is not a 32-byte data key, both ways', async () => {
    const key = tenantKey();
    const k = kek(key.arn);
    expect(await rejection(k.wrap(new Uint8Array(16), ctx))).toBeInstanceOf(ByokConfigError);
    const client = rawClient(platformUser);
    try {
      const out = await client.send(
        new EncryptCommand({
          KeyId: key.arn,
          Plaintext: new Uint8Array(16).fill(7),
          EncryptionContext: { 'byok:tenant': ctx.tenantId, 'byok:dek': ctx.dekId },
        }),
      );
      const err = await rejection(k.unwrap(out.CiphertextBlob!, ctx));
      expect(err).toBeInstanceOf(KmsIntegrityError);
      expect(err.message).toContain('32-byte');
    } finally {
      client.destroy();
    }
  });

  it('refuses an empty tenant id or DEK id', async () => {
    const k = kek(tenantKey().arn);
    expect(await rejection(k.wrap(dek(), { tenantId: '', dekId: ctx.dekId }))).toBeInstanceOf(
      ByokConfigError,
    );
    expect(await rejection(k.wrap(dek(), { tenantId: 'acme', dekId: '' }))).toBeInstanceOf(ByokConfigError);
  });

  it('works through an alias ARN', async () => {
    const key = tenantKey();
    const aliasArn = aws.createAlias('alias/acme-byok', key.arn);
    expect(aliasArn).toBe(`arn:aws:kms:us-east-1:${TENANT}:alias/acme-byok`);
    const viaAlias = kek(aliasArn);
    const d = dek();
    const wrapped = await viaAlias.wrap(d, ctx);
    expect(await viaAlias.unwrap(wrapped, ctx)).toEqual(d);
    expect(await kek(key.arn).unwrap(wrapped, ctx)).toEqual(d);
    expect(aws.counters.key(key.arn)).toBe(3);
    expect(viaAlias.keyRef).toBe(aliasArn);
  });

  it('multi-region key: a DEK wrapped in the primary region unwraps through the replica region', async () => {
    const primary = tenantKey({ multiRegion: true });
    expect(primary.keyId).toMatch(/^mrk-[0-9a-f]{32}$/);
    const replica = aws.replicateKey(primary.arn, 'eu-west-1');
    expect(replica.arn).toBe(`arn:aws:kms:eu-west-1:${TENANT}:key/${primary.keyId}`);
    const east = kek(primary.arn);
    const west = kek(replica.arn);
    expect(west.region).toBe('eu-west-1');
    const d = dek();
    const wrapped = await east.wrap(d, ctx);
    expect(await west.unwrap(wrapped, ctx)).toEqual(d);
    const decrypt = aws.counters.calls.find((c) => c.operation === 'Decrypt');
    expect(decrypt?.region).toBe('eu-west-1');
    expect(decrypt?.keyArn).toBe(replica.arn);
    // The replica's EncryptionContext binding holds too.
    expect(await rejection(west.unwrap(wrapped, { ...ctx, tenantId: 'globex' }))).toBeInstanceOf(
      KmsIntegrityError,
    );
  });

  it('a key ARN of one region is not found through another region', async () => {
    const key = tenantKey();
    const moved = key.arn.replace(':us-east-1:', ':eu-central-1:');
    expect(await rejection(kek(moved).describe())).toBeInstanceOf(KekNotFoundError);
  });
});

describe('awsKms: key ARN and option validation', () => {
  const good = `arn:aws:kms:us-east-1:${TENANT}:key/1234abcd-12ab-34cd-56ef-1234567890ab`;
  const check = (keyArn: string, part: RegExp) => {
    let caught: unknown;
    try {
      awsKms({ keyArn, auth: { type: 'default' } });
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(ByokConfigError);
    expect((caught as Error).message).toMatch(part);
  };

  it('accepts key, mrk and alias ARNs, in any partition', () => {
    expect(parseAwsKmsKeyArn(good)).toEqual({
      partition: 'aws',
      region: 'us-east-1',
      accountId: TENANT,
      resourceType: 'key',
      resource: '1234abcd-12ab-34cd-56ef-1234567890ab',
      multiRegion: false,
    });
    expect(parseAwsKmsKeyArn(`arn:aws:kms:eu-west-1:${TENANT}:key/mrk-${'a'.repeat(32)}`).multiRegion).toBe(
      true,
    );
    expect(parseAwsKmsKeyArn(`arn:aws-cn:kms:cn-north-1:${TENANT}:alias/x/y_z-1`).resource).toBe(
      'alias/x/y_z-1',
    );
    expect(
      parseAwsKmsKeyArn(`arn:aws-us-gov:kms:us-gov-west-1:${TENANT}:key/${good.split('/')[1]}`).region,
    ).toBe('us-gov-west-1');
  });

  it('names a bad partition', () => check(good.replace('arn:aws:', 'arn:azure:'), /partition "azure"/));
  it('names a bad service', () => check(good.replace(':kms:', ':s3:'), /service "s3"/));
  it('names a bad region', () => check(good.replace('us-east-1', 'useast1'), /region "useast1"/));
  it('names a bad account id', () =>
    check(good.replace(TENANT, '4444'), /account id "4444" is not 12 digits/));
  it('names a bad resource type', () => check(good.replace(':key/', ':grant/'), /resource type "grant"/));
  it('names a bad key id', () => check(good.replace(/key\/.*/, 'key/not-a-key-id'), /key id "not-a-key-id"/));
  it('names a bad multi-region key id', () =>
    check(good.replace(/key\/.*/, 'key/mrk-123'), /key id "mrk-123"/));
  it('names a bad alias name', () =>
    check(good.replace(/key\/.*/, 'alias/bad name!'), /alias name "alias\/bad name!"/));
  it('refuses AWS managed key aliases', () =>
    check(good.replace(/key\/.*/, 'alias/aws/ebs'), /AWS managed key/));
  it('names a wrong number of parts', () =>
    check('arn:aws:kms:us-east-1:key/abc', /6 colon-separated parts/));
  it('refuses a bare key id, asking for a full ARN', () =>
    check('1234abcd-12ab-34cd-56ef-1234567890ab', /bare key id.*full key ARN.*other AWS accounts/));
  it('refuses a bare alias name, asking for a full ARN', () =>
    check('alias/acme', /bare alias name.*full key ARN.*other AWS accounts/));
  it('refuses a missing key ARN', () => check('', /keyArn is required/));

  it('validates role ARNs, external ids, tokens and numbers', () => {
    const bad =
      (auth: unknown, extra: Partial<AwsKmsOptions> = {}) =>
      () =>
        awsKms({ keyArn: good, auth: auth as AwsAuth, ...extra });
    const roleArn = `arn:aws:iam::${TENANT}:role/byok`;
    expect(bad({ type: 'assume-role', roleArn: 'arn:aws:iam::1:role/x', externalId: 'abc' })).toThrow(
      /roleArn.*not 12 digits/,
    );
    expect(bad({ type: 'assume-role', roleArn: `arn:aws:iam::${TENANT}:user/x`, externalId: 'abc' })).toThrow(
      /auth\.roleArn/,
    );
    expect(bad({ type: 'assume-role', roleArn })).toThrow(/externalId is required/);
    expect(bad({ type: 'assume-role', roleArn, externalId: '' })).toThrow(/externalId is required/);
    expect(bad({ type: 'assume-role', roleArn, externalId: 'abc', durationSeconds: 60 })).toThrow(
      /durationSeconds/,
    );
    expect(bad({ type: 'assume-role', roleArn, externalId: 'abc', source: { type: 'nope' } })).toThrow(
      /auth\.source\.type/,
    );
    expect(bad({ type: 'web-identity', roleArn })).toThrow(/exactly one of token/);
    expect(bad({ type: 'web-identity', roleArn, token: 'x' })).toThrow(/token must be a function/);
    expect(bad({ type: 'access-keys', accessKeyId: 'short', secretAccessKey: 'x' })).toThrow(/accessKeyId/);
    expect(bad({ type: 'default' }, { region: 'eu-west-1' })).toThrow(/differs from the key's region/);
    expect(bad({ type: 'default' }, { timeoutMs: 0 })).toThrow(/timeoutMs/);
    expect(bad({ type: 'default' }, { maxAttempts: 0 })).toThrow(/maxAttempts/);
    expect(bad({ type: 'default' }, { endpoint: 'not a url' })).toThrow(/endpoint/);
    for (const f of [bad({ type: 'assume-role', roleArn })]) expect(f).toThrow(ByokConfigError);
  });

  it('defaults region to the ARN region and keyRef to the ARN', () => {
    const k = awsKms({ keyArn: good, auth: { type: 'default' } });
    keks.push(k);
    expect(k.kind).toBe('aws-kms');
    expect(k.keyRef).toBe(good);
    expect(k.region).toBe('us-east-1');
  });
});

describe('awsKms: describe', () => {
  it('reports an enabled key with its usage, spec and region', async () => {
    const key = tenantKey();
    const d = await kek(key.arn).describe();
    expect(d.state).toBe('enabled');
    expect(d.providerState).toBe('Enabled');
    expect(d.region).toBe('us-east-1');
    expect(d.details).toMatchObject({
      keyId: key.keyId,
      keyArn: key.arn,
      accountId: TENANT,
      keyUsage: 'ENCRYPT_DECRYPT',
      keySpec: 'SYMMETRIC_DEFAULT',
      multiRegion: false,
      canWrap: true,
      deletionDate: null,
    });
  });

  it('reports disabled and pending deletion keys', async () => {
    const key = tenantKey();
    const k = kek(key.arn);
    aws.setKeyState(key.arn, 'Disabled');
    expect(await k.describe()).toMatchObject({ state: 'disabled', providerState: 'Disabled' });
    aws.setKeyState(key.arn, 'PendingDeletion');
    const d = await k.describe();
    expect(d).toMatchObject({ state: 'pending-deletion', providerState: 'PendingDeletion' });
    expect(typeof d.details?.deletionDate).toBe('string');
    aws.setKeyState(key.arn, 'PendingReplicaDeletion');
    expect((await k.describe()).state).toBe('pending-deletion');
    aws.setKeyState(key.arn, 'Unavailable');
    expect(await k.describe()).toMatchObject({ state: 'disabled', providerState: 'Unavailable' });
    aws.setKeyState(key.arn, 'Creating');
    expect((await k.describe()).state).toBe('unknown');
  });

  it('reports multi-region replicas and unusable key specs', async () => {
    const primary = tenantKey({ multiRegion: true });
    const replica = aws.replicateKey(primary.arn, 'ap-southeast-2');
    const d = await kek(replica.arn).describe();
    expect(d.region).toBe('ap-southeast-2');
    expect(d.details).toMatchObject({
      multiRegion: true,
      multiRegionKeyType: 'REPLICA',
      primaryRegion: 'us-east-1',
    });
    const signing = aws.createKey({
      accountId: TENANT,
      keyUsage: 'SIGN_VERIFY',
      keySpec: 'RSA_2048',
      policy: {
        Statement: [{ Effect: 'Allow', Principal: { AWS: platformUser.arn }, Action: 'kms:DescribeKey' }],
      },
    });
    expect((await kek(signing.arn).describe()).details).toMatchObject({
      keyUsage: 'SIGN_VERIFY',
      keySpec: 'RSA_2048',
      canWrap: false,
    });
  });
});

describe('awsKms: error mapping', () => {
  it('access denied after the tenant changes its key policy', async () => {
    const key = tenantKey();
    const k = kek(key.arn, { auth: assumeRole() });
    const wrapped = await k.wrap(dek(), ctx);
    aws.setPolicy(key.arn, {
      Statement: [
        { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${TENANT}:role/key-admin` }, Action: 'kms:*' },
      ],
    });
    for (const call of [() => k.unwrap(wrapped, ctx), () => k.wrap(dek(), ctx), () => k.describe()]) {
      const err = await rejection(call());
      expect(err).toBeInstanceOf(KeyAccessDeniedError);
      expect(err.message).toContain(key.arn);
      expect(err.message).toContain('AccessDeniedException');
    }
    expect(aws.counters.errors('AccessDeniedException')).toBe(3);
  });

  it('a key policy can pin the tenant id through the EncryptionContext', async () => {
    const key = tenantKey();
    aws.setPolicy(key.arn, {
      Statement: [
        {
          Effect: 'Allow',
          Principal: { AWS: platformUser.arn },
          Action: ['kms:Encrypt', 'kms:Decrypt'],
          Condition: { StringEquals: { 'kms:EncryptionContext:byok:tenant': 'acme' } },
        },
      ],
    });
    const k = kek(key.arn);
    await k.wrap(dek(), ctx);
    expect(await rejection(k.wrap(dek(), { ...ctx, tenantId: 'globex' }))).toBeInstanceOf(
      KeyAccessDeniedError,
    );
  });

  it('disabled key', async () => {
    const key = tenantKey();
    const k = kek(key.arn);
    const wrapped = await k.wrap(dek(), ctx);
    aws.setKeyState(key.arn, 'Disabled');
    for (const call of [() => k.wrap(dek(), ctx), () => k.unwrap(wrapped, ctx)]) {
      const err = await rejection(call());
      expect(err).toBeInstanceOf(KeyDisabledError);
      expect(err.message).toContain('DisabledException');
    }
    aws.setKeyState(key.arn, 'Enabled');
    expect(await k.unwrap(wrapped, ctx)).toHaveLength(32);
  });

  it('key pending deletion', async () => {
    const key = tenantKey();
    const k = kek(key.arn);
    const wrapped = await k.wrap(dek(), ctx);
    aws.setKeyState(key.arn, 'PendingDeletion');
    const err = await rejection(k.unwrap(wrapped, ctx));
    expect(err).toBeInstanceOf(KeyDisabledError);
    expect(err.message).toContain('KMSInvalidStateException');
  });

  it('key not found', async () => {
    const missing = `arn:aws:kms:us-east-1:${TENANT}:key/00000000-0000-4000-8000-000000000000`;
    const k = kek(missing);
    for (const call of [() => k.wrap(dek(), ctx), () => k.describe()]) {
      const err = await rejection(call());
      expect(err).toBeInstanceOf(KekNotFoundError);
      expect(err.message).toContain(missing);
      expect(err.message).toContain('NotFoundException');
    }
    expect(await rejection(kek(`arn:aws:kms:us-east-1:${TENANT}:alias/missing`).describe())).toBeInstanceOf(
      KekNotFoundError,
    );
  });

  it('wrong key usage or spec', async () => {
    for (const opts of [
      { keyUsage: 'SIGN_VERIFY', keySpec: 'ECC_NIST_P256' },
      { keyUsage: 'ENCRYPT_DECRYPT', keySpec: 'RSA_2048' },
      { keyUsage: 'GENERATE_VERIFY_MAC', keySpec: 'HMAC_256' },
    ] as const) {
      const key = aws.createKey({
        accountId: TENANT,
        ...opts,
        policy: { Statement: [{ Effect: 'Allow', Principal: '*', Action: 'kms:*' }] },
      });
      const err = await rejection(kek(key.arn).wrap(dek(), ctx));
      expect(err).toBeInstanceOf(KeyUsageError);
      expect(err.message).toContain('InvalidKeyUsageException');
    }
  });

  it('throttling is retried with backoff and then succeeds', async () => {
    const key = tenantKey();
    const k = kek(key.arn);
    aws.faults.throttle(2, { operation: 'Encrypt' });
    await k.wrap(dek(), ctx);
    expect(aws.counters.operation('Encrypt')).toBe(3);
    expect(aws.counters.errors('ThrottlingException')).toBe(2);
  });

  it('throttling beyond the retry budget fails with KmsThrottledError', async () => {
    const key = tenantKey();
    const k = kek(key.arn, { maxAttempts: 2 });
    aws.faults.throttle(5, { key: key.arn });
    const err = await rejection(k.describe());
    expect(err).toBeInstanceOf(KmsThrottledError);
    expect(err.message).toContain('ThrottlingException');
    expect(aws.counters.operation('DescribeKey')).toBe(2);
  });

  it('5xx answers are retried', async () => {
    const key = tenantKey();
    const k = kek(key.arn);
    const wrapped = await k.wrap(dek(), ctx);
    aws.faults.fail(1, { operation: 'Decrypt', status: 500 });
    aws.faults.fail(1, { operation: 'Decrypt', status: 503 });
    expect(await k.unwrap(wrapped, ctx)).toHaveLength(32);
    expect(aws.counters.operation('Decrypt')).toBe(3);
    expect(aws.counters.errors('KMSInternalException')).toBe(1);
    expect(aws.counters.errors('ServiceUnavailableException')).toBe(1);
  });

  it('persistent 5xx fails with KmsUnavailableError after maxAttempts', async () => {
    const key = tenantKey();
    const k = kek(key.arn, { maxAttempts: 3 });
    aws.faults.fail(10, { key: key.arn });
    const err = await rejection(k.wrap(dek(), ctx));
    expect(err).toBeInstanceOf(KmsUnavailableError);
    expect(aws.counters.operation('Encrypt')).toBe(3);
  });

  it('faults filtered by key leave other keys alone', async () => {
    const faulty = tenantKey();
    const healthy = tenantKey();
    aws.faults.fail(10, { key: faulty.arn, status: 503 });
    await kek(healthy.arn).wrap(dek(), ctx);
    expect(aws.counters.errors()).toBe(0);
  });

  it('a hung KMS fails with KmsUnavailableError within timeout x attempts', async () => {
    const key = tenantKey();
    const timeoutMs = 300;
    const maxAttempts = 2;
    const k = kek(key.arn, { timeoutMs, maxAttempts });
    const wrapped = await k.wrap(dek(), ctx);
    aws.faults.hang({ operation: 'Decrypt' });
    const started = performance.now();
    const err = await rejection(k.unwrap(wrapped, ctx));
    const elapsed = performance.now() - started;
    expect(err).toBeInstanceOf(KmsUnavailableError);
    expect(err.message).toContain('TimeoutError');
    expect(elapsed).toBeGreaterThanOrEqual(timeoutMs * maxAttempts - 50);
    expect(elapsed).toBeLessThan(timeoutMs * maxAttempts + 1000);
    expect(aws.counters.operation('Decrypt')).toBe(maxAttempts);
    expect(aws.faults.hungRequests).toBe(maxAttempts);
  });

  it('added latency below the timeout only slows calls down', async () => {
    const k = kek(tenantKey().arn, { timeoutMs: 2000 });
    aws.faults.latency(150, { operation: 'DescribeKey' });
    const started = performance.now();
    await k.describe();
    expect(performance.now() - started).toBeGreaterThanOrEqual(140);
  });

  it('a closed port fails with KmsUnavailableError', async () => {
    const other = await startAwsKmsServer();
    const endpoint = other.endpoint;
    await other.close();
    const k = kek(tenantKey().arn, { endpoint, maxAttempts: 2 });
    const err = await rejection(k.describe());
    expect(err).toBeInstanceOf(KmsUnavailableError);
    expect(err.message).toContain('ECONNREFUSED');
  });

  it('maps errors by name from an injected client', async () => {
    const cases: [string, unknown][] = [
      ['AccessDeniedException', KeyAccessDeniedError],
      ['ThrottlingException', KmsThrottledError],
      ['KMSInternalException', KmsUnavailableError],
      ['UnrecognizedClientException', KmsCredentialsError],
      ['IncorrectKeyException', KmsIntegrityError],
    ];
    for (const [name, type] of cases) {
      const send = vi.fn(async () => {
        throw Object.assign(new Error(`mocked ${name}`), { name, $metadata: { httpStatusCode: 400 } });
      });
      const k = kek(tenantKey().arn, { client: { send } });
      expect(await rejection(k.describe())).toBeInstanceOf(type as new () => Error);
      expect(send).toHaveBeenCalledTimes(1);
    }
  });
});

describe('awsKms: secrets stay out of logs', () => {
  it('util.inspect and JSON.stringify redact credentials', () => {
    const k = kek(tenantKey().arn, {
      auth: {
        ...(accessKeys() as { accessKeyId: string }),
        type: 'access-keys',
        secretAccessKey: platformUser.secretAccessKey,
        sessionToken: 'session-token-secret-value',
      },
    });
    for (const text of [
      inspect(k),
      inspect(k, { showHidden: true, depth: 10 }),
      JSON.stringify(k),
      String(k),
    ]) {
      expect(text).not.toContain(platformUser.secretAccessKey);
      expect(text).not.toContain('session-token-secret-value');
    }
    expect(inspect(k)).toContain(k.keyRef);
    expect(JSON.parse(JSON.stringify(k))).toMatchObject({
      kind: 'aws-kms',
      keyRef: k.keyRef,
      auth: { type: 'access-keys' },
    });
  });

  it('errors and their causes do not carry secrets, DEKs or wrapped keys', async () => {
    const secret = 'a-wrong-secret-that-must-not-leak-0123';
    const k = kek(tenantKey().arn, {
      auth: { type: 'access-keys', accessKeyId: platformUser.accessKeyId, secretAccessKey: secret },
    });
    const err = await rejection(k.wrap(dek(), ctx));
    expect(err).toBeInstanceOf(KmsCredentialsError);
    expect(err.cause).toBeInstanceOf(Error);
    expect((err.cause as Error).name).toBe('InvalidSignatureException');
    const printed = inspect(err, { depth: 20, showHidden: true });
    expect(printed).not.toContain(secret);
    expect(printed).not.toContain('$response');

    const good = kek(tenantKey().arn);
    const d = dek();
    const wrapped = await good.wrap(d, ctx);
    const integrity = await rejection(good.unwrap(wrapped, { ...ctx, tenantId: 'globex' }));
    const shown = inspect(integrity, { depth: 20, showHidden: true });
    expect(shown).not.toContain(Buffer.from(wrapped).toString('base64'));
    expect(shown).not.toContain(Buffer.from(d).toString('hex'));
  });

  it('web identity tokens never reach error messages', async () => {
    const token = oidc.issueToken({ subject: 'intruder' });
    const k = kek(tenantKey().arn, {
      auth: { type: 'web-identity', roleArn: wiRole.arn, token: () => token },
    });
    const err = await rejection(k.wrap(dek(), ctx));
    expect(inspect(err, { depth: 20 })).not.toContain(token);
  });
});

describe('awsKms: toConfig and awsKekFactory', () => {
  it('keeps secrets in `secret` only, and rebuilds a working KEK', async () => {
    const key = tenantKey();
    const k = kek(key.arn, { timeoutMs: 1500, maxAttempts: 4 });
    const d = dek();
    const wrapped = await k.wrap(d, ctx);
    const config = JSON.parse(JSON.stringify(k.toConfig()));
    expect(config).toEqual({
      kind: 'aws-kms',
      params: {
        keyArn: key.arn,
        region: 'us-east-1',
        endpoint: aws.endpoint,
        stsEndpoint: aws.stsEndpoint,
        timeoutMs: 1500,
        maxAttempts: 4,
        auth: { type: 'access-keys' },
      },
      secret: { accessKeyId: platformUser.accessKeyId, secretAccessKey: platformUser.secretAccessKey },
    });
    const rebuilt = (await awsKekFactory(config)) as AwsKmsKek;
    keks.push(rebuilt);
    expect(rebuilt.keyRef).toBe(key.arn);
    expect(await rebuilt.unwrap(wrapped, ctx)).toEqual(d);
    expect(rebuilt.toConfig()).toEqual(config);
  });

  it('assume-role: role, external id and session name are params; the source keys are secret', async () => {
    const key = tenantKey();
    const k = kek(key.arn, {
      auth: {
        type: 'assume-role',
        roleArn: tenantRole.arn,
        externalId: EXTERNAL_ID,
        sessionName: 'byok-acme',
        durationSeconds: 900,
        source: accessKeys(),
      },
    });
    const config = k.toConfig();
    expect(config.params.auth).toEqual({
      type: 'assume-role',
      roleArn: tenantRole.arn,
      externalId: EXTERNAL_ID,
      sessionName: 'byok-acme',
      durationSeconds: 900,
      source: { type: 'access-keys' },
    });
    expect(JSON.stringify(config.params)).not.toContain(platformUser.secretAccessKey);
    expect(config.secret).toEqual({
      accessKeyId: platformUser.accessKeyId,
      secretAccessKey: platformUser.secretAccessKey,
    });
    const rebuilt = await awsKekFactory(JSON.parse(JSON.stringify(config)));
    keks.push(rebuilt);
    const d = dek();
    expect(await rebuilt.unwrap(await k.wrap(d, ctx), ctx)).toEqual(d);
    expect(aws.counters.calls.find((c) => c.operation === 'Decrypt')?.principal).toBe(
      `arn:aws:sts::${TENANT}:assumed-role/byok-access/byok-acme`,
    );
  });

  it('web identity with a token file rebuilds from the file path', async () => {
    const file = join(tokenDir, 'token-rebuild');
    writeFileSync(file, oidc.issueToken({ subject: SUBJECT }));
    const k = kek(tenantKey().arn, { auth: { type: 'web-identity', roleArn: wiRole.arn, tokenFile: file } });
    const config = k.toConfig();
    expect(config.params.auth).toEqual({ type: 'web-identity', roleArn: wiRole.arn, tokenFile: file });
    expect(config.secret).toBeUndefined();
    const rebuilt = await awsKekFactory(config);
    keks.push(rebuilt);
    expect((await rebuilt.describe()).state).toBe('enabled');
  });

  it('web identity with a token function needs the function again at rebuild', async () => {
    const key = tenantKey();
    const k = kek(key.arn, {
      auth: { type: 'web-identity', roleArn: wiRole.arn, token: () => oidc.issueToken({ subject: SUBJECT }) },
    });
    const config = k.toConfig();
    expect(config.params.auth).toEqual({
      type: 'web-identity',
      roleArn: wiRole.arn,
      tokenSource: 'function',
    });
    expect(() => awsKekFactory(config)).toThrow(/token function.*createAwsKekFactory/);
    const supply = vi.fn(() => oidc.issueToken({ subject: SUBJECT }));
    const rebuilt = await createAwsKekFactory({ webIdentityToken: supply })(config);
    keks.push(rebuilt);
    expect((await rebuilt.describe()).state).toBe('enabled');
    expect(supply).toHaveBeenCalledWith({ keyArn: key.arn, roleArn: wiRole.arn });
  });

  it('refuses configs of another kind or with bad params', () => {
    expect(() => awsKekFactory({ kind: 'gcp-kms', params: {} })).toThrow(ByokConfigError);
    expect(() =>
      awsKekFactory({ kind: 'aws-kms', params: { keyArn: 'alias/x', auth: { type: 'default' } } }),
    ).toThrow(/full key ARN/);
    expect(() =>
      awsKekFactory({ kind: 'aws-kms', params: { keyArn: tenantKey().arn, auth: { type: 'access-keys' } } }),
    ).toThrow(/secret/);
  });

  it('close() releases the client; later calls fail with ByokConfigError', async () => {
    const k = kek(tenantKey().arn);
    await k.describe();
    await k.close();
    await k.close();
    expect(await rejection(k.describe())).toBeInstanceOf(ByokConfigError);
  });
});

describe('local AWS KMS server: wire protocol with the raw SDK client', () => {
  it('CreateKey, CreateAlias, ListAliases, GenerateDataKey, ReEncrypt, Enable/Disable, deletion', async () => {
    const admin = aws.addUser({ accountId: TENANT });
    const client = rawClient(admin);
    try {
      const created = await client.send(new CreateKeyCommand({ Description: 'wire test' }));
      const keyId = created.KeyMetadata!.KeyId!;
      expect(created.KeyMetadata).toMatchObject({
        AWSAccountId: TENANT,
        KeyState: 'Enabled',
        KeySpec: 'SYMMETRIC_DEFAULT',
        KeyUsage: 'ENCRYPT_DECRYPT',
        Arn: `arn:aws:kms:us-east-1:${TENANT}:key/${keyId}`,
      });
      expect(created.KeyMetadata!.CreationDate).toBeInstanceOf(Date);
      await client.send(new CreateAliasCommand({ AliasName: 'alias/wire', TargetKeyId: keyId }));
      const aliases = await client.send(new ListAliasesCommand({}));
      expect(aliases.Aliases?.map((a) => a.AliasName)).toContain('alias/wire');

      const dataKey = await client.send(
        new GenerateDataKeyCommand({ KeyId: 'alias/wire', KeySpec: 'AES_256' }),
      );
      expect(dataKey.Plaintext).toHaveLength(32);
      const other = await client.send(new CreateKeyCommand({}));
      const re = await client.send(
        new ReEncryptCommand({
          CiphertextBlob: dataKey.CiphertextBlob,
          DestinationKeyId: other.KeyMetadata!.KeyId!,
          DestinationEncryptionContext: { purpose: 'test' },
        }),
      );
      const back = await client.send(
        new DecryptCommand({ CiphertextBlob: re.CiphertextBlob, EncryptionContext: { purpose: 'test' } }),
      );
      expect(back.Plaintext).toEqual(dataKey.Plaintext);

      const policy = JSON.stringify({
        Statement: [{ Effect: 'Allow', Principal: { AWS: admin.arn }, Action: 'kms:*', Resource: '*' }],
      });
      await client.send(new PutKeyPolicyCommand({ KeyId: keyId, PolicyName: 'default', Policy: policy }));
      expect(
        (await client.send(new GetKeyPolicyCommand({ KeyId: keyId, PolicyName: 'default' }))).Policy,
      ).toBe(policy);
      const malformed = JSON.stringify({
        Statement: [
          { Effect: 'Allow', Principal: '*', Action: 'kms:*', Condition: { DateGreaterThan: { x: '1' } } },
        ],
      });
      expect(
        await rejection(
          client.send(new PutKeyPolicyCommand({ KeyId: keyId, PolicyName: 'default', Policy: malformed })),
        ),
      ).toBeInstanceOf(MalformedPolicyDocumentException);

      await client.send(new DisableKeyCommand({ KeyId: keyId }));
      expect(aws.describeKey(`arn:aws:kms:us-east-1:${TENANT}:key/${keyId}`).keyState).toBe('Disabled');
      await client.send(new EnableKeyCommand({ KeyId: keyId }));
      const scheduled = await client.send(
        new ScheduleKeyDeletionCommand({ KeyId: keyId, PendingWindowInDays: 7 }),
      );
      expect(scheduled.KeyState).toBe('PendingDeletion');
      const described = await client.send(new DescribeKeyCommand({ KeyId: keyId }));
      expect(described.KeyMetadata?.DeletionDate).toBeInstanceOf(Date);
      await client.send(new CancelKeyDeletionCommand({ KeyId: keyId }));
      expect((await client.send(new DescribeKeyCommand({ KeyId: keyId }))).KeyMetadata?.KeyState).toBe(
        'Disabled',
      );
    } finally {
      client.destroy();
    }
  });

  it('answers errors with the real exception classes', async () => {
    const client = rawClient(platformUser);
    try {
      const err = await rejection(
        client.send(
          new DescribeKeyCommand({
            KeyId: `arn:aws:kms:us-east-1:${PLATFORM}:key/${'0'.repeat(8)}-0000-4000-8000-000000000000`,
          }),
        ),
      );
      expect(err).toBeInstanceOf(NotFoundException);
      expect((err as NotFoundException).$metadata.httpStatusCode).toBe(400);
    } finally {
      client.destroy();
    }
  });

  it('close() ends hung calls and sockets promptly', async () => {
    const server = await startAwsKmsServer();
    const user = server.addUser();
    const key = server.createKey();
    server.faults.hang();
    const client = new KMSClient({
      region: server.region,
      endpoint: server.endpoint,
      credentials: user,
      maxAttempts: 1,
    });
    try {
      const pending = rejection(client.send(new DescribeKeyCommand({ KeyId: key.arn })));
      await vi.waitFor(() => expect(server.faults.hungRequests).toBe(1));
      const started = performance.now();
      await server.close();
      expect(performance.now() - started).toBeLessThan(1000);
      expect(await pending).toBeInstanceOf(Error);
    } finally {
      client.destroy();
    }
  });
});
