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
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ByokConfigError,
  KekNotFoundError,
  KeyAccessDeniedError,
  KeyDisabledError,
  KmsCredentialsError,
  KmsIntegrityError,
  KmsThrottledError,
  KmsUnavailableError,
} from '../src/index.ts';
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
  });

  it('throttling and outages: retried, then KmsThrottledError / KmsUnavailableError', async () => {
    const { id } = newKey();
    const kek = kekFor(id, undefined, { retries: 2 });
    const { wrapped, wrappedBy } = await kek.wrapIdentified(randomBytes(32), ctx);
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
