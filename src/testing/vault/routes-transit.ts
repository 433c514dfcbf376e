/** The transit secrets engine's HTTP routes (`<mount>/keys/...`, `encrypt`, `decrypt`, `rewrap`). */
import { answer, failure, noContent, type RouteInfo, type VaultRequest } from './answers.ts';
import {
  newTransitKey,
  rotateTransitKey,
  TransitError,
  transitDecrypt,
  transitEncrypt,
  transitKeyData,
  transitRewrap,
  type VaultTransitKeyType,
} from './transit.ts';

const ROUTE_RE = /^(.+)\/(keys|encrypt|decrypt|rewrap)\/([A-Za-z0-9_.-]+)(?:\/(rotate|config))?$/;

function posInt(v: unknown, field: string): number | undefined {
  if (v === undefined) return undefined;
  const n = typeof v === 'string' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) throw new TransitError(400, `invalid ${field}`);
  return n;
}

export function routeTransit(r: VaultRequest): RouteInfo | undefined {
  const m = ROUTE_RE.exec(r.path);
  if (m === null) return undefined;
  const [, mount, kind, name, sub] = m as unknown as [string, string, string, string, string | undefined];
  const keys = r.ns.mounts.get(mount);
  if (keys === undefined) return undefined;
  const key = keys.get(name);
  const missing = () => failure(400, 'encryption key not found');
  const wrapErrors = (f: () => ReturnType<RouteInfo['run']>) => () => {
    try {
      return f();
    } catch (e) {
      if (e instanceof TransitError) return failure(e.status, e.message);
      throw e;
    }
  };
  if (kind === 'keys' && sub === 'rotate') {
    return {
      operation: 'rotate-key',
      key: name,
      capability: 'update',
      run: wrapErrors(() => {
        if (key === undefined) return missing();
        rotateTransitKey(key);
        return answer(transitKeyData(key));
      }),
    };
  }
  if (kind === 'keys' && sub === 'config') {
    return {
      operation: 'config-key',
      key: name,
      capability: 'update',
      run: wrapErrors(() => {
        if (key === undefined) return missing();
        const minD = posInt(r.body.min_decryption_version, 'min_decryption_version');
        const minE = posInt(r.body.min_encryption_version, 'min_encryption_version');
        if (minD !== undefined) {
          if (minD > key.latest)
            return failure(400, 'cannot set min decryption version above the latest version');
          key.minDecryption = Math.max(1, minD);
        }
        if (minE !== undefined) {
          if (minE > key.latest)
            return failure(400, 'cannot set min encryption version above the latest version');
          key.minEncryption = minE;
        }
        if (typeof r.body.deletion_allowed === 'boolean') key.deletionAllowed = r.body.deletion_allowed;
        const arp = posInt(r.body.auto_rotate_period, 'auto_rotate_period');
        if (arp !== undefined) key.autoRotatePeriod = arp;
        return answer(transitKeyData(key));
      }),
    };
  }
  if (kind === 'keys' && sub === undefined) {
    if (r.method === 'GET') {
      return {
        operation: 'read-key',
        key: name,
        capability: 'read',
        run: () => (key === undefined ? failure(404) : answer(transitKeyData(key))),
      };
    }
    if (r.method === 'DELETE') {
      return {
        operation: 'delete-key',
        key: name,
        capability: 'delete',
        run: () => {
          if (key === undefined) return noContent();
          if (!key.deletionAllowed) return failure(400, 'deletion is not allowed for this key');
          keys.delete(name);
          return noContent();
        },
      };
    }
    return {
      operation: 'create-key',
      key: name,
      capability: key === undefined ? 'create' : 'update',
      run: wrapErrors(() => {
        if (key !== undefined) return noContent();
        const created = newTransitKey(name, {
          ...(r.body.type === undefined ? {} : { type: r.body.type as VaultTransitKeyType }),
          derived: r.body.derived === true || r.body.derived === 'true',
        });
        keys.set(name, created);
        return answer(transitKeyData(created));
      }),
    };
  }
  if (sub !== undefined || (r.method !== 'POST' && r.method !== 'PUT')) return undefined;
  if (kind === 'encrypt') {
    return {
      operation: 'encrypt',
      key: name,
      // Encrypt with a key that does not exist creates it (upsert): that needs `create`.
      capability: key === undefined ? 'create' : 'update',
      run: wrapErrors(() => {
        let k = key;
        if (k === undefined) {
          k = newTransitKey(
            name,
            r.body.type === undefined ? {} : { type: r.body.type as VaultTransitKeyType },
          );
          keys.set(name, k);
        }
        return answer(transitEncrypt(k, r.body));
      }),
    };
  }
  return {
    operation: kind === 'decrypt' ? 'decrypt' : 'rewrap',
    key: name,
    capability: 'update',
    run: wrapErrors(() => {
      if (key === undefined) return missing();
      return answer(kind === 'decrypt' ? transitDecrypt(key, r.body) : transitRewrap(key, r.body));
    }),
  };
}
