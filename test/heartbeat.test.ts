/**
 * The key heartbeat: revocation noticed within one interval on every instance, recovery by itself,
 * other tenants unaffected, and a known KMS cost per interval. Real SDK client, local AWS server,
 * real PostgreSQL; the second instance is a separate process.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ByokEvent, ByokConfigError, localKek, withTenant } from '../src/index.ts';
import { awsKekFactory, awsKms } from '../src/kms/aws/index.ts';
import { gcpKekFactory, gcpKms } from '../src/kms/gcp/index.ts';
import { startGcpKmsServer } from '../src/testing/gcp/index.ts';
import {
  type AwsKmsServer,
  type IamUser,
  type PolicyDocument,
  startAwsKmsServer,
} from '../src/testing/aws/index.ts';
import { keysOf } from '../src/keys/keyring.ts';
import { DATABASE_URL, MAIN_DRIVER, uniqueTenant } from './helpers/db.ts';
import { type EncryptedDb, setupEncryptedDb } from './helpers/setup.ts';

const instanceScript = fileURLToPath(new URL('./fixtures/heartbeat-instance.ts', import.meta.url));

interface Read {
  at: number;
  tenant: string;
  ok: boolean;
  code?: string;
}

/** Reads of each tenant, in a loop, from a child process or from this one. */
class Reader {
  readonly reads: Read[] = [];
  #waiters: { pred: (r: Read) => boolean; resolve: () => void }[] = [];
  push(r: Read): void {
    this.reads.push(r);
    for (const w of [...this.#waiters]) {
      if (w.pred(r)) {
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  }
  /** Resolves when a read after `since` matches; rejects after `ms`. */
  waitFor(tenant: string, ok: boolean, since: number, ms: number, what: string): Promise<number> {
    const started = Date.now();
    const pred = (r: Read) => r.tenant === tenant && r.ok === ok && r.at > since;
    return new Promise((resolve, reject) => {
      const done = () => resolve(this.reads.find(pred)!.at);
      if (this.reads.some(pred)) return done();
      const timer = setTimeout(
        () =>
          reject(
            new Error(
              `${what}: no ${ok ? 'successful' : 'failing'} read of ${tenant} within ${ms} ms (last: ${JSON.stringify(this.reads.slice(-3))})`,
            ),
          ),
        ms - (Date.now() - started),
      );
      this.#waiters.push({
        pred,
        resolve: () => {
          clearTimeout(timer);
          done();
        },
      });
    });
  }
}

const policyAllowing = (userArn: string, account: string, decrypt: boolean): PolicyDocument => ({
  Version: '2012-10-17',
  Statement: [
    {
      Sid: 'Admin',
      Effect: 'Allow',
      Principal: { AWS: `arn:aws:iam::${account}:root` },
      Action: 'kms:Describe*',
      Resource: '*',
    },
    {
      Sid: 'Describe',
      Effect: 'Allow',
      Principal: { AWS: userArn },
      Action: 'kms:DescribeKey',
      Resource: '*',
    },
    ...(decrypt
      ? [
          {
            Sid: 'Wrap',
            Effect: 'Allow' as const,
            Principal: { AWS: userArn },
            Action: ['kms:Encrypt', 'kms:Decrypt'],
            Resource: '*',
          },
        ]
      : []),
  ],
});

describe('key heartbeat', () => {
  let aws: AwsKmsServer;
  let user: IamUser;
  let e: EncryptedDb;
  const platformKey = randomBytes(32).toString('base64');
  const children: ChildProcess[] = [];
  const events: ByokEvent[] = [];
  beforeAll(async () => {
    aws = await startAwsKmsServer();
    user = aws.addUser({ name: 'platform' });
    e = await setupEncryptedDb(MAIN_DRIVER, {
      kek: localKek({ key: platformKey }),
      keyring: {
        kekFactories: { 'aws-kms': awsKekFactory },
        cache: { maxAgeMs: 300_000 },
        heartbeat: { intervalMs: 1000 },
        onEvent: (ev) => events.push(ev),
      },
    });
  });
  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await e?.close();
    await aws?.close();
  });
  const kek = (keyArn: string) =>
    awsKms({
      keyArn,
      auth: { type: 'access-keys', accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
      endpoint: aws.endpoint,
      timeoutMs: 2000,
      maxAttempts: 1,
    });
  const read = (t: string) =>
    withTenant(t, () =>
      e.db.select({ n: e.s.patients.name }).from(e.s.patients).where(eq(e.s.patients.tenantId, t)),
    );
  const byokTenant = async (prefix: string, policy?: (u: string) => PolicyDocument) => {
    const t = uniqueTenant(prefix);
    const key = aws.createKey(policy ? { policy: policy(user.arn) } : {});
    await withTenant(t, () => e.db.insert(e.s.patients).values({ tenantId: t, name: `row of ${t}` }));
    await e.keyring.enableByok(t, kek(key.arn));
    return { t, key };
  };

  it('validates its options', () => {
    expect(() => e.keyring.startHeartbeat({ intervalMs: 10 })).toThrow(ByokConfigError);
    expect(() => e.keyring.startHeartbeat({ jitter: 2 })).toThrow(/jitter/);
    expect(() => e.keyring.startHeartbeat({ concurrency: 0 })).toThrow(/concurrency/);
  });

  it('one tick: one real Decrypt per active KEK of each tenant with cached keys, none for others; a policy removal seen only by Decrypt', async () => {
    const A = await byokTenant('hbA', (u) => policyAllowing(u, aws.accountId, true));
    const B = await byokTenant('hbB');
    const idle = await byokTenant('hbIdle');
    const platform = uniqueTenant('hbPlat');
    await withTenant(platform, () => e.db.insert(e.s.patients).values({ tenantId: platform, name: 'p' }));
    e.keyring.clearCache();
    for (const t of [A.t, B.t, platform]) await read(t);
    // ticks by hand only: the timer's first tick comes after half an hour
    const hb = e.keyring.startHeartbeat({ intervalMs: 3_600_000 });
    aws.counters.reset();
    const r = await hb.tick();
    expect(r).toMatchObject({ tenants: 2, kmsCalls: 2, refused: [], recovered: [] });
    expect(aws.counters.total).toBe(2);
    expect(aws.counters.operation('Decrypt')).toBe(2);
    expect(aws.counters.key(A.key.arn)).toBe(1);
    expect(aws.counters.key(B.key.arn)).toBe(1);
    expect(aws.counters.key(idle.key.arn)).toBe(0);
    // the tenant removes the platform's Decrypt statement: DescribeKey still passes, Decrypt does not
    aws.setPolicy(A.key.arn, policyAllowing(user.arn, aws.accountId, false));
    const [health] = await e.keyring.checkHealth({ tenants: [A.t] });
    expect(health!.health).toBe('ok');
    const refused = await hb.tick();
    expect(refused.refused).toEqual([A.t]);
    expect((await e.keyring.status(A.t)).health).toBe('error');
    expect(keysOf(e.keyring).cache.tenants().has(A.t)).toBe(false);
    expect(keysOf(e.keyring).cache.tenants().has(B.t)).toBe(true);
    // still watched, so recovery needs nobody
    aws.setPolicy(A.key.arn, policyAllowing(user.arn, aws.accountId, true));
    const back = await hb.tick();
    expect(back.recovered).toEqual([A.t]);
    expect((await e.keyring.status(A.t)).health).toBe('ok');
    expect((await hb.tick()).recovered).toEqual([]);
    expect(events.some((ev) => ev.type === 'heartbeat' && ev.kmsCalls >= 2)).toBe(true);
    await hb.stop();
  });

  it.runIf(DATABASE_URL !== undefined)(
    'two processes, heartbeat 1 s: disabled key and removed policy statement fail reads on both within 3 s, recovery within 3 s, others unaffected',
    async () => {
      const T = await byokTenant('hbT', (u) => policyAllowing(u, aws.accountId, true));
      const O = await byokTenant('hbO');
      await e.keyring.startListening();
      const here = new Reader();
      const there = new Reader();
      let stop = false;
      const loop = (async () => {
        while (!stop) {
          for (const t of [T.t, O.t]) {
            try {
              await read(t);
              here.push({ at: Date.now(), tenant: t, ok: true });
            } catch (err) {
              here.push({ at: Date.now(), tenant: t, ok: false, code: (err as { code?: string }).code });
            }
          }
          await new Promise((r) => setTimeout(r, 50));
        }
      })();
      const child = spawn(process.execPath, [instanceScript], {
        env: {
          ...process.env,
          DATABASE_URL: DATABASE_URL!,
          SCHEMA: e.s.name,
          PLATFORM_KEY: platformKey,
          TENANTS: JSON.stringify([T.t, O.t]),
          HEARTBEAT_MS: '1000',
        },
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      children.push(child);
      createInterface({ input: child.stdout! }).on('line', (l) => there.push(JSON.parse(l) as Read));
      try {
        for (const r of [here, there]) {
          await r.waitFor(T.t, true, 0, 20_000, 'warm-up');
          await r.waitFor(O.t, true, 0, 20_000, 'warm-up');
        }
        const status = async (expected: string, since: number, what: string) => {
          for (;;) {
            if ((await e.keyring.status(T.t)).health === expected) return;
            if (Date.now() - since > 3000)
              throw new Error(`${what}: status().health is not ${expected} within 3 s`);
            await new Promise((r) => setTimeout(r, 50));
          }
        };
        const cycle = async (what: string, revoke: () => void, restore: () => void) => {
          const t0 = Date.now();
          revoke();
          await Promise.all([
            here.waitFor(T.t, false, t0, 3000, what),
            there.waitFor(T.t, false, t0, 3000, what),
          ]);
          await status('error', t0, what);
          const t1 = Date.now();
          restore();
          await Promise.all([
            here.waitFor(T.t, true, t1, 3000, what),
            there.waitFor(T.t, true, t1, 3000, what),
          ]);
          await status('ok', t1, what);
          // the other tenant still reads after the recovery (its read of the same round may land a
          // moment after the recovered one), and never failed, on either instance
          await Promise.all([
            here.waitFor(O.t, true, t1, 3000, `${what}: other tenant`),
            there.waitFor(O.t, true, t1, 3000, `${what}: other tenant`),
          ]);
          for (const r of [here, there]) {
            expect(r.reads.filter((x) => x.tenant === O.t && x.at > t0 && !x.ok)).toEqual([]);
          }
        };
        await cycle(
          'key disabled',
          () => aws.setKeyState(T.key.arn, 'Disabled'),
          () => aws.setKeyState(T.key.arn, 'Enabled'),
        );
        await cycle(
          'key-policy statement removed',
          () => aws.setPolicy(T.key.arn, policyAllowing(user.arn, aws.accountId, false)),
          () => aws.setPolicy(T.key.arn, policyAllowing(user.arn, aws.accountId, true)),
        );
        // cost in steady state: reads are served from cached keys, the heartbeats make every call.
        await Promise.all([
          here.waitFor(T.t, true, Date.now(), 3000, 'steady'),
          there.waitFor(T.t, true, Date.now(), 3000, 'steady'),
        ]);
        aws.counters.reset();
        const from = Date.now();
        await new Promise((r) => setTimeout(r, 3500));
        const seconds = (Date.now() - from) / 1000;
        const calls = aws.counters.calls;
        expect(calls.every((c) => c.operation === 'Decrypt')).toBe(true);
        // per instance and tenant, at most one Decrypt per (jittered, >= 0.9 s) interval, plus the one in flight
        const bound = 2 * (Math.floor(seconds / 0.9) + 1);
        for (const key of [T.key.arn, O.key.arn]) {
          const n = calls.filter((c) => c.keyArn === key).length;
          expect(n).toBeGreaterThanOrEqual(2);
          expect(n).toBeLessThanOrEqual(bound);
        }
      } finally {
        stop = true;
        await loop;
        child.kill('SIGKILL');
      }
    },
    60_000,
  );

  it('Cloud KMS: a removed IAM binding and a disabled primary version are refusals; restoring them recovers', async () => {
    const gcp = await startGcpKmsServer();
    const g = await setupEncryptedDb(MAIN_DRIVER, {
      kek: localKek({ key: platformKey }),
      keyring: { kekFactories: { 'gcp-kms': gcpKekFactory }, heartbeat: false },
    });
    try {
      const sa = await gcp.createServiceAccount();
      const key = gcp.createCryptoKey({
        keyRing: `ring-${randomBytes(3).toString('hex')}`,
        cryptoKeyId: 'k',
      });
      gcp.grant(key.name, sa, 'roles/cloudkms.cryptoKeyEncrypterDecrypter');
      gcp.grant(key.name, sa, 'roles/cloudkms.viewer');
      const T = uniqueTenant('hbG');
      await withTenant(T, () => g.db.insert(g.s.patients).values({ tenantId: T, name: 'g' }));
      await g.keyring.enableByok(
        T,
        gcpKms({
          keyName: key.name,
          credentials: { type: 'service-account', key: { ...sa } },
          apiEndpoint: gcp.apiEndpoint,
          port: gcp.port,
          insecure: true,
          timeoutMs: 2000,
          retries: 0,
        }),
      );
      await withTenant(T, () => g.db.select().from(g.s.patients).where(eq(g.s.patients.tenantId, T)));
      const hb = g.keyring.startHeartbeat({ intervalMs: 3_600_000 });
      gcp.counters.reset();
      expect(await hb.tick()).toMatchObject({ tenants: 1, kmsCalls: 1, refused: [] });
      expect(gcp.counters.method('Decrypt')).toBe(1);
      gcp.revoke(key.name, sa, 'roles/cloudkms.cryptoKeyEncrypterDecrypter');
      expect((await hb.tick()).refused).toEqual([T]);
      expect((await g.keyring.status(T)).health).toBe('error');
      gcp.grant(key.name, sa, 'roles/cloudkms.cryptoKeyEncrypterDecrypter');
      expect((await hb.tick()).recovered).toEqual([T]);
      // recovered and no longer watched: probed again once a read caches its keys
      expect(await hb.tick()).toMatchObject({ tenants: 0, kmsCalls: 0 });
      await withTenant(T, () => g.db.select().from(g.s.patients).where(eq(g.s.patients.tenantId, T)));
      gcp.setVersionState(key.name, 'DISABLED');
      expect((await hb.tick()).refused).toEqual([T]);
      gcp.setVersionState(key.name, 'ENABLED');
      expect((await hb.tick()).recovered).toEqual([T]);
      expect((await g.keyring.status(T)).health).toBe('ok');
      // a KMS outage is not a refusal: nothing is evicted, health unchanged
      await withTenant(T, () => g.db.select().from(g.s.patients).where(eq(g.s.patients.tenantId, T)));
      gcp.faults.fail(10, 'UNAVAILABLE');
      const down = await hb.tick();
      expect(down).toMatchObject({ refused: [], unreachable: [T] });
      expect(keysOf(g.keyring).cache.tenants().has(T)).toBe(true);
      gcp.faults.clear();
      await hb.stop();
    } finally {
      await g.close();
      await gcp.close();
    }
  });
});
