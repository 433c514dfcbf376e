/**
 * `drizzle-byok/vault` against the local Vault server (`drizzle-byok/testing/vault`): every auth
 * method, namespaces, the tenant / DEK binding, versions and rewrap, and each failure as its typed
 * error. Adversarial cases first.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
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
import { type VaultAuth, vaultKekFactory, vaultTransit } from '../src/kms/vault/index.ts';
import { startVaultServer, type VaultAdmin, type VaultServer } from '../src/testing/vault/index.ts';
import { vaultPolicyFor } from './helpers/providers.ts';

let vault: VaultServer;
let dir: string;
beforeAll(async () => {
  vault = await startVaultServer();
  dir = mkdtempSync(join(tmpdir(), 'byok-vault-'));
});
afterAll(async () => {
  await vault?.close();
  rmSync(dir, { recursive: true, force: true });
});

const ctx = { tenantId: 'acme', dekId: '0b5e7c5e-0000-4000-8000-000000000001' };

function tenantSpace(): { ns: VaultAdmin; key: string; token: string } {
  const ns = vault.namespace(`t-${randomBytes(4).toString('hex')}`);
  const key = ns.createKey('drizzle-byok');
  ns.putPolicy('drizzle-byok', vaultPolicyFor('transit', key));
  return { ns, key, token: ns.createToken({ policies: ['drizzle-byok'] }) };
}

const kekOf = (ns: VaultAdmin, key: string, auth: VaultAuth, extra: Record<string, unknown> = {}) =>
  vaultTransit({ address: vault.address, namespace: ns.path, keyName: key, auth, retries: 0, ...extra });

describe('Vault Transit KEK: refusals first', () => {
  it('a wrapped key does not unwrap for another tenant, another data key, or after a bit flip', async () => {
    const { ns, key, token } = tenantSpace();
    const kek = kekOf(ns, key, { type: 'token', token });
    const dek = randomBytes(32);
    const { wrapped } = await kek.wrapIdentified(dek, ctx);
    await fc.assert(
      fc.asyncProperty(
        fc.record({ tenantId: fc.string({ minLength: 1 }), dekId: fc.string({ minLength: 1 }) }),
        async (other) => {
          fc.pre(other.tenantId !== ctx.tenantId || other.dekId !== ctx.dekId);
          await expect(kek.unwrap(wrapped, other)).rejects.toBeInstanceOf(KmsIntegrityError);
        },
      ),
      { numRuns: 25 },
    );
    const text = Buffer.from(wrapped).toString('utf8');
    const body = Buffer.from(text.split(':')[2]!, 'base64');
    body[20]! ^= 1;
    const flipped = Buffer.from(`vault:v1:${body.toString('base64')}`);
    await expect(kek.unwrap(flipped, ctx)).rejects.toBeInstanceOf(KmsIntegrityError);
    await expect(kek.unwrap(Buffer.from('not a vault ciphertext'), ctx)).rejects.toBeInstanceOf(
      KmsIntegrityError,
    );
    // a recorded version that is not the ciphertext's, or not this key's
    await expect(kek.unwrap(wrapped, ctx, `${kek.keyRef}/versions/2`)).rejects.toBeInstanceOf(
      KmsIntegrityError,
    );
    await expect(
      kek.unwrap(wrapped, ctx, 'https://elsewhere/v1/transit/keys/k/versions/1'),
    ).rejects.toBeInstanceOf(KmsIntegrityError);
    expect(Buffer.from(await kek.unwrap(wrapped, ctx, `${kek.keyRef}/versions/1`))).toEqual(dek);
  });

  it('each failure is its own typed error, naming the key and never the token', async () => {
    const { ns, key, token } = tenantSpace();
    const kek = kekOf(ns, key, { type: 'token', token });
    const { wrapped } = await kek.wrapIdentified(randomBytes(32), ctx);
    const cases: [string, () => Promise<unknown>, string][] = [
      [
        'no such key (read)',
        () => kekOf(ns, 'missing', { type: 'token', token: vault.rootToken }).describe(),
        KekNotFoundError.code,
      ],
      [
        'no such key (decrypt)',
        () => kekOf(ns, 'missing', { type: 'token', token: vault.rootToken }).unwrap(wrapped, ctx),
        KekNotFoundError.code,
      ],
      [
        'no policy on another key (encrypt needs create: upsert)',
        () => kekOf(ns, 'other', { type: 'token', token }).wrap(randomBytes(32), ctx),
        KeyAccessDeniedError.code,
      ],
      [
        'an unknown token',
        () => kekOf(ns, key, { type: 'token', token: 'hvs.unknownunknownunknown1' }).unwrap(wrapped, ctx),
        KeyAccessDeniedError.code,
      ],
      [
        'a wrong mount',
        () =>
          kekOf(ns, key, { type: 'token', token: vault.rootToken }, { mount: 'nope' }).unwrap(wrapped, ctx),
        ByokConfigError.code,
      ],
      [
        'a wrong namespace',
        () =>
          vaultTransit({
            address: vault.address,
            namespace: 'no-such-ns',
            keyName: key,
            auth: { type: 'token', token },
            retries: 0,
          }).unwrap(wrapped, ctx),
        ByokConfigError.code,
      ],
      [
        'unreachable',
        () =>
          vaultTransit({
            address: 'http://127.0.0.1:9',
            keyName: key,
            auth: { type: 'token', token },
            retries: 0,
            timeoutMs: 300,
          }).unwrap(wrapped, ctx),
        KmsUnavailableError.code,
      ],
      [
        'AppRole with a wrong secret id',
        () => kekOf(ns, key, { type: 'approle', roleId: 'r', secretId: 'wrong' }).unwrap(wrapped, ctx),
        KmsCredentialsError.code,
      ],
    ];
    for (const [what, run, code] of cases) {
      const err = (await run().catch((x) => x)) as Error & { code?: string };
      expect(err?.code, what).toBe(code);
      expect(err.message, what).toMatch(/^Vault /);
      expect(`${err.message} ${inspect(err)}`, what).not.toContain(token);
    }
    // min_decryption_version above the wrap's version
    ns.rotateKey(key);
    ns.configureKey(key, { minDecryptionVersion: 2 });
    await expect(kek.unwrap(wrapped, ctx)).rejects.toBeInstanceOf(KeyDisabledError);
  });

  it('faults: 429 and 503 retried then mapped; sealed Vault unavailable; corrupted answers are integrity errors', async () => {
    const { ns, key, token } = tenantSpace();
    const kek = kekOf(ns, key, { type: 'token', token }, { retries: 2, retryDelayMs: 1 });
    const { wrapped } = await kek.wrapIdentified(randomBytes(32), ctx);
    vault.counters.reset();
    vault.faults.fail(2, 429, { operations: ['decrypt'] });
    await kek.unwrap(wrapped, ctx);
    expect(vault.counters.operation('decrypt')).toBe(3);
    vault.faults.fail(3, 429, { operations: ['decrypt'] });
    await expect(kek.unwrap(wrapped, ctx)).rejects.toBeInstanceOf(KmsThrottledError);
    vault.faults.fail(3, 503, { operations: ['decrypt'] });
    await expect(kek.unwrap(wrapped, ctx)).rejects.toBeInstanceOf(KmsUnavailableError);
    vault.seal();
    try {
      const err = await kek.unwrap(wrapped, ctx).catch((x) => x);
      expect(err).toBeInstanceOf(KmsUnavailableError);
      expect(err.message).toMatch(/sealed/);
    } finally {
      vault.unseal();
    }
    vault.faults.corrupt(1, 'plaintext', { operations: ['decrypt'] });
    // a flipped plaintext bit is still 32 bytes: the keyring's verify round trip catches it; the
    // KEK catches a wrong length or a wrong answer shape
    vault.faults.corrupt(1, 'key_version', { operations: ['encrypt'] });
    await kek.unwrap(wrapped, ctx);
    await expect(kek.wrap(randomBytes(32), ctx)).rejects.toBeInstanceOf(KmsIntegrityError);
    vault.faults.corrupt(1, 'not-json', { operations: ['decrypt'] });
    await expect(kek.unwrap(wrapped, ctx)).rejects.toBeInstanceOf(KmsUnavailableError);
    vault.faults.clear();
  });

  it('describe refuses a key that cannot bind associated data, and a derived mismatch', async () => {
    const { ns, token } = tenantSpace();
    const rsa = ns.createKey('rsa', { type: 'rsa-2048' });
    ns.putPolicy('drizzle-byok', vaultPolicyFor('transit', '*'));
    const d = await kekOf(ns, rsa, { type: 'token', token }).describe();
    expect(d.details?.canWrap).toBe(false);
    expect(d.providerState).toMatch(/AEAD/);
    const derived = ns.createKey('derived', { derived: true });
    const mismatch = await kekOf(ns, derived, { type: 'token', token }).describe();
    expect(mismatch.details?.canWrap).toBe(false);
    const ok = kekOf(ns, derived, { type: 'token', token }, { derived: true });
    expect((await ok.describe()).details?.canWrap).toBe(true);
    const dek = randomBytes(32);
    const { wrapped } = await ok.wrapIdentified(dek, ctx);
    expect(Buffer.from(await ok.unwrap(wrapped, ctx))).toEqual(dek);
    await expect(ok.unwrap(wrapped, { ...ctx, tenantId: 'other' })).rejects.toBeInstanceOf(KmsIntegrityError);
  });

  it('options are checked without echoing secrets', () => {
    const bad = (o: Record<string, unknown>) => {
      try {
        vaultTransit({
          address: 'https://vault.example:8200',
          keyName: 'k',
          auth: { type: 'token', token: 'hvs.x' },
          ...o,
        } as never);
      } catch (e) {
        return e as ByokConfigError;
      }
      throw new Error('accepted');
    };
    expect(bad({ address: 'http://vault.example:8200' }).message).toMatch(/https/);
    expect(bad({ address: 'https://user:pw@vault.example' }).message).toMatch(/without credentials/);
    expect(bad({ address: 'https://vault.example/v1' }).message).toMatch(/no path/);
    expect(bad({ keyName: 'a/b' }).message).toMatch(/keyName/);
    expect(
      bad({ auth: { type: 'approle', roleId: 'r', secretId: 'has space s3cr3tvalue' } }).message,
    ).not.toContain('s3cr3tvalue');
    expect(bad({ auth: { type: 'jwt', role: 'r' } }).message).toMatch(/exactly one of jwt and jwtFile/);
    expect(bad({ auth: { type: 'nope' } })).toBeInstanceOf(ByokConfigError);
  });
});

describe('Vault Transit KEK: auth methods, namespaces, versions', () => {
  it('token, AppRole, Kubernetes (token file) and JWT logins each wrap and unwrap; tokens are reused, renewed and replaced', async () => {
    const { ns, key, token } = tenantSpace();
    const app = ns.addAppRole({ name: 'platform', policies: ['drizzle-byok'] });
    ns.addKubernetesRole({
      name: 'platform',
      serviceAccountNames: ['app'],
      serviceAccountNamespaces: ['prod'],
      policies: ['drizzle-byok'],
    });
    const saFile = join(dir, 'sa-token');
    writeFileSync(saFile, ns.kubernetesServiceAccountToken({ serviceAccount: 'app', namespace: 'prod' }));
    ns.addJwtRole({
      name: 'ci',
      boundAudiences: ['vault'],
      boundSubject: 'repo:acme/app',
      policies: ['drizzle-byok'],
    });
    const jwt = ns.issueJwt({ subject: 'repo:acme/app', audience: 'vault' });
    const auths: [string, VaultAuth][] = [
      ['token', { type: 'token', token }],
      ['approle', { type: 'approle', roleId: app.roleId, secretId: app.secretId }],
      ['kubernetes', { type: 'kubernetes', role: 'platform', jwtFile: saFile }],
      ['jwt', { type: 'jwt', role: 'ci', jwt }],
    ];
    for (const [what, auth] of auths) {
      const kek = kekOf(ns, key, auth);
      const dek = randomBytes(32);
      const { wrapped, wrappedBy } = await kek.wrapIdentified(dek, ctx);
      expect(wrappedBy, what).toBe(`${kek.keyRef}/versions/1`);
      expect(Buffer.from(await kek.unwrap(wrapped, ctx, wrappedBy)), what).toEqual(dek);
      expect(kek.logins, what).toBe(what === 'token' ? 0 : 1);
      // rebuilt from its configuration (secret part included) on another instance
      const cfg = kek.toConfig();
      expect(JSON.stringify(cfg.params), what).not.toMatch(/hvs\.|eyJ/);
      expect(JSON.stringify(cfg.params), what).not.toContain(app.secretId);
      expect(Buffer.from(await (await vaultKekFactory(cfg)).unwrap(wrapped, ctx)), what).toEqual(dek);
      expect(inspect(kek), what).not.toMatch(/hvs\.|eyJ/);
      expect(JSON.stringify(kek)).not.toMatch(/hvs\.|eyJ/);
    }
    // a revoked login token is replaced by a new login, once
    const kek = kekOf(ns, key, { type: 'approle', roleId: app.roleId, secretId: app.secretId });
    await kek.wrap(randomBytes(32), ctx);
    vault.namespace(ns.path).revokeLogins('approle-platform');
    await kek.wrap(randomBytes(32), ctx);
    expect(kek.logins).toBe(2);
    // the role's secret ids destroyed and the token revoked: a credentials error
    ns.destroySecretIds('platform');
    ns.revokeLogins('approle-platform');
    await expect(kek.wrap(randomBytes(32), ctx)).rejects.toBeInstanceOf(KmsCredentialsError);
    // a Kubernetes token of another service account is refused at login
    writeFileSync(
      saFile,
      ns.kubernetesServiceAccountToken({ serviceAccount: 'intruder', namespace: 'prod' }),
    );
    await expect(
      kekOf(ns, key, { type: 'kubernetes', role: 'platform', jwtFile: saFile }).wrap(randomBytes(32), ctx),
    ).rejects.toBeInstanceOf(KmsCredentialsError);
  });

  it('namespaces are separate: the same key name in two namespaces are two keys', async () => {
    const a = tenantSpace();
    const b = tenantSpace();
    const ka = kekOf(a.ns, a.key, { type: 'token', token: a.token });
    const kb = kekOf(b.ns, b.key, { type: 'token', token: b.token });
    expect(ka.keyRef).not.toBe(kb.keyRef);
    const { wrapped } = await ka.wrapIdentified(randomBytes(32), ctx);
    await expect(kb.unwrap(wrapped, ctx)).rejects.toBeInstanceOf(KmsIntegrityError);
    // a's token means nothing in b's namespace
    await expect(
      kekOf(b.ns, b.key, { type: 'token', token: a.token }).unwrap(wrapped, ctx),
    ).rejects.toBeInstanceOf(KeyAccessDeniedError);
  });

  it('versions: wraps record their version, rotation keeps old wraps readable, rewrap moves them inside Vault', async () => {
    const { ns, key, token } = tenantSpace();
    const kek = kekOf(ns, key, { type: 'token', token });
    const dek = randomBytes(32);
    const v1 = await kek.wrapIdentified(dek, ctx);
    ns.rotateKey(key);
    const d = await kek.describe();
    expect(d.currentKeyId).toBe(`${kek.keyRef}/versions/2`);
    expect(Buffer.from(await kek.unwrap(v1.wrapped, ctx, v1.wrappedBy))).toEqual(dek);
    vault.counters.reset();
    const v2 = await kek.rewrap(v1.wrapped, ctx, v1.wrappedBy);
    expect(vault.counters.operation('rewrap')).toBe(1);
    expect(vault.counters.operation('decrypt')).toBe(0);
    expect(v2.wrappedBy).toBe(`${kek.keyRef}/versions/2`);
    ns.configureKey(key, { minDecryptionVersion: 2 });
    await expect(kek.unwrap(v1.wrapped, ctx)).rejects.toBeInstanceOf(KeyDisabledError);
    expect(Buffer.from(await kek.unwrap(v2.wrapped, ctx, v2.wrappedBy))).toEqual(dek);
  });
});

describe('Vault Transit KEK over HTTPS (a private CA through caCertificate)', () => {
  let tlsVault: VaultServer;
  beforeAll(async () => {
    tlsVault = await startVaultServer({ tls: true });
  });
  afterAll(async () => {
    await tlsVault?.close();
  });
  const space = () => {
    const ns = tlsVault.namespace(`t-${randomBytes(4).toString('hex')}`);
    const key = ns.createKey('drizzle-byok');
    ns.putPolicy('drizzle-byok', vaultPolicyFor('transit', key));
    return { ns, key, ...ns.addAppRole({ name: 'platform', policies: ['drizzle-byok'] }) };
  };
  const kekOver = (s: ReturnType<typeof space>, extra: Record<string, unknown> = {}) =>
    vaultTransit({
      address: tlsVault.address,
      namespace: s.ns.path,
      keyName: s.key,
      auth: { type: 'approle', roleId: s.roleId, secretId: s.secretId },
      retries: 0,
      ...extra,
    });

  it('with caCertificate: login, wrap and unwrap over TLS; the CA is kept in the configuration', async () => {
    expect(tlsVault.address).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(tlsVault.caCertificate).toContain('-----BEGIN CERTIFICATE-----');
    const s = space();
    const kek = kekOver(s, { caCertificate: tlsVault.caCertificate });
    const dek = randomBytes(32);
    const w = await kek.wrapIdentified(dek, ctx);
    expect(Buffer.from(await kek.unwrap(w.wrapped, ctx, w.wrappedBy))).toEqual(dek);
    expect((await kek.describe()).state).toBe('enabled');
    const cfg = kek.toConfig();
    expect(cfg.params.caCertificate).toBe(tlsVault.caCertificate);
    const again = await vaultKekFactory(cfg);
    expect(Buffer.from(await again.unwrap(w.wrapped, ctx, w.wrappedBy))).toEqual(dek);
    // the certificate names localhost too: a TLS server name that it names is accepted
    const byName = kekOver(s, { caCertificate: tlsVault.caCertificate, tlsServerName: 'localhost' });
    expect(Buffer.from(await byName.unwrap(w.wrapped, ctx, w.wrappedBy))).toEqual(dek);
    expect(tlsVault.counters.operation('decrypt')).toBeGreaterThanOrEqual(3);
  });

  it('without it (or with another CA, or another server name): refused at once as KmsUnavailableError, not retried', async () => {
    const s = space();
    const other = (await startVaultServer({ tls: true })) as VaultServer;
    const otherCa = other.caCertificate;
    await other.close();
    tlsVault.counters.reset();
    const cases: [string, Record<string, unknown>, RegExp][] = [
      ['no caCertificate', {}, /SELF_SIGNED|UNABLE_TO_VERIFY/],
      ['another CA', { caCertificate: otherCa }, /SELF_SIGNED|UNABLE_TO_VERIFY|CERT_SIGNATURE_FAILURE/],
      [
        'a server name the certificate does not name',
        { caCertificate: tlsVault.caCertificate, tlsServerName: 'vault.example.com' },
        /ERR_TLS_CERT_ALTNAME_INVALID/,
      ],
    ];
    for (const [what, extra, code] of cases) {
      // generous deadline and retries: a refused certificate must neither wait for them nor use them
      const kek = kekOver(s, { timeoutMs: 60_000, retries: 3, retryDelayMs: 10_000, ...extra });
      const err = (await kek.wrap(randomBytes(32), ctx).catch((x) => x)) as Error & { code?: string };
      expect(err, what).toBeInstanceOf(KmsUnavailableError);
      expect(err.message, what).toMatch(code);
      expect(err.message, what).toContain('caCertificate');
      expect(err.message, what).not.toContain('after');
      expect(`${err.message} ${inspect(err)}`, what).not.toContain(s.secretId);
    }
    // the TLS handshake failed: no request reached the server
    expect(tlsVault.counters.total).toBe(0);
  });
});
