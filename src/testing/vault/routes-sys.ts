/** `sys/*` routes and the auth methods' routes (token, AppRole, Kubernetes, JWT) of the local server. */
import { randomUUID } from 'node:crypto';
import { authAnswer, VaultNamespaceState } from './identity.ts';
import {
  answer,
  denied,
  failure,
  noContent,
  type RouteInfo,
  type ServerState,
  type VaultRequest,
} from './answers.ts';

/** Seconds of a Vault duration (`3600`, `"90s"`, `"30m"`, `"1h"`). */
export function seconds(v: unknown, fallback: number): number {
  if (v === undefined || v === '') return fallback;
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v;
  const m = typeof v === 'string' ? /^(\d+)(s|m|h|d)?$/.exec(v) : null;
  if (m === null) throw new Error('invalid duration');
  return Number(m[1]) * ({ s: 1, m: 60, h: 3600, d: 86400 } as const)[(m[2] ?? 's') as 's'];
}

function list(v: unknown): string[] {
  if (v === undefined) return [];
  if (typeof v === 'string')
    return v
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s !== '');
  if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v as string[];
  throw new Error('expected a list of strings');
}

const policiesOf = (b: Record<string, unknown>) => list(b.token_policies ?? b.policies);

export function routeSys(state: ServerState, r: VaultRequest): RouteInfo | undefined {
  const p = r.path;
  let m = /^sys\/namespaces\/(.+)$/.exec(p);
  if (m !== null) {
    const full = r.ns.path === '' ? m[1]! : `${r.ns.path}/${m[1]}`;
    return {
      operation: 'sys',
      capability: r.method === 'DELETE' ? 'delete' : 'create',
      run: () => {
        if (r.method === 'DELETE') {
          state.namespaces.delete(full);
          return noContent();
        }
        if (!state.namespaces.has(full)) state.namespaces.set(full, new VaultNamespaceState(full));
        return answer({ path: `${full}/`, id: randomUUID() });
      },
    };
  }
  m = /^sys\/mounts\/(.+)$/.exec(p);
  if (m !== null) {
    const path = m[1]!;
    return {
      operation: 'sys',
      capability: r.method === 'DELETE' ? 'delete' : 'create',
      run: () => {
        if (r.method === 'DELETE') {
          r.ns.mounts.delete(path);
          return noContent();
        }
        if (r.body.type !== 'transit')
          return failure(400, `plugin not found in the catalog: ${String(r.body.type)}`);
        if (r.ns.mounts.has(path)) return failure(400, `path is already in use at ${path}/`);
        r.ns.mounts.set(path, new Map());
        return noContent();
      },
    };
  }
  if (p === 'sys/auth' && r.method === 'GET') {
    return {
      operation: 'sys',
      capability: 'read',
      run: () => {
        const data: Record<string, unknown> = { 'token/': { type: 'token' } };
        for (const [path, type] of r.ns.authMounts) data[`${path}/`] = { type };
        return answer(data);
      },
    };
  }
  m = /^sys\/auth\/(.+)$/.exec(p);
  if (m !== null) {
    const path = m[1]!;
    return {
      operation: 'sys',
      capability: 'sudo',
      run: () => {
        if (r.method === 'DELETE') {
          r.ns.authMounts.delete(path);
          return noContent();
        }
        const type = r.body.type;
        if (type !== 'approle' && type !== 'kubernetes' && type !== 'jwt') {
          return failure(400, `plugin not found in the catalog: ${String(type)}`);
        }
        if (r.ns.authMounts.has(path)) return failure(400, `path is already in use at ${path}/`);
        r.ns.authMounts.set(path, type);
        return noContent();
      },
    };
  }
  m = /^sys\/polic(?:y|ies\/acl)\/([A-Za-z0-9_.-]+)$/.exec(p);
  if (m !== null) {
    const name = m[1]!;
    return {
      operation: 'sys',
      capability: r.method === 'GET' ? 'read' : r.method === 'DELETE' ? 'delete' : 'update',
      run: () => {
        if (r.method === 'GET') {
          const pol = r.ns.policies.get(name);
          return pol === undefined ? failure(404) : answer({ name, policy: pol.text });
        }
        if (r.method === 'DELETE') {
          r.ns.policies.delete(name);
          return noContent();
        }
        const text = r.body.policy ?? r.body.rules;
        if (typeof text !== 'string') return failure(400, "'policy' parameter not supplied or empty");
        try {
          r.ns.putPolicy(name, text);
        } catch (e) {
          return failure(400, (e as Error).message);
        }
        return noContent();
      },
    };
  }
  return undefined;
}

export function routeAuth(state: ServerState, r: VaultRequest): RouteInfo | undefined {
  const p = r.path;
  const tokens = state.tokens;
  if (p === 'auth/token/create') {
    return {
      operation: 'token',
      capability: 'update',
      run: () => {
        const policies = list(r.body.policies);
        const own = r.token!.policies;
        if (!own.includes('root') && policies.some((x) => !own.includes(x))) return denied();
        const t = tokens.issue({
          namespace: r.ns.path,
          policies: policies.length === 0 ? own : policies,
          ttlSeconds: seconds(r.body.ttl, 3600),
          renewable: r.body.renewable !== false,
          displayName: typeof r.body.display_name === 'string' ? `token-${r.body.display_name}` : 'token',
          explicitMaxTtlSeconds: seconds(r.body.explicit_max_ttl, 0),
        });
        return answer(null, { auth: authAnswer(t) });
      },
    };
  }
  if (p === 'auth/token/lookup-self') {
    return {
      operation: 'token',
      capability: 'read',
      run: () => {
        const t = r.token!;
        return answer({
          accessor: t.accessor,
          policies: t.policies,
          ttl: t.ttl === 0 ? 0 : Math.max(0, Math.floor((t.expiresAt - Date.now()) / 1000)),
          renewable: t.renewable,
          display_name: t.displayName,
          namespace_path: t.namespace === '' ? '' : `${t.namespace}/`,
        });
      },
    };
  }
  if (p === 'auth/token/renew-self') {
    return {
      operation: 'token',
      capability: 'update',
      run: () =>
        tokens.renew(r.token!)
          ? answer(null, { auth: authAnswer(r.token!) })
          : failure(400, 'lease is not renewable'),
    };
  }
  if (p === 'auth/token/revoke-self') {
    return {
      operation: 'token',
      capability: 'update',
      run: () => {
        tokens.revoke(r.token!.id);
        return noContent();
      },
    };
  }
  if (p === 'auth/token/revoke') {
    return {
      operation: 'token',
      capability: 'update',
      run: () => {
        if (typeof r.body.token === 'string') tokens.revoke(r.body.token);
        return noContent();
      },
    };
  }
  const m = /^auth\/(.+?)\/(login|role\/([A-Za-z0-9_.-]+)(?:\/(role-id|secret-id))?)$/.exec(p);
  if (m === null) return undefined;
  const mount = m[1]!;
  const type = r.ns.authMounts.get(mount);
  if (type === undefined) return undefined;
  if (m[2] === 'login') {
    return { operation: 'login', open: true, run: () => login(state, r, type) };
  }
  const role = m[3]!;
  const sub = m[4];
  return {
    operation: 'sys',
    capability: r.method === 'GET' ? 'read' : 'update',
    run: () => {
      if (type === 'approle') {
        const rec = r.ns.appRoles.get(role);
        if (sub === 'role-id')
          return rec === undefined ? failure(400, 'invalid role name') : answer({ role_id: rec.roleId });
        if (sub === 'secret-id') {
          if (rec === undefined) return failure(400, 'invalid role name');
          const id = randomUUID();
          rec.secretIds.add(id);
          return answer({ secret_id: id, secret_id_accessor: randomUUID(), secret_id_ttl: 0 });
        }
        const existing = r.ns.appRoles.get(role);
        r.ns.appRoles.set(role, {
          name: role,
          roleId: existing?.roleId ?? randomUUID(),
          secretIds: existing?.secretIds ?? new Set(),
          policies: policiesOf(r.body),
          tokenTtl: seconds(r.body.token_ttl, 3600),
        });
        return noContent();
      }
      if (sub !== undefined) return failure(404);
      if (type === 'kubernetes') {
        r.ns.kubernetesRoles.set(role, {
          name: role,
          serviceAccountNames: list(r.body.bound_service_account_names),
          serviceAccountNamespaces: list(r.body.bound_service_account_namespaces),
          policies: policiesOf(r.body),
          tokenTtl: seconds(r.body.token_ttl, 3600),
        });
        return noContent();
      }
      r.ns.jwtRoles.set(role, {
        name: role,
        boundAudiences: list(r.body.bound_audiences),
        boundSubject: typeof r.body.bound_subject === 'string' ? r.body.bound_subject : undefined,
        policies: policiesOf(r.body),
        tokenTtl: seconds(r.body.token_ttl, 3600),
      });
      return noContent();
    },
  };
}

function login(state: ServerState, r: VaultRequest, type: 'approle' | 'kubernetes' | 'jwt') {
  const b = r.body;
  const issue = (policies: readonly string[], ttl: number, displayName: string) =>
    answer(null, {
      auth: authAnswer(
        state.tokens.issue({
          namespace: r.ns.path,
          policies: ['default', ...policies],
          ttlSeconds: ttl,
          renewable: true,
          displayName,
        }),
      ),
    });
  if (type === 'approle') {
    const rec = [...r.ns.appRoles.values()].find((x) => x.roleId === b.role_id);
    if (rec === undefined || typeof b.secret_id !== 'string' || !rec.secretIds.has(b.secret_id)) {
      return failure(400, 'invalid role or secret ID');
    }
    return issue(rec.policies, rec.tokenTtl, `approle-${rec.name}`);
  }
  if (typeof b.role !== 'string' || b.role === '') return failure(400, 'missing role');
  if (type === 'kubernetes') {
    const rec = r.ns.kubernetesRoles.get(b.role);
    if (rec === undefined) return failure(400, `invalid role name "${b.role}"`);
    const claims = state.kubernetes.verify(b.jwt);
    if (claims === undefined) return failure(403, 'permission denied');
    const sa = claims['kubernetes.io/serviceaccount/service-account.name'];
    const ns = claims['kubernetes.io/serviceaccount/namespace'];
    const okName = rec.serviceAccountNames.includes('*') || rec.serviceAccountNames.includes(String(sa));
    const okNs =
      rec.serviceAccountNamespaces.includes('*') || rec.serviceAccountNamespaces.includes(String(ns));
    if (!okName || !okNs) return failure(403, 'service account name not authorized');
    return issue(rec.policies, rec.tokenTtl, `kubernetes-${String(ns)}-${String(sa)}`);
  }
  const rec = r.ns.jwtRoles.get(b.role);
  if (rec === undefined) return failure(400, `role "${b.role}" could not be found`);
  const claims = state.oidc.verify(b.jwt);
  if (claims === undefined) return failure(400, 'error validating token: invalid signature or expired');
  const aud = Array.isArray(claims.aud) ? claims.aud.map(String) : [String(claims.aud)];
  if (rec.boundAudiences.length > 0 && !aud.some((a) => rec.boundAudiences.includes(a))) {
    return failure(400, 'error validating claims: aud claim does not match any bound audience');
  }
  if (rec.boundSubject !== undefined && claims.sub !== rec.boundSubject) {
    return failure(400, 'error validating claims: sub claim does not match bound subject');
  }
  return issue(rec.policies, rec.tokenTtl, `jwt-${String(claims.sub)}`);
}
