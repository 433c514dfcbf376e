import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { PGlite } from '@electric-sql/pglite';
import { inArray } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKeyring, localKek, withAnyTenant, withEncryption } from '../src/index.ts';
import { writeFirstRows } from './fixtures/race-worker.ts';
import { makeSchema } from './fixtures/schema.ts';
import { DATABASE_URL, openDb, type TestDb, uniqueName, uniqueTenant } from './helpers/db.ts';

const worker = fileURLToPath(new URL('./fixtures/race-worker.ts', import.meta.url));

function runWorker(env: Record<string, string>): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [worker], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'inherit', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    child.on('error', reject);
    child.on('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`worker exited ${code}: ${stderr}`)),
    );
  });
}

describe(`first writes of 20 new tenants raced by two ${DATABASE_URL ? 'processes' : 'keyrings in one process (no server: PGlite)'}`, () => {
  const platformKey = randomBytes(32).toString('base64');
  const tenants = Array.from({ length: 20 }, () => uniqueTenant('race'));
  const s = makeSchema(uniqueName('byok_race'));
  let tdb: TestDb;
  let pglite: PGlite | undefined;

  beforeAll(async () => {
    pglite = DATABASE_URL ? undefined : new PGlite();
    tdb = await openDb(DATABASE_URL ? 'postgres-js' : 'pglite', undefined, pglite);
    const setup = createKeyring({ db: tdb.db, platformKek: localKek({ key: platformKey }) });
    await setup.installKeyStore();
    for (const stmt of s.ddl) await tdb.raw(stmt);
  });
  afterAll(async () => {
    await tdb?.close();
    await pglite?.close();
  });

  it('ends with exactly one active data key per tenant, and every row readable', async () => {
    if (DATABASE_URL) {
      const env = {
        DATABASE_URL,
        SCHEMA: s.name,
        TENANTS: JSON.stringify(tenants),
        PLATFORM_KEY: platformKey,
        START_AT: String(Date.now() + 1500),
      };
      await Promise.all([runWorker({ ...env, LABEL: 'p1' }), runWorker({ ...env, LABEL: 'p2' })]);
    } else {
      const [a, b] = [await openDb('pglite', undefined, pglite), await openDb('pglite', undefined, pglite)];
      await Promise.all([
        writeFirstRows(a.db, s.name, tenants, platformKey, 'p1'),
        writeFirstRows(b.db, s.name, tenants, platformKey, 'p2'),
      ]);
    }
    const active = await tdb.raw<{ tenant_id: string; n: number; versions: number }>(
      `select tenant_id, count(*) filter (where state = 'active')::int as n, count(*)::int as versions
         from byok.deks where tenant_id = any($1) group by tenant_id`,
      [tenants],
    );
    expect(active).toHaveLength(20);
    for (const r of active)
      expect({ t: r.tenant_id, n: r.n, versions: r.versions }).toEqual({ t: r.tenant_id, n: 1, versions: 1 });

    const reader = await openDb(DATABASE_URL ? 'postgres-js' : 'pglite', undefined, pglite);
    const keyring = createKeyring({ db: reader.db, platformKek: localKek({ key: platformKey }) });
    withEncryption(reader.db, keyring);
    const rows = await withAnyTenant(() =>
      reader.db
        .select({ t: s.patients.tenantId, n: s.patients.name, m: s.patients.email })
        .from(s.patients)
        .where(inArray(s.patients.tenantId, tenants)),
    );
    expect(rows).toHaveLength(40);
    for (const r of rows) {
      const label = r.n.split(':')[0];
      expect(r).toEqual({ t: r.t, n: `${label}:${r.t}`, m: `${label}@${r.t}` });
    }
    expect(new Set(rows.map((r) => r.n.split(':')[0]))).toEqual(new Set(['p1', 'p2']));
    await keyring.close();
    await reader.close();
  });
});
