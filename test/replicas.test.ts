import { randomBytes } from 'node:crypto';
import { eq } from 'drizzle-orm';
import { withReplicas } from 'drizzle-orm/pg-core';
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js';
import postgres from 'postgres';
import { describe, expect, it } from 'vitest';
import { createKeyring, installKeyStore, localKek, withEncryption, withTenant } from '../src/index.ts';
import { DATABASE_URL, uniqueName, uniqueTenant } from './helpers/db.ts';
import { makeSchema } from './fixtures/schema.ts';
import { DRIZZLE_1, relationalConfig } from './helpers/drizzle-version.ts';

/**
 * `withReplicas(primary, [replica])`: reads go to the replica, key store writes to the primary, and
 * a data key created a moment ago on the primary resolves while the replica has not seen it. A
 * second database stands in for a replica that lags: it gets the app's rows, not the new key.
 */
describe.runIf(DATABASE_URL)('withReplicas', () => {
  it('reads route to the replica; a fresh data key resolves from the primary while the replica lags', async () => {
    const admin = postgres(DATABASE_URL!, { max: 1, onnotice: () => {} });
    const replicaName = uniqueName('byok_replica');
    await admin.unsafe(`create database "${replicaName}"`);
    const replicaUrl = new URL(DATABASE_URL!);
    replicaUrl.pathname = `/${replicaName}`;
    const pc = postgres(DATABASE_URL!, { max: 4, onnotice: () => {} });
    const rc = postgres(replicaUrl.toString(), { max: 4, onnotice: () => {} });
    const s = makeSchema(uniqueName('repl'));
    try {
      const primary = drizzlePostgres({ client: pc, ...relationalConfig(s.relational) });
      const replica = drizzlePostgres({ client: rc, ...relationalConfig(s.relational) });
      for (const stmt of s.ddl) {
        await pc.unsafe(stmt);
        await rc.unsafe(stmt);
      }
      await installKeyStore(replica); // the replica has the key store tables, not the new keys
      const db = withReplicas(primary, [replica]);
      const keyring = createKeyring({ db, platformKek: localKek({ key: randomBytes(32) }) });
      withEncryption(db, keyring, { tenantColumn: 'tenant_id' });
      await keyring.installKeyStore();
      const T = uniqueTenant('replica');
      const [row] = await withTenant(T, () =>
        db.insert(s.patients).values({ tenantId: T, name: 'fresh key' }).returning(),
      );
      // the key store write went to the primary only
      expect(await pc.unsafe('select count(*)::int as n from byok.deks where tenant_id = $1', [T])).toEqual([
        { n: 1 },
      ]);
      expect(await rc.unsafe('select count(*)::int as n from byok.deks where tenant_id = $1', [T])).toEqual([
        { n: 0 },
      ]);
      // replication brings the row (its ciphertext), not yet the key
      const [stored] = await pc.unsafe(`select id, tenant_id, name from "${s.name}".patients where id = $1`, [
        row!.id,
      ]);
      await rc.unsafe(`insert into "${s.name}".patients (id, tenant_id, name) values ($1, $2, $3)`, [
        stored!.id,
        stored!.tenant_id,
        stored!.name,
      ]);
      await rc.unsafe(
        `insert into "${s.name}".patients (tenant_id, name) select tenant_id, name from "${s.name}".patients`,
      );
      keyring.clearCache();
      // 0.45's withReplicas routes selects to a replica; 1.0 reads the primary unless asked: `$replica`
      const reader = DRIZZLE_1 ? (db as unknown as { $replica: typeof db }).$replica : db;
      const rows = await withTenant(T, () => reader.select().from(s.patients));
      // two rows: only the replica has the second, so the read went there; both decrypt
      expect(rows.map((r: { name: string }) => r.name)).toEqual(['fresh key', 'fresh key']);
      keyring.clearCache();
      const rel = await withTenant(T, () =>
        (
          reader as unknown as { query: { patients: { findFirst(c: unknown): Promise<{ name: string }> } } }
        ).query.patients.findFirst({
          where: DRIZZLE_1 ? { id: row!.id } : eq(s.patients.id, row!.id),
        }),
      );
      expect(rel?.name).toBe('fresh key');
      await keyring.close();
    } finally {
      await pc.end();
      await rc.end();
      await admin.unsafe(`drop database if exists "${replicaName}" with (force)`);
      await admin.end();
    }
  });
});
