/**
 * Authentication of the local Cloud KMS server: service accounts and their RSA keys (key files as
 * the Cloud console downloads them), the bearer tokens accepted (RS256 JWTs self-signed with a
 * service-account key, opaque access tokens), and the principal a call runs as.
 */
import {
  createPublicKey,
  createSign,
  createVerify,
  generateKeyPair,
  type KeyObject,
  randomBytes,
} from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { RpcError } from './protocol.ts';

/** A service-account key file, as the Cloud console downloads it. */
export interface GcpServiceAccountKey {
  readonly type: 'service_account';
  readonly project_id: string;
  readonly private_key_id: string;
  /** PKCS#8 PEM. */
  readonly private_key: string;
  readonly client_email: string;
  readonly client_id: string;
  readonly auth_uri: string;
  readonly token_uri: string;
  readonly auth_provider_x509_cert_url: string;
  readonly client_x509_cert_url: string;
  readonly universe_domain: string;
}

export interface CreateServiceAccountOptions {
  /** The part before `@`; default `sa-<random>`. 6..30 chars, lowercase letters, digits, hyphens. */
  accountId?: string;
  /** Default: the server's project. */
  projectId?: string;
}

/** What kind of bearer token authenticated a call. */
export interface GcpKmsTokenInfo {
  readonly kind: 'self-signed-jwt' | 'access-token';
  readonly audience?: string;
  readonly scope?: string;
}

interface ServiceAccountKeyState {
  readonly id: string;
  readonly email: string;
  readonly publicKey: KeyObject;
  readonly privateKeyPem: string;
}

export interface Principal {
  readonly email: string;
  readonly token: GcpKmsTokenInfo;
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

function signJwt(
  key: ServiceAccountKeyState,
  claims: Record<string, unknown>,
  header: Record<string, unknown> = { alg: 'RS256', typ: 'JWT', kid: key.id },
): string {
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const signature = createSign('RSA-SHA256').update(input).sign(key.privateKeyPem);
  return `${input}.${b64url(signature)}`;
}

const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);
const ACCEPTED_SCOPES = new Set([
  'https://www.googleapis.com/auth/cloud-platform',
  'https://www.googleapis.com/auth/cloudkms',
]);
const UNAUTHENTICATED_MESSAGE =
  'Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or ' +
  'other valid authentication credential.';

/** The member string of a key file, an email or a member string (`serviceAccount:<email>`...). */
export function memberString(member: GcpServiceAccountKey | string): string {
  if (typeof member === 'object' && member !== null) return `serviceAccount:${member.client_email}`;
  if (member === 'allUsers' || member === 'allAuthenticatedUsers' || member.startsWith('serviceAccount:')) {
    return member;
  }
  return `serviceAccount:${member}`;
}

/** The service accounts, their keys and the access tokens of one server. */
export class ServiceAccounts {
  /** Keys by private key id. */
  private readonly saKeys = new Map<string, ServiceAccountKeyState>();
  /** Service accounts by email. */
  private readonly serviceAccounts = new Map<string, { projectId: string }>();
  private readonly accessTokens = new Map<string, { email: string; expires: number }>();
  private readonly projectId: string;
  /** Accepted clock skew for JWT `iat` / `exp`, in seconds. */
  private readonly skew: number;
  /** The server's port, accepted in a JWT `aud` naming its loopback URL (0 until bound). */
  port = 0;

  constructor(projectId: string, skew: number) {
    this.projectId = projectId;
    this.skew = skew;
  }

  private async newKey(email: string, project: string): Promise<GcpServiceAccountKey> {
    const { publicKey, privateKey } = await new Promise<{ publicKey: string; privateKey: string }>(
      (resolve, reject) =>
        generateKeyPair(
          'rsa',
          {
            modulusLength: 2048,
            publicKeyEncoding: { type: 'spki', format: 'pem' },
            privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
          },
          (err, pub, priv) => (err ? reject(err) : resolve({ publicKey: pub, privateKey: priv })),
        ),
    );
    const id = randomBytes(20).toString('hex');
    this.saKeys.set(id, { id, email, publicKey: createPublicKey(publicKey), privateKeyPem: privateKey });
    const clientId = `1${randomBytes(10).readBigUInt64BE().toString().padStart(20, '0')}`.slice(0, 21);
    return Object.freeze({
      type: 'service_account',
      project_id: project,
      private_key_id: id,
      private_key: privateKey,
      client_email: email,
      client_id: clientId,
      auth_uri: 'https://accounts.google.com/o/oauth2/auth',
      token_uri: 'https://oauth2.googleapis.com/token',
      auth_provider_x509_cert_url: 'https://www.googleapis.com/oauth2/v1/certs',
      client_x509_cert_url: `https://www.googleapis.com/robot/v1/metadata/x509/${encodeURIComponent(email)}`,
      universe_domain: 'googleapis.com',
    });
  }

  async create(o: CreateServiceAccountOptions = {}): Promise<GcpServiceAccountKey> {
    const project = o.projectId ?? this.projectId;
    const accountId = o.accountId ?? `sa-${randomBytes(4).toString('hex')}`;
    if (!/^[a-z][a-z0-9-]{4,28}[a-z0-9]$/.test(accountId)) throw new Error(`invalid account id ${accountId}`);
    const email = `${accountId}@${project.replace(/^.*:/, '')}.iam.gserviceaccount.com`;
    if (this.serviceAccounts.has(email)) throw new Error(`service account ${email} already exists`);
    this.serviceAccounts.set(email, { projectId: project });
    return this.newKey(email, project);
  }

  private keyStateOf(credentials: GcpServiceAccountKey): ServiceAccountKeyState {
    const k = this.saKeys.get(credentials.private_key_id);
    if (!k || k.email !== credentials.client_email) {
      throw new Error(
        `the key ${credentials.private_key_id} of ${credentials.client_email} is not known here`,
      );
    }
    return k;
  }

  authenticate(metadata: grpc.Metadata): Principal {
    const values = metadata.get('authorization');
    const header = values.length === 1 ? String(values[0]) : undefined;
    if (header === undefined || header === '') {
      throw new RpcError(
        grpc.status.UNAUTHENTICATED,
        'Request is missing required authentication credential. Expected OAuth 2 access token, login ' +
          'cookie or other valid authentication credential.',
      );
    }
    const m = /^Bearer\s+(\S+)$/i.exec(header);
    const principal = m ? this.verifyToken(m[1]!) : undefined;
    if (!principal) throw new RpcError(grpc.status.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE);
    return principal;
  }

  private verifyToken(token: string): Principal | undefined {
    const opaque = this.accessTokens.get(token);
    if (opaque) {
      return opaque.expires > Date.now() && this.serviceAccounts.has(opaque.email)
        ? { email: opaque.email, token: { kind: 'access-token' } }
        : undefined;
    }
    const parts = token.split('.');
    if (parts.length !== 3) return undefined;
    let header: Record<string, unknown>;
    let claims: Record<string, unknown>;
    try {
      header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8'));
      claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'));
    } catch {
      return undefined;
    }
    if (header.alg !== 'RS256' || typeof claims.iss !== 'string' || claims.sub !== claims.iss)
      return undefined;
    const email = claims.iss;
    if (!this.serviceAccounts.has(email)) return undefined;
    const candidates =
      typeof header.kid === 'string'
        ? [this.saKeys.get(header.kid)].filter((k) => k !== undefined)
        : [...this.saKeys.values()];
    const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
    const signature = Buffer.from(parts[2]!, 'base64url');
    const key = candidates.find(
      (k) => k.email === email && createVerify('RSA-SHA256').update(signed).verify(k.publicKey, signature),
    );
    if (!key) return undefined;
    const now = Date.now() / 1000;
    const iat = Number(claims.iat);
    const exp = Number(claims.exp);
    if (!Number.isFinite(iat) || !Number.isFinite(exp)) return undefined;
    if (iat > now + this.skew || exp < now - this.skew || exp - iat > 3600 + this.skew) return undefined;
    const scopes = typeof claims.scope === 'string' ? claims.scope.split(/\s+/) : [];
    if (!scopes.some((s) => ACCEPTED_SCOPES.has(s)) && !this.audienceAccepted(claims.aud)) return undefined;
    return {
      email,
      token: Object.freeze({
        kind: 'self-signed-jwt',
        ...(typeof claims.aud === 'string' ? { audience: claims.aud } : {}),
        ...(typeof claims.scope === 'string' ? { scope: claims.scope } : {}),
      }),
    };
  }

  private audienceAccepted(aud: unknown): boolean {
    if (typeof aud !== 'string') return false;
    if (aud === 'https://cloudkms.googleapis.com/' || aud === 'https://cloudkms.googleapis.com') return true;
    try {
      const u = new URL(aud);
      return LOOPBACK_HOSTS.has(u.hostname) && Number(u.port) === this.port;
    } catch {
      return false;
    }
  }

  /** Creates another key for an existing service account. */
  async createKey(email: string): Promise<GcpServiceAccountKey> {
    const sa = this.serviceAccounts.get(email);
    if (!sa) throw new Error(`no service account ${email}`);
    return this.newKey(email, sa.projectId);
  }

  deleteKey(privateKeyId: string): void {
    if (!this.saKeys.delete(privateKeyId)) throw new Error(`no service-account key ${privateKeyId}`);
  }

  issueAccessToken(member: GcpServiceAccountKey | string, o: { ttlSeconds?: number } = {}): string {
    const email = memberString(member).replace(/^serviceAccount:/, '');
    if (!this.serviceAccounts.has(email)) throw new Error(`no service account ${email}`);
    const token = `ya29.local-${randomBytes(24).toString('base64url')}`;
    this.accessTokens.set(token, { email, expires: Date.now() + (o.ttlSeconds ?? 3600) * 1000 });
    return token;
  }

  /** A token self-signed with `credentials`' key, audience this server (for `callOptions`). */
  selfSignedToken(credentials: GcpServiceAccountKey): string {
    const now = Math.floor(Date.now() / 1000);
    return signJwt(this.keyStateOf(credentials), {
      iss: credentials.client_email,
      sub: credentials.client_email,
      aud: `http://127.0.0.1:${this.port}/`,
      iat: now,
      exp: now + 3600,
    });
  }

  /** Removes every access token, and every service account and key but those of `keepEmail`. */
  reset(keepEmail: string): void {
    this.accessTokens.clear();
    for (const [id, k] of this.saKeys) if (k.email !== keepEmail) this.saKeys.delete(id);
    for (const email of this.serviceAccounts.keys())
      if (email !== keepEmail) this.serviceAccounts.delete(email);
  }
}
