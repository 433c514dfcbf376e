/**
 * IAM of the local Cloud KMS server: policies (`{ bindings: [{ role, members }] }`) on projects,
 * key rings and keys, inherited downwards, with the predefined Cloud KMS roles and custom roles.
 */
import * as grpc from '@grpc/grpc-js';
import { memberString, type GcpServiceAccountKey, type Principal } from './auth.ts';
import type { KeyModel } from './keys.ts';
import { KEY_NAME_RE, KEY_RING_NAME_RE, projectOf, VERSION_NAME_RE } from './names.ts';
import { RpcError } from './protocol.ts';

/**
 * Predefined roles understood by the server:
 * - `roles/cloudkms.cryptoKeyEncrypter` (useToEncrypt), `roles/cloudkms.cryptoKeyDecrypter`
 *   (useToDecrypt), `roles/cloudkms.cryptoKeyEncrypterDecrypter` (both);
 * - `roles/cloudkms.viewer` (get / list of key rings, keys, versions);
 * - `roles/cloudkms.admin` (viewer + create, update, destroy, restore; no cryptographic use);
 * - `roles/owner` (everything).
 * Any other role needs explicit `permissions` in its binding (a custom role).
 */
export type GcpKmsRole =
  | 'roles/cloudkms.cryptoKeyEncrypter'
  | 'roles/cloudkms.cryptoKeyDecrypter'
  | 'roles/cloudkms.cryptoKeyEncrypterDecrypter'
  | 'roles/cloudkms.viewer'
  | 'roles/cloudkms.admin'
  | 'roles/owner';

export interface GcpIamBinding {
  readonly role: GcpKmsRole | (string & {});
  /** `serviceAccount:<email>`, `allAuthenticatedUsers` or `allUsers`. */
  readonly members: readonly string[];
  /** Permissions of a custom role (e.g. `['cloudkms.cryptoKeys.get']`); ignored for predefined roles. */
  readonly permissions?: readonly string[];
}

/** An IAM policy: who has which role on a project, key ring or key (inherited downwards). */
export interface GcpIamPolicy {
  readonly bindings: readonly GcpIamBinding[];
}

/** The permissions the server checks, by method. */
export const P = {
  encrypt: 'cloudkms.cryptoKeyVersions.useToEncrypt',
  decrypt: 'cloudkms.cryptoKeyVersions.useToDecrypt',
  keyRingsGet: 'cloudkms.keyRings.get',
  keyRingsList: 'cloudkms.keyRings.list',
  keyRingsCreate: 'cloudkms.keyRings.create',
  keysGet: 'cloudkms.cryptoKeys.get',
  keysList: 'cloudkms.cryptoKeys.list',
  keysCreate: 'cloudkms.cryptoKeys.create',
  keysUpdate: 'cloudkms.cryptoKeys.update',
  versionsGet: 'cloudkms.cryptoKeyVersions.get',
  versionsList: 'cloudkms.cryptoKeyVersions.list',
  versionsCreate: 'cloudkms.cryptoKeyVersions.create',
  versionsUpdate: 'cloudkms.cryptoKeyVersions.update',
  versionsDestroy: 'cloudkms.cryptoKeyVersions.destroy',
  versionsRestore: 'cloudkms.cryptoKeyVersions.restore',
} as const;

const VIEWER = [P.keyRingsGet, P.keyRingsList, P.keysGet, P.keysList, P.versionsGet, P.versionsList];
const ADMIN = [
  ...VIEWER,
  P.keyRingsCreate,
  P.keysCreate,
  P.keysUpdate,
  P.versionsCreate,
  P.versionsUpdate,
  P.versionsDestroy,
  P.versionsRestore,
];
const ROLES: Record<GcpKmsRole, readonly string[]> = {
  'roles/cloudkms.cryptoKeyEncrypter': [P.encrypt],
  'roles/cloudkms.cryptoKeyDecrypter': [P.decrypt],
  'roles/cloudkms.cryptoKeyEncrypterDecrypter': [P.encrypt, P.decrypt],
  'roles/cloudkms.viewer': VIEWER,
  'roles/cloudkms.admin': ADMIN,
  'roles/owner': [...ADMIN, P.encrypt, P.decrypt],
};

function checkPolicy(policy: GcpIamPolicy): GcpIamPolicy {
  if (typeof policy !== 'object' || policy === null || !Array.isArray(policy.bindings)) {
    throw new Error('a policy is { bindings: [{ role, members }] }');
  }
  const bindings = policy.bindings.map((b) => {
    if (typeof b?.role !== 'string' || !Array.isArray(b.members)) {
      throw new Error('each policy binding needs a role and a members array');
    }
    if (!(b.role in ROLES) && !Array.isArray(b.permissions)) {
      throw new Error(`unknown role ${b.role}: give the permissions of a custom role in the binding`);
    }
    for (const m of b.members) {
      if (typeof m !== 'string' || !/^(serviceAccount:.+@.+|allAuthenticatedUsers|allUsers)$/.test(m)) {
        throw new Error(
          `unsupported member ${String(m)}: use serviceAccount:<email>, allAuthenticatedUsers or allUsers`,
        );
      }
    }
    return Object.freeze({
      role: b.role,
      members: Object.freeze([...b.members]),
      ...(b.permissions === undefined ? {} : { permissions: Object.freeze([...b.permissions]) }),
    });
  });
  return Object.freeze({ bindings: Object.freeze(bindings) });
}

/** The policies of one server, and the permission check of every call. */
export class IamPolicies {
  private readonly policies = new Map<string, GcpIamPolicy>();
  private readonly keys: KeyModel;

  constructor(keys: KeyModel) {
    this.keys = keys;
  }

  /** Resource chain for IAM: the resource itself and its existing ancestors, then the project. */
  private ancestry(resource: string): string[] {
    const chain: string[] = [];
    const v = VERSION_NAME_RE.exec(resource);
    const keyName = v ? v[1]! : KEY_NAME_RE.test(resource) ? resource : undefined;
    if (keyName !== undefined && this.keys.keys.has(keyName)) chain.push(keyName);
    const ringName = keyName
      ? KEY_NAME_RE.exec(keyName)![1]!
      : KEY_RING_NAME_RE.test(resource)
        ? resource
        : undefined;
    if (ringName !== undefined && this.keys.keyRings.has(ringName)) chain.push(ringName);
    chain.push(projectOf(resource));
    return chain;
  }

  authorize(principal: Principal, permission: string, resource: string): void {
    const members = new Set([`serviceAccount:${principal.email}`, 'allAuthenticatedUsers', 'allUsers']);
    for (const r of this.ancestry(resource)) {
      for (const b of this.policies.get(r)?.bindings ?? []) {
        if (!b.members.some((m) => members.has(m))) continue;
        const perms = ROLES[b.role as GcpKmsRole] ?? b.permissions ?? [];
        if (perms.includes(permission)) return;
      }
    }
    throw new RpcError(
      grpc.status.PERMISSION_DENIED,
      `Permission '${permission}' denied on resource '${resource}' (or it may not exist).`,
    );
  }

  /** The policies of a new server: `roles/owner` on its project for the admin service account. */
  initial(projectId: string, adminEmail: string): void {
    this.policies.clear();
    this.policies.set(
      `projects/${projectId}`,
      checkPolicy({
        bindings: [{ role: 'roles/owner', members: [`serviceAccount:${adminEmail}`] }],
      }),
    );
  }

  private checkResource(resource: string): void {
    if (/^projects\/[^/]+$/.test(resource)) return;
    if (!this.keys.keyRings.has(resource) && !this.keys.keys.has(resource)) {
      throw new Error(`no project, key ring or key named ${resource}`);
    }
  }

  set(resource: string, policy: GcpIamPolicy): void {
    this.checkResource(resource);
    this.policies.set(resource, checkPolicy(policy));
  }

  get(resource: string): GcpIamPolicy {
    return this.policies.get(resource) ?? Object.freeze({ bindings: Object.freeze([]) });
  }

  /** Adds a binding of `role` for `member` to a resource's policy. */
  grant(resource: string, member: GcpServiceAccountKey | string, role: GcpKmsRole): void {
    this.checkResource(resource);
    const m = memberString(member);
    const current = this.policies.get(resource)?.bindings ?? [];
    const existing = current.find((b) => b.role === role);
    const bindings = existing
      ? current.map((b) =>
          b === existing && !b.members.includes(m) ? { ...b, members: [...b.members, m] } : b,
        )
      : [...current, { role, members: [m] }];
    this.policies.set(resource, checkPolicy({ bindings }));
  }

  /** Removes `member` from `role` (or from every role) in a resource's policy. */
  revoke(resource: string, member: GcpServiceAccountKey | string, role?: GcpKmsRole): void {
    const m = memberString(member);
    const current = this.policies.get(resource)?.bindings ?? [];
    const bindings = current
      .map((b) =>
        role === undefined || b.role === role ? { ...b, members: b.members.filter((x) => x !== m) } : b,
      )
      .filter((b) => b.members.length > 0);
    this.policies.set(resource, checkPolicy({ bindings }));
  }
}
