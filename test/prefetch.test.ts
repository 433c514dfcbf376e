import { randomBytes } from 'node:crypto';
import { eq, inArray } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ByokConfigError, localKek, withAnyTenant, withTenant } from '../src/index.ts';
import { awsKekFactory, awsKms } from '../src/kms/aws/index.ts';
import { type AwsKmsServer, type IamUser, startAwsKmsServer } from '../src/testing/aws/index.ts';
import { MAIN_DRIVER, uniqueTenant } from './helpers/db.ts';
import { type EncryptedDb, setupEncryptedDb, sibling } from './helpers/setup.ts';

/**
 * keyring.prefetch: tenants' data keys loaded ahead of use, through the real AWS SDK against the
 * local KMS server; the key store and the data on real PostgreSQL (or PGlite).
 */
describe('keyring.prefetch (warm-up)', () => {
  let aws: AwsKmsServer;
  let user: IamUser;
  let e: EncryptedDb;
  const platformKey = randomBytes(32);
  const factories = { 'aws-kms': awsKekFactory };

  beforeAll(async () => {
    aws = await startAwsKmsServer();
    user = aws.addUser({ name: 'platform' });
    e = await setupEncryptedDb(MAIN_DRIVER, {
      kek: localKek({ key: platformKey }),
      keyring: { kekFactories: factories },
    });
  });
  afterAll(async () => {
    await e?.close();
    await aws?.close();
  });

  const kekFor = (keyArn: string) =>
    awsKms({
      keyArn,
      auth: { type: 'access-keys', accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
      endpoint: aws.endpoint,
      timeoutMs: 2000,
      maxAttempts: 1,
    });
  const write = (t: string, name: string) =>
    withTenant(t, () => e.db.insert(e.s.patients).values({ tenantId: t, name }));
  /** A keyring of a fresh instance (empty cache) on the same store. */
  const fresh = () =>
    sibling(e, { kek: localKek({ key: platformKey }), keyring: { kekFactories: factories } });

  /** `n` BYOK tenants with a row each, every tenant under its own KMS key. */
  async function byokTenants(n: number, label: string): Promise<{ tenants: string[]; keys: string[] }> {
    const tenants: string[] = [];
    const keys: string[] = [];
    for (let i = 0; i < n; i++) {
      const t = uniqueTenant(`${label}${i}`);
      const key = aws.createKey();
      await write(t, `row of ${t}`);
      await e.keyring.enableByok(t, kekFor(key.arn));
      tenants.push(t);
      keys.push(key.arn);
    }
    return { tenants, keys };
  }

  it('loads each tenant key with one KMS call, after which a select across those tenants calls KMS no more', async () => {
    const { tenants, keys } = await byokTenants(6, 'warm');
    const none = uniqueTenant('nokey');
    const other = await fresh();
    try {
      aws.counters.reset();
      const r = await other.keyring.prefetch([...tenants, tenants[0]!, none]);
      expect(r).toMatchObject({ tenants: 7, loaded: 6, cached: 0, noKey: [none], skipped: [], failed: [] });
      expect(aws.counters.operation('Decrypt')).toBe(6);
      for (const k of keys) expect(aws.counters.key(k)).toBe(1);
      // Nothing left to load: a second prefetch and the reads stay off the KMS.
      expect(await other.keyring.prefetch(tenants)).toMatchObject({ loaded: 0, cached: 6 });
      const unwraps = other.keyring.stats().unwraps;
      const mine = await withAnyTenant(() =>
        other.db.select().from(other.s.patients).where(inArray(other.s.patients.tenantId, tenants)),
      );
      expect(mine.map((x) => x.name).sort()).toEqual(tenants.map((t) => `row of ${t}`).sort());
      expect(aws.counters.total).toBe(6);
      expect(other.keyring.stats().unwraps).toBe(unwraps);
    } finally {
      await other.close();
    }
  });

  it("loads only active versions by default, every readable version with versions: 'all', and never creates a key", async () => {
    const t = uniqueTenant('versions');
    await write(t, 'v1');
    await e.keyring.rotateDek(t);
    await write(t, 'v2');
    const a = await fresh();
    const b = await fresh();
    try {
      expect(await a.keyring.prefetch([t])).toMatchObject({ loaded: 1 });
      expect(a.keyring.stats().cachedKeys).toBe(1);
      expect(await b.keyring.prefetch([t], { versions: 'all' })).toMatchObject({ loaded: 2 });
      expect(b.keyring.stats().cachedKeys).toBe(2);
      const unwraps = b.keyring.stats().unwraps;
      const names = await withTenant(t, () =>
        b.db.select({ n: b.s.patients.name }).from(b.s.patients).where(eq(b.s.patients.tenantId, t)),
      );
      expect(names.map((x) => x.n).sort()).toEqual(['v1', 'v2']);
      expect(b.keyring.stats().unwraps).toBe(unwraps);
      const nobody = uniqueTenant('nobody');
      expect(await a.keyring.prefetch([nobody])).toMatchObject({ loaded: 0, noKey: [nobody] });
      const [row] = await e.tdb.raw<{ n: number }>(
        'select count(*)::int as n from byok.deks where tenant_id = $1',
        [nobody],
      );
      expect(row!.n).toBe(0);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('reports a tenant whose key is refused, loads the others, and never throws for one tenant', async () => {
    const { tenants, keys } = await byokTenants(3, 'refused');
    aws.setKeyState(keys[1]!, 'Disabled');
    const other = await fresh();
    try {
      const r = await other.keyring.prefetch(tenants);
      expect(r.loaded).toBe(2);
      expect(r.failed).toEqual([
        { tenantId: tenants[1], code: 'ERR_BYOK_KEY_DISABLED', message: expect.any(String) },
      ]);
      expect(JSON.stringify(r)).not.toMatch(/AKIA|secret/i);
    } finally {
      aws.setKeyState(keys[1]!, 'Enabled');
      await other.close();
    }
  });

  it('shares in-flight unwraps with concurrent queries, and stops at the cache capacity', async () => {
    const { tenants } = await byokTenants(3, 'share');
    const other = await fresh();
    const small = await sibling(e, {
      kek: localKek({ key: platformKey }),
      keyring: { kekFactories: factories, cache: { maxEntries: 2, maxAgeMs: 60_000 } },
    });
    try {
      aws.counters.reset();
      aws.faults.latency(30);
      const [r] = await Promise.all([
        other.keyring.prefetch(tenants),
        withAnyTenant(() =>
          other.db.select().from(other.s.patients).where(inArray(other.s.patients.tenantId, tenants)),
        ),
      ]);
      aws.faults.clear();
      expect(r.loaded).toBe(3);
      expect(aws.counters.operation('Decrypt')).toBe(3);
      const s = await small.keyring.prefetch(tenants);
      expect(s).toMatchObject({ loaded: 2, skipped: [tenants[2]] });
    } finally {
      aws.faults.clear();
      await other.close();
      await small.close();
    }
  });

  it('refuses bad input with a message naming what to fix', async () => {
    await expect(e.keyring.prefetch('acme' as never)).rejects.toBeInstanceOf(ByokConfigError);
    await expect(e.keyring.prefetch([''])).rejects.toThrow(/non-empty tenant ids/);
    await expect(e.keyring.prefetch(['a'], { versions: 'some' as never })).rejects.toThrow(
      /'active' or 'all'/,
    );
  });
});
