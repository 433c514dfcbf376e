/**
 * IAM identities of the local AWS server: users with static access keys, roles with their trust
 * policies, the temporary credentials of role sessions, and OIDC providers whose HS256 tokens
 * `AssumeRoleWithWebIdentity` accepts.
 */
import { createHmac, randomBytes } from 'node:crypto';
import {
  normalizePolicy,
  type NormalizedPolicy,
  type PolicyDocument,
  type PolicyStatement,
  type Principal,
} from './policies.ts';
import { PARTITION } from './protocol.ts';

export interface AddUserOptions {
  /**
   * Whether the principal's identity-based IAM policies allow every KMS action, so that a key policy
   * statement naming its account (or the account's `:root`) applies to it, as on AWS when an IAM
   * policy grants `kms:*`. Default true. False: only statements naming the principal itself (or,
   * for a role, the role) apply, like a BYOK role with no IAM policy of its own.
   */
  iamAllowsKms?: boolean;
  /** Default `user-<n>`. */
  name?: string;
  /** Default: the server's account. */
  accountId?: string;
  /** Default: a fresh `AKIA...` id. */
  accessKeyId?: string;
  /** Default: a fresh random secret. */
  secretAccessKey?: string;
}

/** A static IAM user. `accessKeyId` / `secretAccessKey` sign requests as this user. */
export interface IamUser {
  readonly name: string;
  readonly arn: string;
  readonly accountId: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
}

/** Short form of a role trust policy; see {@link AddRoleOptions.trust}. */
export interface RoleTrust {
  /** Principals allowed to call `sts:AssumeRole` (user / role / session ARNs, account ids or root ARNs). */
  principals?: string[];
  /** When set, `AssumeRole` must pass exactly this `ExternalId` (`sts:ExternalId` condition). */
  externalId?: string;
  /** Allows `sts:AssumeRoleWithWebIdentity` with tokens of this OIDC provider. */
  webIdentity?: {
    /** ARN from {@link AwsKmsServer.addWebIdentityProvider}. */
    providerArn: string;
    /** Required `aud` claim (`<issuer>:aud` condition). */
    audience?: string;
    /** Required `sub` claim (`<issuer>:sub` condition). */
    subject?: string;
  };
}

export interface AddRoleOptions {
  /**
   * Whether the principal's identity-based IAM policies allow every KMS action, so that a key policy
   * statement naming its account (or the account's `:root`) applies to it, as on AWS when an IAM
   * policy grants `kms:*`. Default true. False: only statements naming the principal itself (or,
   * for a role, the role) apply, like a BYOK role with no IAM policy of its own.
   */
  iamAllowsKms?: boolean;
  name: string;
  /** Default: the server's account. */
  accountId?: string;
  /** Who may assume the role: the short form, or a full trust policy document. */
  trust: RoleTrust | PolicyDocument;
  /** Upper bound for `DurationSeconds`; default 3600. */
  maxSessionDurationSeconds?: number;
}

export interface IamRole {
  readonly name: string;
  readonly arn: string;
  readonly accountId: string;
}

export interface AddWebIdentityProviderOptions {
  /** Issuer URL (`iss` claim); default `https://oidc.local.test/<n>`. */
  issuer?: string;
  /** Accepted `aud` values (client ids); default `['sts.amazonaws.com']`. */
  audiences?: string[];
  /** Account the provider is registered in (the role's account); default: the server's account. */
  accountId?: string;
}

export interface WebIdentityTokenOptions {
  /** Issuer of the token; default: the first registered provider. */
  issuer?: string;
  subject: string;
  /** Default: the provider's first audience. */
  audience?: string;
  /** Lifetime; default 3600. Negative values make an already expired token. */
  expiresInSeconds?: number;
  /** Extra claims to put in the token. */
  claims?: Record<string, unknown>;
}

/** An OIDC identity provider hosted by the server; its tokens are HS256 JWTs. */
export interface WebIdentityProvider {
  readonly arn: string;
  readonly issuer: string;
  readonly audiences: readonly string[];
  /** Issues a signed token of this provider. */
  issueToken(options: Omit<WebIdentityTokenOptions, 'issuer'>): string;
}

/** The secret (and, for a session, token and expiry) behind an access key id. */
export interface Credential {
  readonly secretAccessKey: string;
  readonly sessionToken?: string;
  readonly principal: Principal;
  expiresAt?: number;
}

export interface RoleRecord {
  readonly name: string;
  readonly arn: string;
  readonly accountId: string;
  readonly roleId: string;
  readonly maxSessionDurationSeconds: number;
  readonly iamAllowsKms: boolean;
  trust: NormalizedPolicy;
}

export interface OidcProvider {
  readonly arn: string;
  readonly issuer: string;
  /** Issuer without scheme: prefix of the `:aud` / `:sub` condition keys. */
  readonly conditionPrefix: string;
  readonly audiences: readonly string[];
  readonly accountId: string;
  readonly secret: Buffer;
}

/** The temporary credentials of a new role session. */
export interface Session {
  readonly arn: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken: string;
  readonly expiresAt: number;
}

const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** A fresh access key id: `AKIA...` for users, `ASIA...` for sessions. */
function randomAccessKeyId(prefix: 'AKIA' | 'ASIA'): string {
  const bytes = randomBytes(16);
  let out = prefix;
  for (const b of bytes) out += B32[b % 32];
  return out;
}

// Web identity tokens: HS256 JWTs signed with their provider's secret.

function base64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

function signJwt(payload: Record<string, unknown>, secret: Buffer): string {
  const header = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = base64url(JSON.stringify(payload));
  const sig = createHmac('sha256', secret).update(`${header}.${body}`).digest('base64url');
  return `${header}.${body}.${sig}`;
}

export interface DecodedJwt {
  readonly header: Record<string, unknown>;
  readonly payload: Record<string, unknown>;
  readonly signingInput: string;
  readonly signature: Buffer;
}

export function decodeJwt(token: string): DecodedJwt | undefined {
  const parts = token.trim().split('.');
  if (parts.length !== 3) return undefined;
  try {
    const header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8')) as unknown;
    const payload = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as unknown;
    if (typeof header !== 'object' || header === null || typeof payload !== 'object' || payload === null) {
      return undefined;
    }
    return {
      header: header as Record<string, unknown>,
      payload: payload as Record<string, unknown>,
      signingInput: `${parts[0]}.${parts[1]}`,
      signature: Buffer.from(parts[2]!, 'base64url'),
    };
  } catch {
    return undefined;
  }
}

/** The trust policy document of a role: the short form turned into statements, or the document itself. */
function trustToPolicy(
  trust: RoleTrust | PolicyDocument,
  providers: ReadonlyMap<string, OidcProvider>,
): PolicyDocument {
  if ('Statement' in trust) return trust;
  const statements: PolicyStatement[] = [];
  if (trust.principals !== undefined && trust.principals.length > 0) {
    statements.push({
      Effect: 'Allow',
      Principal: { AWS: trust.principals },
      Action: 'sts:AssumeRole',
      ...(trust.externalId === undefined
        ? {}
        : { Condition: { StringEquals: { 'sts:ExternalId': trust.externalId } } }),
    });
  }
  if (trust.webIdentity !== undefined) {
    const provider = providers.get(trust.webIdentity.providerArn);
    if (provider === undefined) throw new Error(`unknown OIDC provider ${trust.webIdentity.providerArn}`);
    const equals: Record<string, string> = {};
    if (trust.webIdentity.audience !== undefined)
      equals[`${provider.conditionPrefix}:aud`] = trust.webIdentity.audience;
    if (trust.webIdentity.subject !== undefined)
      equals[`${provider.conditionPrefix}:sub`] = trust.webIdentity.subject;
    statements.push({
      Effect: 'Allow',
      Principal: { Federated: provider.arn },
      Action: 'sts:AssumeRoleWithWebIdentity',
      ...(Object.keys(equals).length === 0 ? {} : { Condition: { StringEquals: equals } }),
    });
  }
  if (statements.length === 0) throw new Error('role trust names no principal and no web identity provider');
  return { Version: '2012-10-17', Statement: statements };
}

/** The users, roles, sessions and OIDC providers of one server. */
export class IamDirectory {
  /** Credentials by access key id. */
  readonly credentials = new Map<string, Credential>();
  /** Roles by ARN. */
  readonly roles = new Map<string, RoleRecord>();
  /** OIDC providers by ARN. */
  readonly providers = new Map<string, OidcProvider>();
  private readonly defaultAccount: string;
  private readonly users = new Set<string>();
  private userSeq = 0;
  private providerSeq = 0;

  constructor(defaultAccount: string) {
    this.defaultAccount = defaultAccount;
  }

  addUser(o: AddUserOptions = {}): IamUser {
    const accountId = o.accountId ?? this.defaultAccount;
    const name = o.name ?? `user-${++this.userSeq}`;
    const arn = `arn:${PARTITION}:iam::${accountId}:user/${name}`;
    if (this.users.has(arn)) throw new Error(`${arn} already exists`);
    const accessKeyId = o.accessKeyId ?? randomAccessKeyId('AKIA');
    if (this.credentials.has(accessKeyId)) throw new Error(`access key ${accessKeyId} already exists`);
    const secretAccessKey = o.secretAccessKey ?? randomBytes(30).toString('base64');
    this.users.add(arn);
    this.credentials.set(accessKeyId, {
      secretAccessKey,
      principal: {
        kind: 'user',
        arn,
        accountId,
        ...(o.iamAllowsKms === false ? { iamAllowsKms: false } : {}),
      },
    });
    return { name, arn, accountId, accessKeyId, secretAccessKey };
  }

  addRole(o: AddRoleOptions): IamRole {
    const accountId = o.accountId ?? this.defaultAccount;
    if (!/^[\w+=,.@-]{1,64}$/.test(o.name)) throw new Error(`invalid role name ${o.name}`);
    const arn = `arn:${PARTITION}:iam::${accountId}:role/${o.name}`;
    if (this.roles.has(arn)) throw new Error(`${arn} already exists`);
    const role: RoleRecord = {
      name: o.name,
      arn,
      accountId,
      roleId: `AROA${randomAccessKeyId('AKIA').slice(4)}`,
      maxSessionDurationSeconds: o.maxSessionDurationSeconds ?? 3600,
      iamAllowsKms: o.iamAllowsKms !== false,
      trust: normalizePolicy(trustToPolicy(o.trust, this.providers)),
    };
    this.roles.set(arn, role);
    return { name: role.name, arn, accountId };
  }

  setRoleTrust(roleArn: string, trust: RoleTrust | PolicyDocument): void {
    const role = this.roles.get(roleArn);
    if (role === undefined) throw new Error(`no role ${roleArn}`);
    role.trust = normalizePolicy(trustToPolicy(trust, this.providers));
  }

  addWebIdentityProvider(o: AddWebIdentityProviderOptions = {}): WebIdentityProvider {
    const issuer = o.issuer ?? `https://oidc.local.test/${++this.providerSeq}`;
    const url = new URL(issuer);
    if (url.protocol !== 'https:') throw new Error('issuer must be an https URL');
    const conditionPrefix = `${url.host}${url.pathname === '/' ? '' : url.pathname}`.toLowerCase();
    const accountId = o.accountId ?? this.defaultAccount;
    const provider: OidcProvider = {
      arn: `arn:${PARTITION}:iam::${accountId}:oidc-provider/${conditionPrefix}`,
      issuer,
      conditionPrefix,
      audiences: o.audiences ?? ['sts.amazonaws.com'],
      accountId,
      secret: randomBytes(32),
    };
    if (this.providers.has(provider.arn)) throw new Error(`${provider.arn} already exists`);
    this.providers.set(provider.arn, provider);
    return {
      arn: provider.arn,
      issuer,
      audiences: provider.audiences,
      issueToken: (t) => this.issueToken(provider, t),
    };
  }

  issueWebIdentityToken(o: WebIdentityTokenOptions): string {
    const provider =
      o.issuer === undefined
        ? this.providers.values().next().value
        : [...this.providers.values()].find((p) => p.issuer === o.issuer);
    if (provider === undefined) throw new Error(`no OIDC provider for issuer ${o.issuer ?? '(any)'}`);
    return this.issueToken(provider, o);
  }

  private issueToken(provider: OidcProvider, o: Omit<WebIdentityTokenOptions, 'issuer'>): string {
    const now = Math.floor(Date.now() / 1000);
    return signJwt(
      {
        ...o.claims,
        iss: provider.issuer,
        sub: o.subject,
        aud: o.audience ?? provider.audiences[0] ?? 'sts.amazonaws.com',
        iat: now,
        exp: now + (o.expiresInSeconds ?? 3600),
      },
      provider.secret,
    );
  }

  expireSessions(): void {
    for (const c of this.credentials.values()) {
      if (c.sessionToken !== undefined) c.expiresAt = Date.now() - 1000;
    }
  }

  /** Issues the temporary credentials of a new session of `role`, valid `duration` seconds. */
  issueSession(role: RoleRecord, sessionName: string, duration: number): Session {
    const accessKeyId = randomAccessKeyId('ASIA');
    const secretAccessKey = randomBytes(30).toString('base64');
    const sessionToken = randomBytes(96).toString('base64');
    const expiresAt = Date.now() + duration * 1000;
    const arn = `arn:${PARTITION}:sts::${role.accountId}:assumed-role/${role.name}/${sessionName}`;
    this.credentials.set(accessKeyId, {
      secretAccessKey,
      sessionToken,
      expiresAt,
      principal: {
        kind: 'assumed-role',
        arn,
        accountId: role.accountId,
        roleArn: role.arn,
        ...(role.iamAllowsKms ? {} : { iamAllowsKms: false }),
      },
    });
    return { arn, accessKeyId, secretAccessKey, sessionToken, expiresAt };
  }
}
