import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { PGlite } from '@electric-sql/pglite';
import { asc, eq, sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pgSchema, text, bigserial } from 'drizzle-orm/pg-core';
import {
  ByokConfigError,
  createKeyring,
  DecryptionFailedError,
  encrypted,
  type Keyring,
  localKek,
  RETROFIT_MIGRATION,
  WriteRefusedError,
  withEncryption,
} from '../src/index.ts';
import { planBackfill, rollbackBackfill, runBackfill, verifyBackfill } from '../src/migrate/index.ts';
import { MIGRATIONS } from '../src/store/migrations.ts';
import {
  type RetrofitSchema,
  plainValues,
  retrofitSchema,
  seedSql,
  seedTenant,
} from './fixtures/retrofit-schema.ts';
import { DATABASE_URL, MAIN_DRIVER, openDb, type TestDb, uniqueName } from './helpers/db.ts';

const root = fileURLToPath(new URL('..', import.meta.url));

/** Rows of the raw table, by id. */
async function rawRows(tdb: TestDb, s: RetrofitSchema): Promise<Map<number, Record<string, string | null>>> {
  const rows = await tdb.raw<Record<string, string | null> & { id: string }>(
    `select t.id::text as id, tenant_id, name, email, note from "${s.name}".accounts t order by t.id`,
  );
  return new Map(rows.map((r) => [Number(r.id), r]));
}

describe('retrofit: in-place text columns', () => {
  let pglite: PGlite | undefined;
  let tdb: TestDb;
  let keyring: Keyring;
  let s: RetrofitSchema;
  let prefix: string;
  const N = 3000;
  const T = 7;

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

  async function freshTable(n = N): Promise<void> {
    s = retrofitSchema(uniqueName('retro'));
    prefix = uniqueName('t');
    for (const d of s.ddl) await tdb.raw(d);
    for (const q of seedSql(s.name, n, prefix, T)) await tdb.raw(q);
  }

  it('installKeyStore runs the retrofit migration second, after the key store', () => {
    expect(MIGRATIONS.indexOf(RETROFIT_MIGRATION)).toBe(1);
  });

  it('read modes: passthrough serves mixed plaintext and ciphertext, strict rejects plaintext, read-only refuses writes', async () => {
    await freshTable(50);
    const pass = s.enc('passthrough');
    const strict = s.enc('strict');
    const ro = s.enc('read-only');
    // The app (passthrough) writes rows 1..10 and inserts one: those become ciphertext in place.
    for (let i = 1; i <= 10; i++) {
      const t = seedTenant(prefix, i, T);
      await keyring.withTenant(t, () =>
        tdb.db
          .update(pass)
          .set({ name: `new ${i}` })
          .where(eq(pass.id, i)),
      );
    }
    const t1 = seedTenant(prefix, 1, T);
    const [ins] = await keyring.withTenant(t1, () =>
      tdb.db
        .insert(pass)
        .values({ tenantId: t1, name: 'inserted', email: 'e@x', note: null })
        .returning({ id: pass.id }),
    );
    const raw = await rawRows(tdb, s);
    expect(raw.get(1)!.name).toMatch(/^byok1:/);
    expect(raw.get(1)!.email).toBe(plainValues(1).email); // untouched column stays plaintext
    expect(raw.get(11)!.name).toBe(plainValues(11).name);
    expect(raw.get(ins!.id)!.email).toMatch(/^byok1:/);

    const all = await keyring.withAnyTenant(() => tdb.db.select().from(pass).orderBy(asc(pass.id)));
    expect(all).toHaveLength(51);
    for (const r of all) {
      if (r.id === ins!.id) expect(r).toMatchObject({ name: 'inserted', email: 'e@x', note: null });
      else
        expect(r).toEqual({
          id: r.id,
          tenantId: seedTenant(prefix, r.id, T),
          ...plainValues(r.id),
          ...(r.id <= 10 ? { name: `new ${r.id}` } : {}),
        });
    }
    // strict: a ciphertext row reads, a plaintext row is a decryption failure.
    const t5 = seedTenant(prefix, 5, T);
    const [five] = await keyring.withTenant(t5, () =>
      tdb.db.select({ name: strict.name }).from(strict).where(eq(strict.id, 5)),
    );
    expect(five!.name).toBe('new 5');
    await expect(
      keyring.withTenant(t5, () =>
        tdb.db.select({ email: strict.email }).from(strict).where(eq(strict.id, 5)),
      ),
    ).rejects.toBeInstanceOf(DecryptionFailedError);
    // read-only: reads mixed rows like passthrough, refuses every write.
    const [r12] = await keyring.withTenant(seedTenant(prefix, 12, T), () =>
      tdb.db.select().from(ro).where(eq(ro.id, 12)),
    );
    expect(r12!.name).toBe(plainValues(12).name);
    await expect(
      keyring.withTenant(t5, () => tdb.db.update(ro).set({ name: 'x' }).where(eq(ro.id, 5))),
    ).rejects.toBeInstanceOf(WriteRefusedError);
    // During a backfill (stopped after its first batch) passthrough still serves every row.
    const ac = new AbortController();
    const r = await runBackfill(tdb.db, keyring, s.target(pass), {
      batchSize: 20,
      signal: ac.signal,
      hooks: { afterCommit: () => ac.abort() },
    });
    expect(r.aborted).toBe(true);
    expect(r.rowsSeen).toBe(20);
    const mixed = await keyring.withAnyTenant(() => tdb.db.select().from(pass).orderBy(asc(pass.id)));
    expect(mixed).toEqual(all);
    const v = await verifyBackfill(tdb.db, keyring, s.target(pass));
    expect(v.ok).toBe(false);
    expect(v.columns[0]!.plaintext).toBe(30); // rows 21..50 (rows 1..10 written by the app, 11..20 by the batch)
  });

  it('encrypts every value, keeps NULLs and empty strings, is idempotent, and rolls back to the exact plaintext', async () => {
    await freshTable();
    const before = await rawRows(tdb, s);
    const target = s.target(s.enc('passthrough'));
    const plan = await planBackfill(tdb.db, keyring, target);
    expect(plan.errors).toEqual([]);
    expect(plan.rows).toBe(N);
    expect(plan.tenants).toBe(T);
    const nullEmails = [...before.values()].filter((r) => r.email === null).length;
    expect(plan.columns.map((c) => c.plaintext)).toEqual([N, N - nullEmails, N]);
    const progress: number[] = [];
    const r = await runBackfill(tdb.db, keyring, target, {
      batchSize: 250,
      chunkSize: 1000,
      onProgress: (p) => progress.push(p.rowsDone),
    });
    expect(r).toMatchObject({
      rowsSeen: N,
      written: 3 * N - nullEmails,
      nulls: nullEmails,
      alreadyDone: 0,
      jobDone: true,
    });
    expect(r.unreadable + r.invalid + r.noTenant).toBe(0);
    expect(progress.at(-1)).toBe(N);
    // Every stored value is an envelope (or NULL), bound to its tenant: strict reads return the plaintext.
    const after = await rawRows(tdb, s);
    for (const row of after.values()) {
      expect(row.name).toMatch(/^byok1:/);
      expect(row.note).toMatch(/^byok1:/);
      if (row.email !== null) expect(row.email).toMatch(/^byok1:/);
    }
    const strict = s.enc('strict');
    const read = await keyring.withAnyTenant(() => tdb.db.select().from(strict).orderBy(asc(strict.id)));
    expect(read).toEqual(
      [...before.values()].map((b) => ({
        id: Number(b.id),
        tenantId: b.tenant_id,
        name: b.name,
        email: b.email,
        note: b.note,
      })),
    );
    const v = await verifyBackfill(tdb.db, keyring, target);
    expect(v).toMatchObject({ ok: true, rows: N, plaintext: 0, unreadable: 0, stale: 0 });
    expect(v.columns[1]).toMatchObject({ current: N - nullEmails, nulls: nullEmails });
    // A second run is a new pass that rewrites nothing.
    const again = await runBackfill(tdb.db, keyring, target, { batchSize: 250, chunkSize: 1000 });
    expect(again).toMatchObject({ pass: 2, written: 0, alreadyDone: 3 * N - nullEmails });
    expect(await rawRows(tdb, s)).toEqual(after);
    // Rollback: byte-identical plaintext, NULLs and empty strings included.
    const rb = await rollbackBackfill(tdb.db, keyring, target, { batchSize: 250, chunkSize: 1000 });
    expect(rb).toMatchObject({ operation: 'decrypt', written: 3 * N - nullEmails, unreadable: 0 });
    expect(await rawRows(tdb, s)).toEqual(before);
    expect((await verifyBackfill(tdb.db, keyring, target)).plaintext).toBe(3 * N - nullEmails);
  });

  it('plaintext with commas, quotes, braces and backslashes next to NULLs and empty strings rolls back exactly', async () => {
    // The rollback writes plaintext: a batch holding a comma or an empty string travels as JSON,
    // the others as comma-separated text; both must give back the very values.
    await freshTable(600);
    await tdb.raw(`update "${s.name}".accounts set
        name = case when id % 3 = 0 then 'a,b ' || id when id % 3 = 1 then '"{x}" \\ ' || id else 'plain ' || id end,
        email = case when id % 4 = 0 then null when id % 4 = 1 then ',' else 'e' || id end
      where id <= 300`);
    const before = await rawRows(tdb, s);
    const target = s.target(s.enc('passthrough'));
    const r = await runBackfill(tdb.db, keyring, target, { batchSize: 100, chunkSize: 300 });
    expect(r.unreadable + r.invalid).toBe(0);
    const strict = s.enc('strict');
    const read = await keyring.withAnyTenant(() => tdb.db.select().from(strict).orderBy(asc(strict.id)));
    expect(read.map((x) => [x.name, x.email, x.note])).toEqual(
      [...before.values()].map((b) => [b.name, b.email, b.note]),
    );
    const rb = await rollbackBackfill(tdb.db, keyring, target, { batchSize: 100, chunkSize: 300 });
    expect(rb.unreadable).toBe(0);
    expect(await rawRows(tdb, s)).toEqual(before);
  });

  it('never writes stale data: rows changed, deleted or locked between the read and the rewrite', async () => {
    await freshTable(400);
    const pass = s.enc('passthrough');
    const target = s.target(pass);
    let done = false;
    let locker: Promise<void> | undefined;
    const lockDb = DATABASE_URL ? await openDb(MAIN_DRIVER) : undefined;
    const r = await runBackfill(tdb.db, keyring, target, {
      batchSize: 100,
      hooks: {
        beforeLock: async (keys) => {
          if (done || !keys.includes('5')) return;
          done = true;
          // Between the batch's read and its locked rewrite: the app updates row 5 (ciphertext), a
          // legacy instance writes plaintext to row 6, row 7 is deleted, and row 8 is locked a while.
          await keyring.withTenant(seedTenant(prefix, 5, T), () =>
            tdb.db.update(pass).set({ name: 'app wrote this' }).where(eq(pass.id, 5)),
          );
          await tdb.raw(`update "${s.name}".accounts set note = 'legacy wrote this' where id = 6`);
          await tdb.raw(`delete from "${s.name}".accounts where id = 7`);
          if (lockDb !== undefined) {
            let locked!: () => void;
            const isLocked = new Promise<void>((res) => {
              locked = res;
            });
            locker = lockDb.db.transaction(async (tx) => {
              await tx.execute(sql.raw(`select 1 from "${s.name}".accounts where id = 8 for update`));
              locked();
              await new Promise<void>((res) => setTimeout(res, 300));
            });
            await isLocked;
          }
        },
      },
    });
    await locker;
    await lockDb?.close();
    expect(done).toBe(true);
    if (DATABASE_URL) expect(r.busyRetries).toBeGreaterThan(0);
    const rows = await keyring.withAnyTenant(() => tdb.db.select().from(pass).orderBy(asc(pass.id)));
    expect(rows).toHaveLength(399);
    const byId = new Map(rows.map((x) => [x.id, x]));
    expect(byId.get(5)!.name).toBe('app wrote this');
    expect(byId.get(5)!.note).toBe(plainValues(5).note);
    expect(byId.get(6)!.note).toBe('legacy wrote this');
    expect(byId.has(7)).toBe(false);
    expect(byId.get(8)).toMatchObject(plainValues(8));
    expect((await verifyBackfill(tdb.db, keyring, target)).ok).toBe(true);
  });

  it('batches read ahead are re-planned when the app changes them: a batch whose every row changed writes none, then all', async () => {
    // While batch k is written, batch k+1 is already read and encrypted. The app then rewrites every
    // row of batch k+1 (and deletes one): none of the values prepared from the old rows may land.
    const n = 60;
    await freshTable(n);
    const pass = s.enc('passthrough');
    const target = s.target(pass);
    const expected = new Map<number, { name: string; email: string | null; note: string }>();
    for (let i = 1; i <= n; i++) expected.set(i, plainValues(i));
    let batches = 0;
    const r = await runBackfill(tdb.db, keyring, target, {
      batchSize: 10,
      chunkSize: 30,
      hooks: {
        beforeLock: async (keys) => {
          batches++;
          if (keys.length === 0) return;
          const first = Number(keys[0]);
          if (first % 20 !== 1) return;
          // The next batch (first + 10 .. first + 19): a legacy writer changes every row, one is deleted.
          for (let id = first + 10; id < first + 20 && id <= n; id++) {
            if (id === first + 15) {
              await tdb.raw(`delete from "${s.name}".accounts where id = ${id}`);
              expected.delete(id);
              continue;
            }
            const v = { ...expected.get(id)!, name: `legacy ${id}`, email: null };
            await tdb.raw(`update "${s.name}".accounts set name = $1, email = null where id = ${id}`, [
              v.name,
            ]);
            expected.set(id, v);
          }
        },
      },
    });
    expect(batches).toBeGreaterThanOrEqual(6);
    expect(r.jobDone).toBe(true);
    expect(r.rowsSeen).toBeGreaterThanOrEqual(n - 3);
    const rows = await keyring.withAnyTenant(() =>
      tdb.db.select().from(s.enc('strict')).orderBy(asc(pass.id)),
    );
    expect(new Map(rows.map((x) => [x.id, { name: x.name, email: x.email, note: x.note }]))).toEqual(
      expected,
    );
    expect(await verifyBackfill(tdb.db, keyring, target)).toMatchObject({ ok: true, plaintext: 0 });
  });

  it('after rotateDek, run re-encrypts only the values under the old version', async () => {
    await freshTable(700);
    const target = s.target(s.enc('passthrough'));
    await runBackfill(tdb.db, keyring, target);
    const before = await rawRows(tdb, s);
    const tenant = seedTenant(prefix, 3, T);
    const { version } = await keyring.rotateDek(tenant);
    expect(version).toBe(2);
    const v1 = await verifyBackfill(tdb.db, keyring, target);
    const mine = [...before.values()].filter((r) => r.tenant_id === tenant);
    const values = mine.length * 2 + mine.filter((r) => r.email !== null).length;
    expect(v1).toMatchObject({ ok: true, stale: values });
    const r = await runBackfill(tdb.db, keyring, target);
    expect(r).toMatchObject({ written: values, reencrypted: values });
    const after = await rawRows(tdb, s);
    for (const [id, row] of after) {
      if (row.tenant_id === tenant) expect(row.name).not.toBe(before.get(id)!.name);
      else expect(row).toEqual(before.get(id));
    }
    expect(await verifyBackfill(tdb.db, keyring, target)).toMatchObject({ ok: true, stale: 0 });
    const strict = s.enc('strict');
    const read = await keyring.withTenant(tenant, () =>
      tdb.db.select().from(strict).where(eq(strict.tenantId, tenant)),
    );
    for (const x of read) expect(x).toMatchObject(plainValues(x.id));
  });

  it('a tenant whose key cannot be loaded fails the run, or is skipped and reported with skipTenantErrors', async () => {
    await freshTable(200);
    const target = s.target(s.enc('passthrough'));
    const victim = seedTenant(prefix, 2, T);
    await keyring.rotateDek(victim);
    await keyring.shred(victim, { confirm: victim });
    await expect(runBackfill(tdb.db, keyring, target)).rejects.toMatchObject({
      code: 'ERR_BYOK_TENANT_SHREDDED',
    });
    const r = await runBackfill(tdb.db, keyring, target, { skipTenantErrors: true });
    const victims = [...(await rawRows(tdb, s)).values()].filter((x) => x.tenant_id === victim);
    expect(r.tenantErrors).toEqual([
      expect.objectContaining({ tenantId: victim, code: 'ERR_BYOK_TENANT_SHREDDED' }),
    ]);
    expect(r.tenantSkipped).toBe(victims.length * 2 + victims.filter((x) => x.email !== null).length);
    for (const x of victims) expect(x.name).toBe(plainValues(Number(x.id)).name);
  });

  it('dry run counts and writes nothing; bad configurations are refused with what to fix', async () => {
    await freshTable(300);
    const target = s.target(s.enc('passthrough'));
    const before = await rawRows(tdb, s);
    const dry = await runBackfill(tdb.db, keyring, target, { dryRun: true });
    expect(dry).toMatchObject({ dryRun: true, rowsSeen: 300 });
    expect(dry.written).toBe(900 - [...before.values()].filter((r) => r.email === null).length);
    expect(await rawRows(tdb, s)).toEqual(before);
    const plain = s.plain;
    await expect(
      runBackfill(tdb.db, keyring, { table: plain, tenantColumn: plain.tenantId, columns: [plain.name] }),
    ).rejects.toThrow(/not an encrypted column: declare it with encrypted/);
    const other = retrofitSchema('elsewhere').enc('strict');
    await expect(
      runBackfill(tdb.db, keyring, {
        table: s.enc('strict'),
        tenantColumn: other.tenantId,
        columns: [other.name],
      }),
    ).rejects.toBeInstanceOf(ByokConfigError);
    const strictPlan = await planBackfill(tdb.db, keyring, s.target(s.enc('strict')));
    expect(strictPlan.warnings.join('\n')).toMatch(/strict mode: the app fails to read them/);
    // Declared with bytea storage over a text column: plan says how to fix it.
    const bad = pgSchema(s.name).table('accounts', {
      id: bigserial('id', { mode: 'number' }).primaryKey(),
      tenantId: text('tenant_id').notNull(),
      name: encrypted.text('name'),
    });
    const wrong = await planBackfill(tdb.db, keyring, {
      table: bad,
      tenantColumn: bad.tenantId,
      columns: [bad.name],
    });
    expect(wrong.errors.join('\n')).toMatch(
      /is text but is declared with bytea storage.*storage: 'text'.*shadow-column/,
    );
  });
});

describe('retrofit: shadow columns (text / jsonb → bytea)', () => {
  let pglite: PGlite | undefined;
  let tdb: TestDb;
  let keyring: Keyring;
  let s: RetrofitSchema;
  const prefix = uniqueName('sh');

  beforeAll(async () => {
    pglite = DATABASE_URL ? undefined : new PGlite();
    tdb = await openDb(MAIN_DRIVER, undefined, pglite);
    keyring = createKeyring({ db: tdb.db, platformKek: localKek({ key: randomBytes(32) }) });
    withEncryption(tdb.db, keyring, { tenantColumn: 'tenant_id' });
    await keyring.installKeyStore();
    s = retrofitSchema(uniqueName('shadow'));
    for (const d of s.ddl) await tdb.raw(d);
    await tdb.raw(`insert into "${s.name}".contacts (tenant_id, email, profile)
      select '${prefix}-' || (g % 3), case when g % 10 = 0 then null else 'c' || g || '@x' end,
             ('{"plan":"p' || g || '","seats":' || g || '}')::jsonb from generate_series(1, 500) g`);
  });
  afterAll(async () => {
    await keyring?.close();
    await tdb?.close();
    await pglite?.close();
  });

  it('fills the bytea targets from the sources while the app dual-writes, verifies them, and rolls back', async () => {
    const c = s.shadow;
    // Dual write by the app during the migration: both the plain source and the encrypted target.
    const t0 = `${prefix}-0`;
    const [dual] = await keyring.withTenant(t0, () =>
      tdb.db
        .insert(c)
        .values({
          tenantId: t0,
          email: 'dual@x',
          emailEnc: 'dual@x',
          profile: { plan: 'd', seats: 1 },
          profileEnc: { plan: 'd', seats: 1 },
        })
        .returning({ id: c.id }),
    );
    const r = await runBackfill(tdb.db, keyring, s.shadowTarget, { batchSize: 64, chunkSize: 200 });
    expect(r).toMatchObject({ rowsSeen: 501, written: 450 + 500, alreadyDone: 2, nulls: 50 });
    const rows = await keyring.withAnyTenant(() => tdb.db.select().from(c).orderBy(asc(c.id)));
    for (const x of rows) {
      expect(x.emailEnc).toBe(x.email);
      expect(x.profileEnc).toEqual(x.profile);
    }
    expect(rows.find((x) => x.id === dual!.id)!.profileEnc).toEqual({ plan: 'd', seats: 1 });
    const raw = await tdb.raw<{ email_enc: Uint8Array | null }>(
      `select email_enc from "${s.name}".contacts where email is not null limit 1`,
    );
    expect(raw[0]!.email_enc![0]).toBe(1); // envelope format version
    expect(await verifyBackfill(tdb.db, keyring, s.shadowTarget)).toMatchObject({
      ok: true,
      plaintext: 0,
      mismatched: 0,
    });
    // A legacy write to the source only: verify sees the target no longer matches.
    await tdb.raw(`update "${s.name}".contacts set email = 'changed@x' where id = 3`);
    expect(await verifyBackfill(tdb.db, keyring, s.shadowTarget)).toMatchObject({ ok: false, mismatched: 1 });
    // Rollback: plaintext back into the sources, targets cleared.
    const rb = await rollbackBackfill(tdb.db, keyring, s.shadowTarget, { batchSize: 64 });
    expect(rb.written).toBe(451 + 501);
    const back = await tdb.raw<{
      id: string;
      email: string | null;
      email_enc: unknown;
      profile: unknown;
      profile_enc: unknown;
    }>(
      `select t.id::text as id, email, email_enc, profile::text as profile, profile_enc from "${s.name}".contacts t order by t.id`,
    );
    for (const x of back) {
      expect(x.email_enc).toBeNull();
      expect(x.profile_enc).toBeNull();
    }
    expect(back.find((x) => x.id === '3')!.email).toBe('c3@x'); // the target's value: the last one encrypted
    expect(JSON.parse(back.find((x) => x.id === '42')!.profile as string)).toEqual({
      plan: 'p42',
      seats: 42,
    });
  });
});
