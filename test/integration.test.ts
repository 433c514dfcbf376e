import { and, asc, count, eq, inArray, isNotNull, sql } from 'drizzle-orm';
import { alias } from 'drizzle-orm/pg-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DecryptionFailedError,
  decryptRows,
  EncryptedComparisonError,
  NoTenantError,
  TenantMismatchError,
  withAnyTenant,
  withTenant,
} from '../src/index.ts';
import { encryptedState } from '../src/drizzle/columns.ts';
import { PendingWrite } from '../src/drizzle/placeholders.ts';
import { DRIVERS, uniqueTenant } from './helpers/db.ts';
import { type EncryptedDb, setupEncryptedDb } from './helpers/setup.ts';
import { DRIZZLE_1 } from './helpers/drizzle-version.ts';

/** The shared integration suite: every query form, on every driver, against real PostgreSQL. */
describe.each(DRIVERS)('query forms on %s', (driver) => {
  let e: EncryptedDb;
  const A = uniqueTenant('a');
  const B = uniqueTenant('b');

  beforeAll(async () => {
    e = await setupEncryptedDb(driver);
  });
  afterAll(async () => {
    await e?.close();
  });

  /** Raw bytes of a stored column, straight from the driver. */
  async function stored(column: string, id: string): Promise<Buffer> {
    const [row] = await e.tdb.raw<Record<string, unknown>>(
      `select ${column} as v from "${e.s.name}".patients where id = $1`,
      [id],
    );
    const v = row?.v;
    return Buffer.isBuffer(v) ? v : Buffer.from(v as Uint8Array);
  }

  const full = {
    name: 'Ada Lovelace',
    email: 'ada@example.com',
    record: { allergies: ['penicillin'], score: 7 },
    age: 36,
    balance: 9007199254740993n,
    amount: '1234.5600',
    vip: true,
    born: new Date('1815-12-10T00:00:00.000Z'),
    photo: new Uint8Array([0, 1, 2, 250, 255]),
  };

  it('insert … returning gives plaintext; the database holds bytea without the plaintext', async () => {
    const [row] = await withTenant(A, () =>
      e.db
        .insert(e.s.patients)
        .values({ tenantId: A, seq: 1, ...full })
        .returning(),
    );
    expect(row).toMatchObject({ tenantId: A, ...full, photo: expect.anything() });
    expect(Buffer.from(row.photo!)).toEqual(Buffer.from(full.photo));
    for (const col of ['name', 'email', 'record', 'age', 'balance', 'amount', 'vip', 'born', 'photo']) {
      const bytes = await stored(col, row.id);
      expect(bytes.length).toBeGreaterThan(46);
      expect(bytes[0]).toBe(1);
    }
    const all = Buffer.concat(
      await Promise.all(['name', 'email', 'record', 'amount'].map((c) => stored(c, row.id))),
    );
    for (const needle of ['Ada', 'ada@example', 'penicillin', '1234.56'])
      expect(all.includes(Buffer.from(needle))).toBe(false);
  });

  it('select round-trips every codec, and null stays null (not encrypted)', async () => {
    const [row] = await withTenant(A, () =>
      e.db
        .insert(e.s.patients)
        .values({ tenantId: A, seq: 2, name: 'Nulls', email: null, record: null })
        .returning(),
    );
    const raw = await e.tdb.raw(`select email, record, age from "${e.s.name}".patients where id = $1`, [
      row.id,
    ]);
    expect(raw[0]).toEqual({ email: null, record: null, age: null });
    const [back] = await withTenant(A, () =>
      e.db.select().from(e.s.patients).where(eq(e.s.patients.id, row.id)),
    );
    expect(back).toMatchObject({ name: 'Nulls', email: null, record: null, age: null, born: null });
    const [first] = await withTenant(A, () =>
      e.db.select().from(e.s.patients).where(eq(e.s.patients.seq, 1)),
    );
    expect(first).toMatchObject({ ...full, photo: expect.anything() });
    expect(first.born).toBeInstanceOf(Date);
    expect(typeof first.balance).toBe('bigint');
  });

  it('partial selects, joins, self-joins through an alias, subqueries and $count', async () => {
    const [p] = await withTenant(B, () =>
      e.db.insert(e.s.patients).values({ tenantId: B, seq: 10, name: 'Grace' }).returning(),
    );
    await withTenant(B, () =>
      e.db.insert(e.s.visits).values([
        { tenantId: B, patientId: p.id, reason: 'checkup' },
        { tenantId: B, patientId: p.id, reason: 'flu' },
      ]),
    );
    await withTenant(B, async () => {
      const partial = await e.db
        .select({ n: e.s.patients.name, s: e.s.patients.seq })
        .from(e.s.patients)
        .where(eq(e.s.patients.tenantId, B));
      expect(partial).toEqual([{ n: 'Grace', s: 10 }]);

      const joined = await e.db
        .select({ name: e.s.patients.name, reason: e.s.visits.reason })
        .from(e.s.visits)
        .innerJoin(e.s.patients, eq(e.s.patients.id, e.s.visits.patientId))
        .where(eq(e.s.visits.tenantId, B))
        .orderBy(asc(e.s.visits.at));
      expect(joined.map((j) => j.name)).toEqual(['Grace', 'Grace']);
      expect(joined.map((j) => j.reason).sort()).toEqual(['checkup', 'flu']);

      const left = await e.db
        .select()
        .from(e.s.patients)
        .leftJoin(e.s.visits, eq(e.s.visits.patientId, e.s.patients.id))
        .where(eq(e.s.patients.tenantId, B));
      expect(left).toHaveLength(2);
      expect(left[0]!.patients.name).toBe('Grace');

      const other = alias(e.s.patients, 'other');
      const self = await e.db
        .select({ a: e.s.patients.name, b: other.name })
        .from(e.s.patients)
        .innerJoin(other, eq(other.id, e.s.patients.id))
        .where(eq(e.s.patients.tenantId, B));
      expect(self).toEqual([{ a: 'Grace', b: 'Grace' }]);

      const sq = e.db
        .select({ id: e.s.patients.id, name: e.s.patients.name })
        .from(e.s.patients)
        .where(eq(e.s.patients.tenantId, B))
        .as('sq');
      const viaSub = await e.db.select({ name: sq.name }).from(sq);
      expect(viaSub).toEqual([{ name: 'Grace' }]);

      const inSub = await e.db
        .select({ reason: e.s.visits.reason })
        .from(e.s.visits)
        .where(
          inArray(
            e.s.visits.patientId,
            e.db.select({ id: e.s.patients.id }).from(e.s.patients).where(eq(e.s.patients.seq, 10)),
          ),
        );
      expect(inSub).toHaveLength(2);

      expect(await e.db.$count(e.s.visits, eq(e.s.visits.tenantId, B))).toBe(2);
      const [{ n }] = await e.db
        .select({ n: count() })
        .from(e.s.patients)
        .where(and(eq(e.s.patients.tenantId, B), isNotNull(e.s.patients.name)));
      expect(n).toBe(1);
    });
  });

  it('update, upsert (onConflictDoUpdate) and delete, each with returning', async () => {
    await withTenant(A, async () => {
      const [p] = await e.db
        .insert(e.s.patients)
        .values({ tenantId: A, seq: 20, name: 'Before', email: 'b@x.io' })
        .returning();
      const [u] = await e.db
        .update(e.s.patients)
        .set({ name: 'After', age: 41 })
        .where(eq(e.s.patients.id, p.id))
        .returning();
      expect(u).toMatchObject({ name: 'After', age: 41, email: 'b@x.io' });

      const [up] = await e.db
        .insert(e.s.patients)
        .values({ id: p.id, tenantId: A, seq: 20, name: 'Ignored' })
        .onConflictDoUpdate({ target: e.s.patients.id, set: { name: 'Upserted', email: 'u@x.io' } })
        .returning({ name: e.s.patients.name, email: e.s.patients.email });
      expect(up).toEqual({ name: 'Upserted', email: 'u@x.io' });

      const [fromExcluded] = await e.db
        .insert(e.s.patients)
        .values({ id: p.id, tenantId: A, seq: 20, name: 'FromExcluded' })
        .onConflictDoUpdate({ target: e.s.patients.id, set: { name: sql`excluded.name` } })
        .returning({ name: e.s.patients.name });
      expect(fromExcluded).toEqual({ name: 'FromExcluded' });

      const [d] = await e.db.delete(e.s.patients).where(eq(e.s.patients.id, p.id)).returning();
      expect(d).toMatchObject({ name: 'FromExcluded', email: 'u@x.io', age: 41 });
    });
  });

  it('relational queries with nested `with` (values nested as hex strings) decrypt at every level', async () => {
    const T = uniqueTenant('rq');
    await withTenant(T, async () => {
      const [p] = await e.db
        .insert(e.s.patients)
        .values({ tenantId: T, name: 'Nested', record: { allergies: [], score: 1 } })
        .returning();
      const [v] = await e.db
        .insert(e.s.visits)
        .values({ tenantId: T, patientId: p.id, reason: 'deep' })
        .returning();
      await e.db.insert(e.s.notes).values([
        { tenantId: T, visitId: v.id, body: 'note one' },
        { tenantId: T, visitId: v.id, body: null },
      ]);
    });
    // cold cache: nested values must take the batched path too
    e.keyring.clearCache();
    const many = await withTenant(T, () =>
      e.db.query.patients.findMany(
        DRIZZLE_1
          ? // relational queries v2 (drizzle-orm 1.0): object filters and orderBy
            { where: { tenantId: T }, with: { visits: { with: { notes: { orderBy: { id: 'asc' } } } } } }
          : {
              where: eq(e.s.patients.tenantId, T),
              with: {
                visits: {
                  with: {
                    notes: {
                      orderBy: (n: typeof e.s.notes, { asc }: { asc: typeof import('drizzle-orm').asc }) => [
                        asc(n.id),
                      ],
                    },
                  },
                },
              },
            },
      ),
    );
    expect(many).toHaveLength(1);
    expect(many[0].name).toBe('Nested');
    expect(many[0].record).toEqual({ allergies: [], score: 1 });
    expect(many[0].visits[0].reason).toBe('deep');
    expect(many[0].visits[0].notes.map((n: { body: string | null }) => n.body).sort()).toEqual(
      ['note one', null].sort(),
    );
    const first = await withTenant(T, () =>
      e.db.query.visits.findFirst({
        where: DRIZZLE_1 ? { tenantId: T } : eq(e.s.visits.tenantId, T),
        with: { patient: true },
      }),
    );
    expect(first.reason).toBe('deep');
    expect(first.patient.name).toBe('Nested');
  });

  it('prepared statements executed concurrently with different params', async () => {
    const T = uniqueTenant('prep');
    const ins = e.db
      .insert(e.s.patients)
      .values({
        tenantId: T,
        seq: sql.placeholder('seq'),
        name: sql.placeholder('name'),
        email: sql.placeholder('email'),
      })
      .returning({ id: e.s.patients.id, name: e.s.patients.name })
      .prepare(`ins_${driver.replace('-', '_')}_${T.slice(-6)}`);
    const results = await withTenant(T, () =>
      Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          ins.execute({ seq: i, name: `p${i}`, email: i % 2 ? null : `e${i}@x.io` }),
        ),
      ),
    );
    expect(results.map((r: { name: string }[]) => r[0]!.name)).toEqual(
      Array.from({ length: 40 }, (_, i) => `p${i}`),
    );

    const bySeq = e.db
      .select({ name: e.s.patients.name, email: e.s.patients.email })
      .from(e.s.patients)
      .where(and(eq(e.s.patients.tenantId, T), eq(e.s.patients.seq, sql.placeholder('seq'))))
      .prepare(`sel_${driver.replace('-', '_')}_${T.slice(-6)}`);
    e.keyring.clearCache();
    const got = await withTenant(T, () =>
      Promise.all(Array.from({ length: 40 }, (_, i) => bySeq.execute({ seq: i }))),
    );
    got.forEach((rows: { name: string; email: string | null }[], i: number) => {
      expect(rows).toEqual([{ name: `p${i}`, email: i % 2 ? null : `e${i}@x.io` }]);
    });
  });

  it('transactions and nested savepoints: rollback discards, commit keeps, values decrypt inside', async () => {
    const T = uniqueTenant('tx');
    e.keyring.clearCache();
    await withTenant(T, () =>
      e.db.transaction(async (tx: typeof e.db) => {
        const [p] = await tx.insert(e.s.patients).values({ tenantId: T, seq: 1, name: 'kept' }).returning();
        expect(p.name).toBe('kept');
        await expect(
          tx.transaction(async (sp: typeof e.db) => {
            await sp.insert(e.s.patients).values({ tenantId: T, seq: 2, name: 'rolled back' });
            const inner = await sp
              .select({ n: e.s.patients.name })
              .from(e.s.patients)
              .where(eq(e.s.patients.tenantId, T));
            expect(inner.map((r: { n: string }) => r.n).sort()).toEqual(['kept', 'rolled back']);
            await sp.transaction(async (sp2: typeof e.db) => {
              await sp2.insert(e.s.patients).values({ tenantId: T, seq: 3, name: 'deeper' });
            });
            throw new Error('roll back the savepoint');
          }),
        ).rejects.toThrow('roll back the savepoint');
        await tx.transaction(async (sp: typeof e.db) => {
          await sp.update(e.s.patients).set({ email: 'committed@x.io' }).where(eq(e.s.patients.id, p.id));
        });
      }),
    );
    const rows = await withTenant(T, () =>
      e.db
        .select({ n: e.s.patients.name, m: e.s.patients.email })
        .from(e.s.patients)
        .where(eq(e.s.patients.tenantId, T)),
    );
    expect(rows).toEqual([{ n: 'kept', m: 'committed@x.io' }]);

    await expect(
      withTenant(T, () =>
        e.db.transaction(async (tx: typeof e.db) => {
          await tx.insert(e.s.patients).values({ tenantId: T, seq: 9, name: 'gone' });
          throw new Error('abort');
        }),
      ),
    ).rejects.toThrow('abort');
    expect(await withTenant(T, () => e.db.$count(e.s.patients, eq(e.s.patients.tenantId, T)))).toBe(1);
  });

  it('inserts 1,500 rows in one statement (cold key) and reads them back', async () => {
    const T = uniqueTenant('bulk');
    const rows = Array.from({ length: 1500 }, (_, i) => ({
      tenantId: T,
      seq: i,
      name: `name-${i}`,
      email: `user${i}@example.com`,
      age: i,
    }));
    const back = await withTenant(T, () =>
      e.db.insert(e.s.patients).values(rows).returning({ seq: e.s.patients.seq, name: e.s.patients.name }),
    );
    expect(back).toHaveLength(1500);
    e.keyring.clearCache();
    const read = await withTenant(T, () =>
      e.db
        .select({
          seq: e.s.patients.seq,
          name: e.s.patients.name,
          email: e.s.patients.email,
          age: e.s.patients.age,
        })
        .from(e.s.patients)
        .where(eq(e.s.patients.tenantId, T))
        .orderBy(asc(e.s.patients.seq)),
    );
    expect(read).toEqual(rows.map(({ seq, name, email, age }) => ({ seq, name, email, age })));
  });

  it('tampering: a flipped byte anywhere, or a ciphertext moved to another column, row of another tenant or table, fails with the typed error', async () => {
    const T1 = uniqueTenant('t1');
    const T2 = uniqueTenant('t2');
    const [p1] = await withTenant(T1, () =>
      e.db.insert(e.s.patients).values({ tenantId: T1, name: 'victim', email: 'v@x.io' }).returning(),
    );
    const [p2] = await withTenant(T2, () =>
      e.db.insert(e.s.patients).values({ tenantId: T2, name: 'other', email: 'o@x.io' }).returning(),
    );
    const [v1] = await withTenant(T1, () =>
      e.db.insert(e.s.visits).values({ tenantId: T1, patientId: p1.id, reason: 'r' }).returning(),
    );
    const original = await stored('name', p1.id);
    const readName = () =>
      withTenant(T1, () =>
        e.db.select({ n: e.s.patients.name }).from(e.s.patients).where(eq(e.s.patients.id, p1.id)),
      );
    const positions = [0, 1, 2, 17, 18, 29, 30, original.length - 17, original.length - 1];
    for (const pos of positions) {
      const bad = Buffer.from(original);
      bad[pos]! ^= 0x01;
      await e.tdb.raw(`update "${e.s.name}".patients set name = $1 where id = $2`, [bad, p1.id]);
      for (const cold of [false, true]) {
        if (cold) e.keyring.clearCache();
        const err = await readName().catch((x) => x);
        // a flipped DEK id may point to no key at all: that is a key lookup failure, still no data
        expect(err, `flip at ${pos}`).toBeInstanceOf(Error);
        expect(err.code, `flip at ${pos}`).toMatch(/ERR_BYOK_(DECRYPTION_FAILED|KEY_NOT_FOUND)/);
      }
    }
    await e.tdb.raw(`update "${e.s.name}".patients set name = $1 where id = $2`, [
      original.subarray(0, 40),
      p1.id,
    ]);
    await expect(readName()).rejects.toBeInstanceOf(DecryptionFailedError);
    await e.tdb.raw(`update "${e.s.name}".patients set name = $1 where id = $2`, [original, p1.id]);
    expect(await readName()).toEqual([{ n: 'victim' }]);

    // another column of the same row
    await e.tdb.raw(`update "${e.s.name}".patients set email = name where id = $1`, [p1.id]);
    await expect(
      withTenant(T1, () =>
        e.db.select({ m: e.s.patients.email }).from(e.s.patients).where(eq(e.s.patients.id, p1.id)),
      ),
    ).rejects.toBeInstanceOf(DecryptionFailedError);
    // another table, same tenant
    await e.tdb.raw(`update "${e.s.name}".visits set reason = $1 where id = $2`, [original, v1.id]);
    await expect(
      withTenant(T1, () =>
        e.db.select({ r: e.s.visits.reason }).from(e.s.visits).where(eq(e.s.visits.id, v1.id)),
      ),
    ).rejects.toBeInstanceOf(DecryptionFailedError);
    // a row of another tenant: read in that tenant's scope is refused (the key belongs to T1)
    await e.tdb.raw(`update "${e.s.name}".patients set name = $1 where id = $2`, [original, p2.id]);
    for (const cold of [false, true]) {
      if (cold) e.keyring.clearCache();
      await expect(
        withTenant(T2, () =>
          e.db.select({ n: e.s.patients.name }).from(e.s.patients).where(eq(e.s.patients.id, p2.id)),
        ),
      ).rejects.toBeInstanceOf(DecryptionFailedError);
    }
  });

  it('fail closed: comparisons with plain values or placeholders, writes without tenant, other tenants’ rows', async () => {
    const p = e.s.patients;
    await withTenant(A, async () => {
      await expect(e.db.select().from(p).where(eq(p.email, 'ada@example.com'))).rejects.toBeInstanceOf(
        EncryptedComparisonError,
      );
      await expect(e.db.select().from(p).where(eq(p.email, 'x'))).rejects.toThrow(/patients\.email/);
      await expect(
        e.db
          .select()
          .from(p)
          .where(inArray(p.name, ['a', 'b'])),
      ).rejects.toBeInstanceOf(EncryptedComparisonError);
      await expect(e.db.select().from(p).where(sql`${p.name} = ${'x'}`)).rejects.toBeInstanceOf(
        EncryptedComparisonError,
      );
      expect(() =>
        e.db
          .select()
          .from(p)
          .where(eq(p.email, sql.placeholder('e')))
          .prepare('never'),
      ).toThrow(EncryptedComparisonError);
      await expect(e.db.update(p).set({ seq: 1 }).where(eq(p.name, 'x'))).rejects.toBeInstanceOf(
        EncryptedComparisonError,
      );
      await expect(e.db.delete(p).where(eq(p.email, 'x'))).rejects.toBeInstanceOf(EncryptedComparisonError);
      await expect(
        e.db.query.patients.findMany({ where: DRIZZLE_1 ? { email: 'x' } : eq(p.email, 'x') }),
      ).rejects.toBeInstanceOf(EncryptedComparisonError);
      if (DRIZZLE_1) {
        // relational queries v2: every object filter on an encrypted column is refused, at any level
        for (const where of [
          { name: { like: 'A%' } },
          { name: { ne: 'x' } },
          { OR: [{ seq: 1 }, { email: { in: ['a'] } }] },
          { NOT: { name: 'x' } },
          { visits: { reason: 'x' } },
          { RAW: (t: typeof p) => eq(t.name, 'x') },
        ]) {
          await expect(e.db.query.patients.findMany({ where })).rejects.toBeInstanceOf(
            EncryptedComparisonError,
          );
        }
        await expect(
          e.db.query.patients.findMany({ with: { visits: { where: { reason: 'x' } } } }),
        ).rejects.toBeInstanceOf(EncryptedComparisonError);
        await expect(e.db.query.patients.findMany({ orderBy: { name: 'asc' } })).rejects.toBeInstanceOf(
          EncryptedComparisonError,
        );
        // orderBy + limit (1.0 flattens them into one chunk list): refused on an encrypted column
        // at any level, fine on a plain one
        await expect(
          e.db.query.patients.findMany({ orderBy: { name: 'desc' }, limit: 1 }),
        ).rejects.toBeInstanceOf(EncryptedComparisonError);
        await expect(
          e.db.query.patients.findMany({
            with: { visits: { orderBy: (v: typeof e.s.visits) => [v.reason], limit: 1 } },
          }),
        ).rejects.toBeInstanceOf(EncryptedComparisonError);
        await e.db.query.patients.findMany({ orderBy: { seq: 'asc' }, limit: 1, offset: 0 });
        await expect(
          e.db.query.patients.findMany({ extras: { n: (t: typeof p) => sql`length(${t.name})` } }),
        ).rejects.toBeInstanceOf(EncryptedComparisonError);
        // isNull / isNotNull on an encrypted column keep their meaning
        await e.db.query.patients.findMany({ where: { email: { isNotNull: true } } });
      }
      // comparisons that never send a plaintext are fine
      await e.db
        .select({ id: p.id })
        .from(p)
        .where(and(isNotNull(p.email), eq(p.tenantId, A)));
    });
    // with a tenant column, an insert outside any scope takes the row's tenant
    await e.db.insert(p).values({ tenantId: A, name: 'row tenant' });
    await expect(e.db.update(p).set({ name: 'no scope' }).where(eq(p.tenantId, A))).rejects.toBeInstanceOf(
      NoTenantError,
    );
    await expect(
      withAnyTenant(() => e.db.update(p).set({ name: 'x' }).where(eq(p.tenantId, A))),
    ).rejects.toBeInstanceOf(NoTenantError);
    await expect(e.db.select().from(p).where(eq(p.tenantId, A))).rejects.toBeInstanceOf(NoTenantError);
    await expect(
      withTenant(B, () => e.db.insert(p).values({ tenantId: A, name: 'wrong tenant' })),
    ).rejects.toBeInstanceOf(TenantMismatchError);
    // another tenant's rows are not returned in a tenant's scope (the query is scoped) ...
    expect(await withTenant(B, () => e.db.select().from(p).where(eq(p.tenantId, A)))).toEqual([]);
    // ... and a ciphertext of A moved into a row of B is refused, warm and cold
    const [src] = await e.tdb.raw<{ name: Buffer }>(
      `select name from "${e.s.name}".patients where tenant_id = $1 limit 1`,
      [A],
    );
    await e.tdb.raw(`insert into "${e.s.name}".patients (tenant_id, name) values ($1, $2)`, [B, src!.name]);
    await expect(withTenant(B, () => e.db.select().from(p))).rejects.toBeInstanceOf(DecryptionFailedError);
    e.keyring.clearCache();
    await expect(withTenant(B, () => e.db.select().from(p))).rejects.toBeInstanceOf(DecryptionFailedError);
    await e.tdb.raw(`delete from "${e.s.name}".patients where tenant_id = $1`, [B]);
    // nothing leaked into the table from the refused statements
    const leaked = await e.tdb.raw<{ n: number }>(
      `select count(*)::int as n from "${e.s.name}".patients where encode(name, 'escape') like '%wrong tenant%'`,
    );
    expect(leaked[0]!.n).toBe(0);
  });

  it('rows of several tenants in one insert take each row’s tenant; a cross-tenant job reads them all', async () => {
    const tenants = [uniqueTenant('m1'), uniqueTenant('m2'), uniqueTenant('m3')];
    await withAnyTenant(() =>
      e.db
        .insert(e.s.patients)
        .values(tenants.map((t, i) => ({ tenantId: t, seq: 100 + i, name: `multi-${t}` }))),
    );
    e.keyring.clearCache();
    const rows = await withAnyTenant(() =>
      e.db
        .select({ t: e.s.patients.tenantId, n: e.s.patients.name })
        .from(e.s.patients)
        .where(inArray(e.s.patients.tenantId, tenants)),
    );
    expect(rows.sort((x: { t: string }, y: { t: string }) => x.t.localeCompare(y.t))).toEqual(
      tenants.sort().map((t) => ({ t, n: `multi-${t}` })),
    );
    // each row is under its own tenant's key: reading one tenant's scope sees its row only
    const own = await withTenant(tenants[0]!, () =>
      e.db.select({ n: e.s.patients.name }).from(e.s.patients).where(eq(e.s.patients.tenantId, tenants[0]!)),
    );
    expect(own).toEqual([{ n: `multi-${tenants[0]}` }]);
  });

  it('a sealed placeholder handed to the driver directly is refused, never stored (e.g. as JSON text)', async () => {
    const T = uniqueTenant('leak');
    const leak = new PendingWrite(T, encryptedState(e.s.patients.name)!, Buffer.from('plaintext secret'));
    await expect(
      e.tdb.raw(`insert into "${e.s.name}".patients (tenant_id, name) values ($1, $2)`, [T, leak]),
    ).rejects.toThrow();
    await expect(
      e.tdb.raw(`insert into "${e.s.name}".patients (tenant_id, plain_note, name) values ($1, $2, '\\x00')`, [
        T,
        leak,
      ]),
    ).rejects.toThrow();
    const n = await e.tdb.raw<{ n: number }>(
      `select count(*)::int as n from "${e.s.name}".patients where tenant_id = $1`,
      [T],
    );
    expect(n[0]!.n).toBe(0);
  });

  it('db.execute returns ciphertext; decryptRows decrypts raw rows in scope', async () => {
    const T = uniqueTenant('raw');
    await withTenant(T, () =>
      e.db.insert(e.s.patients).values({ tenantId: T, name: 'Raw Row', email: 'raw@x.io' }),
    );
    const res = await withTenant(T, () =>
      e.db.execute(sql`select name, email, tenant_id from ${e.s.patients} where tenant_id = ${T}`),
    );
    const rawRows = Array.isArray(res) ? res : (res as { rows: unknown[] }).rows;
    const name = (rawRows[0] as { name: unknown }).name;
    expect(
      typeof name === 'string' ? name : Buffer.from(name as Uint8Array).toString('latin1'),
    ).not.toContain('Raw Row');
    for (const cold of [false, true]) {
      if (cold) e.keyring.clearCache();
      const rows = await withTenant(T, () =>
        decryptRows(e.keyring, res as never, { name: e.s.patients.name, email: e.s.patients.email }),
      );
      expect(rows).toEqual([{ name: 'Raw Row', email: 'raw@x.io', tenant_id: T }]);
    }
    await expect(
      withTenant(uniqueTenant(), () => decryptRows(e.keyring, res as never, { name: e.s.patients.name })),
    ).rejects.toBeInstanceOf(DecryptionFailedError);
  });
});
