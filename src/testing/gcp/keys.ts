/**
 * The key model of the local Cloud KMS server: key rings, CryptoKeys (purpose, algorithm,
 * protection level, rotation, labels) and their versions (states, key material: 32 random bytes
 * per ENCRYPT_DECRYPT version), and their messages on the wire.
 */
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { checkKeyRingName, checkVersionName, ID_RE, VERSION_NAME_RE } from './names.ts';
import { duration, invalid, RpcError, timestamp } from './protocol.ts';

/** Cloud KMS key purposes. */
export type GcpKeyPurpose =
  | 'ENCRYPT_DECRYPT'
  | 'ASYMMETRIC_SIGN'
  | 'ASYMMETRIC_DECRYPT'
  | 'RAW_ENCRYPT_DECRYPT'
  | 'MAC'
  | 'KEY_ENCAPSULATION'
  | 'AES_WRAPPING';

/** Cloud KMS key version states the server models. */
export type GcpKeyVersionState =
  | 'PENDING_GENERATION'
  | 'ENABLED'
  | 'DISABLED'
  | 'DESTROY_SCHEDULED'
  | 'DESTROYED';

export type GcpProtectionLevel = 'SOFTWARE' | 'HSM' | 'EXTERNAL' | 'EXTERNAL_VPC';

export interface CreateCryptoKeyOptions {
  /**
   * Key ring: a full name (`projects/<p>/locations/<l>/keyRings/<r>`) or an id in the server's
   * project and location; created if missing. Default `test-ring`.
   */
  keyRing?: string;
  /** Default `key-<random>`. */
  cryptoKeyId?: string;
  /** Default `ENCRYPT_DECRYPT`. */
  purpose?: GcpKeyPurpose;
  /** Default per purpose (`GOOGLE_SYMMETRIC_ENCRYPTION` for ENCRYPT_DECRYPT). */
  algorithm?: string;
  /** Default `SOFTWARE`. */
  protectionLevel?: GcpProtectionLevel;
  /** Automatic rotation period (ENCRYPT_DECRYPT only). */
  rotationPeriodSeconds?: number;
  labels?: Readonly<Record<string, string>>;
  /** Create the key without version 1. */
  skipInitialVersionCreation?: boolean;
  /** Delay between DestroyCryptoKeyVersion and destruction; default 30 days. */
  destroyScheduledDurationSeconds?: number;
}

export interface GcpCryptoKeyVersionInfo {
  readonly name: string;
  readonly state: GcpKeyVersionState;
  readonly algorithm: string;
  readonly protectionLevel: GcpProtectionLevel;
  readonly destroyTime?: Date;
}

/** A snapshot of a key. */
export interface GcpCryptoKeyInfo {
  readonly name: string;
  readonly keyRing: string;
  readonly purpose: GcpKeyPurpose;
  /** Name of the primary version (ENCRYPT_DECRYPT keys with at least one version). */
  readonly primary?: string;
  readonly versions: readonly GcpCryptoKeyVersionInfo[];
}

const DEFAULT_ALGORITHM: Record<GcpKeyPurpose, string> = {
  ENCRYPT_DECRYPT: 'GOOGLE_SYMMETRIC_ENCRYPTION',
  ASYMMETRIC_SIGN: 'EC_SIGN_P256_SHA256',
  ASYMMETRIC_DECRYPT: 'RSA_DECRYPT_OAEP_2048_SHA256',
  RAW_ENCRYPT_DECRYPT: 'AES_256_GCM',
  MAC: 'HMAC_SHA256',
  KEY_ENCAPSULATION: 'ML_KEM_768',
  AES_WRAPPING: 'AES_256_KWP',
};
const PURPOSES = new Set<string>(Object.keys(DEFAULT_ALGORITHM));
const PROTECTION_LEVELS = new Set<string>(['SOFTWARE', 'HSM', 'EXTERNAL', 'EXTERNAL_VPC']);
const DEFAULT_DESTROY_SCHEDULED_SECONDS = 30 * 24 * 3600;

export interface VersionState {
  readonly name: string;
  readonly id: number;
  state: GcpKeyVersionState;
  readonly algorithm: string;
  readonly protectionLevel: GcpProtectionLevel;
  material: Buffer | undefined;
  readonly createTime: Date;
  destroyTime: Date | undefined;
  destroyEventTime: Date | undefined;
}

export interface KeyState {
  readonly name: string;
  readonly keyRing: string;
  readonly purpose: GcpKeyPurpose;
  readonly algorithm: string;
  readonly protectionLevel: GcpProtectionLevel;
  readonly createTime: Date;
  readonly rotationPeriodSeconds: number | undefined;
  readonly nextRotationTime: Date | undefined;
  readonly labels: Record<string, string>;
  readonly destroyScheduledSeconds: number;
  primary: number | undefined;
  nextVersion: number;
  readonly versions: Map<number, VersionState>;
}

/** What a new CryptoKey is made of (from `CreateCryptoKey` or the test-side `createCryptoKey`). */
export interface KeySpec {
  purpose: string;
  algorithm: string | undefined;
  protectionLevel: string | undefined;
  rotationPeriodSeconds: number | undefined;
  nextRotationTime: Date | undefined;
  labels: Record<string, string>;
  destroyScheduledSeconds: number | undefined;
  skipInitialVersionCreation: boolean;
}

export function versionMessage(v: VersionState): Record<string, unknown> {
  return {
    name: v.name,
    state: v.state,
    protectionLevel: v.protectionLevel,
    algorithm: v.algorithm,
    createTime: timestamp(v.createTime),
    ...(v.state === 'PENDING_GENERATION' ? {} : { generateTime: timestamp(v.createTime) }),
    ...(v.destroyTime ? { destroyTime: timestamp(v.destroyTime) } : {}),
    ...(v.destroyEventTime ? { destroyEventTime: timestamp(v.destroyEventTime) } : {}),
  };
}

export function keyMessage(k: KeyState): Record<string, unknown> {
  const primary = k.primary === undefined ? undefined : k.versions.get(k.primary);
  return {
    name: k.name,
    ...(primary ? { primary: versionMessage(primary) } : {}),
    purpose: k.purpose,
    createTime: timestamp(k.createTime),
    ...(k.nextRotationTime ? { nextRotationTime: timestamp(k.nextRotationTime) } : {}),
    ...(k.rotationPeriodSeconds === undefined ? {} : { rotationPeriod: duration(k.rotationPeriodSeconds) }),
    versionTemplate: { protectionLevel: k.protectionLevel, algorithm: k.algorithm },
    labels: k.labels,
    destroyScheduledDuration: duration(k.destroyScheduledSeconds),
  };
}

export function keyInfo(k: KeyState): GcpCryptoKeyInfo {
  const primary = k.primary === undefined ? undefined : k.versions.get(k.primary)?.name;
  return Object.freeze({
    name: k.name,
    keyRing: k.keyRing,
    purpose: k.purpose,
    ...(primary === undefined ? {} : { primary }),
    versions: Object.freeze(
      [...k.versions.values()].map((v) =>
        Object.freeze({
          name: v.name,
          state: v.state,
          algorithm: v.algorithm,
          protectionLevel: v.protectionLevel,
          ...(v.destroyTime ? { destroyTime: new Date(v.destroyTime) } : {}),
        }),
      ),
    ),
  });
}

export function notEnabled(v: VersionState): RpcError {
  return new RpcError(
    grpc.status.FAILED_PRECONDITION,
    `${v.name} is not enabled, current state is: ${v.state}.`,
  );
}

export function requirePurpose(key: KeyState, method: string): void {
  if (key.purpose !== 'ENCRYPT_DECRYPT') {
    throw new RpcError(
      grpc.status.FAILED_PRECONDITION,
      `${key.name} has purpose ${key.purpose}; ${method} requires a CryptoKey with purpose ENCRYPT_DECRYPT.`,
    );
  }
}

/** The key rings and keys of one server. */
export class KeyModel {
  readonly keyRings = new Map<string, { name: string; createTime: Date }>();
  readonly keys = new Map<string, KeyState>();

  requireKey(name: string): KeyState {
    const key = this.keys.get(name);
    if (!key) throw new RpcError(grpc.status.NOT_FOUND, `CryptoKey ${name} not found.`);
    return key;
  }

  requireVersion(name: string): { key: KeyState; version: VersionState } {
    const { key: keyName, id } = checkVersionName(name);
    const key = this.requireKey(keyName);
    const version = key.versions.get(id);
    if (!version) throw new RpcError(grpc.status.NOT_FOUND, `CryptoKeyVersion ${name} not found.`);
    return { key, version };
  }

  addKeyRing(name: string): { name: string; createTime: Date } {
    checkKeyRingName(name);
    if (this.keyRings.has(name))
      throw new RpcError(grpc.status.ALREADY_EXISTS, `KeyRing ${name} already exists.`);
    const ring = { name, createTime: new Date() };
    this.keyRings.set(name, ring);
    return ring;
  }

  addVersion(key: KeyState): VersionState {
    const id = key.nextVersion++;
    const version: VersionState = {
      name: `${key.name}/cryptoKeyVersions/${id}`,
      id,
      state: 'ENABLED',
      algorithm: key.algorithm,
      protectionLevel: key.protectionLevel,
      material: key.purpose === 'ENCRYPT_DECRYPT' ? randomBytes(32) : undefined,
      createTime: new Date(),
      destroyTime: undefined,
      destroyEventTime: undefined,
    };
    key.versions.set(id, version);
    if (key.purpose === 'ENCRYPT_DECRYPT' && key.primary === undefined) key.primary = id;
    return version;
  }

  addKey(keyRing: string, cryptoKeyId: string, spec: KeySpec): KeyState {
    checkKeyRingName(keyRing);
    if (!ID_RE.test(cryptoKeyId)) throw invalid(`Invalid crypto_key_id [${cryptoKeyId}].`);
    if (!this.keyRings.has(keyRing))
      throw new RpcError(grpc.status.NOT_FOUND, `KeyRing ${keyRing} not found.`);
    const name = `${keyRing}/cryptoKeys/${cryptoKeyId}`;
    if (this.keys.has(name))
      throw new RpcError(grpc.status.ALREADY_EXISTS, `CryptoKey ${name} already exists.`);
    if (!PURPOSES.has(spec.purpose)) throw invalid('The request must specify a valid CryptoKey purpose.');
    const purpose = spec.purpose as GcpKeyPurpose;
    const algorithm = spec.algorithm || DEFAULT_ALGORITHM[purpose];
    if (purpose === 'ENCRYPT_DECRYPT' && algorithm !== 'GOOGLE_SYMMETRIC_ENCRYPTION') {
      throw invalid(`Algorithm ${algorithm} is not valid for purpose ENCRYPT_DECRYPT.`);
    }
    const protectionLevel = spec.protectionLevel || 'SOFTWARE';
    if (!PROTECTION_LEVELS.has(protectionLevel))
      throw invalid(`Invalid protection level ${protectionLevel}.`);
    if (spec.rotationPeriodSeconds !== undefined && purpose !== 'ENCRYPT_DECRYPT') {
      throw invalid('Automatic rotation is only supported for keys with purpose ENCRYPT_DECRYPT.');
    }
    if (spec.rotationPeriodSeconds !== undefined && spec.rotationPeriodSeconds < 86400) {
      throw invalid('The rotation period must be at least one day.');
    }
    const now = new Date();
    const key: KeyState = {
      name,
      keyRing,
      purpose,
      algorithm,
      protectionLevel: protectionLevel as GcpProtectionLevel,
      createTime: now,
      rotationPeriodSeconds: spec.rotationPeriodSeconds,
      nextRotationTime:
        spec.nextRotationTime ??
        (spec.rotationPeriodSeconds === undefined
          ? undefined
          : new Date(now.getTime() + spec.rotationPeriodSeconds * 1000)),
      labels: { ...spec.labels },
      destroyScheduledSeconds: spec.destroyScheduledSeconds ?? DEFAULT_DESTROY_SCHEDULED_SECONDS,
      primary: undefined,
      nextVersion: 1,
      versions: new Map(),
    };
    this.keys.set(name, key);
    if (!spec.skipInitialVersionCreation) this.addVersion(key);
    return key;
  }

  /**
   * The test-side `setVersionState`: `name` is a version name, or a CryptoKey name for its primary
   * version; `DESTROYED` erases the key material.
   */
  setVersionState(name: string, state: GcpKeyVersionState): void {
    let version: VersionState | undefined;
    if (VERSION_NAME_RE.test(name)) version = this.requireVersion(name).version;
    else {
      const key = this.requireKey(name);
      version = key.primary === undefined ? undefined : key.versions.get(key.primary);
      if (!version) throw new Error(`${name} has no primary version`);
    }
    if (version.state === 'DESTROYED' && state !== 'DESTROYED') {
      throw new Error(`${version.name} is destroyed: its key material is gone`);
    }
    version.state = state;
    if (state === 'DESTROYED') {
      version.material?.fill(0);
      version.material = undefined;
      version.destroyEventTime = new Date();
    }
    if (state === 'DESTROY_SCHEDULED') version.destroyTime ??= new Date(Date.now() + 86400_000);
    if (state === 'ENABLED' || state === 'DISABLED') version.destroyTime = undefined;
  }

  /** The test-side `setPrimaryVersion`. */
  setPrimaryVersion(keyName: string, v: string | number): void {
    const key = this.requireKey(keyName);
    const id = typeof v === 'number' ? v : checkVersionName(v).id;
    const version = key.versions.get(id);
    if (!version) throw new Error(`${keyName} has no version ${id}`);
    key.primary = id;
  }

  clear(): void {
    this.keys.clear();
    this.keyRings.clear();
  }
}
