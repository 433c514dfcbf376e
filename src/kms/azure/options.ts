/** Options of the Azure Key Vault / Managed HSM KEK and their validation. */
import { createPrivateKey } from 'node:crypto';
import { ByokConfigError } from '../../errors.ts';
import { isLoopbackHost } from '../loopback.ts';

/** A service principal with a client secret. */
export interface AzureClientSecretCredential {
  readonly type: 'client-secret';
  readonly tenantId: string;
  readonly clientId: string;
  readonly clientSecret: string;
}

/**
 * A service principal with a certificate (PEM: certificate and its unencrypted private key). The
 * key must be RSA: `@azure/identity` (through MSAL) signs the client assertion with RS256 / PS256
 * only, so an EC (e.g. P-256) certificate cannot log in; it is refused when the KEK is created.
 */
export interface AzureClientCertificateCredential {
  readonly type: 'client-certificate';
  readonly tenantId: string;
  readonly clientId: string;
  readonly certificatePem: string;
}

/** Workload identity federation: a federated token file (AKS: `AZURE_FEDERATED_TOKEN_FILE`). */
export interface AzureWorkloadIdentityCredential {
  readonly type: 'workload-identity';
  readonly tenantId: string;
  readonly clientId: string;
  readonly tokenFilePath: string;
}

/** The managed identity of the host (system-assigned, or user-assigned by `clientId`). */
export interface AzureManagedIdentityCredential {
  readonly type: 'managed-identity';
  readonly clientId?: string;
}

/** `DefaultAzureCredential`: environment, workload identity, managed identity, Azure CLI... */
export interface AzureDefaultCredential {
  readonly type: 'default';
}

export type AzureCredential =
  | AzureClientSecretCredential
  | AzureClientCertificateCredential
  | AzureWorkloadIdentityCredential
  | AzureManagedIdentityCredential
  | AzureDefaultCredential;

export interface AzureKeyVaultOptions {
  /**
   * The key, without a version: `https://<vault>.vault.azure.net/keys/<name>` (Key Vault) or
   * `https://<hsm>.managedhsm.azure.net/keys/<name>` (Managed HSM). Wraps use the current
   * version; each wrap records the version, and unwraps use it.
   */
  readonly keyId: string;
  readonly credential: AzureCredential;
  /**
   * `RSA-OAEP-256` (RSA keys, Key Vault and Managed HSM) or `A256KW` (AES key wrap, Managed HSM
   * `oct-HSM` keys). Default `RSA-OAEP-256`.
   */
  readonly algorithm?: 'RSA-OAEP-256' | 'A256KW';
  /** Microsoft Entra authority host; default `https://login.microsoftonline.com`. */
  readonly authorityHost?: string;
  /** PEM of a CA to trust (a private endpoint's or a test server's), for Key Vault and Entra calls. */
  readonly caCertificate?: string;
  /** Deadline of each attempt in ms; default 3000. */
  readonly timeoutMs?: number;
  /** Extra attempts after 429, 5xx or a network failure; default 2. */
  readonly retries?: number;
}

export interface ResolvedAzureOptions {
  readonly keyRef: string;
  readonly vaultUrl: string;
  readonly keyName: string;
  readonly managedHsm: boolean;
  readonly credential: AzureCredential;
  readonly algorithm: 'RSA-OAEP-256' | 'A256KW';
  readonly authorityHost: string | undefined;
  readonly caCertificate: string | undefined;
  readonly timeoutMs: number;
  readonly retries: number;
  /** A loopback test server: challenge resource verification off, instance discovery off. */
  readonly local: boolean;
}

export function azureConfigError(message: string): ByokConfigError {
  return new ByokConfigError(`azureKeyVault: ${message}`);
}

const GUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const TENANT_RE =
  /^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[A-Za-z0-9.-]+\.[A-Za-z]{2,})$/i;
const KEY_NAME_RE = /^[0-9A-Za-z-]{1,127}$/;
const VAULT_HOST_RE =
  /^[0-9a-z-]{3,24}\.(?:vault\.azure\.net|vault\.azure\.cn|vault\.usgovcloudapi\.net|managedhsm\.azure\.net)$/i;

/** The parts of a versionless (or versioned) Key Vault key id. */
export function parseAzureKeyId(keyId: unknown): {
  vaultUrl: string;
  name: string;
  version: string | undefined;
  local: boolean;
  managedHsm: boolean;
} {
  const form = 'https://<vault>.vault.azure.net/keys/<name>';
  if (typeof keyId !== 'string') throw azureConfigError(`keyId must be a string like ${form}`);
  let url: URL;
  try {
    url = new URL(keyId);
  } catch {
    throw azureConfigError(`keyId must be a URL like ${form}`);
  }
  const local = isLoopbackHost(url.hostname);
  if (url.protocol !== 'https:' || url.search !== '' || url.hash !== '' || url.username !== '') {
    throw azureConfigError(`keyId must be an https URL without query or credentials, like ${form}`);
  }
  if (!local && !VAULT_HOST_RE.test(url.hostname)) {
    throw azureConfigError(`keyId must name a Key Vault or Managed HSM host (${form})`);
  }
  const parts = url.pathname.split('/').filter((p) => p !== '');
  if (parts[0] !== 'keys' || parts.length < 2 || parts.length > 3 || !KEY_NAME_RE.test(parts[1]!)) {
    throw azureConfigError(`keyId must be ${form} (key names: 1-127 of 0-9 a-z A-Z -)`);
  }
  if (parts[2] !== undefined && !/^[0-9a-f]{32}$/i.test(parts[2])) {
    throw azureConfigError('keyId: a key version is 32 hex digits');
  }
  return {
    vaultUrl: url.origin,
    name: parts[1]!,
    version: parts[2],
    local,
    managedHsm: /\.managedhsm\./i.test(url.hostname),
  };
}

function str(v: unknown, name: string, re?: RegExp): string {
  if (typeof v !== 'string' || v === '' || (re !== undefined && !re.test(v))) {
    throw azureConfigError(`${name} is missing or malformed`);
  }
  return v;
}

/** Refuses a certificate credential whose private key is not RSA, or cannot be read. */
function rsaCertificateKey(pem: string): void {
  let type: string | undefined;
  try {
    type = createPrivateKey(pem).asymmetricKeyType;
  } catch {
    throw azureConfigError(
      'credential.certificatePem: the private key cannot be read (an unencrypted PEM private key is needed)',
    );
  }
  if (type !== 'rsa') {
    throw azureConfigError(
      `credential.certificatePem: the private key is ${type ?? 'of an unknown type'}; an RSA key is needed (Microsoft Entra client assertions are signed with RS256 / PS256)`,
    );
  }
}

export function validateAzureCredential(c: unknown): AzureCredential {
  const a = c as Partial<Record<string, unknown>> | null | undefined;
  if (a === null || typeof a !== 'object') {
    throw azureConfigError(
      'credential is required: { type: "client-secret" | "client-certificate" | "workload-identity" | "managed-identity" | "default", ... }',
    );
  }
  switch (a.type) {
    case 'client-secret':
      if (typeof a.clientSecret !== 'string' || a.clientSecret === '') {
        throw azureConfigError('credential.clientSecret must be a non-empty string');
      }
      return {
        type: 'client-secret',
        tenantId: str(a.tenantId, 'credential.tenantId', TENANT_RE),
        clientId: str(a.clientId, 'credential.clientId', GUID_RE),
        clientSecret: a.clientSecret,
      };
    case 'client-certificate':
      if (
        typeof a.certificatePem !== 'string' ||
        !a.certificatePem.includes('PRIVATE KEY-----') ||
        !a.certificatePem.includes('-----BEGIN CERTIFICATE-----')
      ) {
        throw azureConfigError(
          'credential.certificatePem must hold the certificate and its private key (PEM)',
        );
      }
      rsaCertificateKey(a.certificatePem);
      return {
        type: 'client-certificate',
        tenantId: str(a.tenantId, 'credential.tenantId', TENANT_RE),
        clientId: str(a.clientId, 'credential.clientId', GUID_RE),
        certificatePem: a.certificatePem,
      };
    case 'workload-identity':
      return {
        type: 'workload-identity',
        tenantId: str(a.tenantId, 'credential.tenantId', TENANT_RE),
        clientId: str(a.clientId, 'credential.clientId', GUID_RE),
        tokenFilePath: str(a.tokenFilePath, 'credential.tokenFilePath'),
      };
    case 'managed-identity':
      return a.clientId === undefined
        ? { type: 'managed-identity' }
        : { type: 'managed-identity', clientId: str(a.clientId, 'credential.clientId', GUID_RE) };
    case 'default':
      return { type: 'default' };
    default:
      throw azureConfigError(`credential.type ${JSON.stringify(a.type)} is not one this KEK knows`);
  }
}

export function resolveAzureOptions(o: AzureKeyVaultOptions): ResolvedAzureOptions {
  if (o === null || typeof o !== 'object')
    throw azureConfigError('options are required: { keyId, credential }');
  const k = parseAzureKeyId(o.keyId);
  if (k.version !== undefined) {
    throw azureConfigError('keyId must not name a version: wraps use the current one and record it');
  }
  const algorithm = o.algorithm ?? 'RSA-OAEP-256';
  if (algorithm !== 'RSA-OAEP-256' && algorithm !== 'A256KW') {
    throw azureConfigError('algorithm must be RSA-OAEP-256 or A256KW');
  }
  if (algorithm === 'A256KW' && !k.managedHsm && !k.local) {
    throw azureConfigError(
      'algorithm A256KW needs a Managed HSM key (oct-HSM); Key Vault keys use RSA-OAEP-256',
    );
  }
  let authorityHost: string | undefined;
  if (o.authorityHost !== undefined) {
    let u: URL | undefined;
    try {
      u = new URL(o.authorityHost);
    } catch {
      u = undefined;
    }
    if (u?.protocol !== 'https:') throw azureConfigError('authorityHost must be an https URL');
    authorityHost = u.origin;
  }
  const ca = o.caCertificate;
  if (ca !== undefined && (typeof ca !== 'string' || !ca.includes('-----BEGIN CERTIFICATE-----'))) {
    throw azureConfigError('caCertificate must be PEM text');
  }
  const int = (v: unknown, name: string, min: number, max: number, d: number) => {
    if (v === undefined) return d;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      throw azureConfigError(`${name} must be an integer from ${min} to ${max}`);
    }
    return v;
  };
  return {
    keyRef: `${k.vaultUrl}/keys/${k.name}`,
    vaultUrl: k.vaultUrl,
    keyName: k.name,
    managedHsm: k.managedHsm,
    credential: validateAzureCredential(o.credential),
    algorithm,
    authorityHost,
    caCertificate: ca,
    timeoutMs: int(o.timeoutMs, 'timeoutMs', 50, 120_000, 3000),
    retries: int(o.retries, 'retries', 0, 10, 2),
    local: k.local,
  };
}
