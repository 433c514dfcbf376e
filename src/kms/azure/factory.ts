/** Rebuilds an Azure Key Vault KEK from its stored configuration (`toConfig()`, secret included). */
import type { KekConfig, KekFactory } from '../kek.ts';
import { AzureKeyVaultKek } from './key-vault-kek.ts';
import { type AzureCredential, azureConfigError } from './options.ts';

export const azureKekFactory: KekFactory = (config: KekConfig): AzureKeyVaultKek => {
  if (config?.kind !== 'azure-key-vault') {
    throw azureConfigError(
      `azureKekFactory: expected a config of kind azure-key-vault, got ${String(config?.kind)}`,
    );
  }
  const p = (config.params ?? {}) as Record<string, unknown>;
  const c = (p.credential ?? {}) as Record<string, unknown>;
  const s = (config.secret ?? {}) as Record<string, unknown>;
  const secret = (field: string) => {
    if (typeof s[field] !== 'string') {
      throw azureConfigError(
        `azureKekFactory: the KEK ${String(p.keyId)} needs ${field} in the config's secret part`,
      );
    }
    return s[field] as string;
  };
  let credential: AzureCredential;
  switch (c.type) {
    case 'client-secret':
      credential = {
        type: 'client-secret',
        tenantId: c.tenantId as string,
        clientId: c.clientId as string,
        clientSecret: secret('clientSecret'),
      };
      break;
    case 'client-certificate':
      credential = {
        type: 'client-certificate',
        tenantId: c.tenantId as string,
        clientId: c.clientId as string,
        certificatePem: secret('certificatePem'),
      };
      break;
    case 'workload-identity':
      credential = {
        type: 'workload-identity',
        tenantId: c.tenantId as string,
        clientId: c.clientId as string,
        tokenFilePath: c.tokenFilePath as string,
      };
      break;
    case 'managed-identity':
      credential =
        c.clientId === undefined
          ? { type: 'managed-identity' }
          : { type: 'managed-identity', clientId: c.clientId as string };
      break;
    case 'default':
      credential = { type: 'default' };
      break;
    default:
      throw azureConfigError(`azureKekFactory: unknown credential type ${String(c.type)}`);
  }
  return new AzureKeyVaultKek({
    keyId: p.keyId as string,
    credential,
    ...(p.algorithm === undefined ? {} : { algorithm: p.algorithm as 'RSA-OAEP-256' | 'A256KW' }),
    ...(p.authorityHost === undefined ? {} : { authorityHost: p.authorityHost as string }),
    ...(p.caCertificate === undefined ? {} : { caCertificate: p.caCertificate as string }),
    ...(p.timeoutMs === undefined ? {} : { timeoutMs: p.timeoutMs as number }),
    ...(p.retries === undefined ? {} : { retries: p.retries as number }),
  });
};
