/** `createKeyring`'s options, their defaults, and their validation (every problem reported at once). */
import { ByokConfigError } from '../errors.ts';
import type { Kek, KekFactory } from '../kms/kek.ts';
import type { AnyPgDatabase } from '../store/db.ts';
import type { DekCacheOptions } from './cache.ts';
import type { ByokEventListener } from './events.ts';
import type { HeartbeatOptions } from './heartbeat.ts';

export interface KeyringOptions {
  /** Drizzle database holding the key store tables (usually the same one your app uses). */
  db: AnyPgDatabase;
  /** The platform's KEK: wraps data keys of tenants without BYOK, and secrets in KEK configuration. */
  platformKek: Kek;
  /**
   * Older platform KEKs still accepted for unwrapping (after rotating the platform key), matched by
   * `keyRef`. Default none.
   */
  previousPlatformKeks?: readonly Kek[];
  /** Rebuild tenants' KEKs from stored configuration, by kind (`'aws-kms'`, `'gcp-kms'`). Default none. */
  kekFactories?: Readonly<Partial<Record<string, KekFactory>>>;
  /** Data key cache. Defaults: 10,000 keys, 5 minutes max age. */
  cache?: DekCacheOptions;
  /** Most KMS unwrap calls in flight at once per batch. Default 16. */
  unwrapConcurrency?: number;
  /** Most data keys one batch loads. Default 500. */
  maxBatchSize?: number;
  /** Region tried first when a data key is wrapped under KEKs in several regions. Default none. */
  preferredRegion?: string;
  /** Receives audit and observability events. Default none. Must not throw (errors are swallowed). */
  onEvent?: ByokEventListener;
  /**
   * Whether `db` has a single connection (PGlite). Then key store reads and writes made during a
   * transaction run inside that transaction (nothing else could run until it ends), and data keys
   * loaded or created there are used for that query only, never cached, so a rollback cannot leave a
   * key in the cache that the database no longer has. Default: detected (true for PGlite).
   */
  singleConnection?: boolean;
  /**
   * Write KMS calls, lifecycle changes and revocations to the `byok.audit` table (buffered, flushed
   * every second and by lifecycle operations). Default false: subscribe with `onEvent` instead.
   */
  auditTable?: boolean;
  /**
   * The key heartbeat `startListening()` starts (see `startHeartbeat`): a real unwrap per active KEK
   * of every tenant with cached keys, every `intervalMs` (default 30,000, jittered), so a revoked
   * key is noticed within one interval. `false`: `startListening()` starts none.
   */
  heartbeat?: HeartbeatOptions | false;
  /**
   * The keyring's connection budget for key store work, so that no pool size, driver or concurrency
   * can make a key load wait forever.
   */
  keyStore?: KeyStoreOptions;
  /**
   * The client `startListening()` LISTENs on, when the app's connections go through a pooler in
   * transaction mode (PgBouncer), where LISTEN does not work: a direct connection, e.g.
   * `postgres(DIRECT_URL, { max: 1 })`, `new pg.Client(DIRECT_URL)` or a `pg.Pool`. Default: a
   * connection of its own opened from `db`'s client configuration (never one of the app's).
   */
  listenClient?: unknown;
}

export interface KeyStoreOptions {
  /**
   * A Drizzle database of its own for key store work (its own small pool or a direct connection):
   * data keys are then loaded and created there, committed independently of the caller's
   * transactions. Default: `db`; then key loads made inside a transaction read through that
   * transaction, and a tenant's first data key created inside one is written in it (a savepoint),
   * used only by that transaction until it commits, and gone with it on rollback.
   */
  db?: AnyPgDatabase;
  /** Most key store queries in flight at once outside transactions. Default 4. */
  maxConcurrent?: number;
  /**
   * Longest wait, in ms, for a key store query (a slot in the budget, then the query itself) before
   * it fails with `KeyStoreBusyError`. Default 10,000.
   */
  waitTimeoutMs?: number;
}

const KEYRING_OPTIONS = [
  'db',
  'platformKek',
  'previousPlatformKeks',
  'kekFactories',
  'cache',
  'unwrapConcurrency',
  'maxBatchSize',
  'preferredRegion',
  'onEvent',
  'singleConnection',
  'auditTable',
  'heartbeat',
  'keyStore',
  'listenClient',
];

/**
 * Checks every option of `createKeyring` and throws one `ByokConfigError` listing every problem
 * (each naming the option and what it must be), so one run shows all there is to fix.
 */
export function validateKeyringOptions(options: KeyringOptions): void {
  if (options === null || typeof options !== 'object')
    throw new ByokConfigError('createKeyring(options) needs an options object');
  const o = options as unknown as Record<string, unknown>;
  const problems: string[] = [];
  const isKek = (k: unknown) => {
    const c = k as Partial<Kek> | null | undefined;
    return (
      c !== null &&
      typeof c === 'object' &&
      typeof c.wrap === 'function' &&
      typeof c.unwrap === 'function' &&
      typeof c.keyRef === 'string' &&
      typeof c.toConfig === 'function'
    );
  };
  const positive = (v: unknown) => v === undefined || (Number.isSafeInteger(v) && (v as number) >= 1);
  if (o.db === undefined || o.db === null || typeof (o.db as { select?: unknown }).select !== 'function')
    problems.push('`db` must be a Drizzle PostgreSQL database (drizzle(...))');
  if (!isKek(o.platformKek))
    problems.push('`platformKek` must be a KEK: localKek({ key }), awsKms(...) or gcpKms(...)');
  if (o.previousPlatformKeks !== undefined) {
    if (!Array.isArray(o.previousPlatformKeks))
      problems.push('`previousPlatformKeks` must be an array of KEKs');
    else
      o.previousPlatformKeks.forEach((k, i) => {
        if (!isKek(k)) problems.push(`\`previousPlatformKeks[${i}]\` must be a KEK`);
      });
  }
  if (o.kekFactories !== undefined) {
    if (o.kekFactories === null || typeof o.kekFactories !== 'object' || Array.isArray(o.kekFactories))
      problems.push("`kekFactories` must be an object such as { 'aws-kms': awsKekFactory }");
    else
      for (const [kind, f] of Object.entries(o.kekFactories))
        if (typeof f !== 'function')
          problems.push(`\`kekFactories['${kind}']\` must be a KEK factory function`);
  }
  if (o.cache !== undefined) {
    const c = o.cache as Record<string, unknown> | null;
    if (c === null || typeof c !== 'object')
      problems.push('`cache` must be an object { maxEntries, maxAgeMs }');
    else {
      if (!positive(c.maxEntries))
        problems.push(`\`cache.maxEntries\` must be a positive integer, got ${String(c.maxEntries)}`);
      if (
        c.maxAgeMs !== undefined &&
        !(typeof c.maxAgeMs === 'number' && Number.isFinite(c.maxAgeMs) && c.maxAgeMs > 0)
      )
        problems.push(
          `\`cache.maxAgeMs\` must be a positive number of milliseconds (a max age is required), got ${String(c.maxAgeMs)}`,
        );
      for (const k of Object.keys(c))
        if (k !== 'maxEntries' && k !== 'maxAgeMs')
          problems.push(`unknown option \`cache.${k}\` (known: maxEntries, maxAgeMs)`);
    }
  }
  for (const k of ['unwrapConcurrency', 'maxBatchSize'])
    if (!positive(o[k])) problems.push(`\`${k}\` must be a positive integer, got ${String(o[k])}`);
  if (o.preferredRegion !== undefined && (typeof o.preferredRegion !== 'string' || o.preferredRegion === ''))
    problems.push('`preferredRegion` must be a region name such as "eu-west-1"');
  if (o.onEvent !== undefined && typeof o.onEvent !== 'function')
    problems.push('`onEvent` must be a function (event) => void');
  for (const k of ['singleConnection', 'auditTable'])
    if (o[k] !== undefined && typeof o[k] !== 'boolean') problems.push(`\`${k}\` must be true or false`);
  if (o.keyStore !== undefined) {
    const ks = o.keyStore as Record<string, unknown> | null;
    if (ks === null || typeof ks !== 'object')
      problems.push('`keyStore` must be an object { db, maxConcurrent, waitTimeoutMs }');
    else {
      for (const k of ['maxConcurrent', 'waitTimeoutMs'])
        if (!positive(ks[k]))
          problems.push(`\`keyStore.${k}\` must be a positive integer, got ${String(ks[k])}`);
      for (const k of Object.keys(ks))
        if (k !== 'db' && k !== 'maxConcurrent' && k !== 'waitTimeoutMs')
          problems.push(`unknown option \`keyStore.${k}\` (known: db, maxConcurrent, waitTimeoutMs)`);
    }
  }
  for (const k of Object.keys(o))
    if (!KEYRING_OPTIONS.includes(k))
      problems.push(`unknown option \`${k}\` (known: ${KEYRING_OPTIONS.join(', ')})`);
  if (problems.length === 1) throw new ByokConfigError(`createKeyring: ${problems[0]}`);
  if (problems.length > 1)
    throw new ByokConfigError(
      `createKeyring: ${problems.length} problems in the options:\n  - ${problems.join('\n  - ')}`,
    );
}

export function assertKek(kek: unknown, what: string): asserts kek is Kek {
  const k = kek as Partial<Kek> | undefined;
  if (
    k === undefined ||
    k === null ||
    typeof k.wrap !== 'function' ||
    typeof k.unwrap !== 'function' ||
    typeof k.keyRef !== 'string' ||
    typeof k.toConfig !== 'function'
  ) {
    throw new ByokConfigError(`${what} must be a KEK (localKek(...), awsKms(...) or gcpKms(...))`);
  }
}

/**
 * One connection (PGlite, a node-postgres `Client`, postgres.js with `max: 1`): detected from the
 * Drizzle instance's client.
 */
export function isSingleConnection(db: AnyPgDatabase): boolean {
  const client = (db as { $client?: unknown }).$client as
    | {
        constructor?: { name?: string };
        waitReady?: unknown;
        connectionParameters?: unknown;
        totalCount?: unknown;
        options?: { max?: unknown };
        unsafe?: unknown;
      }
    | undefined;
  if (client === undefined) return false;
  if (client.constructor?.name === 'PGlite' || client.waitReady !== undefined) return true;
  if (typeof client.connectionParameters === 'object' && client.totalCount === undefined) return true;
  return typeof client.unsafe === 'function' && client.options?.max === 1;
}

export function positiveInt(n: number, name: string): number {
  if (!Number.isSafeInteger(n) || n < 1) throw new ByokConfigError(`${name} must be a positive integer`);
  return n;
}
