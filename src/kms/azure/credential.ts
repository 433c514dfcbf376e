/** The `@azure/identity` credential for a KEK's options (trusting `caCertificate` when given). */
import {
  ClientCertificateCredential,
  ClientSecretCredential,
  DefaultAzureCredential,
  ManagedIdentityCredential,
  type TokenCredential,
  WorkloadIdentityCredential,
} from '@azure/identity';
import type { AzureCredential, ResolvedAzureOptions } from './options.ts';

/** Pipeline options shared by the Key Vault clients and the credential (TLS trust, retries off). */
export function pipelineOptions(o: ResolvedAzureOptions): Record<string, unknown> {
  return {
    ...(o.caCertificate === undefined ? {} : { tlsOptions: { ca: o.caCertificate } }),
    // The KEK retries by itself (bounded, jittered); the SDK's own retries would multiply it.
    retryOptions: { maxRetries: 0 },
  };
}

export function azureCredential(o: ResolvedAzureOptions): TokenCredential {
  const c = o.credential;
  const common = {
    ...pipelineOptions(o),
    ...(o.authorityHost === undefined ? {} : { authorityHost: o.authorityHost }),
    // A loopback test server is its own authority: no instance discovery against the cloud.
    ...(o.local ? { disableInstanceDiscovery: true } : {}),
  };
  switch (c.type) {
    case 'client-secret':
      return new ClientSecretCredential(c.tenantId, c.clientId, c.clientSecret, common);
    case 'client-certificate':
      return new ClientCertificateCredential(
        c.tenantId,
        c.clientId,
        { certificate: c.certificatePem },
        common,
      );
    case 'workload-identity':
      return new WorkloadIdentityCredential({
        ...common,
        tenantId: c.tenantId,
        clientId: c.clientId,
        tokenFilePath: c.tokenFilePath,
      });
    case 'managed-identity':
      return c.clientId === undefined
        ? new ManagedIdentityCredential(common)
        : new ManagedIdentityCredential({ ...common, clientId: c.clientId });
    case 'default':
      return new DefaultAzureCredential(common);
  }
}

export function describeAzureCredential(c: AzureCredential): string {
  switch (c.type) {
    case 'client-secret':
      return `service principal ${c.clientId} (client secret) in tenant ${c.tenantId}`;
    case 'client-certificate':
      return `service principal ${c.clientId} (certificate) in tenant ${c.tenantId}`;
    case 'workload-identity':
      return `workload identity ${c.clientId} in tenant ${c.tenantId}`;
    case 'managed-identity':
      return c.clientId === undefined
        ? 'the system-assigned managed identity'
        : `managed identity ${c.clientId}`;
    case 'default':
      return 'the default Azure credential chain';
  }
}
