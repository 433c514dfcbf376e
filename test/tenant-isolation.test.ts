import { randomBytes, randomUUID } from 'node:crypto';
import { and, asc, eq, sql } from 'drizzle-orm';
import { drizzle as drizzleMysql } from 'drizzle-orm/mysql-proxy';
import { alias, integer, pgSchema, text, union, uuid } from 'drizzle-orm/pg-core';
import { drizzle as drizzleSqlite } from 'drizzle-orm/sqlite-proxy';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ByokConfigError,
  createKeyring,
  localKek,
  NoTenantError,
  TenantMismatchError,
  withAnyTenant,
  withEncryption,
  withTenant,
} from '../src/index.ts';
import { DRIVERS, type DriverName, openDb, uniqueName, uniqueTenant } from './helpers/db.ts';
import { POOLER_DRIVERS, openPooled } from './helpers/pooler.ts';
import { type EncryptedDb, setupEncryptedDb } from './helpers/setup.ts';
import { makeSchema } from './fixtures/schema.ts';

/** Each configuration the suite runs on: every driver, and the server drivers through PgBouncer. */
const TARGETS: { name: string; driver: DriverName; pooled: boolean }[] = [
  ...DRIVERS.map((d) => ({ name: d, driver: d, pooled: false })),
  ...POOLER_DRIVERS.map((d) => ({ name: `${d} through PgBouncer`, driver: d, pooled: true })),
];

for (const target of TARGETS) {
  describe(`tenant isolation on ${target.name}`, () => {
    let e: EncryptedDb;
    const A = uniqueTenant('a');
    const B = uniqueTenant('b');
    /** id of each tenant's patients, and of their visits. */
    const ids: Record<string, { patients: string[]; visits: string[] }> = {};

    /** A plain table with the tenant column, target of insert ... select. */
    const copies = () =>
      pgSchema(e.s.name).table('copies', {
        id: uuid('id').primaryKey(),
        tenantId: text('tenant_id').notNull(),
        seq: integer('seq'),
      });

    beforeAll(async () => {
      e = await setupEncryptedDb(target.driver, target.pooled ? { open: openPooled } : {});
      await e.tdb.raw(
        `create table "${e.s.name}".copies (id uuid primary key, tenant_id text not null, seq integer)`,
      );
      const { patients, visits, notes } = e.s;
      for (const t of [A, B]) {
        ids[t] = { patients: [], visits: [] };
        await withTenant(t, async () => {
          for (let i = 0; i < 3; i++) {
            const [p] = await e.db
              .insert(patients)
              .values({ tenantId: t, seq: i, name: `${t} patient ${i}`, email: `${i}@${t}` })
              .returning();
            ids[t]!.patients.push(p.id);
            const [v] = await e.db
              .insert(visits)
              .values({ tenantId: t, patientId: p.id, reason: `${t} visit ${i}` })
              .returning();
            ids[t]!.visits.push(v.id);
            await e.db.insert(notes).values({ tenantId: t, visitId: v.id, body: `${t} note ${i}` });
          }
        });
      }
      // A visit of tenant B attached to a patient of tenant A: joins from A must not reach it.
      await withTenant(B, () =>
        e.db.insert(visits).values({ tenantId: B, patientId: ids[A]!.patients[0]!, reason: 'foreign visit' }),
      );
    });
    afterAll(async () => {
      await e?.close();
    });

    it('the README handler works for two tenants: relational queries return only the tenant’s rows, at every level', async () => {
      for (const t of [A, B]) {
        const rows = await withTenant(t, () =>
          e.db.query.patients.findMany({
            with: { visits: { with: { notes: true, patient: true } } },
            orderBy: (p: typeof e.s.patients) => [asc(p.seq)],
          }),
        );
        expect(rows.map((r: { name: string }) => r.name)).toEqual([0, 1, 2].map((i) => `${t} patient ${i}`));
        for (const r of rows) {
          expect(r.tenantId).toBe(t);
          for (const v of r.visits) {
            expect(v.tenantId).toBe(t);
            expect(v.patient.tenantId).toBe(t);
            for (const n of v.notes) expect(n.tenantId).toBe(t);
          }
        }
        const first = await withTenant(t, () => e.db.query.visits.findFirst({ with: { patient: true } }));
        expect(first.tenantId).toBe(t);
      }
    });

    it('selects: filters, joins of every kind, aliases, subqueries, CTEs, set operations, $count', async () => {
      const { patients: p, visits: v } = e.s;
      await withTenant(A, async () => {
        expect(await e.db.select().from(p)).toHaveLength(3);
        // by id of another tenant's row: nothing
        expect(await e.db.select().from(p).where(eq(p.id, ids[B]!.patients[0]!))).toEqual([]);
        const inner = await e.db.select({ reason: v.reason }).from(p).innerJoin(v, eq(v.patientId, p.id));
        expect(inner.map((r) => r.reason).sort()).toEqual([0, 1, 2].map((i) => `${A} visit ${i}`));
        const left = await e.db
          .select({ name: p.name, reason: v.reason })
          .from(p)
          .leftJoin(v, eq(v.patientId, p.id))
          .where(eq(p.id, ids[A]!.patients[0]!));
        expect(left).toEqual([{ name: `${A} patient 0`, reason: `${A} visit 0` }]);
        const right = await e.db
          .select({ name: p.name, reason: v.reason })
          .from(p)
          .rightJoin(v, eq(v.patientId, p.id));
        expect(right.map((r) => r.reason).sort()).toEqual([0, 1, 2].map((i) => `${A} visit ${i}`));
        const full = await e.db
          .select({ name: p.name, reason: v.reason })
          .from(p)
          .fullJoin(v, eq(v.patientId, p.id));
        expect(full).toHaveLength(3);
        for (const r of full) expect(r.reason?.startsWith(A) && r.name?.startsWith(A)).toBe(true);
        const other = alias(p, 'other');
        const self = await e.db.select({ a: p.name, b: other.name }).from(p).innerJoin(other, sql`true`);
        expect(self).toHaveLength(9);
        const sq = e.db.select({ id: p.id, name: p.name }).from(p).as('sq');
        expect(await e.db.select().from(sq)).toHaveLength(3);
        const inList = await e.db
          .select({ id: v.id })
          .from(v)
          .where(sql`${v.patientId} in (${e.db.select({ id: p.id }).from(p)})`);
        expect(inList).toHaveLength(3);
        const cte = e.db.$with('cte').as(e.db.select({ id: p.id }).from(p));
        expect(await e.db.with(cte).select().from(cte)).toHaveLength(3);
        const u = await union(e.db.select({ id: p.id }).from(p), e.db.select({ id: v.id }).from(v));
        expect(u).toHaveLength(6);
        expect(await e.db.$count(p)).toBe(3);
        expect(await e.db.$count(v, eq(v.patientId, ids[A]!.patients[0]!))).toBe(1);
        const counted = await e.db.select({ n: e.db.$count(v, eq(v.patientId, p.id)) }).from(p);
        expect(counted.map((r: { n: number }) => r.n)).toEqual([1, 1, 1]);
      });
      // withAnyTenant: the explicit opt-out sees every tenant
      expect(await withAnyTenant(() => e.db.$count(p))).toBeGreaterThanOrEqual(6);
      expect(
        (await withAnyTenant(() => e.db.select().from(v).where(eq(v.patientId, ids[A]!.patients[0]!))))
          .length,
      ).toBe(2);
    });

    it('statements built or prepared outside a scope are scoped where they execute', async () => {
      const { patients: p } = e.s;
      const q = e.db.select({ tenantId: p.tenantId }).from(p);
      const prepared = e.db.select({ tenantId: p.tenantId }).from(p).prepare(uniqueName('q'));
      for (const t of [A, B]) {
        for (const rows of [await withTenant(t, () => q), await withTenant(t, () => prepared.execute())]) {
          expect(rows.length).toBeGreaterThanOrEqual(3);
          expect(new Set(rows.map((r: { tenantId: string }) => r.tenantId))).toEqual(new Set([t]));
        }
      }
    });

    it('updates, deletes and upserts never reach another tenant’s rows', async () => {
      const { patients: p, visits: v } = e.s;
      const victim = ids[B]!.patients[1]!;
      await withTenant(A, async () => {
        expect(await e.db.update(p).set({ name: 'overwritten' }).where(eq(p.id, victim)).returning()).toEqual(
          [],
        );
        expect(
          await e.db
            .update(v)
            .set({ reason: 'x' })
            .from(p)
            .where(and(eq(v.patientId, p.id), eq(p.id, victim)))
            .returning(),
        ).toEqual([]);
        expect(await e.db.delete(p).where(eq(p.id, victim)).returning()).toEqual([]);
        const up = await e.db
          .insert(p)
          .values({ id: victim, tenantId: A, name: 'upsert' })
          .onConflictDoUpdate({ target: p.id, set: { name: 'upserted over' } })
          .returning();
        expect(up).toEqual([]);
        const own = await e.db
          .insert(p)
          .values({ id: ids[A]!.patients[2]!, tenantId: A, name: 'x' })
          .onConflictDoUpdate({ target: p.id, set: { name: `${A} patient 2` }, setWhere: sql`true` })
          .returning();
        expect(own).toHaveLength(1);
      });
      const [row] = await withTenant(B, () => e.db.select().from(p).where(eq(p.id, victim)));
      expect(row.name).toBe(`${B} patient 1`);
    });

    it('rows written get the scope’s tenant or TenantMismatchError: values, placeholders, SQL, updates, insert ... select', async () => {
      const { patients: p } = e.s;
      await withTenant(A, async () => {
        await expect(
          e.db.update(p).set({ tenantId: B }).where(eq(p.id, ids[A]!.patients[0]!)),
        ).rejects.toBeInstanceOf(TenantMismatchError);
        await expect(
          e.db
            .update(p)
            .set({ tenantId: sql`${B}::text || ''` })
            .where(eq(p.id, ids[A]!.patients[0]!)),
        ).rejects.toBeInstanceOf(TenantMismatchError);
        await expect(
          e.db.insert(p).values({ tenantId: sql`'x'`, plainNote: 'n', name: 'n' }),
        ).rejects.toBeInstanceOf(TenantMismatchError);
        // insert ... select producing another tenant's id
        await expect(
          e.db.insert(copies()).select(
            e.db
              .select({
                id: sql`gen_random_uuid()`.as('id'),
                tenantId: sql`${B}`.as('tenant_id'),
                seq: e.s.patients.seq,
              })
              .from(e.s.patients),
          ),
        ).rejects.toBeInstanceOf(TenantMismatchError);
        await expect(
          e.db.insert(copies()).select(
            e.db
              .select({
                id: sql`gen_random_uuid()`.as('id'),
                tenantId: sql`lower(${e.s.patients.tenantId})`.as('tenant_id'),
                seq: e.s.patients.seq,
              })
              .from(e.s.patients),
          ),
        ).rejects.toBeInstanceOf(TenantMismatchError);
        // a write nested in another statement is checked too: an insert in a CTE writing another
        // tenant's row is refused and writes nothing (its check is found by the build's SQL walk)
        const smuggled = e.db
          .$with('smuggled')
          .as(
            e.db
              .insert(copies())
              .values({ id: randomUUID(), tenantId: B, seq: -1 })
              .returning({ id: copies().id }),
          );
        await expect(e.db.with(smuggled).select().from(smuggled)).rejects.toBeInstanceOf(TenantMismatchError);
        expect(await withAnyTenant(() => e.db.$count(copies(), eq(copies().seq, -1)))).toBe(0);
        // copying the tenant's own rows (tenant column of a scoped table) works and copies only them
        const own = await e.db.$count(e.s.patients);
        await e.db.insert(copies()).select(
          e.db
            .select({
              id: sql`gen_random_uuid()`.as('id'),
              tenantId: e.s.patients.tenantId,
              seq: e.s.patients.seq,
            })
            .from(e.s.patients),
        );
        expect(await withAnyTenant(() => e.db.$count(copies()))).toBe(own);
        // a row without a tenant value gets the scope's tenant
        const [given] = await e.db
          .insert(p)
          .values({ name: 'no tenant given' } as never)
          .returning();
        expect(given.tenantId).toBe(A);
      });
      const ins = e.db
        .insert(p)
        .values({ tenantId: sql.placeholder('t'), name: sql.placeholder('name') })
        .returning()
        .prepare(uniqueName('ins'));
      await expect(withTenant(A, () => ins.execute({ t: B, name: 'smuggled' }))).rejects.toBeInstanceOf(
        TenantMismatchError,
      );
      const [mine] = await withTenant(A, () => ins.execute({ t: A, name: 'prepared own' }));
      expect(mine.name).toBe('prepared own');
      // withAnyTenant accepts the same prepared insert, each row encrypted under its own tenant
      const rows = await withAnyTenant(async () => [
        ...(await ins.execute({ t: A, name: 'any a' })),
        ...(await ins.execute({ t: B, name: 'any b' })),
      ]);
      expect(rows.map((r: { tenantId: string }) => r.tenantId)).toEqual([A, B]);
      for (const t of [A, B]) {
        const got = await withTenant(t, () => e.db.select().from(p));
        expect(got.some((r: { name: string }) => r.name === `any ${t === A ? 'a' : 'b'}`)).toBe(true);
      }
      // a prepared insert whose row carries a literal tenant is checked where it executes
      const lit = e.db
        .insert(e.s.visits)
        .values({ tenantId: B, patientId: ids[B]!.patients[0]!, reason: null })
        .prepare(uniqueName('lit'));
      await expect(withTenant(A, () => lit.execute())).rejects.toBeInstanceOf(TenantMismatchError);
      // tenant ids follow one rule on every path: a 300-character id in a row is refused
      const long = 'x'.repeat(300);
      await expect(
        withAnyTenant(() => e.db.insert(p).values({ tenantId: long, name: 'n' })),
      ).rejects.toBeInstanceOf(ByokConfigError);
      await expect(withAnyTenant(() => ins.execute({ t: long, name: 'n' }))).rejects.toBeInstanceOf(
        ByokConfigError,
      );
      await expect(withAnyTenant(() => ins.execute({ t: 'ctl\u0001', name: 'n' }))).rejects.toBeInstanceOf(
        ByokConfigError,
      );
      // outside any scope a row needs its tenant
      await expect(
        e.db.insert(e.s.visits).values({ patientId: ids[A]!.patients[0]! } as never),
      ).rejects.toBeInstanceOf(NoTenantError);
      const leaked = await e.tdb.raw<{ n: number }>(
        `select count(*)::int as n from "${e.s.name}".patients where tenant_id not in ($1, $2)`,
        [A, B],
      );
      expect(leaked[0]!.n).toBe(0);
    });

    it('property: for random tenants, rows and join shapes, a scoped query returns exactly the oracle’s rows', async () => {
      const { patients: p, visits: v } = e.s;
      const tenants = [A, B];
      await fc.assert(
        fc.asyncProperty(
          fc.constantFrom(...tenants),
          fc.constantFrom('inner', 'left', 'right', 'full'),
          fc.integer({ min: 0, max: 2 }),
          async (t, join, seq) => {
            const base = e.db.select({ pt: p.tenantId, vt: v.tenantId }).from(p);
            const on = eq(v.patientId, p.id);
            const q =
              join === 'inner'
                ? base.innerJoin(v, on)
                : join === 'left'
                  ? base.leftJoin(v, on)
                  : join === 'right'
                    ? base.rightJoin(v, on)
                    : base.fullJoin(v, on);
            const rows = await withTenant(t, () => q.where(sql`${p.seq} is null or ${p.seq} >= ${seq}`));
            for (const r of rows) {
              if (r.pt !== null) expect(r.pt).toBe(t);
              if (r.vt !== null) expect(r.vt).toBe(t);
            }
            const oracle = await e.tdb.raw<{ n: number }>(
              `select count(*)::int as n from "${e.s.name}".patients where tenant_id = $1 and seq >= $2`,
              [t, seq],
            );
            const withPatient = rows.filter((r: { pt: string | null }) => r.pt !== null).length;
            if (join === 'inner' || join === 'left') expect(withPatient).toBeGreaterThanOrEqual(oracle[0]!.n);
          },
        ),
        { numRuns: 12 },
      );
    });
  });
}

describe('configuration is checked', () => {
  it('tenantColumn must name a column of every table with encrypted columns (database or property name)', async () => {
    const s = makeSchema(uniqueName('cfg'));
    const tdb = await openDb(DRIVERS[0]!, s.relational);
    try {
      const keyring = createKeyring({ db: tdb.db, platformKek: localKek({ key: randomBytes(32) }) });
      let err: unknown;
      try {
        withEncryption(tdb.db, keyring, { tenantColumn: 'tenant' });
      } catch (x) {
        err = x;
      }
      expect(err).toBeInstanceOf(ByokConfigError);
      expect((err as Error).message).toContain("'tenant_id' (property tenantId)");
      // the property name is accepted and means the same column
      withEncryption(tdb.db, keyring, { tenantColumn: 'tenantId' });
      await keyring.close();
    } finally {
      await tdb.close();
    }
  });

  it('MySQL and SQLite Drizzle instances are refused up front', () => {
    const kek = localKek({ key: randomBytes(32) });
    const sqlite = drizzleSqlite(async () => ({ rows: [] }));
    const mysql = drizzleMysql(async () => ({ rows: [] }));
    for (const db of [sqlite, mysql]) {
      expect(() => createKeyring({ db: db as never, platformKek: kek })).toThrow(ByokConfigError);
      expect(() => createKeyring({ db: db as never, platformKek: kek })).toThrow(/PostgreSQL/);
    }
  });
});
