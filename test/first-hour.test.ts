import { randomBytes } from 'node:crypto';
import { inspect } from 'node:util';
import { PGlite } from '@electric-sql/pglite';
import { drizzle as drizzlePg } from 'drizzle-orm/node-postgres';
import { bigserial, pgSchema, text } from 'drizzle-orm/pg-core';
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite';
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js';
import fc from 'fast-check';
import pg from 'pg';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { PgDatabase } from 'drizzle-orm/pg-core';
type PgDb = PgDatabase<any, any, any>;
import {
  ByokConfigError,
  DatabaseUnavailableError,
  encrypted,
  isByokError,
  KeyNotFoundError,
  KeyStoreMissingError,
  createKeyring,
  localKek,
  verifyBackfill,
  withEncryption,
} from '../src/index.ts';
import { awsKekFactory, awsKms } from '../src/kms/aws/index.ts';
import { cliMessage } from '../src/cli/speak.ts';
import { type AwsKmsServer, startAwsKmsServer } from '../src/testing/index.ts';
import {
  DATABASE_URL,
  DRIVERS,
  type DriverName,
  MAIN_DRIVER,
  uniqueName,
  uniqueTenant,
} from './helpers/db.ts';
import { type EncryptedDb, setupEncryptedDb } from './helpers/setup.ts';

/** A database of its own, without the key store: a fresh PostgreSQL database, or a fresh PGlite. */
async function emptyDatabase(driver: DriverName): Promise<{ db: PgDb; close(): Promise<void> }> {
  if (driver === 'pglite') {
    const client = new PGlite();
    return { db: drizzlePglite({ client: client }) as never, close: () => client.close() };
  }
  const name = uniqueName('byok_empty');
  const admin = postgres(DATABASE_URL!, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database "${name}"`);
  const url = new URL(DATABASE_URL!);
  url.pathname = `/${name}`;
  const drop = async () => {
    await admin.unsafe(`drop database if exists "${name}" with (force)`);
    await admin.end();
  };
  if (driver === 'postgres-js') {
    const client = postgres(url.toString(), { max: 2 });
    return {
      db: drizzlePostgres({ client: client }) as never,
      close: async () => {
        await client.end();
        await drop();
      },
    };
  }
  const pool = new pg.Pool({ connectionString: url.toString(), max: 2 });
  pool.on('error', () => {}); // idle clients see the database dropped
  return {
    db: drizzlePg({ client: pool }) as never,
    close: async () => {
      await pool.end();
      await drop();
    },
  };
}

const app = pgSchema('first_hour');
const notes = app.table('notes', {
  id: bigserial('id', { mode: 'number' }).primaryKey(),
  tenantId: text('tenant_id').notNull(),
  body: encrypted.text('body'),
});

const SECRET = 'the plaintext nobody may print';

describe.each(DRIVERS)('a database without the key store (%s)', (driver) => {
  let d: Awaited<ReturnType<typeof emptyDatabase>>;
  beforeAll(async () => {
    d = await emptyDatabase(driver);
  });
  afterAll(() => d?.close());

  it('every keyring path fails with one KeyStoreMissingError that says how to create it, without the query', async () => {
    const keyring = createKeyring({ db: d.db, platformKek: localKek({ key: randomBytes(32) }) });
    withEncryption(d.db, keyring, { tenantColumn: 'tenant_id' });
    const attempts: [string, () => Promise<unknown>][] = [
      [
        'insert',
        () => keyring.withTenant('acme', () => d.db.insert(notes).values({ tenantId: 'acme', body: SECRET })),
      ],
      ['status', () => keyring.status('acme')],
      ['rotateDek', () => keyring.rotateDek('acme')],
      ['shred', () => keyring.shred('acme', { confirm: 'acme' })],
      ['checkHealth', () => keyring.checkHealth()],
    ];
    for (const [what, attempt] of attempts) {
      const e = await attempt().then(
        () => undefined,
        (x: unknown) => x,
      );
      expect(e, what).toBeInstanceOf(KeyStoreMissingError);
      const err = e as KeyStoreMissingError;
      expect(err.code).toBe('ERR_BYOK_KEY_STORE_MISSING');
      expect(err.message).toMatch(/key store does not exist in this database \(.*byok\..* does not exist\)/);
      expect(err.message).toContain('await keyring.installKeyStore()');
      expect(err.message).toContain('npx drizzle-byok migrate install');
      const shown = `${err.message}\n${inspect(err, { depth: 10 })}`;
      expect(shown, what).not.toMatch(/params:|Failed query|select |insert into/i);
      expect(shown).not.toContain(SECRET);
      expect((err.cause as { name?: string }).name).not.toBe('DrizzleQueryError');
    }
    await keyring.close();
  });

  it('installKeyStore() then works, and prints no NOTICE even when everything exists', async () => {
    const notices: unknown[] = [];
    const keyring = createKeyring({ db: d.db, platformKek: localKek({ key: randomBytes(32) }) });
    const log = vi.spyOn(console, 'log');
    const warn = vi.spyOn(console, 'warn');
    const info = vi.spyOn(console, 'info');
    try {
      // postgres.js prints notices through console.log unless `onnotice` is set; node-postgres emits them.
      const client = (d.db as unknown as { $client: { on?: (ev: string, fn: (n: unknown) => void) => void } })
        .$client;
      if (driver === 'node-postgres') {
        (client as unknown as pg.Pool).on('connect', (c) => c.on('notice', (n) => notices.push(n)));
      }
      await keyring.installKeyStore();
      await keyring.installKeyStore();
      expect(notices).toEqual([]);
      for (const spy of [log, warn, info])
        expect(spy.mock.calls.flat().map(String).join('\n')).not.toMatch(/NOTICE|already exists|skipping/i);
    } finally {
      log.mockRestore();
      warn.mockRestore();
      info.mockRestore();
      await keyring.close();
    }
  });
});

describe('a database that cannot be reached', () => {
  // Port 1 on the loopback: nothing listens there, the connection is refused at once.
  const clients = {
    'postgres-js': () => {
      const c = postgres('postgres://app@127.0.0.1:1/app', { max: 1, connect_timeout: 5 });
      return { db: drizzlePostgres({ client: c }) as never as PgDb, close: () => c.end() };
    },
    'node-postgres': () => {
      const p = new pg.Pool({ connectionString: 'postgres://app@127.0.0.1:1/app', max: 1 });
      return { db: drizzlePg({ client: p }) as never as PgDb, close: () => p.end() };
    },
  };
  it.each(Object.keys(clients) as (keyof typeof clients)[])(
    '%s: installKeyStore, status and encrypted writes fail with DatabaseUnavailableError naming the address',
    async (name) => {
      const c = clients[name]();
      const keyring = createKeyring({ db: c.db, platformKek: localKek({ key: randomBytes(32) }) });
      withEncryption(c.db, keyring, { tenantColumn: 'tenant_id' });
      try {
        for (const attempt of [
          () => keyring.installKeyStore(),
          () => keyring.status('acme'),
          () =>
            keyring.withTenant('acme', () => c.db.insert(notes).values({ tenantId: 'acme', body: SECRET })),
        ]) {
          const e = await attempt().then(
            () => undefined,
            (x: unknown) => x,
          );
          expect(e).toBeInstanceOf(DatabaseUnavailableError);
          const err = e as DatabaseUnavailableError;
          expect(err.code).toBe('ERR_BYOK_DATABASE_UNAVAILABLE');
          expect(err.message).toMatch(/^cannot use the database: .*ECONNREFUSED.*127\.0\.0\.1:1/);
          expect(err.message).toMatch(/Check that PostgreSQL is running.*DATABASE_URL/);
          expect(`${err.message}${inspect(err, { depth: 10 })}`).not.toMatch(/params:|Failed query/);
          expect(inspect(err, { depth: 10 })).not.toContain(SECRET);
        }
      } finally {
        await keyring.close();
        await c.close();
      }
    },
  );
});

describe('configuration errors', () => {
  const db = drizzlePglite({ client: new PGlite() }) as never as PgDb;
  const kek = localKek({ key: randomBytes(32) });

  it('every createKeyring problem is a ByokConfigError, and one error lists all of them', () => {
    const bad: [string, unknown, RegExp][] = [
      ['db', {}, /`db` must be a Drizzle PostgreSQL database/],
      ['platformKek', 'secret', /`platformKek` must be a KEK/],
      ['cache', { maxAgeMs: 0 }, /`cache\.maxAgeMs` must be a positive number of milliseconds.*got 0/],
      ['unwrapConcurrency', 0, /`unwrapConcurrency` must be a positive integer, got 0/],
      ['maxBatchSize', 1.5, /`maxBatchSize` must be a positive integer/],
      ['kekFactories', { 'aws-kms': 'yes' }, /`kekFactories\['aws-kms'\]` must be a KEK factory/],
      ['onEvent', 42, /`onEvent` must be a function/],
      ['auditTable', 'yes', /`auditTable` must be true or false/],
      ['platformKEK', kek, /unknown option `platformKEK`/],
    ];
    fc.assert(
      fc.property(fc.subarray(bad, { minLength: 1 }), (chosen) => {
        const options: Record<string, unknown> = { db, platformKek: kek };
        for (const [k, v] of chosen) options[k] = v;
        let caught: unknown;
        try {
          createKeyring(options as never);
        } catch (e) {
          caught = e;
        }
        expect(caught).toBeInstanceOf(ByokConfigError);
        expect((caught as ByokConfigError).code).toBe('ERR_BYOK_CONFIG');
        const message = (caught as Error).message;
        for (const [, , re] of chosen) expect(message).toMatch(re);
        if (chosen.length > 1) expect(message).toContain(`${chosen.length} problems`);
      }),
      { numRuns: 60 },
    );
  });

  it('localKek reads 64 hex digits as hex and anything else as base64, and says which it tried', () => {
    const fingerprint = (key: string | Uint8Array) => localKek({ key }).keyRef;
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), (bytes) => {
        fc.pre(!bytes.every((b) => b === bytes[0]));
        const b = Buffer.from(bytes);
        const ref = fingerprint(b);
        expect(fingerprint(b.toString('hex'))).toBe(ref);
        expect(fingerprint(b.toString('hex').toUpperCase())).toBe(ref);
        expect(fingerprint(b.toString('base64'))).toBe(ref);
        expect(fingerprint(` ${b.toString('base64url')}\n`)).toBe(ref);
      }),
    );
    // Hex text of the wrong length is reported as hex (the length a lost digit gives), never as base64.
    fc.assert(
      fc.property(fc.stringMatching(/^[0-9a-f]{1,80}$/), (hex) => {
        fc.pre(hex.length !== 64);
        expect(() => localKek({ key: hex })).toThrow(
          new RegExp(`read as hex: ${hex.length} hex digits.*32 bytes are 64 hex digits`),
        );
        try {
          localKek({ key: hex });
        } catch (e) {
          if (hex.length >= 8) expect((e as Error).message).not.toContain(hex);
          expect(isByokError(e) && e.code).toBe('ERR_BYOK_CONFIG');
        }
      }),
    );
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 64 }), (bytes) => {
        fc.pre(bytes.length !== 32);
        const text = Buffer.from(bytes).toString('base64');
        fc.pre(!/^[0-9a-fA-F]+$/.test(text));
        expect(() => localKek({ key: text })).toThrow(
          new RegExp(`read as base64: ${text.length} characters decode to ${bytes.length} bytes`),
        );
      }),
    );
    expect(() => localKek({ key: randomBytes(32).toString('hex').slice(2) })).toThrow(
      /read as hex: 62 hex digits \(31 bytes\)/,
    );
  });
});

describe('shred and tenant-scoped errors', () => {
  let e: EncryptedDb;
  let aws: AwsKmsServer;
  beforeAll(async () => {
    aws = await startAwsKmsServer();
    e = await setupEncryptedDb(MAIN_DRIVER, { keyring: { kekFactories: { 'aws-kms': awsKekFactory } } });
  });
  afterAll(async () => {
    await e?.close();
    await aws?.close();
  });

  it('refuses to shred a tenant that has no data key (a misspelled id) unless allowNoKeys is given', async () => {
    const t = uniqueTenant('acme');
    await withTenantWrite(e, t);
    for (const typo of [`${t} `, ` ${t}`, `${t}x`, uniqueTenant('never')]) {
      const err = await e.keyring.shred(typo, { confirm: typo }).catch((x: unknown) => x);
      expect(err).toBeInstanceOf(KeyNotFoundError);
      expect((err as KeyNotFoundError).tenantId).toBe(typo);
      expect((err as Error).message).toMatch(/has no data keys.*nothing to shred.*allowNoKeys: true/);
      if (typo.trim() !== typo) expect((err as Error).message).toMatch(/leading or trailing spaces/);
      // Nothing was recorded: the id can still get keys.
      expect((await e.tdb.raw('select 1 from byok.tenants where tenant_id = $1', [typo])).length).toBe(0);
    }
    const blocked = uniqueTenant('blocked');
    expect(await e.keyring.shred(blocked, { confirm: blocked, allowNoKeys: true })).toEqual({
      tenantId: blocked,
      destroyedVersions: 0,
    });
    expect((await e.keyring.status(blocked)).state).toBe('shredded');
    expect(await e.keyring.shred(t, { confirm: t })).toEqual({ tenantId: t, destroyedVersions: 1 });
    // Shredding again (keys exist, destroyed) is allowed: idempotent.
    expect(await e.keyring.shred(t, { confirm: t })).toEqual({ tenantId: t, destroyedVersions: 0 });
  });

  it('errors of a tenant operation carry the tenant id, whatever layer raised them', async () => {
    const t = uniqueTenant('byok');
    const user = aws.addUser();
    const kek = awsKms({
      keyArn: `arn:aws:kms:us-east-1:${user.accountId}:key/00000000-0000-4000-8000-000000000000`,
      endpoint: aws.endpoint,
      auth: { type: 'access-keys', accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
      maxAttempts: 1,
    });
    try {
      const err = await e.keyring.enableByok(t, kek).catch((x: unknown) => x);
      expect(isByokError(err)).toBe(true);
      expect((err as { code: string }).code).toBe('ERR_BYOK_KEK_NOT_FOUND');
      expect((err as { tenantId?: string }).tenantId).toBe(t);
    } finally {
      await kek.close?.();
    }
  });

  it('library messages that name an API are told in commands and flags by the CLI', async () => {
    const t = uniqueTenant('cli');
    await withTenantWrite(e, t);
    const api =
      /\b(installKeyStore|enableByok|rotateKek|disableByok|rotateDek|runBackfill|rollbackBackfill|verifyBackfill|planBackfill|checkHealth|allowNoKeys)\b|\bshred\(|confirm: /;
    const messages: [string, string | undefined][] = [];
    for (const attempt of [
      () => e.keyring.rotateKek(t, e.kek),
      () => e.keyring.disableByok(t),
      () => e.keyring.shred(`${t}-typo`, { confirm: `${t}-typo` }),
      () => e.keyring.shred(t, { confirm: 'wrong' }),
    ]) {
      const err = (await attempt().catch((x: unknown) => x)) as { message: string; code: string };
      expect(err.message).toMatch(api);
      messages.push([cliMessage(err.message, err.code), err.code]);
    }
    messages.push([
      cliMessage(
        new KeyStoreMissingError('x (relation "byok.deks" does not exist)').message,
        'ERR_BYOK_KEY_STORE_MISSING',
      ),
      undefined,
    ]);
    for (const [m] of messages) expect(m).not.toMatch(api);
    expect(messages[0]![0]).toContain('`drizzle-byok keys enable <tenant> --kek ...`');
    expect(messages[2]![0]).toContain('add --allow-no-keys');
    expect(messages[3]![0]).toContain(`add --confirm "${t}"`);
    expect(messages[4]![0]).toMatch(
      /relation "byok\.deks" does not exist\): create it with `drizzle-byok migrate install`/,
    );
  });
});

async function withTenantWrite(e: EncryptedDb, tenantId: string): Promise<void> {
  await e.keyring.withTenant(tenantId, () =>
    e.db.insert(e.s.patients).values({ tenantId, name: 'n', email: 'x' } as never),
  );
}

describe('migrate verify: unreadable values apart from unavailable keys, with tenants and causes', () => {
  let e: EncryptedDb;
  let aws: AwsKmsServer;
  const schema = uniqueName('fh_verify');
  const s = pgSchema(schema);
  const items = s.table('items', {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    tenantId: text('tenant_id').notNull(),
    secret: encrypted.text('secret'),
  });
  beforeAll(async () => {
    aws = await startAwsKmsServer();
    e = await setupEncryptedDb(MAIN_DRIVER, { keyring: { kekFactories: { 'aws-kms': awsKekFactory } } });
    await e.tdb.raw(`create schema "${schema}"`);
    await e.tdb.raw(
      `create table "${schema}".items (id bigserial primary key, tenant_id text not null, secret bytea)`,
    );
  });
  afterAll(async () => {
    await e?.close();
    await aws?.close();
  });

  it('a KMS outage of one tenant is "key unavailable" naming it and the cause; a tampered value is "unreadable"', async () => {
    const [ok, down, tampered] = [uniqueTenant('ok'), uniqueTenant('down'), uniqueTenant('tamper')];
    const user = aws.addUser();
    const key = aws.createKey();
    const kek = awsKms({
      keyArn: key.arn,
      endpoint: aws.endpoint,
      auth: { type: 'access-keys', accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
      maxAttempts: 1,
      timeoutMs: 10_000, // the outage below is a 503, not a timeout: no tight bound on a loaded machine
    });
    await e.keyring.enableByok(down, kek);
    for (const t of [ok, down, tampered]) {
      await e.keyring.withTenant(t, () =>
        e.db
          .insert(items)
          .values(Array.from({ length: 5 }, (_, i) => ({ tenantId: t, secret: `${t}-${i}` }))),
      );
    }
    const [victim] = await e.tdb.raw<{ id: number }>(
      `select id from "${schema}".items where tenant_id = $1 limit 1`,
      [tampered],
    );
    await e.tdb.raw(
      `update "${schema}".items set secret = overlay(secret placing '\\xff'::bytea from length(secret) - 3 for 1) where id = $1`,
      [victim!.id],
    );
    e.keyring.evictTenant(down);
    aws.faults.fail(1000, { status: 503 });
    try {
      const r = await verifyBackfill(e.db, e.keyring, {
        table: items,
        tenantColumn: items.tenantId,
        columns: [items.secret],
      });
      expect(r.ok).toBe(false);
      expect(r.plaintext).toBe(0);
      expect(r.unreadable).toBe(1);
      expect(r.unavailable).toBe(5);
      expect(r.columns[0]).toMatchObject({ unreadable: 1, unavailable: 5, current: 9 });
      expect(r.problems).toEqual([
        expect.objectContaining({
          tenantId: down,
          kind: 'key-unavailable',
          code: 'ERR_BYOK_KMS_UNAVAILABLE',
          values: 5,
        }),
        expect.objectContaining({
          tenantId: tampered,
          kind: 'unreadable',
          code: 'ERR_BYOK_DECRYPTION_FAILED',
          values: 1,
        }),
      ]);
      expect(JSON.stringify(r)).not.toMatch(new RegExp(`${ok}-|${down}-\\d|${tampered}-\\d`));
    } finally {
      aws.faults.clear();
      await kek.close?.();
    }
    const again = await verifyBackfill(e.db, e.keyring, {
      table: items,
      tenantColumn: items.tenantId,
      columns: [items.secret],
    });
    expect(again).toMatchObject({ unreadable: 1, unavailable: 0 });
  });
});

describe('key store constraint names', () => {
  it('are the same in the shipped SQL (as installed) and in the Drizzle schema drizzle-kit reads', async () => {
    const { getTableConfig, PgTable } = await import('drizzle-orm/pg-core');
    const { is } = await import('drizzle-orm');
    const schema = await import('../src/schema.ts');
    const fromDrizzle: string[] = [];
    for (const table of Object.values(schema)) {
      if (!is(table, PgTable)) continue;
      const c = getTableConfig(table as never);
      if (c.schema !== 'byok') continue;
      for (const pk of c.primaryKeys) fromDrizzle.push(`${c.name}: ${pk.getName()}`);
      for (const fk of c.foreignKeys) fromDrizzle.push(`${c.name}: ${fk.getName()}`);
      for (const col of c.columns) if (col.primary) fromDrizzle.push(`${c.name}: ${c.name}_pkey`);
    }
    const d = await emptyDatabase('pglite');
    try {
      const keyring = createKeyring({ db: d.db, platformKek: localKek({ key: randomBytes(32) }) });
      await keyring.installKeyStore();
      const rows = (await d.db.execute(
        "select conrelid::regclass::text as t, conname from pg_constraint where connamespace = 'byok'::regnamespace and contype in ('p', 'f')" as never,
      )) as unknown as { rows: { t: string; conname: string }[] };
      const installed = rows.rows.map((r) => `${r.t.replace(/^byok\./, '')}: ${r.conname}`);
      expect(fromDrizzle.sort()).toEqual(installed.sort());
      expect(installed.length).toBeGreaterThan(10);
    } finally {
      await d.close();
    }
  });
});
