import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyAccessDeniedError, localKek, withTenant } from '../src/index.ts';
import { awsKekFactory, awsKms } from '../src/kms/aws/index.ts';
import { type AwsKmsServer, type IamUser, startAwsKmsServer } from '../src/testing/aws/index.ts';
import { DATABASE_URL, MAIN_DRIVER, uniqueTenant } from './helpers/db.ts';
import { type EncryptedDb, setupEncryptedDb, sibling } from './helpers/setup.ts';

const instanceScript = fileURLToPath(new URL('./fixtures/byok-instance.ts', import.meta.url));

interface Line {
  at: number;
  tenant?: string;
  ok?: boolean;
  code?: string;
  event?: string;
  source?: string;
  done?: boolean;
}

function startInstance(env: Record<string, string>): {
  child: ChildProcess;
  lines: Line[];
  waitFor(pred: (l: Line) => boolean, ms: number): Promise<Line>;
} {
  const child = spawn(process.execPath, [instanceScript], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines: Line[] = [];
  const waiters: { pred: (l: Line) => boolean; resolve: (l: Line) => void }[] = [];
  createInterface({ input: child.stdout! }).on('line', (text) => {
    const l = JSON.parse(text) as Line;
    lines.push(l);
    for (const w of [...waiters]) {
      if (w.pred(l)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(l);
      }
    }
  });
  return {
    child,
    lines,
    waitFor: (pred, ms) =>
      new Promise((resolve, reject) => {
        const found = lines.find(pred);
        if (found) return resolve(found);
        const timer = setTimeout(
          () => reject(new Error(`timed out waiting; last lines: ${JSON.stringify(lines.slice(-5))}`)),
          ms,
        );
        waiters.push({
          pred,
          resolve: (l) => {
            clearTimeout(timer);
            resolve(l);
          },
        });
      }),
  };
}

/**
 * Several app instances as separate processes. Needs a PostgreSQL server; on embedded PGlite (one
 * process only) the same properties are checked with two instances in one process, below.
 */
const onServer = DATABASE_URL !== undefined;
describe(
  onServer
    ? 'several app instances (separate processes)'
    : 'several app instances (two in one process: embedded PGlite, no server)',
  onServer ? processSuite : inProcessSuite,
);

function processSuite(): void {
  let aws: AwsKmsServer;
  let user: IamUser;
  let e: EncryptedDb;
  const platformKey = randomBytes(32).toString('base64');
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    aws = await startAwsKmsServer();
    user = aws.addUser({ name: 'platform' });
    e = await setupEncryptedDb(MAIN_DRIVER, {
      kek: localKek({ key: platformKey }),
      keyring: { kekFactories: { 'aws-kms': awsKekFactory } },
    });
  });
  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await e?.close();
    await aws?.close();
  });

  const kekOptions = (keyArn: string) => ({
    keyArn,
    auth: {
      type: 'access-keys' as const,
      accessKeyId: user.accessKeyId,
      secretAccessKey: user.secretAccessKey,
    },
    endpoint: aws.endpoint,
    timeoutMs: 2000,
    maxAttempts: 2,
  });

  it('a revocation detected by one instance reaches another within about a second (LISTEN/NOTIFY); other tenants keep working', async () => {
    const T = uniqueTenant('rev2');
    const O = uniqueTenant('ok2');
    const key = aws.createKey();
    for (const t of [T, O])
      await withTenant(t, () => e.db.insert(e.s.patients).values({ tenantId: t, name: `row of ${t}` }));
    await e.keyring.enableByok(T, awsKms(kekOptions(key.arn)));
    const reader = startInstance({
      DATABASE_URL: DATABASE_URL!,
      SCHEMA: e.s.name,
      PLATFORM_KEY: platformKey,
      MODE: 'reader',
      TENANTS: JSON.stringify([T, O]),
    });
    children.push(reader.child);
    await reader.waitFor((l) => l.tenant === T && l.ok === true, 20_000);

    aws.setPolicy(key.arn, { Statement: [{ Effect: 'Deny', Principal: '*', Action: 'kms:*' }] });
    // the other instance keeps serving from its 60 s cache: the revocation is not visible to it yet
    await new Promise((r) => setTimeout(r, 300));
    expect(reader.lines.filter((l) => l.tenant === T).at(-1)).toMatchObject({ ok: true });

    // this instance hits the KMS (cold cache), sees the refusal, and broadcasts it
    e.keyring.clearCache();
    const detectedAt = Date.now();
    await expect(
      withTenant(T, () => e.db.select().from(e.s.patients).where(eq(e.s.patients.tenantId, T))),
    ).rejects.toBeInstanceOf(KeyAccessDeniedError);
    const denied = await reader.waitFor((l) => l.tenant === T && l.ok === false, 5000);
    expect(denied.code).toBe(KeyAccessDeniedError.code);
    expect(denied.at - detectedAt).toBeLessThan(1500);
    expect(
      reader.lines.some((l) => l.event === 'invalidation' && l.tenant === T && l.source === 'remote'),
    ).toBe(true);
    // the other tenant kept working on that instance all along
    const others = reader.lines.filter((l) => l.tenant === O);
    expect(others.length).toBeGreaterThan(3);
    expect(others.every((l) => l.ok)).toBe(true);

    // restoring access restores reads there too
    aws.setPolicy(key.arn, {
      Statement: [
        { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${aws.accountId}:root` }, Action: 'kms:*' },
      ],
    });
    const back = reader.lines.length;
    await reader.waitFor((l) => l.tenant === T && l.ok === true && reader.lines.indexOf(l) >= back, 5000);
    reader.child.kill('SIGKILL');
  });

  it('a process killed in the middle of enableByok leaves every data key unwrappable through a KEK recorded in the store', async () => {
    const T = uniqueTenant('kill');
    for (let v = 0; v < 5; v++) {
      await withTenant(T, () => e.db.insert(e.s.patients).values({ tenantId: T, name: `version ${v + 1}` }));
      if (v < 4) await e.keyring.rotateDek(T);
    }
    const key = aws.createKey();
    aws.faults.latency(400, { operation: 'Encrypt', key: key.arn });
    const proc = startInstance({
      DATABASE_URL: DATABASE_URL!,
      SCHEMA: e.s.name,
      PLATFORM_KEY: platformKey,
      MODE: 'enable',
      TENANT: T,
      KEK: JSON.stringify(kekOptions(key.arn)),
    });
    children.push(proc.child);
    // wait until the re-wrap is half way, then kill the process outright
    const deadline = Date.now() + 20_000;
    for (;;) {
      const [row] = await e.tdb.raw<{ progress: { done: number; total: number } | null }>(
        `select progress from byok.tenants where tenant_id = $1`,
        [T],
      );
      if ((row?.progress?.done ?? 0) >= 2) break;
      if (Date.now() > deadline) throw new Error('enableByok never progressed');
      await new Promise((r) => setTimeout(r, 25));
    }
    proc.child.kill('SIGKILL');
    await new Promise((r) => proc.child.once('exit', r));
    aws.faults.clear();

    // every data key has a wrap under a KEK the store records (the platform key: nothing was switched)
    const wraps = await e.tdb.raw<{ version: number; refs: string[] }>(
      `select d.version, array_agg(w.kek_ref order by w.kek_ref) as refs from byok.deks d
         left join byok.dek_wraps w on w.dek_id = d.id where d.tenant_id = $1 group by d.version order by 1`,
      [T],
    );
    expect(wraps).toHaveLength(5);
    const activeKeks = await e.tdb.raw<{ key_ref: string }>(
      `select key_ref from byok.keks where tenant_id = $1 and state = 'active'`,
      [T],
    );
    const recorded = new Set([e.kek.keyRef, ...activeKeks.map((k) => k.key_ref)]);
    for (const w of wraps)
      expect(
        w.refs.some((r) => recorded.has(r)),
        `version ${w.version}`,
      ).toBe(true);
    const st = await e.keyring.status(T);
    expect(st.mode).toBe('platform');
    expect(st.progress).toBeNull();
    // and a fresh instance reads every row
    e.keyring.clearCache();
    const rows = await withTenant(T, () =>
      e.db.select({ n: e.s.patients.name }).from(e.s.patients).where(eq(e.s.patients.tenantId, T)),
    );
    expect(rows.map((r) => r.n).sort()).toEqual([
      'version 1',
      'version 2',
      'version 3',
      'version 4',
      'version 5',
    ]);
    // running it again completes
    const done = await e.keyring.enableByok(T, awsKms(kekOptions(key.arn)));
    expect(done.mode).toBe('byok');
    expect(done.dekVersions.every((v) => v.wrappedUnder.join() === key.arn)).toBe(true);
  });
}

function inProcessSuite(): void {
  let aws: AwsKmsServer;
  let user: IamUser;
  let e: EncryptedDb;
  const platformKey = randomBytes(32).toString('base64');
  beforeAll(async () => {
    aws = await startAwsKmsServer();
    user = aws.addUser({ name: 'platform' });
    e = await setupEncryptedDb(MAIN_DRIVER, {
      kek: localKek({ key: platformKey }),
      keyring: { kekFactories: { 'aws-kms': awsKekFactory } },
    });
  });
  afterAll(async () => {
    await e?.close();
    await aws?.close();
  });
  const kek = (keyArn: string) =>
    awsKms({
      keyArn,
      auth: { type: 'access-keys', accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
      endpoint: aws.endpoint,
      timeoutMs: 2000,
    });
  const readWith = (x: EncryptedDb, t: string) =>
    withTenant(t, () =>
      x.db.select({ n: x.s.patients.name }).from(x.s.patients).where(eq(x.s.patients.tenantId, t)),
    );

  it('a revocation detected by one instance reaches another through NOTIFY; other tenants keep working', async () => {
    const T = uniqueTenant('rev2');
    const O = uniqueTenant('ok2');
    const key = aws.createKey();
    for (const t of [T, O])
      await withTenant(t, () => e.db.insert(e.s.patients).values({ tenantId: t, name: `row of ${t}` }));
    await e.keyring.enableByok(T, kek(key.arn));
    const other = await sibling(e, {
      kek: localKek({ key: platformKey }),
      keyring: { kekFactories: { 'aws-kms': awsKekFactory }, cache: { maxAgeMs: 60_000 } },
    });
    try {
      await other.keyring.startListening();
      expect(await readWith(other, T)).toHaveLength(1);
      aws.setPolicy(key.arn, { Statement: [{ Effect: 'Deny', Principal: '*', Action: 'kms:*' }] });
      expect(await readWith(other, T)).toHaveLength(1); // still cached there
      e.keyring.clearCache();
      const detectedAt = Date.now();
      await expect(readWith(e, T)).rejects.toBeInstanceOf(KeyAccessDeniedError);
      let deniedAt = 0;
      while (Date.now() - detectedAt < 3000) {
        const r = await readWith(other, T).catch((x) => x);
        if (r instanceof KeyAccessDeniedError) {
          deniedAt = Date.now();
          break;
        }
        await new Promise((res) => setTimeout(res, 20));
      }
      expect(deniedAt).toBeGreaterThan(0);
      expect(deniedAt - detectedAt).toBeLessThan(1500);
      expect(await readWith(other, O)).toHaveLength(1);
    } finally {
      await other.close();
    }
  });

  it('enableByok failing in the middle (the KMS dies after two re-wraps) leaves every data key unwrappable through a recorded KEK', async () => {
    const T = uniqueTenant('kill');
    for (let v = 0; v < 5; v++) {
      await withTenant(T, () => e.db.insert(e.s.patients).values({ tenantId: T, name: `version ${v + 1}` }));
      if (v < 4) await e.keyring.rotateDek(T);
    }
    const key = aws.createKey();
    const dying = kek(key.arn);
    let wraps = 0;
    const wrap = dying.wrap.bind(dying);
    (dying as { wrap: typeof wrap }).wrap = async (dek, ctx) => {
      if (ctx.dekId.startsWith('verify-')) return wrap(dek, ctx);
      if (++wraps > 2) throw new Error('process died');
      return wrap(dek, ctx);
    };
    await expect(e.keyring.enableByok(T, dying)).rejects.toThrow('process died');
    const st = await e.keyring.status(T);
    expect(st.mode).toBe('platform');
    expect(st.progress).toBeNull();
    for (const v of st.dekVersions) expect(v.wrappedUnder).toEqual([e.kek.keyRef]);
    e.keyring.clearCache();
    expect((await readWith(e, T)).map((r) => r.n).sort()).toEqual([
      'version 1',
      'version 2',
      'version 3',
      'version 4',
      'version 5',
    ]);
  });
}
