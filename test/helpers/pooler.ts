import { drizzle as drizzlePg } from 'drizzle-orm/node-postgres';
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js';
import pg from 'pg';
import postgres from 'postgres';
import { DATABASE_URL, type DriverName, type TestDb } from './db.ts';
import { relationalConfig } from './drizzle-version.ts';

/**
 * PgBouncer in transaction pooling mode in front of the test server, started by `.ci/run`, which
 * exports its address as `BYOK_PGBOUNCER_URL` (e.g. `postgres://postgres@127.0.0.1:6432`). The test
 * run's fresh database is reached through it by name.
 */
export const PGBOUNCER_URL: string | undefined = process.env.BYOK_PGBOUNCER_URL || undefined;

/**
 * The one role besides `postgres` that `.ci/pgbouncer.sh` lets through (PgBouncer admits only the
 * users of its auth file): the row-level security suite's app role, without BYPASSRLS.
 */
export const PGBOUNCER_APP_ROLE = 'byok_rls_app';

/** Server drivers the isolation and concurrency suites also run through PgBouncer. */
export const POOLER_DRIVERS: DriverName[] =
  PGBOUNCER_URL !== undefined && DATABASE_URL !== undefined ? ['postgres-js', 'node-postgres'] : [];

/** The test database's URL through PgBouncer. */
export function pooledUrl(): string {
  const direct = new URL(DATABASE_URL!);
  const via = new URL(PGBOUNCER_URL!);
  via.pathname = direct.pathname;
  return via.toString();
}

/**
 * A connection through PgBouncer. postgres.js: `prepare: false` (PgBouncer 1.18 in transaction mode
 * does not carry named prepared statements between server connections).
 */
export async function openPooled(
  driver: DriverName,
  schema?: Record<string, unknown>,
  options: { max?: number } = {},
): Promise<TestDb> {
  const url = pooledUrl();
  const config = relationalConfig(schema);
  if (driver === 'postgres-js') {
    const client = postgres(url, { max: options.max ?? 8, prepare: false, onnotice: () => {} });
    return {
      driver,
      db: drizzlePostgres({ client: client, ...config }) as never,
      raw: async (text, params = []) => (await client.unsafe(text, params as never[])) as never,
      close: () => client.end(),
    };
  }
  if (driver === 'node-postgres') {
    const pool = new pg.Pool({ connectionString: url, max: options.max ?? 8 });
    return {
      driver,
      db: drizzlePg({ client: pool, ...config }) as never,
      raw: async (text, params = []) => (await pool.query(text, params)).rows,
      close: () => pool.end(),
    };
  }
  throw new Error(`no PgBouncer connection for ${driver}`);
}
