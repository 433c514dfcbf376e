import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ByokEvent,
  ByokConfigError,
  KekNotFoundError,
  KeyAccessDeniedError,
  KeyDisabledError,
  KeyUsageError,
  KmsCredentialsError,
  KmsUnavailableError,
  LifecycleBusyError,
  localKek,
  TenantShreddedError,
  withTenant,
} from '../src/index.ts';
import { awsKekFactory, awsKms } from '../src/kms/aws/index.ts';
import { gcpKekFactory, gcpKms } from '../src/kms/gcp/index.ts';
import { type AwsKmsServer, type IamUser, startAwsKmsServer } from '../src/testing/aws/index.ts';
import { type GcpKmsServer, startGcpKmsServer } from '../src/testing/gcp/index.ts';
import { MAIN_DRIVER, uniqueTenant } from './helpers/db.ts';
import { type EncryptedDb, setupEncryptedDb, sibling } from './helpers/setup.ts';

const factories = { 'aws-kms': awsKekFactory, 'gcp-kms': gcpKekFactory };

describe('BYOK lifecycle on AWS KMS (real SDK client, local KMS + STS server)', () => {
  let aws: AwsKmsServer;
  let user: IamUser;
  let e: EncryptedDb;
  const events: ByokEvent[] = [];
  const platformKey = randomBytes(32);

  beforeAll(async () => {
    aws = await startAwsKmsServer();
    user = aws.addUser({ name: 'platform' });
    e = await setupEncryptedDb(MAIN_DRIVER, {
      kek: localKek({ key: platformKey }),
      keyring: {
        kekFactories: factories,
        cache: { maxAgeMs: 60_000 },
        onEvent: (ev) => events.push(ev),
        auditTable: true,
      },
    });
  });
  afterAll(async () => {
    await e?.close();
    await aws?.close();
  });

  const kekFor = (keyArn: string, extra: Partial<Parameters<typeof awsKms>[0]> = {}) =>
    awsKms({
      keyArn,
      auth: { type: 'access-keys', accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
      endpoint: aws.endpoint,
      stsEndpoint: aws.stsEndpoint,
      timeoutMs: 1000,
      maxAttempts: 3,
      ...extra,
    });
  const storeSnapshot = async (tenantId: string) => ({
    keks: await e.tdb.raw(`select key_ref, state from byok.keks where tenant_id = $1 order by key_ref`, [
      tenantId,
    ]),
    tenant: await e.tdb.raw(`select mode, state from byok.tenants where tenant_id = $1`, [tenantId]),
    wraps: await e.tdb.raw(
      `select w.dek_id, w.kek_ref, encode(w.wrapped, 'hex') as wrapped from byok.dek_wraps w join byok.deks d on d.id = w.dek_id where d.tenant_id = $1 order by 1, 2`,
      [tenantId],
    ),
  });
  const write = (t: string, name: string) =>
    withTenant(t, () =>
      e.db.insert(e.s.patients).values({ tenantId: t, name }).returning({ id: e.s.patients.id }),
    );
  const read = async (t: string) =>
    (
      await withTenant(t, () =>
        e.db.select({ n: e.s.patients.name }).from(e.s.patients).where(eq(e.s.patients.tenantId, t)),
      )
    ).sort((a, b) => a.n.localeCompare(b.n));
  const rawNames = async (t: string) =>
    (
      await e.tdb.raw<{ n: string }>(
        `select encode(name, 'hex') as n from "${e.s.name}".patients where tenant_id = $1 order by 1`,
        [t],
      )
    ).map((r) => r.n);

  it('enableByok verifies the key, re-wraps existing data keys under it, removes the platform wrap, re-encrypts no data', async () => {
    const T = uniqueTenant('acme');
    await write(T, 'before byok');
    await e.keyring.rotateDek(T);
    await write(T, 'second version');
    const ciphertextBefore = await rawNames(T);
    const key = aws.createKey();
    aws.counters.reset();
    const st = await e.keyring.enableByok(T, kekFor(key.arn));
    expect(aws.counters.operation('DescribeKey')).toBe(1);
    expect(aws.counters.operation('Encrypt')).toBe(1 + 2); // round trip + 2 data key versions
    expect(st).toMatchObject({ tenantId: T, mode: 'byok', state: 'active', health: 'ok', progress: null });
    expect(st.keks).toEqual([
      expect.objectContaining({ keyRef: key.arn, kind: 'aws-kms', region: 'us-east-1', health: 'ok' }),
    ]);
    expect(st.dekVersions.map((v) => [v.version, v.state, v.wrappedUnder])).toEqual([
      [1, 'retired', [key.arn]],
      [2, 'active', [key.arn]],
    ]);
    const snap = await storeSnapshot(T);
    expect(snap.wraps.every((w) => (w as { kek_ref: string }).kek_ref === key.arn)).toBe(true);
    expect(await rawNames(T)).toEqual(ciphertextBefore);
    // the status, the stored configuration and the events never contain the secret access key
    const stored = JSON.stringify(
      await e.tdb.raw(`select params, encode(secret, 'escape') as s from byok.keks where tenant_id = $1`, [
        T,
      ]),
    );
    for (const shown of [JSON.stringify(st), stored, JSON.stringify(events)])
      expect(shown).not.toContain(user.secretAccessKey);
    // a fresh instance rebuilds the KEK from the store (secrets decrypted with the platform key) and reads
    e.keyring.clearCache();
    aws.counters.reset();
    expect(await read(T)).toEqual([{ n: 'before byok' }, { n: 'second version' }]);
    expect(aws.counters.operation('Decrypt')).toBe(2);
    const newRows = await write(T, 'after byok');
    expect(newRows).toHaveLength(1);
  });

  it('each misconfiguration is rejected with its own error code and leaves no trace in the store', async () => {
    const T = uniqueTenant('misconf');
    await write(T, 'x');
    const before = await storeSnapshot(T);
    const disabled = aws.createKey({ state: 'Disabled' });
    const pending = aws.createKey();
    aws.setKeyState(pending.arn, 'PendingDeletion');
    const signing = aws.createKey({ keyUsage: 'SIGN_VERIFY', keySpec: 'ECC_NIST_P256' });
    const denied = aws.createKey({
      policy: {
        Statement: [
          {
            Effect: 'Allow',
            Principal: { AWS: `arn:aws:iam::${aws.accountId}:root` },
            Action: 'kms:DescribeKey',
          },
        ],
      },
    });
    const missing = `arn:aws:kms:us-east-1:${aws.accountId}:key/00000000-0000-4000-8000-000000000000`;
    const ok = aws.createKey();
    const cases: [string, () => ReturnType<typeof kekFor>, string][] = [
      ['not found', () => kekFor(missing), KekNotFoundError.code],
      ['disabled', () => kekFor(disabled.arn), KeyDisabledError.code],
      ['pending deletion', () => kekFor(pending.arn), KeyDisabledError.code],
      ['wrong key usage / spec', () => kekFor(signing.arn), KeyUsageError.code],
      ['access denied for Encrypt', () => kekFor(denied.arn), KeyAccessDeniedError.code],
      [
        'unreachable',
        () => kekFor(ok.arn, { endpoint: 'http://127.0.0.1:9', maxAttempts: 1, timeoutMs: 300 }),
        KmsUnavailableError.code,
      ],
      [
        'bad credentials',
        () =>
          kekFor(ok.arn, {
            auth: { type: 'access-keys', accessKeyId: user.accessKeyId, secretAccessKey: 'wrong-secret' },
          }),
        KmsCredentialsError.code,
      ],
      [
        'assume-role with a wrong external id',
        () =>
          kekFor(ok.arn, {
            auth: {
              type: 'assume-role',
              roleArn: aws.addRole({
                name: `byok-${T.slice(-6)}`,
                trust: { principals: [user.arn], externalId: 'right' },
              }).arn,
              externalId: 'wrong',
              source: {
                type: 'access-keys',
                accessKeyId: user.accessKeyId,
                secretAccessKey: user.secretAccessKey,
              },
            },
          }),
        KmsCredentialsError.code,
      ],
    ];
    const codes = new Set<string>();
    for (const [what, make, code] of cases) {
      const err = await e.keyring.enableByok(T, make()).catch((x) => x);
      expect(err?.code, what).toBe(code);
      expect(await storeSnapshot(T), what).toEqual(before);
      codes.add(code);
    }
    expect(codes.size).toBeGreaterThanOrEqual(6);
    // a KEK kind the keyring cannot rebuild on other instances is refused up front
    const gcpLike = {
      ...kekFor(ok.arn),
      kind: 'gcp-kms' as const,
      keyRef: 'x',
      describe: kekFor(ok.arn).describe,
    };
    const noFactory = await setupEncryptedDb(MAIN_DRIVER, { createTables: false });
    await expect(noFactory.keyring.enableByok(T, kekFor(ok.arn))).rejects.toThrow(/kekFactories/);
    await noFactory.close();
    expect(gcpLike.kind).toBe('gcp-kms');
    expect(await read(T)).toEqual([{ n: 'x' }]);
  });

  it('assume-role with an external id and web identity work end to end, rebuilt from the store', async () => {
    const T = uniqueTenant('roles');
    await write(T, 'via role');
    const key = aws.createKey();
    const role = aws.addRole({
      name: `tenant-${T.slice(-6)}`,
      trust: { principals: [user.arn], externalId: `ext-${T}` },
    });
    await e.keyring.enableByok(
      T,
      kekFor(key.arn, {
        auth: {
          type: 'assume-role',
          roleArn: role.arn,
          externalId: `ext-${T}`,
          source: {
            type: 'access-keys',
            accessKeyId: user.accessKeyId,
            secretAccessKey: user.secretAccessKey,
          },
        },
      }),
    );
    e.keyring.clearCache();
    aws.counters.reset();
    expect(await read(T)).toEqual([{ n: 'via role' }]);
    expect(aws.counters.operation('AssumeRole')).toBeGreaterThanOrEqual(1);
    expect(aws.counters.calls.find((c) => c.operation === 'Decrypt')?.principal).toContain('assumed-role');

    // OIDC web identity, token from a file (as on EKS / GitHub Actions): serializable, rebuilt anywhere
    const W = uniqueTenant('oidc');
    await write(W, 'via web identity');
    const provider = aws.addWebIdentityProvider();
    const oidcRole = aws.addRole({
      name: `oidc-${W.slice(-6)}`,
      trust: { webIdentity: { providerArn: provider.arn, subject: 'platform-app' } },
    });
    const dir = mkdtempSync(join(tmpdir(), 'byok-oidc-'));
    const tokenFile = join(dir, 'token');
    writeFileSync(tokenFile, provider.issueToken({ subject: 'platform-app' }));
    await e.keyring.enableByok(
      W,
      kekFor(key.arn, { auth: { type: 'web-identity', roleArn: oidcRole.arn, tokenFile } }),
    );
    e.keyring.clearCache();
    aws.counters.reset();
    expect(await read(W)).toEqual([{ n: 'via web identity' }]);
    expect(aws.counters.operation('AssumeRoleWithWebIdentity')).toBeGreaterThanOrEqual(1);
    rmSync(dir, { recursive: true });
  });

  it('rotateKek re-wraps under the new key; the old key can then be disabled without losing data', async () => {
    const T = uniqueTenant('rot');
    await write(T, 'rotated');
    const k1 = aws.createKey();
    const k2 = aws.createKey();
    await e.keyring.enableByok(T, kekFor(k1.arn));
    const st = await e.keyring.rotateKek(T, kekFor(k2.arn));
    expect(st.keks.map((k) => k.keyRef)).toEqual([k2.arn]);
    expect(st.dekVersions.every((v) => v.wrappedUnder.join() === k2.arn)).toBe(true);
    aws.setKeyState(k1.arn, 'Disabled');
    e.keyring.clearCache();
    expect(await read(T)).toEqual([{ n: 'rotated' }]);
    const retired = await e.tdb.raw<{ state: string; secret: unknown }>(
      `select state, secret from byok.keks where tenant_id = $1 and key_ref = $2`,
      [T, k1.arn],
    );
    expect(retired).toEqual([{ state: 'retired', secret: null }]);
    await expect(e.keyring.enableByok(T, kekFor(k1.arn))).rejects.toThrow(/already uses BYOK/);
    await expect(e.keyring.rotateKek(uniqueTenant(), kekFor(k2.arn))).rejects.toThrow(/does not use BYOK/);
  });

  it('several KEKs (multi-region key and its replica): each wraps every data key; unwrap fails over when the preferred region is down', async () => {
    const T = uniqueTenant('mrk');
    await write(T, 'multi-region');
    const primary = aws.createKey({ multiRegion: true });
    const replica = aws.replicateKey(primary.arn, 'eu-west-1');
    expect(primary.keyId.startsWith('mrk-')).toBe(true);
    const st = await e.keyring.enableByok(T, [kekFor(primary.arn), kekFor(replica.arn)]);
    expect(st.keks.map((k) => k.region)).toEqual(['us-east-1', 'eu-west-1']);
    expect(st.dekVersions[0]!.wrappedUnder.sort()).toEqual([primary.arn, replica.arn].sort());
    // no platform escrow wrap while BYOK is on
    expect(st.dekVersions[0]!.wrappedUnder).not.toContain(e.kek.keyRef);
    // The primary region goes down (its endpoint stops answering): a fresh instance that prefers
    // us-east-1 tries the primary first, then fails over to the replica.
    await e.tdb.raw(
      `update byok.keks set params = jsonb_set(params, '{endpoint}', '"http://127.0.0.1:9"') where tenant_id = $1 and key_ref = $2`,
      [T, primary.arn],
    );
    for (const preferredRegion of ['us-east-1', 'eu-west-1']) {
      const fresh = await sibling(e, {
        kek: localKek({ key: platformKey }),
        keyring: { kekFactories: factories, preferredRegion },
      });
      const kmsEvents: ByokEvent[] = [];
      fresh.keyring.onEvent((ev) => kmsEvents.push(ev));
      try {
        aws.counters.reset();
        expect(
          await withTenant(T, () =>
            fresh.db
              .select({ n: fresh.s.patients.name })
              .from(fresh.s.patients)
              .where(eq(fresh.s.patients.tenantId, T)),
          ),
        ).toEqual([{ n: 'multi-region' }]);
        const unwraps = kmsEvents.filter((ev) => ev.type === 'kms' && ev.operation === 'unwrap') as {
          keyRef: string;
          outcome: string;
        }[];
        if (preferredRegion === 'us-east-1') {
          expect(unwraps.map((u) => [u.keyRef, u.outcome])).toEqual([
            [primary.arn, 'error'],
            [replica.arn, 'ok'],
          ]);
        } else {
          expect(unwraps.map((u) => [u.keyRef, u.outcome])).toEqual([[replica.arn, 'ok']]);
        }
      } finally {
        await fresh.close();
      }
    }
  });

  it('disableByok moves the tenant back under the platform key', async () => {
    const T = uniqueTenant('off');
    await write(T, 'back home');
    const key = aws.createKey();
    await e.keyring.enableByok(T, kekFor(key.arn));
    const st = await e.keyring.disableByok(T);
    expect(st.mode).toBe('platform');
    expect(st.keks).toEqual([]);
    expect(st.dekVersions[0]!.wrappedUnder).toEqual([e.kek.keyRef]);
    aws.setKeyState(key.arn, 'Disabled');
    e.keyring.clearCache();
    expect(await read(T)).toEqual([{ n: 'back home' }]);
  });

  it('rotateDek starts a new version for new writes; old versions stay readable', async () => {
    const T = uniqueTenant('dek');
    await write(T, 'v1 row');
    const { version } = await e.keyring.rotateDek(T);
    expect(version).toBe(2);
    await write(T, 'v2 row');
    const st = await e.keyring.status(T);
    expect(st.dekVersions.map((v) => [v.version, v.state])).toEqual([
      [1, 'retired'],
      [2, 'active'],
    ]);
    const envs = await e.tdb.raw<{ d: string }>(
      `select encode(substring(name from 3 for 16), 'hex') as d from "${e.s.name}".patients where tenant_id = $1`,
      [T],
    );
    expect(new Set(envs.map((r) => r.d)).size).toBe(2);
    e.keyring.clearCache();
    expect(await read(T)).toEqual([{ n: 'v1 row' }, { n: 'v2 row' }]);
  });

  it('shred destroys every wrapped data key: the rows can never be decrypted again, by any instance', async () => {
    const T = uniqueTenant('shred');
    await write(T, 'to be forgotten');
    await e.keyring.rotateDek(T);
    await write(T, 'also forgotten');
    await expect(e.keyring.shred(T, { confirm: 'wrong' })).rejects.toBeInstanceOf(ByokConfigError);
    const res = await e.keyring.shred(T, { confirm: T });
    expect(res).toEqual({ tenantId: T, destroyedVersions: 2 });
    await expect(read(T)).rejects.toBeInstanceOf(TenantShreddedError);
    const other = await sibling(e, {
      kek: localKek({ key: platformKey }),
    });
    await expect(
      withTenant(T, () => other.db.select().from(e.s.patients).where(eq(e.s.patients.tenantId, T))),
    ).rejects.toBeInstanceOf(TenantShreddedError);
    await other.close();
    const left = await e.tdb.raw<{ n: number }>(
      `select count(*)::int as n from byok.dek_wraps w join byok.deks d on d.id = w.dek_id where d.tenant_id = $1`,
      [T],
    );
    expect(left[0]!.n).toBe(0);
    await expect(write(T, 'new data')).rejects.toBeInstanceOf(TenantShreddedError);
    expect((await e.keyring.status(T)).state).toBe('shredded');
  });

  it('throttling is retried and succeeds', async () => {
    const T = uniqueTenant('throttle');
    const key = aws.createKey();
    await write(T, 'patient');
    await e.keyring.enableByok(T, kekFor(key.arn));
    e.keyring.clearCache();
    aws.counters.reset();
    aws.faults.throttle(2, { operation: 'Decrypt' });
    expect(await read(T)).toEqual([{ n: 'patient' }]);
    expect(aws.counters.errors('ThrottlingException')).toBe(2);
    expect(aws.counters.operation('Decrypt')).toBe(3);
  });

  it('a hung KMS fails within the configured timeout without delaying other tenants', async () => {
    const H = uniqueTenant('hung');
    const P = uniqueTenant('fine');
    const key = aws.createKey();
    await write(H, 'hung tenant');
    await write(P, 'platform tenant');
    await e.keyring.enableByok(H, kekFor(key.arn, { timeoutMs: 400, maxAttempts: 2 }));
    e.keyring.clearCache();
    aws.faults.hang({ operation: 'Decrypt', key: key.arn });
    try {
      const t0 = performance.now();
      const hung = read(H).then(
        () => 'unexpected success',
        (err) => ({ code: err.code, ms: performance.now() - t0 }),
      );
      await new Promise((r) => setTimeout(r, 50));
      const t1 = performance.now();
      expect(await read(P)).toEqual([{ n: 'platform tenant' }]);
      const otherMs = performance.now() - t1;
      const h = (await hung) as { code: string; ms: number };
      expect(h.code).toBe(KmsUnavailableError.code);
      expect(h.ms).toBeLessThan(400 * 2 + 1500);
      expect(otherMs).toBeLessThan(300);
    } finally {
      aws.faults.clear();
    }
  });

  it('revocation mid-traffic: KeyAccessDeniedError within the cache TTL, other tenants unaffected, access restored restores reads', async () => {
    const T = uniqueTenant('revoke');
    const O = uniqueTenant('other');
    const key = aws.createKey();
    const otherKey = aws.createKey();
    await write(T, 'revocable');
    await write(O, 'unaffected');
    const short = await sibling(e, {
      kek: localKek({ key: platformKey }),
      keyring: { kekFactories: factories, cache: { maxAgeMs: 300 } },
    });
    try {
      await short.keyring.enableByok(T, kekFor(key.arn));
      await short.keyring.enableByok(O, kekFor(otherKey.arn));
      const readShort = (t: string) =>
        withTenant(t, () =>
          short.db
            .select({ n: short.s.patients.name })
            .from(short.s.patients)
            .where(eq(short.s.patients.tenantId, t)),
        );
      expect(await readShort(T)).toEqual([{ n: 'revocable' }]);
      const revokedAt = Date.now();
      aws.setPolicy(key.arn, { Statement: [{ Effect: 'Deny', Principal: '*', Action: 'kms:*' }] });
      let deniedAt = 0;
      while (Date.now() - revokedAt < 5000) {
        const r = await readShort(T).catch((x) => x);
        if (r instanceof KeyAccessDeniedError) {
          deniedAt = Date.now();
          break;
        }
        expect(r).toEqual([{ n: 'revocable' }]);
        expect(await readShort(O)).toEqual([{ n: 'unaffected' }]);
        await new Promise((res) => setTimeout(res, 50));
      }
      expect(deniedAt - revokedAt).toBeGreaterThan(0);
      expect(deniedAt - revokedAt).toBeLessThan(300 + 1000);
      expect(await readShort(O)).toEqual([{ n: 'unaffected' }]);
      // health is recorded in the background right after the refusal
      let st = await short.keyring.status(T);
      for (let i = 0; i < 60 && st.health !== 'error'; i++) {
        await new Promise((res) => setTimeout(res, 50));
        st = await short.keyring.status(T);
      }
      expect(st.health).toBe('error');
      expect(st.keks[0]!.lastError).toContain(KeyAccessDeniedError.code);
      aws.setPolicy(key.arn, {
        Statement: [
          { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${aws.accountId}:root` }, Action: 'kms:*' },
        ],
      });
      expect(await readShort(T)).toEqual([{ n: 'revocable' }]);
      const swept = await short.keyring.checkHealth({ tenants: [T] });
      expect(swept[0]).toMatchObject({ tenantId: T, health: 'ok' });
    } finally {
      await short.close();
    }
  });

  it('checkHealth sweeps BYOK tenants with DescribeKey and records disabled keys', async () => {
    const T = uniqueTenant('health');
    const key = aws.createKey();
    await write(T, 'h');
    await e.keyring.enableByok(T, kekFor(key.arn));
    aws.setKeyState(key.arn, 'Disabled');
    const [st] = await e.keyring.checkHealth({ tenants: [T] });
    expect(st).toMatchObject({ tenantId: T, health: 'error' });
    expect(st!.keks[0]!.lastError).toContain(KeyDisabledError.code);
    expect(st!.lastVerifiedAt).toBeInstanceOf(Date);
    e.keyring.clearCache();
    await expect(read(T)).rejects.toBeInstanceOf(KeyDisabledError);
    aws.setKeyState(key.arn, 'Enabled');
    const [again] = await e.keyring.checkHealth({ tenants: [T] });
    expect(again!.health).toBe('ok');
  });

  it('lifecycle operations on one tenant are serialized across instances (advisory lock)', async () => {
    const T = uniqueTenant('lock');
    await write(T, 'locked');
    const key0 = aws.createKey();
    const key = aws.createKey();
    const key2 = aws.createKey();
    await e.keyring.enableByok(T, kekFor(key0.arn));
    for (let i = 0; i < 3; i++) await e.keyring.rotateDek(T);
    aws.faults.latency(250, { operation: 'Encrypt', key: key.arn });
    try {
      const first = e.keyring.rotateKek(T, kekFor(key.arn));
      await new Promise((r) => setTimeout(r, 700));
      if (e.keyring.singleConnection) {
        // PGlite: one connection, one process; the second operation simply runs after the first
        const second = await e.keyring.rotateKek(T, kekFor(key2.arn), { lockTimeoutMs: 100 });
        await first;
        expect(second.keks.map((k) => k.keyRef)).toEqual([key2.arn]);
        return;
      }
      expect((await e.keyring.status(T)).progress).toMatchObject({ operation: 'rotate-kek', total: 4 });
      const second = await e.keyring.rotateKek(T, kekFor(key2.arn), { lockTimeoutMs: 100 }).catch((x) => x);
      expect(second).toBeInstanceOf(LifecycleBusyError);
      await first;
    } finally {
      aws.faults.clear();
    }
    const st = await e.keyring.status(T);
    expect(st.keks.map((k) => k.keyRef)).toEqual([key.arn]);
    expect(st.progress).toBeNull();
  });

  it('audit: every KMS call and lifecycle change is an event and an audit row, without key material', async () => {
    await e.keyring.flushAudit();
    const kms = events.filter((ev) => ev.type === 'kms');
    expect(kms.length).toBeGreaterThan(10);
    for (const ev of kms) {
      expect(ev).toMatchObject({
        tenantId: expect.any(String),
        keyRef: expect.any(String),
        outcome: expect.stringMatching(/ok|error/),
        latencyMs: expect.any(Number),
      });
    }
    expect(
      events.some((ev) => ev.type === 'lifecycle' && ev.operation === 'enable-byok' && ev.outcome === 'ok'),
    ).toBe(true);
    expect(events.some((ev) => ev.type === 'lifecycle' && ev.outcome === 'error')).toBe(true);
    expect(events.some((ev) => ev.type === 'revocation')).toBe(true);
    expect(events.some((ev) => ev.type === 'cache')).toBe(true);
    const text = JSON.stringify(events);
    expect(text).not.toMatch(/"type":"Buffer"/);
    const rows = await e.tdb.raw<{ operation: string; outcome: string }>(
      `select operation, outcome from byok.audit`,
    );
    const ops = new Set(rows.map((r) => r.operation));
    for (const op of ['kms', 'enable-byok', 'rotate-kek', 'disable-byok', 'rotate-dek', 'shred'])
      expect(ops.has(op), op).toBe(true);
  });
});

describe('BYOK lifecycle on Google Cloud KMS (real gRPC client, local server)', () => {
  let gcp: GcpKmsServer;
  let e: EncryptedDb;
  beforeAll(async () => {
    gcp = await startGcpKmsServer();
    e = await setupEncryptedDb(MAIN_DRIVER, { keyring: { kekFactories: factories } });
  });
  afterAll(async () => {
    await e?.close();
    await gcp?.close();
  });

  const makeKey = (purpose?: 'ENCRYPT_DECRYPT' | 'ASYMMETRIC_SIGN') =>
    gcp.createCryptoKey({
      keyRing: `ring-${randomBytes(3).toString('hex')}`,
      cryptoKeyId: 'tenant',
      ...(purpose ? { purpose } : {}),
    });

  it('enables BYOK on a Cloud KMS key, reads through it, and maps revocation and misconfiguration to typed errors', async () => {
    const T = uniqueTenant('gcp');
    await withTenant(T, () => e.db.insert(e.s.patients).values({ tenantId: T, name: 'on gcp' }));
    const sa = await gcp.createServiceAccount();
    const key = makeKey();
    gcp.grant(key.name, sa, 'roles/cloudkms.cryptoKeyEncrypterDecrypter');
    gcp.grant(key.name, sa, 'roles/cloudkms.viewer');
    const kek = (name: string) =>
      gcpKms({
        keyName: name,
        credentials: { type: 'service-account', key: { ...sa } },
        apiEndpoint: gcp.apiEndpoint,
        port: gcp.port,
        insecure: true,
        timeoutMs: 1000,
        retries: 1,
      });
    const st = await e.keyring.enableByok(T, kek(key.name));
    expect(st).toMatchObject({
      mode: 'byok',
      keks: [expect.objectContaining({ kind: 'gcp-kms', keyRef: key.name })],
    });
    expect(JSON.stringify(st)).not.toContain('PRIVATE KEY');
    e.keyring.clearCache();
    expect(
      await withTenant(T, () =>
        e.db.select({ n: e.s.patients.name }).from(e.s.patients).where(eq(e.s.patients.tenantId, T)),
      ),
    ).toEqual([{ n: 'on gcp' }]);
    // revoke: access denied surfaces typed
    gcp.revoke(key.name, sa, 'roles/cloudkms.cryptoKeyEncrypterDecrypter');
    e.keyring.clearCache();
    await expect(
      withTenant(T, () => e.db.select().from(e.s.patients).where(eq(e.s.patients.tenantId, T))),
    ).rejects.toBeInstanceOf(KeyAccessDeniedError);
    // misconfigurations
    const U = uniqueTenant('gcpbad');
    await withTenant(U, () => e.db.insert(e.s.patients).values({ tenantId: U, name: 'u' }));
    const signing = makeKey('ASYMMETRIC_SIGN');
    gcp.grant(signing.name, sa, 'roles/cloudkms.admin');
    await expect(e.keyring.enableByok(U, kek(signing.name))).rejects.toBeInstanceOf(KeyUsageError);
    // a key that does not exist: Cloud KMS answers NOT_FOUND to those allowed to see it, PERMISSION_DENIED otherwise
    gcp.grant(key.name.replace(/\/cryptoKeys\/tenant$/, ''), sa, 'roles/cloudkms.viewer');
    const missing = await e.keyring
      .enableByok(U, kek(`${key.name.replace(/tenant$/, 'missing')}`))
      .catch((x) => x);
    expect(missing.code).toBe('ERR_BYOK_KEK_NOT_FOUND');
    expect((await e.keyring.status(U)).mode).toBe('platform');
  });
});
