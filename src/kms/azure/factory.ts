/** Rebuilds an Azure Key Vault KEK from its stored configuration (`toConfig()`, secret included). */
import type { KekConfig, KekFactory } from '../kek.ts';
import { AzureKeyVaultKek } from './key-vault-kek.ts';
import { type AzureCredential, azureConfigError } from './options.ts';

/** The credential field stored in the config's secret part, per credential type. */
const SECRET_FIELD: Readonly<Record<string, string>> = {
  'client-secret': 'clientSecret',
  'client-certificate': 'certificatePem',
};

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
  // The public fields come from params, the secret one (if the type has one) from the secret part;
  // the KEK's option validation checks each field of the credential type.
  const secretField = SECRET_FIELD[String(c.type)];
  const credential = {
    ...c,
    ...(secretField === undefined ? {} : { [secretField]: secret(secretField) }),
  } as unknown as AzureCredential;
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
