/**
 * First writes of a tenant inside REPEATABLE READ and SERIALIZABLE transactions, while another
 * instance creates the tenant's first data key after the transaction's snapshot: the transaction
 * cannot see that key, and creating a second active one would hit the store's one-active-key-per-
 * tenant index. It must use the key the other instance committed (read from the store, outside
 * the snapshot), write, commit, and leave one active data key with every row readable.
 */
import { randomBytes } from 'node:crypto';
import { and, eq, sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKeyring, localKek, withAnyTenant, withEncryption, withTenant } from '../src/index.ts';
import { DATABASE_URL, openDb, type TestDb, uniqueTenant } from './helpers/db.ts';
import { type EncryptedDb, setupEncryptedDb } from './helpers/setup.ts';

describe.runIf(DATABASE_URL !== undefined)(
  'first writes in repeatable read and serializable transactions',
  () => {
    const key = randomBytes(32);
    let e: EncryptedDb;
    let other: TestDb;

    beforeAll(async () => {
      e = await setupEncryptedDb('postgres-js', { kek: localKek({ key }) });
      other = await openDb('postgres-js', e.s.relational);
      withEncryption(other.db, createKeyring({ db: other.db, platformKek: localKek({ key }) }), {
        tenantColumn: 'tenant_id',
      });
    });
    afterAll(async () => {
      await other?.close();
      await e?.close();
    });

    for (const [isolationLevel, known] of [
      ['repeatable read', false],
      ['serializable', false],
      // the tenant is known to the store before the snapshot (e.g. its BYOK key was set up first):
      // then it is the data key's insert that meets the other instance's key
      ['repeatable read', true],
      ['serializable', true],
    ] as const) {
      it(`${isolationLevel}${known ? ', tenant known before' : ''}: a data key committed after the snapshot is used, not duplicated`, async () => {
        const T = uniqueTenant('iso');
        const p = e.s.patients;
        if (known) await e.tdb.raw('insert into byok.tenants (tenant_id) values ($1)', [T]);
        await e.db.transaction(
          async (tx) => {
            await tx.execute(sql`select 1`); // the snapshot is taken here
            // another instance writes the tenant's first row (and creates its first data key) now
            await withTenant(T, () => other.db.insert(p).values({ tenantId: T, name: 'from the other' }));
            await withTenant(T, () => tx.insert(p).values({ tenantId: T, name: 'from the transaction' }));
          },
          { isolationLevel },
        );
        const [{ n }] = (await e.tdb.raw(
          `select count(*)::int as n from byok.deks where tenant_id = $1 and state = 'active'`,
          [T],
        )) as { n: number }[];
        expect(n).toBe(1);
        for (const db of [e.db, other.db]) {
          const rows = await withTenant(T, () =>
            db
              .select({ name: p.name })
              .from(p)
              .where(and(eq(p.tenantId, T))),
          );
          expect(rows.map((r) => r.name).sort()).toEqual(['from the other', 'from the transaction']);
        }
        await withAnyTenant(() => e.db.delete(p).where(eq(p.tenantId, T)));
      });
    }
  },
);
