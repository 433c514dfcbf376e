import { is } from 'drizzle-orm';
import { PgDialect } from 'drizzle-orm/pg-core';
import { ByokConfigError } from '../errors.ts';

/** Refuses Drizzle instances of other databases (MySQL, SQLite) up front. */
export function assertPgDatabase(d: unknown, what: string): void {
  const dialect = (d as { dialect?: unknown } | null)?.dialect;
  if (!is(dialect, PgDialect)) {
    const kind = (dialect as { constructor?: { name?: string } } | undefined)?.constructor?.name;
    throw new ByokConfigError(
      `${what}: db must be a Drizzle PostgreSQL database (drizzle-orm/postgres-js, node-postgres, ` +
        `pglite, ...)${kind ? `, got a ${kind}` : ''}`,
    );
  }
}
