import { existsSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ByokConfigError } from '../errors.ts';
import type { AnyPgDatabase, Keyring } from '../keys/keyring.ts';
import type { Kek } from '../kms/kek.ts';
import type { BackfillOptions } from '../migrate/backfill.ts';
import { type ResolvedTarget, type RetrofitTableConfig, resolveTarget } from '../migrate/target.ts';

/**
 * The configuration the `drizzle-byok` CLI loads (`drizzle-byok.config.ts`, or `--config <path>`).
 *
 * ```ts
 * // drizzle-byok.config.ts
 * import { drizzle } from 'drizzle-orm/node-postgres';
 * import { createKeyring, defineConfig, localKek } from 'drizzle-byok';
 * import { awsKekFactory } from 'drizzle-byok/aws';
 * import { users } from './src/schema.ts';
 *
 * export default defineConfig({
 *   db: () => drizzle({ connection: process.env.DATABASE_URL! }),
 *   keyring: (db) =>
 *     createKeyring({ db, platformKek: localKek({ key: process.env.PLATFORM_KEK! }),
 *                     kekFactories: { 'aws-kms': awsKekFactory } }),
 *   tables: [{ table: users, tenantColumn: users.tenantId, columns: [users.email, users.phone] }],
 * });
 * ```
 */
export interface ByokCliConfig {
  /** The Drizzle PostgreSQL database, or a function (sync or async) returning it. Called once. */
  readonly db: AnyPgDatabase | (() => AnyPgDatabase | Promise<AnyPgDatabase>);
  /** The keyring (`createKeyring(...)`), or a function of the database returning it. Called once. */
  readonly keyring: Keyring | ((db: AnyPgDatabase) => Keyring | Promise<Keyring>);
  /** The tables `migrate` commands work on (`--table <name>` picks some). */
  readonly tables?: readonly RetrofitTableConfig[];
  /**
   * KEKs by name for `keys enable <tenant> --kek <name>` and `keys rotate <tenant> --kek <name>`:
   * a function of the tenant id returning its KEK(s) (e.g. an `awsKms(...)` with the tenant's role).
   */
  readonly keks?: Readonly<
    Record<string, (tenantId: string) => Kek | readonly Kek[] | Promise<Kek | readonly Kek[]>>
  >;
  /** Defaults of `migrate run` / `migrate rollback` (command-line flags win). */
  readonly backfill?: Pick<
    BackfillOptions,
    | 'batchSize'
    | 'chunkSize'
    | 'leaseMs'
    | 'rowsPerSecond'
    | 'busyTimeoutMs'
    | 'reencrypt'
    | 'skipTenantErrors'
  >;
  /** Releases connections when the command ends. Default: `db.$client.end()` or `.close()` when present. */
  readonly close?: (db: AnyPgDatabase) => void | Promise<void>;
}

/** Types a `drizzle-byok.config.ts`. Returns its argument; the CLI validates it when it loads it. */
export function defineConfig(config: ByokCliConfig): ByokCliConfig {
  return config;
}

/** Default config file names, tried in order in the working directory. */
export const CONFIG_FILES = [
  'drizzle-byok.config.ts',
  'drizzle-byok.config.mts',
  'drizzle-byok.config.js',
  'drizzle-byok.config.mjs',
];

/** A config problem: the CLI exits with code 2 and prints the message. */
export class CliConfigError extends ByokConfigError {}

/** A loaded, validated configuration with the database and keyring built. */
export interface LoadedConfig {
  readonly path: string;
  readonly config: ByokCliConfig;
  readonly db: AnyPgDatabase;
  readonly keyring: Keyring;
  close(): Promise<void>;
}

function kind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? 'an object' : typeof v === 'undefined' ? 'nothing' : `a ${typeof v}`;
}

/** Finds the config file: `--config` (relative to the working directory) or a default name. */
export function findConfig(cwd: string, explicit: string | undefined): string {
  if (explicit !== undefined) {
    const p = isAbsolute(explicit) ? explicit : resolve(cwd, explicit);
    if (!existsSync(p)) throw new CliConfigError(`config file ${explicit} not found (resolved to ${p})`);
    return p;
  }
  for (const name of CONFIG_FILES) {
    const p = resolve(cwd, name);
    if (existsSync(p)) return p;
  }
  throw new CliConfigError(
    `no config file: create drizzle-byok.config.ts in ${cwd} (export default defineConfig({ db, keyring, tables })) ` +
      'or pass --config <path>',
  );
}

/** Imports a config module and checks its shape. Every problem is listed, each naming what to fix. */
export async function importConfig(path: string): Promise<ByokCliConfig> {
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(path).href)) as Record<string, unknown>;
  } catch (e) {
    const code = (e as { code?: unknown })?.code;
    if (code === 'ERR_UNKNOWN_FILE_EXTENSION') {
      throw new CliConfigError(
        `cannot load ${path}: this Node.js does not run TypeScript. Use Node.js >= 22.18 (types are stripped ` +
          'natively), run the CLI with `node --experimental-strip-types`, or write the config in JavaScript (.mjs)',
      );
    }
    throw new CliConfigError(
      `the config file ${path} failed to load: ${(e as Error)?.message ?? String(e)}`,
      {
        cause: e,
      },
    );
  }
  const config = (mod.default ?? mod.config) as ByokCliConfig | undefined;
  if (config === undefined) {
    throw new CliConfigError(
      `${path} has no default export: end it with \`export default defineConfig({ ... })\``,
    );
  }
  validateConfig(config, path);
  return config;
}

export function validateConfig(config: ByokCliConfig, path: string): void {
  const problems: string[] = [];
  if (config === null || typeof config !== 'object') {
    throw new CliConfigError(
      `${path}: the default export must be an object (defineConfig({ ... })), got ${kind(config)}`,
    );
  }
  const c = config as unknown as Record<string, unknown>;
  if (typeof c.db !== 'function' && !isDb(c.db)) {
    problems.push(
      `\`db\` must be a Drizzle PostgreSQL database or a function returning one, got ${kind(c.db)}`,
    );
  }
  if (typeof c.keyring !== 'function' && !isKeyring(c.keyring)) {
    problems.push(
      `\`keyring\` must be a keyring (createKeyring(...)) or a function (db) => keyring, got ${kind(c.keyring)}`,
    );
  }
  if (c.tables !== undefined && !Array.isArray(c.tables)) {
    problems.push(`\`tables\` must be an array of { table, tenantColumn, columns }, got ${kind(c.tables)}`);
  }
  if (c.keks !== undefined) {
    if (c.keks === null || typeof c.keks !== 'object' || Array.isArray(c.keks)) {
      problems.push(`\`keks\` must be an object of named functions (tenantId) => Kek, got ${kind(c.keks)}`);
    } else {
      for (const [name, fn] of Object.entries(c.keks)) {
        if (typeof fn !== 'function')
          problems.push(`\`keks.${name}\` must be a function (tenantId) => Kek, got ${kind(fn)}`);
      }
    }
  }
  if (c.close !== undefined && typeof c.close !== 'function')
    problems.push(`\`close\` must be a function, got ${kind(c.close)}`);
  if (c.backfill !== undefined && (c.backfill === null || typeof c.backfill !== 'object')) {
    problems.push(`\`backfill\` must be an object of default options, got ${kind(c.backfill)}`);
  }
  const known = new Set(['db', 'keyring', 'tables', 'keks', 'backfill', 'close']);
  for (const k of Object.keys(c))
    if (!known.has(k)) problems.push(`unknown option \`${k}\` (known: ${[...known].join(', ')})`);
  if (problems.length > 0) {
    throw new CliConfigError(`${path}: invalid configuration:\n  - ${problems.join('\n  - ')}`);
  }
}

function isDb(v: unknown): v is AnyPgDatabase {
  return (
    v !== null &&
    typeof v === 'object' &&
    typeof (v as { execute?: unknown }).execute === 'function' &&
    typeof (v as { transaction?: unknown }).transaction === 'function'
  );
}

function isKeyring(v: unknown): v is Keyring {
  return (
    v !== null &&
    typeof v === 'object' &&
    typeof (v as { rotateDek?: unknown }).rotateDek === 'function' &&
    typeof (v as { withTenant?: unknown }).withTenant === 'function'
  );
}

/** Loads the config and builds the database and keyring. */
export async function loadConfig(cwd: string, explicit: string | undefined): Promise<LoadedConfig> {
  const path = findConfig(cwd, explicit);
  const config = await importConfig(path);
  const db = typeof config.db === 'function' ? await config.db() : config.db;
  if (!isDb(db))
    throw new CliConfigError(`${path}: \`db()\` must return a Drizzle PostgreSQL database, got ${kind(db)}`);
  let keyring: Keyring;
  try {
    keyring = typeof config.keyring === 'function' ? await config.keyring(db) : config.keyring;
  } catch (e) {
    await closeDb(config, db);
    if (e instanceof ByokConfigError)
      throw new CliConfigError(`${path}: keyring: ${e.message}`, { cause: e });
    throw e;
  }
  if (!isKeyring(keyring)) {
    await closeDb(config, db);
    throw new CliConfigError(
      `${path}: \`keyring(db)\` must return a keyring (createKeyring(...)), got ${kind(keyring)}`,
    );
  }
  return {
    path,
    config,
    db,
    keyring,
    close: async () => {
      await keyring.close().catch(() => undefined);
      await closeDb(config, db);
    },
  };
}

async function closeDb(config: ByokCliConfig, db: AnyPgDatabase): Promise<void> {
  try {
    if (config.close !== undefined) {
      await config.close(db);
      return;
    }
    const client = (db as { $client?: { end?: () => unknown; close?: () => unknown } }).$client;
    if (typeof client?.end === 'function') await client.end();
    else if (typeof client?.close === 'function') await client.close();
  } catch {
    // closing is best effort
  }
}

/** The configured tables, resolved, optionally filtered by `--table` (name or schema.name). */
export function selectTables(loaded: LoadedConfig, names: readonly string[]): ResolvedTarget[] {
  const tables = loaded.config.tables ?? [];
  if (tables.length === 0) {
    throw new CliConfigError(
      `${loaded.path}: \`tables\` is empty: list the tables to retrofit ({ table, tenantColumn, columns })`,
    );
  }
  const resolved = tables.map((t, i) => {
    try {
      return resolveTarget(t, `tables[${i}]`);
    } catch (e) {
      if (e instanceof ByokConfigError)
        throw new CliConfigError(`${loaded.path}: ${e.message}`, { cause: e });
      throw e;
    }
  });
  if (names.length === 0) return resolved;
  return names.map((n) => {
    const hit = resolved.filter((t) => t.qualified === n || t.table === n);
    if (hit.length === 1) return hit[0]!;
    throw new CliConfigError(
      hit.length === 0
        ? `no configured table named ${n} (configured: ${resolved.map((t) => t.qualified).join(', ')})`
        : `table name ${n} is ambiguous: use schema.table (${hit.map((t) => t.qualified).join(', ')})`,
    );
  });
}
