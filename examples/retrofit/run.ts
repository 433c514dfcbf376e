/**
 * Retrofit an existing app, end to end, on an embedded PostgreSQL (PGlite): no server, no cloud.
 *
 *   node examples/retrofit/run.ts
 *
 * The steps are the ones docs/retrofit.md describes for production; here the "deploys" are new
 * table declarations in the same process, and the CLI steps (`drizzle-byok migrate ...`) are the
 * library calls the CLI makes.
 */
import { randomBytes } from 'node:crypto';
import { PGlite } from '@electric-sql/pglite';
import { asc, eq } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/pglite';
import {
  createKeyring,
  DecryptionFailedError,
  localKek,
  planBackfill,
  runBackfill,
  verifyBackfill,
  withEncryption,
} from '../../src/index.ts';
import { users as before } from './schema-before.ts';
import { retrofitTables, usersTable } from './schema.ts';

const ROWS = 20_000;
const TENANTS = 25;
const step = (n: number, title: string) => console.log(`\n${n}. ${title}`);
const pg = new PGlite();
const db = drizzle({ client: pg });
const raw = async (q: string) => (await pg.query<Record<string, unknown>>(q)).rows;
const show = (rows: Record<string, unknown>[]) =>
  console.table(
    rows.map((r) =>
      Object.fromEntries(
        Object.entries(r).map(([k, v]) => [
          k,
          v instanceof Uint8Array
            ? `bytea ${v.length} B`
            : typeof v === 'string' && v.length > 40
              ? `${v.slice(0, 37)}...`
              : v,
        ]),
      ),
    ),
  );

step(0, 'Before: the app stores plaintext');
await raw(
  'create table users (id bigserial primary key, tenant_id text not null, email text, note text, ssn text)',
);
await pg.query(
  `insert into users (tenant_id, email, note, ssn)
   select 'tenant-' || (g % ${TENANTS}), 'user' || g || '@example.com', 'likes tea #' || g,
          lpad((g * 7919 % 1000000000)::text, 9, '0')
   from generate_series(1, ${ROWS}) g`,
);
const oldApp = drizzle({ client: pg });
console.log(await oldApp.select().from(before).where(eq(before.id, 1)));

step(1, 'Install the key store and checkpoint tables (drizzle-byok migrate install)');
const keyring = createKeyring({ db, platformKek: localKek({ key: randomBytes(32) }) });
await keyring.installKeyStore();

step(2, 'Add the shadow column for the bytea target (no table rewrite)');
const ddl = 'ALTER TABLE "users" ADD COLUMN "ssn_enc" bytea;';
console.log(`   ${ddl}`);
await raw(ddl);

step(3, "Deploy the app with encrypted columns in 'passthrough' mode, dual-writing ssn and ssn_enc");
const app = withEncryption(db, keyring, { tenantColumn: 'tenant_id' });
const users = usersTable('passthrough');
await keyring.withTenant('tenant-1', () =>
  app
    .update(users)
    .set({ email: 'new@example.com', ssn: '123456789', ssnEnc: '123456789' })
    .where(eq(users.id, 1)),
);
const mixed = await keyring.withTenant('tenant-1', () =>
  app
    .select({ id: users.id, email: users.email, note: users.note })
    .from(users)
    .where(eq(users.tenantId, 'tenant-1'))
    .orderBy(asc(users.id))
    .limit(2),
);
console.log('   the app reads encrypted and plaintext rows alike:', mixed);
show(await raw('select id, email, note, ssn, ssn_enc from users order by id limit 2'));

step(4, 'Plan, backfill with progress, verify (drizzle-byok migrate plan | run | verify)');
const target = retrofitTables[0]!;
const plan = await planBackfill(db, keyring, target);
console.log(
  `   ${plan.table}: ${plan.rows} rows; plaintext values per column: ${plan.columns.map((c) => `${c.column} ${c.plaintext}`).join(', ')}`,
);
let lastPrint = 0;
const result = await runBackfill(db, keyring, target, {
  batchSize: 1000,
  onProgress: (p) => {
    if (p.rowsDone - lastPrint < 5000 && p.rowsDone < p.rowsTotal) return;
    lastPrint = p.rowsDone;
    console.log(
      `   ${p.rowsDone}/${p.rowsTotal} rows, ${Math.round(p.rowsPerSecond)} rows/s, ETA ${p.etaSeconds === null ? '?' : p.etaSeconds.toFixed(1)} s`,
    );
  },
});
console.log(
  `   encrypted ${result.written} values (${result.alreadyDone} already encrypted by the app) in ${Math.round(result.elapsedMs)} ms`,
);
const verify = await verifyBackfill(db, keyring, target);
console.log(
  `   verify: ${verify.ok ? 'OK' : 'NOT OK'}, plaintext ${verify.plaintext}, unreadable ${verify.unreadable}, mismatched ${verify.mismatched}`,
);

step(5, 'Switch: strict mode for the in-place columns, reads from ssn_enc; then drop the old column');
const strict = usersTable('strict');
const [row] = await keyring.withTenant('tenant-2', () =>
  app.select({ email: strict.email, ssn: strict.ssnEnc }).from(strict).where(eq(strict.id, 2)),
);
console.log('   the app reads:', row);
await raw('ALTER TABLE "users" DROP COLUMN "ssn";');
console.log('   ALTER TABLE "users" DROP COLUMN "ssn";');
console.log('   what the database holds now:');
show(await raw('select id, tenant_id, email, note, ssn_enc from users order by id limit 3'));

step(6, 'Strict mode refuses plaintext: a value written behind the app is a decryption failure');
await raw(`update users set note = 'sneaked in as plaintext' where id = 3`);
try {
  await keyring.withTenant('tenant-3', () =>
    app.select({ note: strict.note }).from(strict).where(eq(strict.id, 3)),
  );
} catch (e) {
  console.log(
    `   ${e instanceof DecryptionFailedError ? 'DecryptionFailedError' : String(e)}: ${(e as Error).message}`,
  );
}

await keyring.close();
await pg.close();
