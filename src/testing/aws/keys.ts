/**
 * The key model of the local AWS KMS server: keys (symmetric AES-256 with key material; asymmetric
 * and HMAC for metadata only), multi-region primaries and replicas, aliases, key states, and the
 * key references a request may use (key id, key ARN, alias name, alias ARN).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import {
  defaultKeyPolicy,
  normalizePolicy,
  type NormalizedPolicy,
  type PolicyDocument,
  type Principal,
} from './policies.ts';
import { epochSeconds, type Json, PARTITION, WireError } from './protocol.ts';

/** KMS key states, as AWS spells them. */
export type AwsKeyState =
  | 'Enabled'
  | 'Disabled'
  | 'PendingDeletion'
  | 'PendingReplicaDeletion'
  | 'PendingImport'
  | 'Unavailable'
  | 'Creating'
  | 'Updating';

export type AwsKeyUsage = 'ENCRYPT_DECRYPT' | 'SIGN_VERIFY' | 'GENERATE_VERIFY_MAC' | 'KEY_AGREEMENT';

export type AwsKeySpec =
  | 'SYMMETRIC_DEFAULT'
  | 'RSA_2048'
  | 'RSA_3072'
  | 'RSA_4096'
  | 'ECC_NIST_P256'
  | 'ECC_NIST_P384'
  | 'ECC_NIST_P521'
  | 'ECC_SECG_P256K1'
  | 'HMAC_224'
  | 'HMAC_256'
  | 'HMAC_384'
  | 'HMAC_512';

export interface CreateKeyOptions {
  /** Default: the server's region. */
  region?: string;
  /** Default: the server's account. */
  accountId?: string;
  description?: string;
  /** Default `ENCRYPT_DECRYPT`. */
  keyUsage?: AwsKeyUsage;
  /** Default `SYMMETRIC_DEFAULT`. */
  keySpec?: AwsKeySpec;
  /** Create a multi-region primary key (id `mrk-<32 hex>`); see {@link AwsKmsServer.replicateKey}. */
  multiRegion?: boolean;
  /** Key policy; default: every principal of the key's account may do everything (`kms:*`). */
  policy?: PolicyDocument | string;
  /** Initial state; default `Enabled`. */
  state?: AwsKeyState;
}

/** A snapshot of a key's metadata. */
export interface AwsKmsKeyInfo {
  readonly keyId: string;
  readonly arn: string;
  readonly region: string;
  readonly accountId: string;
  readonly keyUsage: AwsKeyUsage;
  readonly keySpec: AwsKeySpec;
  readonly keyState: AwsKeyState;
  readonly multiRegion: boolean;
  readonly multiRegionKeyType?: 'PRIMARY' | 'REPLICA';
}

export interface KeyRecord {
  readonly keyId: string;
  readonly arn: string;
  readonly region: string;
  readonly accountId: string;
  readonly keyUsage: AwsKeyUsage;
  readonly keySpec: AwsKeySpec;
  readonly material: Buffer | undefined;
  readonly multiRegion: boolean;
  readonly multiRegionKeyType?: 'PRIMARY' | 'REPLICA';
  readonly createdAt: Date;
  description: string;
  state: AwsKeyState;
  deletionDate?: Date;
  pendingWindowInDays?: number;
  policyText: string;
  policy: NormalizedPolicy;
}

export interface AliasRecord {
  readonly name: string;
  readonly arn: string;
  targetKeyId: string;
  readonly createdAt: Date;
  updatedAt: Date;
}

function defaultUsageFor(spec: AwsKeySpec): AwsKeyUsage {
  if (spec.startsWith('HMAC_')) return 'GENERATE_VERIFY_MAC';
  if (spec.startsWith('ECC_')) return 'SIGN_VERIFY';
  return 'ENCRYPT_DECRYPT';
}

function usageAllowed(spec: AwsKeySpec, usage: AwsKeyUsage): boolean {
  if (spec === 'SYMMETRIC_DEFAULT') return usage === 'ENCRYPT_DECRYPT';
  if (spec.startsWith('RSA_')) return usage === 'ENCRYPT_DECRYPT' || usage === 'SIGN_VERIFY';
  if (spec.startsWith('ECC_')) return usage === 'SIGN_VERIFY' || usage === 'KEY_AGREEMENT';
  return usage === 'GENERATE_VERIFY_MAC';
}

const KEY_SPECS = new Set<string>([
  'SYMMETRIC_DEFAULT',
  'RSA_2048',
  'RSA_3072',
  'RSA_4096',
  'ECC_NIST_P256',
  'ECC_NIST_P384',
  'ECC_NIST_P521',
  'ECC_SECG_P256K1',
  'HMAC_224',
  'HMAC_256',
  'HMAC_384',
  'HMAC_512',
]);
const KEY_USAGES = new Set<string>([
  'ENCRYPT_DECRYPT',
  'SIGN_VERIFY',
  'GENERATE_VERIFY_MAC',
  'KEY_AGREEMENT',
]);

/** The keys and aliases of one server, in every account and region. */
export class KeyStore {
  readonly defaultRegion: string;
  readonly defaultAccount: string;
  /** Keys by ARN. */
  readonly keys = new Map<string, KeyRecord>();
  /** Aliases by alias ARN. */
  readonly aliases = new Map<string, AliasRecord>();

  constructor(defaultRegion: string, defaultAccount: string) {
    this.defaultRegion = defaultRegion;
    this.defaultAccount = defaultAccount;
  }

  // ----- administration (test-side API) -----

  createKey(o: CreateKeyOptions = {}, keyId?: string): KeyRecord {
    const region = o.region ?? this.defaultRegion;
    const accountId = o.accountId ?? this.defaultAccount;
    const keySpec = o.keySpec ?? 'SYMMETRIC_DEFAULT';
    if (!KEY_SPECS.has(keySpec))
      throw new WireError('ValidationException', `KeySpec ${keySpec} is not supported`);
    const keyUsage = o.keyUsage ?? defaultUsageFor(keySpec);
    if (!KEY_USAGES.has(keyUsage))
      throw new WireError('ValidationException', `KeyUsage ${keyUsage} is not supported`);
    if (!usageAllowed(keySpec, keyUsage)) {
      throw new WireError(
        'ValidationException',
        `KeyUsage ${keyUsage} is not compatible with KeySpec ${keySpec}`,
      );
    }
    const multiRegion = o.multiRegion === true;
    const id = keyId ?? (multiRegion ? `mrk-${randomBytes(16).toString('hex')}` : randomUUID());
    const policy = o.policy ?? defaultKeyPolicy(accountId);
    const key: KeyRecord = {
      keyId: id,
      arn: `arn:${PARTITION}:kms:${region}:${accountId}:key/${id}`,
      region,
      accountId,
      keyUsage,
      keySpec,
      material: keySpec === 'SYMMETRIC_DEFAULT' ? randomBytes(32) : undefined,
      multiRegion,
      ...(multiRegion ? { multiRegionKeyType: 'PRIMARY' as const } : {}),
      createdAt: new Date(),
      description: o.description ?? '',
      state: o.state ?? 'Enabled',
      policyText: typeof policy === 'string' ? policy : JSON.stringify(policy),
      policy: normalizePolicy(policy),
    };
    this.keys.set(key.arn, key);
    return key;
  }

  replicateKey(primaryRef: string, replicaRegion: string): KeyRecord {
    const primary = this.adminKey(primaryRef);
    if (!primary.multiRegion || primary.multiRegionKeyType !== 'PRIMARY') {
      throw new Error(`${primary.arn} is not a multi-region primary key`);
    }
    if (replicaRegion === primary.region) throw new Error('a replica must be in another region');
    const arn = `arn:${PARTITION}:kms:${replicaRegion}:${primary.accountId}:key/${primary.keyId}`;
    if (this.keys.has(arn)) throw new Error(`${arn} already exists`);
    const replica: KeyRecord = {
      ...primary,
      arn,
      region: replicaRegion,
      multiRegionKeyType: 'REPLICA',
      createdAt: new Date(),
      state: 'Enabled',
    };
    this.keys.set(arn, replica);
    return replica;
  }

  createAlias(aliasName: string, keyRef: string): string {
    const key = this.adminKey(keyRef);
    return this.putAlias(key, aliasName).arn;
  }

  updateAlias(alias: string, keyRef: string): void {
    const record = this.adminAlias(alias);
    const key = this.adminKey(keyRef);
    this.moveAlias(record, key);
  }

  deleteAlias(alias: string): void {
    this.aliases.delete(this.adminAlias(alias).arn);
  }

  /** Alias lookup for the test-side API: alias ARN, or alias name in the default region and account. */
  private adminAlias(ref: string): AliasRecord {
    const arn = ref.startsWith('arn:')
      ? ref
      : `arn:${PARTITION}:kms:${this.defaultRegion}:${this.defaultAccount}:${ref}`;
    const alias = this.aliases.get(arn);
    if (alias === undefined) throw new Error(`no alias ${ref}`);
    return alias;
  }

  /** Points an alias at another key of its account and region, of the same key type (as KMS requires). */
  moveAlias(alias: AliasRecord, key: KeyRecord): void {
    const [, , , region, accountId] = alias.arn.split(':');
    if (key.region !== region || key.accountId !== accountId) {
      throw new WireError(
        'ValidationException',
        `${key.arn} is not in the account and region of ${alias.arn}`,
      );
    }
    const current = this.keys.get(`arn:${PARTITION}:kms:${region}:${accountId}:key/${alias.targetKeyId}`);
    if (current !== undefined && (current.keySpec !== key.keySpec || current.keyUsage !== key.keyUsage)) {
      throw new WireError(
        'ValidationException',
        `${alias.arn} points to a ${current.keySpec} ${current.keyUsage} key; the new target must be of the same type`,
      );
    }
    alias.targetKeyId = key.keyId;
    alias.updatedAt = new Date();
  }

  setPolicy(keyRef: string, policy: PolicyDocument | string): void {
    const key = this.adminKey(keyRef);
    key.policy = normalizePolicy(policy);
    key.policyText = typeof policy === 'string' ? policy : JSON.stringify(policy);
  }

  info(key: KeyRecord): AwsKmsKeyInfo {
    return {
      keyId: key.keyId,
      arn: key.arn,
      region: key.region,
      accountId: key.accountId,
      keyUsage: key.keyUsage,
      keySpec: key.keySpec,
      keyState: key.state,
      multiRegion: key.multiRegion,
      ...(key.multiRegionKeyType === undefined ? {} : { multiRegionKeyType: key.multiRegionKeyType }),
    };
  }

  /** Key lookup for the test-side API: ARNs exactly, bare ids and alias names in the default region. */
  adminKey(ref: string): KeyRecord {
    const m = /^arn:aws:kms:([^:]+):(\d{12}):(key|alias)\/(.+)$/.exec(ref);
    if (m) {
      const key = this.lookupKey(m[1]!, m[2]!, ref);
      if (key === undefined) throw new Error(`no key ${ref}`);
      return key;
    }
    const inRegion = [...this.keys.values()].filter((k) => k.region === this.defaultRegion);
    if (ref.startsWith('alias/')) {
      const alias = [...this.aliases.values()].find(
        (a) => a.name === ref && a.arn.split(':')[3] === this.defaultRegion,
      );
      const key = alias && inRegion.find((k) => k.keyId === alias.targetKeyId);
      if (key === undefined) throw new Error(`no alias ${ref} in ${this.defaultRegion}`);
      return key;
    }
    const matches = inRegion.filter((k) => k.keyId === ref);
    if (matches.length !== 1) {
      throw new Error(
        matches.length === 0 ? `no key ${ref} in ${this.defaultRegion}` : `key id ${ref} is ambiguous`,
      );
    }
    return matches[0]!;
  }

  /** The test-side `setKeyState`: a pending deletion gets a 30-day window. */
  setKeyState(ref: string, s: AwsKeyState): void {
    const record = this.adminKey(ref);
    record.state = s;
    if (s === 'PendingDeletion') {
      record.pendingWindowInDays = 30;
      record.deletionDate = new Date(Date.now() + 30 * 86_400_000);
    } else {
      delete record.pendingWindowInDays;
      delete record.deletionDate;
    }
  }

  /** The ARNs of a key and, for a multi-region key, of all its replicas. */
  sameKeyArns(ref: string): string[] {
    const key = this.adminKey(ref);
    return [...this.keys.values()]
      .filter((k) => k.keyId === key.keyId && k.accountId === key.accountId)
      .map((k) => k.arn);
  }

  // ----- references of requests -----

  /** Resolves a key reference in a region; `callerAccount` applies to bare ids and alias names. */
  lookupKey(region: string, callerAccount: string, ref: string): KeyRecord | undefined {
    const arn = /^arn:([^:]*):kms:([^:]*):([^:]*):(key|alias)\/(.+)$/.exec(ref);
    if (arn) {
      if (arn[1] !== PARTITION || arn[2] !== region) return undefined;
      if (arn[4] === 'key') return this.keys.get(ref);
      const alias = this.aliases.get(ref);
      return alias && this.keys.get(`arn:${PARTITION}:kms:${region}:${arn[3]}:key/${alias.targetKeyId}`);
    }
    if (ref.startsWith('alias/')) {
      const alias = this.aliases.get(`arn:${PARTITION}:kms:${region}:${callerAccount}:${ref}`);
      return (
        alias && this.keys.get(`arn:${PARTITION}:kms:${region}:${callerAccount}:key/${alias.targetKeyId}`)
      );
    }
    return this.keys.get(`arn:${PARTITION}:kms:${region}:${callerAccount}:key/${ref}`);
  }

  requireKey(region: string, principal: Principal, ref: unknown, field = 'keyId'): KeyRecord {
    if (typeof ref !== 'string' || ref.length === 0 || ref.length > 2048) {
      throw new WireError(
        'ValidationException',
        `1 validation error detected: Value at '${field}' failed to satisfy constraint: Member must have length greater than or equal to 1`,
      );
    }
    const key = this.lookupKey(region, principal.accountId, ref);
    if (key !== undefined) return key;
    const arn = /^arn:[^:]*:kms:([^:]*):/.exec(ref);
    if (arn && arn[1] !== region) throw new WireError('NotFoundException', `Invalid arn ${arn[1]}`);
    if (ref.includes('alias/')) {
      const aliasArn = ref.startsWith('arn:')
        ? ref
        : `arn:${PARTITION}:kms:${region}:${principal.accountId}:${ref}`;
      throw new WireError('NotFoundException', `Alias ${aliasArn} is not found.`);
    }
    const keyArn = ref.startsWith('arn:')
      ? ref
      : `arn:${PARTITION}:kms:${region}:${principal.accountId}:key/${ref}`;
    throw new WireError('NotFoundException', `Key '${keyArn}' does not exist`);
  }

  /** State and usage checks of cryptographic operations. */
  requireUsable(key: KeyRecord, operation: string): Buffer {
    switch (key.state) {
      case 'Enabled':
        break;
      case 'Disabled':
        throw new WireError('DisabledException', `${key.arn} is disabled.`);
      case 'PendingDeletion':
        throw new WireError('KMSInvalidStateException', `${key.arn} is pending deletion.`);
      case 'PendingReplicaDeletion':
        throw new WireError('KMSInvalidStateException', `${key.arn} is pending replica deletion.`);
      default:
        throw new WireError('KMSInvalidStateException', `${key.arn} is ${key.state.toLowerCase()}.`);
    }
    if (key.keyUsage !== 'ENCRYPT_DECRYPT') {
      throw new WireError(
        'InvalidKeyUsageException',
        `${key.arn} key usage is ${key.keyUsage} which is not valid for ${operation}.`,
      );
    }
    if (key.material === undefined) {
      throw new WireError(
        'InvalidKeyUsageException',
        `${key.arn} key spec ${key.keySpec} does not support the SYMMETRIC_DEFAULT algorithm for ${operation}.`,
      );
    }
    return key.material;
  }

  /** The `KeyMetadata` of DescribeKey, CreateKey and ReplicateKey answers. */
  keyMetadata(key: KeyRecord): Json {
    const related = key.multiRegion
      ? [...this.keys.values()].filter((k) => k.keyId === key.keyId && k.accountId === key.accountId)
      : [];
    const primary = related.find((k) => k.multiRegionKeyType === 'PRIMARY');
    return {
      AWSAccountId: key.accountId,
      KeyId: key.keyId,
      Arn: key.arn,
      CreationDate: epochSeconds(key.createdAt),
      Enabled: key.state === 'Enabled',
      Description: key.description,
      KeyUsage: key.keyUsage,
      KeyState: key.state,
      ...(key.deletionDate === undefined ? {} : { DeletionDate: epochSeconds(key.deletionDate) }),
      ...(key.pendingWindowInDays === undefined
        ? {}
        : { PendingDeletionWindowInDays: key.pendingWindowInDays }),
      Origin: 'AWS_KMS',
      KeyManager: 'CUSTOMER',
      CustomerMasterKeySpec: key.keySpec,
      KeySpec: key.keySpec,
      ...(key.keyUsage === 'ENCRYPT_DECRYPT'
        ? {
            EncryptionAlgorithms:
              key.keySpec === 'SYMMETRIC_DEFAULT'
                ? ['SYMMETRIC_DEFAULT']
                : ['RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256'],
          }
        : {}),
      MultiRegion: key.multiRegion,
      ...(key.multiRegion
        ? {
            MultiRegionConfiguration: {
              MultiRegionKeyType: key.multiRegionKeyType,
              ...(primary === undefined ? {} : { PrimaryKey: { Arn: primary.arn, Region: primary.region } }),
              ReplicaKeys: related
                .filter((k) => k.multiRegionKeyType === 'REPLICA')
                .map((k) => ({ Arn: k.arn, Region: k.region })),
            },
          }
        : {}),
    };
  }

  /** A new alias of a key, in the key's account and region. */
  putAlias(key: KeyRecord, aliasName: string): AliasRecord {
    if (!/^alias\/[a-zA-Z0-9/_-]{1,250}$/.test(aliasName)) {
      throw new WireError(
        'ValidationException',
        `1 validation error detected: Value '${aliasName}' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^alias/[a-zA-Z0-9/_-]+$`,
      );
    }
    if (aliasName.startsWith('alias/aws/')) {
      throw new WireError('NotAuthorizedException', 'Cannot create alias with prefix alias/aws/');
    }
    const arn = `arn:${PARTITION}:kms:${key.region}:${key.accountId}:${aliasName}`;
    if (this.aliases.has(arn))
      throw new WireError('AlreadyExistsException', `An alias with the name ${arn} already exists`);
    const now = new Date();
    const alias: AliasRecord = {
      name: aliasName,
      arn,
      targetKeyId: key.keyId,
      createdAt: now,
      updatedAt: now,
    };
    this.aliases.set(arn, alias);
    return alias;
  }

  /** The alias of an `AliasName` (`alias/...`, in the caller's account and the request's region). */
  requireAlias(region: string, principal: Principal, name: unknown): AliasRecord {
    if (typeof name !== 'string' || !/^alias\/[a-zA-Z0-9/_-]{1,250}$/.test(name)) {
      throw new WireError(
        'ValidationException',
        `1 validation error detected: Value '${String(name)}' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^alias/[a-zA-Z0-9/_-]+$`,
      );
    }
    if (name.startsWith('alias/aws/')) {
      throw new WireError('NotAuthorizedException', 'Cannot modify an AWS managed alias');
    }
    const arn = `arn:${PARTITION}:kms:${region}:${principal.accountId}:${name}`;
    const alias = this.aliases.get(arn);
    if (alias === undefined) throw new WireError('NotFoundException', `Alias ${arn} is not found.`);
    return alias;
  }
}
