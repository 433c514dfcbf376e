import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { PGlite } from '@electric-sql/pglite';
import { asc, eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKeyring, type Keyring, localKek, withEncryption } from '../src/index.ts';
import { type BackfillResult, runBackfill, verifyBackfill } from '../src/migrate/index.ts';
import {
  type RetrofitSchema,
  plainValues,
  retrofitSchema,
  seedSql,
  seedTenant,
} from './fixtures/retrofit-schema.ts';
import { backfillWorker } from './fixtures/retrofit-worker.ts';
import { DATABASE_URL, MAIN_DRIVER, openDb, type TestDb, uniqueName } from './helpers/db.ts';

const workerPath = fileURLToPath(new URL('./fixtures/retrofit-worker.ts', import.meta.url));

type Values = { name: string | null; email: string | null; note: string | null };

/** SHA-256 over `id|name|email|note` lines in id order: equal digests, equal tables. */
function checksum(rows: Iterable<[number, Values]>): string {
  const h = createHash('sha256');
  for (const [id, v] of [...rows].sort((a, b) => a[0] - b[0]))
    h.update(`${id}|${v.name}|${v.email}|${v.note}\n`);
  return h.digest('hex');
}

interface Spawned {
  readonly child: ChildProcess;
  readonly lines: AsyncIterable<string>;
  readonly exited: Promise<number | null>;
  readonly stderr: () => string;
}

function spawnWorker(env: Record<string, string>): Spawned {
  const child = spawn(process.execPath, [workerPath], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d) => {
    stderr += d;
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, lines: createInterface({ input: child.stdout! }), exited, stderr: () => stderr };
}

/** Reads a worker's JSON lines to the end: committed keys and its result. */
async function collect(w: Spawned): Promise<{ keys: string[]; commits: number; result: BackfillResult }> {
  const keys: string[] = [];
  let commits = 0;
  let result: BackfillResult | undefined;
  for await (const line of w.lines) {
    const m = JSON.parse(line) as { event: string; keys?: string[]; result?: BackfillResult };
    if (m.event === 'commit') {
      commits++;
      keys.push(...m.keys!);
    } else if (m.event === 'result') result = m.result;
  }
  const code = await w.exited;
  if (code !== 0 || result === undefined) throw new Error(`worker exited ${code}: ${w.stderr()}`);
  return { keys, commits, result };
}

// 100,000 rows through worker processes: on a loaded 2-core machine this can pass the default 60 s.
describe(`retrofit under concurrency (${DATABASE_URL ? 'PostgreSQL, worker processes' : 'PGlite, workers in-process'})`, {
  timeout: 180_000,
}, () => {
  let pglite: PGlite | undefined;
  let tdb: TestDb;
  let keyring: Keyring;
  const platformKey = randomBytes(32).toString('base64');

  beforeAll(async () => {
    pglite = DATABASE_URL ? undefined : new PGlite();
    tdb = await openDb(MAIN_DRIVER, undefined, pglite);
    keyring = createKeyring({ db: tdb.db, platformKek: localKek({ key: platformKey }) });
    withEncryption(tdb.db, keyring, { tenantColumn: 'tenant_id' });
    await keyring.installKeyStore();
  });
  afterAll(async () => {
    await keyring?.close();
    await tdb?.close();
    await pglite?.close();
  });

  async function seeded(n: number, tenants: number): Promise<{ s: RetrofitSchema; prefix: string }> {
    const s = retrofitSchema(uniqueName('retroc'));
    const prefix = uniqueName('c');
    for (const d of s.ddl) await tdb.raw(d);
    for (const q of seedSql(s.name, n, prefix, tenants)) await tdb.raw(q);
    return { s, prefix };
  }

  async function appRows(s: RetrofitSchema): Promise<Map<number, Values>> {
    const strict = s.enc('strict');
    const rows = await keyring.withAnyTenant(() => tdb.db.select().from(strict).orderBy(asc(strict.id)));
    return new Map(rows.map((r) => [r.id, { name: r.name, email: r.email, note: r.note }]));
  }

  it('retrofits 100,000 rows x 3 columns while a writer updates and inserts: every row ends as last written', async () => {
    const N = 100_000;
    const T = 25;
    const { s, prefix } = await seeded(N, T);
    const pass = s.enc('passthrough');
    const target = s.target(pass);
    // What each row must hold at the end: the seed, then whatever the writer last wrote.
    const expected = new Map<number, Values>();
    const tenantOf = new Map<number, string>();
    for (let i = 1; i <= N; i++) expected.set(i, plainValues(i));
    let maxId = N;
    let stop = false;
    const inFlight = new Set<number>();
    const stats = { appUpdates: 0, inserts: 0, legacyUpdates: 0, duringBackfill: 0 };
    let backfillRunning = false;
    let seq = 0;
    const writerDb = DATABASE_URL ? await openDb(MAIN_DRIVER) : undefined;
    const writer = async (lane: number) => {
      while (!stop) {
        const op = Math.random();
        const n = ++seq;
        if (op < 0.2) {
          const tenant = seedTenant(prefix, n, T);
          const v: Values = {
            name: `ins ${lane}.${n}`,
            email: n % 3 === 0 ? null : `i${n}@x`,
            note: `inserted ${n}`,
          };
          const [row] = await keyring.withTenant(tenant, () =>
            tdb.db
              .insert(pass)
              .values({ tenantId: tenant, ...v })
              .returning({ id: pass.id }),
          );
          expected.set(row!.id, v);
          tenantOf.set(row!.id, tenant);
          maxId = Math.max(maxId, row!.id);
          stats.inserts++;
        } else {
          const id = 1 + Math.floor(Math.random() * maxId);
          if (inFlight.has(id) || !expected.has(id)) continue;
          inFlight.add(id);
          try {
            const tenant = tenantOf.get(id) ?? seedTenant(prefix, id, T);
            if (op < 0.9) {
              // The app (passthrough mode): writes ciphertext, one to three columns.
              const set: Partial<Values> = {};
              if (n % 2 === 0) set.name = `upd ${lane}.${n} Ünïcode`;
              if (n % 3 !== 1) set.email = n % 5 === 0 ? null : `u${n}@x`;
              if (Object.keys(set).length === 0 || n % 7 === 0) set.note = `note ${n}`;
              await keyring.withTenant(tenant, () => tdb.db.update(pass).set(set).where(eq(pass.id, id)));
              expected.set(id, { ...expected.get(id)!, ...set });
              stats.appUpdates++;
            } else {
              // A legacy app instance still writing plaintext.
              const note = `legacy ${n}`;
              await (writerDb ?? tdb).raw(`update "${s.name}".accounts set note = $1 where id = $2`, [
                note,
                id,
              ]);
              expected.set(id, { ...expected.get(id)!, note });
              stats.legacyUpdates++;
            }
          } finally {
            inFlight.delete(id);
          }
        }
        if (backfillRunning) stats.duringBackfill++;
        if (!DATABASE_URL) await new Promise((r) => setImmediate(r));
      }
    };
    const lanes = Array.from({ length: 4 }, (_, i) => writer(i));
    await new Promise((r) => setTimeout(r, 200));
    backfillRunning = true;
    const r1 = await runBackfill(tdb.db, keyring, target, { batchSize: 1000, chunkSize: 10_000 });
    backfillRunning = false;
    // Let the writer go on a little after the first pass, then stop it.
    await new Promise((r) => setTimeout(r, 200));
    stop = true;
    await Promise.all(lanes);
    await writerDb?.close();
    expect(r1.jobDone).toBe(true);
    expect(r1.unreadable + r1.invalid + r1.noTenant).toBe(0);
    expect(stats.duringBackfill).toBeGreaterThan(100);
    expect(stats.appUpdates).toBeGreaterThan(50);
    expect(stats.inserts).toBeGreaterThan(10);
    expect(stats.legacyUpdates).toBeGreaterThan(5);
    // A second pass encrypts what legacy writers left behind the first one; then nothing is plaintext.
    const r2 = await runBackfill(tdb.db, keyring, target, { batchSize: 2000, chunkSize: 50_000 });
    expect(r2.pass).toBe(2);
    expect(r2.written).toBeLessThanOrEqual(stats.legacyUpdates + stats.inserts * 3);
    const v = await verifyBackfill(tdb.db, keyring, target, { batchSize: 5000 });
    expect(v).toMatchObject({ ok: true, plaintext: 0, unreadable: 0, rows: expected.size });
    // Every row decrypts to exactly what was last written: same ids, same checksum.
    const actual = await appRows(s);
    expect(actual.size).toBe(expected.size);
    const diff = [...expected].filter(([id, e]) => JSON.stringify(actual.get(id)) !== JSON.stringify(e));
    expect(diff.slice(0, 3)).toEqual([]);
    expect(checksum(actual)).toBe(checksum(expected));
  }, 150_000); // spawned worker processes: minutes on a busy shared machine

  it('a backfill killed mid-run resumes from its checkpoint without re-encrypting done rows', async () => {
    const N = 20_000;
    const { s } = await seeded(N, 9);
    const target = s.target(s.enc('passthrough'));
    const total = N * 3 - Math.floor(N / 11); // values (NULL emails excluded)
    let committedAtKill: number;
    if (DATABASE_URL) {
      const w = spawnWorker({
        DATABASE_URL,
        SCHEMA: s.name,
        PLATFORM_KEY: platformKey,
        BATCH: '500',
        CHUNK: '4000',
        RATE: '6000',
        // A lease far longer than the test may take: finishing at all proves the dead process's
        // chunk was taken over at once, not after its lease ran out.
        LEASE_MS: String(3_600_000),
      });
      let commits = 0;
      for await (const line of w.lines) {
        if (JSON.parse(line).event === 'commit' && ++commits === 12) {
          w.child.kill('SIGKILL');
          break;
        }
      }
      expect(await w.exited).toBe(null); // killed by the signal, not finished
      committedAtKill = commits;
    } else {
      // In one process: the first run freezes for good after 12 commits (as a killed process would).
      let commits = 0;
      void backfillWorker(
        tdb.db,
        s.name,
        platformKey,
        { batchSize: 500, chunkSize: 4000, leaseMs: 1000 },
        () => (++commits === 12 ? new Promise<void>(() => {}) : undefined),
      );
      while (commits < 12) await new Promise((r) => setTimeout(r, 20));
      committedAtKill = commits;
    }
    // State at the kill: rows encrypted so far, and the checkpoint.
    const atKill = new Map(
      (
        await tdb.raw<{ id: string; name: string }>(
          `select t.id::text as id, name from "${s.name}".accounts t where name like 'byok1:%' order by t.id`,
        )
      ).map((r) => [r.id, r.name]),
    );
    const [cp] = await tdb.raw<{ rows: number; values: number; running: number }>(
      `select sum(rows_seen)::int as rows, sum(values_written)::int as values,
              count(*) filter (where c.state = 'running')::int as running
         from byok.retrofit_chunks c join byok.retrofit_jobs j on j.id = c.job_id where j.table_name = $1`,
      [`${s.name}.accounts`],
    );
    expect(atKill.size).toBeGreaterThanOrEqual(committedAtKill * 500);
    expect(atKill.size % 500).toBe(0);
    expect(cp!.rows).toBe(atKill.size);
    expect(cp!.running).toBe(1);
    const [plainLeft] = await tdb.raw<{ n: number }>(
      `select (count(*) filter (where name not like 'byok1:%') + count(*) filter (where email not like 'byok1:%')
              + count(*) filter (where note not like 'byok1:%'))::int as n from "${s.name}".accounts`,
    );
    expect(plainLeft!.n).toBe(total - cp!.values);

    // Start again: the same job resumes where the killed worker's last commit left it.
    let again: { keys: string[]; result: BackfillResult };
    if (DATABASE_URL) {
      again = await collect(
        spawnWorker({ DATABASE_URL, SCHEMA: s.name, PLATFORM_KEY: platformKey, BATCH: '500', CHUNK: '4000' }),
      );
    } else {
      const keys: string[] = [];
      const result = await backfillWorker(
        tdb.db,
        s.name,
        platformKey,
        { batchSize: 500, chunkSize: 4000, leaseMs: 1000 },
        (k) => {
          keys.push(...k);
        },
      );
      again = { keys, result };
    }
    expect(again.result).toMatchObject({ pass: 1, jobDone: true, alreadyDone: 0, unreadable: 0 });
    expect(again.result.written).toBe(plainLeft!.n);
    expect(again.result.rowsSeen).toBe(N - atKill.size);
    expect(again.keys.some((k) => atKill.has(k))).toBe(false);
    // The rows done before the kill kept their ciphertext byte for byte: they were not re-encrypted.
    const after = await tdb.raw<{ id: string; name: string }>(
      `select t.id::text as id, name from "${s.name}".accounts t order by t.id`,
    );
    for (const r of after) if (atKill.has(r.id)) expect(r.name).toBe(atKill.get(r.id));
    expect(await verifyBackfill(tdb.db, keyring, target)).toMatchObject({ ok: true, rows: N });
    const rows = await appRows(s);
    for (const [id, v] of rows) expect(v).toEqual(plainValues(id));
  });

  it('two workers split the rows with no overlap and no gap', async () => {
    const N = 24_000;
    const { s } = await seeded(N, 11);
    const target = s.target(s.enc('passthrough'));
    const options = { BATCH: '400', CHUNK: '1200', RATE: '6000' };
    let runs: { keys: string[]; result: BackfillResult }[];
    if (DATABASE_URL) {
      const env = {
        DATABASE_URL,
        SCHEMA: s.name,
        PLATFORM_KEY: platformKey,
        START_AT: String(Date.now() + 2500),
        ...options,
      };
      runs = await Promise.all([collect(spawnWorker(env)), collect(spawnWorker(env))]);
    } else {
      const one = async (label: string) => {
        const keys: string[] = [];
        const db = (await openDb('pglite', undefined, pglite)).db;
        const result = await backfillWorker(
          db,
          s.name,
          platformKey,
          { batchSize: 400, chunkSize: 1200, rowsPerSecond: 6000, workerId: `test:${label}:0` },
          (k) => {
            keys.push(...k);
          },
        );
        return { keys, result };
      };
      runs = await Promise.all([one('a'), one('b')]);
    }
    const [a, b] = runs as [(typeof runs)[0], (typeof runs)[0]];
    const setA = new Set(a.keys);
    const setB = new Set(b.keys);
    // No overlap: no row rewritten by both; no gap: every row rewritten by one of them.
    expect(a.keys.length).toBe(setA.size);
    expect(b.keys.length).toBe(setB.size);
    expect([...setA].filter((k) => setB.has(k))).toEqual([]);
    expect(setA.size + setB.size).toBe(N);
    expect(setA.size).toBeGreaterThan(N / 5);
    expect(setB.size).toBeGreaterThan(N / 5);
    expect(a.result.written + b.result.written).toBe(N * 3 - Math.floor(N / 11));
    expect(a.result.rowsSeen + b.result.rowsSeen).toBe(N);
    expect(a.result.jobDone || b.result.jobDone).toBe(true);
    // The checkpoint table: chunks tile the key space end to end, each done by one worker.
    const chunks = await tdb.raw<{
      seq: number;
      lo: string | null;
      hi: string | null;
      state: string;
      worker: string;
      rows_seen: number;
    }>(
      `select seq, lo, hi, c.state, worker, rows_seen::int as rows_seen from byok.retrofit_chunks c
         join byok.retrofit_jobs j on j.id = c.job_id where j.table_name = $1 order by seq`,
      [`${s.name}.accounts`],
    );
    expect(chunks[0]!.lo).toBeNull();
    expect(chunks.at(-1)!.hi).toBeNull();
    for (let i = 1; i < chunks.length; i++) expect(chunks[i]!.lo).toBe(chunks[i - 1]!.hi);
    expect(chunks.every((c) => c.state === 'done')).toBe(true);
    expect(new Set(chunks.map((c) => c.worker)).size).toBe(2);
    expect(chunks.reduce((n, c) => n + c.rows_seen, 0)).toBe(N);
    expect(await verifyBackfill(tdb.db, keyring, target)).toMatchObject({ ok: true, rows: N });
  });
});
