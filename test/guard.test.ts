import { inspect } from 'node:util';
import { and, asc, count, countDistinct, eq, inArray, isNotNull, isNull, like, ne, sql } from 'drizzle-orm';
import { alias, except, intersect, pgTable, union, unionAll } from 'drizzle-orm/pg-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ByokConfigError,
  DecryptionFailedError,
  EncryptedColumnUsageError,
  EncryptedComparisonError,
  encrypted,
  rawCiphertext,
  reencrypt,
  restoreCiphertext,
  withAnyTenant,
  withTenant,
} from '../src/index.ts';
import { DRIVERS, uniqueTenant } from './helpers/db.ts';
import { guardTables, recordingLogger } from './helpers/guard-tables.ts';
import { type EncryptedDb, setupEncryptedDb } from './helpers/setup.ts';
import { DRIZZLE_1 } from './helpers/drizzle-version.ts';

const SECRET = 'secret-plaintext@x.io';

describe.each(DRIVERS)('fail-closed guard on %s', (driver) => {
  let e: EncryptedDb;
  let t: ReturnType<typeof guardTables>;
  const log = recordingLogger();
  const T = uniqueTenant('guard');
  const B = uniqueTenant('guard-b');

  beforeAll(async () => {
    e = await setupEncryptedDb(driver, { logger: log });
    t = guardTables(e.s.name);
    for (const d of t.ddl) await e.tdb.raw(d);
    await withTenant(T, () =>
      e.db.insert(t.acct).values([
        { id: 1, tenantId: T, grp: 1, email: 'a@x.io', note: 'n1' },
        { id: 2, tenantId: T, grp: 1, email: 'b@x.io', note: 'n2' },
        { id: 3, tenantId: T, grp: 2, email: null, note: 'n3' },
      ]),
    );
    await withTenant(B, () =>
      e.db.insert(t.acct).values({ id: 10, tenantId: B, grp: 1, email: 'b-own@x.io' }),
    );
    await withTenant(T, () => e.db.insert(t.other).values({ id: 1, tenantId: T, email: 'o@x.io' }));
  });
  afterAll(() => e?.close());

  /** The query is refused with the one typed error naming the column, and nothing reaches the driver. */
  async function refused(run: () => unknown, column?: string): Promise<EncryptedColumnUsageError> {
    const before = log.statements.length;
    const err = await withTenant(T, async () => {
      try {
        await run();
      } catch (x) {
        return x;
      }
      return undefined;
    });
    expect(err).toBeInstanceOf(EncryptedComparisonError);
    expect(err).toBeInstanceOf(EncryptedColumnUsageError);
    const u = err as EncryptedColumnUsageError;
    expect(u.code).toBe('ERR_BYOK_ENCRYPTED_COMPARISON');
    if (column !== undefined) expect(u.column).toBe(column);
    expect(u.message).toContain(u.construct);
    expect(u.message).not.toContain(SECRET);
    expect(log.statements.length).toBe(before);
    return u;
  }

  it('plaintext never reaches the database: sql templates, casts, functions and getSQL() around either side', async () => {
    const a = t.acct;
    await refused(
      () =>
        e.db
          .select()
          .from(a)
          .where(eq(sql`${a.email}`, SECRET)),
      'acct.email',
    );
    await refused(
      () =>
        e.db
          .select()
          .from(a)
          .where(eq(a.email, sql`${SECRET}`)),
      'acct.email',
    );
    await refused(() => e.db.select().from(a).where(sql`${a.email} = ${SECRET}`));
    await refused(() =>
      e.db
        .select()
        .from(a)
        .where(eq(sql`${a.email}::text`, SECRET)),
    );
    await refused(() =>
      e.db
        .select()
        .from(a)
        .where(eq(sql`lower(${a.email})`, SECRET)),
    );
    await refused(() => e.db.select().from(a).where(eq(a.email.getSQL(), SECRET)));
    await refused(() =>
      e.db
        .select()
        .from(a)
        .where(like(a.email, `%${SECRET}`)),
    );
    await refused(() =>
      e.db
        .select()
        .from(a)
        .where(ne(a.email, sql.placeholder('p'))),
    );
    await refused(() =>
      e.db
        .select()
        .from(a)
        .where(and(eq(a.grp, 1), sql`coalesce(${a.email}, '') <> ''`)),
    );
    await refused(() =>
      e.db
        .select()
        .from(a)
        .where(eq(a.email, null as never)),
    );
    await refused(() => e.db.execute(sql`select * from ${a} where ${a.email} = ${SECRET}`));
    await refused(() => e.db.$count(a, eq(sql`${a.email}`, SECRET)));
    // nothing printed by the logger carries the secret
    for (const s of log.statements) expect(JSON.stringify(s.params)).not.toContain(SECRET);
  });

  it('no plaintext or foreign ciphertext is written into encrypted columns', async () => {
    const a = t.acct;
    await refused(() => e.db.insert(a).values({ id: 90, tenantId: T, email: sql`${SECRET}` }), 'acct.email');
    await refused(
      () =>
        e.db
          .update(a)
          .set({ email: sql`${SECRET}` })
          .where(eq(a.id, 1)),
      'acct.email',
    );
    await refused(
      () =>
        e.db
          .update(a)
          .set({ email: sql`${a.note}` })
          .where(eq(a.id, 1)),
      'acct.email',
    );
    await refused(() => e.db.update(a).set({ email: a.note }).where(eq(a.id, 1)), 'acct.email');
    await refused(() =>
      e.db
        .update(a)
        .set({ email: sql`${t.other.email}` })
        .from(t.other)
        .where(eq(a.id, t.other.id)),
    );
    await refused(() =>
      e.db.insert(t.other).select(e.db.select({ id: a.id, tenantId: a.tenantId, email: a.email }).from(a)),
    );
    await refused(() => e.db.insert(t.other).select(sql`select id, tenant_id, email from ${a}`));
    await refused(() =>
      e.db
        .insert(a)
        .values({ id: 1, tenantId: T, email: 'x@x.io' })
        .onConflictDoUpdate({ target: a.id, set: { email: sql`excluded.note` } }),
    );
    // the rows are untouched and still decrypt
    const rows = await withTenant(T, () => e.db.select().from(a).where(eq(a.tenantId, T)).orderBy(asc(a.id)));
    expect(rows.map((r) => r.email)).toEqual(['a@x.io', 'b@x.io', null]);
  });

  it('ciphertext is never typed as plaintext: sql<string> in a select, relational extras', async () => {
    const a = t.acct;
    await refused(() => e.db.select({ e: sql<string>`${a.email}` }).from(a), 'acct.email');
    await refused(() => e.db.select({ e: sql<string>`${a.email}`.as('e') }).from(a));
    await refused(() => e.db.select({ e: sql<string>`${a.note}`.mapWith(a.email) }).from(a), 'acct.email');
    await refused(() =>
      e.db.query.patients.findMany({ extras: { n: sql<string>`${e.s.patients.name}`.as('n') } }),
    );
    // relational extras lose their decoder: even sql`${col}`.mapWith(col) would return ciphertext
    await refused(() =>
      e.db.query.patients.findMany({
        extras: { n: sql<string>`${e.s.patients.name}`.mapWith(e.s.patients.name).as('n') },
      }),
    );
    await refused(() =>
      e.db.query.patients.findMany({
        with: {
          visits: {
            extras: DRIZZLE_1
              ? { r: (v: typeof e.s.visits) => sql<string>`${v.reason}` } // v2: one callback per extra
              : (v: typeof e.s.visits) => ({ r: sql<string>`${v.reason}`.as('r') }),
          },
        },
      }),
    );
  });

  it('no silent wrong answers: order by, group by, distinct, joins, subqueries and set operations', async () => {
    const a = t.acct;
    const b = alias(t.acct, 'b');
    await refused(() => e.db.select().from(a).orderBy(asc(a.email)), 'acct.email');
    await refused(() => e.db.select().from(a).orderBy(sql`${a.email} desc`));
    await refused(() => e.db.select({ n: count() }).from(a).groupBy(a.email));
    await refused(() => e.db.selectDistinct({ e: a.email }).from(a), 'acct.email');
    await refused(() => e.db.selectDistinct().from(a));
    await refused(() => e.db.selectDistinctOn([a.email], { id: a.id }).from(a));
    await refused(() => e.db.select({ n: countDistinct(a.email) }).from(a));
    await refused(() => e.db.select({ n: count(a.email) }).from(a));
    await refused(() => e.db.select({ id: a.id }).from(a).innerJoin(b, eq(a.email, b.email)));
    await refused(() =>
      e.db
        .select({ id: a.id })
        .from(a)
        .where(inArray(a.email, e.db.select({ x: b.email }).from(b))),
    );
    await refused(() =>
      e.db
        .select({ id: a.id })
        .from(a)
        .where(inArray(a.id, e.db.select({ x: b.email }).from(b))),
    );
    await refused(() =>
      e.db
        .select({ e: a.email })
        .from(a)
        .union(e.db.select({ e: a.email }).from(a)),
    );
    await refused(() =>
      union(e.db.select({ e: a.email }).from(a), e.db.select({ e: t.other.email }).from(t.other)),
    );
    await refused(() => intersect(e.db.select({ e: a.email }).from(a), e.db.select({ e: a.email }).from(a)));
    await refused(() => except(e.db.select({ e: a.email }).from(a), e.db.select({ e: a.email }).from(a)));
    await refused(() =>
      unionAll(e.db.select({ e: a.email }).from(a), e.db.select({ e: t.other.email }).from(t.other)),
    );
    await refused(() =>
      e.db
        .select({ e: a.email })
        .from(a)
        .unionAll(e.db.select({ e: a.email }).from(a))
        .orderBy(a.email),
    );
  });

  it('allowed: select, joins, subqueries, CTEs, isNull, mapWith, returning, relational at depth, union all of one column', async () => {
    const a = t.acct;
    const b = alias(t.acct, 'b');
    await withTenant(T, async () => {
      const sq = e.db
        .select({ id: a.id, email: a.email })
        .from(a)
        .where(and(eq(a.tenantId, T), isNotNull(a.email)))
        .as('sq');
      expect(
        (await e.db.select({ email: sq.email }).from(sq).orderBy(asc(sq.id))).map((r) => r.email),
      ).toEqual(['a@x.io', 'b@x.io']);
      const cte = e.db.$with('c').as(e.db.select({ id: a.id, note: a.note }).from(a));
      expect(await e.db.with(cte).select({ note: cte.note }).from(cte).where(eq(cte.id, 2))).toEqual([
        { note: 'n2' },
      ]);
      expect(
        await e.db
          .select({ id: a.id })
          .from(a)
          .where(and(eq(a.tenantId, T), isNull(a.email))),
      ).toEqual([{ id: 3 }]);
      expect(
        await e.db
          .select({ e: sql<string>`${a.email}`.mapWith(a.email), b: b.note })
          .from(a)
          .innerJoin(b, eq(a.id, b.id))
          .where(eq(a.id, 1)),
      ).toEqual([{ e: 'a@x.io', b: 'n1' }]);
      const all = await unionAll(
        e.db.select({ e: a.email }).from(a).where(eq(a.id, 1)),
        e.db.select({ e: a.email }).from(a).where(eq(a.id, 2)),
      );
      expect(all.map((r) => r.e).sort()).toEqual(['a@x.io', 'b@x.io']);
      const [r] = await e.db
        .update(a)
        .set({ note: 'changed' })
        .where(eq(a.id, 2))
        .returning({ note: a.note, e: a.email });
      expect(r).toEqual({ note: 'changed', e: 'b@x.io' });
      await e.db.update(a).set({ note: a.note }).where(eq(a.id, 2)); // the same column of the same row
      const p = (await e.db.insert(e.s.patients).values({ tenantId: T, name: 'Rel' }).returning())[0]!;
      await e.db.insert(e.s.visits).values({ tenantId: T, patientId: p.id, reason: 'flu' });
      const rel = await e.db.query.patients.findMany(
        DRIZZLE_1
          ? {
              where: { id: p.id },
              with: { visits: { columns: { reason: true }, where: { reason: { isNotNull: true } } } },
            }
          : {
              where: (x: typeof e.s.patients, { eq }: { eq: typeof import('drizzle-orm').eq }) =>
                eq(x.id, p.id),
              with: { visits: { columns: { reason: true }, where: isNotNull(e.s.visits.reason) } },
            },
      );
      expect(rel).toEqual([expect.objectContaining({ name: 'Rel', visits: [{ reason: 'flu' }] })]);
      expect(await e.db.$count(a, isNull(a.email))).toBe(1);
    });
  });

  it('insert ... select within the same table, column and tenant copies ciphertext; anything else needs reencrypt', async () => {
    const a = t.acct;
    await withTenant(T, async () => {
      await e.db.delete(a).where(eq(a.id, 100));
      // same table, same columns, tenant column from the same row: the binding is unchanged
      await e.db.insert(a).select(
        e.db
          .select({
            id: sql<number>`${a.id} + 99`.as('id'),
            tenantId: a.tenantId,
            grp: a.grp,
            email: a.email,
            note: a.note,
          })
          .from(a)
          .where(eq(a.id, 1)),
      );
      expect(await e.db.select({ email: a.email }).from(a).where(eq(a.id, 100))).toEqual([
        { email: 'a@x.io' },
      ]);
    });
    const b = alias(t.acct, 'b');
    await refused(() =>
      e.db.insert(a).select(
        e.db
          .select({
            id: sql<number>`${a.id} + 200`.as('id'),
            tenantId: b.tenantId,
            grp: a.grp,
            email: a.email,
            note: a.note,
          })
          .from(a)
          .innerJoin(b, eq(a.id, b.id)),
      ),
    );
    await refused(() =>
      e.db.insert(a).select(
        e.db
          .select({
            id: sql<number>`${a.id} + 300`.as('id'),
            tenantId: a.tenantId,
            grp: a.grp,
            email: a.note,
            note: a.note,
          })
          .from(a),
      ),
    );
  });

  it('escape hatches: rawCiphertext for backups, restoreCiphertext to restore, reencrypt to move across tables and tenants', async () => {
    const a = t.acct;
    const dump = await withTenant(T, () =>
      e.db
        .select({ id: a.id, email: rawCiphertext(a.email) })
        .from(a)
        .where(eq(a.id, 1)),
    );
    const stored = dump[0]!.email as Buffer;
    expect(Buffer.isBuffer(stored)).toBe(true);
    expect(stored.includes(Buffer.from('a@x.io'))).toBe(false);
    await withTenant(T, () =>
      e.db
        .update(a)
        .set({ email: restoreCiphertext(a.email, stored) })
        .where(eq(a.id, 2)),
    );
    expect(await withTenant(T, () => e.db.select({ email: a.email }).from(a).where(eq(a.id, 2)))).toEqual([
      { email: 'a@x.io' },
    ]);
    expect(() => restoreCiphertext(a.email, Buffer.from('not a ciphertext'))).toThrow(ByokConfigError);
    expect(() => rawCiphertext(a.grp)).toThrow(ByokConfigError);
    await refused(() =>
      e.db
        .update(t.other)
        .set({ email: restoreCiphertext(a.email, stored) })
        .where(eq(t.other.id, 1)),
    );
    // copied as it is into another table, the value would never decrypt: reencrypt moves it
    const [moved] = await reencrypt(
      e.keyring,
      { column: a.email, tenantId: T },
      { column: t.other.email, tenantId: B },
      [stored],
    );
    await withTenant(B, () =>
      e.db.insert(t.other).values({ id: 2, tenantId: B, email: restoreCiphertext(t.other.email, moved!) }),
    );
    expect(
      await withTenant(B, () => e.db.select({ email: t.other.email }).from(t.other).where(eq(t.other.id, 2))),
    ).toEqual([{ email: 'a@x.io' }]);
    // a value that is not a ciphertext of the source binding is the one decryption error
    await expect(
      reencrypt(e.keyring, { column: t.other.email, tenantId: T }, { column: a.email, tenantId: T }, [
        stored,
      ]),
    ).rejects.toBeInstanceOf(DecryptionFailedError);
    await expect(
      reencrypt(e.keyring, { column: a.email, tenantId: B }, { column: a.email, tenantId: B }, [stored]),
    ).rejects.toBeInstanceOf(DecryptionFailedError);
    await expect(
      reencrypt(e.keyring, { column: a.email, tenantId: T }, { column: a.grp as never, tenantId: T }, [
        stored,
      ]),
    ).rejects.toBeInstanceOf(ByokConfigError);
  });

  it('a row of another tenant is the one decryption error, and its data key is never unwrapped', async () => {
    const a = t.acct;
    // Queries are scoped to the tenant (B's own rows are not returned in T's scope): place B's
    // ciphertext in a row of T, where the scoped query does return it.
    const [src] = await e.tdb.raw<{ email: Buffer | string }>(
      `select email from "${e.s.name}".acct where id = 10`,
    );
    await e.tdb.raw(`insert into "${e.s.name}".acct (id, tenant_id, grp, email) values (11, $1, 1, $2)`, [
      T,
      src!.email,
    ]);
    e.keyring.clearCache();
    e.kek.reset();
    const err = await withTenant(T, () => e.db.select().from(a)).then(
      () => undefined,
      (x: unknown) => x,
    );
    await e.tdb.raw(`delete from "${e.s.name}".acct where id = 11`);
    expect(err).toBeInstanceOf(DecryptionFailedError);
    expect((err as Error).message).not.toContain(B);
    expect(JSON.stringify(err)).not.toContain(B);
    expect(inspect(err)).not.toContain(B);
    expect(e.kek.unwrapTenants.every((x) => x === T)).toBe(true);
    // the other tenant's health is untouched and its rows read in its own scope
    const [h] = await e.tdb.raw<{ health: string }>(`select health from byok.tenants where tenant_id = $1`, [
      B,
    ]);
    expect(h?.health).not.toBe('error');
    expect(
      await withTenant(B, () => e.db.select({ email: a.email }).from(a).where(eq(a.tenantId, B))),
    ).toEqual([{ email: 'b-own@x.io' }]);
    // a back-office job reads both
    expect((await withAnyTenant(() => e.db.select({ id: a.id }).from(a))).length).toBeGreaterThan(3);
  });
});

describe('schema and values', () => {
  it('.default() on an encrypted column is refused, naming $defaultFn; generated values too', () => {
    expect(() => pgTable('d1', { a: encrypted.text('a').default('x') })).toThrow(/\$defaultFn/);
    expect(() => pgTable('d2', { a: encrypted.json('a').default({ x: 1 } as never) })).toThrow(
      ByokConfigError,
    );
    expect(() => pgTable('d3', { a: encrypted.text('a').generatedAlwaysAs(sql`'x'`) })).toThrow(
      ByokConfigError,
    );
    const ok = pgTable('d4', { a: encrypted.text('a').$defaultFn(() => 'v') });
    expect(ok.a.defaultFn?.()).toBe('v');
    const bad = pgTable('d5', { a: encrypted.text('a').$defaultFn(() => sql`'plain'` as never) });
    expect(() => bad.a.defaultFn?.()).toThrow(ByokConfigError);
  });

  it('a lone UTF-16 surrogate is refused with a clear error, not replaced', async () => {
    const e = await setupEncryptedDb(DRIVERS[0]!);
    try {
      const T = uniqueTenant('surrogate');
      for (const bad of ['\ud800', 'a\udfffb', 'x\ud83d']) {
        await expect(
          withTenant(T, () => e.db.insert(e.s.patients).values({ tenantId: T, name: bad })),
        ).rejects.toThrow(/lone UTF-16 surrogate/);
      }
      const [p] = await withTenant(T, () =>
        e.db
          .insert(e.s.patients)
          .values({ tenantId: T, name: 'ok 😀', record: { s: '\ud800' } as never })
          .returning(),
      );
      expect(p!.name).toBe('ok 😀');
      expect((p!.record as unknown as { s: string }).s).toBe('\ud800'); // JSON escapes it: exact round trip
    } finally {
      await e.close();
    }
  });
});
