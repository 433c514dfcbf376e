/**
 * Onboarding artifacts for a tenant whose key lives in its own HashiCorp Vault (or OpenBao): the
 * transit key, the ACL policy the platform's login gets (encrypt, decrypt and rewrap on that one
 * key, read of its configuration: nothing else), the auth role (AppRole, Kubernetes or JWT), the
 * `vault` CLI commands and a Terraform snippet (vault provider).
 */
import { ByokConfigError } from '../errors.ts';

export interface VaultOnboardingOptions {
  readonly provider: 'vault';
  /** The tenant's Vault address (`https://vault.acme.example:8200`). */
  readonly address: string;
  /** Vault Enterprise / OpenBao namespace of the key; default none. */
  readonly namespace?: string;
  /** Transit mount; default `transit`. */
  readonly mount?: string;
  /** Transit key name; default `drizzle-byok`. */
  readonly keyName?: string;
  /** How the platform logs in; default `approle`. */
  readonly auth?: 'approle' | 'kubernetes' | 'jwt';
  /** Role name (and policy name); default `drizzle-byok`. */
  readonly roleName?: string;
  /** Kubernetes: the platform's service account and its namespace. */
  readonly serviceAccount?: string;
  readonly serviceAccountNamespace?: string;
  /** JWT: the `sub` and `aud` of the platform's identity tokens. */
  readonly boundSubject?: string;
  readonly boundAudience?: string;
}

export interface VaultOnboarding {
  readonly provider: 'vault';
  readonly tenantId: string;
  readonly externalId: null;
  /** What to give `vaultTransit({ address, namespace, mount, keyName })`. */
  readonly address: string;
  readonly namespace: string | null;
  readonly mount: string;
  readonly keyName: string;
  readonly policyName: string;
  /** The ACL policy (HCL) for the platform's login. */
  readonly policy: string;
  readonly shell: string;
  readonly terraform: string;
  readonly enableCommand: string;
}

const NAME_RE = /^[A-Za-z0-9_.-]{1,128}$/;
const PATH_RE = /^[A-Za-z0-9_.-]+(?:\/[A-Za-z0-9_.-]+)*$/;

function bad(message: string): ByokConfigError {
  return new ByokConfigError(`onboarding: ${message}`);
}

export function validateVaultOnboarding(o: VaultOnboardingOptions): VaultOnboardingOptions {
  let url: URL | undefined;
  try {
    url = new URL(o.address);
  } catch {
    url = undefined;
  }
  if (url === undefined || url.protocol !== 'https:' || (url.pathname !== '/' && url.pathname !== '')) {
    throw bad("address must be the tenant's Vault as an https:// URL (no path)");
  }
  for (const [name, v, re] of [
    ['namespace', o.namespace, PATH_RE],
    ['mount', o.mount, PATH_RE],
    ['keyName', o.keyName, NAME_RE],
    ['roleName', o.roleName, NAME_RE],
    ['serviceAccount', o.serviceAccount, NAME_RE],
    ['serviceAccountNamespace', o.serviceAccountNamespace, NAME_RE],
  ] as const) {
    if (v !== undefined && (typeof v !== 'string' || !re.test(v))) throw bad(`${name} is malformed`);
  }
  const auth = o.auth ?? 'approle';
  if (!['approle', 'kubernetes', 'jwt'].includes(auth)) throw bad('auth must be approle, kubernetes or jwt');
  if (auth === 'kubernetes' && (o.serviceAccount === undefined || o.serviceAccountNamespace === undefined)) {
    throw bad('auth kubernetes needs serviceAccount and serviceAccountNamespace (the platform pods)');
  }
  if (auth === 'jwt' && (typeof o.boundSubject !== 'string' || typeof o.boundAudience !== 'string')) {
    throw bad("auth jwt needs boundSubject and boundAudience (the platform's identity token claims)");
  }
  return o;
}

/** The ACL policy: exactly what the KEK calls, on one key. */
export function vaultPolicy(mount: string, keyName: string): string {
  return [
    `# drizzle-byok: wrap and unwrap data keys with ${mount}/keys/${keyName}, nothing else.`,
    `path "${mount}/encrypt/${keyName}" {`,
    '  capabilities = ["update"]',
    '}',
    `path "${mount}/decrypt/${keyName}" {`,
    '  capabilities = ["update"]',
    '}',
    `path "${mount}/rewrap/${keyName}" {`,
    '  capabilities = ["update"]',
    '}',
    `path "${mount}/keys/${keyName}" {`,
    '  capabilities = ["read"]',
    '}',
    '',
  ].join('\n');
}

const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
const tf = (s: string) => JSON.stringify(s);

export function vaultArtifacts(tenantId: string, o: VaultOnboardingOptions): VaultOnboarding {
  const mount = o.mount ?? 'transit';
  const keyName = o.keyName ?? 'drizzle-byok';
  const role = o.roleName ?? 'drizzle-byok';
  const auth = o.auth ?? 'approle';
  const address = new URL(o.address).origin;
  const policy = vaultPolicy(mount, keyName);
  const roleCommand =
    auth === 'approle'
      ? [
          `vault write auth/approle/role/${role} token_policies=${role} token_ttl=1h token_max_ttl=24h`,
          `vault read -field=role_id auth/approle/role/${role}/role-id`,
          `vault write -f -field=secret_id auth/approle/role/${role}/secret-id`,
          '# give the role id and the secret id to the platform over a secure channel',
        ]
      : auth === 'kubernetes'
        ? [
            `vault write auth/kubernetes/role/${role} bound_service_account_names=${o.serviceAccount} \\`,
            `  bound_service_account_namespaces=${o.serviceAccountNamespace} token_policies=${role} token_ttl=1h`,
          ]
        : [
            `vault write auth/jwt/role/${role} role_type=jwt user_claim=sub \\`,
            `  bound_subject=${shq(o.boundSubject!)} bound_audiences=${shq(o.boundAudience!)} token_policies=${role} token_ttl=1h`,
          ];
  const shell = [
    '#!/usr/bin/env bash',
    `# drizzle-byok: bring your own key for tenant ${tenantId}, in Vault at ${address}.`,
    'set -euo pipefail',
    `export VAULT_ADDR=${shq(address)}`,
    ...(o.namespace === undefined ? [] : [`export VAULT_NAMESPACE=${shq(o.namespace)}`]),
    `vault secrets list -format=json | grep -q '"${mount}/"' || vault secrets enable -path=${mount} transit`,
    `vault write -f ${mount}/keys/${keyName} type=aes256-gcm96`,
    `vault write ${mount}/keys/${keyName}/config auto_rotate_period=90d`,
    `vault policy write ${role} - <<'EOF'`,
    policy.trimEnd(),
    'EOF',
    `vault auth list -format=json | grep -q '"${auth}/"' || vault auth enable ${auth}`,
    ...roleCommand,
    '# revoke later: `vault policy delete ' + role + '` (every platform call is refused at once)',
    '',
  ].join('\n');
  const ns = o.namespace === undefined ? '' : `  namespace = ${tf(o.namespace)}\n`;
  const roleTf =
    auth === 'approle'
      ? [
          'resource "vault_approle_auth_backend_role" "drizzle_byok" {',
          ns.trimEnd(),
          '  backend        = "approle"',
          `  role_name      = ${tf(role)}`,
          '  token_policies = [vault_policy.drizzle_byok.name]',
          '  token_ttl      = 3600',
          '}',
        ]
      : auth === 'kubernetes'
        ? [
            'resource "vault_kubernetes_auth_backend_role" "drizzle_byok" {',
            ns.trimEnd(),
            '  backend                          = "kubernetes"',
            `  role_name                        = ${tf(role)}`,
            `  bound_service_account_names      = [${tf(o.serviceAccount!)}]`,
            `  bound_service_account_namespaces = [${tf(o.serviceAccountNamespace!)}]`,
            '  token_policies                   = [vault_policy.drizzle_byok.name]',
            '}',
          ]
        : [
            'resource "vault_jwt_auth_backend_role" "drizzle_byok" {',
            ns.trimEnd(),
            '  backend         = "jwt"',
            `  role_name       = ${tf(role)}`,
            '  role_type       = "jwt"',
            '  user_claim      = "sub"',
            `  bound_subject   = ${tf(o.boundSubject!)}`,
            `  bound_audiences = [${tf(o.boundAudience!)}]`,
            '  token_policies  = [vault_policy.drizzle_byok.name]',
            '}',
          ];
  const terraform = [
    `# drizzle-byok: bring your own key for tenant ${tenantId}, in Vault at ${address}.`,
    'resource "vault_transit_secret_backend_key" "drizzle_byok" {',
    ns.trimEnd(),
    `  backend            = ${tf(mount)}`,
    `  name               = ${tf(keyName)}`,
    '  type               = "aes256-gcm96"',
    '  auto_rotate_period = 7776000',
    '  deletion_allowed   = false',
    '}',
    '',
    'resource "vault_policy" "drizzle_byok" {',
    ns.trimEnd(),
    `  name   = ${tf(role)}`,
    `  policy = <<-EOT\n${policy
      .trimEnd()
      .split('\n')
      .map((l) => `    ${l}`)
      .join('\n')}\n  EOT`,
    '}',
    '',
    ...roleTf,
    '',
  ]
    .filter((l) => l !== '')
    .join('\n')
    .replace(/\n}\n(resource)/g, '\n}\n\n$1')
    .concat('\n');
  const enableCommand = [
    `drizzle-byok keys enable ${shq(tenantId)} --vault-address ${address}`,
    ...(o.namespace === undefined ? [] : [`--vault-namespace ${o.namespace}`]),
    ...(mount === 'transit' ? [] : [`--vault-mount ${mount}`]),
    `--vault-key ${keyName}`,
    auth === 'approle'
      ? '--vault-approle-role-id <role id> (secret id in VAULT_SECRET_ID)'
      : auth === 'kubernetes'
        ? `--vault-kubernetes-role ${role}`
        : `--vault-jwt-role ${role} --vault-jwt-file <token file>`,
  ].join(' ');
  return {
    provider: 'vault',
    tenantId,
    externalId: null,
    address,
    namespace: o.namespace ?? null,
    mount,
    keyName,
    policyName: role,
    policy,
    shell,
    terraform,
    enableCommand,
  };
}
