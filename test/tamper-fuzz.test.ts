import { inspect } from 'node:util';
import { eq } from 'drizzle-orm';
import { integer, pgSchema, text } from 'drizzle-orm/pg-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DecryptionFailedError, decryptRows, encrypted, withTenant } from '../src/index.ts';
import { MAIN_DRIVER, uniqueTenant } from './helpers/db.ts';
import { guardTables } from './helpers/guard-tables.ts';
import { type EncryptedDb, setupEncryptedDb } from './helpers/setup.ts';

/**
 * Tamper fuzz: stored values of tenant A's `acct.email` are mutated (bit flips, truncation,
 * extension, header and DEK id edits, swaps across columns, tables and tenants), stored in
 * PostgreSQL, and read back in A's scope. Every one is the one `DecryptionFailedError` (a swap
 * across rows of the same tenant and column is a valid ciphertext of that binding: it reads as the
 * moved value, never as anything else). The counting KEK proves no other tenant's data key is
 * unwrapped, and the other tenants' health is unchanged.
 */

// 10,250 values, of which 10,045 are tampered (the rest are same-binding swaps across rows)
const MUTATIONS = Number(process.env.TAMPER_FUZZ_MUTATIONS ?? 10_250);
const SEED = Number(process.env.TAMPER_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const DEK_ID = 2;
const HEADER = 18;

function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe(`tamper fuzz on ${MAIN_DRIVER}`, () => {
  let e: EncryptedDb;
  let t: ReturnType<typeof guardTables>;
  let fuzz: ReturnType<typeof fuzzTable>;
  const A = uniqueTenant('fz-a');
  const B = uniqueTenant('fz-b');
  const C = uniqueTenant('fz-shredded');

  function fuzzTable(schema: string) {
    // Reads as acct.email: the same context, so a value is judged exactly as acct.email would be.
    return pgSchema(schema).table('fuzz', {
      id: integer('id').primaryKey(),
      tenantId: text('tenant_id').notNull(),
      email: encrypted.text('email', { context: `${schema}.acct.email` }),
    });
  }

  const stored = {
    a: [] as Buffer[],
    aNote: [] as Buffer[],
    aOther: [] as Buffer[],
    aV2: [] as Buffer[],
    b: [] as Buffer[],
    c: [] as Buffer[],
  };
  const plainOf = new Map<string, string>();

  beforeAll(async () => {
    e = await setupEncryptedDb(MAIN_DRIVER);
    t = guardTables(e.s.name);
    for (const d of t.ddl) await e.tdb.raw(d);
    await e.tdb.raw(
      `create table "${e.s.name}".fuzz (id integer primary key, tenant_id text not null, email bytea)`,
    );
    fuzz = fuzzTable(e.s.name);
    const rows = (tenantId: string, from: number, n: number) =>
      Array.from({ length: n }, (_, i) => ({
        id: from + i,
        tenantId,
        email: `${tenantId}-${i}@x.io`,
        note: `note ${i}`,
      }));
    await withTenant(A, async () => {
      await e.db.insert(t.acct).values(rows(A, 1, 20));
      await e.db.insert(t.other).values(rows(A, 1, 5).map(({ note: _, ...r }) => r));
    });
    await e.keyring.rotateDek(A);
    await withTenant(A, () => e.db.insert(t.acct).values(rows(A, 21, 5)));
    await withTenant(B, () => e.db.insert(t.acct).values(rows(B, 101, 10)));
    await withTenant(C, () => e.db.insert(t.acct).values(rows(C, 201, 5)));
    await e.keyring.shred(C, { confirm: C });
    const raw = await e.tdb.raw<{ id: number; tenant_id: string; email: Buffer; note: Buffer }>(
      `select id, tenant_id, email, note from "${e.s.name}".acct order by id`,
    );
    for (const r of raw) {
      const email = Buffer.from(r.email);
      if (r.tenant_id === A) {
        (r.id <= 20 ? stored.a : stored.aV2).push(email);
        stored.aNote.push(Buffer.from(r.note));
        plainOf.set(email.toString('hex'), `${A}-${r.id <= 20 ? r.id - 1 : r.id - 21}@x.io`);
      } else if (r.tenant_id === B) stored.b.push(email);
      else stored.c.push(email);
    }
    const other = await e.tdb.raw<{ email: Buffer }>(`select email from "${e.s.name}".other`);
    stored.aOther.push(...other.map((r) => Buffer.from(r.email)));
  });
  afterAll(() => e?.close());

  it(`${MUTATIONS} mutations of stored values: only DecryptionFailedError, no foreign unwrap`, async () => {
    console.log(`tamper fuzz: ${MUTATIONS} mutations, seed ${SEED} (rerun with TAMPER_FUZZ_SEED=${SEED})`);
    const rnd = prng(SEED);
    const int = (n: number) => Math.floor(rnd() * n);
    const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
    const withId = (env: Buffer, from: Buffer) => {
      const out = Buffer.from(env);
      from.copy(out, DEK_ID, DEK_ID, HEADER);
      return out;
    };
    const classes: Record<string, () => Buffer> = {
      'bit flip': () => {
        const b = Buffer.from(pick(stored.a));
        b[int(b.length)]! ^= 1 << int(8);
        return b;
      },
      truncation: () => {
        const b = pick(stored.a);
        return Buffer.from(b.subarray(0, int(b.length)));
      },
      extension: () =>
        Buffer.concat([pick(stored.a), Buffer.from(Array.from({ length: 1 + int(32) }, () => int(256)))]),
      'header byte': () => {
        const b = Buffer.from(pick(stored.a));
        const at = int(2);
        b[at] = (b[at]! + 1 + int(255)) & 0xff;
        return b;
      },
      'dek id: random bytes': () => {
        const original = pick(stored.a);
        const b = Buffer.from(original);
        for (let i = DEK_ID; i < HEADER; i++) if (rnd() < 0.3) b[i] = int(256);
        if (b.equals(original)) b[DEK_ID + int(16)]! ^= 0x80;
        return b;
      },
      'dek id: other tenant': () => withId(pick(stored.a), pick(stored.b)),
      'dek id: shredded tenant': () => withId(pick(stored.a), pick(stored.c)),
      'dek id: own other version': () => withId(pick(stored.a), pick(stored.aV2)),
      'swap: other column': () => pick(stored.aNote),
      'swap: other table': () => pick(stored.aOther),
      'swap: other tenant': () => pick(stored.b),
      'swap: shredded tenant': () => pick(stored.c),
      'random bytes': () => Buffer.from(Array.from({ length: int(120) }, () => int(256))),
    };
    const names = Object.keys(classes);
    const counts: Record<string, number> = Object.fromEntries(
      [...names, 'swap: other row (same binding)'].map((n) => [n, 0]),
    );
    const healthBefore = await e.tdb.raw(
      `select tenant_id, health, last_error from byok.tenants where tenant_id in ($1, $2) order by 1`,
      [B, C],
    );
    e.keyring.clearCache();
    e.kek.reset();
    let id = 0;
    let viaSelect = 0;
    const BATCH = 500;
    while (id < MUTATIONS) {
      const batch: { id: number; cls: string; value: Buffer }[] = [];
      for (let i = 0; i < BATCH && id < MUTATIONS; i++, id++) {
        // one in 50 is a swap across rows of the same tenant and column (a valid ciphertext)
        if (id % 50 === 49) {
          batch.push({ id, cls: 'swap: other row (same binding)', value: pick(stored.a) });
          continue;
        }
        const cls = names[id % names.length]!;
        batch.push({ id, cls, value: classes[cls]!() });
      }
      await e.tdb.raw(`delete from "${e.s.name}".fuzz`);
      const params: unknown[] = [];
      const tuples = batch.map((m, i) => {
        params.push(m.id, A, m.value);
        return `($${3 * i + 1}, $${3 * i + 2}, $${3 * i + 3})`;
      });
      await e.tdb.raw(
        `insert into "${e.s.name}".fuzz (id, tenant_id, email) values ${tuples.join(', ')}`,
        params,
      );
      const back = await e.tdb.raw<{ id: number; email: Buffer }>(
        `select id, email from "${e.s.name}".fuzz order by id`,
      );
      expect(back).toHaveLength(batch.length);
      await withTenant(A, async () => {
        for (const [i, row] of back.entries()) {
          const m = batch[i]!;
          const full = i % 50 === 0; // the full query path for some: a Drizzle select of the row
          if (full) viaSelect++;
          const read = full
            ? e.db.select({ email: fuzz.email }).from(fuzz).where(eq(fuzz.id, row.id))
            : decryptRows(e.keyring, [row], { email: fuzz.email });
          const got = await Promise.resolve(read).then(
            (rows) => ({ value: (rows as { email: unknown }[])[0]!.email }),
            (err: unknown) => ({ err }),
          );
          if (m.cls === 'swap: other row (same binding)') {
            expect(got).toEqual({ value: plainOf.get(m.value.toString('hex')) });
          } else {
            if (!('err' in got) || !(got.err instanceof DecryptionFailedError)) {
              throw new Error(`${m.cls}: expected DecryptionFailedError, got ${inspect(got)}`);
            }
            const text = `${got.err.message} ${inspect(got.err)}`;
            if (text.includes(B) || text.includes(C))
              throw new Error(`${m.cls}: the error names another tenant`);
          }
          counts[m.cls]!++;
        }
      });
    }
    const lines = Object.entries(counts).map(([k, n]) => `  ${k.padEnd(32)} ${n}`);
    console.log(
      `tamper fuzz: ${id} mutations (${viaSelect} through a Drizzle select), per class:\n${lines.join('\n')}`,
    );
    console.log(`tamper fuzz: KMS unwraps ${e.kek.calls.unwrap}, all for tenant ${A}`);
    expect(Object.values(counts).reduce((a, b) => a + b, 0)).toBe(MUTATIONS);
    for (const n of names) expect(counts[n]).toBeGreaterThan(0);
    expect(e.kek.unwrapTenants.length).toBeGreaterThan(0);
    expect(new Set(e.kek.unwrapTenants)).toEqual(new Set([A]));
    const healthAfter = await e.tdb.raw(
      `select tenant_id, health, last_error from byok.tenants where tenant_id in ($1, $2) order by 1`,
      [B, C],
    );
    expect(healthAfter).toEqual(healthBefore);
  }, 300_000);
});
