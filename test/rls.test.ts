import { randomBytes } from 'node:crypto';
import { PGlite } from '@electric-sql/pglite';
import { eq, sql } from 'drizzle-orm';
import { drizzle as drizzlePg } from 'drizzle-orm/node-postgres';
import { getTableConfig, pgSchema, pgTable, text, uuid } from 'drizzle-orm/pg-core';
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite';
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js';
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createKeyring,
  encrypted,
  type Keyring,
  localKek,
  rlsSql,
  tenantPolicy,
  withAnyTenant,
  withEncryption,
  withTenant,
} from '../src/index.ts';
import { DATABASE_URL, DRIVERS, type DriverName, uniqueName, uniqueTenant } from './helpers/db.ts';
import { DRIZZLE_1 } from './helpers/drizzle-version.ts';
import { PGBOUNCER_APP_ROLE, POOLER_DRIVERS, pooledUrl } from './helpers/pooler.ts';

/**
 * Database-enforced isolation: with `rls: true` the middleware sets `byok.tenant` per transaction,
 * and the policies make even raw `db.execute` inside `withTenant` see only that tenant's rows. The
 * app connects as a role without BYPASSRLS (superusers bypass every policy).
 */
const TARGETS: { name: string; driver: DriverName; pooled?: boolean }[] = [
  ...DRIVERS.map((d) => ({ name: d, driver: d })),
  // Through PgBouncer in transaction pooling: the setting is transaction-local, so it travels with
  // the transaction to whichever server connection runs it (the role is the one .ci/pgbouncer.sh
  // lets in; PgBouncer admits only the users of its auth file).
  ...POOLER_DRIVERS.map((d) => ({ name: `${d} through PgBouncer`, driver: d, pooled: true })),
];

let pooledDone = 0;

for (const target of TARGETS) {
  describe(`row-level security mode on ${target.name}`, () => {
    const schema = uniqueName('rls');
    const role = target.pooled ? PGBOUNCER_APP_ROLE : uniqueName('byok_app');
    const A = uniqueTenant('a');
    const B = uniqueTenant('b');
    let keyring: Keyring;
    let db: any;
    let closeAll: () => Promise<void>;

    beforeAll(async () => {
      const grants = [
        // the fixed PgBouncer role may be left over from an interrupted run
        `do $$ begin create role "${role}" login nosuperuser nobypassrls; exception when duplicate_object then null; end $$`,
        `create schema "${schema}"`,
        `create table "${schema}".docs (id uuid primary key default gen_random_uuid(), tenant_id text not null, title text, body bytea)`,
        ...rlsSql({ schema, name: 'docs' }, 'tenant_id'),
        'create schema if not exists byok',
        `grant usage on schema "${schema}", byok to "${role}"`,
        `grant all on all tables in schema "${schema}" to "${role}"`,
      ];
      if (target.driver === 'pglite') {
        const client = new PGlite();
        const admin = drizzlePglite({ client: client });
        await createKeyring({ db: admin, platformKek: localKek({ key: randomBytes(32) }) }).installKeyStore();
        for (const g of grants) await client.exec(g);
        await client.exec(
          `grant all on all tables in schema byok to "${role}"; grant all on all sequences in schema byok to "${role}"`,
        );
        await client.exec(`set role "${role}"`);
        db = drizzlePglite({ client: client });
        closeAll = () => client.close();
      } else {
        const admin = postgres(DATABASE_URL!, { max: 1, onnotice: () => {} });
        await createKeyring({
          db: drizzlePostgres({ client: admin }),
          platformKek: localKek({ key: randomBytes(32) }),
        }).installKeyStore();
        for (const g of grants) await admin.unsafe(g);
        await admin.unsafe(`grant all on all tables in schema byok to "${role}"`);
        await admin.unsafe(`grant all on all sequences in schema byok to "${role}"`);
        const url = new URL(target.pooled ? pooledUrl() : DATABASE_URL!);
        url.username = role;
        const appUrl = url.toString();
        let end: () => Promise<void>;
        if (target.driver === 'postgres-js') {
          // through PgBouncer: no named prepared statements (they do not follow transactions)
          const c = postgres(appUrl, {
            max: 4,
            onnotice: () => {},
            ...(target.pooled ? { prepare: false } : {}),
          });
          db = drizzlePostgres({ client: c });
          end = () => c.end();
        } else {
          const pool = new pg.Pool({ connectionString: appUrl, max: 4 });
          db = drizzlePg({ client: pool });
          end = () => pool.end();
        }
        closeAll = async () => {
          await end();
          await admin.unsafe(`drop schema "${schema}" cascade`);
          await admin.unsafe(`drop owned by "${role}"`);
          // PgBouncer keeps server connections of the fixed role: it stays until the last pooled
          // suite is done (a role made again would be another role to those connections)
          if (!target.pooled || ++pooledDone === TARGETS.filter((t) => t.pooled).length)
            await admin.unsafe(`drop role "${role}"`);
          await admin.end();
        };
      }
      keyring = createKeyring({ db, platformKek: localKek({ key: randomBytes(32) }) });
      withEncryption(db, keyring, { tenantColumn: 'tenant_id', rls: true });
      for (const t of [A, B]) {
        await withTenant(t, () =>
          db.execute(
            sql`insert into ${sql.identifier(schema)}.docs (tenant_id, title) values (${t}, ${`${t} doc`})`,
          ),
        );
      }
    });
    afterAll(async () => {
      await keyring?.close();
      await closeAll?.();
    });

    const rows = (r: any): Record<string, unknown>[] => (Array.isArray(r) ? r : r.rows);

    it('a raw db.execute inside withTenant sees only that tenant’s rows, in and outside transactions', async () => {
      const q = sql`select tenant_id, title from ${sql.identifier(schema)}.docs order by title`;
      for (const t of [A, B]) {
        expect(rows(await withTenant(t, () => db.execute(q)))).toEqual([{ tenant_id: t, title: `${t} doc` }]);
        const inTx = await withTenant(t, () => db.transaction((tx: any) => tx.execute(q)));
        expect(rows(inTx)).toEqual([{ tenant_id: t, title: `${t} doc` }]);
      }
      // the scope changing inside one transaction changes the setting too
      const both = await db.transaction(async (tx: any) => [
        rows(await withTenant(A, () => tx.execute(q))),
        rows(await withTenant(B, () => tx.execute(q))),
      ]);
      expect(both).toEqual([[{ tenant_id: A, title: `${A} doc` }], [{ tenant_id: B, title: `${B} doc` }]]);
      // no scope, or withAnyTenant: no setting, no rows (trusted jobs use a role with BYPASSRLS)
      expect(rows(await db.execute(q))).toEqual([]);
      expect(rows(await withAnyTenant(() => db.execute(q)))).toEqual([]);
    });

    it('the database refuses a raw write of another tenant’s row, and raw updates reach only the tenant’s rows', async () => {
      const err = await withTenant(A, () =>
        db.execute(
          sql`insert into ${sql.identifier(schema)}.docs (tenant_id, title) values (${B}, 'smuggled')`,
        ),
      ).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(String((err?.cause as Error | undefined)?.message ?? err?.message)).toMatch(
        /row-level security/,
      );
      const updated = await withTenant(A, () =>
        db.execute(sql`update ${sql.identifier(schema)}.docs set title = 'hijacked' returning tenant_id`),
      );
      expect(rows(updated)).toEqual([{ tenant_id: A }]);
      await withTenant(A, () =>
        db.execute(sql`update ${sql.identifier(schema)}.docs set title = ${`${A} doc`}`),
      );
      const [b] = rows(
        await withTenant(B, () => db.execute(sql`select title from ${sql.identifier(schema)}.docs`)),
      );
      expect(b).toEqual({ title: `${B} doc` });
    });

    it('encrypted columns and the query builder work under the policies', async () => {
      const table = pgSchema(schema).table('docs', {
        id: uuid('id').primaryKey().defaultRandom(),
        tenantId: text('tenant_id').notNull(),
        title: text('title'),
        body: encrypted.text('body'),
      });
      await withTenant(A, () => db.insert(table).values({ tenantId: A, title: 'enc', body: 'secret of a' }));
      const got = await withTenant(A, () => db.select().from(table).where(eq(table.title, 'enc')));
      expect(got.map((r: { body: string }) => r.body)).toEqual(['secret of a']);
      expect(await withTenant(B, () => db.select().from(table).where(eq(table.title, 'enc')))).toEqual([]);
    });
  });
}

describe('policy helpers for drizzle-kit', () => {
  it('tenantPolicy gives a pgPolicy for every command comparing the tenant column with the setting', () => {
    const docs = pgTable(
      'docs',
      { id: uuid('id').primaryKey(), tenantId: text('tenant_id').notNull() },
      (t) => [tenantPolicy(t.tenantId)],
    );
    const policy = getTableConfig(docs).policies[0] as unknown as {
      name: string;
      for: string;
      using: unknown;
      withCheck: unknown;
    };
    expect(policy.name).toBe('docs_tenant_isolation');
    expect(policy.for).toBe('all');
    expect(policy.using).toBeDefined();
    expect(policy.withCheck).toBe(policy.using);
    const [, , , create] = rlsSql({ name: 'docs' }, 'tenant_id', { type: 'uuid' });
    void create;
  });

  it('drizzle-kit emits the policy and enables row-level security', async () => {
    // drizzle-kit 0.31: `drizzle-kit/api`; 1.0: `drizzle-kit/api-postgres` (same two functions).
    const kitApi = DRIZZLE_1 ? 'drizzle-kit/api-postgres' : 'drizzle-kit/api';
    const { generateDrizzleJson, generateMigration } = (await import(/* @vite-ignore */ kitApi)) as {
      generateDrizzleJson(schema: Record<string, unknown>): unknown;
      generateMigration(prev: unknown, cur: unknown): Promise<string[]>;
    };
    const docs = pgTable(
      'docs',
      { id: uuid('id').primaryKey(), tenantId: uuid('tenant_id').notNull() },
      (t) => [tenantPolicy(t.tenantId)],
    );
    const statements = await generateMigration(
      await generateDrizzleJson({}),
      await generateDrizzleJson({ docs }),
    );
    const all = statements.join('\n');
    expect(all).toContain('ENABLE ROW LEVEL SECURITY');
    expect(all).toMatch(
      /CREATE POLICY "docs_tenant_isolation" ON "docs" AS PERMISSIVE FOR ALL TO public USING/,
    );
    expect(all).toContain(`"tenant_id" = nullif(current_setting('byok.tenant', true), '')::uuid`);
    const [, , , create] = rlsSql({ name: 'docs' }, 'tenant_id', { type: 'uuid' });
    expect(create).toContain(`using ("tenant_id" = nullif(current_setting('byok.tenant', true), '')::uuid)`);
  });
});
