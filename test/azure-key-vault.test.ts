/**
 * `drizzle-byok/azure` against the local Key Vault and Entra endpoints (`drizzle-byok/testing/azure`)
 * through the real `@azure/keyvault-keys` and `@azure/identity` clients, over HTTPS: the binding,
 * every credential kind, rotation, and each failure as its typed error. Refusals first.
 */
import { execFileSync } from 'node:child_process';
import { createPrivateKey, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { ClientCertificateCredential, ClientSecretCredential } from '@azure/identity';
import { KeyClient } from '@azure/keyvault-keys';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
} from '../src/index.ts';
import { mapAzureError } from '../src/kms/azure/errors.ts';
import { selfSignedCertificate } from '../src/testing/tls.ts';
import { type AzureCredential, azureKekFactory, azureKeyVault } from '../src/kms/azure/index.ts';
import {
  type AzureAppRegistration,
  type AzureKeyVaultServer,
  startAzureKeyVaultServer,
} from '../src/testing/azure/index.ts';

let az: AzureKeyVaultServer;
let app: AzureAppRegistration;
let dir: string;
beforeAll(async () => {
  az = await startAzureKeyVaultServer();
  app = az.addApp();
  dir = mkdtempSync(join(tmpdir(), 'byok-azure-'));
});
afterAll(async () => {
  await az?.close();
  rmSync(dir, { recursive: true, force: true });
});

const ctx = { tenantId: 'acme', dekId: '0b5e7c5e-0000-4000-8000-000000000001' };
const kekFor = (keyId: string, credential: AzureCredential = { type: 'client-secret', ...app }, extra = {}) =>
  azureKeyVault({
    keyId,
    credential,
    authorityHost: az.url,
    caCertificate: az.caCertificate,
    retries: 0,
    ...extra,
  });
function newKey(o?: Parameters<AzureKeyVaultServer['createKey']>[1]): { id: string; name: string } {
  const id = az.createKey(undefined, o);
  const name = id.slice(id.lastIndexOf('/') + 1);
  az.grant(name, app.clientId);
  return { id, name };
}

describe('Azure Key Vault KEK: refusals first', () => {
  it('a wrapped key does not unwrap for another tenant or data key, nor as another key version', async () => {
    const { id } = newKey();
    const kek = kekFor(id);
    const dek = randomBytes(32);
    const { wrapped, wrappedBy } = await kek.wrapIdentified(dek, ctx);
    expect(wrappedBy.startsWith(`${id}/`)).toBe(true);
    await fc.assert(
      fc.asyncProperty(
        fc.record({ tenantId: fc.string({ minLength: 1 }), dekId: fc.string({ minLength: 1 }) }),
        async (other) => {
          fc.pre(other.tenantId !== ctx.tenantId || other.dekId !== ctx.dekId);
          await expect(kek.unwrap(wrapped, other, wrappedBy)).rejects.toBeInstanceOf(KmsIntegrityError);
        },
      ),
      { numRuns: 8 },
    );
    const flipped = Uint8Array.from(wrapped);
    flipped[10]! ^= 1;
    await expect(kek.unwrap(flipped, ctx, wrappedBy)).rejects.toBeInstanceOf(KmsIntegrityError);
    await expect(
      kek.unwrap(wrapped, ctx, 'https://127.0.0.1:1/keys/other/00000000000000000000000000000000'),
    ).rejects.toBeInstanceOf(KmsIntegrityError);
    expect(Buffer.from(await kek.unwrap(wrapped, ctx, wrappedBy))).toEqual(dek);
  });

  it('each failure is its own typed error, naming the key and never the secret', async () => {
    const ok = newKey();
    const { wrapped, wrappedBy } = await kekFor(ok.id).wrapIdentified(randomBytes(32), ctx);
    const disabled = newKey();
    az.setEnabled(disabled.name, false);
    const expired = newKey({ expiresOn: new Date(Date.now() - 60_000) });
    const ungranted = az.createKey();
    // a role assignment on the whole vault: a missing key is then a 404, not a 403
    const reader = az.addApp();
    az.grant('*', reader.clientId, ['get']);
    const cases: [string, () => Promise<unknown>, string][] = [
      [
        'not found',
        () => kekFor(az.keyId('missing'), { type: 'client-secret', ...reader }).describe(),
        KekNotFoundError.code,
      ],
      ['disabled', () => kekFor(disabled.id).wrap(randomBytes(32), ctx), KeyDisabledError.code],
      ['expired', () => kekFor(expired.id).wrap(randomBytes(32), ctx), KeyDisabledError.code],
      ['no role assignment', () => kekFor(ungranted).wrap(randomBytes(32), ctx), KeyAccessDeniedError.code],
      [
        'wrong client secret',
        () =>
          kekFor(ok.id, { type: 'client-secret', ...app, clientSecret: 'wrong-s3cret' }).unwrap(
            wrapped,
            ctx,
            wrappedBy,
          ),
        KmsCredentialsError.code,
      ],
      [
        'unreachable',
        () =>
          azureKeyVault({
            keyId: 'https://127.0.0.1:9/keys/k',
            credential: { type: 'client-secret', ...app },
            authorityHost: az.url,
            caCertificate: az.caCertificate,
            retries: 0,
            timeoutMs: 500,
          }).unwrap(wrapped, ctx),
        KmsUnavailableError.code,
      ],
    ];
    for (const [what, run, code] of cases) {
      const err = (await run().catch((x) => x)) as Error & { code?: string };
      expect(err?.code, `${what}: ${err?.message}`).toBe(code);
      expect(`${err.message} ${inspect(err)}`, what).not.toContain(app.clientSecret);
      expect(`${err.message} ${inspect(err)}`, what).not.toContain('wrong-s3cret');
    }
    const d = await kekFor(disabled.id).describe();
    expect(d).toMatchObject({ state: 'disabled', providerState: 'Disabled' });
    expect((await kekFor(expired.id).describe()).state).toBe('disabled');
    const signOnly = newKey({ keyOps: ['sign', 'verify'] });
    expect((await kekFor(signOnly.id).describe()).details?.canWrap).toBe(false);
    // the key refuses the operation (KeyOperationForbidden): a usage error, not a revoked grant
    await expect(kekFor(signOnly.id).wrap(randomBytes(32), ctx)).rejects.toBeInstanceOf(KeyUsageError);
  });

  it('throttling and outages: retried, then KmsThrottledError / KmsUnavailableError', async () => {
    const { id } = newKey();
    const kek = kekFor(id, undefined, { retries: 2 });
    const { wrapped, wrappedBy } = await kek.wrapIdentified(randomBytes(32), ctx);
    await kek.unwrap(wrapped, ctx, wrappedBy); // the version's client answers the challenge once
    az.counters.reset();
    az.faults.fail(2, 429, { operations: ['unwrapKey'] });
    await kek.unwrap(wrapped, ctx, wrappedBy);
    expect(az.counters.operation('unwrapKey')).toBe(3);
    az.faults.fail(3, 429, { operations: ['unwrapKey'] });
    await expect(kek.unwrap(wrapped, ctx, wrappedBy)).rejects.toBeInstanceOf(KmsThrottledError);
    az.faults.fail(3, 503, { operations: ['unwrapKey'] });
    await expect(kek.unwrap(wrapped, ctx, wrappedBy)).rejects.toBeInstanceOf(KmsUnavailableError);
    az.faults.clear();
  });

  it('options are checked without echoing secrets', () => {
    const bad = (o: Record<string, unknown>) => {
      try {
        azureKeyVault({
          keyId: 'https://acme.vault.azure.net/keys/k',
          credential: { type: 'default' },
          ...o,
        } as never);
      } catch (e) {
        return e as ByokConfigError;
      }
      throw new Error('accepted');
    };
    expect(bad({ keyId: 'http://acme.vault.azure.net/keys/k' })).toBeInstanceOf(ByokConfigError);
    expect(bad({ keyId: 'https://example.com/keys/k' }).message).toMatch(/Key Vault or Managed HSM host/);
    expect(bad({ keyId: `https://acme.vault.azure.net/keys/k/${'a'.repeat(32)}` }).message).toMatch(
      /must not name a version/,
    );
    expect(bad({ algorithm: 'A256KW' }).message).toMatch(/Managed HSM/);
    expect(
      bad({
        credential: {
          type: 'client-secret',
          tenantId: 't.example.com',
          clientId: 'not-a-guid',
          clientSecret: 'xyz-s3cret',
        },
      }).message,
    ).not.toContain('xyz-s3cret');
  });
});

describe('Azure Key Vault KEK: credentials, rotation, configuration', () => {
  it('client certificate and workload identity federation both wrap and unwrap', async () => {
    const { id } = newKey();
    // a certificate credential: an RSA certificate registered for the app
    const keyFile = join(dir, 'app-key.pem');
    const certFile = join(dir, 'app-cert.pem');
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-keyout',
        keyFile,
        '-out',
        certFile,
        '-days',
        '1',
        '-subj',
        '/CN=platform',
      ],
      { stdio: 'ignore' },
    );
    const certPem = readFileSync(certFile, 'utf8');
    az.addAppCertificate(app.clientId, certPem);
    const pem = `${readFileSync(keyFile, 'utf8')}${certPem}`;
    // workload identity: a federated token of a trusted issuer, in a file
    const issuer = 'https://oidc.aks.example/tenant';
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    az.addFederatedCredential(app.clientId, {
      issuer,
      subject: 'system:serviceaccount:prod:app',
      publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }) as string,
    });
    const enc = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const now = Math.floor(Date.now() / 1000);
    const head = enc({ alg: 'RS256', typ: 'JWT' });
    const body = enc({
      iss: issuer,
      sub: 'system:serviceaccount:prod:app',
      aud: 'api://AzureADTokenExchange',
      iat: now,
      exp: now + 600,
    });
    const jwt = `${head}.${body}.${sign('sha256', Buffer.from(`${head}.${body}`), createPrivateKey(privateKey.export({ type: 'pkcs8', format: 'pem' }))).toString('base64url')}`;
    const tokenFile = join(dir, 'federated-token');
    writeFileSync(tokenFile, jwt);
    for (const credential of [
      { type: 'client-certificate', tenantId: app.tenantId, clientId: app.clientId, certificatePem: pem },
      { type: 'workload-identity', tenantId: app.tenantId, clientId: app.clientId, tokenFilePath: tokenFile },
    ] as AzureCredential[]) {
      const kek = kekFor(id, credential);
      const dek = randomBytes(32);
      const w = await kek.wrapIdentified(dek, ctx);
      expect(Buffer.from(await kek.unwrap(w.wrapped, ctx, w.wrappedBy)), credential.type).toEqual(dek);
      const cfg = kek.toConfig();
      expect(JSON.stringify(cfg.params)).not.toContain('PRIVATE KEY');
      expect(Buffer.from(await (await azureKekFactory(cfg)).unwrap(w.wrapped, ctx, w.wrappedBy))).toEqual(
        dek,
      );
    }
    // a federated token for another subject is refused
    const wrong = enc({
      iss: issuer,
      sub: 'system:serviceaccount:prod:intruder',
      aud: 'api://AzureADTokenExchange',
      iat: now,
      exp: now + 600,
    });
    writeFileSync(
      tokenFile,
      `${head}.${wrong}.${sign('sha256', Buffer.from(`${head}.${wrong}`), privateKey).toString('base64url')}`,
    );
    await expect(
      kekFor(id, {
        type: 'workload-identity',
        tenantId: app.tenantId,
        clientId: app.clientId,
        tokenFilePath: tokenFile,
      }).wrap(randomBytes(32), ctx),
    ).rejects.toBeInstanceOf(KmsCredentialsError);
  });

  it('an EC (P-256) certificate: @azure/identity cannot sign with it, so the KEK refuses it up front', async () => {
    // The local servers' own certificate maker: an EC P-256 key and a self-signed certificate.
    const { certPem, keyPem } = selfSignedCertificate('platform-ec');
    const pem = `${keyPem}${certPem}`;
    az.addAppCertificate(app.clientId, certPem);
    // the SDK itself: no token from an EC certificate (client assertions are RS256 / PS256)
    const sdk = new ClientCertificateCredential(
      app.tenantId,
      app.clientId,
      { certificate: pem },
      { authorityHost: az.url, disableInstanceDiscovery: true, tlsOptions: { ca: az.caCertificate } },
    );
    az.counters.reset();
    const sdkErr = (await sdk.getToken('https://vault.azure.net/.default').catch((x) => x)) as Error;
    expect(sdkErr).toBeInstanceOf(Error);
    expect(az.counters.calls.filter((c) => c.operation === 'token' && c.status === 200)).toHaveLength(0);
    const refused = (() => {
      try {
        kekFor(az.keyId('k'), {
          type: 'client-certificate',
          tenantId: app.tenantId,
          clientId: app.clientId,
          certificatePem: pem,
        });
      } catch (e) {
        return e as ByokConfigError;
      }
      throw new Error('accepted');
    })();
    expect(refused).toBeInstanceOf(ByokConfigError);
    expect(refused.message).toMatch(/private key is ec; an RSA key is needed/);
    expect(`${refused.message} ${inspect(refused)}`).not.toContain('PRIVATE KEY');
  });

  it('managed identity (App Service protocol: IDENTITY_ENDPOINT / IDENTITY_HEADER) wraps and unwraps', async () => {
    const mi = az.addManagedIdentity();
    const { id, name } = newKey();
    az.grant(name, mi.clientId);
    const saved = {
      IDENTITY_ENDPOINT: process.env.IDENTITY_ENDPOINT,
      IDENTITY_HEADER: process.env.IDENTITY_HEADER,
    };
    Object.assign(process.env, az.managedIdentityEnv);
    try {
      const kek = kekFor(id, { type: 'managed-identity' });
      const dek = randomBytes(32);
      const w = await kek.wrapIdentified(dek, ctx);
      expect(Buffer.from(await kek.unwrap(w.wrapped, ctx, w.wrappedBy))).toEqual(dek);
      expect(az.counters.calls.some((c) => c.operation === 'managed-identity' && c.status === 200)).toBe(
        true,
      );
      az.revoke(name, mi.clientId);
      await expect(kek.unwrap(w.wrapped, ctx, w.wrappedBy)).rejects.toBeInstanceOf(KeyAccessDeniedError);
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  it('rotation: wraps record their version, old wraps unwrap by it, describe names the new current version', async () => {
    const { id, name } = newKey();
    const kek = kekFor(id);
    const dek = randomBytes(32);
    const v1 = await kek.wrapIdentified(dek, ctx);
    const current = az.rotateKey(name);
    expect((await kek.describe()).currentKeyId).toBe(current);
    expect(Buffer.from(await kek.unwrap(v1.wrapped, ctx, v1.wrappedBy))).toEqual(dek);
    const v2 = await kek.wrapIdentified(dek, ctx);
    expect(v2.wrappedBy).toBe(current);
    az.setEnabled(name, false, az.versions(name)[0]);
    await expect(kek.unwrap(v1.wrapped, ctx, v1.wrappedBy)).rejects.toBeInstanceOf(KeyDisabledError);
    expect(Buffer.from(await kek.unwrap(v2.wrapped, ctx, v2.wrappedBy))).toEqual(dek);
  });

  it('request cost: one HTTP call per wrap and per unwrap, no key read; a rotation is followed without one', async () => {
    const { id, name } = newKey();
    const kek = kekFor(id);
    const dek = randomBytes(32);
    await kek.wrapIdentified(dek, ctx); // the token and the challenge, once
    az.counters.reset();
    const wraps = [];
    for (let i = 0; i < 5; i++) wraps.push(await kek.wrapIdentified(dek, ctx));
    for (const w of wraps) expect(Buffer.from(await kek.unwrap(w.wrapped, ctx, w.wrappedBy))).toEqual(dek);
    // Each key version's client answers Key Vault's authentication challenge (401) once; the
    // credential's token is cached, so no token request follows it.
    expect(az.counters.calls.map((c) => `${c.operation} ${c.status}`)).toEqual([
      ...Array(5).fill('wrapKey 200'),
      'unwrapKey 401',
      ...Array(5).fill('unwrapKey 200'),
    ]);
    const next = az.rotateKey(name);
    az.counters.reset();
    const after = await kek.wrapIdentified(dek, ctx);
    expect(after.wrappedBy).toBe(next);
    expect(Buffer.from(await kek.unwrap(wraps[0]!.wrapped, ctx, wraps[0]!.wrappedBy))).toEqual(dek);
    expect(Buffer.from(await kek.unwrap(after.wrapped, ctx, after.wrappedBy))).toEqual(dek);
    expect(az.counters.calls.map((c) => `${c.operation} ${c.status}`)).toEqual([
      'wrapKey 200',
      'unwrapKey 200',
      'unwrapKey 401',
      'unwrapKey 200',
    ]);
  });

  it('Managed HSM AES key wrap (A256KW on an oct-HSM key)', async () => {
    const { id } = newKey({ kty: 'oct-HSM' });
    const kek = kekFor(id, undefined, { algorithm: 'A256KW' });
    expect((await kek.describe()).details?.canWrap).toBe(true);
    const dek = randomBytes(32);
    const w = await kek.wrapIdentified(dek, ctx);
    expect(Buffer.from(await kek.unwrap(w.wrapped, ctx, w.wrappedBy))).toEqual(dek);
    await expect(kek.unwrap(w.wrapped, { ...ctx, dekId: 'other' }, w.wrappedBy)).rejects.toBeInstanceOf(
      KmsIntegrityError,
    );
  });

  it('configuration keeps secrets out of params, JSON and inspect', () => {
    const kek = kekFor(az.keyId('k'));
    const cfg = kek.toConfig();
    expect(cfg.secret).toEqual({ clientSecret: app.clientSecret });
    for (const shown of [JSON.stringify(cfg.params), JSON.stringify(kek), inspect(kek)])
      expect(shown).not.toContain(app.clientSecret);
  });
});

/** The tenant's own `KeyClient` (the real SDK) as a principal of the local vault. */
function keyClientAs(who: AzureAppRegistration): KeyClient {
  const tls = { tlsOptions: { ca: az.caCertificate }, retryOptions: { maxRetries: 0 } };
  return new KeyClient(
    az.url,
    new ClientSecretCredential(who.tenantId, who.clientId, who.clientSecret, {
      ...tls,
      authorityHost: az.url,
      disableInstanceDiscovery: true,
    }),
    { ...tls, disableChallengeResourceVerification: true },
  );
}

describe('Azure Key Vault KEK: the tenant manages its key over the wire (KeyClient)', () => {
  it('create, rotate, disable and expire through KeyClient; the KEK follows each change', async () => {
    const admin = az.addApp();
    az.grant('*', admin.clientId, 'Key Vault Crypto Officer');
    const kc = keyClientAs(admin);
    const name = `wire-${randomBytes(3).toString('hex')}`;
    az.counters.reset();
    const created = await kc.createRsaKey(name, { keySize: 3072, keyOps: ['wrapKey', 'unwrapKey'] });
    expect(created).toMatchObject({ name, keyType: 'RSA', keyOperations: ['wrapKey', 'unwrapKey'] });
    expect(created.key?.n?.length).toBe(384);
    expect(created.properties.enabled).toBe(true);
    expect(az.counters.operation('createKey')).toBeGreaterThanOrEqual(1);
    expect(az.counters.calls.filter((c) => c.operation === 'createKey' && c.status === 200)).toHaveLength(1);
    // the platform's role assignment on the key (Azure RBAC, outside the vault's data plane)
    az.grant(name, app.clientId);
    const kek = kekFor(az.keyId(name));
    const dek = randomBytes(32);
    const v1 = await kek.wrapIdentified(dek, ctx);
    expect(v1.wrappedBy).toBe(created.id);

    const rotated = await kc.rotateKey(name);
    expect(rotated.properties.version).not.toBe(created.properties.version);
    expect(rotated.keyOperations).toEqual(['wrapKey', 'unwrapKey']);
    expect((await kek.describe()).currentKeyId).toBe(rotated.id);
    const v2 = await kek.wrapIdentified(dek, ctx);
    expect(v2.wrappedBy).toBe(rotated.id);

    const off = await kc.updateKeyProperties(name, created.properties.version!, { enabled: false });
    expect(off.properties.enabled).toBe(false);
    await expect(kek.unwrap(v1.wrapped, ctx, v1.wrappedBy)).rejects.toBeInstanceOf(KeyDisabledError);
    expect(Buffer.from(await kek.unwrap(v2.wrapped, ctx, v2.wrappedBy))).toEqual(dek);
    await kc.updateKeyProperties(name, created.properties.version!, { enabled: true });
    expect(Buffer.from(await kek.unwrap(v1.wrapped, ctx, v1.wrappedBy))).toEqual(dek);

    // without a version: the current one
    const past = new Date(Date.now() - 60_000);
    const expired = await kc.updateKeyProperties(name, { expiresOn: past });
    expect(expired.properties.version).toBe(rotated.properties.version);
    expect(expired.properties.expiresOn?.getTime()).toBe(Math.floor(past.getTime() / 1000) * 1000);
    await expect(kek.wrap(dek, ctx)).rejects.toBeInstanceOf(KeyDisabledError);
    expect((await kek.describe()).state).toBe('disabled');
    expect((await kc.getKey(name)).properties.expiresOn?.getTime()).toBe(
      expired.properties.expiresOn?.getTime(),
    );
    expect(az.counters.calls.filter((c) => c.operation === 'updateKey' && c.status === 200)).toHaveLength(3);
    expect(az.counters.calls.filter((c) => c.operation === 'rotateKey' && c.status === 200)).toHaveLength(1);
    // every keys call past the challenge is recorded with the principal of its token
    const keyCalls = az.counters.calls.filter((c) => c.key === name && c.status !== 401);
    expect(keyCalls.every((c) => c.principal === admin.clientId || c.principal === app.clientId)).toBe(true);

    // create on an existing name makes a new version; an unknown key type is a 400
    const again = await kc.createKey(name, 'RSA');
    expect(again.properties.version).not.toBe(rotated.properties.version);
    expect(again.keyOperations).toEqual(['encrypt', 'decrypt', 'sign', 'verify', 'wrapKey', 'unwrapKey']);
    expect(az.versions(name)).toHaveLength(3);
    const badType = (await kc.createKey(`${name}-ec`, 'EC').catch((x) => x)) as { statusCode?: number };
    expect(badType.statusCode).toBe(400);
  });

  it('key management faults and counters: a 503 on rotate is seen by KeyClient, then it succeeds', async () => {
    const admin = az.addApp();
    az.grant('*', admin.clientId, 'Key Vault Crypto Officer');
    const kc = keyClientAs(admin);
    const name = `flt-${randomBytes(3).toString('hex')}`;
    await kc.createKey(name, 'RSA');
    az.faults.fail(1, 503, { operations: ['rotateKey'], keys: [name] });
    const err = (await kc.rotateKey(name).catch((x) => x)) as { statusCode?: number };
    expect(err.statusCode).toBe(503);
    await kc.rotateKey(name);
    expect(az.versions(name)).toHaveLength(2);
    az.faults.clear();
  });

  it('a principal without the permission gets 403 ForbiddenByRbac, mapped to KeyAccessDeniedError', async () => {
    const admin = az.addApp();
    az.grant('*', admin.clientId, 'Key Vault Crypto Officer');
    const name = `rbac-${randomBytes(3).toString('hex')}`;
    await keyClientAs(admin).createKey(name, 'RSA');
    // the platform: Key Vault Crypto Service Encryption User on the key, nothing more
    const platform = az.addApp();
    az.grant(name, platform.clientId);
    const kc = keyClientAs(platform);
    expect((await kc.getKey(name)).name).toBe(name);
    const refusals: [string, 'createKey' | 'rotateKey' | 'updateKey', () => Promise<unknown>][] = [
      ['create', 'createKey', () => kc.createKey(`${name}-new`, 'RSA')],
      ['rotate', 'rotateKey', () => kc.rotateKey(name)],
      ['update', 'updateKey', () => kc.updateKeyProperties(name, { enabled: false })],
    ];
    for (const [what, op, run] of refusals) {
      const e = (await run().catch((x) => x)) as {
        statusCode?: number;
        code?: string;
        details?: { error?: { innerError?: { code?: string } } };
      };
      expect(e.statusCode, what).toBe(403);
      expect(e.code, what).toBe('Forbidden');
      expect(e.details?.error?.innerError?.code, what).toBe('ForbiddenByRbac');
      const mapped = mapAzureError(e, op, az.keyId(name), 'acme', 1, 'the platform');
      expect(mapped, what).toBeInstanceOf(KeyAccessDeniedError);
      expect(mapped.message, what).toContain(`Azure Key Vault ${op} with ${az.keyId(name)}`);
    }
    expect((await kc.getKey(name)).properties.enabled).toBe(true);
    // a grant without unwrapKey: the KEK's round trip is refused as access denied
    az.grant(name, platform.clientId, ['get', 'wrapKey']);
    const kek = kekFor(az.keyId(name), { type: 'client-secret', ...platform });
    const w = await kek.wrapIdentified(randomBytes(32), ctx);
    await expect(kek.unwrap(w.wrapped, ctx, w.wrappedBy)).rejects.toBeInstanceOf(KeyAccessDeniedError);
    // and one with unwrapKey only: no wrap
    az.grant(name, platform.clientId, ['unwrapKey']);
    await expect(
      kekFor(az.keyId(name), { type: 'client-secret', ...platform }).wrap(randomBytes(32), ctx),
    ).rejects.toBeInstanceOf(KeyAccessDeniedError);
  });
});

describe('Azure Key Vault KEK: the factory rebuilds every credential type', () => {
  it('public fields from params, the secret from the secret part; a missing secret or unknown type refused', async () => {
    const id = az.keyId('k');
    const credentials: AzureCredential[] = [
      { type: 'client-secret', ...app },
      {
        type: 'workload-identity',
        tenantId: app.tenantId,
        clientId: app.clientId,
        tokenFilePath: '/var/run/token',
      },
      { type: 'managed-identity' },
      { type: 'managed-identity', clientId: app.clientId },
      { type: 'default' },
    ];
    for (const credential of credentials) {
      const cfg = kekFor(id, credential).toConfig();
      const rebuilt = (await azureKekFactory(cfg)) as ReturnType<typeof azureKeyVault>;
      expect(rebuilt.toConfig(), credential.type).toEqual(cfg);
    }
    const cfg = kekFor(id).toConfig();
    expect(() => azureKekFactory({ ...cfg, secret: {} })).toThrow(
      /needs clientSecret in the config's secret part/,
    );
    expect(() =>
      azureKekFactory({
        ...cfg,
        params: { ...cfg.params, credential: { type: 'password', tenantId: app.tenantId } },
      }),
    ).toThrow(ByokConfigError);
  });
});
