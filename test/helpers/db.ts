import { randomBytes } from 'node:crypto';
import { PGlite } from '@electric-sql/pglite';
import type { Logger } from 'drizzle-orm';
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite';
import { drizzle as drizzlePg } from 'drizzle-orm/node-postgres';
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js';
import pg from 'pg';
import postgres from 'postgres';
import { inject } from 'vitest';
import type { PgDatabase } from 'drizzle-orm/pg-core';
type PgDb = PgDatabase<any, any, any>;
import { relationalConfig } from './drizzle-version.ts';

export type DriverName = 'postgres-js' | 'node-postgres' | 'pglite';

export const DATABASE_URL: string | undefined = inject('databaseUrl') || undefined;
export const BACKEND: string = inject('backend');

/** Drivers the shared suites run on: all three with a server, PGlite alone without one. */
export const DRIVERS: DriverName[] = DATABASE_URL ? ['postgres-js', 'node-postgres', 'pglite'] : ['pglite'];
/** The driver for tests that are not about drivers. */
export const MAIN_DRIVER: DriverName = DATABASE_URL ? 'postgres-js' : 'pglite';

export interface TestDb {
  readonly driver: DriverName;
  readonly db: PgDb & { query: any };
  /** Raw SQL through the driver, bypassing Drizzle: what the database really holds. */
  raw<T = Record<string, unknown>>(text: string, params?: unknown[]): Promise<T[]>;
  close(): Promise<void>;
}

export async function openDb(
  driver: DriverName,
  schema?: Record<string, any>,
  pglite?: PGlite,
  logger?: Logger,
): Promise<TestDb> {
  const config = { ...relationalConfig(schema), ...(logger === undefined ? {} : { logger }) };
  if (driver === 'postgres-js') {
    const client = postgres(DATABASE_URL!, { max: 8, onnotice: () => {} });
    return {
      driver,
      db: drizzlePostgres({ client: client, ...config }) as never,
      raw: async (text, params = []) => (await client.unsafe(text, params as never[])) as never,
      close: () => client.end(),
    };
  }
  if (driver === 'node-postgres') {
    const pool = new pg.Pool({ connectionString: DATABASE_URL!, max: 8 });
    return {
      driver,
      db: drizzlePg({ client: pool, ...config }) as never,
      raw: async (text, params = []) => (await pool.query(text, params)).rows,
      close: () => pool.end(),
    };
  }
  const owned = pglite === undefined;
  const client = pglite ?? new PGlite();
  return {
    driver,
    db: drizzlePglite({ client: client, ...config }) as never,
    raw: async (text, params = []) => (await client.query(text, params)).rows as never,
    close: async () => {
      if (owned) await client.close();
    },
  };
}

/** A fresh PostgreSQL schema name, so parallel test files never share tables. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${randomBytes(4).toString('hex')}`;
}

export function uniqueTenant(prefix = 'tenant'): string {
  return `${prefix}-${randomBytes(6).toString('hex')}`;
}
