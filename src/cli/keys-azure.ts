/**
 * `keys enable|rotate --azure-key-id ...`: Azure Key Vault KEKs from command-line flags. The client
 * secret comes from `AZURE_CLIENT_SECRET`, never from a flag.
 */
import { readFileSync } from 'node:fs';
import { type AzureCredential, azureKeyVault } from '../kms/azure/index.ts';
import type { Kek } from '../kms/kek.ts';
import { type Flags, UsageError } from './context.ts';

export function azureKeksFromFlags(
  f: Flags,
  keyIds: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): Kek[] {
  const tenantId = f['azure-tenant-id'] as string | undefined;
  const clientId = f['azure-client-id'] as string | undefined;
  let credential: AzureCredential;
  if (f['azure-managed-identity'] === true) {
    if (tenantId !== undefined)
      throw new UsageError('--azure-tenant-id does not go with --azure-managed-identity');
    credential =
      clientId === undefined ? { type: 'managed-identity' } : { type: 'managed-identity', clientId };
  } else if (tenantId !== undefined || clientId !== undefined) {
    if (tenantId === undefined || clientId === undefined) {
      throw new UsageError('--azure-tenant-id and --azure-client-id go together (a service principal)');
    }
    const clientSecret = env.AZURE_CLIENT_SECRET;
    if (!clientSecret)
      throw new UsageError('a service principal needs its client secret in AZURE_CLIENT_SECRET');
    credential = { type: 'client-secret', tenantId, clientId, clientSecret };
  } else {
    credential = { type: 'default' };
  }
  let caCertificate: string | undefined;
  if (f['azure-ca'] !== undefined) {
    try {
      caCertificate = readFileSync(f['azure-ca'] as string, 'utf8');
    } catch {
      throw new UsageError(`--azure-ca: cannot read ${String(f['azure-ca'])}`);
    }
  }
  return keyIds.map((keyId) =>
    azureKeyVault({
      keyId,
      credential,
      ...(f['azure-authority-host'] === undefined
        ? {}
        : { authorityHost: f['azure-authority-host'] as string }),
      ...(caCertificate === undefined ? {} : { caCertificate }),
    }),
  );
}
