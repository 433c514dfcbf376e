/** In-process administration of one namespace of the local Vault server (no HTTP, no policy check). */
import { randomUUID } from 'node:crypto';
import type { VaultNamespaceState } from './identity.ts';
import type { ServerState } from './answers.ts';
import {
  type CreateTransitKeyOptions,
  newTransitKey,
  rotateTransitKey,
  type TransitKey,
  transitKeyData,
} from './transit.ts';

export interface VaultKeyConfig {
  readonly minDecryptionVersion?: number;
  readonly minEncryptionVersion?: number;
  readonly deletionAllowed?: boolean;
}

export interface VaultTokenOptions {
  readonly policies: readonly string[];
  /** Default 3600; 0 for no expiry. */
  readonly ttlSeconds?: number;
  /** Default true when the token expires. */
  readonly renewable?: boolean;
  readonly displayName?: string;
}

export class VaultAdmin {
  readonly state: ServerState;
  ns: VaultNamespaceState;
  constructor(state: ServerState, ns: VaultNamespaceState) {
    this.state = state;
    this.ns = ns;
  }

  /** The namespace path (`''` for the root namespace). */
  get path(): string {
    return this.ns.path;
  }

  /** Enables another transit mount (like `vault secrets enable -path=<path> transit`). */
  mountTransit(path: string): void {
    if (!this.ns.mounts.has(path)) this.ns.mounts.set(path, new Map());
  }

  #mount(mount: string): Map<string, TransitKey> {
    const m = this.ns.mounts.get(mount);
    if (m === undefined) throw new Error(`no transit mount at ${mount}/ in namespace "${this.ns.path}"`);
    return m;
  }

  #key(name: string, mount: string): TransitKey {
    const k = this.#mount(mount).get(name);
    if (k === undefined)
      throw new Error(`no transit key ${mount}/keys/${name} in namespace "${this.ns.path}"`);
    return k;
  }

  /** Creates a transit key (default aes256-gcm96); returns its name. */
  createKey(
    name: string = `byok-${randomUUID().slice(0, 8)}`,
    o: CreateTransitKeyOptions & { mount?: string } = {},
  ): string {
    const m = this.#mount(o.mount ?? 'transit');
    if (m.has(name)) throw new Error(`transit key ${name} exists`);
    m.set(name, newTransitKey(name, o));
    return name;
  }

  /** `transit/keys/<name>/rotate`: a new latest version; returns its number. */
  rotateKey(name: string, mount = 'transit'): number {
    return rotateTransitKey(this.#key(name, mount));
  }

  configureKey(name: string, c: VaultKeyConfig, mount = 'transit'): void {
    const k = this.#key(name, mount);
    if (c.minDecryptionVersion !== undefined) k.minDecryption = c.minDecryptionVersion;
    if (c.minEncryptionVersion !== undefined) k.minEncryption = c.minEncryptionVersion;
    if (c.deletionAllowed !== undefined) k.deletionAllowed = c.deletionAllowed;
  }

  /** The key read answer's data, as `GET transit/keys/<name>` returns it. */
  getKey(name: string, mount = 'transit'): Record<string, unknown> {
    return transitKeyData(this.#key(name, mount));
  }

  /** Deletes a key and its every version for good (crypto-shredding on the tenant's side). */
  deleteKey(name: string, mount = 'transit'): void {
    this.#mount(mount).delete(name);
  }

  /** Writes an ACL policy (HCL or its JSON form), like `vault policy write`. */
  putPolicy(name: string, hcl: string): void {
    this.ns.putPolicy(name, hcl);
  }

  deletePolicy(name: string): void {
    this.ns.policies.delete(name);
  }

  /** A token of this namespace with these policies. */
  createToken(o: VaultTokenOptions): string {
    return this.state.tokens.issue({ namespace: this.ns.path, ...o, policies: ['default', ...o.policies] })
      .id;
  }

  revokeToken(token: string): void {
    this.state.tokens.revoke(token);
  }

  /** Revokes every token a login made (`approle-<role>`, `kubernetes-<ns>-<sa>`, `jwt-<sub>`). */
  revokeLogins(displayName: string): number {
    return this.state.tokens.revokeByDisplayName(displayName);
  }

  /** Makes a token expire now. */
  expireToken(token: string): void {
    this.state.tokens.expire(token);
  }

  /** An AppRole role with a first secret id. */
  addAppRole(o: { name: string; policies: readonly string[]; tokenTtlSeconds?: number }): {
    roleId: string;
    secretId: string;
  } {
    const roleId = randomUUID();
    const secretId = randomUUID();
    this.ns.appRoles.set(o.name, {
      name: o.name,
      roleId,
      secretIds: new Set([secretId]),
      policies: [...o.policies],
      tokenTtl: o.tokenTtlSeconds ?? 3600,
    });
    return { roleId, secretId };
  }

  /** Destroys every secret id of an AppRole role (new logins fail; issued tokens live on). */
  destroySecretIds(role: string): void {
    this.ns.appRoles.get(role)?.secretIds.clear();
  }

  addKubernetesRole(o: {
    name: string;
    serviceAccountNames: readonly string[];
    serviceAccountNamespaces: readonly string[];
    policies: readonly string[];
    tokenTtlSeconds?: number;
  }): void {
    this.ns.kubernetesRoles.set(o.name, {
      name: o.name,
      serviceAccountNames: o.serviceAccountNames,
      serviceAccountNamespaces: o.serviceAccountNamespaces,
      policies: o.policies,
      tokenTtl: o.tokenTtlSeconds ?? 3600,
    });
  }

  /** A service account token of the server's cluster (what a pod finds in its token file). */
  kubernetesServiceAccountToken(o: {
    serviceAccount: string;
    namespace: string;
    ttlSeconds?: number;
  }): string {
    return this.state.kubernetes.sign(
      {
        sub: `system:serviceaccount:${o.namespace}:${o.serviceAccount}`,
        'kubernetes.io/serviceaccount/namespace': o.namespace,
        'kubernetes.io/serviceaccount/service-account.name': o.serviceAccount,
      },
      o.ttlSeconds,
    );
  }

  addJwtRole(o: {
    name: string;
    boundAudiences: readonly string[];
    boundSubject?: string;
    policies: readonly string[];
    tokenTtlSeconds?: number;
  }): void {
    this.ns.jwtRoles.set(o.name, {
      name: o.name,
      boundAudiences: o.boundAudiences,
      boundSubject: o.boundSubject,
      policies: o.policies,
      tokenTtl: o.tokenTtlSeconds ?? 3600,
    });
  }

  /** A JWT of the server's OIDC issuer (a CI job's or a workload's identity token). */
  issueJwt(o: { subject: string; audience: string; ttlSeconds?: number }): string {
    return this.state.oidc.sign({ sub: o.subject, aud: o.audience }, o.ttlSeconds);
  }
}
