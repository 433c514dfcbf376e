/**
 * Section "select": end to end on a real PostgreSQL through drizzle-orm + postgres.js.
 *
 * 10,000 rows × 3 encrypted text columns (32–64 B each) of one tenant, selected whole:
 * - through `withEncryption` with a warm key cache (and, as extra information, a cold one);
 * - the same select of a plaintext table with 3 text columns (no encryption);
 * - a select of the encrypted table through plain `bytea` columns, followed by a bare node:crypto
 *   decrypt loop over the 30,000 fields with the same derived keys as KeyObjects (the strongest
 *   fair baseline: what hand-written code at its best would do).
 * Variants are interleaved (order rotated every round) and each figure is the median of N rounds.
 */
import { createDecipheriv, type KeyObject, randomBytes } from 'node:crypto';
import { customType, integer, pgTable, text } from 'drizzle-orm/pg-core';
import { drizzle } from 'drizzle-orm/postgres-js';
import postgres from 'postgres';
import { deriveFieldKey, keyOf } from '../src/crypto/aead.ts';
import { HEADER_BYTES, IV_BYTES, IV_OFFSET, TAG_BYTES } from '../src/crypto/envelope.ts';
import { dekMaterial } from '../src/keys/cache.ts';
import { keysOf } from '../src/keys/keyring.ts';
import { createKeyring, encrypted, localKek, withEncryption } from '../src/index.ts';
import {
  type BenchContext,
  checkTarget,
  fmtMs,
  fmtNs,
  fmtRatio,
  markdownTable,
  median,
  pairedRatio,
  printSectionHeader,
  redactUrl,
  type Section,
  serverVersion,
} from './lib.ts';

const ROWS = 10_000;
/** Unique per run: the platform key is random per run, so an earlier run's data key is unreadable. */
const TENANT = `bench-${process.pid}-${Date.now()}`;
const ENC_TABLE = 'byok_bench_enc';
const PLAIN_TABLE = 'byok_bench_plain';

const encTable = pgTable(ENC_TABLE, {
  id: integer('id').primaryKey(),
  tenantId: text('tenant_id').notNull(),
  a: encrypted.text('a'),
  b: encrypted.text('b'),
  c: encrypted.text('c'),
});

/** The same physical table seen through plain bytea columns (no library involved). */
const bytea = customType<{ data: Buffer; driverData: Buffer }>({ dataType: () => 'bytea' });
const rawTable = pgTable(ENC_TABLE, {
  id: integer('id').primaryKey(),
  tenantId: text('tenant_id').notNull(),
  a: bytea('a'),
  b: bytea('b'),
  c: bytea('c'),
});

const plainTable = pgTable(PLAIN_TABLE, {
  id: integer('id').primaryKey(),
  tenantId: text('tenant_id').notNull(),
  a: text('a'),
  b: text('b'),
  c: text('c'),
});

type PlainRow = typeof plainTable.$inferSelect;
type RawRow = {
  id: number;
  tenantId: string;
  a: Buffer | string | null;
  b: Buffer | string | null;
  c: Buffer | string | null;
};

interface BareKey {
  readonly key: KeyObject;
  readonly aad: Buffer;
}

/** The baseline decrypt of one envelope: createDecipheriv per field, AAD, tag, utf8. */
function bareOpen(k: BareKey, env: Buffer): string {
  const n = env.length;
  const d = createDecipheriv('aes-256-gcm', k.key, env.subarray(IV_OFFSET, IV_OFFSET + IV_BYTES), {
    authTagLength: TAG_BYTES,
  });
  d.setAAD(k.aad);
  d.setAuthTag(env.subarray(n - TAG_BYTES));
  const pt = d.update(env.subarray(HEADER_BYTES + IV_BYTES, n - TAG_BYTES));
  d.final();
  return pt.toString('utf8');
}

function value(i: number, col: number): string {
  const len = 32 + ((i * 7 + col * 13) % 33);
  return randomBytes(48).toString('base64').slice(0, len);
}

function sameRows(got: readonly Record<string, unknown>[], want: readonly PlainRow[], what: string): void {
  const byId = new Map(want.map((r) => [r.id, r]));
  if (got.length !== want.length) throw new Error(`${what}: ${got.length} rows, expected ${want.length}`);
  for (const g of got) {
    const w = byId.get(g.id as number);
    if (w === undefined || g.a !== w.a || g.b !== w.b || g.c !== w.c)
      throw new Error(`${what}: wrong values`);
  }
}

async function run(ctx: BenchContext): Promise<void> {
  const rounds = ctx.quick ? 5 : 25;
  const warmups = ctx.quick ? 1 : 3;
  const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
  const client = postgres(url, { max: 1, onnotice: () => {} });
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

    // Fixture: the same plaintext in both tables.
    await client.unsafe(`drop table if exists ${ENC_TABLE}; drop table if exists ${PLAIN_TABLE};
      create table ${ENC_TABLE} (id integer primary key, tenant_id text not null, a bytea, b bytea, c bytea);
      create table ${PLAIN_TABLE} (id integer primary key, tenant_id text not null, a text, b text, c text);`);
    const data: PlainRow[] = Array.from({ length: ROWS }, (_, i) => ({
      id: i + 1,
      tenantId: TENANT,
      a: value(i, 0),
      b: value(i, 1),
      c: value(i, 2),
    }));
    await keyring.withTenant(TENANT, async () => {
      for (let i = 0; i < ROWS; i += 1000) await db.insert(encTable).values(data.slice(i, i + 1000));
    });
    for (let i = 0; i < ROWS; i += 1000) await plainDb.insert(plainTable).values(data.slice(i, i + 1000));
    await client.unsafe(`vacuum analyze ${ENC_TABLE}`);
    await client.unsafe(`vacuum analyze ${PLAIN_TABLE}`);

    // The baseline's keys: the same field subkeys, derived once from the tenant's data key.
    const entry = await keysOf(keyring).getActiveDek(TENANT);
    const bareKeys = (['a', 'b', 'c'] as const).map((col) => {
      const fk = deriveFieldKey(dekMaterial(entry).raw, entry.idBytes, TENANT, `public.${ENC_TABLE}.${col}`);
      return { key: keyOf(fk), aad: fk.aad } satisfies BareKey;
    });
    const [ka, kb, kc] = bareKeys as [BareKey, BareKey, BareKey];

    const selectPlain = () => plainDb.select().from(plainTable);
    const selectRaw = () => plainDb.select().from(rawTable) as Promise<RawRow[]>;
    const decryptAll = (rows: RawRow[]) => {
      for (const r of rows) {
        if (r.a !== null) r.a = bareOpen(ka, r.a as Buffer);
        if (r.b !== null) r.b = bareOpen(kb, r.b as Buffer);
        if (r.c !== null) r.c = bareOpen(kc, r.c as Buffer);
      }
      return rows;
    };
    // Builders are lazy: await inside the scope (returning the builder would run it outside).
    const selectEnc = () => keyring.withTenant(TENANT, async () => await db.select().from(encTable));
    const selectPlainWrapped = () =>
      keyring.withTenant(TENANT, async () => await db.select().from(plainTable));

    // Correctness first.
    sameRows(await selectPlain(), data, 'plaintext select');
    sameRows(decryptAll(await selectRaw()), data, 'bytea select + bare decrypt');
    sameRows(await selectEnc(), data, 'withEncryption select (warm)');
    keyring.clearCache();
    sameRows(await selectEnc(), data, 'withEncryption select (cold)');

    type Sample = Record<string, number>;
    const variants: { id: string; fn: (s: Sample) => Promise<void> }[] = [
      {
        id: 'plain',
        fn: async (s) => {
          const t0 = performance.now();
          await selectPlain();
          s.plain = performance.now() - t0;
        },
      },
      {
        id: 'bare',
        fn: async (s) => {
          const t0 = performance.now();
          const rows = await selectRaw();
          const t1 = performance.now();
          decryptAll(rows);
          const t2 = performance.now();
          s.rawSelect = t1 - t0;
          s.bareDecrypt = t2 - t1;
          s.bare = t2 - t0;
        },
      },
      {
        id: 'warm',
        fn: async (s) => {
          const t0 = performance.now();
          await selectEnc();
          s.warm = performance.now() - t0;
        },
      },
      {
        id: 'cold',
        fn: async (s) => {
          keyring.clearCache();
          const t0 = performance.now();
          await selectEnc();
          s.cold = performance.now() - t0;
        },
      },
      {
        id: 'plainWrapped',
        fn: async (s) => {
          const t0 = performance.now();
          await selectPlainWrapped();
          s.plainWrapped = performance.now() - t0;
        },
      },
    ];

    const samples: Sample[] = [];
    for (let round = 0; round < warmups + rounds; round++) {
      const s: Sample = {};
      const shift = round % variants.length;
      for (const v of [...variants.slice(shift), ...variants.slice(0, shift)]) {
        // 'cold' clears the cache: give 'warm' its key back before it runs (not timed).
        if (v.id === 'warm' && keyring.stats().cachedKeys === 0) await selectEnc();
        await v.fn(s);
      }
      if (round >= warmups) samples.push(s);
    }
    const col = (k: string) => samples.map((s) => s[k] as number);
    const med = (k: string) => median(col(k));
    const fields = ROWS * 3;

    printSectionHeader(`End to end: select ${ROWS.toLocaleString('en-US')} rows × 3 encrypted text columns`, [
      `PostgreSQL ${await serverVersion(client)} at ${redactUrl(url)}, drizzle-orm + postgres.js (1 connection); one tenant; 32–64 B per value.`,
      `Median of ${rounds} rounds (after ${warmups} warmup rounds); the variants run interleaved, order rotated each round. Ratios = median of per-round paired ratios.`,
      'Baseline = select through plain `bytea` columns, then a bare node:crypto loop over the 30,000 fields (`createDecipheriv` with the same derived KeyObject keys + AAD, utf8 decode): the strongest fair baseline.',
    ]);
    const rows: string[][] = [
      [
        'plaintext table, 3 `text` columns (no encryption)',
        fmtMs(med('plain')),
        '1.00×',
        fmtRatio(pairedRatio(col('plain'), col('bare'))),
      ],
      [
        '↳ bytea select only',
        fmtMs(med('rawSelect')),
        fmtRatio(pairedRatio(col('rawSelect'), col('plain'))),
        '',
      ],
      [
        '↳ bare decrypt loop only (30,000 fields)',
        fmtMs(med('bareDecrypt')),
        fmtRatio(pairedRatio(col('bareDecrypt'), col('plain'))),
        '',
      ],
      [
        'baseline: bytea select + bare decrypt loop',
        fmtMs(med('bare')),
        fmtRatio(pairedRatio(col('bare'), col('plain'))),
        '1.00×',
      ],
      [
        '**drizzle-byok `withEncryption`, warm key cache**',
        `**${fmtMs(med('warm'))}**`,
        fmtRatio(pairedRatio(col('warm'), col('plain'))),
        `**${fmtRatio(pairedRatio(col('warm'), col('bare')))}**`,
      ],
      [
        'drizzle-byok, cold key cache (1 unwrap, local KEK)',
        fmtMs(med('cold')),
        fmtRatio(pairedRatio(col('cold'), col('plain'))),
        fmtRatio(pairedRatio(col('cold'), col('bare'))),
      ],
      [
        'plaintext table through the `withEncryption` db',
        fmtMs(med('plainWrapped')),
        fmtRatio(pairedRatio(col('plainWrapped'), col('plain'))),
        '',
      ],
    ];
    console.log(markdownTable(['variant', 'median', '× plaintext', '× baseline'], rows));
    console.log('');
    const warmPerField = ((med('warm') - med('rawSelect')) * 1e6) / fields;
    const barePerField = (med('bareDecrypt') * 1e6) / fields;
    const e2e = pairedRatio(col('warm'), col('bare'));
    console.log(
      `Decryption cost per field (over the bytea select): drizzle-byok ≈ ${fmtNs(warmPerField)}, bare loop ≈ ${fmtNs(barePerField)}.`,
    );
    checkTarget(
      'select',
      'select 10,000 rows × 3 columns / (bytea select + bare decrypt loop)',
      e2e,
      '<=',
      1.1,
    );
    console.log('');
  } finally {
    await client
      .unsafe(`drop table if exists ${ENC_TABLE}; drop table if exists ${PLAIN_TABLE};`)
      .catch(() => undefined);
    await client`delete from byok.tenants where tenant_id = ${TENANT}`.catch(() => undefined);
    await client.end({ timeout: 5 });
  }
}

export const selectBench: Section = {
  name: 'select',
  title: 'End to end select on PostgreSQL (drizzle-orm + postgres.js)',
  run,
};
