/**
 * Section "blind-index": equality lookups on a real PostgreSQL through drizzle-orm + postgres.js.
 *
 * One table of 100,000 rows (10 tenants × 10,000) holding each email twice: in plaintext
 * (`email_plain`, btree on (tenant_id, email_plain)) and encrypted with a blind index (`email`,
 * `email_idx`, btree on (tenant_id, email_idx)). Each round looks up the same random existing
 * emails, one query at a time on one connection, by every variant (order rotated per lookup):
 * - plaintext column, plain Drizzle (no encryption anywhere);
 * - plaintext column through the `withEncryption` db;
 * - blind index `eq(t.email, x)`, selecting the id only (lookup cost alone);
 * - blind index `eq(t.email, x)`, selecting id and email (lookup + decrypting the email);
 * - `inArray` of 10 emails, plaintext vs blind index.
 * Latency per query: median and p95 over all lookups after warmup.
 */
import { randomBytes } from 'node:crypto';
import { and, eq, inArray } from 'drizzle-orm';
import { integer, pgTable, text } from 'drizzle-orm/pg-core';
import { drizzle } from 'drizzle-orm/postgres-js';
import postgres from 'postgres';
import { blindIndex, createKeyring, encrypted, localKek, withEncryption, withTenant } from '../src/index.ts';
import {
  type BenchContext,
  checkTarget,
  fmtMs,
  fmtRatio,
  markdownTable,
  median,
  printSectionHeader,
  redactUrl,
  type Section,
  serverVersion,
} from './lib.ts';

const TABLE = 'byok_bench_blind';
const TENANTS = 10;
const PER_TENANT = 10_000;
const RUN = `${process.pid}-${Date.now()}`;
const tenantName = (t: number) => `bench-bi-${RUN}-${t}`;

const table = pgTable(TABLE, {
  id: integer('id').primaryKey(),
  tenantId: text('tenant_id').notNull(),
  emailPlain: text('email_plain').notNull(),
  email: encrypted.text('email'),
  emailIdx: blindIndex('email_idx', { of: 'email', normalize: { trim: true, caseFold: true } }),
});

function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] as number;
}

function fmtUs(ms: number): string {
  return ms >= 1 ? fmtMs(ms).replace(/\.(\d)\d* ms/, '.$1 ms') : `${Math.round(ms * 1000)} µs`;
}

async function run(ctx: BenchContext): Promise<void> {
  const lookups = ctx.quick ? 300 : 2000;
  const warmup = ctx.quick ? 50 : 200;
  const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
  const client = postgres(url, { max: 1, onnotice: () => {} });
  const tenants = Array.from({ length: TENANTS }, (_, t) => tenantName(t));
  try {
    const plainDb = drizzle({ client });
    const db = drizzle({ client });
    const keyring = createKeyring({
      db: plainDb,
      platformKek: localKek({ key: randomBytes(32) }),
      cache: { maxAgeMs: 3_600_000 },
    });
    withEncryption(db, keyring, { tenantColumn: 'tenant_id' });
    await keyring.installKeyStore();
    await client.unsafe(`drop table if exists ${TABLE};
      create table ${TABLE} (id integer primary key, tenant_id text not null, email_plain text not null,
        email bytea, email_idx bytea);
      create index ${TABLE}_plain_idx on ${TABLE} (tenant_id, email_plain);
      create unique index ${TABLE}_blind_uq on ${TABLE} (tenant_id, email_idx);`);

    const emailOf = (t: number, i: number) =>
      `user${i}.${randomBytes(3).toString('hex')}@tenant${t}.example.com`;
    const emails: string[][] = [];
    const t0 = performance.now();
    for (let t = 0; t < TENANTS; t++) {
      const list = Array.from({ length: PER_TENANT }, (_, i) => emailOf(t, i));
      emails.push(list);
      await withTenant(tenants[t]!, async () => {
        for (let i = 0; i < PER_TENANT; i += 2000) {
          await db.insert(table).values(
            list.slice(i, i + 2000).map((e, j) => ({
              id: t * PER_TENANT + i + j + 1,
              tenantId: tenants[t]!,
              emailPlain: e,
              email: e,
            })),
          );
        }
      });
    }
    const insertMs = performance.now() - t0;
    await client.unsafe(`vacuum analyze ${TABLE}`);

    const pick = () => {
      const t = Math.floor(Math.random() * TENANTS);
      const i = Math.floor(Math.random() * PER_TENANT);
      return { t, i, tenant: tenants[t]!, email: emails[t]![i]!, id: t * PER_TENANT + i + 1 };
    };
    const check = (rows: { id: number }[], id: number, what: string) => {
      if (rows.length !== 1 || rows[0]!.id !== id) throw new Error(`${what}: wrong rows`);
    };
    const checkMany = (rows: { id: number }[], ids: number[], what: string) => {
      const got = rows.map((r) => r.id).sort((a, b) => a - b);
      const want = [...ids].sort((a, b) => a - b);
      if (got.join() !== want.join()) throw new Error(`${what}: wrong rows`);
    };

    type Probe = ReturnType<typeof pick> & { many: { email: string; id: number }[] };
    const variants: { id: string; label: string; fn: (p: Probe) => Promise<void> }[] = [
      {
        id: 'plain',
        label: 'plaintext column, plain Drizzle (no encryption)',
        fn: async (p) =>
          check(
            await plainDb
              .select({ id: table.id, email: table.emailPlain })
              .from(table)
              .where(and(eq(table.tenantId, p.tenant), eq(table.emailPlain, p.email))),
            p.id,
            'plain',
          ),
      },
      {
        id: 'plainWrapped',
        label: 'plaintext column through the `withEncryption` db',
        fn: async (p) =>
          check(
            await withTenant(p.tenant, () =>
              db
                .select({ id: table.id, email: table.emailPlain })
                .from(table)
                .where(and(eq(table.tenantId, p.tenant), eq(table.emailPlain, p.email))),
            ),
            p.id,
            'plainWrapped',
          ),
      },
      {
        id: 'blindId',
        label: 'blind index `eq(t.email, x)`, select id',
        fn: async (p) =>
          check(
            await withTenant(p.tenant, () =>
              db.select({ id: table.id }).from(table).where(eq(table.email, p.email)),
            ),
            p.id,
            'blindId',
          ),
      },
      {
        id: 'blind',
        label: 'blind index `eq(t.email, x)`, select id + email (decrypted)',
        fn: async (p) => {
          const rows = await withTenant(p.tenant, () =>
            db.select({ id: table.id, email: table.email }).from(table).where(eq(table.email, p.email)),
          );
          check(rows, p.id, 'blind');
          if (rows[0]!.email !== p.email) throw new Error('blind: wrong plaintext');
        },
      },
      {
        id: 'plainIn',
        label: '`inArray` of 10 emails, plaintext column, plain Drizzle',
        fn: async (p) =>
          checkMany(
            await plainDb
              .select({ id: table.id, email: table.emailPlain })
              .from(table)
              .where(
                and(
                  eq(table.tenantId, p.tenant),
                  inArray(
                    table.emailPlain,
                    p.many.map((m) => m.email),
                  ),
                ),
              ),
            p.many.map((m) => m.id),
            'plainIn',
          ),
      },
      {
        id: 'blindIn',
        label: '`inArray` of 10 emails, blind index, select id + email',
        fn: async (p) =>
          checkMany(
            await withTenant(p.tenant, () =>
              db
                .select({ id: table.id, email: table.email })
                .from(table)
                .where(
                  inArray(
                    table.email,
                    p.many.map((m) => m.email),
                  ),
                ),
            ),
            p.many.map((m) => m.id),
            'blindIn',
          ),
      },
    ];

    const samples = new Map<string, number[]>(variants.map((v) => [v.id, []]));
    for (let n = 0; n < warmup + lookups; n++) {
      const base = pick();
      const many = Array.from({ length: 10 }, () => {
        const i = Math.floor(Math.random() * PER_TENANT);
        return { email: emails[base.t]![i]!, id: base.t * PER_TENANT + i + 1 };
      });
      const uniqueMany = [...new Map(many.map((m) => [m.id, m])).values()];
      const probe: Probe = { ...base, many: uniqueMany };
      const shift = n % variants.length;
      for (const v of [...variants.slice(shift), ...variants.slice(0, shift)]) {
        const s = performance.now();
        await v.fn(probe);
        const ms = performance.now() - s;
        if (n >= warmup) samples.get(v.id)!.push(ms);
      }
    }

    const plan = (
      await client.unsafe(`explain select id from ${TABLE} where tenant_id = $1 and email_idx in ($2, $2)`, [
        tenants[0]!,
        Buffer.alloc(17, 1),
      ] as never[])
    )
      .map((r) => String(Object.values(r)[0]))
      .find((l) => /Scan/.test(l))
      ?.trim();

    printSectionHeader(
      `Equality lookup: blind index vs plaintext column, ${(TENANTS * PER_TENANT).toLocaleString('en-US')}-row table`,
      [
        `PostgreSQL ${await serverVersion(client)} at ${redactUrl(url)}, drizzle-orm + postgres.js (1 connection), ${TENANTS} tenants × ${PER_TENANT.toLocaleString('en-US')} rows; btree (tenant_id, email_plain) and unique btree (tenant_id, email_idx); 16-byte index (trim + case fold).`,
        `${lookups.toLocaleString('en-US')} lookups of random existing emails per variant after ${warmup} warmup lookups, one query at a time, variant order rotated per lookup; warm key cache. Every lookup is checked to return exactly the right row(s).`,
        `Load: ${(TENANTS * PER_TENANT).toLocaleString('en-US')} rows inserted through the middleware (encrypt + blind index) in ${(insertMs / 1000).toFixed(1)} s. Blind index plan: \`${plan ?? 'n/a'}\`.`,
      ],
    );
    const plainMed = median(samples.get('plain')!);
    const plainInMed = median(samples.get('plainIn')!);
    const rows = variants.map((v) => {
      const xs = samples.get(v.id)!;
      const ref = v.id.endsWith('In') ? plainInMed : plainMed;
      return [v.label, fmtUs(median(xs)), fmtUs(percentile(xs, 95)), fmtRatio(median(xs) / ref)];
    });
    console.log(markdownTable(['variant', 'median', 'p95', '× plaintext (median)'], rows));
    console.log('');
    const ratio = (id: string, ref: number) => median(samples.get(id)!) / ref;
    checkTarget(
      'blind-index',
      '`eq` lookup (select id) / plaintext lookup',
      ratio('blindId', plainMed),
      '<=',
      1.2,
    );
    checkTarget(
      'blind-index',
      '`eq` lookup + decrypt / plaintext lookup',
      ratio('blind', plainMed),
      '<=',
      1.2,
    );
    checkTarget(
      'blind-index',
      '`inArray` of 10 + decrypt / plaintext `inArray`',
      ratio('blindIn', plainInMed),
      '<=',
      1.3,
    );
    console.log('');
  } finally {
    await client.unsafe(`drop table if exists ${TABLE}`).catch(() => undefined);
    await client`delete from byok.tenants where tenant_id like ${`bench-bi-${RUN}-%`}`.catch(() => undefined);
    await client.end({ timeout: 5 });
  }
}

export const blindIndexBench: Section = {
  name: 'blind-index',
  title: 'Equality lookup by blind index vs plaintext column (100,000 rows, PostgreSQL)',
  run,
};
