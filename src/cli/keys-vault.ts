/**
 * `keys enable|rotate --vault-address ...`: a Vault Transit KEK from command-line flags. Secrets
 * come from the environment, never from flags (they would land in shell history and `ps`):
 * `VAULT_TOKEN` for token auth, `VAULT_SECRET_ID` for AppRole.
 */
import { readFileSync } from 'node:fs';
import type { Kek } from '../kms/kek.ts';
import { type VaultAuth, vaultTransit } from '../kms/vault/index.ts';
import { type Flags, UsageError } from './context.ts';

export function vaultKekFromFlags(f: Flags, address: string, env: NodeJS.ProcessEnv = process.env): Kek {
  const keyName = f['vault-key'];
  if (typeof keyName !== 'string' || keyName === '')
    throw new UsageError('--vault-address needs --vault-key');
  const modes = ['vault-approle-role-id', 'vault-kubernetes-role', 'vault-jwt-role'].filter(
    (k) => f[k] !== undefined,
  );
  if (modes.length > 1) throw new UsageError(`give one Vault login: --${modes.join(' or --')}`);
  if (f['vault-jwt-file'] !== undefined && f['vault-jwt-role'] === undefined) {
    throw new UsageError('--vault-jwt-file needs --vault-jwt-role');
  }
  let auth: VaultAuth;
  if (f['vault-approle-role-id'] !== undefined) {
    const secretId = env.VAULT_SECRET_ID;
    if (!secretId) throw new UsageError('--vault-approle-role-id needs the secret id in VAULT_SECRET_ID');
    auth = { type: 'approle', roleId: f['vault-approle-role-id'] as string, secretId };
  } else if (f['vault-kubernetes-role'] !== undefined) {
    auth = { type: 'kubernetes', role: f['vault-kubernetes-role'] as string };
  } else if (f['vault-jwt-role'] !== undefined) {
    const jwtFile = f['vault-jwt-file'];
    if (typeof jwtFile !== 'string') throw new UsageError('--vault-jwt-role needs --vault-jwt-file');
    auth = { type: 'jwt', role: f['vault-jwt-role'] as string, jwtFile };
  } else {
    const token = env.VAULT_TOKEN;
    if (!token) {
      throw new UsageError(
        'a Vault KEK needs a login: --vault-approle-role-id, --vault-kubernetes-role, --vault-jwt-role, or a token in VAULT_TOKEN',
      );
    }
    auth = { type: 'token', token };
  }
  let caCertificate: string | undefined;
  if (f['vault-ca'] !== undefined) {
    try {
      caCertificate = readFileSync(f['vault-ca'] as string, 'utf8');
    } catch {
      throw new UsageError(`--vault-ca: cannot read ${String(f['vault-ca'])}`);
    }
  }
  return vaultTransit({
    address,
    keyName,
    auth,
    ...(f['vault-namespace'] === undefined ? {} : { namespace: f['vault-namespace'] as string }),
    ...(f['vault-mount'] === undefined ? {} : { mount: f['vault-mount'] as string }),
    ...(caCertificate === undefined ? {} : { caCertificate }),
  });
}
