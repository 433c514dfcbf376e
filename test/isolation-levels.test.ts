/**
 * First writes of a tenant inside REPEATABLE READ and SERIALIZABLE transactions, while another
 * instance creates the tenant's first data key after the transaction's snapshot: the transaction
 * cannot see that key, and creating a second active one would hit the store's one-active-key-per-
 * tenant index. It must use the key the other instance committed (read from the store, outside
 * the snapshot), write, commit, and leave one active data key with every row readable. And when
 * the tenant brings its own key (another instance's enableByok) after the snapshot, the first data
 * key must be wrapped under that key, never under the KEK set the snapshot still shows.
 */
import { randomBytes } from 'node:crypto';
import { eq, sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKeyring, localKek, withAnyTenant, withEncryption, withTenant } from '../src/index.ts';
import { awsKekFactory, awsKms } from '../src/kms/aws/index.ts';
import { type AwsKmsServer, startAwsKmsServer } from '../src/testing/aws/index.ts';
import { DATABASE_URL, openDb, type TestDb, uniqueTenant } from './helpers/db.ts';
import { type EncryptedDb, setupEncryptedDb } from './helpers/setup.ts';

/**
 * Both snapshot isolation levels, the tenant new to the store or known to it before the snapshot
 * (e.g. its BYOK key was set up first: then it is the data key's insert, not the tenant row's, that
 * meets the other instance's work).
 */
const CASES = [
  ['repeatable read', false],
  ['serializable', false],
  ['repeatable read', true],
  ['serializable', true],
] as const;

describe.runIf(DATABASE_URL !== undefined)(
  'first writes in repeatable read and serializable transactions',
  () => {
    const key = randomBytes(32);
    const kekFactories = { 'aws-kms': awsKekFactory };
    let e: EncryptedDb;
    let other: TestDb;
    let otherKeyring: ReturnType<typeof createKeyring>;
    let aws: AwsKmsServer;

    beforeAll(async () => {
      aws = await startAwsKmsServer();
      e = await setupEncryptedDb('postgres-js', { kek: localKek({ key }), keyring: { kekFactories } });
      other = await openDb('postgres-js', e.s.relational);
      otherKeyring = createKeyring({ db: other.db, platformKek: localKek({ key }), kekFactories });
      withEncryption(other.db, otherKeyring, { tenantColumn: 'tenant_id' });
    });
    afterAll(async () => {
      await otherKeyring?.close();
      await other?.close();
      await e?.close();
      await aws?.close();
    });

    for (const [isolationLevel, known] of CASES) {
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
            db.select({ name: p.name }).from(p).where(eq(p.tenantId, T)),
          );
          expect(rows.map((r) => r.name).sort()).toEqual(['from the other', 'from the transaction']);
        }
        await withAnyTenant(() => e.db.delete(p).where(eq(p.tenantId, T)));
      });
    }

    for (const [isolationLevel, known] of CASES) {
      it(`${isolationLevel}${known ? ', tenant known before' : ''}: the first data key is wrapped under the KEKs the tenant has now, not those of the snapshot`, async () => {
        const T = uniqueTenant('isokek');
        if (known) await e.tdb.raw('insert into byok.tenants (tenant_id) values ($1)', [T]);
        const p = e.s.patients;
        const user = aws.addUser();
        const cmk = aws.createKey();
        const kek = awsKms({
          keyArn: cmk.arn,
          endpoint: aws.endpoint,
          auth: { type: 'access-keys', accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
        });
        await e.db.transaction(
          async (tx) => {
            await tx.execute(sql`select 1`); // the snapshot: the tenant has no KEK of its own yet
            await otherKeyring.enableByok(T, kek); // another instance: the tenant brings its key now
            await withTenant(T, () => tx.insert(p).values({ tenantId: T, name: 'first' }));
          },
          { isolationLevel },
        );
        // wrapped under the tenant's KEK: a platform-only wrap would escape the tenant's revocation
        const wraps = (await e.tdb.raw(
          `select w.kek_id is not null as own from byok.dek_wraps w join byok.deks d on d.id = w.dek_id
            where d.tenant_id = $1 and d.state = 'active'`,
          [T],
        )) as { own: boolean }[];
        expect(wraps.length).toBeGreaterThan(0);
        expect(wraps.every((w) => w.own)).toBe(true);
        e.keyring.clearCache();
        const rows = await withTenant(T, () =>
          e.db.select({ name: p.name }).from(p).where(eq(p.tenantId, T)),
        );
        expect(rows).toEqual([{ name: 'first' }]);
        await withAnyTenant(() => e.db.delete(p).where(eq(p.tenantId, T)));
        await kek.close?.();
      });
    }
  },
);
