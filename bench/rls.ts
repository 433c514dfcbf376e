/**
 * Section "rls": the cost of the database-enforced isolation mode (`withEncryption(..., { rls: true })`)
 * against the default mode (query scoping only), end to end through drizzle-orm + postgres.js.
 *
 * Two identical tables of 50 tenants × 40 rows (an encrypted text column, a plain one); the RLS one
 * has FORCE ROW LEVEL SECURITY and the tenant policy. Both are queried by a role without BYPASSRLS
 * (superusers skip policies). Tasks, each inside `withTenant`, warm key cache:
 * - a point select by id (one row, one decryption): in RLS mode the middleware wraps it in a
 *   transaction that first calls `set_config('byok.tenant', t, true)`;
 * - a transaction of 3 such selects: the tenant is set once per transaction.
 * Variants are interleaved (order rotated every round); ratios pair the rounds.
 */
import { randomBytes } from 'node:crypto';
import { eq } from 'drizzle-orm';
import { integer, pgSchema, text } from 'drizzle-orm/pg-core';
import { drizzle } from 'drizzle-orm/postgres-js';
import postgres from 'postgres';
import { createKeyring, encrypted, localKek, rlsSql, withEncryption, withTenant } from '../src/index.ts';
import {
  type BenchContext,
  fmtNs,
  fmtRatio,
  markdownTable,
  measureRounds,
  median,
  pairedRatio,
  printSectionHeader,
  redactUrl,
  type Section,
  serverVersion,
} from './lib.ts';

const TENANTS = 50;
const ROWS_PER_TENANT = 40;

export const rlsBench: Section = {
  name: 'rls',
  title: 'Row-level security mode: cost against the default isolation mode',
  async run(ctx: BenchContext): Promise<void> {
    const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
    const tag = `${process.pid}_${Date.now().toString(36)}`;
    const schemaName = `byok_bench_rls_${tag}`;
    const role = `byok_bench_app_${tag}`;
    const admin = postgres(url, { max: 1, onnotice: () => {} });
    const kek = localKek({ key: randomBytes(32) });
    const s = pgSchema(schemaName);
    const docsTable = (name: string) =>
      s.table(name, {
        id: integer('id').primaryKey(),
        tenantId: text('tenant_id').notNull(),
        title: text('title'),
        body: encrypted.text('body'),
      });
    const plainDocs = docsTable('docs');
    const rlsDocs = docsTable('docs_rls');
    let app: postgres.Sql | undefined;
    let appRls: postgres.Sql | undefined;
    try {
      await createKeyring({ db: drizzle({ client: admin }), platformKek: kek }).installKeyStore();
      const ddl = (name: string) =>
        `create table "${schemaName}".${name} (id integer primary key, tenant_id text not null, title text, body bytea)`;
      for (const stmt of [
        `create role "${role}" login nosuperuser nobypassrls`,
        `create schema "${schemaName}"`,
        ddl('docs'),
        ddl('docs_rls'),
        `create index on "${schemaName}".docs (tenant_id)`,
        `create index on "${schemaName}".docs_rls (tenant_id)`,
        ...rlsSql({ schema: schemaName, name: 'docs_rls' }, 'tenant_id'),
        `grant usage on schema "${schemaName}", byok to "${role}"`,
        `grant all on all tables in schema "${schemaName}", byok to "${role}"`,
        `grant all on all sequences in schema byok to "${role}"`,
      ]) {
        await admin.unsafe(stmt);
      }
      const appUrl = new URL(url);
      appUrl.username = role;
      app = postgres(appUrl.toString(), { max: 4, onnotice: () => {} });
      appRls = postgres(appUrl.toString(), { max: 4, onnotice: () => {} });
      const db = drizzle({ client: app });
      const dbRls = drizzle({ client: appRls });
      const keyring = createKeyring({ db, platformKek: kek });
      const keyringRls = createKeyring({ db: dbRls, platformKek: kek });
      withEncryption(db, keyring, { tenantColumn: 'tenant_id' });
      withEncryption(dbRls, keyringRls, { tenantColumn: 'tenant_id', rls: true });
      const tenants = Array.from({ length: TENANTS }, (_, i) => `bench-rls-${tag}-${i}`);
      let id = 0;
      for (const t of tenants) {
        const rows = Array.from({ length: ROWS_PER_TENANT }, () => ({
          id: ++id,
          tenantId: t,
          title: `title ${id}`,
          body: `body of row ${id} for ${t}`,
        }));
        await withTenant(t, () => db.insert(plainDocs).values(rows));
        await withTenant(t, () => dbRls.insert(rlsDocs).values(rows));
      }
      const pick = () => {
        const i = Math.floor(Math.random() * TENANTS);
        return { t: tenants[i]!, id: i * ROWS_PER_TENANT + 1 + Math.floor(Math.random() * ROWS_PER_TENANT) };
      };
      const point = (d: typeof db, table: typeof plainDocs) => async () => {
        const { t, id: rowId } = pick();
        const [r] = await withTenant(t, () => d.select().from(table).where(eq(table.id, rowId)));
        if (r?.tenantId !== t) throw new Error('bench: wrong row');
      };
      const tx3 = (d: typeof db, table: typeof plainDocs) => async () => {
        const { t, id: rowId } = pick();
        await withTenant(t, () =>
          d.transaction(async (tx) => {
            for (let k = 0; k < 3; k++) await tx.select().from(table).where(eq(table.id, rowId));
          }),
        );
      };
      const tasks = [
        { id: 'default point', batch: 20, run: loop(point(db, plainDocs)) },
        { id: 'rls point', batch: 20, run: loop(point(dbRls, rlsDocs)) },
        { id: 'default tx3', batch: 10, run: loop(tx3(db, plainDocs)) },
        { id: 'rls tx3', batch: 10, run: loop(tx3(dbRls, rlsDocs)) },
      ];
      const rounds = ctx.quick ? 1 : 3;
      const results = await measureRounds(tasks, {
        rounds,
        timeMs: ctx.quick ? 300 : 2000,
        warmupMs: ctx.quick ? 100 : 500,
      });
      const m = (k: string) => median(results.get(k)!);
      const r = (a: string, b: string) => pairedRatio(results.get(a)!, results.get(b)!);
      const each = (a: string, b: string) =>
        results
          .get(a)!
          .map((x, i) => fmtRatio(x / results.get(b)![i]!))
          .join(', ');
      printSectionHeader(this.title, [
        `PostgreSQL ${await serverVersion(admin)} at ${redactUrl(url)}, postgres.js, pool of 4, a role without BYPASSRLS`,
        `${TENANTS} tenants × ${ROWS_PER_TENANT} rows per table, warm key cache; ${rounds} interleaved round(s), medians`,
      ]);
      console.log(
        markdownTable(
          ['inside withTenant', 'default mode', 'RLS mode', 'ratio (rounds)'],
          [
            [
              'point select by id (1 row, 1 decryption)',
              fmtNs(m('default point')),
              fmtNs(m('rls point')),
              `**${fmtRatio(r('rls point', 'default point'))}** (${each('rls point', 'default point')})`,
            ],
            [
              'transaction of 3 point selects',
              fmtNs(m('default tx3')),
              fmtNs(m('rls tx3')),
              `**${fmtRatio(r('rls tx3', 'default tx3'))}** (${each('rls tx3', 'default tx3')})`,
            ],
          ],
        ),
      );
      await keyring.close();
      await keyringRls.close();
    } finally {
      await app?.end();
      await appRls?.end();
      await admin.unsafe(`drop schema if exists "${schemaName}" cascade`).catch(() => undefined);
      await admin.unsafe(`drop owned by "${role}"`).catch(() => undefined);
      await admin.unsafe(`drop role if exists "${role}"`).catch(() => undefined);
      await admin.end();
    }
  },
};

function loop(fn: () => Promise<void>): (n: number) => Promise<void> {
  return async (n) => {
    for (let i = 0; i < n; i++) await fn();
  };
}
