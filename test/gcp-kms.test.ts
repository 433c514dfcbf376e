/**
 * `gcpKms` with the real `KeyManagementServiceClient` (google-gax, @grpc/grpc-js, google-auth-library)
 * against the local Cloud KMS server of `drizzle-byok/testing`. Every TCP connection to a
 * non-loopback host is blocked and recorded, and the GCE metadata server is pointed at a local
 * listener that counts hits: the suite proves the client never leaves 127.0.0.1.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { inspect } from 'node:util';
import { KeyManagementServiceClient } from '@google-cloud/kms';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  ByokConfigError,
  KekNotFoundError,
  KeyAccessDeniedError,
  KeyDisabledError,
  KeyUsageError,
  KmsCredentialsError,
  KmsIntegrityError,
  KmsThrottledError,
  KmsUnavailableError,
} from '../src/errors.ts';
import {
  type GcpKmsClientLike,
  type GcpKmsOptions,
  gcpAdditionalAuthenticatedData,
  gcpCrc32c,
  gcpKekFactory,
  gcpKms,
  parseGcpKeyName,
} from '../src/kms/gcp/index.ts';
import {
  crc32c,
  type GcpCorruptibleField,
  type GcpCryptoKeyInfo,
  type GcpKmsServer,
  type GcpServiceAccountKey,
  startGcpKmsServer,
} from '../src/testing/gcp/index.ts';

// -- network guard ----------------------------------------------------------------------------

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost|::ffff:127\.\d+\.\d+\.\d+)$/;
const outbound: string[] = [];
const originalConnect = net.Socket.prototype.connect;

function targetHost(args: unknown[]): string | undefined {
  let first = args[0];
  if (Array.isArray(first)) first = first[0]; // Node's internal normalized arguments
  if (typeof first === 'object' && first !== null) {
    const o = first as { host?: unknown; path?: unknown };
    if (typeof o.path === 'string') return undefined; // unix socket / named pipe
    return typeof o.host === 'string' ? o.host : 'localhost';
  }
  if (typeof first === 'string' && !/^\d+$/.test(first)) return undefined; // path
  return typeof args[1] === 'string' ? args[1] : 'localhost';
}

let metadataServer: Server;
let metadataHits = 0;
const savedEnv = { ...process.env };

beforeAll(async () => {
  net.Socket.prototype.connect = function guardedConnect(this: net.Socket, ...args: unknown[]) {
    const host = targetHost(args);
    if (host !== undefined && !LOOPBACK.test(host)) {
      outbound.push(host);
      process.nextTick(() => this.destroy(new Error(`test network guard: connection to ${host} blocked`)));
      return this;
    }
    return (originalConnect as (...a: unknown[]) => net.Socket).apply(this, args);
  } as typeof originalConnect;
  metadataServer = createServer((_req, res) => {
    metadataHits++;
    res.writeHead(500).end();
  });
  await new Promise<void>((resolve) => metadataServer.listen(0, '127.0.0.1', resolve));
  process.env.GCE_METADATA_HOST = `127.0.0.1:${(metadataServer.address() as AddressInfo).port}`;
  delete process.env.GCE_METADATA_IP;
  delete process.env.GOOGLE_APPLICATION_CREDENTIALS;
  delete process.env.GOOGLE_CLOUD_UNIVERSE_DOMAIN;
  delete process.env.METADATA_SERVER_DETECTION;
});

afterAll(async () => {
  net.Socket.prototype.connect = originalConnect;
  await new Promise<void>((resolve) => metadataServer.close(() => resolve()));
  process.env = savedEnv;
});

// -- fixtures ----------------------------------------------------------------------------------

let kms: GcpKmsServer;
let sa: GcpServiceAccountKey;
let key: GcpCryptoKeyInfo;
const keks: { close(): Promise<void> }[] = [];
const ctx = { tenantId: 'tenant-a', dekId: '7b0f5f4e-4a3f-4cf2-9d59-8a1c2b1d0e11' };

beforeAll(async () => {
  kms = await startGcpKmsServer();
  sa = await kms.createServiceAccount({ accountId: 'app-runtime' });
});

afterAll(async () => {
  await Promise.all(keks.map((k) => k.close()));
  await kms.close();
});

async function freshKey(options: Parameters<GcpKmsServer['createCryptoKey']>[0] = {}) {
  const k = kms.createCryptoKey({ keyRing: 'tenants', ...options });
  kms.grant(k.name, sa, 'roles/cloudkms.cryptoKeyEncrypterDecrypter');
  kms.grant(k.name, sa, 'roles/cloudkms.viewer');
  return k;
}

beforeAll(async () => {
  key = await freshKey({ cryptoKeyId: 'main' });
});

afterEach(() => {
  kms.faults.clear();
});

function kekFor(overrides: Partial<GcpKmsOptions> = {}, credentials: GcpServiceAccountKey = sa) {
  const kek = gcpKms({
    keyName: key.name,
    credentials: { type: 'service-account', key: { ...credentials } },
    apiEndpoint: kms.apiEndpoint,
    port: kms.port,
    insecure: true,
    timeoutMs: 2000,
    retries: 2,
    retryDelayMs: 10,
    ...overrides,
  });
  keks.push(kek);
  return kek;
}

const dek = () => randomBytes(32);

/** A service-account key file the server never issued (real RSA key, generated here). */
function foreignKey(email: string, keyId: string): GcpServiceAccountKey {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    ...sa,
    client_email: email,
    private_key_id: keyId,
    private_key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
  };
}

async function expectError<E extends Error>(
  promise: Promise<unknown>,
  type: new (...args: never[]) => E,
  message?: RegExp,
): Promise<E> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(type);
  if (message) expect((error as Error).message).toMatch(message);
  return error as E;
}

// -- tests -------------------------------------------------------------------------------------

describe('CRC32C', () => {
  it.each([
    ['RFC 3720 "123456789"', Buffer.from('123456789'), 0xe3069283],
    ['32 zero bytes', Buffer.alloc(32), 0x8a9136aa],
    ['32 0xff bytes', Buffer.alloc(32, 0xff), 0x62a8ab43],
    ['bytes 0..31', Buffer.from(Array.from({ length: 32 }, (_, i) => i)), 0x46dd794e],
    ['bytes 31..0', Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i)), 0x113fdb5c],
    ['empty', Buffer.alloc(0), 0],
  ])('%s (provider and server agree with the known vector)', (_label, data, expected) => {
    expect(gcpCrc32c(data)).toBe(expected);
    expect(crc32c(data)).toBe(expected);
  });
});

describe('service-account authentication', () => {
  it('wraps and unwraps with a self-signed JWT, authenticated as the service account', async () => {
    const kek = kekFor();
    kms.counters.reset();
    const plain = dek();
    const wrapped = await kek.wrap(plain, ctx);
    expect(Buffer.from(wrapped).includes(plain)).toBe(false);
    expect(Buffer.from(await kek.unwrap(wrapped, ctx)).equals(plain)).toBe(true);
    expect(kms.counters.principal(sa.client_email)).toBe(2);
    expect(kms.counters.key(key.name)).toBe(2);
    expect(kms.counters.errors()).toBe(0);
    // Over the insecure channel the token is bound to the local endpoint, with no scope: it would be
    // refused by real Google APIs.
    for (const call of kms.counters.calls) {
      expect(call.token).toEqual({ kind: 'self-signed-jwt', audience: `http://127.0.0.1:${kms.port}/` });
    }
  });

  it('maps a service account missing from the policy to KeyAccessDeniedError', async () => {
    const stranger = await kms.createServiceAccount({ accountId: 'stranger' });
    const err = await expectError(kekFor({}, stranger).wrap(dek(), ctx), KeyAccessDeniedError);
    expect(err.message).toContain(key.name);
    expect(err.message).toContain('Encrypt');
    expect(err.message).toContain('PERMISSION_DENIED');
    expect(err.tenantId).toBe(ctx.tenantId);
    expect(kms.counters.principal(stranger.client_email)).toBe(1);
  });

  it('maps a forged key (right email and key id, wrong private key) to KmsCredentialsError', async () => {
    const forged = foreignKey(sa.client_email, sa.private_key_id);
    const err = await expectError(
      kekFor({}, forged).wrap(dek(), ctx),
      KmsCredentialsError,
      /UNAUTHENTICATED/,
    );
    expect(err.message).toContain(sa.client_email);
  });

  it('maps an unknown service account to KmsCredentialsError', async () => {
    const unknown = foreignKey('ghost@test-project.iam.gserviceaccount.com', 'f'.repeat(40));
    await expectError(kekFor({}, unknown).wrap(dek(), ctx), KmsCredentialsError, /UNAUTHENTICATED/);
  });

  it('maps a deleted service-account key to KmsCredentialsError; a new key works', async () => {
    const owner = await kms.createServiceAccount({ accountId: 'rotating-sa' });
    kms.grant(key.name, owner, 'roles/cloudkms.cryptoKeyEncrypterDecrypter');
    await kekFor({}, owner).wrap(dek(), ctx);
    kms.deleteServiceAccountKey(owner.private_key_id);
    await expectError(kekFor({}, owner).wrap(dek(), ctx), KmsCredentialsError);
    const replacement = await kms.createServiceAccountKey(owner.client_email);
    await expect(kekFor({}, replacement).wrap(dek(), ctx)).resolves.toBeInstanceOf(Uint8Array);
  });

  it('accepts the key file as JSON text', async () => {
    const kek = kekFor({ credentials: { type: 'service-account', key: JSON.stringify(sa) } });
    const plain = dek();
    expect(Buffer.from(await kek.unwrap(await kek.wrap(plain, ctx), ctx)).equals(plain)).toBe(true);
  });

  it('uses application default credentials from GOOGLE_APPLICATION_CREDENTIALS', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'byok-adc-'));
    const file = path.join(dir, 'sa.json');
    writeFileSync(file, JSON.stringify(sa));
    process.env.GOOGLE_APPLICATION_CREDENTIALS = file;
    try {
      const kek = kekFor({ credentials: { type: 'default' } });
      kms.counters.reset();
      const plain = dek();
      expect(Buffer.from(await kek.unwrap(await kek.wrap(plain, ctx), ctx)).equals(plain)).toBe(true);
      expect(kms.counters.principal(sa.client_email)).toBe(2);
      expect(kek.toConfig().secret).toBeUndefined();
      expect(kek.toConfig().params.credentialType).toBe('default');
    } finally {
      delete process.env.GOOGLE_APPLICATION_CREDENTIALS;
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('maps unusable application default credentials to KmsCredentialsError without calling the KMS', async () => {
    process.env.GOOGLE_APPLICATION_CREDENTIALS = path.join(
      tmpdir(),
      `missing-${randomBytes(4).toString('hex')}.json`,
    );
    try {
      kms.counters.reset();
      await expectError(
        kekFor({ credentials: { type: 'default' } }).wrap(dek(), ctx),
        KmsCredentialsError,
        /application default credentials/,
      );
      expect(kms.counters.total).toBe(0);
    } finally {
      delete process.env.GOOGLE_APPLICATION_CREDENTIALS;
    }
  });
});

describe('wrapping', () => {
  it('binds the tenant and the DEK id: another tenant or DEK record cannot unwrap', async () => {
    const kek = kekFor({ retries: 0 });
    const wrapped = await kek.wrap(dek(), ctx);
    await expectError(
      kek.unwrap(wrapped, { ...ctx, tenantId: 'tenant-b' }),
      KmsIntegrityError,
      /INVALID_ARGUMENT/,
    );
    await expectError(kek.unwrap(wrapped, { ...ctx, dekId: 'another-dek' }), KmsIntegrityError);
    await expect(kek.unwrap(wrapped, ctx)).resolves.toHaveLength(32);
  });

  it('sends the documented additionalAuthenticatedData bytes', async () => {
    expect(
      Buffer.from(gcpAdditionalAuthenticatedData({ tenantId: 'acmé', dekId: 'd-1' })).toString('utf8'),
    ).toBe('drizzle-byok/v1 tenant=5:acmé dek=3:d-1');
    const plain = dek();
    const wrapped = await kekFor().wrap(plain, ctx);
    const client = new KeyManagementServiceClient(kms.clientOptions());
    try {
      const [res] = await client.decrypt(
        {
          name: key.name,
          ciphertext: wrapped,
          additionalAuthenticatedData: gcpAdditionalAuthenticatedData(ctx),
        },
        kms.callOptions(),
      );
      expect(Buffer.from(res.plaintext as Uint8Array).equals(plain)).toBe(true);
    } finally {
      await client.close();
    }
  });

  it('refuses a DEK wrapped under another key', async () => {
    const other = await freshKey();
    const wrapped = await kekFor().wrap(dek(), ctx);
    await expectError(kekFor({ keyName: other.name, retries: 0 }).unwrap(wrapped, ctx), KmsIntegrityError);
  });

  it('keeps unwrapping after rotation: Encrypt uses the new primary, Decrypt finds the old version', async () => {
    const rotating = await freshKey();
    const kek = kekFor({ keyName: rotating.name });
    const plain = dek();
    const before = await kek.wrap(plain, ctx);
    const v2 = kms.createCryptoKeyVersion(rotating.name, { primary: true });
    expect((await kek.describe()).details?.primaryVersion).toBe(v2);
    const after = await kek.wrap(plain, ctx);
    expect(Buffer.from(await kek.unwrap(before, ctx)).equals(plain)).toBe(true);
    expect(Buffer.from(await kek.unwrap(after, ctx)).equals(plain)).toBe(true);
  });

  it('rejects data keys that are not 32 bytes and empty contexts before calling the KMS', async () => {
    const kek = kekFor();
    kms.counters.reset();
    await expectError(kek.wrap(randomBytes(16), ctx), ByokConfigError);
    await expectError(kek.wrap(dek(), { tenantId: '', dekId: 'x' }), ByokConfigError);
    await expectError(kek.unwrap(new Uint8Array(0), ctx), KmsIntegrityError);
    expect(kms.counters.total).toBe(0);
  });
});

describe('CRC32C integrity', () => {
  const encryptFields: GcpCorruptibleField[] = [
    'ciphertext',
    'ciphertextCrc32c',
    'verifiedPlaintextCrc32c',
    'verifiedAdditionalAuthenticatedDataCrc32c',
    'name',
    'request',
  ];
  it.each(encryptFields)('wrap raises KmsIntegrityError when Encrypt keeps corrupting %s', async (field) => {
    const kek = kekFor({ retries: 1 });
    kms.faults.corrupt(100, field, { methods: ['Encrypt'] });
    kms.counters.reset();
    const err = await expectError(kek.wrap(dek(), ctx), KmsIntegrityError);
    expect(err.message).toContain(key.name);
    expect(err.message).toContain('Encrypt');
    expect(kms.counters.method('Encrypt')).toBe(2);
  });

  it.each(['plaintext', 'plaintextCrc32c', 'request'] as const)(
    'unwrap raises KmsIntegrityError when Decrypt keeps corrupting %s',
    async (field) => {
      const kek = kekFor({ retries: 1 });
      const wrapped = await kek.wrap(dek(), ctx);
      kms.faults.corrupt(100, field, { methods: ['Decrypt'] });
      kms.counters.reset();
      await expectError(kek.unwrap(wrapped, ctx), KmsIntegrityError, /Decrypt/);
      expect(kms.counters.method('Decrypt')).toBe(2);
    },
  );

  it('retries a single corrupted answer and succeeds', async () => {
    const kek = kekFor();
    const plain = dek();
    kms.faults.corrupt(1, 'ciphertext', { methods: ['Encrypt'] });
    kms.faults.corrupt(1, 'plaintext', { methods: ['Decrypt'] });
    kms.counters.reset();
    expect(Buffer.from(await kek.unwrap(await kek.wrap(plain, ctx), ctx)).equals(plain)).toBe(true);
    expect(kms.counters.method('Encrypt')).toBe(2);
    expect(kms.counters.method('Decrypt')).toBe(2);
  });
});

describe('key name validation', () => {
  const base = 'projects/my-project/locations/europe-west1/keyRings/ring-1/cryptoKeys/key_1';
  it.each([
    ['empty', '', /keyName is required/],
    [
      'first keyword',
      'project/my-project/locations/europe-west1/keyRings/r/cryptoKeys/k',
      /segment 1 must be "projects"/,
    ],
    ['project id characters', base.replace('my-project', 'My_Project'), /project "My_Project" is malformed/],
    ['project id length', base.replace('my-project', 'abc'), /project "abc" is malformed/],
    ['locations keyword', base.replace('/locations/', '/location/'), /segment 3 must be "locations"/],
    ['location', base.replace('europe-west1', 'Europe West'), /location "Europe West" is malformed/],
    ['keyRings keyword', base.replace('/keyRings/', '/keyrings/'), /segment 5 must be "keyRings"/],
    ['key ring id characters', base.replace('ring-1', 'ring.1'), /key ring id "ring\.1" is malformed/],
    ['key ring id length', base.replace('ring-1', 'r'.repeat(64)), /key ring id "r{64}" is malformed/],
    ['cryptoKeys keyword', base.replace('/cryptoKeys/', '/keys/'), /segment 7 must be "cryptoKeys"/],
    ['crypto key id', base.replace('key_1', 'key:1'), /crypto key id "key:1" is malformed/],
    ['empty crypto key id', base.replace('key_1', ''), /crypto key id "" is malformed/],
    ['version name', `${base}/cryptoKeyVersions/3`, /names a CryptoKeyVersion; give the CryptoKey name/],
    ['trailing segments', `${base}/extra`, /1 segment\(s\) after the key id/],
    ['truncated', 'projects/my-project/locations/europe-west1', /ends before the "keyRings" segment/],
    ['white space', ` ${base}`, /white space/],
    ['full resource URL', `//cloudkms.googleapis.com/${base}`, /segment 1 must be "projects"/],
  ])('rejects a malformed %s', (_part, name, message) => {
    expect(() => parseGcpKeyName(name)).toThrow(ByokConfigError);
    expect(() => parseGcpKeyName(name)).toThrow(message);
    expect(() => gcpKms({ keyName: name })).toThrow(message);
  });

  it('accepts project numbers, domain-scoped projects and multi-region locations', () => {
    expect(parseGcpKeyName(base)).toEqual({
      projectId: 'my-project',
      location: 'europe-west1',
      keyRing: 'ring-1',
      cryptoKey: 'key_1',
    });
    expect(parseGcpKeyName(base.replace('my-project', '123456789012')).projectId).toBe('123456789012');
    expect(parseGcpKeyName(base.replace('my-project', 'example.com:my-project')).projectId).toBe(
      'example.com:my-project',
    );
    expect(parseGcpKeyName(base.replace('europe-west1', 'nam-eur-asia1')).location).toBe('nam-eur-asia1');
    expect(gcpKms({ keyName: base }).region).toBe('europe-west1');
  });
});

describe('option validation', () => {
  const keyName = 'projects/my-project/locations/global/keyRings/r/cryptoKeys/k';
  it('refuses insecure channels to non-loopback hosts', () => {
    expect(() => gcpKms({ keyName, apiEndpoint: 'kms.example.com', port: 9010, insecure: true })).toThrow(
      /only allowed with a loopback apiEndpoint/,
    );
    expect(() => gcpKms({ keyName, insecure: true })).toThrow(ByokConfigError);
    // look-alikes of loopback names are not loopback
    for (const apiEndpoint of ['localhost.example.com', '127.0.0.1.example.com', 'my-localhost'])
      expect(() => gcpKms({ keyName, apiEndpoint, port: 9010, insecure: true })).toThrow(
        /only allowed with a loopback apiEndpoint/,
      );
    // host names are case-insensitive: the same rule as the other key managers' endpoints
    for (const apiEndpoint of ['LOCALHOST', 'localhost', '127.0.0.1', '::1'])
      expect(() => gcpKms({ keyName, apiEndpoint, port: 9010, insecure: true })).not.toThrow();
  });

  it('wants a bare host as apiEndpoint and sane numbers', () => {
    expect(() => gcpKms({ keyName, apiEndpoint: 'https://cloudkms.googleapis.com' })).toThrow(
      /without scheme/,
    );
    expect(() => gcpKms({ keyName, apiEndpoint: '127.0.0.1:9010' })).toThrow(/without scheme or port/);
    expect(() => gcpKms({ keyName, timeoutMs: 0 })).toThrow(/timeoutMs/);
    expect(() => gcpKms({ keyName, retries: 11 })).toThrow(/retries/);
    expect(() => gcpKms({ keyName, port: 70000 })).toThrow(/port/);
  });

  it('validates the service-account key without echoing it', () => {
    const cases: [unknown, RegExp][] = [
      [{ ...sa, client_email: undefined }, /client_email is missing/],
      [{ ...sa, private_key: undefined }, /private_key is missing/],
      [
        { ...sa, private_key: '-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n' },
        /cannot be parsed/,
      ],
      [{ ...sa, type: 'authorized_user' }, /not "service_account"/],
      [`${JSON.stringify(sa).slice(0, 200)}`, /not valid JSON/],
    ];
    const secretLine = sa.private_key.split('\n')[1]!;
    for (const [k, message] of cases) {
      let error: unknown;
      try {
        gcpKms({ keyName, credentials: { type: 'service-account', key: k as never } });
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(ByokConfigError);
      expect((error as Error).message).toMatch(message);
      expect(`${(error as Error).message} ${inspect(error)}`).not.toContain(secretLine);
    }
  });
});

describe('describe()', () => {
  it('reports purpose, algorithm, protection level, rotation and the primary version state', async () => {
    const k = await freshKey({ protectionLevel: 'HSM', rotationPeriodSeconds: 90 * 86400 });
    const d = await kekFor({ keyName: k.name }).describe();
    expect(d).toMatchObject({
      state: 'enabled',
      providerState: 'ENABLED',
      region: 'global',
      details: {
        keyName: k.name,
        purpose: 'ENCRYPT_DECRYPT',
        algorithm: 'GOOGLE_SYMMETRIC_ENCRYPTION',
        protectionLevel: 'HSM',
        primaryVersion: `${k.name}/cryptoKeyVersions/1`,
        primaryVersionState: 'ENABLED',
        rotationPeriodSeconds: 90 * 86400,
        canWrap: true,
      },
    });
    expect(d.details?.nextRotationTime).toMatch(/^\d{4}-\d\d-\d\dT/);
  });

  it.each([
    ['DISABLED', 'disabled'],
    ['DESTROY_SCHEDULED', 'pending-deletion'],
    ['DESTROYED', 'destroyed'],
  ] as const)('maps a %s primary version to state %s', async (providerState, state) => {
    const k = await freshKey();
    kms.setVersionState(k.name, providerState);
    const d = await kekFor({ keyName: k.name }).describe();
    expect(d.state).toBe(state);
    expect(d.providerState).toBe(providerState);
    expect(d.details?.canWrap).toBe(false);
  });

  it('reports a key of another purpose as unusable', async () => {
    const k = await freshKey({ purpose: 'ASYMMETRIC_SIGN' });
    const d = await kekFor({ keyName: k.name }).describe();
    expect(d).toMatchObject({
      state: 'unknown',
      providerState: 'PURPOSE_ASYMMETRIC_SIGN',
      details: { purpose: 'ASYMMETRIC_SIGN', algorithm: 'EC_SIGN_P256_SHA256', canWrap: false },
    });
  });

  it('needs the viewer role: encrypter/decrypter alone gets KeyAccessDeniedError', async () => {
    const worker = await kms.createServiceAccount({ accountId: 'crypto-only' });
    kms.grant(key.name, worker, 'roles/cloudkms.cryptoKeyEncrypterDecrypter');
    const kek = kekFor({}, worker);
    await kek.wrap(dek(), ctx);
    await expectError(kek.describe(), KeyAccessDeniedError, /GetCryptoKey/);
  });
});

describe('error mapping', () => {
  it('disabled version: wrap and unwrap raise KeyDisabledError until it is enabled again', async () => {
    const k = await freshKey();
    const kek = kekFor({ keyName: k.name });
    const plain = dek();
    const wrapped = await kek.wrap(plain, ctx);
    kms.setVersionState(k.name, 'DISABLED');
    kms.counters.reset();
    const err = await expectError(kek.wrap(dek(), ctx), KeyDisabledError, /FAILED_PRECONDITION/);
    expect(err.message).toContain(k.name);
    await expectError(kek.unwrap(wrapped, ctx), KeyDisabledError, /Decrypt/);
    expect(kms.counters.total).toBe(2); // not retried
    kms.setVersionState(k.name, 'ENABLED');
    expect(Buffer.from(await kek.unwrap(wrapped, ctx)).equals(plain)).toBe(true);
  });

  it('destroyed version: unwrap raises KeyDisabledError; scheduled destruction can be undone over gRPC', async () => {
    const k = await freshKey();
    const kek = kekFor({ keyName: k.name });
    const wrapped = await kek.wrap(dek(), ctx);
    const v1 = `${k.name}/cryptoKeyVersions/1`;
    const client = new KeyManagementServiceClient(kms.clientOptions());
    try {
      const [scheduled] = await client.destroyCryptoKeyVersion({ name: v1 }, kms.callOptions());
      expect(scheduled.state).toBe('DESTROY_SCHEDULED');
      await expectError(kek.unwrap(wrapped, ctx), KeyDisabledError);
      const [restored] = await client.restoreCryptoKeyVersion({ name: v1 }, kms.callOptions());
      expect(restored.state).toBe('DISABLED');
      await client.updateCryptoKeyVersion(
        { cryptoKeyVersion: { name: v1, state: 'ENABLED' }, updateMask: { paths: ['state'] } },
        kms.callOptions(),
      );
      await expect(kek.unwrap(wrapped, ctx)).resolves.toHaveLength(32);
    } finally {
      await client.close();
    }
    kms.setVersionState(v1, 'DESTROYED');
    await expectError(kek.unwrap(wrapped, ctx), KeyDisabledError, /FAILED_PRECONDITION/);
  });

  it('missing key: KekNotFoundError with a key-ring grant, KeyAccessDeniedError without (as IAM does)', async () => {
    const missing = `${key.keyRing}/cryptoKeys/does-not-exist`;
    await expectError(kekFor({ keyName: missing }).wrap(dek(), ctx), KeyAccessDeniedError);
    const auditor = await kms.createServiceAccount({ accountId: 'ring-user' });
    kms.grant(key.keyRing, auditor, 'roles/cloudkms.cryptoKeyEncrypterDecrypter');
    kms.grant(key.keyRing, auditor, 'roles/cloudkms.viewer');
    const err = await expectError(
      kekFor({ keyName: missing }, auditor).wrap(dek(), ctx),
      KekNotFoundError,
      /NOT_FOUND/,
    );
    expect(err.message).toContain(missing);
    await expectError(kekFor({ keyName: missing }, auditor).describe(), KekNotFoundError);
  });

  it('wrong purpose: KeyUsageError', async () => {
    const signing = await freshKey({ purpose: 'ASYMMETRIC_SIGN' });
    await expectError(kekFor({ keyName: signing.name }).wrap(dek(), ctx), KeyUsageError, /ENCRYPT_DECRYPT/);
    const mac = await freshKey({ purpose: 'MAC' });
    await expectError(kekFor({ keyName: mac.name }).unwrap(randomBytes(60), ctx), KeyUsageError);
  });

  it('permission revoked, then restored', async () => {
    const k = await freshKey();
    const kek = kekFor({ keyName: k.name });
    const wrapped = await kek.wrap(dek(), ctx);
    const policy = kms.getPolicy(k.name);
    kms.setPolicy(k.name, { bindings: [] });
    await expectError(kek.wrap(dek(), ctx), KeyAccessDeniedError, /PERMISSION_DENIED/);
    await expectError(kek.unwrap(wrapped, ctx), KeyAccessDeniedError, /Decrypt/);
    kms.setPolicy(k.name, policy);
    await expect(kek.unwrap(wrapped, ctx)).resolves.toHaveLength(32);
    // Encrypt-only access: wrapping works, unwrapping is denied.
    kms.setPolicy(k.name, {
      bindings: [
        { role: 'roles/cloudkms.cryptoKeyEncrypter', members: [`serviceAccount:${sa.client_email}`] },
      ],
    });
    await kek.wrap(dek(), ctx);
    await expectError(kek.unwrap(wrapped, ctx), KeyAccessDeniedError);
  });

  it('RESOURCE_EXHAUSTED is retried, then succeeds', async () => {
    const kek = kekFor({ retries: 2 });
    kms.faults.fail(2, 'RESOURCE_EXHAUSTED', { methods: ['Encrypt'], keys: [key.name] });
    kms.counters.reset();
    await expect(kek.wrap(dek(), ctx)).resolves.toBeInstanceOf(Uint8Array);
    expect(kms.counters.method('Encrypt')).toBe(3);
    expect(kms.counters.errors('RESOURCE_EXHAUSTED')).toBe(2);
  });

  it('RESOURCE_EXHAUSTED beyond the retries: KmsThrottledError', async () => {
    const kek = kekFor({ retries: 2 });
    kms.faults.fail(10, 'RESOURCE_EXHAUSTED');
    kms.counters.reset();
    await expectError(kek.wrap(dek(), ctx), KmsThrottledError, /after 3 attempts: RESOURCE_EXHAUSTED/);
    expect(kms.counters.method('Encrypt')).toBe(3);
  });

  it.each(['UNAVAILABLE', 'INTERNAL', 'DEADLINE_EXCEEDED'] as const)(
    '%s beyond the retries: KmsUnavailableError',
    async (status) => {
      const kek = kekFor({ retries: 1 });
      const wrapped = await kek.wrap(dek(), ctx);
      kms.faults.fail(10, status, { methods: ['Decrypt'] });
      kms.counters.reset();
      await expectError(kek.unwrap(wrapped, ctx), KmsUnavailableError, new RegExp(status));
      expect(kms.counters.method('Decrypt')).toBe(2);
    },
  );

  it('faults can target one principal', async () => {
    const other = await kms.createServiceAccount({ accountId: 'other-app' });
    kms.grant(key.name, other, 'roles/cloudkms.cryptoKeyEncrypterDecrypter');
    kms.faults.fail(10, 'UNAVAILABLE', { principals: [other.client_email] });
    await expectError(kekFor({ retries: 0 }, other).wrap(dek(), ctx), KmsUnavailableError);
    await expect(kekFor({ retries: 0 }).wrap(dek(), ctx)).resolves.toBeInstanceOf(Uint8Array);
  });

  it('a hung server fails within the configured timeout with KmsUnavailableError', async () => {
    const kek = kekFor({ timeoutMs: 400, retries: 0 });
    await kek.wrap(dek(), ctx); // connection and credentials ready
    kms.faults.hang({ methods: ['Encrypt'] });
    const started = Date.now();
    await expectError(kek.wrap(dek(), ctx), KmsUnavailableError, /DEADLINE_EXCEEDED/);
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(350);
    expect(elapsed).toBeLessThan(400 + 1000);
  });

  it('a hung server with retries fails within (retries + 1) * timeout plus backoff', async () => {
    const kek = kekFor({ timeoutMs: 300, retries: 2, retryDelayMs: 20 });
    await kek.wrap(dek(), ctx);
    kms.faults.hang({ keys: [key.name] });
    kms.counters.reset();
    const started = Date.now();
    await expectError(kek.wrap(dek(), ctx), KmsUnavailableError, /after 3 attempts/);
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(3 * 300 - 50);
    expect(elapsed).toBeLessThan(3 * 300 + 20 + 40 + 1000);
    expect(kms.counters.method('Encrypt')).toBe(3);
  });

  it('latency under the timeout is only slower', async () => {
    const kek = kekFor({ timeoutMs: 2000 });
    await kek.wrap(dek(), ctx);
    kms.faults.latency(150, { methods: ['Encrypt'] });
    const started = Date.now();
    await kek.wrap(dek(), ctx);
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
  });

  it('nothing listening: KmsUnavailableError', async () => {
    const probe = net.createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const port = (probe.address() as AddressInfo).port;
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    await expectError(
      kekFor({ port, retries: 1, timeoutMs: 1000 }).wrap(dek(), ctx),
      KmsUnavailableError,
      /UNAVAILABLE/,
    );
  });
});

describe('configuration and redaction', () => {
  it('toConfig() holds everything to rebuild; gcpKekFactory rebuilds a working KEK', async () => {
    const kek = kekFor({ timeoutMs: 1500, retries: 1 });
    const plain = dek();
    const wrapped = await kek.wrap(plain, ctx);
    const config = kek.toConfig();
    expect(config).toEqual({
      kind: 'gcp-kms',
      params: {
        keyName: key.name,
        apiEndpoint: '127.0.0.1',
        port: kms.port,
        insecure: true,
        timeoutMs: 1500,
        retries: 1,
        retryDelayMs: 10,
        credentialType: 'service-account',
        clientEmail: sa.client_email,
      },
      secret: { serviceAccountKey: { ...sa } },
    });
    expect(JSON.stringify(config.params)).not.toContain('PRIVATE KEY');
    const stored = JSON.parse(JSON.stringify(config));
    const rebuilt = await gcpKekFactory(stored);
    keks.push(rebuilt as never);
    expect(rebuilt.keyRef).toBe(key.name);
    expect(rebuilt.region).toBe('global');
    expect(Buffer.from(await rebuilt.unwrap(wrapped, ctx)).equals(plain)).toBe(true);
  });

  it('gcpKekFactory refuses another kind and a service-account config without its secret', () => {
    const config = kekFor().toConfig();
    expect(() => gcpKekFactory({ ...config, kind: 'aws-kms' })).toThrow(ByokConfigError);
    expect(() => gcpKekFactory({ kind: 'gcp-kms', params: config.params })).toThrow(/no secret part/);
  });

  it('never shows the private key in inspect, JSON or errors', async () => {
    const kek = kekFor({ retries: 0 });
    const secretLine = sa.private_key.split('\n')[1]!;
    expect(inspect(kek, { depth: 10, showHidden: true })).not.toContain(secretLine);
    expect(inspect(kek)).toContain(sa.client_email);
    expect(JSON.stringify(kek)).not.toContain(secretLine);
    expect(JSON.parse(JSON.stringify(kek))).toEqual({
      kind: 'gcp-kms',
      keyRef: key.name,
      region: 'global',
      credentials: `service account ${sa.client_email}`,
    });
    kms.faults.fail(1, 'UNAVAILABLE');
    const err = await expectError(kek.wrap(dek(), ctx), KmsUnavailableError);
    const shown = `${String(err)} ${inspect(err, { depth: 10 })} ${JSON.stringify(err)}`;
    expect(shown).not.toContain(secretLine);
    expect(shown).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\./); // no bearer JWT
  });

  it('uses an injected client (structurally typed) with the configured deadline and no gax retries', async () => {
    const real = new KeyManagementServiceClient(kms.clientOptions(sa));
    const seen: unknown[] = [];
    const auth = kms.callOptions(sa);
    const typed: GcpKmsClientLike = real; // the real client satisfies the structural type
    const client: GcpKmsClientLike = {
      encrypt: (req, options) => {
        seen.push(options);
        return typed.encrypt(req, { ...options, ...auth });
      },
      decrypt: (req, options) => typed.decrypt(req, { ...options, ...auth }),
      getCryptoKey: (req, options) => typed.getCryptoKey(req, { ...options, ...auth }),
    };
    const kek = gcpKms({ keyName: key.name, client, timeoutMs: 1234 });
    const plain = dek();
    expect(Buffer.from(await kek.unwrap(await kek.wrap(plain, ctx), ctx)).equals(plain)).toBe(true);
    expect(seen).toEqual([{ timeout: 1234, retry: null }]);
    await kek.close(); // does not close the injected client
    await expect(typed.getCryptoKey({ name: key.name }, auth)).resolves.toBeDefined();
    await real.close();
    await expectError(kek.wrap(plain, ctx), ByokConfigError, /closed/);
  });
});

describe('with a test double', () => {
  const keyName = 'projects/my-project/locations/us-east1/keyRings/r/cryptoKeys/k';
  const unused = () => Promise.reject(new Error('not called'));

  it('refuses an unwrapped value that is not a 32-byte data key (checksum correct)', async () => {
    const short = Buffer.alloc(16, 7);
    const kek = gcpKms({
      keyName,
      client: {
        encrypt: unused,
        getCryptoKey: unused,
        decrypt: async () => [{ plaintext: short, plaintextCrc32c: { value: String(gcpCrc32c(short)) } }],
      },
    });
    await expectError(kek.unwrap(randomBytes(60), ctx), KmsIntegrityError, /not a 32-byte data key/);
  });

  it('reads numeric enums (REST fallback clients)', async () => {
    const kek = gcpKms({
      keyName,
      client: {
        encrypt: unused,
        decrypt: unused,
        getCryptoKey: async () => [
          {
            name: keyName,
            purpose: 1,
            primary: { name: `${keyName}/cryptoKeyVersions/4`, state: 2, algorithm: 1, protectionLevel: 2 },
            rotationPeriod: { seconds: '7776000' },
          },
        ],
      },
    });
    expect(await kek.describe()).toMatchObject({
      state: 'disabled',
      providerState: 'DISABLED',
      region: 'us-east1',
      details: {
        purpose: 'ENCRYPT_DECRYPT',
        algorithm: 'GOOGLE_SYMMETRIC_ENCRYPTION',
        protectionLevel: 'HSM',
        primaryVersionState: 'DISABLED',
        rotationPeriodSeconds: 7776000,
        canWrap: false,
      },
    });
  });

  it('scrubs tokens and keys from error causes', async () => {
    const leaky = Object.assign(new Error('x'), {
      code: 16,
      details: `bad token Bearer eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln and ${sa.private_key}`,
    });
    const kek = gcpKms({
      keyName,
      client: { encrypt: () => Promise.reject(leaky), decrypt: unused, getCryptoKey: unused },
    });
    const err = await expectError(kek.wrap(dek(), ctx), KmsCredentialsError);
    const shown = inspect(err, { depth: 10 });
    expect(shown).not.toContain('eyJhbGciOiJSUzI1NiJ9');
    expect(shown).not.toContain(sa.private_key.split('\n')[1]!);
    expect(String((err.cause as Error).message)).toContain('UNAUTHENTICATED');
  });
});

describe('local server', () => {
  it('serves the admin methods to the real client', async () => {
    const client = new KeyManagementServiceClient(kms.clientOptions());
    const opts = kms.callOptions();
    try {
      const parent = `projects/${kms.projectId}/locations/${kms.location}`;
      const [ring] = await client.createKeyRing({ parent, keyRingId: 'grpc-ring', keyRing: {} }, opts);
      const [created] = await client.createCryptoKey(
        {
          parent: ring.name!,
          cryptoKeyId: 'k',
          cryptoKey: { purpose: 'ENCRYPT_DECRYPT', rotationPeriod: { seconds: 86400 * 30 } },
        },
        opts,
      );
      expect(created.primary?.name).toBe(`${ring.name}/cryptoKeys/k/cryptoKeyVersions/1`);
      const [v2] = await client.createCryptoKeyVersion({ parent: created.name!, cryptoKeyVersion: {} }, opts);
      const [updated] = await client.updateCryptoKeyPrimaryVersion(
        { name: created.name!, cryptoKeyVersionId: '2' },
        opts,
      );
      expect(updated.primary?.name).toBe(v2.name);
      const [version] = await client.getCryptoKeyVersion({ name: v2.name! }, opts);
      expect(version.state).toBe('ENABLED');
      const [list] = await client.listCryptoKeys({ parent: ring.name! }, opts);
      expect(list.map((k) => k.name)).toEqual([created.name]);
      await expect(
        client.createKeyRing({ parent, keyRingId: 'grpc-ring', keyRing: {} }, opts),
      ).rejects.toMatchObject({ code: 6 });
      await expect(
        client.decrypt({ name: v2.name!, ciphertext: Buffer.from('x') }, opts),
      ).rejects.toMatchObject({ code: 3 });
      await expect(
        client.encrypt(
          { name: created.name!, plaintext: Buffer.from('abc'), plaintextCrc32c: { value: 1 } },
          opts,
        ),
      ).rejects.toMatchObject({ code: 3, details: expect.stringContaining('plaintext_crc32c') });
    } finally {
      await client.close();
    }
  });

  it('needs a bearer token; accepts opaque access tokens until they expire', async () => {
    const client = new KeyManagementServiceClient(kms.clientOptions());
    try {
      await expect(client.getCryptoKey({ name: key.name })).rejects.toMatchObject({ code: 16 });
      const bearer = (token: string) => ({ otherArgs: { headers: { authorization: `Bearer ${token}` } } });
      await expect(
        client.getCryptoKey({ name: key.name }, bearer(kms.issueAccessToken(sa))),
      ).resolves.toBeDefined();
      const expired = kms.issueAccessToken(sa, { ttlSeconds: -1 });
      await expect(client.getCryptoKey({ name: key.name }, bearer(expired))).rejects.toMatchObject({
        code: 16,
      });
      await expect(client.getCryptoKey({ name: key.name }, bearer('not-a-token'))).rejects.toMatchObject({
        code: 16,
      });
    } finally {
      await client.close();
    }
  });

  it('close() ends hung calls at once', async () => {
    const local = await startGcpKmsServer();
    const localSa = await local.createServiceAccount();
    const k = local.createCryptoKey();
    local.grant(k.name, localSa, 'roles/cloudkms.cryptoKeyEncrypterDecrypter');
    const kek = gcpKms({
      keyName: k.name,
      credentials: { type: 'service-account', key: { ...localSa } },
      apiEndpoint: local.apiEndpoint,
      port: local.port,
      insecure: true,
      timeoutMs: 10_000,
      retries: 0,
    });
    keks.push(kek);
    local.faults.hang();
    const pending = kek.wrap(dek(), ctx).then(
      () => undefined,
      (e: unknown) => e,
    );
    await expect.poll(() => local.faults.hungCalls).toBe(1);
    const started = Date.now();
    await local.close();
    expect(await pending).toBeInstanceOf(KmsUnavailableError);
    expect(Date.now() - started).toBeLessThan(2000);
  });
});

describe('network isolation', () => {
  it('the guard blocks and records connections beyond loopback', async () => {
    const before = outbound.length;
    await fetch('https://oauth2.googleapis.com/token').catch(() => undefined);
    expect(outbound.slice(before)).toEqual(['oauth2.googleapis.com']);
    outbound.splice(before);
  });

  it('no call left 127.0.0.1 and the metadata server was never asked', () => {
    expect(outbound).toEqual([]);
    expect(metadataHits).toBe(0);
    expect(kms.counters.total).toBeGreaterThan(0);
  });
});
