import { randomBytes } from 'node:crypto';
import { inspect } from 'node:util';
import { PGlite } from '@electric-sql/pglite';
import { and, eq, inArray, isNull, like, ne, sql } from 'drizzle-orm';
import { alias } from 'drizzle-orm/pg-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BLIND_INDEX_MIGRATION,
  ByokConfigError,
  backfillBlindIndex,
  blindIndexStatus,
  blindIndexValues,
  configureBlindIndexes,
  createKeyring,
  DecryptionFailedError,
  EncryptedComparisonError,
  findByBlindIndex,
  type Kek,
  type Keyring,
  localKek,
  matches,
  NoTenantError,
  PlaceholderLeakError,
  type RotationEvent,
  rotateBlindIndex,
  runBackfill,
  TenantShreddedError,
  UniqueViolationError,
  withAnyTenant,
  withEncryption,
  withTenant,
} from '../src/index.ts';
import { MIGRATIONS } from '../src/store/migrations.ts';
import { type BlindSchema, makeBlindSchema } from './fixtures/blind-schema.ts';
import {
  DRIVERS,
  type DriverName,
  MAIN_DRIVER,
  openDb,
  type TestDb,
  uniqueName,
  uniqueTenant,
} from './helpers/db.ts';
import { DRIZZLE_1 } from './helpers/drizzle-version.ts';

interface BlindDb {
  readonly tdb: TestDb;
  readonly db: TestDb['db'];
  readonly s: BlindSchema;
  readonly keyring: Keyring;
  close(): Promise<void>;
}

/** A wrapped connection, a keyring on a real local KEK, and a fresh schema of tables with blind indexes. */
async function setupBlind(
  driver: DriverName,
  options: {
    pglite?: PGlite;
    kek?: Kek;
    schemaName?: string;
    createTables?: boolean;
    stateMaxAgeMs?: number;
  } = {},
): Promise<BlindDb> {
  const s = makeBlindSchema(options.schemaName ?? uniqueName('byok_blind'));
  const tdb = await openDb(driver, { users: s.users, accounts: s.accounts }, options.pglite);
  const keyring = createKeyring({
    db: tdb.db,
    platformKek: options.kek ?? localKek({ key: randomBytes(32) }),
  });
  withEncryption(tdb.db, keyring, { tenantColumn: 'tenant_id' });
  if (options.stateMaxAgeMs !== undefined)
    configureBlindIndexes(keyring, { stateMaxAgeMs: options.stateMaxAgeMs });
  await keyring.installKeyStore();
  if (options.createTables !== false) for (const stmt of s.ddl) await tdb.raw(stmt);
  return {
    tdb,
    db: tdb.db,
    s,
    keyring,
    close: async () => {
      await keyring.close();
      await tdb.close();
    },
  };
}

async function rawValue(
  e: BlindDb,
  table: string,
  column: string,
  id: string | number,
): Promise<Buffer | null> {
  const [row] = await e.tdb.raw<{ v: unknown }>(
    `select ${column} as v from "${e.s.name}".${table} where id = $1`,
    [id],
  );
  const v = row?.v;
  return v === null || v === undefined ? null : Buffer.isBuffer(v) ? v : Buffer.from(v as Uint8Array);
}

/** An error and everything reachable from it, as text: what could leak into a log. */
function errorText(err: unknown): string {
  const e = err as { message?: string; cause?: unknown };
  let cause = '';
  try {
    cause = JSON.stringify(e.cause) ?? '';
  } catch {
    cause = '(unserializable)';
  }
  return `${e.message} ${inspect(err, { depth: 5 })} ${cause}`;
}

describe('blind index migration', () => {
  it('installKeyStore runs the blind index migration after 0001 and 0002', () => {
    expect(MIGRATIONS.indexOf(BLIND_INDEX_MIGRATION)).toBe(2);
    expect(MIGRATIONS.length).toBeGreaterThanOrEqual(3);
  });
});

describe.each(DRIVERS)('blind indexes on %s', (driver) => {
  let e: BlindDb;
  beforeAll(async () => {
    e = await setupBlind(driver);
  });
  afterAll(async () => {
    await e?.close();
  });

  it('the same emails in two tenants: different index values; eq and inArray return exactly each tenant’s rows', async () => {
    const u = e.s.users;
    const A = uniqueTenant('a');
    const B = uniqueTenant('b');
    const emails = ['ada@example.com', 'grace@example.com', 'alan@example.com'];
    const insert = (t: string) =>
      withTenant(t, () =>
        e.db
          .insert(u)
          .values(emails.map((email, seq) => ({ tenantId: t, seq, email })))
          .returning({ id: u.id, email: u.email }),
      );
    const ra = (await insert(A)) as { id: string; email: string }[];
    const rb = (await insert(B)) as { id: string; email: string }[];
    const seen = new Set<string>();
    for (let i = 0; i < emails.length; i++) {
      const ia = (await rawValue(e, 'users', 'email_idx', ra[i]!.id))!;
      const ib = (await rawValue(e, 'users', 'email_idx', rb[i]!.id))!;
      expect(ia.length).toBe(17);
      expect(ia[0]).toBe(1);
      expect(ib[0]).toBe(1);
      expect(ia.equals(ib)).toBe(false);
      expect(ia.includes(Buffer.from(emails[i]!.slice(0, 4)))).toBe(false);
      seen.add(ia.toString('hex')).add(ib.toString('hex'));
    }
    expect(seen.size).toBe(6);

    for (const [t, rows] of [
      [A, ra],
      [B, rb],
    ] as const) {
      for (const r of rows) {
        const got = await withTenant(t, () =>
          e.db.select({ id: u.id, email: u.email, tenantId: u.tenantId }).from(u).where(eq(u.email, r.email)),
        );
        expect(got).toEqual([{ id: r.id, email: r.email, tenantId: t }]);
      }
      const some = await withTenant(t, () =>
        e.db
          .select({ id: u.id })
          .from(u)
          .where(inArray(u.email, [emails[0]!, emails[2]!, 'nobody@example.com'])),
      );
      expect(some.map((x: { id: string }) => x.id).sort()).toEqual([rows[0]!.id, rows[2]!.id].sort());
      expect(
        await withTenant(t, () => e.db.select({ id: u.id }).from(u).where(eq(u.email, 'nobody@example.com'))),
      ).toEqual([]);
    }

    // A tenant that never wrote finds nothing, and the lookup creates no key for it.
    const C = uniqueTenant('c');
    expect(
      await withTenant(C, () => e.db.select({ id: u.id }).from(u).where(eq(u.email, emails[0]!))),
    ).toEqual([]);
    const keys = await e.tdb.raw<{ n: number }>(
      `select count(*)::int as n from byok.deks where tenant_id = $1`,
      [C],
    );
    expect(keys[0]!.n).toBe(0);
  });

  it('normalization: trim, case folding and NFC; two indexes on one column (exact and case-folded); integer values', async () => {
    const u = e.s.users;
    const T = uniqueTenant('norm');
    const decomposed = '  Zoe\u0308.STRASSE@Example.COM ';
    const [row] = await withTenant(T, () =>
      e.db
        .insert(u)
        .values({ tenantId: T, email: decomposed, phone: 'AbC-1', age: 42 })
        .returning({ id: u.id }),
    );
    const byEmail = (v: string) =>
      withTenant(T, () => e.db.select({ id: u.id, email: u.email }).from(u).where(eq(u.email, v)));
    for (const v of [
      'zo\u00eb.strasse@example.com',
      'ZO\u00cb.STRASSE@EXAMPLE.COM',
      'zo\u00eb.stra\u00dfe@example.com',
      decomposed,
    ]) {
      expect(await byEmail(v), v).toEqual([{ id: row.id, email: decomposed }]);
    }
    expect(await byEmail('zoe.strasse@example.com')).toEqual([]);
    // two indexes on one column: compare the index column meant; the column itself is ambiguous
    const byPhone = (v: string) =>
      withTenant(T, () => e.db.select({ id: u.id }).from(u).where(matches(u.phoneIdx, v)));
    const byPhoneCi = (v: string) =>
      withTenant(T, () =>
        e.db
          .select({ id: u.id })
          .from(u)
          .where(matches(u.phoneCi, [v, 'other'])),
      );
    expect(await byPhone('AbC-1')).toEqual([{ id: row.id }]);
    expect(await byPhone('abc-1')).toEqual([]);
    expect(await byPhone(' AbC-1')).toEqual([]);
    expect(await byPhoneCi('abc-1')).toEqual([{ id: row.id }]);
    expect(await byPhoneCi(' abc-1')).toEqual([]);
    await expect(
      withTenant(T, () => e.db.select({ id: u.id }).from(u).where(eq(u.phone, 'AbC-1'))),
    ).rejects.toThrow(/several blind indexes/);
    expect(() => matches(u.name, 'x')).toThrow(ByokConfigError);
    expect(await byEmail(decomposed.toUpperCase())).toEqual([{ id: row.id, email: decomposed }]);
    expect(
      await withTenant(T, () =>
        e.db
          .select({ id: u.id })
          .from(u)
          .where(matches(u.email, ['none', ' ZOË.strasse@example.com'])),
      ),
    ).toEqual([{ id: row.id }]);
    expect(await withTenant(T, () => e.db.select({ id: u.id }).from(u).where(eq(u.age, 42)))).toEqual([
      { id: row.id },
    ]);
    expect(
      await withTenant(T, () =>
        e.db
          .select({ id: u.id })
          .from(u)
          .where(inArray(u.age, [41, 42])),
      ),
    ).toEqual([{ id: row.id }]);
    expect((await rawValue(e, 'users', 'age_idx', row.id))!.length).toBe(13);
  });

  it('insert, multi-row insert, update, upsert and prepared statements maintain the index; nulls stay null', async () => {
    const u = e.s.users;
    const T = uniqueTenant('w');
    const T2 = uniqueTenant('w2');
    const find = (v: string, t = T) =>
      withTenant(t, () => e.db.select({ id: u.id, seq: u.seq }).from(u).where(eq(u.email, v)));
    const [p] = await withTenant(T, () =>
      e.db.insert(u).values({ tenantId: T, seq: 1, email: 'one@x.io' }).returning(),
    );
    expect(p.emailIdx).toBeInstanceOf(Buffer);
    expect(await find('one@x.io')).toEqual([{ id: p.id, seq: 1 }]);

    const many = await withTenant(T, () =>
      e.db
        .insert(u)
        .values([
          { tenantId: T, seq: 2, email: 'two@x.io' },
          { tenantId: T, seq: 3, email: 'three@x.io' },
          { tenantId: T, seq: 4, email: null },
          { tenantId: T, seq: 5 },
        ])
        .returning({ id: u.id, seq: u.seq }),
    );
    expect(await find('two@x.io')).toEqual([many[0]]);
    expect(await find('three@x.io')).toEqual([many[1]]);
    expect(await rawValue(e, 'users', 'email_idx', many[2].id)).toBeNull();
    expect(await rawValue(e, 'users', 'email_idx', many[3].id)).toBeNull();
    // `= null` matches nothing: refused like any other comparison (isNull is the allowed form)
    await expect(
      withTenant(T, () =>
        e.db
          .select({ id: u.id })
          .from(u)
          .where(eq(u.email, null as never)),
      ),
    ).rejects.toThrow(EncryptedComparisonError);
    expect(
      await withTenant(T, () =>
        e.db
          .select({ id: u.id })
          .from(u)
          .where(and(eq(u.tenantId, T), isNull(u.email))),
      ),
    ).toHaveLength(2);

    // update of the source column rewrites the index; an update of other columns leaves it alone
    await withTenant(T, () => e.db.update(u).set({ email: 'One-Changed@x.io' }).where(eq(u.id, p.id)));
    expect(await find('one@x.io')).toEqual([]);
    expect(await find('one-changed@x.io')).toEqual([{ id: p.id, seq: 1 }]);
    const before = await rawValue(e, 'users', 'email_idx', p.id);
    await withTenant(T, () => e.db.update(u).set({ seq: 11 }).where(eq(u.id, p.id)));
    expect(await rawValue(e, 'users', 'email_idx', p.id)).toEqual(before);
    await withTenant(T, () => e.db.update(u).set({ email: null }).where(eq(u.id, many[1].id)));
    expect(await rawValue(e, 'users', 'email_idx', many[1].id)).toBeNull();
    expect(await find('three@x.io')).toEqual([]);

    // upserts: set from a value, from excluded.email, and upsert keyed by the index itself
    await withTenant(T, () =>
      e.db
        .insert(u)
        .values({ id: p.id, tenantId: T, email: 'ignored@x.io' })
        .onConflictDoUpdate({ target: u.id, set: { email: 'up@x.io' } }),
    );
    expect(await find('up@x.io')).toEqual([{ id: p.id, seq: 11 }]);
    expect(await find('ignored@x.io')).toEqual([]);
    await withTenant(T, () =>
      e.db
        .insert(u)
        .values({ id: p.id, tenantId: T, email: 'excluded@x.io' })
        .onConflictDoUpdate({ target: u.id, set: { email: sql`excluded.email` } }),
    );
    expect(await find('excluded@x.io')).toEqual([{ id: p.id, seq: 11 }]);
    const [byIndex] = await withTenant(T, () =>
      e.db
        .insert(u)
        .values({ tenantId: T, seq: 99, email: ' EXCLUDED@x.io' })
        .onConflictDoUpdate({ target: [u.tenantId, u.emailIdx], set: { seq: 99 } })
        .returning({ id: u.id }),
    );
    expect(byIndex.id).toBe(p.id);
    expect(await find('excluded@x.io')).toEqual([{ id: p.id, seq: 99 }]);

    // prepared statements: placeholders in writes and lookups, executed under two tenants
    const tag = `${driver.replace('-', '_')}_${T.slice(-6)}`;
    const ins = e.db
      .insert(u)
      .values({ tenantId: sql.placeholder('t'), seq: sql.placeholder('seq'), email: sql.placeholder('m') })
      .prepare(`blind_ins_${tag}`);
    await withTenant(T, () => ins.execute({ t: T, seq: 50, m: 'prep@x.io' }));
    await withTenant(T2, () => ins.execute({ t: T2, seq: 51, m: 'PREP@x.io' }));
    const sel = e.db
      .select({ seq: u.seq, tenantId: u.tenantId })
      .from(u)
      .where(eq(u.email, sql.placeholder('m')))
      .prepare(`blind_sel_${tag}`);
    expect(await withTenant(T, () => sel.execute({ m: 'prep@x.io' }))).toEqual([{ seq: 50, tenantId: T }]);
    expect(await withTenant(T2, () => sel.execute({ m: 'prep@x.io' }))).toEqual([{ seq: 51, tenantId: T2 }]);
    const literal = e.db
      .select({ seq: u.seq })
      .from(u)
      .where(eq(u.email, 'prep@x.io'))
      .prepare(`blind_lit_${tag}`);
    expect(await withTenant(T2, () => literal.execute())).toEqual([{ seq: 51 }]);
    expect(await withTenant(T, () => literal.execute())).toEqual([{ seq: 50 }]);
    // inArray with repeated placeholders: each execution computes its own values, per tenant.
    const prepIn = e.db
      .select({ seq: u.seq })
      .from(u)
      .where(inArray(u.email, [sql.placeholder('a'), sql.placeholder('b'), sql.placeholder('a')]))
      .prepare(`blind_in_${tag}`);
    expect(await withTenant(T, () => prepIn.execute({ a: ' PREP@x.io', b: 'prep@x.io' }))).toEqual([
      { seq: 50 },
    ]);
    expect(await withTenant(T2, () => prepIn.execute({ a: 'nobody@x.io', b: 'Prep@X.io' }))).toEqual([
      { seq: 51 },
    ]);
    expect(await withTenant(T, () => prepIn.execute({ a: 'nobody@x.io', b: 'none@x.io' }))).toEqual([]);
  });

  it('relational queries, aliases and joins, subqueries, $count, delete, transactions', async () => {
    const u = e.s.users;
    const T = uniqueTenant('q');
    const [p] = await withTenant(T, () =>
      e.db.insert(u).values({ tenantId: T, seq: 7, email: 'rq@x.io', name: 'Ada' }).returning({ id: u.id }),
    );
    await withTenant(T, async () => {
      // v1 (0.45): callback filters; v2 (1.0): object filters, looked up through the blind index
      const one = await e.db.query.users.findFirst({
        where: DRIZZLE_1 ? { email: 'RQ@x.io' } : eq(u.email, 'RQ@x.io'),
      });
      expect(one).toMatchObject({ id: p.id, name: 'Ada', email: 'rq@x.io' });
      const many = await e.db.query.users.findMany({
        where: DRIZZLE_1
          ? { email: { in: ['rq@x.io', 'other@x.io'] } }
          : (t: typeof u, ops: { inArray: typeof inArray }) =>
              ops.inArray(t.email, ['rq@x.io', 'other@x.io']),
      });
      expect(many.map((r: { id: string }) => r.id)).toEqual([p.id]);
      if (DRIZZLE_1) {
        expect(await e.db.query.users.findMany({ where: { email: 'nobody@x.io' } })).toEqual([]);
        const both = await e.db.query.users.findMany({
          where: { OR: [{ email: { eq: 'rq@x.io' } }, { seq: 99 }], seq: 7 },
        });
        expect(both.map((r: { id: string }) => r.id)).toEqual([p.id]);
        expect(await e.db.query.users.findMany({ where: { NOT: { email: 'rq@x.io' }, seq: 7 } })).toEqual([]);
      }
      const u2 = alias(u, 'u2');
      const joined = await e.db
        .select({ a: u.id, b: u2.name })
        .from(u)
        .innerJoin(u2, eq(u2.seq, u.seq))
        .where(and(eq(u.tenantId, T), eq(u2.email, 'rq@x.io')));
      expect(joined).toEqual([{ a: p.id, b: 'Ada' }]);
      const sub = await e.db
        .select({ id: u.id })
        .from(u)
        .where(inArray(u.id, e.db.select({ id: u.id }).from(u).where(eq(u.email, 'rq@x.io'))));
      expect(sub).toEqual([{ id: p.id }]);
      expect(await e.db.$count(u, eq(u.email, 'rq@x.io'))).toBe(1);
      await e.db.transaction(async (tx: typeof e.db) => {
        await tx.insert(u).values({ tenantId: T, seq: 8, email: 'tx@x.io' });
        const inTx = await tx.select({ seq: u.seq }).from(u).where(eq(u.email, 'tx@x.io'));
        expect(inTx).toEqual([{ seq: 8 }]);
      });
      // a tenant's very first write (no data key, no index key yet) inside a transaction, rolled back, then kept
      const T3 = uniqueTenant('txfirst');
      const first = () =>
        withTenant(T3, () =>
          e.db.transaction(async (tx: typeof e.db) => {
            await tx.insert(u).values({ tenantId: T3, seq: 1, email: 'first@x.io' });
            return tx.select({ seq: u.seq }).from(u).where(eq(u.email, 'first@x.io'));
          }),
        );
      await expect(
        withTenant(T3, () =>
          e.db.transaction(async (tx: typeof e.db) => {
            await tx.insert(u).values({ tenantId: T3, seq: 0, email: 'gone@x.io' });
            throw new Error('roll back');
          }),
        ),
      ).rejects.toThrow('roll back');
      expect(await first()).toEqual([{ seq: 1 }]);
      expect(
        await withTenant(T3, () => e.db.select({ seq: u.seq }).from(u).where(eq(u.email, 'first@x.io'))),
      ).toEqual([{ seq: 1 }]);
      const deleted = await e.db.delete(u).where(eq(u.email, 'rq@x.io')).returning({ id: u.id });
      expect(deleted).toEqual([{ id: p.id }]);
      expect(await e.db.$count(u, eq(u.email, 'rq@x.io'))).toBe(0);
    });
  });

  it('fail closed: other comparisons, columns without an index, lossy indexes in eq, explicit index values, no tenant', async () => {
    const u = e.s.users;
    const T = uniqueTenant('fc');
    const secret = 'secret-plaintext@x.io';
    const errors: unknown[] = [];
    const refused = async (p: PromiseLike<unknown> | (() => unknown), type: new (...a: never[]) => Error) => {
      // builders throw from then() when the statement is refused while it is built
      const err = await Promise.resolve()
        .then(() => (typeof p === 'function' ? p() : p))
        .then(
          () => undefined,
          (x) => x,
        );
      expect(err).toBeInstanceOf(type);
      errors.push(err);
    };
    await withTenant(T, async () => {
      await refused(e.db.select().from(u).where(eq(u.name, secret)), EncryptedComparisonError);
      await refused(e.db.select().from(u).where(ne(u.email, secret)), EncryptedComparisonError);
      await refused(
        e.db
          .select()
          .from(u)
          .where(like(u.email, `%${secret}`)),
        EncryptedComparisonError,
      );
      await refused(e.db.select().from(u).where(sql`${u.email} = ${secret}`), EncryptedComparisonError);
      await refused(e.db.select().from(u).where(eq(u.code, secret)), EncryptedComparisonError);
      await refused(
        e.db
          .select()
          .from(u)
          .where(ne(u.emailIdx, Buffer.from(secret))),
        EncryptedComparisonError,
      );
      await refused(
        e.db.insert(u).values({ tenantId: T, email: secret, emailIdx: Buffer.from(secret) }),
        ByokConfigError,
      );
      await refused(
        e.db
          .update(u)
          .set({ emailIdx: Buffer.from(secret) })
          .where(eq(u.tenantId, T)),
        ByokConfigError,
      );
      await refused(
        e.db
          .update(u)
          .set({ email: sql`${secret}` })
          .where(eq(u.tenantId, T)),
        EncryptedComparisonError,
      );
      await refused(
        () => e.db.insert(u).select(e.db.select().from(u).where(eq(u.tenantId, 'nobody'))),
        ByokConfigError,
      );
    });
    await refused(e.db.select({ id: u.id }).from(u).where(eq(u.email, secret)), NoTenantError);
    await refused(
      withAnyTenant(() => e.db.select({ id: u.id }).from(u).where(eq(u.email, secret))),
      NoTenantError,
    );
    for (const err of errors) expect(errorText(err)).not.toContain('secret-plaintext');
    const leaked = await e.tdb.raw<{ n: number }>(
      `select count(*)::int as n from "${e.s.name}".users where tenant_id = $1`,
      [T],
    );
    expect(leaked[0]!.n).toBe(0);

    // Lookup params stay sealed until execution: nothing to log, nothing to serialize.
    const { params } = e.db.select().from(u).where(eq(u.email, secret)).toSQL();
    // tenant, sealed index value, index version, then the scope tenant twice (tenant isolation)
    expect(params.length).toBe(5);
    expect(inspect(params)).not.toContain('secret-plaintext');
    expect(inspect(params)).toContain('sealed blind index users.email_idx');
    expect(() => JSON.stringify(params)).toThrow(PlaceholderLeakError);
    expect(() => `${params[1]}`).toThrow(PlaceholderLeakError);
  });

  it('unique constraint violations surface as UniqueViolationError naming the column, without values', async () => {
    const u = e.s.users;
    const A = uniqueTenant('ua');
    const B = uniqueTenant('ub');
    await withTenant(A, () => e.db.insert(u).values({ tenantId: A, email: 'dup@x.io' }));
    const err = (await withTenant(A, () => e.db.insert(u).values({ tenantId: A, email: ' DUP@X.IO' })).catch(
      (x: unknown) => x,
    )) as Error;
    expect(err).toBeInstanceOf(UniqueViolationError);
    expect(err).toMatchObject({
      code: 'ERR_BYOK_UNIQUE_VIOLATION',
      name: 'UniqueViolationError',
      column: 'users.email',
      indexColumn: 'users.email_idx',
      constraint: 'users_tenant_email_uq',
      tenantId: A,
    });
    expect(err.message).toContain('users.email');
    const text = errorText(err);
    for (const needle of ['dup@', 'DUP@', '\\x01', 'params', 'Failed query'])
      expect(text).not.toContain(needle);
    // the same email in another tenant is fine
    await withTenant(B, () => e.db.insert(u).values({ tenantId: B, email: 'dup@x.io' }));
    // an update into a duplicate, and inside a transaction
    const [other] = await withTenant(A, () =>
      e.db.insert(u).values({ tenantId: A, email: 'other@x.io' }).returning({ id: u.id }),
    );
    await expect(
      withTenant(A, () => e.db.update(u).set({ email: 'Dup@x.io' }).where(eq(u.id, other.id))),
    ).rejects.toBeInstanceOf(UniqueViolationError);
    await expect(
      withTenant(A, () =>
        e.db.transaction(async (tx: typeof e.db) => {
          await tx.insert(u).values({ tenantId: A, email: 'dup@x.io' });
        }),
      ),
    ).rejects.toMatchObject({ column: 'users.email' });
  });

  it('findByBlindIndex re-checks the candidates of a lossy (1-byte) index: false positives never come back', async () => {
    const u = e.s.users;
    const T = uniqueTenant('lossy');
    const rows = Array.from({ length: 300 }, (_, i) => ({ tenantId: T, seq: i, code: `c-${i}` }));
    await withTenant(T, () => e.db.insert(u).values(rows));
    // 300 values in 256 buckets: some bucket holds several values
    const raw = await e.tdb.raw<{ b: string; n: number; seqs: number[] }>(
      `select encode(code_idx, 'hex') as b, count(*)::int as n, array_agg(seq order by seq) as seqs
         from "${e.s.name}".users where tenant_id = $1 group by 1 having count(*) > 1 order by n desc`,
      [T],
    );
    expect(raw.length).toBeGreaterThan(0);
    const [s1, s2] = raw[0]!.seqs as number[];
    const one = await withTenant(T, () => findByBlindIndex(e.db, u, u.code, `c-${s1}`));
    expect(one.map((r) => r.seq)).toEqual([s1]);
    const two = await withTenant(T, () =>
      findByBlindIndex(e.db, u, u.code, [`c-${s1}`, `c-${s2}`, 'c-none']),
    );
    expect(two.map((r) => r.seq).sort((a, b) => a! - b!)).toEqual([s1, s2]);
    expect(await withTenant(T, () => findByBlindIndex(e.db, u, u.codeIdx, 'c-none'))).toEqual([]);
    // exact indexes work through it too
    await withTenant(T, () => e.db.insert(u).values({ tenantId: T, seq: 1000, email: 'find@x.io' }));
    expect(
      (await withTenant(T, () => findByBlindIndex(e.db, u, u.email, 'FIND@x.io'))).map((r) => r.seq),
    ).toEqual([1000]);
    await expect(withTenant(T, () => e.db.select().from(u).where(eq(u.code, 'c-1')))).rejects.toBeInstanceOf(
      EncryptedComparisonError,
    );
  });

  it('the index key stays across rotateDek; once the tenant is shredded its index cannot be computed', async () => {
    const u = e.s.users;
    const T = uniqueTenant('shred');
    const [r1] = await withTenant(T, () =>
      e.db.insert(u).values({ tenantId: T, email: 'before@x.io', phone: 'p1' }).returning({ id: u.id }),
    );
    await e.keyring.rotateDek(T);
    const [r2] = await withTenant(T, () =>
      e.db.insert(u).values({ tenantId: T, email: 'after@x.io', phone: 'p1' }).returning({ id: u.id }),
    );
    const c1 = (await rawValue(e, 'users', 'email', r1.id))!;
    const c2 = (await rawValue(e, 'users', 'email', r2.id))!;
    expect(c1.subarray(2, 18).equals(c2.subarray(2, 18))).toBe(false); // two data key versions
    expect(await rawValue(e, 'users', 'phone_idx', r1.id)).toEqual(
      await rawValue(e, 'users', 'phone_idx', r2.id),
    );
    const phones = await withTenant(T, () =>
      e.db.select({ id: u.id }).from(u).where(matches(u.phoneIdx, 'p1')),
    );
    expect(phones.map((x: { id: string }) => x.id).sort()).toEqual([r1.id, r2.id].sort());
    const status = await blindIndexStatus(e.db, { index: u.emailIdx, tenantId: T });
    expect(status.versions).toMatchObject([{ version: 1, dekVersion: 1, state: 'active', built: true }]);
    expect(status.optionsChanged).toBe(false);

    await e.keyring.shred(T, { confirm: T });
    const lookup = () =>
      withTenant(T, () => e.db.select({ id: u.id }).from(u).where(eq(u.email, 'before@x.io')));
    await expect(lookup()).rejects.toBeInstanceOf(TenantShreddedError);
    await expect(
      withTenant(T, () => e.db.insert(u).values({ tenantId: T, email: 'new@x.io' })),
    ).rejects.toBeInstanceOf(TenantShreddedError);
    // another instance, with cold caches, cannot compute it either
    const other = createKeyring({ db: e.tdb.db, platformKek: localKek({ key: randomBytes(32) }) });
    await expect(blindIndexValues(other, u, T, { email: 'before@x.io' })).rejects.toBeInstanceOf(
      TenantShreddedError,
    );
    await other.close();
  });
});

describe(`blind index maintenance and scale on ${MAIN_DRIVER}`, () => {
  let e: BlindDb;
  beforeAll(async () => {
    e = await setupBlind(MAIN_DRIVER);
  });
  afterAll(async () => {
    await e?.close();
  });

  it('backfill (retrofit): rows written before the index existed; lookups refused until built; resumes from its checkpoint', async () => {
    const { accounts, accountsBefore } = e.s;
    const T = uniqueTenant('retro');
    await withTenant(T, () =>
      e.db
        .insert(accountsBefore)
        .values(
          Array.from({ length: 50 }, (_, i) => ({ id: i + 1, tenantId: T, login: `User${i + 1}@x.io` })),
        ),
    );
    expect(await rawValue(e, 'accounts', 'login_idx', 1)).toBeNull();
    // a tenant shredded since: its rows can never be indexed, the backfill reports and skips it
    const TS = uniqueTenant('retro-shred');
    await withTenant(TS, () =>
      e.db.insert(accountsBefore).values({ id: 1000, tenantId: TS, login: 'gone@x.io' }),
    );
    await e.keyring.shred(TS, { confirm: TS });
    // the app now runs with the index: its first write creates the key version, not built yet
    await withTenant(T, () => e.db.insert(accounts).values({ id: 51, tenantId: T, login: 'User51@x.io' }));
    expect(await rawValue(e, 'accounts', 'login_idx', 51)).not.toBeNull();
    const lookup = (v: string) =>
      withTenant(T, () => e.db.select({ id: accounts.id }).from(accounts).where(eq(accounts.login, v)));
    await expect(lookup('user1@x.io')).rejects.toThrow(/not built/);

    // a row that cannot be decrypted stops the backfill after two batches of 10
    const good = (await rawValue(e, 'accounts', 'login', 30))!;
    const bad = Buffer.from(good);
    bad[bad.length - 1]! ^= 1;
    await e.tdb.raw(`update "${e.s.name}".accounts set login = $1 where id = 30`, [bad]);
    await expect(
      backfillBlindIndex(e.db, { index: accounts.loginIdx, batchSize: 10 }),
    ).rejects.toBeInstanceOf(DecryptionFailedError);
    const [cp] = await e.tdb.raw<{ progress: { cursor: string } }>(
      `select progress from byok.blind_index_keys where tenant_id = $1`,
      [T],
    );
    expect(cp!.progress.cursor).toBe('20');
    expect(await rawValue(e, 'accounts', 'login_idx', 20)).not.toBeNull();
    expect(await rawValue(e, 'accounts', 'login_idx', 21)).toBeNull();
    await e.tdb.raw(`update "${e.s.name}".accounts set login = $1 where id = 30`, [good]);
    const report = await backfillBlindIndex(e.db, { index: accounts.loginIdx, batchSize: 10 });
    expect(report).toEqual({
      tenants: [{ tenantId: T, version: 1, scanned: 31, updated: 30 }],
      shredded: [TS],
    });
    for (let i = 1; i <= 51; i++) expect(await lookup(`USER${i}@x.io`)).toEqual([{ id: i }]);
    const status = await blindIndexStatus(e.db, { index: accounts.loginIdx, tenantId: T });
    expect(status.versions).toMatchObject([{ version: 1, state: 'active', built: true }]);
  });

  it('retrofit in place: index plaintext rows (passthrough), then the retrofit engine encrypts them; lookups work throughout', async () => {
    const { legacy } = e.s;
    const T1 = uniqueTenant('leg1');
    const T2 = uniqueTenant('leg2');
    for (let i = 1; i <= 40; i++) {
      await e.tdb.raw(`insert into "${e.s.name}".legacy (id, tenant_id, email) values ($1, $2, $3)`, [
        i,
        i <= 30 ? T1 : T2,
        ` Legacy${i}@X.io`,
      ]);
    }
    const lookup = (t: string, v: string) =>
      withTenant(t, () =>
        e.db.select({ id: legacy.id, email: legacy.email }).from(legacy).where(eq(legacy.email, v)),
      );
    await expect(lookup(T1, 'legacy1@x.io')).rejects.toThrow(/not built/);
    const report = await backfillBlindIndex(e.db, { index: legacy.emailIdx, batchSize: 7 });
    expect(report.tenants.map((t) => [t.tenantId, t.updated]).sort()).toEqual(
      [
        [T1, 30],
        [T2, 10],
      ].sort(),
    );
    expect(await lookup(T1, 'LEGACY7@x.io')).toEqual([{ id: 7, email: ' Legacy7@X.io' }]);
    expect(await lookup(T2, 'legacy7@x.io')).toEqual([]);
    const before = await e.tdb.raw<{ id: number; i: string }>(
      `select id, encode(email_idx, 'hex') as i from "${e.s.name}".legacy order by id`,
    );

    await runBackfill(e.db, e.keyring, {
      table: legacy,
      tenantColumn: legacy.tenantId,
      columns: [legacy.email],
    });
    const after = await e.tdb.raw<{ id: number; i: string; e: string }>(
      `select id, encode(email_idx, 'hex') as i, email as e from "${e.s.name}".legacy order by id`,
    );
    expect(after.every((r) => r.e.startsWith('byok1:'))).toBe(true);
    expect(after.map(({ id, i }) => ({ id, i }))).toEqual(before);
    for (let i = 1; i <= 40; i++) {
      expect(await lookup(i <= 30 ? T1 : T2, `legacy${i}@x.io`)).toEqual([
        { id: i, email: ` Legacy${i}@X.io` },
      ]);
    }
  });

  it('EXPLAIN: a lookup on a 100,000-row table is an index scan on (tenant_id, email_idx)', async () => {
    const u = e.s.users;
    const T = uniqueTenant('big');
    // 100,000 rows in 20 tenants (5,000 of them in T), each with an index value, in one statement
    await e.tdb.raw(
      `insert into "${e.s.name}".users (tenant_id, seq, email_idx)
         select case when i % 20 = 0 then $1 else 'bulk-' || (i % 20) end, i,
                '\\x01'::bytea || decode(md5(i::text), 'hex')
         from generate_series(1, 100000) as i`,
      [T],
    );
    const real = await withTenant(T, () =>
      e.db
        .insert(u)
        .values(Array.from({ length: 5 }, (_, i) => ({ tenantId: T, seq: -i, email: `needle${i}@x.io` })))
        .returning({ id: u.id, seq: u.seq }),
    );
    await e.tdb.raw(`analyze "${e.s.name}".users`);
    const [{ n }] = await e.tdb.raw<{ n: number }>(`select count(*)::int as n from "${e.s.name}".users`);
    expect(n).toBeGreaterThanOrEqual(100_005);

    // the statement the middleware sends, with the values it computes
    const q = e.db.select({ id: u.id }).from(u).where(eq(u.email, 'needle3@x.io'));
    const { sql: text } = q.toSQL();
    // the lookup, then the tenant isolation predicate (the scope's tenant, filled at execution)
    expect(text).toMatch(
      // (Drizzle 1.0's `and` adds a pair of parentheses around its operands: same statement)
      / where \(\(\(\(?("[^"]+"\.)*"tenant_id" = \$1 and ("[^"]+"\.)*\(("[^"]+"\.)*"email_idx" = \$2 or ("[^"]+"\.)*"email_idx" = \$3\)\)\)\)? and \(\(\(?("[^"]+"\.)*"tenant_id" = \$4 or \$5::text is null\)\)\)\)?$/,
    );
    const { email_idx: v } = await blindIndexValues(e.keyring, u, T, { email: 'needle3@x.io' });
    // one live key version: the second slot is NULL; during a rotation it holds the other version's value
    const other = Buffer.from(v as Uint8Array).fill(7, 1);
    for (const slots of [
      [v, null],
      [v, other],
    ]) {
      const plan = (await e.tdb.raw<Record<string, string>>(`explain ${text}`, [T, ...slots, T, T]))
        .map((r) => Object.values(r)[0])
        .join('\n');
      expect(plan).toMatch(/Index (Only )?Scan|Bitmap Index Scan/);
      expect(plan).toContain('users_tenant_email_uq');
      expect(plan).not.toMatch(/Seq Scan/);
    }
    expect(await withTenant(T, () => q)).toEqual([
      { id: real.find((r: { seq: number | null }) => r.seq === -3)!.id },
    ]);

    // inArray: one array parameter, the same index scan
    const many = ['needle1@x.io', 'needle4@x.io', 'absent@x.io'];
    const qi = e.db.select({ id: u.id }).from(u).where(inArray(u.email, many));
    const { sql: textIn, params } = qi.toSQL();
    expect(textIn).toMatch(
      / where \(\(\(\(?("[^"]+"\.)*"tenant_id" = \$1 and ("[^"]+"\.)*"email_idx" = any\(\$2::text::bytea\[\]\)\)\)\)? and \(\(\(?("[^"]+"\.)*"tenant_id" = \$3 or \$4::text is null\)\)\)\)?$/,
    );
    expect(params).toHaveLength(4); // lookup, then the tenant isolation predicate
    const literal = `{${(await Promise.all(many.map((m) => blindIndexValues(e.keyring, u, T, { email: m }))))
      .map((x) => `"\\\\x${Buffer.from(x.email_idx as Uint8Array).toString('hex')}"`)
      .join(',')}}`;
    const planIn = (await e.tdb.raw<Record<string, string>>(`explain ${textIn}`, [T, literal, T, T]))
      .map((r) => Object.values(r)[0])
      .join('\n');
    expect(planIn).toMatch(/Index (Only )?Scan|Bitmap Index Scan/);
    expect(planIn).toContain('users_tenant_email_uq');
    expect(planIn).not.toMatch(/Seq Scan/);
    const found = await withTenant(T, () => qi);
    expect(found.map((r: { id: string }) => r.id).sort()).toEqual(
      real
        .filter((r: { seq: number | null }) => r.seq === -1 || r.seq === -4)
        .map((r: { id: string }) => r.id)
        .sort(),
    );
  });

  it('rotation of the index key under concurrent writes loses no lookups, on any of three instances', async () => {
    // Three app instances on one database: A rotates and reads; B writes continuously and reads; C
    // reads. B and C act on cached key versions up to 4 s old; the rotation's grace period (4.5 s)
    // covers that. The checks at each phase pin down which stale view each instance has (the views
    // must outlive a phase on a loaded machine: with 1 s, B's view could expire between 'promoting'
    // and 'pass', and B then rightly wrote the new version where the test expected the stale one).
    const kek = localKek({ key: randomBytes(32) });
    const pglite = MAIN_DRIVER === 'pglite' ? new PGlite() : undefined;
    const A = await setupBlind(MAIN_DRIVER, { pglite, kek });
    const other = { pglite, kek, schemaName: A.s.name, createTables: false, stateMaxAgeMs: 4000 };
    const B = await setupBlind(MAIN_DRIVER, other);
    const C = await setupBlind(MAIN_DRIVER, other);
    let stop = false;
    const loops: Promise<void>[] = [];
    try {
      const ua = A.s.users;
      const ub = B.s.users;
      const T = uniqueTenant('rot');
      const versionOf = async (id: string) => (await rawValue(A, 'users', 'email_idx', id))![0];
      const findOn = async (x: BlindDb, email: string) =>
        (
          await withTenant(T, () =>
            x.db.select({ id: x.s.users.id }).from(x.s.users).where(eq(x.s.users.email, email)),
          )
        ).map((r: { id: string }) => r.id);

      const base = (await withTenant(T, () =>
        A.db
          .insert(ua)
          .values(Array.from({ length: 300 }, (_, i) => ({ tenantId: T, seq: i, email: `base${i}@x.io` })))
          .returning({ id: ua.id, email: ua.email }),
      )) as { id: string; email: string }[];
      const expected = new Map<string, string>(base.map((r) => [r.id, r.email]));

      // PGlite answers without yielding to timers: loops yield so the rotation's grace timer can fire.
      const yieldNow = () => new Promise((res) => setImmediate(res));
      const misses: string[] = [];
      const stats = { inserts: 0, updates: 0, lookups: 0 };
      const writer = (async () => {
        const mine: string[] = [];
        for (let i = 0; !stop; i++) {
          await yieldNow();
          if (mine.length < 20 || i % 3 === 0) {
            const email = `w${i}@x.io`;
            const [r] = await withTenant(T, () =>
              B.db
                .insert(ub)
                .values({ tenantId: T, seq: 10_000 + i, email })
                .returning({ id: ub.id }),
            );
            expected.set(r.id, email);
            mine.push(r.id);
            stats.inserts++;
          } else {
            const id = mine[i % mine.length]!;
            const email = `w${i}-updated@x.io`;
            await withTenant(T, () => B.db.update(ub).set({ email }).where(eq(ub.id, id)));
            expected.set(id, email);
            stats.updates++;
          }
        }
      })();
      const reader = async (x: BlindDb, name: string) => {
        while (!stop) {
          await yieldNow();
          const r = base[Math.floor(Math.random() * base.length)]!;
          const got = await findOn(x, r.email);
          stats.lookups++;
          if (got.length !== 1 || got[0] !== r.id) misses.push(`${name}: ${r.email} -> ${got.length} rows`);
        }
      };
      loops.push(writer, reader(A, 'A'), reader(B, 'B'), reader(C, 'C'));

      const checks: string[] = [];
      const onProgress = async (ev: RotationEvent) => {
        checks.push(ev.phase);
        if (ev.phase === 'pending') {
          // A knows the pending version: it still writes the old one; C, which does not know it yet, finds it.
          const [r] = await withTenant(T, () =>
            A.db
              .insert(ua)
              .values({ tenantId: T, seq: 20_000, email: 'during-pending@x.io' })
              .returning({ id: ua.id }),
          );
          expected.set(r.id, 'during-pending@x.io');
          expect(await versionOf(r.id)).toBe(1);
          expect(await findOn(C, 'during-pending@x.io')).toEqual([r.id]);
        }
        if (ev.phase === 'promoting') {
          // B reloads now, so it is certain to act on the pending phase's view just after promotion.
          B.keyring.evictTenant(T);
          await findOn(B, 'base0@x.io');
        }
        if (ev.phase === 'promoted') {
          // B (stale) still writes the old version; A writes the new one; each finds the other's row,
          // and so does C, whose view predates the rotation unless it reloaded during the grace period.
          const [rb] = await withTenant(T, () =>
            B.db
              .insert(ub)
              .values({ tenantId: T, seq: 20_001, email: 'stale-b@x.io' })
              .returning({ id: ub.id }),
          );
          const [ra] = await withTenant(T, () =>
            A.db
              .insert(ua)
              .values({ tenantId: T, seq: 20_002, email: 'fresh-a@x.io' })
              .returning({ id: ua.id }),
          );
          expected.set(rb.id, 'stale-b@x.io');
          expected.set(ra.id, 'fresh-a@x.io');
          expect(await versionOf(rb.id)).toBe(1);
          expect(await versionOf(ra.id)).toBe(2);
          expect(await findOn(A, 'stale-b@x.io')).toEqual([rb.id]);
          expect(await findOn(B, 'fresh-a@x.io')).toEqual([ra.id]);
          expect(await findOn(C, 'fresh-a@x.io')).toEqual([ra.id]);
        }
        if (ev.phase === 'pass') {
          // Rows are on the new version now, but B (view from 'promoting') still writes the old one:
          // only the sweeps after the grace period can move this row.
          const [rb] = await withTenant(T, () =>
            B.db
              .insert(ub)
              .values({ tenantId: T, seq: 20_003, email: 'after-pass-b@x.io' })
              .returning({ id: ub.id }),
          );
          expected.set(rb.id, 'after-pass-b@x.io');
          expect(await versionOf(rb.id)).toBe(1);
          expect(await findOn(A, 'after-pass-b@x.io')).toEqual([rb.id]);
        }
      };
      // C's view: fresh now, before the rotation starts (it knows version 1 only).
      C.keyring.evictTenant(T);
      await findOn(C, 'base0@x.io');
      const report = await rotateBlindIndex(A.db, {
        index: ua.emailIdx,
        tenantId: T,
        graceMs: 4500,
        batchSize: 100,
        onProgress,
      });
      stop = true;
      await Promise.all(loops);

      expect(checks).toEqual(
        expect.arrayContaining(['pending', 'promoting', 'promoted', 'pass', 'sweep', 'retired']),
      );
      expect(report).toMatchObject({ tenantId: T, from: 1, to: 2, resumed: false });
      expect(stats.inserts + stats.updates).toBeGreaterThan(20);
      expect(stats.lookups).toBeGreaterThan(20);
      expect(misses).toEqual([]);

      // Every row is under the new version, and found by its current value on every instance.
      const [{ n }] = await A.tdb.raw<{ n: number }>(
        `select count(*)::int as n from "${A.s.name}".users where tenant_id = $1 and get_byte(email_idx, 0) <> 2`,
        [T],
      );
      expect(n).toBe(0);
      const all = [...expected.entries()];
      for (const x of [A, B, C]) {
        for (let i = 0; i < all.length; i += 100) {
          const chunk = all.slice(i, i + 100);
          const got: { id: string; email: string | null }[] = await withTenant(T, () =>
            x.db
              .select({ id: x.s.users.id, email: x.s.users.email })
              .from(x.s.users)
              .where(
                inArray(
                  x.s.users.email,
                  chunk.map(([, m]) => m),
                ),
              ),
          );
          expect(new Map(got.map((r) => [r.id, r.email]))).toEqual(new Map(chunk));
        }
      }
      const status = await blindIndexStatus(A.db, { index: ua.emailIdx, tenantId: T });
      expect(status.versions).toMatchObject([
        { version: 1, state: 'retired' },
        { version: 2, state: 'active', built: true },
      ]);
    } finally {
      stop = true;
      await Promise.allSettled(loops);
      await C.close();
      await B.close();
      await A.close();
      await pglite?.close();
    }
  });
});
