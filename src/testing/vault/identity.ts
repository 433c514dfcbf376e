/**
 * Who calls the local Vault server: tokens (with policies, TTL, renewal, revocation), AppRole
 * roles and secret ids, Kubernetes roles (service account tokens signed by the server's own
 * cluster key, as the TokenReview API would accept them) and JWT roles (tokens of the server's own
 * OIDC issuer). One {@link VaultNamespaceState} per namespace.
 */
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  randomUUID,
  sign,
  verify,
} from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { parsePolicy, type VaultPolicyRule } from './policy.ts';
import type { TransitKey } from './transit.ts';

export interface VaultTokenRecord {
  readonly id: string;
  readonly accessor: string;
  readonly namespace: string;
  readonly policies: readonly string[];
  readonly displayName: string;
  readonly renewable: boolean;
  /** Seconds; 0 means no expiry (root tokens). */
  ttl: number;
  expiresAt: number;
  readonly maxExpiresAt: number;
  revoked: boolean;
}

export interface AppRoleRecord {
  readonly name: string;
  readonly roleId: string;
  readonly secretIds: Set<string>;
  policies: string[];
  tokenTtl: number;
}

export interface KubernetesRoleRecord {
  readonly name: string;
  readonly serviceAccountNames: readonly string[];
  readonly serviceAccountNamespaces: readonly string[];
  readonly policies: readonly string[];
  readonly tokenTtl: number;
}

export interface JwtRoleRecord {
  readonly name: string;
  readonly boundAudiences: readonly string[];
  readonly boundSubject: string | undefined;
  readonly policies: readonly string[];
  readonly tokenTtl: number;
}

export class VaultNamespaceState {
  readonly mounts = new Map<string, Map<string, TransitKey>>([['transit', new Map()]]);
  readonly authMounts = new Map<string, 'approle' | 'kubernetes' | 'jwt'>([
    ['approle', 'approle'],
    ['kubernetes', 'kubernetes'],
    ['jwt', 'jwt'],
  ]);
  readonly policies = new Map<string, { text: string; rules: VaultPolicyRule[] }>();
  readonly appRoles = new Map<string, AppRoleRecord>();
  readonly kubernetesRoles = new Map<string, KubernetesRoleRecord>();
  readonly jwtRoles = new Map<string, JwtRoleRecord>();
  readonly path: string;
  constructor(path: string) {
    this.path = path;
  }

  putPolicy(name: string, text: string): void {
    if (name === 'root') throw new Error('cannot update "root" policy');
    this.policies.set(name, { text, rules: parsePolicy(text) });
  }
}

const BASE62 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
function base62(n: number): string {
  const bytes = randomBytes(n);
  let s = '';
  for (const b of bytes) s += BASE62[b % 62];
  return s;
}

export class VaultTokens {
  readonly #tokens = new Map<string, VaultTokenRecord>();

  issue(o: {
    namespace: string;
    policies: readonly string[];
    ttlSeconds?: number;
    renewable?: boolean;
    displayName?: string;
    explicitMaxTtlSeconds?: number;
  }): VaultTokenRecord {
    const now = Date.now();
    const ttl = o.ttlSeconds ?? (o.policies.includes('root') ? 0 : 3600);
    const max = o.explicitMaxTtlSeconds ?? 0;
    const rec: VaultTokenRecord = {
      id: `hvs.${base62(24)}`,
      accessor: base62(24),
      namespace: o.namespace,
      policies: [...o.policies],
      displayName: o.displayName ?? 'token',
      renewable: o.renewable ?? ttl > 0,
      ttl,
      expiresAt: ttl === 0 ? Number.POSITIVE_INFINITY : now + ttl * 1000,
      maxExpiresAt: max === 0 ? Number.POSITIVE_INFINITY : now + max * 1000,
      revoked: false,
    };
    this.#tokens.set(rec.id, rec);
    return rec;
  }

  /** The live token with this id, or undefined (unknown, revoked or expired). */
  live(id: string | undefined): VaultTokenRecord | undefined {
    if (id === undefined) return undefined;
    const t = this.#tokens.get(id);
    if (t === undefined || t.revoked || Date.now() >= t.expiresAt) return undefined;
    return t;
  }

  renew(t: VaultTokenRecord): boolean {
    if (!t.renewable || t.ttl === 0) return false;
    t.expiresAt = Math.min(Date.now() + t.ttl * 1000, t.maxExpiresAt);
    return true;
  }

  revoke(id: string): boolean {
    const t = this.#tokens.get(id);
    if (t === undefined) return false;
    t.revoked = true;
    return true;
  }

  /** Revokes every token whose display name (login) is `displayName`: what `vault lease revoke -prefix` does. */
  revokeByDisplayName(displayName: string): number {
    let n = 0;
    for (const t of this.#tokens.values()) {
      if (t.displayName === displayName && !t.revoked) {
        t.revoked = true;
        n++;
      }
    }
    return n;
  }

  /** Makes a token expire now (as if its TTL ran out). */
  expire(id: string): void {
    const t = this.#tokens.get(id);
    if (t !== undefined) t.expiresAt = Date.now();
  }

  clear(keep: string): void {
    for (const id of [...this.#tokens.keys()]) if (id !== keep) this.#tokens.delete(id);
  }
}

export function authAnswer(t: VaultTokenRecord): Record<string, unknown> {
  return {
    client_token: t.id,
    accessor: t.accessor,
    policies: t.policies,
    token_policies: t.policies,
    lease_duration: t.ttl,
    renewable: t.renewable,
    entity_id: '',
    token_type: 'service',
    orphan: true,
  };
}

// -- JWTs (Kubernetes service account tokens, OIDC tokens) ---------------------------------------

const enc = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');

/** An RS256 signer the server trusts for one kind of JWT login. */
export class JwtIssuer {
  readonly #private: KeyObject;
  readonly #public: KeyObject;
  readonly kid = randomUUID();
  readonly issuer: string;
  constructor(issuer: string) {
    this.issuer = issuer;
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    this.#private = createPrivateKey(privateKey.export({ format: 'pem', type: 'pkcs8' }));
    this.#public = createPublicKey(this.#private);
  }

  sign(claims: Record<string, unknown>, ttlSeconds = 600): string {
    const now = Math.floor(Date.now() / 1000);
    const head = enc({ alg: 'RS256', typ: 'JWT', kid: this.kid });
    const body = enc({ iss: this.issuer, iat: now, nbf: now - 5, exp: now + ttlSeconds, ...claims });
    const sig = sign('sha256', Buffer.from(`${head}.${body}`), this.#private).toString('base64url');
    return `${head}.${body}.${sig}`;
  }

  /** The claims of a JWT this issuer signed and that is valid now; undefined otherwise. */
  verify(jwt: unknown): Record<string, unknown> | undefined {
    if (typeof jwt !== 'string') return undefined;
    const parts = jwt.split('.');
    if (parts.length !== 3) return undefined;
    try {
      const head = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8'));
      if (head?.alg !== 'RS256') return undefined;
      const ok = verify(
        'sha256',
        Buffer.from(`${parts[0]}.${parts[1]}`),
        this.#public,
        Buffer.from(parts[2]!, 'base64url'),
      );
      if (!ok) return undefined;
      const claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'));
      const now = Math.floor(Date.now() / 1000);
      if (claims?.iss !== this.issuer) return undefined;
      if (typeof claims.exp !== 'number' || claims.exp < now - 30) return undefined;
      if (typeof claims.nbf === 'number' && claims.nbf > now + 30) return undefined;
      return claims;
    } catch {
      return undefined;
    }
  }
}
