/**
 * One backfill worker process of the retrofit section (not a section itself): runs `runBackfill`
 * with the shipped defaults over `<SCHEMA>.accounts` and prints one JSON line with its result, its
 * own CPU time and that of its database connections. Env: DATABASE_URL, SCHEMA, PLATFORM_KEY,
 * START_AT (epoch ms: workers started together begin at the same moment).
 */
import { drizzle } from 'drizzle-orm/postgres-js';
import postgres from 'postgres';
import { createKeyring, localKek } from '../src/index.ts';
import { runBackfill } from '../src/migrate/index.ts';
import { retrofitSchema } from '../test/fixtures/retrofit-schema.ts';
import { backendPids, processCpuSeconds } from './lib.ts';

const env = process.env;
const client = postgres(env.DATABASE_URL!, { max: 4, onnotice: () => {} });
const db = drizzle({ client });
const keyring = createKeyring({ db, platformKek: localKek({ key: env.PLATFORM_KEY! }) });
const s = retrofitSchema(env.SCHEMA!);
try {
  const pids = await backendPids(client, 4);
  const startAt = Number(env.START_AT ?? 0);
  if (startAt > Date.now()) await new Promise((r) => setTimeout(r, startAt - Date.now()));
  const dbCpu0 = await processCpuSeconds(pids);
  const cpu0 = process.cpuUsage();
  const startedAt = Date.now();
  const r = await runBackfill(db, keyring, s.target(s.enc('passthrough')));
  const endedAt = Date.now();
  const cpu = process.cpuUsage(cpu0);
  const dbCpu = (await processCpuSeconds(pids)) - dbCpu0;
  process.stdout.write(
    `${JSON.stringify({
      startedAt,
      endedAt,
      rowsSeen: r.rowsSeen,
      written: r.written,
      chunks: r.chunks,
      busyRetries: r.busyRetries,
      jobDone: r.jobDone,
      cpuSeconds: (cpu.user + cpu.system) / 1e6,
      dbCpuSeconds: dbCpu,
    })}\n`,
  );
} finally {
  await keyring.close();
  await client.end();
}
