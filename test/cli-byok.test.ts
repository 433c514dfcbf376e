/**
 * The BYOK commands of the CLI, spawned as a user runs them: `keys onboard` (every format),
 * `keys enable` with the external id onboarding issued, `keys rewrap-platform` with progress and
 * `--json`. PostgreSQL only (the CLI and the test share the key store).
 */
import { spawn } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { drizzle } from 'drizzle-orm/postgres-js';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../src/cli/cli.ts';
import { createKeyring, installKeyStore, type Keyring, localKek } from '../src/index.ts';
import { type AwsKmsServer, type IamUser, startAwsKmsServer } from '../src/testing/aws/index.ts';
import { keysOf } from '../src/keys/keyring.ts';
import { DATABASE_URL, uniqueTenant } from './helpers/db.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const CONFIG = 'test/fixtures/byok-config.ts';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI in this process (for runs that check output only), with `env` as process.env. */
async function inProcess(args: string[], env: Record<string, string>): Promise<Run> {
  const saved = { ...process.env };
  Object.assign(process.env, env);
  const out = new PassThrough();
  const err = new PassThrough();
  let stdout = '';
  let stderr = '';
  out.on('data', (d) => {
    stdout += d;
  });
  err.on('data', (d) => {
    stderr += d;
  });
  try {
    const code = await runCli([...args, '--config', CONFIG], { stdout: out, stderr: err }, { cwd: root });
    return { code, stdout, stderr };
  } finally {
    for (const k of Object.keys(env)) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  }
}

function cli(args: string[], env: Record<string, string>): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(root, 'src/cli/main.ts'), ...args, '--config', CONFIG], {
      cwd: root,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

describe.runIf(DATABASE_URL !== undefined)(
  'drizzle-byok keys onboard / enable / rewrap-platform (spawned)',
  () => {
    let aws: AwsKmsServer;
    let user: IamUser;
    let client: ReturnType<typeof postgres>;
    let keyring: Keyring;
    const oldKey = randomBytes(32).toString('base64');
    const newKey = randomBytes(32).toString('base64');
    let env: Record<string, string>;
    let dbName: string | undefined;
    let dbUrl: string;
    beforeAll(async () => {
      aws = await startAwsKmsServer();
      user = aws.addUser({ name: 'platform' });
      // A database of its own: rewrap-platform counts every data key of the key store, and other
      // suites' keyrings (other platform keys) share the test database.
      const admin = postgres(DATABASE_URL!, { max: 1, onnotice: () => {} });
      dbName = `byok_cli_${randomBytes(4).toString('hex')}`;
      await admin.unsafe(`create database ${dbName}`);
      await admin.end();
      const url = new URL(DATABASE_URL!);
      url.pathname = `/${dbName}`;
      dbUrl = url.toString();
      client = postgres(dbUrl, { max: 2, onnotice: () => {} });
      const db = drizzle({ client });
      await installKeyStore(db);
      keyring = createKeyring({ db, platformKek: localKek({ key: oldKey }) });
      env = {
        DATABASE_URL: dbUrl,
        PLATFORM_KEY: oldKey,
        // the CLI's default credential chain: the platform user's keys
        AWS_ACCESS_KEY_ID: user.accessKeyId,
        AWS_SECRET_ACCESS_KEY: user.secretAccessKey,
        AWS_REGION: aws.region,
      };
    });
    afterAll(async () => {
      await keyring?.close();
      await client?.end();
      await aws?.close();
      if (dbName !== undefined) {
        const admin = postgres(DATABASE_URL!, { max: 1, onnotice: () => {} });
        await admin.unsafe(`drop database if exists ${dbName} with (force)`);
        await admin.end();
      }
    });

    it('keys onboard --aws prints the artifacts in every format; keys enable uses (and checks) the external id issued', async () => {
      const T = uniqueTenant('cli-onb');
      const base = [
        'keys',
        'onboard',
        T,
        '--aws',
        '--platform-principal',
        user.arn,
        '--tenant-account',
        aws.accountId,
        '--region',
        aws.region,
      ];
      const asJson = await cli([...base, '--format', 'json'], env);
      expect(asJson.code).toBe(0);
      const a = JSON.parse(asJson.stdout);
      expect(a).toMatchObject({
        provider: 'aws',
        tenantId: T,
        externalId: expect.stringMatching(/^byok-[0-9a-f]{32}$/),
      });
      const text = await inProcess(base, env);
      expect(text.code).toBe(0);
      expect(text.stdout).toContain(
        `External id (issued to this tenant, stored; the role trust policy requires it): ${a.externalId}`,
      );
      expect(text.stdout).toContain('"kms:DescribeKey"');
      const shell = await inProcess([...base, '--format', 'shell'], env);
      expect(shell.stdout.startsWith('#!/usr/bin/env bash\n')).toBe(true);
      expect(shell.stdout).toContain(a.externalId);
      const tf = await inProcess([...base, '--format', 'terraform'], env);
      expect(tf.stdout).toMatch(/resource "aws_kms_key" "drizzle_byok"/);
      expect((await inProcess([...base, '--json'], env)).stdout).toContain(a.externalId);
      const badFormat = await inProcess([...base, '--format', 'yaml'], env);
      expect(badFormat.code).toBe(2);
      expect(badFormat.stderr).toMatch(/--format must be one of text, json, shell, terraform/);
      const noProvider = await inProcess(['keys', 'onboard', T, '--region', 'us-east-1'], env);
      expect(noProvider.code).toBe(2);
      expect(noProvider.stderr).toMatch(/needs one of --aws, --gcp, --azure or --vault/);
      const missing = await inProcess(['keys', 'onboard', T, '--aws', '--region', 'us-east-1'], env);
      expect(missing.stderr).toMatch(/needs --platform-principal/);

      // the tenant applies the generated role trust and key policy
      aws.addRole({ name: 'drizzle-byok', trust: a.roleTrustPolicy, iamAllowsKms: false });
      const key = aws.createKey({ policy: a.keyPolicy });
      aws.createAlias('alias/drizzle-byok', key.arn);
      const kekFlags = [
        '--aws-key-arn',
        a.keyArns[0],
        '--aws-role-arn',
        a.roleArn,
        '--aws-endpoint',
        aws.endpoint,
        '--aws-sts-endpoint',
        aws.stsEndpoint,
      ];
      const otherId = await cli(['keys', 'enable', T, ...kekFlags, '--external-id', 'byok-other'], env);
      expect(otherId.code).toBe(2);
      expect(otherId.stderr).toMatch(/not the one issued to tenant/);
      const enabled = await cli(['keys', 'enable', T, ...kekFlags, '--json'], env);
      expect(enabled.stderr).toBe('');
      expect(enabled.code).toBe(0);
      expect(JSON.parse(enabled.stdout)).toMatchObject({
        mode: 'byok',
        keks: [{ keyRef: a.keyArns[0], currentKeyId: key.arn }],
      });
      const noId = await inProcess(['keys', 'enable', uniqueTenant('never-onboarded'), ...kekFlags], env);
      expect(noId.code).toBe(2);
      expect(noId.stderr).toMatch(
        /--aws-role-arn needs --external-id, or an external id issued by `drizzle-byok keys onboard/,
      );
    });

    it('keys rewrap-platform: progress on stderr, --json result, exit 3 while a data key stays under an unknown platform key', async () => {
      const tenants = [uniqueTenant('rp'), uniqueTenant('rp'), uniqueTenant('rp')];
      for (const t of tenants) await keysOf(keyring).createDek(t, { rotate: false });
      const without = await inProcess(['keys', 'rewrap-platform'], env);
      expect(without.code).toBe(2);
      expect(without.stderr).toMatch(
        /the config names none: set the new key as platformKek and the old one in previousPlatformKeks/,
      );
      const rotated = { ...env, PLATFORM_KEY: newKey, PREVIOUS_PLATFORM_KEY: oldKey };
      const r = await cli(['keys', 'rewrap-platform', '--json', '--progress-every', '1'], rotated);
      expect(r.code).toBe(0);
      const out = JSON.parse(r.stdout);
      expect(out).toMatchObject({ ok: true, remaining: 0 });
      expect(out.dataKeys).toBe(3);
      const progress = r.stderr
        .trim()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l));
      expect(progress[0]).toMatchObject({ event: 'progress', label: 'rewrap-platform', rowsDone: 0 });
      expect(progress[0].rowsTotal).toBe(3);
      const again = await inProcess(['keys', 'rewrap-platform'], rotated);
      expect(again.code).toBe(0);
      expect(again.stdout).toMatch(
        /^re-wrapping data keys under local:[0-9a-f]+ with local:[0-9a-f]+\n0 data key\(s\) re-wrapped/,
      );
      expect(again.stdout).toMatch(/remove it from previousPlatformKeks/);
      // a data key under a platform key neither config knows: reported, exit 3
      const stray = createKeyring({
        db: drizzle({ client }),
        platformKek: localKek({ key: randomBytes(32) }),
      });
      await keysOf(stray).createDek(uniqueTenant('stray'), { rotate: false });
      await stray.close();
      const left = await inProcess(['keys', 'rewrap-platform', '--json', '--no-progress'], rotated);
      expect(left.code).toBe(3);
      expect(JSON.parse(left.stdout)).toMatchObject({ ok: false, remaining: 1 });
    });
  },
);
