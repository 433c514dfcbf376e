/**
 * `npm run demo`: drizzle-byok end to end on an embedded PostgreSQL (PGlite). No server, no cloud
 * account, no environment: the platform key is generated for this run.
 *
 * Two tenants write and read encrypted rows; the demo shows what the database really stores next
 * to what the app sees, then the failures that must be loud: a tenant reading another tenant's
 * rows, a tampered ciphertext, and a comparison on an encrypted column.
 */
import { randomBytes } from 'node:crypto';
import { PGlite } from '@electric-sql/pglite';
import { eq } from 'drizzle-orm';
import { pgTable, text, uuid } from 'drizzle-orm/pg-core';
import { drizzle } from 'drizzle-orm/pglite';
import {
  createKeyring,
  DecryptionFailedError,
  EncryptedComparisonError,
  encrypted,
  isByokError,
  localKek,
  withEncryption,
} from '../src/index.ts';

interface MedicalRecord {
  blood: string;
  allergies: string[];
}

const patients = pgTable('patients', {
  id: uuid('id').primaryKey().defaultRandom(),
  tenantId: text('tenant_id').notNull(),
  name: encrypted.text('name').notNull(),
  record: encrypted.json<MedicalRecord>('record'),
});

const started = performance.now();
const heading = (n: number, title: string) => console.log(`\n${n}. ${title}`);
const pad = (s: string, n: number) => (s.length > n ? `${s.slice(0, n - 1)}…` : s.padEnd(n));
/** A stored envelope, shortened: format+flags, start of the data key id, start of the IV, length. */
const short = (b: Uint8Array | null) => {
  if (b === null) return 'NULL';
  const h = Buffer.from(b).toString('hex');
  return `${h.slice(0, 4)} ${h.slice(4, 12)}… ${h.slice(36, 44)}… (${b.length} B)`;
};
/** Runs `fn`, which must throw an `expected` error, and prints its code and message. */
async function expectError(
  what: string,
  expected: abstract new (...args: never[]) => Error,
  fn: () => Promise<unknown>,
): Promise<void> {
  console.log(`   ${what}`);
  try {
    await fn();
  } catch (e) {
    if (!(e instanceof expected) || !isByokError(e)) throw e;
    console.log(`     → ${e.name} [${e.code}]`);
    console.log(`       "${e.message}"`);
    return;
  }
  console.log('     → no error (unexpected!)');
  process.exitCode = 1;
}

console.log('drizzle-byok demo: per-tenant envelope encryption of Drizzle columns');
console.log('Embedded PostgreSQL (PGlite, in memory): no server, no cloud account, no environment.');

// 1. Setup ------------------------------------------------------------------------------------
const pg = new PGlite();
const db = drizzle({ client: pg });
const platformKek = localKek({ key: randomBytes(32) });
const keyring = createKeyring({ db, platformKek });
withEncryption(db, keyring, { tenantColumn: 'tenant_id' });

heading(1, 'Setup');
console.log(
  `   Platform key: 32 random bytes generated at start (randomBytes), identified as ${platformKek.keyRef}`,
);
console.log(
  '   (only its fingerprint is ever printed; in production it comes from your secret store or a KMS).',
);
await keyring.installKeyStore();
await pg.exec(`create table patients (
  id uuid primary key default gen_random_uuid(),
  tenant_id text not null,
  name bytea not null,
  record bytea
)`);
console.log(
  '   Key store installed (schema byok); table patients: id, tenant_id (plain), name, record (bytea).',
);

// 2. Writes -------------------------------------------------------------------------------------
heading(2, 'Two tenants write rows (each tenant gets its own data key on first write)');
const data: Record<string, { name: string; record: MedicalRecord }[]> = {
  acme: [
    { name: 'Ada Lovelace', record: { blood: 'A+', allergies: ['penicillin'] } },
    { name: 'Alan Turing', record: { blood: 'O-', allergies: [] } },
  ],
  globex: [{ name: 'Grace Hopper', record: { blood: 'B+', allergies: ['latex'] } }],
};
for (const [tenant, rows] of Object.entries(data)) {
  await keyring.withTenant(tenant, async () => {
    await db.insert(patients).values(rows.map((r) => ({ tenantId: tenant, ...r })));
  });
  console.log(`   ${tenant}: inserted ${rows.length} row(s)`);
}

// 3. Stored vs seen -----------------------------------------------------------------------------
heading(3, 'What PostgreSQL stores vs what the app sees');
const raw = await pg.query<{ id: string; tenant_id: string; name: Uint8Array; record: Uint8Array | null }>(
  'select id, tenant_id, name, record from patients order by tenant_id, id',
);
const seen = new Map<string, typeof patients.$inferSelect>();
for (const tenant of Object.keys(data)) {
  const rows = await keyring.withTenant(
    tenant,
    async () => await db.select().from(patients).where(eq(patients.tenantId, tenant)),
  );
  for (const r of rows) seen.set(r.id, r);
}
const expected = Object.values(data).flat();
for (const r of seen.values()) {
  if (!expected.some((x) => x.name === r.name && JSON.stringify(x.record) === JSON.stringify(r.record))) {
    throw new Error('the app did not read back what it wrote');
  }
}
console.log(
  `   ${pad('tenant', 8)}${pad('column', 8)}${pad('stored: ver|flags dek-id… iv…', 36)}app sees (withEncryption)`,
);
for (const r of raw.rows) {
  const app = seen.get(r.id);
  console.log(
    `   ${pad(r.tenant_id, 8)}${pad('name', 8)}${pad(short(r.name), 36)}${JSON.stringify(app?.name)}`,
  );
  console.log(`   ${pad('', 8)}${pad('record', 8)}${pad(short(r.record), 36)}${JSON.stringify(app?.record)}`);
}
console.log(
  "   Each value: 01 (format) 00 (flags), the 16-byte id of the tenant's data key, a 12-byte random IV,",
);
console.log(
  '   the AES-256-GCM ciphertext, a 16-byte tag (46 B overhead). Plaintext never reaches the database.',
);

// 4. Tenant isolation ---------------------------------------------------------------------------
heading(4, 'Tenant isolation');
const acmeRow = raw.rows.find((r) => r.tenant_id === 'acme');
const globexRow = raw.rows.find((r) => r.tenant_id === 'globex');
if (acmeRow === undefined || globexRow === undefined) throw new Error('demo rows missing');
const globexOwn = await keyring.withTenant(
  'globex',
  async () => await db.select().from(patients).where(eq(patients.tenantId, 'globex')),
);
console.log(
  `   globex reads its own rows: ${globexOwn.length} row, name ${JSON.stringify(globexOwn[0]?.name)}`,
);
await expectError("globex selects acme's row (forgot the tenant filter)", DecryptionFailedError, () =>
  keyring.withTenant(
    'globex',
    async () => await db.select().from(patients).where(eq(patients.id, acmeRow.id)),
  ),
);
await pg.query('update patients set name = $1 where id = $2', [acmeRow.name, globexRow.id]);
await expectError(
  "acme's ciphertext copied into a globex row (raw UPDATE), read by globex",
  DecryptionFailedError,
  () =>
    keyring.withTenant(
      'globex',
      async () => await db.select().from(patients).where(eq(patients.id, globexRow.id)),
    ),
);
await pg.query('update patients set name = $1 where id = $2', [globexRow.name, globexRow.id]);

// 5. Tampering ----------------------------------------------------------------------------------
heading(5, 'Tampering: flip one bit of one stored byte (raw UPDATE), then read it');
await pg.query('update patients set name = set_byte(name, 40, get_byte(name, 40) # 1) where id = $1', [
  acmeRow.id,
]);
try {
  await keyring.withTenant(
    'acme',
    async () => await db.select().from(patients).where(eq(patients.id, acmeRow.id)),
  );
  console.log('   tampered row was accepted?! (unexpected)');
  process.exitCode = 1;
} catch (e) {
  if (!(e instanceof DecryptionFailedError)) throw e;
  console.log(`   → DecryptionFailedError [${e.code}] (instanceof DecryptionFailedError: true)`);
  console.log(`     "${e.message}": one generic error whatever the cause, no oracle.`);
}
await pg.query('update patients set name = $1 where id = $2', [acmeRow.name, acmeRow.id]);

// 6. Refused comparison -------------------------------------------------------------------------
heading(6, 'Comparing an encrypted column with a plain value is refused');
await expectError("db.select().from(patients).where(eq(patients.name, 'x'))", EncryptedComparisonError, () =>
  keyring.withTenant('acme', async () => await db.select().from(patients).where(eq(patients.name, 'x'))),
);

// 7. Stats --------------------------------------------------------------------------------------
heading(7, 'Key cache and keyring.stats()');
console.log(`   warm:  ${JSON.stringify(keyring.stats())}`);
keyring.clearCache();
const again = await keyring.withTenant(
  'acme',
  async () => await db.select().from(patients).where(eq(patients.tenantId, 'acme')),
);
console.log(
  `   cache cleared, acme reads ${again.length} rows again: its data key is unwrapped once, in one batch`,
);
console.log(`   cold:  ${JSON.stringify(keyring.stats())}`);
console.log('   (hotHits: fields served from cached keys; created: data keys generated, one per tenant;');
console.log('    batches: key-store loads; unwraps: data keys unwrapped through the KEK)');

await keyring.close();
await pg.close();
console.log(`\nDone in ${Math.round(performance.now() - started)} ms.`);
