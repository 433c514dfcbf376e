import { entityKind, is } from 'drizzle-orm';
import { PgDialect } from 'drizzle-orm/pg-core';
import { ByokConfigError, UnsupportedDrizzleError } from '../errors.ts';

/**
 * The Drizzle sessions (drivers) drizzle-byok is tested with. Any other driver is refused: its
 * query path (row shaping, prepared statements, transactions) has not been checked to pass every
 * value through the encryption and the guard.
 */
export const TESTED_SESSIONS: readonly string[] = ['PostgresJsSession', 'NodePgSession', 'PgliteSession'];

/** The entity kinds of a value's class and its ancestors (Drizzle's `entityKind`). */
function kindsOf(value: unknown): string[] {
  const kinds: string[] = [];
  let ctor = (value as { constructor?: unknown } | null)?.constructor as
    | (Record<symbol, unknown> & { prototype?: unknown })
    | undefined;
  while (typeof ctor === 'function') {
    const kind = Object.hasOwn(ctor, entityKind) ? ctor[entityKind] : undefined;
    if (typeof kind === 'string') kinds.push(kind);
    ctor = Object.getPrototypeOf(ctor) as typeof ctor;
  }
  return kinds;
}

/**
 * Refuses Drizzle instances of other databases (MySQL, SQLite) and PostgreSQL drivers this library
 * is not tested with, up front.
 */
export function assertPgDatabase(d: unknown, what: string): void {
  const dialect = (d as { dialect?: unknown } | null)?.dialect;
  if (!is(dialect, PgDialect)) {
    const kind = (dialect as { constructor?: { name?: string } } | undefined)?.constructor?.name;
    throw new ByokConfigError(
      `${what}: db must be a Drizzle PostgreSQL database (drizzle-orm/postgres-js, node-postgres, ` +
        `pglite, ...)${kind ? `, got a ${kind}` : ''}`,
    );
  }
  const session = (d as { session?: unknown }).session;
  const kinds = kindsOf(session);
  if (!kinds.some((k) => TESTED_SESSIONS.includes(k))) {
    throw new UnsupportedDrizzleError(
      `${what}: the Drizzle driver of db (${kinds[0] ?? 'unknown session'}) is not one drizzle-byok is ` +
        'tested with; use drizzle-orm/postgres-js, drizzle-orm/node-postgres or drizzle-orm/pglite',
    );
  }
}
