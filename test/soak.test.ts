import { randomBytes } from 'node:crypto';
import { eq, sql } from 'drizzle-orm';
import { drizzle as drizzlePg } from 'drizzle-orm/node-postgres';
import { pgSchema, text, uuid } from 'drizzle-orm/pg-core';
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js';
import fc from 'fast-check';
import pg from 'pg';
import postgres from 'postgres';
import { describe, expect, it } from 'vitest';
import { createKeyring, localKek, withAnyTenant, withEncryption, withTenant } from '../src/index.ts';
import { DATABASE_URL, uniqueName, uniqueTenant } from './helpers/db.ts';
import { PGBOUNCER_URL, pooledUrl } from './helpers/pooler.ts';
import { makeSchema } from './fixtures/schema.ts';
import { relationalConfig } from './helpers/drizzle-version.ts';

/**
 * Soak: 50 tenants, 5,000 mixed requests per pool size (half direct, half through PgBouncer; reads, writes, transactions with random
 * rollbacks, relational queries, updates aimed at other tenants' rows, first writes of new tenants),
 * with the key cache cleared at random moments, on pools of 1, 2 and 8 connections, direct and
 * through PgBouncer. A plaintext oracle table, written in the same transactions, says what each
 * tenant must see. Every request has a bound; the run prints requests/s per configuration.
 */
/** 5,000 requests per pool size, split between the direct and the PgBouncer runs. */
const PER_POOL_SIZE = Number(process.env.BYOK_SOAK_REQUESTS ?? 5000);
const REQUESTS = PGBOUNCER_URL ? Math.ceil(PER_POOL_SIZE / 2) : PER_POOL_SIZE;
const TENANTS = 50;
const WORKERS = 12;
const REQUEST_BOUND_MS = 15_000;

interface Config {
  name: string;
  size: number;
  driver: 'postgres.js' | 'node-postgres';
  pooled: boolean;
}

const CONFIGS: Config[] = [];
for (const pooled of [false, ...(PGBOUNCER_URL ? [true] : [])]) {
  CONFIGS.push(
    { name: 'postgres.js', size: 1, driver: 'postgres.js', pooled },
    { name: 'node-postgres', size: 2, driver: 'node-postgres', pooled },
    { name: 'postgres.js', size: 8, driver: 'postgres.js', pooled },
  );
}

interface Figures {
  config: string;
  requests: number;
  seconds: number;
  perSecond: number;
  rollbacks: number;
  cacheClears: number;
  foreignAttempts: number;
}

async function soak(config: Config, seed: number): Promise<Figures> {
  const url = config.pooled ? pooledUrl() : DATABASE_URL!;
  const s = makeSchema(uniqueName('soak'));
  const oracle = pgSchema(s.name).table('oracle', {
    id: uuid('id').primaryKey(),
    tenantId: text('tenant_id').notNull(),
    name: text('name').notNull(),
  });
  const schema = { ...s.relational, oracle };
  let db: any;
  let end: () => Promise<void>;
  if (config.driver === 'postgres.js') {
    const c = postgres(url, {
      max: config.size,
      onnotice: () => {},
      ...(config.pooled ? { prepare: false } : {}),
    });
    db = drizzlePostgres({ client: c, ...relationalConfig(schema) });
    end = () => c.end();
  } else {
    const pool = new pg.Pool({ connectionString: url, max: config.size });
    db = drizzlePg({ client: pool, ...relationalConfig(schema) });
    end = () => pool.end();
  }
  const keyring = createKeyring({ db, platformKek: localKek({ key: randomBytes(32) }) });
  withEncryption(db, keyring, { tenantColumn: 'tenant_id' });
  await keyring.installKeyStore();
  for (const stmt of s.ddl) await db.execute(sql.raw(stmt));
  await db.execute(
    sql.raw(
      `create table "${s.name}".oracle (id uuid primary key, tenant_id text not null, name text not null)`,
    ),
  );
  const tenants = Array.from({ length: TENANTS }, () => uniqueTenant('soak'));
  /** Ids committed per tenant (known to the test): targets for updates by other tenants. */
  const committed = new Map<string, string[]>(tenants.map((t) => [t, []]));
  const rng = fc.sample(fc.integer({ min: 0, max: 1_000_000 }), { seed, numRuns: REQUESTS * 3 });
  let cursor = 0;
  const rand = (n: number) => (rng[cursor++ % rng.length] as number) % n;
  const figures = { rollbacks: 0, cacheClears: 0, foreignAttempts: 0 };
  const failures: string[] = [];

  const write = (tx: any, t: string, name: string) =>
    tx
      .insert(s.patients)
      .values({ tenantId: t, name })
      .returning({ id: s.patients.id })
      .then(async ([r]: { id: string }[]) => {
        await tx.insert(oracle).values({ id: r!.id, tenantId: t, name });
        return r!.id;
      });

  const request = async (i: number): Promise<void> => {
    if (rand(250) === 0) {
      keyring.clearCache();
      figures.cacheClears++;
    }
    // the first 20 tenants are written from the start; the others get their first write later
    const t = tenants[i < REQUESTS / 4 ? rand(20) : rand(TENANTS)]!;
    const kind = rand(10);
    await withTenant(t, async () => {
      if (kind <= 2) {
        const id = await db.transaction((tx: any) => write(tx, t, `n${i}`));
        committed.get(t)!.push(id);
      } else if (kind === 3) {
        // a transaction of several writes, rolled back at random
        const ids: string[] = [];
        const rollback = rand(2) === 0;
        try {
          await db.transaction(async (tx: any) => {
            ids.push(await write(tx, t, `a${i}`));
            ids.push(await write(tx, t, `b${i}`));
            if (rollback) tx.rollback();
          });
          committed.get(t)!.push(...ids);
        } catch (e) {
          if (!rollback) throw e;
          figures.rollbacks++;
        }
      } else if (kind === 4) {
        // an update aimed at another tenant's row changes nothing
        const other = tenants[rand(TENANTS)]!;
        const target = committed.get(other)![0];
        if (target !== undefined && other !== t) {
          figures.foreignAttempts++;
          const changed = await db
            .update(s.patients)
            .set({ name: 'foreign' })
            .where(eq(s.patients.id, target))
            .returning();
          if (changed.length !== 0) failures.push(`request ${i}: tenant ${t} updated a row of ${other}`);
        }
      } else if (kind <= 6) {
        const rows = await db.query.patients.findMany({ with: { visits: true }, limit: 20 });
        for (const r of rows)
          if (r.tenantId !== t) failures.push(`request ${i}: ${t} read a row of ${r.tenantId}`);
      } else {
        const rows = await db
          .select({ tenantId: s.patients.tenantId, name: s.patients.name })
          .from(s.patients)
          .limit(50);
        for (const r of rows)
          if (r.tenantId !== t) failures.push(`request ${i}: ${t} read a row of ${r.tenantId}`);
      }
    });
  };

  const started = performance.now();
  let next = 0;
  let hangs = 0;
  const worker = async () => {
    while (next < REQUESTS) {
      const i = next++;
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          request(i),
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error('hang')), REQUEST_BOUND_MS);
          }),
        ]);
      } catch (e) {
        if ((e as Error).message === 'hang') hangs++;
        else failures.push(`request ${i}: ${(e as Error).name}: ${(e as Error).message}`);
      } finally {
        clearTimeout(timer);
      }
    }
  };
  await Promise.all(Array.from({ length: WORKERS }, worker));
  const seconds = (performance.now() - started) / 1000;

  // Every tenant sees exactly its oracle rows, decrypted to the oracle's plaintext: nothing lost,
  // nothing phantom, nothing of another tenant.
  keyring.clearCache();
  for (const t of tenants) {
    const [got, want] = await withTenant(t, async () => [
      await db
        .select({ id: s.patients.id, tenantId: s.patients.tenantId, name: s.patients.name })
        .from(s.patients),
      await db.select().from(oracle),
    ]);
    const sort = (xs: { id: string }[]) => [...xs].sort((a, b) => a.id.localeCompare(b.id));
    expect(sort(got)).toEqual(sort(want));
  }
  const [{ n: all }] = await withAnyTenant(() =>
    db.select({ n: sql<number>`count(*)::int` }).from(s.patients),
  );
  const [{ n: oracleAll }] = await withAnyTenant(() =>
    db.select({ n: sql<number>`count(*)::int` }).from(oracle),
  );
  expect(all).toBe(oracleAll);
  expect(failures.slice(0, 5)).toEqual([]);
  expect(hangs).toBe(0);
  await keyring.close();
  await db.execute(sql.raw(`drop schema "${s.name}" cascade`));
  await end();
  return {
    config: `${config.name} pool ${config.size}${config.pooled ? ' via PgBouncer' : ' direct'}`,
    requests: REQUESTS,
    seconds,
    perSecond: REQUESTS / seconds,
    ...figures,
  };
}

describe.runIf(DATABASE_URL)('soak', () => {
  it(`${TENANTS} tenants, ${PER_POOL_SIZE} mixed requests per pool size: no foreign rows, no hangs, no lost or phantom rows`, async () => {
    const results: Figures[] = [];
    for (const [i, c] of CONFIGS.entries()) results.push(await soak(c, 9000 + i));
    const lines = results.map(
      (r) =>
        `| ${r.config} | ${r.requests} | ${r.seconds.toFixed(1)} s | ${Math.round(r.perSecond)} | ${r.rollbacks} | ${r.cacheClears} | ${r.foreignAttempts} |`,
    );
    process.stdout.write(
      `\nsoak (${TENANTS} tenants, ${WORKERS} concurrent workers):\n` +
        '| configuration | requests | time | requests/s | rollbacks | cache clears | foreign updates refused |\n' +
        '|---|---|---|---|---|---|---|\n' +
        `${lines.join('\n')}\n`,
    );
  }, 300_000);
});
