/**
 * AWS credentials: the SDK credential provider for each auth mode (static keys, assume-role chains,
 * web identity, the default chain), and descriptions of an auth mode without its secrets.
 */
import {
  fromNodeProviderChain,
  fromTemporaryCredentials,
  fromTokenFile,
  fromWebToken,
} from '@aws-sdk/credential-providers';
import { CredentialResolutionError } from './errors.ts';
import type { AwsAccessKeysAuth, AwsAuth } from './options.ts';

const DEFAULT_SESSION_NAME = 'drizzle-byok';

type CredentialProvider = ReturnType<typeof fromNodeProviderChain>;

/** Where and how the credential providers call STS. */
export interface StsSettings {
  readonly region: string;
  readonly endpoint: string | undefined;
  readonly maxAttempts: number;
}

/**
 * Builds the SDK credential provider for an auth mode. The STS clients the providers create reuse
 * the calling KMS client's request handler (timeouts included), since no `requestHandler` is given.
 */
export function credentialProvider(auth: AwsAuth, sts: StsSettings): CredentialProvider {
  const clientConfig = {
    region: sts.region,
    maxAttempts: sts.maxAttempts,
    ...(sts.endpoint === undefined ? {} : { endpoint: sts.endpoint }),
  };
  switch (auth.type) {
    case 'default':
      return fromNodeProviderChain({ clientConfig });
    case 'access-keys': {
      const identity = {
        accessKeyId: auth.accessKeyId,
        secretAccessKey: auth.secretAccessKey,
        ...(auth.sessionToken === undefined ? {} : { sessionToken: auth.sessionToken }),
      };
      return async () => identity;
    }
    case 'assume-role':
      return fromTemporaryCredentials({
        params: {
          RoleArn: auth.roleArn,
          RoleSessionName: auth.sessionName ?? DEFAULT_SESSION_NAME,
          ExternalId: auth.externalId,
          ...(auth.durationSeconds === undefined ? {} : { DurationSeconds: auth.durationSeconds }),
        },
        masterCredentials:
          auth.source === undefined
            ? fromNodeProviderChain({ clientConfig })
            : credentialProvider(auth.source, sts),
        clientConfig,
      });
    case 'web-identity': {
      const common = {
        roleArn: auth.roleArn,
        roleSessionName: auth.sessionName ?? DEFAULT_SESSION_NAME,
        ...(auth.durationSeconds === undefined ? {} : { durationSeconds: auth.durationSeconds }),
        clientConfig,
      };
      if ('tokenFile' in auth) return fromTokenFile({ ...common, webIdentityTokenFile: auth.tokenFile });
      const token = auth.token;
      return async (properties) => {
        const webIdentityToken = await token();
        if (typeof webIdentityToken !== 'string' || webIdentityToken === '') {
          throw new Error('the web identity token function returned no token');
        }
        return fromWebToken({ ...common, webIdentityToken })(properties);
      };
    }
  }
}

/** Wraps a provider so that its failures reach the error mapping as `CredentialResolutionError`. */
export function taggingCredentialErrors(provider: CredentialProvider): CredentialProvider {
  return async (properties) => {
    try {
      return await provider(properties);
    } catch (e) {
      throw new CredentialResolutionError(e);
    }
  };
}

/** Describes an auth mode without secrets, for messages and `toConfig().params.auth`. */
export function publicAuth(auth: AwsAuth): Record<string, unknown> {
  switch (auth.type) {
    case 'default':
    case 'access-keys':
      return { type: auth.type };
    case 'assume-role':
      return {
        type: auth.type,
        roleArn: auth.roleArn,
        externalId: auth.externalId,
        ...(auth.sessionName === undefined ? {} : { sessionName: auth.sessionName }),
        ...(auth.durationSeconds === undefined ? {} : { durationSeconds: auth.durationSeconds }),
        ...(auth.source === undefined ? {} : { source: publicAuth(auth.source) }),
      };
    case 'web-identity':
      return {
        type: auth.type,
        roleArn: auth.roleArn,
        ...('tokenFile' in auth ? { tokenFile: auth.tokenFile } : { tokenSource: 'function' }),
        ...(auth.sessionName === undefined ? {} : { sessionName: auth.sessionName }),
        ...(auth.durationSeconds === undefined ? {} : { durationSeconds: auth.durationSeconds }),
      };
  }
}

/** The static keys at the end of an auth chain, if any. */
export function leafAccessKeys(auth: AwsAuth): AwsAccessKeysAuth | undefined {
  if (auth.type === 'access-keys') return auth;
  if (auth.type === 'assume-role' && auth.source !== undefined) return leafAccessKeys(auth.source);
  return undefined;
}

/** A short label of an auth mode for messages: its type, and the role ARN for the role modes. */
export function describeAuth(auth: AwsAuth): string {
  switch (auth.type) {
    case 'assume-role':
      return `assume-role ${auth.roleArn}`;
    case 'web-identity':
      return `web-identity ${auth.roleArn}`;
    default:
      return auth.type;
  }
}
