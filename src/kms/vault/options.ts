/**
 * Options of the Vault Transit KEK and their validation (every problem is a `ByokConfigError`
 * naming the option to fix; no secret is ever echoed).
 */
import { ByokConfigError } from '../../errors.ts';
import { endpointUrl } from '../loopback.ts';

/** A Vault token given as is (a periodic or long-lived token issued to the platform). */
export interface VaultTokenAuth {
  readonly type: 'token';
  readonly token: string;
}

/** AppRole: `auth/<mount>/login` with a role id and a secret id. */
export interface VaultAppRoleAuth {
  readonly type: 'approle';
  readonly roleId: string;
  readonly secretId: string;
  /** Mount path of the AppRole auth method; default `approle`. */
  readonly mount?: string;
}

/**
 * Kubernetes: `auth/<mount>/login` with the pod's service account token (read from `jwtFile`,
 * default `/var/run/secrets/kubernetes.io/serviceaccount/token`, at every login: it is rotated).
 */
export interface VaultKubernetesAuth {
  readonly type: 'kubernetes';
  readonly role: string;
  readonly jwtFile?: string;
  /** Mount path; default `kubernetes`. */
  readonly mount?: string;
}

/** JWT / OIDC: `auth/<mount>/login` with a JWT given as text or read from a file at every login. */
export interface VaultJwtAuth {
  readonly type: 'jwt';
  readonly role: string;
  /** Exactly one of `jwt` and `jwtFile`. */
  readonly jwt?: string;
  readonly jwtFile?: string;
  /** Mount path; default `jwt`. */
  readonly mount?: string;
}

export type VaultAuth = VaultTokenAuth | VaultAppRoleAuth | VaultKubernetesAuth | VaultJwtAuth;

export interface VaultTransitOptions {
  /** Vault's address, `https://vault.example.com:8200` (`http:` only for a loopback test server). */
  readonly address: string;
  /** Name of the transit key. */
  readonly keyName: string;
  /** Mount path of the transit secrets engine; default `transit`. */
  readonly mount?: string;
  /** Vault Enterprise / OpenBao namespace (`X-Vault-Namespace`), e.g. `tenants/acme`. Default none. */
  readonly namespace?: string;
  /**
   * Namespace of the auth method, when it is not the key's (e.g. a login in the root namespace);
   * default the key's namespace.
   */
  readonly authNamespace?: string;
  readonly auth: VaultAuth;
  /**
   * The key was created with `derived=true`: each wrap also sends the binding as `context` (the key
   * is then derived per tenant and data key). Default false. `describe()` checks it matches the key.
   */
  readonly derived?: boolean;
  /** PEM of the CA (or CAs) that issued Vault's TLS certificate, when it is not a public one. */
  readonly caCertificate?: string;
  /** TLS server name to verify, when it differs from the address's host. */
  readonly tlsServerName?: string;
  /** Deadline of each HTTP attempt in ms; default 3000. */
  readonly timeoutMs?: number;
  /** Extra attempts after 429, 412, 5xx or a network failure, with backoff and jitter; default 2. */
  readonly retries?: number;
  /** First backoff delay in ms, doubled per retry (capped at 2 s), with jitter; default 100. */
  readonly retryDelayMs?: number;
}

export interface ResolvedVaultOptions {
  readonly address: URL;
  readonly keyName: string;
  readonly mount: string;
  readonly namespace: string | undefined;
  readonly authNamespace: string | undefined;
  readonly auth: VaultAuth;
  readonly derived: boolean;
  readonly caCertificate: string | undefined;
  readonly tlsServerName: string | undefined;
  readonly timeoutMs: number;
  readonly retries: number;
  readonly retryDelayMs: number;
}

export const DEFAULT_TIMEOUT_MS = 3000;
export const DEFAULT_RETRIES = 2;
export const DEFAULT_RETRY_DELAY_MS = 100;
export const DEFAULT_K8S_TOKEN_FILE = '/var/run/secrets/kubernetes.io/serviceaccount/token';

const NAME_RE = /^[A-Za-z0-9_.-]{1,128}$/;
const MOUNT_RE = /^[A-Za-z0-9_.-]+(?:\/[A-Za-z0-9_.-]+)*$/;
const NAMESPACE_RE = /^[A-Za-z0-9_.-]+(?:\/[A-Za-z0-9_.-]+)*\/?$/;

export function vaultConfigError(message: string): ByokConfigError {
  return new ByokConfigError(`vaultTransit: ${message}`);
}

function str(v: unknown, name: string, re?: RegExp, what?: string): string {
  if (typeof v !== 'string' || v === '') throw vaultConfigError(`${name} must be a non-empty string`);
  if (re !== undefined && !re.test(v)) throw vaultConfigError(`${name} ${what ?? 'is malformed'}`);
  return v;
}

function optionalStr(v: unknown, name: string, re?: RegExp, what?: string): string | undefined {
  return v === undefined ? undefined : str(v, name, re, what);
}

function int(v: unknown, name: string, min: number, max: number, fallback: number): number {
  if (v === undefined) return fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw vaultConfigError(`${name} must be an integer from ${min} to ${max}`);
  }
  return v;
}

function secretStr(v: unknown, name: string): string {
  // Never echo the value: only say what is wrong with it.
  if (typeof v !== 'string' || v.length === 0 || v.length > 16_384 || /\s/.test(v)) {
    throw vaultConfigError(`${name} must be a non-empty string without whitespace`);
  }
  return v;
}

export function validateVaultAuth(auth: unknown): VaultAuth {
  const a = auth as Partial<Record<string, unknown>> | null | undefined;
  if (a === null || typeof a !== 'object') {
    throw vaultConfigError('auth is required: { type: "token" | "approle" | "kubernetes" | "jwt", ... }');
  }
  const mount = optionalStr(a.mount, 'auth.mount', MOUNT_RE, 'must be a mount path such as approle');
  switch (a.type) {
    case 'token':
      return { type: 'token', token: secretStr(a.token, 'auth.token') };
    case 'approle':
      return {
        type: 'approle',
        roleId: str(a.roleId, 'auth.roleId'),
        secretId: secretStr(a.secretId, 'auth.secretId'),
        ...(mount === undefined ? {} : { mount }),
      };
    case 'kubernetes': {
      const jwtFile = optionalStr(a.jwtFile, 'auth.jwtFile');
      return {
        type: 'kubernetes',
        role: str(a.role, 'auth.role', NAME_RE, 'must be a Vault role name'),
        ...(jwtFile === undefined ? {} : { jwtFile }),
        ...(mount === undefined ? {} : { mount }),
      };
    }
    case 'jwt': {
      if ((a.jwt === undefined) === (a.jwtFile === undefined)) {
        throw vaultConfigError('auth: give exactly one of jwt and jwtFile');
      }
      return {
        type: 'jwt',
        role: str(a.role, 'auth.role', NAME_RE, 'must be a Vault role name'),
        ...(a.jwt === undefined ? {} : { jwt: secretStr(a.jwt, 'auth.jwt') }),
        ...(a.jwtFile === undefined ? {} : { jwtFile: str(a.jwtFile, 'auth.jwtFile') }),
        ...(mount === undefined ? {} : { mount }),
      };
    }
    default:
      throw vaultConfigError(
        `auth.type must be "token", "approle", "kubernetes" or "jwt" (got ${JSON.stringify(a.type)})`,
      );
  }
}

export function resolveVaultOptions(options: VaultTransitOptions): ResolvedVaultOptions {
  if (options === null || typeof options !== 'object') {
    throw vaultConfigError('options are required: { address, keyName, auth }');
  }
  const address = endpointUrl(options.address);
  if (address === undefined) {
    throw vaultConfigError(
      'address must be an https:// URL of Vault without credentials, query or fragment (http:// only for a loopback test server)',
    );
  }
  if (address.pathname !== '/' && address.pathname !== '') {
    throw vaultConfigError('address must be the server only (no path such as /v1)');
  }
  const ca = options.caCertificate;
  if (ca !== undefined && (typeof ca !== 'string' || !ca.includes('-----BEGIN CERTIFICATE-----'))) {
    throw vaultConfigError('caCertificate must be PEM text (-----BEGIN CERTIFICATE-----)');
  }
  if (options.derived !== undefined && typeof options.derived !== 'boolean') {
    throw vaultConfigError('derived must be a boolean');
  }
  return {
    address,
    keyName: str(options.keyName, 'keyName', NAME_RE, 'must be a transit key name (A-Z a-z 0-9 _ . -)'),
    mount: optionalStr(options.mount, 'mount', MOUNT_RE, 'must be a mount path such as transit') ?? 'transit',
    namespace: normalizeNamespace(optionalStr(options.namespace, 'namespace', NAMESPACE_RE)),
    authNamespace: normalizeNamespace(optionalStr(options.authNamespace, 'authNamespace', NAMESPACE_RE)),
    auth: validateVaultAuth(options.auth),
    derived: options.derived ?? false,
    caCertificate: ca,
    tlsServerName: optionalStr(options.tlsServerName, 'tlsServerName'),
    timeoutMs: int(options.timeoutMs, 'timeoutMs', 50, 120_000, DEFAULT_TIMEOUT_MS),
    retries: int(options.retries, 'retries', 0, 10, DEFAULT_RETRIES),
    retryDelayMs: int(options.retryDelayMs, 'retryDelayMs', 0, 10_000, DEFAULT_RETRY_DELAY_MS),
  };
}

function normalizeNamespace(ns: string | undefined): string | undefined {
  return ns === undefined ? undefined : ns.replace(/\/$/, '');
}

/**
 * The KEK reference: the key's own URL in Vault's API, namespace included
 * (`https://vault:8200/v1/<namespace>/<mount>/keys/<name>`), stable and not secret.
 */
export function vaultKeyRef(o: ResolvedVaultOptions): string {
  const ns = o.namespace === undefined ? '' : `${o.namespace}/`;
  return `${o.address.origin}/v1/${ns}${o.mount}/keys/${o.keyName}`;
}
