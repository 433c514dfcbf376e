import { DatabaseUnavailableError, isByokError, KeyStoreMissingError } from '../errors.ts';

/**
 * Turns the database failures a newcomer meets first into typed errors that say what to do:
 * - the key store tables do not exist (PostgreSQL `42P01` undefined table / `3F000` undefined
 *   schema, naming the `byok` schema) → `KeyStoreMissingError`;
 * - the database cannot be reached or refuses the connection (socket errors, postgres.js connection
 *   errors, PostgreSQL `08*` connection exceptions, `28*` authentication, `3D000` unknown database,
 *   `57P0x` shutting down / starting up, `53300` too many connections) → `DatabaseUnavailableError`.
 *
 * Principle: the message is built only from the driver's error (code, address, PostgreSQL's own
 * message), never from Drizzle's `DrizzleQueryError`, whose message carries the SQL text and the
 * query parameters; the cause is that innermost driver error. Anything else passes through as is.
 */
export function translateStoreError(e: unknown): unknown {
  if (isByokError(e)) return e;
  const chain = causes(e);
  for (const c of chain) {
    const code = codeOf(c);
    const message = messageOf(c);
    if ((code === '42P01' || code === '3F000') && /(^|[^a-z0-9_])"?byok"?[."]/i.test(message)) {
      return new KeyStoreMissingError(
        `the drizzle-byok key store does not exist in this database (${message}): create it once with ` +
          '`await keyring.installKeyStore()`, or `npx drizzle-byok migrate install`, or apply the SQL files ' +
          'in node_modules/drizzle-byok/migrations/ with your migration tool',
        { cause: safeCause(c) },
      );
    }
  }
  for (const c of chain) {
    const reason = unavailable(c);
    if (reason !== undefined) {
      return new DatabaseUnavailableError(
        `cannot use the database: ${reason}. Check that PostgreSQL is running and that the connection ` +
          'string (e.g. DATABASE_URL) names the right host, port, database and user',
        { cause: safeCause(c) },
      );
    }
  }
  return e;
}

/**
 * The driver error reduced to what diagnosis needs: name, code, message and the address. Driver
 * errors can carry the query and its parameters (PGlite's `query` / `params`): those are dropped.
 */
function safeCause(c: object): Error {
  const out = new Error(messageOf(c)) as Error & Record<string, unknown>;
  const { name, address, port, severity } = c as Record<string, unknown>;
  if (typeof name === 'string') out.name = name;
  out.code = codeOf(c);
  if (typeof severity === 'string') out.severity = severity;
  if (typeof address === 'string') out.address = address;
  if (typeof port === 'number') out.port = port;
  return out;
}

/** `await`-friendly: rethrows `e` translated. */
export function rethrowStoreError(e: unknown): never {
  throw translateStoreError(e);
}

const SOCKET_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EPIPE',
  // postgres.js
  'CONNECT_TIMEOUT',
  'CONNECTION_CLOSED',
  'CONNECTION_ENDED',
  'CONNECTION_DESTROYED',
]);

function unavailable(c: object): string | undefined {
  const code = codeOf(c);
  const message = messageOf(c);
  if (SOCKET_CODES.has(code)) {
    const { address, port } = c as { address?: unknown; port?: unknown };
    const where =
      typeof address === 'string' ? ` ${address}${typeof port === 'number' ? `:${port}` : ''}` : '';
    // Socket messages ("connect ECONNREFUSED 127.0.0.1:5432", "getaddrinfo ENOTFOUND db") hold no secrets.
    return where !== '' && !message.includes(address as string)
      ? `${code}${where} (${message})`
      : message || code;
  }
  if (/^(08|28)[0-9A-Z]{3}$/.test(code) || code === '3D000' || code === '53300' || /^57P0[1-3]$/.test(code)) {
    return `PostgreSQL error ${code}: ${message}`;
  }
  return undefined;
}

/** Whether a driver error in `e`'s cause chain has one of the PostgreSQL SQLSTATEs `codes`. */
export function hasSqlState(e: unknown, codes: readonly string[]): boolean {
  return causes(e).some((c) => codes.includes(codeOf(c)));
}

/** `e`, its causes, and the errors of any AggregateError on the way (bounded, cycle-safe). */
function causes(e: unknown): object[] {
  const out: object[] = [];
  const todo: unknown[] = [e];
  while (todo.length > 0 && out.length < 16) {
    const c = todo.shift();
    if (c === null || typeof c !== 'object' || out.includes(c)) continue;
    out.push(c);
    todo.push((c as { cause?: unknown }).cause);
    if (c instanceof AggregateError) todo.push(...c.errors);
  }
  return out;
}

function codeOf(c: object): string {
  const code = (c as { code?: unknown }).code;
  return typeof code === 'string' ? code : '';
}

function messageOf(c: object): string {
  // A DrizzleQueryError's message is the SQL and its params: never used.
  if ((c as { name?: unknown }).name === 'DrizzleQueryError') return '';
  const m = (c as { message?: unknown }).message;
  return typeof m === 'string' ? m : '';
}
