import { withPlugins, type WithEncryptionOptions } from '../drizzle/middleware.ts';
import { defaultPlugins } from '../drizzle/plugins.ts';
import type { AnyPgDatabase, Keyring } from '../keys/keyring.ts';
import { blindIndexPlugin } from './plugin.ts';

export type { WithEncryptionOptions };

/** The library's query pipeline: the Drizzle layer's plugins with the blind index among them. */
const PLUGINS = defaultPlugins([blindIndexPlugin]);

/**
 * Makes a Drizzle PostgreSQL database encrypt and decrypt its `encrypted.*` columns. Returns the
 * same instance, instrumented in place: its dialect (to refuse comparisons of encrypted columns
 * with plain values, to find each inserted row's tenant, and to maintain and look up blind indexes),
 * its session's prepared queries (to finish encryption and decryption that wait on a data key), and
 * every transaction and savepoint session it creates.
 */
export function withEncryption<TDb extends AnyPgDatabase>(
  db: TDb,
  keyring: Keyring,
  options: WithEncryptionOptions = {},
): TDb {
  return withPlugins(db, keyring, options, PLUGINS);
}
