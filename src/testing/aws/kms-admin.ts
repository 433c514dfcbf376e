/**
 * The key and alias management operations of the local AWS KMS server: DescribeKey, EnableKey,
 * DisableKey, ScheduleKeyDeletion, CancelKeyDeletion, CreateKey, CreateAlias, UpdateAlias,
 * DeleteAlias, ReplicateKey, ListAliases, GetKeyPolicy and PutKeyPolicy.
 */
import type { AwsKeySpec, AwsKeyUsage, KeyStore } from './keys.ts';
import {
  authorizeKey,
  type Caller,
  defaultKeyPolicyText,
  normalizePolicy,
  type PolicyDocument,
} from './policies.ts';
import { epochSeconds, type Json, PARTITION, WireError } from './protocol.ts';

export function describeKey(keys: KeyStore, input: Json, { principal, region }: Caller): Json {
  const key = keys.requireKey(region, principal, input.KeyId);
  authorizeKey(key, principal, 'kms:DescribeKey');
  return { KeyMetadata: keys.keyMetadata(key) };
}

export function enableOrDisableKey(
  keys: KeyStore,
  input: Json,
  { principal, region }: Caller,
  enable: boolean,
): Json {
  const key = keys.requireKey(region, principal, input.KeyId);
  authorizeKey(key, principal, enable ? 'kms:EnableKey' : 'kms:DisableKey');
  if (key.state !== 'Enabled' && key.state !== 'Disabled') {
    throw new WireError(
      'KMSInvalidStateException',
      `${key.arn} is ${key.state === 'PendingDeletion' ? 'pending deletion' : key.state}.`,
    );
  }
  key.state = enable ? 'Enabled' : 'Disabled';
  return {};
}

export function scheduleKeyDeletion(keys: KeyStore, input: Json, { principal, region }: Caller): Json {
  const key = keys.requireKey(region, principal, input.KeyId);
  authorizeKey(key, principal, 'kms:ScheduleKeyDeletion');
  const days = input.PendingWindowInDays ?? 30;
  if (typeof days !== 'number' || !Number.isInteger(days) || days < 7 || days > 30) {
    throw new WireError(
      'ValidationException',
      "1 validation error detected: Value at 'pendingWindowInDays' failed to satisfy constraint: Member must have value between 7 and 30",
    );
  }
  if (key.state === 'PendingDeletion')
    throw new WireError('KMSInvalidStateException', `${key.arn} is pending deletion.`);
  key.state = 'PendingDeletion';
  key.pendingWindowInDays = days;
  key.deletionDate = new Date(Date.now() + days * 86_400_000);
  return {
    KeyId: key.arn,
    DeletionDate: epochSeconds(key.deletionDate),
    KeyState: key.state,
    PendingWindowInDays: days,
  };
}

export function cancelKeyDeletion(keys: KeyStore, input: Json, { principal, region }: Caller): Json {
  const key = keys.requireKey(region, principal, input.KeyId);
  authorizeKey(key, principal, 'kms:CancelKeyDeletion');
  if (key.state !== 'PendingDeletion') {
    throw new WireError('KMSInvalidStateException', `${key.arn} is not pending deletion.`);
  }
  key.state = 'Disabled';
  delete key.deletionDate;
  delete key.pendingWindowInDays;
  return { KeyId: key.arn };
}

/** CreateKey: any authenticated principal may create keys in its own account (no IAM policies here). */
export function createKey(keys: KeyStore, input: Json, { principal, region }: Caller): Json {
  const spec = input.KeySpec ?? input.CustomerMasterKeySpec;
  let policy: PolicyDocument | string | undefined;
  if (input.Policy !== undefined) {
    if (typeof input.Policy !== 'string')
      throw new WireError('ValidationException', 'Policy must be a string');
    try {
      normalizePolicy(input.Policy);
    } catch (e) {
      throw new WireError('MalformedPolicyDocumentException', (e as Error).message);
    }
    policy = input.Policy;
  }
  const key = keys.createKey({
    region,
    accountId: principal.accountId,
    ...(typeof spec === 'string' ? { keySpec: spec as AwsKeySpec } : {}),
    ...(typeof input.KeyUsage === 'string' ? { keyUsage: input.KeyUsage as AwsKeyUsage } : {}),
    ...(typeof input.Description === 'string' ? { description: input.Description } : {}),
    ...(input.MultiRegion === true ? { multiRegion: true } : {}),
    ...(policy === undefined ? {} : { policy }),
  });
  return { KeyMetadata: keys.keyMetadata(key) };
}
export function createAlias(keys: KeyStore, input: Json, { principal, region }: Caller): Json {
  if (typeof input.TargetKeyId === 'string' && input.TargetKeyId.includes('alias/')) {
    throw new WireError('ValidationException', 'TargetKeyId must be a key id or key ARN');
  }
  const key = keys.requireKey(region, principal, input.TargetKeyId, 'targetKeyId');
  authorizeKey(key, principal, 'kms:CreateAlias');
  if (key.accountId !== principal.accountId) {
    throw new WireError('AccessDeniedException', 'Aliases can only be created in the caller account');
  }
  keys.putAlias(key, typeof input.AliasName === 'string' ? input.AliasName : '');
  return {};
}

/** UpdateAlias: kms:UpdateAlias on the current and the new target key (key policies). */
export function updateAlias(keys: KeyStore, input: Json, { principal, region }: Caller): Json {
  if (typeof input.TargetKeyId === 'string' && input.TargetKeyId.includes('alias/')) {
    throw new WireError('ValidationException', 'TargetKeyId must be a key id or key ARN');
  }
  const alias = keys.requireAlias(region, principal, input.AliasName);
  const key = keys.requireKey(region, principal, input.TargetKeyId, 'targetKeyId');
  const current = keys.keys.get(
    `arn:${PARTITION}:kms:${region}:${principal.accountId}:key/${alias.targetKeyId}`,
  );
  if (current !== undefined) authorizeKey(current, principal, 'kms:UpdateAlias');
  authorizeKey(key, principal, 'kms:UpdateAlias');
  if (key.accountId !== principal.accountId) {
    throw new WireError('AccessDeniedException', 'An alias can only point to a key of the caller account');
  }
  if (key.state === 'PendingDeletion') {
    throw new WireError('KMSInvalidStateException', `${key.arn} is pending deletion.`);
  }
  keys.moveAlias(alias, key);
  return {};
}

/** DeleteAlias: kms:DeleteAlias on the alias's key (key policy). */
export function deleteAlias(keys: KeyStore, input: Json, { principal, region }: Caller): Json {
  const alias = keys.requireAlias(region, principal, input.AliasName);
  const key = keys.keys.get(`arn:${PARTITION}:kms:${region}:${principal.accountId}:key/${alias.targetKeyId}`);
  if (key !== undefined) authorizeKey(key, principal, 'kms:DeleteAlias');
  keys.aliases.delete(alias.arn);
  return {};
}

/**
 * ReplicateKey: a replica of a multi-region primary key in `ReplicaRegion` (same key id and
 * material), with `Policy` or the default key policy. kms:ReplicateKey on the primary.
 */
export function replicateKey(keys: KeyStore, input: Json, { principal, region }: Caller): Json {
  const primary = keys.requireKey(region, principal, input.KeyId);
  authorizeKey(primary, principal, 'kms:ReplicateKey');
  const replicaRegion = input.ReplicaRegion;
  if (typeof replicaRegion !== 'string' || !/^[a-z]{2,4}(-[a-z]+)+-\d{1,2}$/.test(replicaRegion)) {
    throw new WireError(
      'ValidationException',
      "1 validation error detected: Value at 'replicaRegion' failed to satisfy constraint: Member must be a region name",
    );
  }
  if (!primary.multiRegion) {
    throw new WireError('UnsupportedOperationException', `${primary.arn} is not a multi-Region key.`);
  }
  if (primary.multiRegionKeyType !== 'PRIMARY') {
    throw new WireError('UnsupportedOperationException', `${primary.arn} is not a primary key.`);
  }
  if (replicaRegion === primary.region) {
    throw new WireError('ValidationException', 'The replica must be in another Region than its primary key.');
  }
  if (primary.state !== 'Enabled' && primary.state !== 'Disabled') {
    throw new WireError('KMSInvalidStateException', `${primary.arn} is ${primary.state}.`);
  }
  const arn = `arn:${PARTITION}:kms:${replicaRegion}:${primary.accountId}:key/${primary.keyId}`;
  if (keys.keys.has(arn)) throw new WireError('AlreadyExistsException', `${arn} already exists`);
  let policyText = defaultKeyPolicyText(primary.accountId);
  if (input.Policy !== undefined) {
    if (typeof input.Policy !== 'string')
      throw new WireError('ValidationException', 'Policy must be a string');
    try {
      normalizePolicy(input.Policy);
    } catch (e) {
      throw new WireError('MalformedPolicyDocumentException', (e as Error).message);
    }
    policyText = input.Policy;
  }
  const replica = keys.replicateKey(primary.arn, replicaRegion);
  replica.policyText = policyText;
  replica.policy = normalizePolicy(policyText);
  if (typeof input.Description === 'string') replica.description = input.Description;
  return {
    ReplicaKeyMetadata: keys.keyMetadata(replica),
    ReplicaPolicy: policyText,
    ReplicaTags: [],
  };
}

export function listAliases(keys: KeyStore, input: Json, { principal, region }: Caller): Json {
  let keyId: string | undefined;
  if (input.KeyId !== undefined) {
    const key = keys.requireKey(region, principal, input.KeyId);
    authorizeKey(key, principal, 'kms:ListAliases');
    keyId = key.keyId;
  }
  const prefix = `arn:${PARTITION}:kms:${region}:${principal.accountId}:alias/`;
  const aliases = [...keys.aliases.values()]
    .filter((a) => a.arn.startsWith(prefix) && (keyId === undefined || a.targetKeyId === keyId))
    .map((a) => ({
      AliasName: a.name,
      AliasArn: a.arn,
      TargetKeyId: a.targetKeyId,
      CreationDate: epochSeconds(a.createdAt),
      LastUpdatedDate: epochSeconds(a.updatedAt),
    }));
  return { Aliases: aliases, Truncated: false };
}

export function getKeyPolicy(keys: KeyStore, input: Json, { principal, region }: Caller): Json {
  const key = keys.requireKey(region, principal, input.KeyId);
  authorizeKey(key, principal, 'kms:GetKeyPolicy');
  return { Policy: key.policyText, PolicyName: 'default' };
}

export function putKeyPolicy(keys: KeyStore, input: Json, { principal, region }: Caller): Json {
  const key = keys.requireKey(region, principal, input.KeyId);
  authorizeKey(key, principal, 'kms:PutKeyPolicy');
  if (typeof input.Policy !== 'string') throw new WireError('ValidationException', 'Policy is required');
  try {
    key.policy = normalizePolicy(input.Policy);
  } catch (e) {
    throw new WireError('MalformedPolicyDocumentException', (e as Error).message);
  }
  key.policyText = input.Policy;
  return {};
}
