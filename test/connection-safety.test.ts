import { randomBytes } from 'node:crypto';
import { PGlite } from '@electric-sql/pglite';
import { eq } from 'drizzle-orm';
import { drizzle as drizzlePg } from 'drizzle-orm/node-postgres';
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite';
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js';
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createKeyring,
  type Keyring,
  KeyStoreBusyError,
  localKek,
  withEncryption,
  withTenant,
} from '../src/index.ts';
import { DATABASE_URL, uniqueName, uniqueTenant } from './helpers/db.ts';
import { PGBOUNCER_URL, pooledUrl } from './helpers/pooler.ts';
import { makeSchema, type TestSchema } from './fixtures/schema.ts';
import { relationalConfig } from './helpers/drizzle-version.ts';

/**
 * Key loads never deadlock and never touch the caller's transaction, whatever the pool size and
 * driver: the same tests on a single pg.Client, postgres.js with max 1, node-postgres pools of 1, 2,
 * 5 and 10, PGlite, and the server drivers through PgBouncer.
 */
interface Conn {
  readonly name: string;
  readonly size: number;
  /** One connection shared by every statement (a pg.Client): its transactions cannot overlap. */
  readonly serial?: boolean;
  open(schema: Record<string, unknown>): Promise<{ db: any; raw: Raw; close(): Promise<void> }>;
}
type Raw = (text: string, params?: unknown[]) => Promise<Record<string, unknown>[]>;

/** A direct connection for checking what the database holds. */
async function inspector(): Promise<{ raw: Raw; close(): Promise<void> }> {
  const c = postgres(DATABASE_URL!, { max: 1, onnotice: () => {} });
  return { raw: async (t, p = []) => (await c.unsafe(t, p as never[])) as never, close: () => c.end() };
}

function pgPool(size: number, url?: () => string, tag = ''): Conn {
  return {
    name: `node-postgres pool max ${size}${tag}`,
    size,
    open: async (schema) => {
      const pool = new pg.Pool({ connectionString: (url ?? (() => DATABASE_URL!))(), max: size });
      return {
        db: drizzlePg({ client: pool, ...relationalConfig(schema) }),
        raw: async (t, p = []) => (await pool.query(t, p)).rows,
        close: () => pool.end(),
      };
    },
  };
}

function postgresJs(size: number, url?: () => string, tag = ''): Conn {
  return {
    name: `postgres.js max ${size}${tag}`,
    size,
    open: async (schema) => {
      const c = postgres((url ?? (() => DATABASE_URL!))(), {
        max: size,
        onnotice: () => {},
        ...(url ? { prepare: false } : {}),
      });
      return {
        db: drizzlePostgres({ client: c, ...relationalConfig(schema) }),
        raw: async (t, p = []) => (await c.unsafe(t, p as never[])) as never,
        close: () => c.end(),
      };
    },
  };
}

const CONNS: Conn[] = [];
if (DATABASE_URL) {
  CONNS.push({
    name: 'a single pg.Client',
    size: 1,
    serial: true,
    open: async (schema) => {
      const client = new pg.Client({ connectionString: DATABASE_URL });
      await client.connect();
      return {
        db: drizzlePg({ client: client, ...relationalConfig(schema) }),
        raw: async (t, p = []) => (await client.query(t, p)).rows,
        close: () => client.end(),
      };
    },
  });
  CONNS.push(postgresJs(1), postgresJs(2));
  for (const n of [1, 2, 5, 10]) CONNS.push(pgPool(n));
  if (PGBOUNCER_URL)
    CONNS.push(postgresJs(2, pooledUrl, ' through PgBouncer'), pgPool(2, pooledUrl, ' through PgBouncer'));
}
CONNS.push({
  name: 'PGlite',
  size: 1,
  open: async (schema) => {
    const client = new PGlite();
    return {
      db: drizzlePglite({ client: client, ...relationalConfig(schema) }),
      raw: async (t, p = []) => (await client.query(t, p)).rows as never,
      close: () => client.close(),
    };
  },
});

/** Fails the test instead of hanging it: every request has a bound. */
function bounded<T>(p: Promise<T>, what: string, ms = 20_000): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`hang: ${what} did not complete within ${ms} ms`)), ms);
    }),
  ]);
}

for (const conn of CONNS) {
  describe(`key loads on ${conn.name}`, () => {
    let s: TestSchema;
    let c: Awaited<ReturnType<Conn['open']>>;
    let keyring: Keyring;
    let db: any;
    let raw: Raw;

    beforeAll(async () => {
      s = makeSchema(uniqueName('conn'));
      c = await conn.open(s.relational);
      db = c.db;
      raw = conn.name === 'PGlite' ? c.raw : (await inspector()).raw;
      keyring = createKeyring({ db, platformKek: localKek({ key: randomBytes(32) }) });
      withEncryption(db, keyring, { tenantColumn: 'tenant_id' });
      await keyring.installKeyStore();
      for (const stmt of s.ddl) await c.raw(stmt);
    });
    afterAll(async () => {
      await keyring?.close();
      await c?.close();
    });

    it('concurrent transactions of new tenants on a full pool (cold cache) all complete', async () => {
      const n = Math.max(2, conn.size * 2);
      const tenants = Array.from({ length: Math.ceil(n / 3) }, () => uniqueTenant('pool'));
      for (let round = 0; round < 2; round++) {
        keyring.clearCache();
        const one = (i: number) =>
          withTenant(tenants[i % tenants.length]!, () =>
            db.transaction(async (tx: any) => {
              const t = tenants[i % tenants.length]!;
              await tx.insert(s.patients).values({ tenantId: t, name: `r${round} ${i}` });
              const rows = await tx.select().from(s.patients);
              expect(rows.length).toBeGreaterThan(0);
            }),
          );
        const all: Promise<unknown> = conn.serial
          ? (async () => {
              for (let i = 0; i < n; i++) await one(i);
            })()
          : Promise.all(Array.from({ length: n }, (_, i) => one(i)));
        await bounded(all, `${n} transactions on ${conn.name}`);
      }
      // and the pool still serves later transactions
      keyring.clearCache();
      const got: unknown[] = await bounded(
        withTenant(tenants[0]!, () => db.transaction((tx: any) => tx.select().from(s.patients))),
        'a later transaction',
      );
      expect(got.length).toBeGreaterThan(0);
    });

    it('a first write of a new tenant inside a transaction that rolls back leaves no rows and no key', async () => {
      const t = uniqueTenant('rollback');
      await expect(
        bounded(
          withTenant(t, () =>
            db.transaction(async (tx: any) => {
              await tx.insert(s.patients).values({ tenantId: t, name: 'never committed' });
              expect((await tx.select().from(s.patients)).map((r: { name: string }) => r.name)).toEqual([
                'never committed',
              ]);
              throw new Error('roll back');
            }),
          ),
          'rolled-back transaction',
        ),
      ).rejects.toThrow('roll back');
      expect(
        await raw(`select count(*)::int as n from "${s.name}".patients where tenant_id = $1`, [t]),
      ).toEqual([{ n: 0 }]);
      expect(await raw('select count(*)::int as n from byok.deks where tenant_id = $1', [t])).toEqual([
        { n: 0 },
      ]);
      // the tenant works afterwards, and what it writes is readable with a cold cache
      await bounded(
        withTenant(t, () =>
          db.transaction(async (tx: any) => {
            await tx.insert(s.patients).values({ tenantId: t, name: 'committed' });
            await tx.transaction(async (sp: any) => {
              await sp.insert(s.patients).values({ tenantId: t, name: 'in savepoint' });
            });
          }),
        ),
        'committed transaction',
      );
      keyring.clearCache();
      const rows = await withTenant(t, () => db.select().from(s.patients));
      expect(rows.map((r: { name: string }) => r.name).sort()).toEqual(['committed', 'in savepoint']);
      expect(await raw('select count(*)::int as n from byok.deks where tenant_id = $1', [t])).toEqual([
        { n: 1 },
      ]);
    });

    it('the key store never commits the caller’s transaction early: a later rollback undoes everything', async () => {
      const t = uniqueTenant('atomic');
      const known = uniqueTenant('known');
      await withTenant(known, () => db.insert(s.patients).values({ tenantId: known, name: 'before' }));
      keyring.clearCache();
      await expect(
        withTenant(t, () =>
          db.transaction(async (tx: any) => {
            await tx.insert(s.patients).values({ tenantId: t, name: 'first' });
            await withTenant(known, () => tx.select().from(s.patients)); // a cold key load in the transaction
            await tx.insert(s.patients).values({ tenantId: t, name: 'second' });
            tx.rollback();
          }),
        ),
      ).rejects.toThrow();
      expect(
        await raw(`select count(*)::int as n from "${s.name}".patients where tenant_id = $1`, [t]),
      ).toEqual([{ n: 0 }]);
    });

    it('a savepoint that rolls back takes the key it created with it; the enclosing transaction still writes', async () => {
      const t = uniqueTenant('savepoint');
      await withTenant(t, () =>
        db.transaction(async (tx: any) => {
          await expect(
            tx.transaction(async (sp: any) => {
              await sp.insert(s.patients).values({ tenantId: t, name: 'gone' });
              sp.rollback();
            }),
          ).rejects.toThrow();
          await tx.insert(s.patients).values({ tenantId: t, name: 'kept' });
        }),
      );
      keyring.clearCache();
      const rows = await withTenant(t, () => db.select().from(s.patients).where(eq(s.patients.tenantId, t)));
      expect(rows.map((r: { name: string }) => r.name)).toEqual(['kept']);
    });
  });
}

describe('the key store budget', () => {
  it.runIf(DATABASE_URL)(
    'a key load that cannot get a connection fails with KeyStoreBusyError, not a hang',
    async () => {
      const s = makeSchema(uniqueName('busy'));
      const app = new pg.Pool({ connectionString: DATABASE_URL, max: 4 });
      const store = new pg.Pool({ connectionString: DATABASE_URL, max: 1 });
      const db = drizzlePg({ client: app, ...relationalConfig(s.relational) });
      const keyring = createKeyring({
        db,
        platformKek: localKek({ key: randomBytes(32) }),
        keyStore: { db: drizzlePg({ client: store }), maxConcurrent: 1, waitTimeoutMs: 300 },
      });
      withEncryption(db, keyring, { tenantColumn: 'tenant_id' });
      try {
        await keyring.installKeyStore();
        for (const stmt of s.ddl) await app.query(stmt);
        const t = uniqueTenant('busy');
        await withTenant(t, () => db.insert(s.patients).values({ tenantId: t, name: 'x' }));
        keyring.clearCache();
        const held = await store.connect(); // every key store connection busy
        try {
          const err = await bounded(
            withTenant(t, () => db.select().from(s.patients)).then(
              () => undefined,
              (e: unknown) => e,
            ),
            'busy key store',
          );
          expect(err).toBeInstanceOf(KeyStoreBusyError);
          expect((err as KeyStoreBusyError).code).toBe('ERR_BYOK_KEY_STORE_BUSY');
        } finally {
          held.release();
        }
        // with the connection back, the same read succeeds
        expect(await withTenant(t, () => db.select().from(s.patients))).toHaveLength(1);
      } finally {
        await keyring.close();
        await app.end();
        await store.end();
      }
    },
  );
});
