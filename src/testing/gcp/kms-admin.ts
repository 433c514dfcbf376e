/**
 * The resource methods of the local Cloud KMS server: key rings (Get, List, Create), CryptoKeys
 * (Get, List, Create, UpdateCryptoKeyPrimaryVersion) and versions (Get, List, Create, Update,
 * Destroy, Restore).
 */
import * as grpc from '@grpc/grpc-js';
import type { GcpServerState, MethodImpl } from './context.ts';
import { P } from './iam.ts';
import { keyMessage, notEnabled, versionMessage } from './keys.ts';
import { checkKeyName, checkKeyRingName, checkLocationName, checkVersionName, ID_RE } from './names.ts';
import {
  durationSeconds,
  type GcpKmsMethod,
  invalid,
  page,
  type Req,
  RpcError,
  str,
  timestamp,
} from './protocol.ts';

/** Every method but Encrypt and Decrypt, over a server's keys and policies. */
export function resourceMethods({
  keys,
  iam,
}: GcpServerState): Record<Exclude<GcpKmsMethod, 'Encrypt' | 'Decrypt'>, MethodImpl> {
  return {
    GetKeyRing: (req, principal) => {
      const name = str(req.name);
      checkKeyRingName(name);
      iam.authorize(principal, P.keyRingsGet, name);
      const ring = keys.keyRings.get(name);
      if (!ring) throw new RpcError(grpc.status.NOT_FOUND, `KeyRing ${name} not found.`);
      return { name: ring.name, createTime: timestamp(ring.createTime) };
    },
    ListKeyRings: (req, principal) => {
      const parent = str(req.parent);
      checkLocationName(parent);
      iam.authorize(principal, P.keyRingsList, parent);
      const rings = [...keys.keyRings.values()].filter((r) => r.name.startsWith(`${parent}/keyRings/`));
      const p = page(rings, req);
      return {
        keyRings: p.items.map((r) => ({ name: r.name, createTime: timestamp(r.createTime) })),
        nextPageToken: p.nextPageToken,
        totalSize: p.totalSize,
      };
    },
    CreateKeyRing: (req, principal) => {
      const parent = str(req.parent);
      checkLocationName(parent);
      const id = str(req.keyRingId);
      if (!ID_RE.test(id)) throw invalid(`Invalid key_ring_id [${id}].`);
      iam.authorize(principal, P.keyRingsCreate, parent);
      const ring = keys.addKeyRing(`${parent}/keyRings/${id}`);
      return { name: ring.name, createTime: timestamp(ring.createTime) };
    },
    GetCryptoKey: (req, principal) => {
      const name = str(req.name);
      checkKeyName(name);
      iam.authorize(principal, P.keysGet, name);
      return keyMessage(keys.requireKey(name));
    },
    ListCryptoKeys: (req, principal) => {
      const parent = str(req.parent);
      checkKeyRingName(parent);
      iam.authorize(principal, P.keysList, parent);
      if (!keys.keyRings.has(parent))
        throw new RpcError(grpc.status.NOT_FOUND, `KeyRing ${parent} not found.`);
      const list = [...keys.keys.values()].filter((k) => k.keyRing === parent);
      const p = page(list, req);
      return { cryptoKeys: p.items.map(keyMessage), nextPageToken: p.nextPageToken, totalSize: p.totalSize };
    },
    CreateCryptoKey: (req, principal) => {
      const parent = str(req.parent);
      checkKeyRingName(parent);
      iam.authorize(principal, P.keysCreate, parent);
      const ck = (req.cryptoKey ?? {}) as Req;
      const template = (ck.versionTemplate ?? {}) as Req;
      const algorithm = str(template.algorithm);
      const protectionLevel = str(template.protectionLevel);
      const next = ck.nextRotationTime as { seconds?: unknown } | null | undefined;
      const key = keys.addKey(parent, str(req.cryptoKeyId), {
        purpose: str(ck.purpose),
        algorithm: algorithm === 'CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED' ? undefined : algorithm,
        protectionLevel: protectionLevel === 'PROTECTION_LEVEL_UNSPECIFIED' ? undefined : protectionLevel,
        rotationPeriodSeconds: durationSeconds(ck.rotationPeriod),
        nextRotationTime: next ? new Date(Number(next.seconds ?? 0) * 1000) : undefined,
        labels: (ck.labels ?? {}) as Record<string, string>,
        destroyScheduledSeconds: durationSeconds(ck.destroyScheduledDuration) || undefined,
        skipInitialVersionCreation: req.skipInitialVersionCreation === true,
      });
      return keyMessage(key);
    },
    UpdateCryptoKeyPrimaryVersion: (req, principal) => {
      const name = str(req.name);
      checkKeyName(name);
      iam.authorize(principal, P.keysUpdate, name);
      const key = keys.requireKey(name);
      if (key.purpose !== 'ENCRYPT_DECRYPT') {
        throw new RpcError(
          grpc.status.FAILED_PRECONDITION,
          `${name} has purpose ${key.purpose}; only ENCRYPT_DECRYPT keys have a primary version.`,
        );
      }
      const id = Number(str(req.cryptoKeyVersionId));
      const version = key.versions.get(id);
      if (!version) {
        throw new RpcError(
          grpc.status.NOT_FOUND,
          `CryptoKeyVersion ${name}/cryptoKeyVersions/${req.cryptoKeyVersionId} not found.`,
        );
      }
      if (version.state !== 'ENABLED') throw notEnabled(version);
      key.primary = id;
      return keyMessage(key);
    },
    GetCryptoKeyVersion: (req, principal) => {
      const name = str(req.name);
      checkVersionName(name);
      iam.authorize(principal, P.versionsGet, name);
      return versionMessage(keys.requireVersion(name).version);
    },
    ListCryptoKeyVersions: (req, principal) => {
      const parent = str(req.parent);
      checkKeyName(parent);
      iam.authorize(principal, P.versionsList, parent);
      const p = page([...keys.requireKey(parent).versions.values()], req);
      return {
        cryptoKeyVersions: p.items.map(versionMessage),
        nextPageToken: p.nextPageToken,
        totalSize: p.totalSize,
      };
    },
    CreateCryptoKeyVersion: (req, principal) => {
      const parent = str(req.parent);
      checkKeyName(parent);
      iam.authorize(principal, P.versionsCreate, parent);
      return versionMessage(keys.addVersion(keys.requireKey(parent)));
    },
    UpdateCryptoKeyVersion: (req, principal) => {
      const body = (req.cryptoKeyVersion ?? {}) as Req;
      const name = str(body.name);
      checkVersionName(name);
      const paths = ((req.updateMask as { paths?: unknown } | null)?.paths ?? []) as unknown[];
      if (paths.length !== 1 || paths[0] !== 'state') throw invalid('update_mask must be exactly ["state"].');
      iam.authorize(principal, P.versionsUpdate, name);
      const { version } = keys.requireVersion(name);
      const target = str(body.state);
      if (target !== 'ENABLED' && target !== 'DISABLED') {
        throw invalid(
          `The state of a CryptoKeyVersion can only be updated to ENABLED or DISABLED, not ${target}.`,
        );
      }
      if (version.state !== 'ENABLED' && version.state !== 'DISABLED') {
        throw new RpcError(
          grpc.status.FAILED_PRECONDITION,
          `${name} cannot be updated, current state is: ${version.state}.`,
        );
      }
      version.state = target;
      return versionMessage(version);
    },
    DestroyCryptoKeyVersion: (req, principal) => {
      const name = str(req.name);
      checkVersionName(name);
      iam.authorize(principal, P.versionsDestroy, name);
      const { key, version } = keys.requireVersion(name);
      if (version.state !== 'ENABLED' && version.state !== 'DISABLED') {
        throw new RpcError(
          grpc.status.FAILED_PRECONDITION,
          `${name} cannot be destroyed, current state is: ${version.state}.`,
        );
      }
      version.state = 'DESTROY_SCHEDULED';
      version.destroyTime = new Date(Date.now() + key.destroyScheduledSeconds * 1000);
      return versionMessage(version);
    },
    RestoreCryptoKeyVersion: (req, principal) => {
      const name = str(req.name);
      checkVersionName(name);
      iam.authorize(principal, P.versionsRestore, name);
      const { version } = keys.requireVersion(name);
      if (version.state !== 'DESTROY_SCHEDULED') {
        throw new RpcError(
          grpc.status.FAILED_PRECONDITION,
          `${name} cannot be restored, current state is: ${version.state}.`,
        );
      }
      version.state = 'DISABLED';
      version.destroyTime = undefined;
      return versionMessage(version);
    },
  };
}
