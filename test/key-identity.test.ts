/**
 * Key identity per wrap, against the local servers through the real SDK clients: an AWS alias moved
 * to a new key (AWS's manual rotation) and a Cloud KMS primary version rotation never strand data;
 * health reports the move; `rewrapMovedKeys` lets the old key be disabled with no loss.
 */
import { randomBytes } from 'node:crypto';
import {
  CreateAliasCommand,
  DeleteAliasCommand,
  DescribeKeyCommand,
  DisableKeyCommand,
  GetKeyPolicyCommand,
  KMSClient,
  PutKeyPolicyCommand,
  ReplicateKeyCommand,
  UpdateAliasCommand,
} from '@aws-sdk/client-kms';
import { KeyManagementServiceClient } from '@google-cloud/kms';
import { eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  KEY_IDENTITY_MIGRATION,
  KeyDisabledError,
  KmsIntegrityError,
  localKek,
  withTenant,
} from '../src/index.ts';
import { migrationStatements } from '../src/store/migrations.ts';
import { awsKekFactory, awsKms } from '../src/kms/aws/index.ts';
import { gcpKekFactory, gcpKms } from '../src/kms/gcp/index.ts';
import { type AwsKmsServer, type IamUser, startAwsKmsServer } from '../src/testing/aws/index.ts';
import { type GcpKmsServer, startGcpKmsServer } from '../src/testing/gcp/index.ts';
import { MAIN_DRIVER, uniqueTenant } from './helpers/db.ts';
import { type EncryptedDb, setupEncryptedDb, sibling } from './helpers/setup.ts';

const factories = { 'aws-kms': awsKekFactory, 'gcp-kms': gcpKekFactory };

it('migration 0004 takes no table lock once applied', async () => {
  const statements = migrationStatements(KEY_IDENTITY_MIGRATION);
  expect(statements.some((s) => s.startsWith('DO $$') && s.endsWith('$$'))).toBe(true);
  expect(statements.every((s) => !/^ALTER/i.test(s))).toBe(true);
});

describe('AWS KMS: aliases, key identity per wrap, multi-region keys', () => {
  const platformKey = randomBytes(32);
  let aws: AwsKmsServer;
  let user: IamUser;
  let admin: KMSClient;
  let e: EncryptedDb;
  beforeAll(async () => {
    aws = await startAwsKmsServer();
    user = aws.addUser({ name: 'platform' });
    admin = new KMSClient({
      region: aws.region,
      endpoint: aws.endpoint,
      credentials: { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
    });
    e = await setupEncryptedDb(MAIN_DRIVER, {
      kek: localKek({ key: platformKey }),
      keyring: { kekFactories: factories, cache: { maxAgeMs: 60_000 } },
    });
  });
  afterAll(async () => {
    admin?.destroy();
    await e?.close();
    await aws?.close();
  });

  const kek = (keyArn: string, region?: string) =>
    awsKms({
      keyArn,
      auth: { type: 'access-keys', accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
      endpoint: aws.endpoint,
      timeoutMs: 2000,
      maxAttempts: 1,
      ...(region ? { region } : {}),
    });
  const write = (t: string, name: string) =>
    withTenant(t, () => e.db.insert(e.s.patients).values({ tenantId: t, name }));
  const read = async (db: EncryptedDb, t: string) =>
    (
      await withTenant(t, () =>
        db.db.select({ n: db.s.patients.name }).from(db.s.patients).where(eq(db.s.patients.tenantId, t)),
      )
    )
      .map((r) => r.n)
      .sort();
  const wrapsOf = (t: string) =>
    e.tdb.raw<{ kek_ref: string; wrapped_by: string | null }>(
      `select w.kek_ref, w.wrapped_by from byok.dek_wraps w join byok.deks d on d.id = w.dek_id where d.tenant_id = $1 order by d.version`,
      [t],
    );

  it('alias moved to a new key (old key enabled, then disabled): rows stay readable, health reports the move, re-wrap frees the old key', async () => {
    const T = uniqueTenant('alias');
    const O = uniqueTenant('other');
    const oldKey = aws.createKey();
    const aliasName = `alias/${T}`;
    await admin.send(new CreateAliasCommand({ AliasName: aliasName, TargetKeyId: oldKey.keyId }));
    const aliasArn = `arn:aws:kms:${aws.region}:${aws.accountId}:${aliasName}`;
    await write(T, 'one');
    await e.keyring.rotateDek(T);
    await write(T, 'two');
    await write(O, 'other tenant');
    const st = await e.keyring.enableByok(T, kek(aliasArn));
    expect(st.keks[0]).toMatchObject({ keyRef: aliasArn, currentKeyId: oldKey.arn, moved: 0 });
    // every wrap records the key ARN Encrypt answered, not the alias
    expect((await wrapsOf(T)).map((w) => w.wrapped_by)).toEqual([oldKey.arn, oldKey.arn]);

    // AWS's manual rotation: the alias now names a new key; the old key stays enabled
    const newKey = aws.createKey();
    await admin.send(new UpdateAliasCommand({ AliasName: aliasName, TargetKeyId: newKey.keyId }));
    const described = await admin.send(new DescribeKeyCommand({ KeyId: aliasArn }));
    expect(described.KeyMetadata?.Arn).toBe(newKey.arn);
    // another instance, cold cache: Decrypt names the recorded key, so nothing is stranded
    const other = await sibling(e, {
      kek: localKek({ key: platformKey }),
      keyring: { kekFactories: factories },
    });
    try {
      aws.counters.reset();
      expect(await read(other, T)).toEqual(['one', 'two']);
      const decrypts = aws.counters.calls.filter((c) => c.operation === 'Decrypt');
      expect(decrypts.length).toBeGreaterThan(0);
      expect(decrypts.every((c) => c.keyArn === oldKey.arn && c.status === 200)).toBe(true);
      // a new data key version is wrapped through the alias, i.e. by the new key
      await e.keyring.rotateDek(T);
      await write(T, 'three');
      expect((await wrapsOf(T)).map((w) => w.wrapped_by)).toEqual([oldKey.arn, oldKey.arn, newKey.arn]);

      // health resolves the alias and reports the move
      const [health] = await e.keyring.checkHealth({ tenants: [T] });
      expect(health).toMatchObject({ health: 'degraded' });
      expect(health!.keks[0]).toMatchObject({ currentKeyId: newKey.arn, moved: 2, health: 'ok' });
      expect(health!.keks[0]!.wrappedBy).toEqual(
        expect.arrayContaining([
          { keyId: oldKey.arn, dataKeys: 2 },
          { keyId: newKey.arn, dataKeys: 1 },
        ]),
      );

      // disabling the old key before the re-wrap: its data keys are refused, typed, never wrong data
      aws.setKeyState(oldKey.arn, 'Disabled');
      other.keyring.clearCache();
      await expect(read(other, T)).rejects.toBeInstanceOf(KeyDisabledError);
      aws.setKeyState(oldKey.arn, 'Enabled');
      // the re-wrap needs the old key once more; then the old key can go
      const r = await e.keyring.rewrapMovedKeys(T);
      expect(r.rewrapped).toBe(2);
      expect(r.status).toMatchObject({ health: 'ok' });
      expect(r.status.keks[0]).toMatchObject({ currentKeyId: newKey.arn, moved: 0 });
      expect((await wrapsOf(T)).map((w) => w.wrapped_by)).toEqual([newKey.arn, newKey.arn, newKey.arn]);
      await admin.send(new DisableKeyCommand({ KeyId: oldKey.keyId }));
      other.keyring.clearCache();
      e.keyring.clearCache();
      expect(await read(other, T)).toEqual(['one', 'three', 'two']);
      expect(await read(e, T)).toEqual(['one', 'three', 'two']);
      expect(await read(e, O)).toEqual(['other tenant']);
      expect((await e.keyring.checkHealth({ tenants: [T] }))[0]).toMatchObject({ health: 'ok' });
    } finally {
      await other.close();
    }
  });

  it('a recorded key that the reference cannot name is refused (fail closed), and legacy wraps without a record keep working', async () => {
    const T = uniqueTenant('tamper');
    const key = aws.createKey();
    const aliasName = `alias/${T}`;
    aws.createAlias(aliasName, key.arn);
    const aliasArn = `arn:aws:kms:${aws.region}:${aws.accountId}:${aliasName}`;
    await write(T, 'x');
    await e.keyring.enableByok(T, kek(aliasArn));
    // a wrap made before migration 0004 has no record: Decrypt without KeyId, answer checked
    await e.tdb.raw(
      `update byok.dek_wraps set wrapped_by = null where dek_id in (select id from byok.deks where tenant_id = $1)`,
      [T],
    );
    aws.updateAlias(aliasArn, aws.createKey().arn);
    e.keyring.clearCache();
    expect(await read(e, T)).toEqual(['x']);
    // a record naming a key of another account: refused before any KMS call
    await e.tdb.raw(
      `update byok.dek_wraps set wrapped_by = $2 where dek_id in (select id from byok.deks where tenant_id = $1)`,
      [T, key.arn.replace(aws.accountId, '999988887777')],
    );
    e.keyring.clearCache();
    aws.counters.reset();
    await expect(read(e, T)).rejects.toBeInstanceOf(KmsIntegrityError);
    expect(aws.counters.operation('Decrypt')).toBe(0);
    // and a record of another key of the alias's account: KMS refuses it (IncorrectKeyException)
    await e.tdb.raw(
      `update byok.dek_wraps set wrapped_by = $2 where dek_id in (select id from byok.deks where tenant_id = $1)`,
      [T, aws.createKey().arn],
    );
    e.keyring.clearCache();
    await expect(read(e, T)).rejects.toBeInstanceOf(KmsIntegrityError);
    expect(aws.counters.errors('IncorrectKeyException')).toBe(1);
  });

  it('multi-region keys: the replica made by ReplicateKey (same key id) unwraps in its region', async () => {
    const T = uniqueTenant('mrk');
    const primary = aws.createKey({ multiRegion: true });
    const out = await admin.send(new ReplicateKeyCommand({ KeyId: primary.arn, ReplicaRegion: 'eu-west-1' }));
    const replicaArn = out.ReplicaKeyMetadata!.Arn!;
    expect(replicaArn).toBe(primary.arn.replace(aws.region, 'eu-west-1'));
    expect(out.ReplicaKeyMetadata?.MultiRegionConfiguration?.MultiRegionKeyType).toBe('REPLICA');
    await expect(
      admin.send(new ReplicateKeyCommand({ KeyId: primary.arn, ReplicaRegion: 'eu-west-1' })),
    ).rejects.toMatchObject({ name: 'AlreadyExistsException' });
    await write(T, 'both regions');
    await e.keyring.enableByok(T, [kek(primary.arn), kek(replicaArn, 'eu-west-1')]);
    const wraps = await wrapsOf(T);
    expect(new Set(wraps.map((w) => w.wrapped_by))).toEqual(new Set([primary.arn, replicaArn]));
    aws.setKeyState(primary.arn, 'Disabled');
    e.keyring.clearCache();
    // an explicit refusal stands (no failover on a disabled key): reads fail typed
    await expect(read(e, T)).rejects.toBeInstanceOf(KeyDisabledError);
    aws.setKeyState(primary.arn, 'Enabled');
    e.keyring.clearCache();
    const regional = await sibling(e, {
      kek: localKek({ key: platformKey }),
      keyring: { kekFactories: factories, preferredRegion: 'eu-west-1' },
    });
    try {
      aws.counters.reset();
      expect(await read(regional, T)).toEqual(['both regions']);
      expect(aws.counters.calls.filter((c) => c.operation === 'Decrypt').map((c) => c.keyArn)).toEqual([
        replicaArn,
      ]);
    } finally {
      await regional.close();
    }
  });

  it('speaks UpdateAlias, CreateAlias, DeleteAlias, GetKeyPolicy and PutKeyPolicy over the wire, with KMS errors', async () => {
    const a = aws.createKey();
    const b = aws.createKey();
    const name = `alias/wire-${randomBytes(3).toString('hex')}`;
    await admin.send(new CreateAliasCommand({ AliasName: name, TargetKeyId: a.arn }));
    await expect(
      admin.send(new CreateAliasCommand({ AliasName: name, TargetKeyId: b.arn })),
    ).rejects.toMatchObject({
      name: 'AlreadyExistsException',
    });
    await admin.send(new UpdateAliasCommand({ AliasName: name, TargetKeyId: b.arn }));
    expect(aws.describeKey(name).arn).toBe(b.arn);
    const signing = aws.createKey({ keySpec: 'RSA_2048', keyUsage: 'SIGN_VERIFY' });
    await expect(
      admin.send(new UpdateAliasCommand({ AliasName: name, TargetKeyId: signing.arn })),
    ).rejects.toMatchObject({
      name: 'ValidationException',
    });
    await expect(
      admin.send(new UpdateAliasCommand({ AliasName: 'alias/none-here', TargetKeyId: b.arn })),
    ).rejects.toMatchObject({ name: 'NotFoundException' });
    await admin.send(new DeleteAliasCommand({ AliasName: name }));
    await expect(admin.send(new DescribeKeyCommand({ KeyId: name }))).rejects.toMatchObject({
      name: 'NotFoundException',
    });
    const policy = JSON.parse(
      (await admin.send(new GetKeyPolicyCommand({ KeyId: a.arn, PolicyName: 'default' }))).Policy!,
    );
    expect(policy.Statement.length).toBeGreaterThan(0);
    await admin.send(
      new PutKeyPolicyCommand({
        KeyId: a.arn,
        PolicyName: 'default',
        Policy: JSON.stringify({
          Version: '2012-10-17',
          Statement: [
            { Effect: 'Allow', Principal: { AWS: user.arn }, Action: 'kms:DescribeKey', Resource: '*' },
          ],
        }),
      }),
    );
    expect(aws.getPolicy(a.arn)).toContain('kms:DescribeKey');
    // the policy no longer lets the user read it back
    await expect(
      admin.send(new GetKeyPolicyCommand({ KeyId: a.arn, PolicyName: 'default' })),
    ).rejects.toMatchObject({
      name: 'AccessDeniedException',
    });
  });
});

describe('Cloud KMS: primary version rotation', () => {
  let gcp: GcpKmsServer;
  let e: EncryptedDb;
  beforeAll(async () => {
    gcp = await startGcpKmsServer();
    e = await setupEncryptedDb(MAIN_DRIVER, {
      keyring: { kekFactories: factories, cache: { maxAgeMs: 60_000 } },
    });
  });
  afterAll(async () => {
    await e?.close();
    await gcp?.close();
  });

  it('rotated primary version (CreateCryptoKeyVersion, UpdateCryptoKeyPrimaryVersion over gRPC): rows readable, re-wrap frees the old version', async () => {
    const T = uniqueTenant('gcprot');
    const sa = await gcp.createServiceAccount();
    const key = gcp.createCryptoKey({ keyRing: `ring-${randomBytes(3).toString('hex')}`, cryptoKeyId: 'k' });
    gcp.grant(key.name, sa, 'roles/cloudkms.cryptoKeyEncrypterDecrypter');
    gcp.grant(key.name, sa, 'roles/cloudkms.viewer');
    const kek = gcpKms({
      keyName: key.name,
      credentials: { type: 'service-account', key: { ...sa } },
      apiEndpoint: gcp.apiEndpoint,
      port: gcp.port,
      insecure: true,
      timeoutMs: 2000,
      retries: 1,
    });
    await withTenant(T, () => e.db.insert(e.s.patients).values({ tenantId: T, name: 'v1' }));
    await e.keyring.enableByok(T, kek);
    const v1 = `${key.name}/cryptoKeyVersions/1`;
    const wraps = () =>
      e.tdb.raw<{ wrapped_by: string }>(
        `select w.wrapped_by from byok.dek_wraps w join byok.deks d on d.id = w.dek_id where d.tenant_id = $1 order by d.version`,
        [T],
      );
    expect((await wraps()).map((w) => w.wrapped_by)).toEqual([v1]);
    // the tenant's admin rotates through the real client
    const client = new KeyManagementServiceClient(gcp.clientOptions());
    const [v2] = await client.createCryptoKeyVersion(
      { parent: key.name, cryptoKeyVersion: {} },
      gcp.callOptions(),
    );
    await client.updateCryptoKeyPrimaryVersion(
      { name: key.name, cryptoKeyVersionId: v2.name!.split('/').pop()! },
      gcp.callOptions(),
    );
    await client.close();
    e.keyring.clearCache();
    const read = async () =>
      (
        await withTenant(T, () =>
          e.db.select({ n: e.s.patients.name }).from(e.s.patients).where(eq(e.s.patients.tenantId, T)),
        )
      )
        .map((r) => r.n)
        .sort();
    expect(await read()).toEqual(['v1']);
    await e.keyring.rotateDek(T);
    await withTenant(T, () => e.db.insert(e.s.patients).values({ tenantId: T, name: 'v2' }));
    expect((await wraps()).map((w) => w.wrapped_by)).toEqual([v1, v2.name]);
    const [h] = await e.keyring.checkHealth({ tenants: [T] });
    // another version of the same key is not a move: Decrypt names the CryptoKey
    expect(h).toMatchObject({ health: 'ok' });
    expect(h!.keks[0]).toMatchObject({ currentKeyId: v2.name, moved: 0 });
    // the heartbeat proves every version cached data keys depend on: disabling the old one is noticed
    e.keyring.clearCache();
    expect(await read()).toEqual(['v1', 'v2']);
    const hb = e.keyring.startHeartbeat({ intervalMs: 3_600_000 });
    try {
      gcp.counters.reset();
      expect(await hb.tick()).toMatchObject({ tenants: 1, kmsCalls: 2, refused: [] });
      expect(gcp.counters.method('Decrypt')).toBe(2);
      gcp.setVersionState(v1, 'DISABLED');
      expect((await hb.tick()).refused).toEqual([T]);
      gcp.setVersionState(v1, 'ENABLED');
      expect((await hb.tick()).recovered).toEqual([T]);
    } finally {
      await hb.stop();
    }
    const r = await e.keyring.rewrapMovedKeys(T);
    expect(r.rewrapped).toBe(1);
    gcp.setVersionState(v1, 'DISABLED');
    e.keyring.clearCache();
    expect(await read()).toEqual(['v1', 'v2']);
  });
});
