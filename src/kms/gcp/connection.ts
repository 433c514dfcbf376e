/**
 * The Cloud KMS client a KEK creates: the Google packages loaded on first use, the service account
 * or application default credentials, and on insecure (loopback) channels a token signed per call.
 */
import type { ClientOptions } from 'google-gax';
import { CredentialFailure } from './errors.ts';
import type { GcpKmsClientLike, ResolvedOptions } from './options.ts';
import type { ParsedServiceAccount } from './credentials.ts';

const CLOUD_PLATFORM_SCOPE = 'https://www.googleapis.com/auth/cloud-platform';

interface GoogleModules {
  readonly KeyManagementServiceClient: new (
    options: ClientOptions,
    gax: typeof import('google-gax'),
  ) => GcpKmsClientLike;
  readonly gax: typeof import('google-gax');
}

/** Loads the Google packages on first use (never at import time). */
async function loadGoogle(): Promise<GoogleModules> {
  const [kmsNs, gaxNs] = await Promise.all([import('@google-cloud/kms'), import('google-gax')]);
  // CommonJS packages: under Node's ESM loader `default` is `module.exports`.
  const kms = (kmsNs as unknown as { default?: typeof kmsNs }).default ?? kmsNs;
  const gax = (gaxNs as unknown as { default?: typeof gaxNs }).default ?? gaxNs;
  return {
    KeyManagementServiceClient:
      kms.KeyManagementServiceClient as unknown as GoogleModules['KeyManagementServiceClient'],
    gax,
  };
}

/** A client, and what each of its calls needs besides. */
export interface Connection {
  readonly client: GcpKmsClientLike;
  /** For insecure channels: the `authorization` value to send with each call. */
  readonly authorization: (() => Promise<string>) | undefined;
}

/** Creates the client for validated options (loading the Google packages the first time). */
export async function createConnection(o: ResolvedOptions): Promise<Connection> {
  const sa = o.serviceAccount;
  const { KeyManagementServiceClient, gax } = await loadGoogle();
  const { GoogleAuth, JWT } = gax.googleAuthLibrary;
  /** A google-auth-library JWT client that signs its tokens locally (never exchanges the key). */
  const serviceAccountJwt = (account: ParsedServiceAccount, scopes: string[] | undefined) => {
    const client = new JWT({
      email: account.clientEmail,
      key: account.json.private_key,
      ...(account.json.private_key_id === undefined ? {} : { keyId: account.json.private_key_id }),
      ...(scopes === undefined ? {} : { scopes }),
    });
    // With scopes, a self-signed JWT carrying them (what the KMS client asks for anyway); without,
    // a self-signed JWT whose audience is the URL given to getRequestHeaders().
    client.useJWTAccessWithScope = scopes !== undefined;
    return client;
  };
  const options: ClientOptions = {
    ...(o.apiEndpoint === undefined ? {} : { apiEndpoint: o.apiEndpoint }),
    ...(o.port === undefined ? {} : { port: o.port }),
    ...(sa === undefined ? {} : { authClient: serviceAccountJwt(sa, [CLOUD_PLATFORM_SCOPE]) }),
  };
  let authorization: (() => Promise<string>) | undefined;
  if (o.insecure && o.apiEndpoint !== undefined) {
    options.sslCreds = gax.grpc.credentials.createInsecure();
    // gax attaches no call credentials when sslCreds is given (and gRPC refuses them on insecure
    // channels), so each call carries a token signed here, whose audience is the local endpoint
    // and which has no scope: worthless against real Google APIs.
    const host =
      o.apiEndpoint.includes(':') && !o.apiEndpoint.startsWith('[') ? `[${o.apiEndpoint}]` : o.apiEndpoint;
    const audience = `http://${host}:${o.port}/`;
    const signer = sa === undefined ? new GoogleAuth() : serviceAccountJwt(sa, undefined);
    authorization = async () => {
      let value: string | null;
      try {
        value = (await signer.getRequestHeaders(audience)).get('authorization');
      } catch (e) {
        throw new CredentialFailure(e);
      }
      if (!value) throw new CredentialFailure(new Error('no authorization header was produced'));
      return value;
    };
  }
  return { client: new KeyManagementServiceClient(options, gax), authorization };
}
