import { eq, inArray, sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ByokEvent,
  ByokConfigError,
  createKeyring,
  localKek,
  NoTenantError,
  withAnyTenant,
  withEncryption,
  withTenant,
} from '../src/index.ts';
import { MAIN_DRIVER, openDb, uniqueTenant } from './helpers/db.ts';
import { dekMaterial } from '../src/keys/cache.ts';
import { keysOf } from '../src/keys/keyring.ts';
import { type EncryptedDb, setupEncryptedDb } from './helpers/setup.ts';

describe('data key cache and batched unwrap (call counts through a counting KEK)', () => {
  let e: EncryptedDb;
  const events: ByokEvent[] = [];
  const tenants = Array.from({ length: 50 }, (_, i) => uniqueTenant(`batch${i}`));

  beforeAll(async () => {
    e = await setupEncryptedDb(MAIN_DRIVER, { keyring: { onEvent: (ev) => events.push(ev) } });
    await withAnyTenant(() =>
      e.db
        .insert(e.s.patients)
        .values(
          tenants.flatMap((t, i) =>
            [0, 1, 2].map((k) => ({ tenantId: t, seq: i * 10 + k, name: `${t}/${k}` })),
          ),
        ),
    );
  });
  afterAll(async () => {
    await e?.close();
  });

  const selectAll = () =>
    withAnyTenant(() =>
      e.db
        .select({ t: e.s.patients.tenantId, n: e.s.patients.name })
        .from(e.s.patients)
        .where(inArray(e.s.patients.tenantId, tenants)),
    );

  it('creates exactly one data key per new tenant for a 150-row multi-tenant insert', () => {
    expect(e.kek.calls.wrap).toBe(50);
    expect(e.keyring.stats().created).toBe(50);
  });

  it('a cold select returning rows of 50 tenants unwraps exactly 50 data keys, in one batch', async () => {
    e.keyring.clearCache();
    e.kek.reset();
    events.length = 0;
    const rows = await selectAll();
    expect(rows).toHaveLength(150);
    for (const r of rows) expect(r.n.startsWith(`${r.t}/`)).toBe(true);
    expect(e.kek.calls.unwrap).toBe(50);
    const batches = events.filter((ev) => ev.type === 'dek-batch');
    expect(batches).toEqual([expect.objectContaining({ size: 50 })]);
    const kmsEvents = events.filter((ev) => ev.type === 'kms' && ev.operation === 'unwrap');
    expect(kmsEvents).toHaveLength(50);
    expect(new Set(kmsEvents.map((ev) => (ev as { tenantId: string }).tenantId))).toEqual(new Set(tenants));
  });

  it('repeating it unwraps nothing', async () => {
    e.kek.reset();
    const rows = await selectAll();
    expect(rows).toHaveLength(150);
    expect(e.kek.calls.unwrap).toBe(0);
  });

  it('100 concurrent cold reads of one tenant unwrap once', async () => {
    e.keyring.clearCache();
    e.kek.reset();
    const t = tenants[7]!;
    const results = await Promise.all(
      Array.from({ length: 100 }, () =>
        withTenant(t, () =>
          e.db.select({ n: e.s.patients.name }).from(e.s.patients).where(eq(e.s.patients.tenantId, t)),
        ),
      ),
    );
    for (const r of results) expect(r.map((x) => x.n).sort()).toEqual([`${t}/0`, `${t}/1`, `${t}/2`]);
    expect(e.kek.calls.unwrap).toBe(1);
  });

  it('concurrent cold reads spread over ticks still share one unwrap (in-flight deduplication)', async () => {
    e.keyring.clearCache();
    e.kek.reset();
    const t = tenants[3]!;
    const read = () =>
      withTenant(t, () =>
        e.db.select({ n: e.s.patients.name }).from(e.s.patients).where(eq(e.s.patients.tenantId, t)),
      );
    const first = read();
    await new Promise((r) => setImmediate(r));
    const second = read();
    await Promise.all([first, second]);
    expect(e.kek.calls.unwrap).toBe(1);
  });

  it('failures are not cached: a failing unwrap is retried on the next query', async () => {
    const t = tenants[11]!;
    e.keyring.clearCache();
    const inner = e.kek.unwrap;
    let fail = true;
    (e.kek as { unwrap: typeof inner }).unwrap = (w, c) =>
      fail ? Promise.reject(new Error('KMS down')) : inner(w, c);
    try {
      const read = () =>
        withTenant(t, () =>
          e.db.select({ n: e.s.patients.name }).from(e.s.patients).where(eq(e.s.patients.tenantId, t)),
        );
      await expect(read()).rejects.toThrow('KMS down');
      fail = false;
      expect(await read()).toHaveLength(3);
    } finally {
      (e.kek as { unwrap: typeof inner }).unwrap = inner;
    }
  });
});

describe('cache expiry and bounds', () => {
  let e: EncryptedDb;
  const T = uniqueTenant('ttl');
  beforeAll(async () => {
    e = await setupEncryptedDb(MAIN_DRIVER, { keyring: { cache: { maxAgeMs: 150, maxEntries: 3 } } });
    await withTenant(T, () => e.db.insert(e.s.patients).values({ tenantId: T, name: 'ttl' }));
  });
  afterAll(async () => {
    await e?.close();
  });
  const read = (t = T) =>
    withTenant(t, () =>
      e.db.select({ n: e.s.patients.name }).from(e.s.patients).where(eq(e.s.patients.tenantId, t)),
    );

  it('an expired TTL unwraps again; a fresh entry does not', async () => {
    e.kek.reset();
    await read();
    expect(e.kek.calls.unwrap).toBe(0); // created by the insert and still fresh
    await new Promise((r) => setTimeout(r, 200));
    await read();
    expect(e.kek.calls.unwrap).toBe(1);
    await read();
    expect(e.kek.calls.unwrap).toBe(1);
  });

  it('holds at most maxEntries keys and zeroes evicted key bytes', async () => {
    const others = [uniqueTenant('lru'), uniqueTenant('lru'), uniqueTenant('lru'), uniqueTenant('lru')];
    const first = await keysOf(e.keyring).getActiveDek(T);
    const raw = dekMaterial(first).raw;
    for (const t of others) await keysOf(e.keyring).getActiveDek(t);
    expect(e.keyring.stats().cachedKeys).toBeLessThanOrEqual(3);
    expect(first.evicted).toBe(true);
    expect(raw.every((b) => b === 0)).toBe(true);
  });

  it('refuses a cache without a max age, or with nonsense bounds', () => {
    expect(() => createKeyring({ db: e.db, platformKek: e.kek, cache: { maxAgeMs: 0 } })).toThrow(
      /max age is required/,
    );
    expect(() =>
      createKeyring({ db: e.db, platformKek: e.kek, cache: { maxAgeMs: Number.POSITIVE_INFINITY } }),
    ).toThrow(ByokConfigError);
    expect(() => createKeyring({ db: e.db, platformKek: e.kek, cache: { maxEntries: -1 } })).toThrow(
      /maxEntries/,
    );
  });
});

describe('configuration errors name what to fix', () => {
  it('createKeyring and withEncryption validate their arguments', async () => {
    const tdb = await openDb(MAIN_DRIVER);
    try {
      const kek = localKek({ key: Buffer.alloc(32, 7).map((b, i) => b + i) });
      expect(() => createKeyring({ db: {} as never, platformKek: kek })).toThrow(/`db` must be a Drizzle/);
      expect(() => createKeyring({ db: tdb.db, platformKek: {} as never })).toThrow(/platformKek/);
      expect(() => createKeyring({ db: tdb.db, platformKek: kek, unwrapConcurrency: 0 })).toThrow(
        /unwrapConcurrency/,
      );
      const keyring = createKeyring({ db: tdb.db, platformKek: kek });
      expect(() => withEncryption({} as never, keyring)).toThrow(ByokConfigError);
      expect(() => withEncryption(tdb.db, {} as never)).toThrow(/createKeyring/);
      expect(() => withEncryption(tdb.db, keyring, { tenantColumn: '' })).toThrow(/tenantColumn/);
      withEncryption(tdb.db, keyring);
      expect(withEncryption(tdb.db, keyring)).toBe(tdb.db);
      expect(() => withEncryption(tdb.db, createKeyring({ db: tdb.db, platformKek: kek }))).toThrow(
        /another keyring/,
      );
      expect(() => withTenant('', () => 1)).toThrow(/non-empty/);
      expect(() => withTenant('a\u0000b', () => 1)).toThrow(/control characters/);
      expect(() => withTenant('x'.repeat(256), () => 1)).toThrow(/longer than 255/);
    } finally {
      await tdb.close();
    }
  });

  it('without a tenant column, an insert needs a tenant scope', async () => {
    const e = await setupEncryptedDb(MAIN_DRIVER);
    try {
      const tdb = await openDb(
        MAIN_DRIVER,
        e.s.relational,
        MAIN_DRIVER === 'pglite' ? (e.db as unknown as { $client: never }).$client : undefined,
      );
      const keyring = createKeyring({ db: tdb.db, platformKek: e.kek });
      withEncryption(tdb.db, keyring);
      await expect(tdb.db.insert(e.s.patients).values({ tenantId: 'x', name: 'n' })).rejects.toBeInstanceOf(
        NoTenantError,
      );
      await expect(
        withAnyTenant(() => tdb.db.insert(e.s.patients).values({ tenantId: 'x', name: 'n' })),
      ).rejects.toBeInstanceOf(NoTenantError);
      const t = uniqueTenant();
      await withTenant(t, () => tdb.db.insert(e.s.patients).values({ tenantId: t, name: 'scoped' }));
      expect(
        await withTenant(t, () =>
          tdb.db.select({ n: e.s.patients.name }).from(e.s.patients).where(eq(e.s.patients.tenantId, t)),
        ),
      ).toEqual([{ n: 'scoped' }]);
      await tdb.close();
    } finally {
      await e.close();
    }
  });

  it('key store install is idempotent and safe to run concurrently', async () => {
    const e = await setupEncryptedDb(MAIN_DRIVER, { createTables: false });
    try {
      await Promise.all([
        e.keyring.installKeyStore(),
        e.keyring.installKeyStore(),
        e.keyring.installKeyStore(),
      ]);
      const r = await e.tdb.raw<{ n: number }>(
        `select count(*)::int as n from information_schema.tables
          where table_schema = 'byok' and table_name in ('tenants', 'keks', 'deks', 'dek_wraps', 'audit')`,
      );
      expect(r[0]!.n).toBe(5);
      await e.db.execute(sql`select 1`);
    } finally {
      await e.close();
    }
  });
});
