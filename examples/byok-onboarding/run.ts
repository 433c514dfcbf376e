/**
 * Onboarding a tenant to BYOK, end to end, without a cloud account: an embedded PostgreSQL (PGlite)
 * and the local AWS KMS + STS server shipped for tests (`drizzle-byok/testing`), which speaks the
 * real wire protocol to the real AWS SDK.
 *
 *   node examples/byok-onboarding/run.ts
 *
 * The story: tenant "acme" already has encrypted data under the platform key. Acme creates a KMS key
 * and an IAM role in its own AWS account, trusting the platform's principal with an external id.
 * The platform verifies the key and re-wraps acme's data keys under it (no row is re-encrypted).
 * Then: status and health, what happens when acme revokes access, recovery, rotating to a new key,
 * rotating the data key (and re-encrypting old rows with the retrofit engine), and leaving BYOK.
 * The CLI equivalents are printed at each step.
 */
import { randomBytes } from 'node:crypto';
import { PGlite } from '@electric-sql/pglite';
import { eq } from 'drizzle-orm';
import { bigserial, pgTable, text } from 'drizzle-orm/pg-core';
import { drizzle } from 'drizzle-orm/pglite';
import {
  createKeyring,
  encrypted,
  isByokError,
  localKek,
  runBackfill,
  type TenantStatus,
  verifyBackfill,
  withEncryption,
} from '../../src/index.ts';
import { awsKekFactory, awsKms } from '../../src/kms/aws/index.ts';
import { startAwsKmsServer } from '../../src/testing/index.ts';

const notes = pgTable('notes', {
  id: bigserial('id', { mode: 'number' }).primaryKey(),
  tenantId: text('tenant_id').notNull(),
  body: encrypted.text('body').notNull(),
});

const step = (n: number, title: string, cli?: string) =>
  console.log(`\n${n}. ${title}${cli ? `\n   $ drizzle-byok ${cli}` : ''}`);
const brief = (s: TenantStatus) =>
  `mode ${s.mode}, health ${s.health}; KEKs: ${s.keks.map((k) => `${k.keyRef} (${k.health})`).join(', ') || 'platform key'}; ` +
  `data keys: ${s.dekVersions.map((d) => `v${d.version} ${d.state} under ${d.wrappedUnder.join('+')}`).join('; ')}`;

// The platform: its database, its platform key, and the AWS principal its app runs as.
const aws = await startAwsKmsServer();
const platformUser = aws.addUser({ name: 'platform-app' });
const pg = new PGlite();
const db = drizzle({ client: pg });
const keyring = createKeyring({
  db,
  platformKek: localKek({ key: randomBytes(32) }),
  // Every instance rebuilds tenants' KEKs from the key store with these factories.
  kekFactories: { 'aws-kms': awsKekFactory },
});
await keyring.installKeyStore();
withEncryption(db, keyring, { tenantColumn: 'tenant_id' });
await pg.query('create table notes (id bigserial primary key, tenant_id text not null, body bytea not null)');

step(1, 'Acme has data under the platform key');
await keyring.withTenant('acme', () =>
  db
    .insert(notes)
    .values(Array.from({ length: 50 }, (_, i) => ({ tenantId: 'acme', body: `acme note ${i}` }))),
);
console.log(`   ${brief(await keyring.status('acme'))}`);

step(
  2,
  "In acme's AWS account (444455556666): a symmetric KMS key, and a role the platform may assume with an external id",
);
const acmeAccount = '444455556666';
const acmeKey = aws.createKey({ accountId: acmeAccount, description: 'acme BYOK key' });
const externalId = `acme-${randomBytes(6).toString('hex')}`;
const role = aws.addRole({
  name: 'drizzle-byok-access',
  accountId: acmeAccount,
  trust: { principals: [platformUser.arn], externalId },
});
console.log(`   key  ${acmeKey.arn}\n   role ${role.arn} (external id ${externalId})`);
const acmeKek = (keyArn: string) =>
  awsKms({
    keyArn,
    endpoint: aws.endpoint,
    stsEndpoint: aws.stsEndpoint,
    auth: {
      type: 'assume-role',
      roleArn: role.arn,
      externalId,
      // In production: omit `source` (the platform's default credentials: instance role, IRSA...).
      source: {
        type: 'access-keys',
        accessKeyId: platformUser.accessKeyId,
        secretAccessKey: platformUser.secretAccessKey,
      },
    },
  });

step(
  3,
  "Enable BYOK: verify the key, re-wrap acme's data keys under it (no row is re-encrypted)",
  `keys enable acme --aws-key-arn ${acmeKey.arn} --aws-role-arn ${role.arn} --external-id ${externalId}`,
);
const before = (await pg.query<{ body: Uint8Array }>(`select body from notes where id = 1`)).rows[0]!.body;
console.log(`   ${brief(await keyring.enableByok('acme', acmeKek(acmeKey.arn)))}`);
const after = (await pg.query<{ body: Uint8Array }>(`select body from notes where id = 1`)).rows[0]!.body;
console.log(`   row 1 ciphertext unchanged: ${Buffer.from(before).equals(Buffer.from(after))}`);
keyring.clearCache();
const [first] = await keyring.withTenant('acme', () => db.select().from(notes).where(eq(notes.id, 1)));
console.log(
  `   read through acme's key: "${first!.body}" (Decrypt calls on acme's key: ${aws.counters.operation('Decrypt')})`,
);

step(4, 'Status and health', 'keys status acme · keys health');
for (const s of await keyring.checkHealth({ tenants: ['acme'] })) console.log(`   ${brief(s)}`);

step(5, 'Acme disables its key: the platform loses access at once (after the cache, on every instance)');
aws.setKeyState(acmeKey.arn, 'Disabled');
keyring.clearCache();
try {
  await keyring.withTenant('acme', () => db.select().from(notes).where(eq(notes.id, 2)));
} catch (e) {
  console.log(`   read refused: ${isByokError(e) ? `${e.code}: ${e.message}` : String(e)}`);
}
const [sick] = await keyring.checkHealth({ tenants: ['acme'] });
console.log(`   health: ${sick!.health} (${sick!.lastError})`);
aws.setKeyState(acmeKey.arn, 'Enabled');
await keyring.checkHealth({ tenants: ['acme'] });
console.log('   acme re-enables the key: reads work again');

step(
  6,
  'Acme rotates to a new key of its own: data keys re-wrapped, data untouched',
  'keys rotate acme --aws-key-arn <new key> ...',
);
const acmeKey2 = aws.createKey({ accountId: acmeAccount, description: 'acme BYOK key 2' });
console.log(`   ${brief(await keyring.rotateKek('acme', acmeKek(acmeKey2.arn)))}`);

step(
  7,
  'Rotate the data key, then re-encrypt old rows with the retrofit engine',
  'keys rotate acme · migrate run',
);
const { version } = await keyring.rotateDek('acme');
const table = { table: notes, tenantColumn: notes.tenantId, columns: [notes.body] };
console.log(
  `   data key v${version} active; verify: ${(await verifyBackfill(db, keyring, table)).stale} values under the old version`,
);
const r = await runBackfill(db, keyring, table);
console.log(
  `   re-encrypted ${r.reencrypted} values; verify: ${(await verifyBackfill(db, keyring, table)).stale} stale`,
);

step(8, 'Acme leaves BYOK: back to the platform key', 'keys disable acme');
console.log(`   ${brief(await keyring.disableByok('acme'))}`);
const all = await keyring.withTenant('acme', () => db.select().from(notes));
console.log(`   ${all.length} notes readable, e.g. "${all[0]!.body}"`);

await keyring.close();
await pg.close();
await aws.close();
