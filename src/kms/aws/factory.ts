/** Rebuilds an AWS KMS KEK from its stored configuration (`toConfig()`, secret included). */
import { ByokConfigError } from '../../errors.ts';
import type { KekConfig, KekFactory } from '../kek.ts';
import { parseAwsKmsKeyArn } from './arn.ts';
import { AwsKmsKek } from './kms-kek.ts';
import type {
  AwsAssumeRoleAuth,
  AwsAuth,
  AwsWebIdentityFileAuth,
  AwsWebIdentityTokenAuth,
} from './options.ts';

export interface AwsKekFactoryOptions {
  /**
   * Token source for `web-identity` configurations created with a `token` function (functions are
   * not stored). Called at each credential refresh.
   */
  webIdentityToken?: (target: { keyArn: string; roleArn: string }) => Promise<string> | string;
}

function rebuildAuth(
  raw: unknown,
  secret: Readonly<Record<string, unknown>> | undefined,
  keyArn: string,
  factory: AwsKekFactoryOptions,
): AwsAuth {
  if (typeof raw !== 'object' || raw === null)
    throw new ByokConfigError('awsKekFactory: params.auth is missing');
  const a = raw as Record<string, unknown>;
  switch (a.type) {
    case 'access-keys': {
      if (secret === undefined)
        throw new ByokConfigError('awsKekFactory: access-keys auth needs the secret part of the config');
      return {
        type: 'access-keys',
        accessKeyId: secret.accessKeyId as string,
        secretAccessKey: secret.secretAccessKey as string,
        ...(secret.sessionToken === undefined ? {} : { sessionToken: secret.sessionToken as string }),
      };
    }
    case 'assume-role':
      return {
        ...(a as unknown as AwsAssumeRoleAuth),
        ...(a.source === undefined ? {} : { source: rebuildAuth(a.source, secret, keyArn, factory) }),
      };
    case 'web-identity': {
      const { tokenSource, ...rest } = a;
      if (tokenSource !== 'function') return rest as unknown as AwsWebIdentityFileAuth;
      const supply = factory.webIdentityToken;
      if (supply === undefined) {
        throw new ByokConfigError(
          `awsKekFactory: the KEK ${keyArn} uses a web identity token function, which cannot be stored; ` +
            'register createAwsKekFactory({ webIdentityToken }) instead of awsKekFactory',
        );
      }
      const roleArn = a.roleArn as string;
      return {
        ...(rest as unknown as Omit<AwsWebIdentityTokenAuth, 'token'>),
        token: () => supply({ keyArn, roleArn }),
      };
    }
    default:
      return a as unknown as AwsAuth;
  }
}

/** A `KekFactory` for `aws-kms` configurations, with the runtime parts a configuration cannot hold. */
export function createAwsKekFactory(factoryOptions: AwsKekFactoryOptions = {}): KekFactory {
  return (config: KekConfig) => {
    if (config?.kind !== 'aws-kms') {
      throw new ByokConfigError(
        `awsKekFactory: expected a config of kind aws-kms, got ${String(config?.kind)}`,
      );
    }
    const p = config.params;
    const keyArn = parseAwsKmsKeyArn(p.keyArn) && (p.keyArn as string);
    return new AwsKmsKek({
      keyArn,
      auth: rebuildAuth(p.auth, config.secret, keyArn, factoryOptions),
      ...(p.region === undefined ? {} : { region: p.region as string }),
      ...(p.endpoint === undefined ? {} : { endpoint: p.endpoint as string }),
      ...(p.stsEndpoint === undefined ? {} : { stsEndpoint: p.stsEndpoint as string }),
      ...(p.timeoutMs === undefined ? {} : { timeoutMs: p.timeoutMs as number }),
      ...(p.maxAttempts === undefined ? {} : { maxAttempts: p.maxAttempts as number }),
    });
  };
}

/** Rebuilds an AWS KMS KEK from `toConfig()` output (web identity token functions excepted). */
export const awsKekFactory: KekFactory = createAwsKekFactory();
