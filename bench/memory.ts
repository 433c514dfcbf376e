/**
 * Section "memory": what the key cache holds as tenants come and go.
 *
 * 100,000 tenants (BENCH_QUICK: 20,000) × 5 encrypted columns cycle through a 10,000-key cache
 * (BENCH_QUICK: 2,000) on PostgreSQL: tenants are taken in windows of 500, their active data keys
 * loaded through the keyring (loaded from the key store and unwrapped: the cache evicts the least
 * recently used), then one encryption and one decryption per column through the
 * column path (`sealFor` / `openFor`, what `toDriver` / `fromDriver` call with a cached key).
 * - setup: one data key per tenant written to the key store in bulk;
 * - warm-up: one pass;
 * - measured: one more pass (1,000,000 field operations at full size), sampled halfway and at the end;
 * - RSS, V8 heap and external memory (KeyObjects, Buffers) after a full GC, after warm-up and at the end;
 * - bytes held per cached tenant: (heap + external with the cache full − after `cache.clear()`) / keys.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { integer, pgTable, text } from 'drizzle-orm/pg-core';
import { drizzle } from 'drizzle-orm/postgres-js';
import postgres from 'postgres';
import { encryptedState, openFor, sealFor } from '../src/drizzle/columns.ts';
import { createKeyring, encrypted, type Keyring, localKek } from '../src/index.ts';
import { keysOf } from '../src/keys/keyring.ts';
import { byokDeks, byokDekWraps, byokTenants } from '../src/store/schema-key-store.ts';
import {
  type BenchContext,
  checkTarget,
  markdownTable,
  printSectionHeader,
  redactUrl,
  type Section,
  serverVersion,
} from './lib.ts';

const table = pgTable('byok_bench_memory', {
  id: integer('id').primaryKey(),
  tenantId: text('tenant_id').notNull(),
  c1: encrypted.text('c1'),
  c2: encrypted.text('c2'),
  c3: encrypted.text('c3'),
  c4: encrypted.text('c4'),
  c5: encrypted.text('c5'),
});
const WINDOW = 500;

/**
 * Seeds the key store with one data key per tenant, wrapped under the platform key, in bulk (as an
 * app that ran for a while leaves it; creating them one by one through first writes takes minutes).
 */
async function seedKeys(
  keyring: Keyring,
  db: ReturnType<typeof drizzle>,
  tenants: readonly string[],
): Promise<void> {
  for (let i = 0; i < tenants.length; i += 1000) {
    const part = tenants.slice(i, i + 1000);
    const deks: (typeof byokDeks.$inferInsert)[] = [];
    const wraps: (typeof byokDekWraps.$inferInsert)[] = [];
    for (const tenantId of part) {
      const id = randomUUID();
      const raw = randomBytes(32);
      deks.push({ id, tenantId, version: 1, state: 'active' });
      for (const w of await keyring.wrapForTenant(tenantId, id, raw, [])) wraps.push({ dekId: id, ...w });
      raw.fill(0);
    }
    await db.insert(byokTenants).values(part.map((tenantId) => ({ tenantId })));
    await db.insert(byokDeks).values(deks);
    await db.insert(byokDekWraps).values(wraps);
  }
}

function fullGc(): () => void {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  return () => {
    for (let i = 0; i < 3; i++) gc();
  };
}

interface Sample {
  rss: number;
  heap: number;
  external: number;
}

function sample(gc: () => void): Sample {
  gc();
  const m = process.memoryUsage();
  return { rss: m.rss, heap: m.heapUsed, external: m.external };
}

const mib = (b: number) => `${(b / 1024 / 1024).toFixed(1)} MiB`;

async function run({ quick }: BenchContext): Promise<void> {
  const tenantsN = quick ? 20_000 : 100_000;
  const cacheSize = quick ? 2_000 : 10_000;
  const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
  const client = postgres(url, { max: 4, onnotice: () => {} });
  const runId = `bench-mem-${process.pid}-${Date.now()}`;
  const tenants = Array.from({ length: tenantsN }, (_, i) => `${runId}-${i}`);
  const db = drizzle({ client });
  const keyring = createKeyring({
    db,
    platformKek: localKek({ key: randomBytes(32) }),
    cache: { maxEntries: cacheSize, maxAgeMs: 3_600_000 },
  });
  const gc = fullGc();
  const states = [table.c1, table.c2, table.c3, table.c4, table.c5].map((c) => encryptedState(c)!);
  const plaintext = Buffer.from('a value of about forty bytes, 256 bits.');
  let ops = 0;
  const pass = async (from = 0, to = tenantsN) => {
    for (let i = from; i < to; i += WINDOW) {
      const window = tenants.slice(i, i + WINDOW);
      const entries = await Promise.all(window.map((t) => keysOf(keyring).getActiveDek(t)));
      for (const entry of entries) {
        for (const st of states) {
          const env = sealFor(keyring, st, entry, plaintext) as Buffer;
          if (openFor(keyring, st, entry, env) !== plaintext.toString('utf8'))
            throw new Error('memory: wrong plaintext');
          ops += 2;
        }
      }
    }
  };
  try {
    await keyring.installKeyStore();
    const s0 = performance.now();
    await seedKeys(keyring, db, tenants);
    const seedMs = performance.now() - s0;
    const t0 = performance.now();
    await pass();
    const warmupMs = performance.now() - t0;
    const afterWarmup = sample(gc);
    const opsWarm = ops;
    const t1 = performance.now();
    const half = Math.floor(tenantsN / 2 / WINDOW) * WINDOW;
    await pass(0, half);
    const mid = sample(gc);
    await pass(half, tenantsN);
    const measuredMs = performance.now() - t1;
    const end = sample(gc);
    const cached = keysOf(keyring).cache.size;
    keysOf(keyring).cache.clear();
    const empty = sample(gc);
    const perTenant = (end.heap + end.external - (empty.heap + empty.external)) / cached;

    printSectionHeader(
      `Memory: ${tenantsN.toLocaleString('en-US')} tenants × 5 encrypted columns through a ${cacheSize.toLocaleString('en-US')}-key cache`,
      [
        `PostgreSQL ${await serverVersion(client)} at ${redactUrl(url)} (key store); windows of ${WINDOW} tenants: active data keys loaded through the keyring (LRU evicts the least recently used), then per column one encryption and one decryption through the column path.`,
        `Key store seeded with one data key per tenant under the platform key in ${(seedMs / 1000).toFixed(1)} s. Warm-up: one pass loading every data key (${(warmupMs / 1000).toFixed(1)} s, ${opsWarm.toLocaleString('en-US')} field operations). Measured: one more pass, ${(ops - opsWarm).toLocaleString('en-US')} field operations and ${tenantsN.toLocaleString('en-US')} key loads in ${(measuredMs / 1000).toFixed(1)} s. Figures after a full GC.`,
      ],
    );
    console.log(
      markdownTable(
        ['moment', 'RSS', 'V8 heap used', 'external (KeyObjects, Buffers)', 'cached keys'],
        [
          [
            'after warm-up',
            mib(afterWarmup.rss),
            mib(afterWarmup.heap),
            mib(afterWarmup.external),
            `${cacheSize}`,
          ],
          ['halfway through pass 2', mib(mid.rss), mib(mid.heap), mib(mid.external), `${cacheSize}`],
          ['end (after pass 2)', mib(end.rss), mib(end.heap), mib(end.external), `${cached}`],
          ['after cache.clear()', mib(empty.rss), mib(empty.heap), mib(empty.external), '0'],
        ],
      ),
    );
    console.log(
      `\n_Bytes held per cached tenant (5 column subkeys derived): ${Math.round(perTenant).toLocaleString('en-US')} B (heap + external)._\n`,
    );
    const growth = (a: number, b: number) => b / a;
    checkTarget('memory', 'RSS at the end / after warm-up', growth(afterWarmup.rss, end.rss), '<=', 1.1);
    checkTarget(
      'memory',
      'heap + external at the end / after warm-up',
      growth(afterWarmup.heap + afterWarmup.external, end.heap + end.external),
      '<=',
      1.1,
    );
    checkTarget(
      'memory',
      `field operations cycled (${tenantsN} tenants)`,
      ops - opsWarm,
      '>=',
      1_000_000,
      (n) => n.toLocaleString('en-US'),
    );
  } finally {
    await keyring.close();
    await client`delete from byok.tenants where tenant_id like ${`${runId}-%`}`.catch(() => undefined);
    await client.end({ timeout: 5 });
  }
}

export const memoryBench: Section = {
  name: 'memory',
  title: 'Memory: 100,000 tenants × 5 columns through a 10,000-key cache',
  run,
};
