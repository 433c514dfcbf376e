// One file: the Key Vault and Entra routes are one closure over the server's keys, grants and faults.
/**
 * `startAzureKeyVaultServer()`: a local Azure Key Vault (keys REST API, api-version 7.x: create,
 * get, update enabled / expiry / operations, rotate, wrapkey, unwrapkey; challenge authentication;
 * each call authorised by the caller's token against the roles or permissions granted to that
 * principal on the key or the vault) and the Microsoft Entra
 * endpoints the `@azure/identity` credentials call (OpenID configuration, the v2.0 token endpoint
 * for client secrets, certificates and federated tokens, and an App Service managed identity
 * endpoint), over HTTPS with a self-signed certificate on 127.0.0.1, so `@azure/keyvault-keys`,
 * `@azure/identity` and `drizzle-byok/azure` run unchanged. Faults and counters like the other
 * local servers.
 */
import {
  createPublicKey,
  type KeyObject,
  randomBytes,
  randomUUID,
  verify,
  X509Certificate,
} from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import {
  type AzureKeyRecord,
  type AzureKeyVersion,
  applyUpdate,
  BadKeyRequest,
  keyBundle,
  keySizeOf,
  newKeyVersion,
  unwrapWith,
  versionFromCreate,
  wrapWith,
} from './keys.ts';
import { selfSignedCertificate } from '../tls.ts';

export type AzureServerOperation =
  | 'token'
  | 'openid-configuration'
  | 'managed-identity'
  | 'getKey'
  | 'createKey'
  | 'updateKey'
  | 'rotateKey'
  | 'wrapKey'
  | 'unwrapKey'
  | 'challenge';

export interface AzureFaultFilter {
  readonly operations?: readonly AzureServerOperation[];
  readonly keys?: readonly string[];
}

export interface AzureFaults {
  /** The next `count` matching calls fail with this status (429 throttling, 500, 503). */
  fail(count: number, status: 429 | 500 | 503, filter?: AzureFaultFilter): void;
  latency(ms: number, filter?: AzureFaultFilter): void;
  hang(filter?: AzureFaultFilter): void;
  readonly hungCalls: number;
  clear(): void;
}

export interface AzureCallRecord {
  readonly operation: AzureServerOperation;
  readonly key: string | undefined;
  /** Client id (application or managed identity) of the bearer token. */
  readonly principal: string | undefined;
  status: number;
}

export interface AzureCounters {
  readonly total: number;
  operation(op: AzureServerOperation): number;
  key(name: string): number;
  errors(status?: number): number;
  readonly calls: readonly AzureCallRecord[];
  reset(): void;
}

/**
 * What a principal may do with a key: the key permissions of an access policy, or the data actions
 * of an Azure RBAC role (`get` = `keys/read`, `create` = `keys/create/action`, `update` =
 * `keys/update/action`, `rotate` = `keys/rotate/action`, `wrapKey` = `keys/wrap/action`,
 * `unwrapKey` = `keys/unwrap/action`).
 */
export type AzureKeyPermission = 'get' | 'create' | 'update' | 'rotate' | 'wrapKey' | 'unwrapKey';

/** Built-in Key Vault roles, as the permissions of {@link AzureKeyPermission} they include. */
export const AZURE_KEY_VAULT_ROLES = {
  /** What the platform is granted on a tenant's key: read it, wrap and unwrap. */
  'Key Vault Crypto Service Encryption User': ['get', 'wrapKey', 'unwrapKey'],
  /** What a tenant's key administrator holds: every key operation. */
  'Key Vault Crypto Officer': ['get', 'create', 'update', 'rotate', 'wrapKey', 'unwrapKey'],
} as const satisfies Record<string, readonly AzureKeyPermission[]>;

export type AzureKeyVaultRole = keyof typeof AZURE_KEY_VAULT_ROLES;

export interface AzureAppRegistration {
  readonly tenantId: string;
  readonly clientId: string;
  /** For `client-secret` credentials. */
  readonly clientSecret: string;
}

export interface AzureServerOptions {
  port?: number;
  /** The directory (tenant) id; default a random GUID. */
  tenantId?: string;
}

export interface AzureKeyVaultServer {
  /** `https://127.0.0.1:<port>`: the vault URL and the authority host. */
  readonly url: string;
  readonly port: number;
  readonly tenantId: string;
  /** PEM of the server's self-signed certificate: the KEK's `caCertificate`. */
  readonly caCertificate: string;
  readonly faults: AzureFaults;
  readonly counters: AzureCounters;
  /** `https://127.0.0.1:<port>/keys/<name>`. */
  keyId(name: string): string;
  /** An app registration with a client secret. */
  addApp(): AzureAppRegistration;
  /** Registers a certificate (PEM) for an app: client assertions signed by its key are accepted. */
  addAppCertificate(clientId: string, certificatePem: string): void;
  /** A federated identity credential: tokens of `issuer` with this subject log in as the app. */
  addFederatedCredential(
    clientId: string,
    o: { issuer: string; subject: string; audience?: string; publicKeyPem: string },
  ): void;
  /** A managed identity served at `managedIdentityEndpoint` (App Service protocol). */
  addManagedIdentity(): { clientId: string };
  /** `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` for the App Service managed identity protocol. */
  readonly managedIdentityEnv: { IDENTITY_ENDPOINT: string; IDENTITY_HEADER: string };
  /** Creates a key (RSA-2048 by default, `oct-HSM` for AES key wrap); returns its versionless id. */
  createKey(
    name?: string,
    o?: {
      kty?: 'RSA' | 'RSA-HSM' | 'oct-HSM';
      keyOps?: readonly string[];
      expiresOn?: Date;
      notBefore?: Date;
    },
  ): string;
  /** The key's version ids, oldest first. */
  versions(name: string): string[];
  /** A new current version of the key; returns its versioned id. */
  rotateKey(name: string): string;
  /** Enables or disables a key version (default the current one). */
  setEnabled(name: string, enabled: boolean, version?: string): void;
  setExpiry(name: string, expiresOn: Date | undefined, version?: string): void;
  /**
   * A role assignment (or access policy) on one key, or `*` for the whole vault: a built-in role by
   * name or a list of permissions; default `Key Vault Crypto Service Encryption User`. Replaces the
   * principal's earlier grant at that scope. Create needs `create` on the vault or on the name.
   */
  grant(
    name: string,
    clientId: string,
    permissions?: readonly AzureKeyPermission[] | AzureKeyVaultRole,
  ): void;
  revoke(name: string, clientId: string): void;
  deleteKey(name: string): void;
  close(): Promise<void>;
}

const API_VERSIONS = /^(?:7\.\d+(?:-preview)?|20\d\d-\d\d-\d\d(?:-preview)?)$/;

export async function startAzureKeyVaultServer(
  options: AzureServerOptions = {},
): Promise<AzureKeyVaultServer> {
  const tls = selfSignedCertificate();
  const tenantId = options.tenantId ?? randomUUID();
  const apps = new Map<string, { secret: string; certs: X509Certificate[] }>();
  const federated = new Map<
    string,
    { issuer: string; subject: string; audience: string; publicKeyPem: string }[]
  >();
  const managed = new Set<string>();
  const identityHeader = randomBytes(16).toString('hex');
  const tokens = new Map<string, { clientId: string; expires: number }>();
  const keys = new Map<string, AzureKeyRecord>();
  const grants = new Map<string, Map<string, Set<AzureKeyPermission>>>();
  const calls: AzureCallRecord[] = [];
  let total = 0;
  type Fault = { filter: AzureFaultFilter; remaining: number; status?: number; ms?: number };
  let fails: Fault[] = [];
  let latencies: Fault[] = [];
  let hangs: Fault[] = [];
  const hung = new Set<() => void>();
  const sockets = new Set<Duplex>();
  let base = '';

  const issue = (clientId: string) => {
    const t = randomBytes(24).toString('base64url');
    tokens.set(t, { clientId, expires: Date.now() + 3600_000 });
    return t;
  };

  const server = createServer({ cert: tls.certPem, key: tls.keyPem }, (req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) json(res, 500, { error: { code: 'InternalError', message: 'internal error' } });
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', base);
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks).toString('utf8');
    const path = url.pathname.replace(/\/{2,}/g, '/');
    const rec: { -readonly [K in keyof AzureCallRecord]: AzureCallRecord[K] } = {
      operation: 'getKey',
      key: undefined,
      principal: undefined,
      status: 0,
    };
    const finish = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      rec.status = status;
      total++;
      calls.push(rec);
      if (calls.length > 10_000) calls.shift();
      json(res, status, body, headers);
    };
    const faulted = async (): Promise<boolean> => {
      const hit = (f: Fault) =>
        f.remaining > 0 &&
        (f.filter.operations === undefined || f.filter.operations.includes(rec.operation)) &&
        (f.filter.keys === undefined || (rec.key !== undefined && f.filter.keys.includes(rec.key)));
      const ms = latencies.filter(hit).reduce((s, f) => s + (f.ms ?? 0), 0);
      if (ms > 0) await new Promise((r) => setTimeout(r, ms));
      if (hangs.some(hit)) {
        await new Promise<void>((r) => hung.add(r));
        if (res.destroyed) return true;
      }
      const f = fails.find(hit);
      if (f !== undefined) {
        f.remaining--;
        const status = f.status ?? 503;
        finish(
          status,
          { error: { code: status === 429 ? 'Throttled' : 'ServiceUnavailable', message: 'injected fault' } },
          status === 429 ? { 'retry-after': '0' } : {},
        );
        return true;
      }
      return false;
    };

    // -- Microsoft Entra ------------------------------------------------------------------------
    let m = /^\/([^/]+)\/v2\.0\/\.well-known\/openid-configuration$/.exec(path);
    if (m !== null) {
      rec.operation = 'openid-configuration';
      if (await faulted()) return;
      const t = m[1]!;
      return finish(200, {
        token_endpoint: `${base}/${t}/oauth2/v2.0/token`,
        authorization_endpoint: `${base}/${t}/oauth2/v2.0/authorize`,
        end_session_endpoint: `${base}/${t}/oauth2/v2.0/logout`,
        device_authorization_endpoint: `${base}/${t}/oauth2/v2.0/devicecode`,
        jwks_uri: `${base}/${t}/discovery/v2.0/keys`,
        issuer: `${base}/${t}/v2.0`,
        response_types_supported: ['code', 'id_token', 'code id_token', 'id_token token'],
        token_endpoint_auth_methods_supported: [
          'client_secret_post',
          'private_key_jwt',
          'client_secret_basic',
        ],
      });
    }
    m = /^\/([^/]+)\/oauth2\/v2\.0\/token$/.exec(path);
    if (m !== null && req.method === 'POST') {
      rec.operation = 'token';
      if (await faulted()) return;
      const form = new URLSearchParams(raw);
      const bad = (code: number, error: string, description: string) =>
        finish(code, {
          error,
          error_description: description,
          error_codes: [7000215],
          timestamp: new Date().toISOString(),
        });
      if (m[1] !== tenantId) return bad(400, 'invalid_request', `AADSTS90002: Tenant '${m[1]}' not found.`);
      const clientId = form.get('client_id') ?? '';
      const app = apps.get(clientId);
      if (form.get('grant_type') !== 'client_credentials')
        return bad(400, 'unsupported_grant_type', 'AADSTS70003: unsupported grant type');
      const assertion = form.get('client_assertion');
      let ok = false;
      if (form.get('client_secret') !== null)
        ok = app !== undefined && form.get('client_secret') === app.secret;
      else if (assertion !== null)
        ok = verifyAssertion(assertion, clientId, app?.certs ?? [], federated.get(clientId) ?? []);
      if (!ok)
        return bad(401, 'invalid_client', 'AADSTS7000215: Invalid client secret or assertion provided.');
      rec.principal === undefined && Object.assign(rec, { principal: clientId });
      return finish(200, {
        token_type: 'Bearer',
        expires_in: 3599,
        ext_expires_in: 3599,
        access_token: issue(clientId),
      });
    }
    if (path === '/msi/token') {
      rec.operation = 'managed-identity';
      if (await faulted()) return;
      if (req.headers['x-identity-header'] !== identityHeader)
        return finish(401, { error: 'invalid identity header' });
      const wanted = url.searchParams.get('client_id');
      const id = wanted ?? [...managed][0];
      if (id === undefined || !managed.has(id))
        return finish(400, { error: 'invalid_request', error_description: 'Identity not found' });
      Object.assign(rec, { principal: id });
      return finish(200, {
        access_token: issue(id),
        expires_on: String(Math.floor(Date.now() / 1000) + 3600),
        resource: url.searchParams.get('resource') ?? 'https://vault.azure.net',
        token_type: 'Bearer',
        client_id: id,
      });
    }

    // -- Key Vault ------------------------------------------------------------------------------
    m = /^\/keys\/([0-9A-Za-z-]+)(?:\/([0-9a-f]{32}))?(?:\/(create|rotate|wrapkey|unwrapkey))?\/?$/.exec(
      path,
    );
    if (m === null) return finish(404, { error: { code: 'NotFound', message: `no route ${path}` } });
    const [, name, version, action] = m as unknown as [
      string,
      string,
      string | undefined,
      string | undefined,
    ];
    const operation = keyOperation(req.method ?? 'GET', version, action);
    if (operation === undefined) {
      return finish(405, {
        error: { code: 'MethodNotAllowed', message: `${req.method} is not allowed on ${path}` },
      });
    }
    rec.operation = operation;
    Object.assign(rec, { key: name });
    const api = url.searchParams.get('api-version');
    if (api === null || !API_VERSIONS.test(api)) {
      return finish(400, {
        error: { code: 'BadParameter', message: 'The api-version query parameter is missing or unsupported' },
      });
    }
    const auth = req.headers.authorization;
    const token = typeof auth === 'string' && /^Bearer /.test(auth) ? tokens.get(auth.slice(7)) : undefined;
    if (token === undefined || token.expires < Date.now()) {
      // Challenge authentication: where to get a token, and for which resource.
      return finish(
        401,
        { error: { code: 'Unauthorized', message: 'AKV10000: Request is missing a Bearer or PoP token.' } },
        {
          'www-authenticate': `Bearer authorization="${base}/${tenantId}", resource="https://vault.azure.net"`,
        },
      );
    }
    Object.assign(rec, { principal: token.clientId });
    if (await faulted()) return;
    const perms = new Set([
      ...(grants.get(name)?.get(token.clientId) ?? []),
      ...(grants.get('*')?.get(token.clientId) ?? []),
    ]);
    const need = PERMISSION_OF[operation as KeyVaultOperation];
    const notFound = (what: string) =>
      finish(404, {
        error: {
          code: 'KeyNotFound',
          message: `A key with (name/id) ${what} was not found in this key vault.`,
        },
      });
    if (!keys.has(name) && perms.size > 0 && operation !== 'createKey') return notFound(name);
    if (!perms.has(need)) {
      return finish(403, {
        error: {
          code: 'Forbidden',
          message: `Caller is not authorized to perform action on resource.\r\nCaller: appid=${token.clientId}\r\nAction: '${RBAC_ACTION[need]}'\r\nResource: '/keys/${name}'\r\nAssignment: (not found)`,
          innererror: { code: 'ForbiddenByRbac' },
        },
      });
    }
    let body: Record<string, unknown> = {};
    if (req.method !== 'GET' && raw.trim() !== '') {
      try {
        const parsed = JSON.parse(raw);
        if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
          throw new Error('not an object');
        body = parsed;
      } catch {
        return finish(400, { error: { code: 'BadParameter', message: 'Invalid request body' } });
      }
    }
    if (operation === 'createKey') {
      let v: AzureKeyVersion;
      try {
        v = versionFromCreate(body);
      } catch (e) {
        if (!(e instanceof BadKeyRequest)) throw e;
        return finish(400, { error: { code: 'BadParameter', message: e.message } });
      }
      const existing = keys.get(name);
      const k: AzureKeyRecord = existing ?? { name, kty: v.kty, current: v.version, versions: new Map() };
      k.versions.set(v.version, v);
      k.current = v.version;
      k.kty = v.kty;
      keys.set(name, k);
      return finish(200, keyBundle(base, k, v));
    }
    const key = keys.get(name);
    if (key === undefined) return notFound(name);
    if (operation === 'rotateKey') return finish(200, keyBundle(base, key, rotate(key)));
    const v = key.versions.get(version ?? key.current);
    if (v === undefined) return notFound(`${name}/${version}`);
    if (operation === 'getKey') return finish(200, keyBundle(base, key, v));
    if (operation === 'updateKey') {
      try {
        applyUpdate(v, body);
      } catch (e) {
        if (!(e instanceof BadKeyRequest)) throw e;
        return finish(400, { error: { code: 'BadParameter', message: e.message } });
      }
      return finish(200, keyBundle(base, key, v));
    }
    const op = operation as 'wrapKey' | 'unwrapKey';
    const now = Date.now();
    if (!v.enabled) {
      return finish(403, {
        error: {
          code: 'Forbidden',
          message: `Operation ${op} is not allowed on a disabled key.`,
          innererror: { code: 'KeyDisabled' },
        },
      });
    }
    if (v.expiresOn !== undefined && v.expiresOn.getTime() <= now) {
      return finish(403, {
        error: {
          code: 'Forbidden',
          message: `Operation ${op} is not allowed on an expired key.`,
          innererror: { code: 'KeyExpired' },
        },
      });
    }
    if (v.notBefore !== undefined && v.notBefore.getTime() > now) {
      return finish(403, {
        error: {
          code: 'Forbidden',
          message: `Operation ${op} is not allowed on a key that is not yet valid.`,
          innererror: { code: 'KeyNotYetValid' },
        },
      });
    }
    if (!v.keyOps.includes(op)) {
      return finish(403, {
        error: {
          code: 'Forbidden',
          message: `Operation ${op} is not permitted on this key.`,
          innererror: { code: 'KeyOperationForbidden' },
        },
      });
    }
    try {
      const out = op === 'wrapKey' ? wrapWith(v, body.alg, body.value) : unwrapWith(v, body.alg, body.value);
      return finish(200, { kid: `${base}/keys/${name}/${v.version}`, value: out });
    } catch (e) {
      return finish(400, { error: { code: 'BadParameter', message: (e as Error).message } });
    }
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  base = `https://127.0.0.1:${port}`;
  const keyOf = (name: string) => {
    const k = keys.get(name);
    if (k === undefined) throw new Error(`no key ${name}`);
    return k;
  };
  return {
    url: base,
    port,
    tenantId,
    caCertificate: tls.certPem,
    keyId: (name) => `${base}/keys/${name}`,
    managedIdentityEnv: { IDENTITY_ENDPOINT: `${base}/msi/token`, IDENTITY_HEADER: identityHeader },
    faults: {
      fail(count, status, filter = {}) {
        fails.push({ filter, remaining: count, status });
      },
      latency(ms, filter = {}) {
        latencies.push({ filter, remaining: Number.POSITIVE_INFINITY, ms });
      },
      hang(filter = {}) {
        hangs.push({ filter, remaining: Number.POSITIVE_INFINITY });
      },
      get hungCalls() {
        return hung.size;
      },
      clear() {
        fails = [];
        latencies = [];
        hangs = [];
        const r = [...hung];
        hung.clear();
        for (const f of r) f();
      },
    },
    counters: {
      get total() {
        return total;
      },
      get calls() {
        return calls;
      },
      operation: (op) => calls.filter((c) => c.operation === op).length,
      key: (name) => calls.filter((c) => c.key === name).length,
      errors: (status) =>
        calls.filter((c) => (status === undefined ? c.status >= 400 : c.status === status)).length,
      reset() {
        calls.length = 0;
        total = 0;
      },
    },
    addApp() {
      const clientId = randomUUID();
      const clientSecret = randomBytes(24).toString('base64url');
      apps.set(clientId, { secret: clientSecret, certs: [] });
      return { tenantId, clientId, clientSecret };
    },
    addAppCertificate(clientId, pem) {
      const app = apps.get(clientId);
      if (app === undefined) throw new Error(`no app ${clientId}`);
      app.certs.push(new X509Certificate(pem));
    },
    addFederatedCredential(clientId, o) {
      if (!apps.has(clientId)) throw new Error(`no app ${clientId}`);
      const list = federated.get(clientId) ?? [];
      list.push({ ...o, audience: o.audience ?? 'api://AzureADTokenExchange' });
      federated.set(clientId, list);
    },
    addManagedIdentity() {
      const clientId = randomUUID();
      managed.add(clientId);
      return { clientId };
    },
    createKey(name = `byok-${randomBytes(4).toString('hex')}`, o = {}) {
      if (keys.has(name)) throw new Error(`key ${name} exists`);
      const kty = o.kty ?? 'RSA';
      const v = newKeyVersion(
        kty,
        o.keyOps ?? ['wrapKey', 'unwrapKey', 'encrypt', 'decrypt'],
        o.expiresOn,
        o.notBefore,
      );
      keys.set(name, { name, kty, current: v.version, versions: new Map([[v.version, v]]) });
      return `${base}/keys/${name}`;
    },
    versions(name) {
      return [...keyOf(name).versions.keys()];
    },
    rotateKey(name) {
      return `${base}/keys/${name}/${rotate(keyOf(name)).version}`;
    },
    setEnabled(name, enabled, version) {
      const k = keyOf(name);
      k.versions.get(version ?? k.current)!.enabled = enabled;
    },
    setExpiry(name, expiresOn, version) {
      const k = keyOf(name);
      k.versions.get(version ?? k.current)!.expiresOn = expiresOn;
    },
    grant(name, clientId, permissions = 'Key Vault Crypto Service Encryption User') {
      const g = grants.get(name) ?? new Map();
      const list: readonly AzureKeyPermission[] =
        typeof permissions === 'string' ? AZURE_KEY_VAULT_ROLES[permissions] : permissions;
      if (list === undefined) throw new Error(`no role ${String(permissions)}`);
      g.set(clientId, new Set(list));
      grants.set(name, g);
    },
    revoke(name, clientId) {
      grants.get(name)?.delete(clientId);
    },
    deleteKey(name) {
      keys.delete(name);
    },
    async close() {
      hangs = [];
      for (const f of [...hung]) f();
      hung.clear();
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };

  function verifyAssertion(
    assertion: string,
    clientId: string,
    certs: readonly X509Certificate[],
    feds: readonly { issuer: string; subject: string; audience: string; publicKeyPem: string }[],
  ): boolean {
    const parts = assertion.split('.');
    if (parts.length !== 3) return false;
    let head: Record<string, unknown>;
    let claims: Record<string, unknown>;
    try {
      head = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8'));
      claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'));
    } catch {
      return false;
    }
    const now = Math.floor(Date.now() / 1000);
    if (typeof claims.exp !== 'number' || claims.exp < now - 60) return false;
    const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
    const sig = Buffer.from(parts[2]!, 'base64url');
    const check = (pem: string | KeyObject) => {
      try {
        const alg = String(head.alg);
        const hash = alg.endsWith('256') ? 'sha256' : alg.endsWith('384') ? 'sha384' : 'sha512';
        const key = typeof pem === 'string' ? createPublicKey(pem) : pem;
        const padding = alg.startsWith('PS') ? { padding: 6, saltLength: 32 } : {};
        return verify(hash, signed, { key, ...padding }, sig);
      } catch {
        return false;
      }
    };
    // A certificate credential: the app's own assertion (iss = sub = client id, aud = token endpoint).
    if (claims.iss === clientId && claims.sub === clientId && certs.some((c) => check(c.publicKey)))
      return true;
    // A federated credential: a token of a trusted issuer with the configured subject and audience.
    return feds.some((f) => {
      const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
      return (
        claims.iss === f.issuer &&
        claims.sub === f.subject &&
        aud.includes(f.audience) &&
        check(f.publicKeyPem)
      );
    });
  }
}

type KeyVaultOperation = 'getKey' | 'createKey' | 'updateKey' | 'rotateKey' | 'wrapKey' | 'unwrapKey';

const PERMISSION_OF: Record<KeyVaultOperation, AzureKeyPermission> = {
  getKey: 'get',
  createKey: 'create',
  updateKey: 'update',
  rotateKey: 'rotate',
  wrapKey: 'wrapKey',
  unwrapKey: 'unwrapKey',
};

const RBAC_ACTION: Record<AzureKeyPermission, string> = {
  get: 'Microsoft.KeyVault/vaults/keys/read',
  create: 'Microsoft.KeyVault/vaults/keys/create/action',
  update: 'Microsoft.KeyVault/vaults/keys/update/action',
  rotate: 'Microsoft.KeyVault/vaults/keys/rotate/action',
  wrapKey: 'Microsoft.KeyVault/vaults/keys/wrap/action',
  unwrapKey: 'Microsoft.KeyVault/vaults/keys/unwrap/action',
};

/** The operation of a keys request (method and path), or undefined when the method does not fit. */
function keyOperation(
  method: string,
  version: string | undefined,
  action: string | undefined,
): KeyVaultOperation | undefined {
  if (action === 'wrapkey') return method === 'POST' ? 'wrapKey' : undefined;
  if (action === 'unwrapkey') return method === 'POST' ? 'unwrapKey' : undefined;
  if (action === 'create') return method === 'POST' && version === undefined ? 'createKey' : undefined;
  if (action === 'rotate') return method === 'POST' && version === undefined ? 'rotateKey' : undefined;
  if (method === 'PATCH') return 'updateKey';
  return method === 'GET' ? 'getKey' : undefined;
}

/** A new current version of the key, of the current version's type, size and permitted operations. */
function rotate(k: AzureKeyRecord): AzureKeyVersion {
  const prev = k.versions.get(k.current)!;
  const v = newKeyVersion(k.kty, prev.keyOps, undefined, undefined, keySizeOf(prev));
  k.versions.set(v.version, v);
  k.current = v.version;
  return v;
}

function json(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'x-ms-request-id': randomUUID(),
    ...headers,
  });
  res.end(JSON.stringify(body));
}
