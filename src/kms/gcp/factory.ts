/** Rebuilds a Cloud KMS KEK from its stored configuration (`toConfig()`, secret included). */
import { ByokConfigError } from '../../errors.ts';
import type { KekConfig, KekFactory } from '../kek.ts';
import { GcpKmsKek } from './cloud-kms-kek.ts';
import type { GcpCredentials, GcpServiceAccountKeyJson } from './credentials.ts';

/** Rebuilds a Cloud KMS KEK from `toConfig()` output (`secret` included). */
export const gcpKekFactory: KekFactory = (config: KekConfig): GcpKmsKek => {
  if (config?.kind !== 'gcp-kms') {
    throw new ByokConfigError(
      `gcpKekFactory: expected a config of kind gcp-kms, got ${String(config?.kind)}`,
    );
  }
  const p = (config.params ?? {}) as Record<string, unknown>;
  let credentials: GcpCredentials;
  if (p.credentialType === 'service-account') {
    const key = config.secret?.serviceAccountKey;
    if (key === undefined) {
      throw new ByokConfigError(
        `gcpKekFactory: the KEK ${String(p.keyName)} uses a service-account key, but the config has no secret part`,
      );
    }
    credentials = { type: 'service-account', key: key as GcpServiceAccountKeyJson | string };
  } else if (p.credentialType === 'default') {
    credentials = { type: 'default' };
  } else {
    throw new ByokConfigError(`gcpKekFactory: unknown credentialType ${String(p.credentialType)}`);
  }
  return new GcpKmsKek({
    keyName: p.keyName as string,
    credentials,
    ...(p.apiEndpoint === undefined ? {} : { apiEndpoint: p.apiEndpoint as string }),
    ...(p.port === undefined ? {} : { port: p.port as number }),
    ...(p.insecure === undefined ? {} : { insecure: p.insecure as boolean }),
    ...(p.timeoutMs === undefined ? {} : { timeoutMs: p.timeoutMs as number }),
    ...(p.retries === undefined ? {} : { retries: p.retries as number }),
    ...(p.retryDelayMs === undefined ? {} : { retryDelayMs: p.retryDelayMs as number }),
  });
};
