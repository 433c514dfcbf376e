import { randomBytes } from 'node:crypto';
import { PGlite } from '@electric-sql/pglite';
import { eq } from 'drizzle-orm';
import { integer, pgSchema, text } from 'drizzle-orm/pg-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  blindIndex,
  blindIndexStatus,
  blindIndexValues,
  createKeyring,
  encrypted,
  type Keyring,
  localKek,
  withEncryption,
  withTenant,
} from '../src/index.ts';
import { type RetrofitTableConfig, rollbackBackfill, runBackfill } from '../src/migrate/index.ts';
import { DATABASE_URL, MAIN_DRIVER, openDb, type TestDb, uniqueName } from './helpers/db.ts';

/**
 * A plaintext table being retrofitted in place, with a blind index on the column: `before` is the
 * app before the index existed (encrypted column, no index), `app` the app with it.
 */
function makeSchema(name: string) {
  const s = pgSchema(name);
  const before = s.table('people', {
    id: integer('id').primaryKey(),
    tenantId: text('tenant_id').notNull(),
    email: encrypted.text('email', { storage: 'text', mode: 'passthrough' }),
  });
  const app = s.table('people', {
    id: integer('id').primaryKey(),
    tenantId: text('tenant_id').notNull(),
    email: encrypted.text('email', { storage: 'text', mode: 'passthrough' }),
    emailIdx: blindIndex('email_idx', { of: 'email', normalize: { trim: true, caseFold: true } }),
  });
  const shadow = s.table('contacts', {
    id: integer('id').primaryKey(),
    tenantId: text('tenant_id').notNull(),
    ssn: text('ssn'),
    ssnEnc: encrypted.text('ssn_enc'),
    ssnIdx: blindIndex('ssn_idx', { of: 'ssnEnc' }),
  });
  const ddl = [
    `create schema "${name}"`,
    `create table "${name}".people (id integer primary key, tenant_id text not null, email text, email_idx bytea)`,
    `create index people_tenant_email_idx on "${name}".people (tenant_id, email_idx)`,
    `create table "${name}".contacts (id integer primary key, tenant_id text not null, ssn text, ssn_enc bytea, ssn_idx bytea)`,
  ];
  const target: RetrofitTableConfig = { table: app, tenantColumn: app.tenantId, columns: [app.email] };
  const shadowTarget: RetrofitTableConfig = {
    table: shadow,
    tenantColumn: shadow.tenantId,
    columns: [{ source: shadow.ssn, target: shadow.ssnEnc }],
  };
  return { name, before, app, shadow, ddl, target, shadowTarget };
}

const TENANTS = 4;
/** Seeded row `i`: its tenant and plaintext email (every 9th NULL, mixed case and spaces). */
const tenantOf = (prefix: string, i: number) => `${prefix}-${i % TENANTS}`;
const emailOf = (i: number) => (i % 9 === 0 ? null : ` User${i}@Example.com`);

describe(`retrofit builds blind indexes (${MAIN_DRIVER})`, () => {
  let pglite: PGlite | undefined;
  let tdb: TestDb;
  let keyring: Keyring;
  let s: ReturnType<typeof makeSchema>;
  let prefix: string;

  beforeAll(async () => {
    pglite = DATABASE_URL ? undefined : new PGlite();
    tdb = await openDb(MAIN_DRIVER, undefined, pglite);
    keyring = createKeyring({ db: tdb.db, platformKek: localKek({ key: randomBytes(32) }) });
    withEncryption(tdb.db, keyring, { tenantColumn: 'tenant_id' });
    await keyring.installKeyStore();
  });
  afterAll(async () => {
    await keyring?.close();
    await tdb?.close();
    await pglite?.close();
  });

  async function fresh(n: number): Promise<void> {
    s = makeSchema(uniqueName('retro_bi'));
    prefix = uniqueName('t');
    for (const d of s.ddl) await tdb.raw(d);
    await tdb.raw(
      `insert into "${s.name}".people (id, tenant_id, email)
       select g, $1 || '-' || (g % ${TENANTS}), case when g % 9 = 0 then null else ' User' || g || '@Example.com' end
       from generate_series(1, ${n}) g`,
      [prefix],
    );
  }

  const lookup = (tenantId: string, email: string) =>
    withTenant(tenantId, () =>
      tdb.db.select({ id: s.app.id }).from(s.app).where(eq(s.app.email, email)).orderBy(s.app.id),
    );

  async function raw(): Promise<
    { id: number; tenant_id: string; email: string | null; idx: string | null }[]
  > {
    return tdb.raw(
      `select id, tenant_id, email, encode(email_idx, 'hex') as idx from "${s.name}".people order by id`,
    );
  }

  /** Every row: ciphertext, an index value equal to what the middleware writes for its current value, found by eq. */
  async function expectFullyIndexed(values: Map<number, string | null>): Promise<void> {
    const rows = await raw();
    expect(rows.map((r) => r.id)).toEqual([...values.keys()].sort((a, b) => a - b));
    for (const r of rows) {
      const v = values.get(r.id)!;
      if (v === null) {
        expect(r.email).toBeNull();
        expect(r.idx).toBeNull();
        continue;
      }
      expect(r.email).toMatch(/^byok1:/);
      const want = await blindIndexValues(keyring, s.app, r.tenant_id, { email: v });
      expect(r.idx).toBe(want.email_idx!.toString('hex'));
      expect(await lookup(r.tenant_id, v.trim().toUpperCase())).toEqual([{ id: r.id }]);
    }
  }

  it('one runBackfill encrypts and indexes every row of every tenant: lookups work with no separate pass', async () => {
    const N = 600;
    await fresh(N);
    // The app runs with the index (passthrough) before the backfill: its first write creates the
    // tenant's index key version, not built (old rows have no index value), so lookups are refused.
    const t1 = tenantOf(prefix, 1);
    await withTenant(t1, () =>
      tdb.db.update(s.app).set({ email: ' User1@Example.com' }).where(eq(s.app.id, 1)),
    );
    await expect(lookup(t1, 'user5@example.com')).rejects.toThrow(/not built/);

    const r = await runBackfill(tdb.db, keyring, s.target, { batchSize: 50, chunkSize: 200 });
    expect(r.jobDone).toBe(true);
    const nonNull = Array.from({ length: N }, (_, i) => i + 1).filter((i) => emailOf(i) !== null).length;
    expect(r.written).toBe(nonNull - 1); // row 1 was encrypted by the app
    expect(r.indexed).toBe(nonNull - 1);
    expect(r.indexesBuilt.map((x) => x.tenantId).sort()).toEqual(
      Array.from({ length: TENANTS }, (_, i) => `${prefix}-${i}`).sort(),
    );
    expect(r.indexesBuilt.every((x) => x.index === 'people.email_idx')).toBe(true);
    for (let t = 0; t < TENANTS; t++) {
      const st = await blindIndexStatus(tdb.db, { index: s.app.emailIdx, tenantId: `${prefix}-${t}` });
      expect(st.versions).toMatchObject([{ version: 1, state: 'active', built: true }]);
    }
    const values = new Map(Array.from({ length: N }, (_, i) => [i + 1, emailOf(i + 1)]));
    await expectFullyIndexed(values);
    // a value of another tenant is not found
    expect(await lookup(tenantOf(prefix, 2), 'user1@example.com')).toEqual([]);

    // Idempotent: a second run rewrites nothing, indexes nothing.
    const again = await runBackfill(tdb.db, keyring, s.target, { batchSize: 50, chunkSize: 200 });
    expect(again).toMatchObject({ written: 0, indexed: 0, jobDone: true });

    // Rollback (in place) leaves the index values: the values do not change, lookups keep working.
    const before = await raw();
    const back = await rollbackBackfill(tdb.db, keyring, s.target, { batchSize: 50, chunkSize: 200 });
    expect(back.written).toBe(nonNull);
    const after = await raw();
    expect(after.map((x) => x.idx)).toEqual(before.map((x) => x.idx));
    expect(after.find((x) => x.id === 7)!.email).toBe(' User7@Example.com');
    expect(await lookup(tenantOf(prefix, 7), 'USER7@example.com')).toEqual([{ id: 7 }]);
  });

  it('a run stopped (abort) and crashed (error mid-batch) twice, then resumed, ends fully indexed and built', async () => {
    const N = 400;
    await fresh(N);
    const t0 = tenantOf(prefix, 0);
    await withTenant(t0, () => tdb.db.insert(s.app).values({ id: N + 1, tenantId: t0, email: 'New@x.io' }));
    const values = new Map(Array.from({ length: N }, (_, i) => [i + 1, emailOf(i + 1)]));
    values.set(N + 1, 'New@x.io');
    const opts = { batchSize: 25, chunkSize: 100 };

    // 1. stopped after 3 committed batches
    const ac = new AbortController();
    let commits = 0;
    const r1 = await runBackfill(tdb.db, keyring, s.target, {
      ...opts,
      signal: ac.signal,
      hooks: { afterCommit: () => (++commits === 3 ? ac.abort() : undefined) },
    });
    expect(r1.aborted).toBe(true);
    expect(r1.jobDone).toBe(false);
    expect(r1.indexesBuilt).toEqual([]);
    await expect(lookup(t0, 'user4@example.com')).rejects.toThrow(/not built/);
    const partial = await raw();
    const indexedSoFar = partial.filter((x) => x.idx !== null).length;
    expect(indexedSoFar).toBeGreaterThan(1);
    expect(indexedSoFar).toBeLessThan(N);
    // whatever was encrypted was indexed in the same statement
    for (const x of partial) expect(x.idx !== null).toBe(x.email?.startsWith('byok1:') === true);

    // 2. a crash between reading a batch and writing it
    let batches = 0;
    await expect(
      runBackfill(tdb.db, keyring, s.target, {
        ...opts,
        hooks: {
          beforeLock: () => {
            if (++batches === 4) throw new Error('worker crashed');
          },
        },
      }),
    ).rejects.toThrow('worker crashed');
    await expect(lookup(t0, 'user4@example.com')).rejects.toThrow(/not built/);

    // 3. resumed to the end
    const r3 = await runBackfill(tdb.db, keyring, s.target, opts);
    expect(r3.jobDone).toBe(true);
    expect(r3.pass).toBe(1);
    expect(r3.indexesBuilt.map((x) => x.tenantId).sort()).toEqual(
      Array.from({ length: TENANTS }, (_, i) => `${prefix}-${i}`).sort(),
    );
    await expectFullyIndexed(values);
  });

  it('rows the app writes during the backfill keep their correct index values', async () => {
    const N = 500;
    await fresh(N);
    const values = new Map(Array.from({ length: N }, (_, i) => [i + 1, emailOf(i + 1)]));
    let next = N + 1;
    let batch = 0;
    const r = await runBackfill(tdb.db, keyring, s.target, {
      batchSize: 40,
      chunkSize: 120,
      hooks: {
        // Between the backfill's read of a batch and its write: the app updates rows of that batch
        // (including NULL ↔ value), of batches already done and not reached yet, and inserts rows.
        beforeLock: async (keys) => {
          batch++;
          const ids = [
            Number(keys[0]),
            Number(keys[keys.length - 1]),
            Math.max(1, Number(keys[0]) - 30),
            Math.min(N, Number(keys[0]) + 70),
          ];
          for (const id of ids) {
            if (Number.isNaN(id)) continue;
            const t = tenantOf(prefix, id);
            const v = (batch + id) % 5 === 0 ? null : ` Changed${batch}-${id}@X.io`;
            await withTenant(t, () => tdb.db.update(s.app).set({ email: v }).where(eq(s.app.id, id)));
            values.set(id, v);
          }
          const id = next++;
          const t = tenantOf(prefix, id);
          await withTenant(t, () =>
            tdb.db.insert(s.app).values({ id, tenantId: t, email: ` Inserted${id}@X.io` }),
          );
          values.set(id, ` Inserted${id}@X.io`);
        },
      },
    });
    expect(r.jobDone).toBe(true);
    expect(r.busyRetries).toBeGreaterThan(0);
    await expectFullyIndexed(values);
    // an old value of a changed row is not found any more
    const changed = [...values].find(([id, v]) => id <= N && v !== emailOf(id) && emailOf(id) !== null)!;
    expect(await lookup(tenantOf(prefix, changed[0]), emailOf(changed[0])!)).toEqual([]);
  });

  it('rows already encrypted without an index (and under an older data key) get their index value', async () => {
    await fresh(0);
    const t = `${prefix}-x`;
    // The app before the index existed wrote ciphertext; then the data key was rotated.
    await withTenant(t, () =>
      tdb.db
        .insert(s.before)
        .values(
          Array.from({ length: 30 }, (_, i) => ({ id: i + 1, tenantId: t, email: `Old${i + 1}@x.io` })),
        ),
    );
    await keyring.rotateDek(t);
    await withTenant(t, () => tdb.db.insert(s.before).values({ id: 31, tenantId: t, email: 'Old31@x.io' }));
    const values = new Map(Array.from({ length: 31 }, (_, i) => [i + 1, `Old${i + 1}@x.io`]));
    // without re-encryption: values left under the old key are indexed all the same
    const r1 = await runBackfill(tdb.db, keyring, s.target, { batchSize: 8, reencrypt: false });
    expect(r1).toMatchObject({ written: 0, stale: 30, alreadyDone: 1, indexed: 31 });
    expect(r1.indexesBuilt).toEqual([{ index: 'people.email_idx', tenantId: t }]);
    await expectFullyIndexed(values);
    // re-encryption keeps the index values
    const before = await raw();
    const r2 = await runBackfill(tdb.db, keyring, s.target, { batchSize: 8, restart: true });
    expect(r2).toMatchObject({ reencrypted: 30, indexed: 0 });
    expect((await raw()).map((x) => x.idx)).toEqual(before.map((x) => x.idx));
    await expectFullyIndexed(values);
  });

  it('shadow columns: the backfill indexes the target from the source; rollback clears target and index', async () => {
    await fresh(0);
    const t = `${prefix}-s`;
    await tdb.raw(
      `insert into "${s.name}".contacts (id, tenant_id, ssn)
       select g, $1, case when g % 7 = 0 then null else 'ssn-' || g end from generate_series(1, 50) g`,
      [t],
    );
    const sh = s.shadow;
    const find = (v: string) =>
      withTenant(t, () => tdb.db.select({ id: sh.id }).from(sh).where(eq(sh.ssnEnc, v)));
    const r = await runBackfill(tdb.db, keyring, s.shadowTarget, { batchSize: 9 });
    expect(r).toMatchObject({ written: 43, indexed: 43, jobDone: true });
    for (let i = 1; i <= 50; i++) expect(await find(`ssn-${i}`)).toEqual(i % 7 === 0 ? [] : [{ id: i }]);
    const back = await rollbackBackfill(tdb.db, keyring, s.shadowTarget, { batchSize: 9 });
    expect(back.written).toBe(43);
    const [left] = await tdb.raw<{ n: number }>(
      `select count(*)::int as n from "${s.name}".contacts where ssn_enc is not null or ssn_idx is not null`,
    );
    expect(left!.n).toBe(0);
    expect(await find('ssn-1')).toEqual([]);
    const [{ ssn }] = await tdb.raw<{ ssn: string }>(`select ssn from "${s.name}".contacts where id = 1`);
    expect(ssn).toBe('ssn-1');
  });
});
