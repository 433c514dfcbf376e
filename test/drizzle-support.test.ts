import { randomBytes } from 'node:crypto';
import { drizzle as pgProxy } from 'drizzle-orm/pg-proxy';
import { describe, expect, it } from 'vitest';
import { createKeyring, localKek, UnsupportedDrizzleError, withEncryption } from '../src/index.ts';
import { DRIVERS, openDb } from './helpers/db.ts';

// Drizzle drivers drizzle-byok is not tested with are refused before anything reaches them: their
// query path was never shown to pass every value through the encryption and the guard.
describe('Drizzle drivers', () => {
  it('a driver outside the tested set (pg-proxy) is refused by createKeyring and withEncryption, nothing sent', async () => {
    const sent: string[] = [];
    const db = pgProxy(async (query) => {
      sent.push(query);
      return { rows: [] };
    });
    const platformKek = localKek({ key: randomBytes(32) });
    expect(() => createKeyring({ db, platformKek })).toThrow(UnsupportedDrizzleError);
    try {
      createKeyring({ db, platformKek });
    } catch (e) {
      expect((e as UnsupportedDrizzleError).code).toBe('ERR_BYOK_UNSUPPORTED_DRIZZLE');
      expect((e as Error).message).toMatch(/PgRemoteSession/);
      expect((e as Error).message).toMatch(/postgres-js.*node-postgres.*pglite/);
    }
    expect(sent).toEqual([]);
  });

  it.each(DRIVERS)('the tested driver %s is accepted, also inside a transaction', async (driver) => {
    const h = await openDb(driver);
    try {
      const keyring = createKeyring({ db: h.db, platformKek: localKek({ key: randomBytes(32) }) });
      expect(() => withEncryption(h.db, keyring)).not.toThrow();
      await h.db.transaction(async (tx) => {
        expect(() => withEncryption(tx as never, keyring)).not.toThrow();
      });
      await keyring.close();
    } finally {
      await h.close();
    }
  });
});
