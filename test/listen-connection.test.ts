import { randomBytes } from 'node:crypto';
import { drizzle as drizzlePg } from 'drizzle-orm/node-postgres';
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js';
import pg from 'pg';
import postgres from 'postgres';
import { describe, expect, it } from 'vitest';
import {
  type ByokEvent,
  createKeyring,
  type Kek,
  localKek,
  withEncryption,
  withTenant,
} from '../src/index.ts';
import { DATABASE_URL, uniqueName, uniqueTenant } from './helpers/db.ts';
import { PGBOUNCER_URL, pooledUrl } from './helpers/pooler.ts';
import { makeSchema } from './fixtures/schema.ts';

/**
 * `startListening()` listens on a connection of its own: never the app's only one. Behind
 * PgBouncer in transaction mode it listens on the direct connection it is given.
 */
interface App {
  db: any;
  close(): Promise<void>;
}

function apps(): { name: string; open(url: string): Promise<App>; pooled?: boolean }[] {
  return [
    {
      name: 'postgres.js max 1',
      open: async (url) => {
        const c = postgres(url, {
          max: 1,
          onnotice: () => {},
          prepare: !url.includes(':5432') ? false : true,
        });
        return { db: drizzlePostgres({ client: c }), close: () => c.end() };
      },
    },
    {
      name: 'node-postgres pool max 1',
      open: async (url) => {
        const pool = new pg.Pool({ connectionString: url, max: 1 });
        return { db: drizzlePg({ client: pool }), close: () => pool.end() };
      },
    },
    {
      name: 'a connected single pg.Client',
      open: async (url) => {
        const client = new pg.Client({ connectionString: url });
        await client.connect();
        return { db: drizzlePg({ client: client }), close: () => client.end() };
      },
    },
  ];
}

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
}

/** Fails instead of hanging. */
function bounded<T>(p: Promise<T>, what: string, ms = 15_000): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`hang: ${what}`)), ms);
    }),
  ]);
}

async function scenario(app: App, other: App, listenClient: unknown, kek: Kek): Promise<number> {
  const s = makeSchema(uniqueName('listen'));
  const a = createKeyring({ db: app.db, platformKek: kek, ...(listenClient ? { listenClient } : {}) });
  const b = createKeyring({ db: other.db, platformKek: kek });
  withEncryption(app.db, a, { tenantColumn: 'tenant_id' });
  withEncryption(other.db, b, { tenantColumn: 'tenant_id' });
  await a.installKeyStore();
  for (const stmt of s.ddl) await app.db.execute(stmt);
  const remote: ByokEvent[] = [];
  const T = uniqueTenant('listen');
  a.onEvent((e) => {
    // other test files share the database and the channel: count this tenant's notices only
    if (e.type === 'invalidation' && e.source === 'remote' && e.tenantId === T) remote.push(e);
  });
  try {
    const listener = await a.startListening();
    // the app keeps working on its (only) connection: transactions included
    await bounded(
      withTenant(T, () =>
        app.db.transaction(async (tx: any) => {
          await tx.insert(s.patients).values({ tenantId: T, name: 'x' });
          return tx.select().from(s.patients);
        }),
      ),
      'a transaction while listening',
    );
    for (let i = 0; i < 3; i++) await b.rotateDek(T);
    await waitFor(() => remote.length >= 3);
    await listener.stop();
    return remote.length;
  } finally {
    await a.close();
    await b.close();
  }
}

describe.runIf(DATABASE_URL)('LISTEN on a connection of its own', () => {
  for (const kind of apps()) {
    it(`${kind.name}: startListening keeps the app's connection, and notices arrive`, async () => {
      const app = await kind.open(DATABASE_URL!);
      const other = await apps()[0]!.open(DATABASE_URL!);
      try {
        expect(await scenario(app, other, undefined, localKek({ key: randomBytes(32) }))).toBe(3);
      } finally {
        await other.close();
        await app.close();
      }
    });
  }

  it.runIf(PGBOUNCER_URL)(
    'app queries through PgBouncer (transaction mode), LISTEN on a direct connection: notices arrive',
    async () => {
      for (const kind of apps().slice(0, 2)) {
        const app = await kind.open(pooledUrl());
        const other = await kind.open(pooledUrl());
        const direct = kind.name.startsWith('postgres.js')
          ? postgres(DATABASE_URL!, { max: 1, onnotice: () => {} })
          : new pg.Client({ connectionString: DATABASE_URL });
        try {
          expect(await scenario(app, other, direct, localKek({ key: randomBytes(32) }))).toBe(3);
        } finally {
          await other.close();
          await app.close();
          await ('end' in direct ? (direct as { end(): Promise<void> }).end() : undefined);
        }
      }
    },
  );
});
