import { randomBytes } from 'node:crypto';
import { drizzle as pgProxy } from 'drizzle-orm/pg-proxy';
import { describe, expect, it } from 'vitest';
import { eq, sql } from 'drizzle-orm';
import {
  createKeyring,
  EncryptedComparisonError,
  localKek,
  UnsupportedDrizzleError,
  withEncryption,
} from '../src/index.ts';
import { DRIVERS, MAIN_DRIVER, openDb, uniqueName } from './helpers/db.ts';
import { DRIZZLE_1 } from './helpers/drizzle-version.ts';
import { makeSchema } from './fixtures/schema.ts';

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

  it('every path from SQL to a query is guarded: sqlToQuery, and _sqlToQuery where Drizzle has it (1.0)', async () => {
    const h = await openDb(MAIN_DRIVER);
    try {
      const keyring = createKeyring({ db: h.db, platformKek: localKek({ key: randomBytes(32) }) });
      withEncryption(h.db, keyring);
      const p = makeSchema(uniqueName('paths')).patients;
      const dialect = (h.db as unknown as { dialect: Record<string, (s: unknown) => unknown> }).dialect;
      const bad = [eq(p.email, 'x'), sql`${p.name} = ${'x'}`, sql`upper(${p.name}::text)`];
      for (const s of bad) expect(() => dialect.sqlToQuery!(s)).toThrow(EncryptedComparisonError);
      // 1.0 builds selects through _sqlToQuery on tagged-template drivers (Bun SQL): guarded the same
      expect(typeof dialect._sqlToQuery).toBe(DRIZZLE_1 ? 'function' : 'undefined');
      if (DRIZZLE_1)
        for (const s of bad) expect(() => dialect._sqlToQuery!(s)).toThrow(EncryptedComparisonError);
      // and a plain statement still builds on each path
      expect((dialect.sqlToQuery!(sql`select ${1}`) as { sql: string }).sql).toBe('select $1');
      if (DRIZZLE_1) expect(dialect._sqlToQuery!(sql`select ${1}`)).toMatchObject({ params: [1] });
      await keyring.close();
    } finally {
      await h.close();
    }
  });
});
