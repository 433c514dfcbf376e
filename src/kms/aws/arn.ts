/** AWS identity: KMS key and alias ARNs, IAM role ARNs, and which key ARNs a key reference can name. */
import { ByokConfigError } from '../../errors.ts';

/** The parts of a KMS key or alias ARN. */
export interface AwsKmsKeyArnParts {
  readonly partition: string;
  readonly region: string;
  readonly accountId: string;
  readonly resourceType: 'key' | 'alias';
  /** Key id (UUID or `mrk-...`) or alias name with its `alias/` prefix. */
  readonly resource: string;
  readonly multiRegion: boolean;
}

const PARTITIONS = [
  'aws',
  'aws-cn',
  'aws-us-gov',
  'aws-iso',
  'aws-iso-b',
  'aws-iso-e',
  'aws-iso-f',
  'aws-eusc',
];
const REGION_RE = /^[a-z]{2,4}(-[a-z]+)+-\d{1,2}$/;
const ACCOUNT_RE = /^\d{12}$/;
const KEY_ID_RE = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$/;
const ALIAS_RE = /^alias\/[a-zA-Z0-9/_-]{1,250}$/;

/**
 * Parses and validates a KMS key ARN or alias ARN; throws `ByokConfigError` naming the malformed
 * part (partition, service, region, account id, resource type, key id or alias name).
 */
export function parseAwsKmsKeyArn(keyArn: unknown): AwsKmsKeyArnParts {
  if (typeof keyArn !== 'string' || keyArn.trim() === '') {
    throw new ByokConfigError('awsKms: keyArn is required (arn:aws:kms:<region>:<account-id>:key/<key-id>)');
  }
  const bad = (what: string) => new ByokConfigError(`awsKms: invalid key ARN "${keyArn}": ${what}`);
  if (!keyArn.startsWith('arn:')) {
    const kind = KEY_ID_RE.test(keyArn)
      ? 'a bare key id'
      : keyArn.startsWith('alias/')
        ? 'a bare alias name'
        : 'not an ARN';
    throw bad(
      `${kind}; a full key ARN (arn:aws:kms:<region>:<account-id>:key/<key-id>) or alias ARN is needed, ` +
        "because tenants' keys live in other AWS accounts, which only an ARN can name",
    );
  }
  const parts = keyArn.split(':');
  if (parts.length !== 6) {
    throw bad(
      `expected 6 colon-separated parts (arn:partition:kms:region:account-id:resource), found ${parts.length}`,
    );
  }
  const [, partition, service, region, accountId, resource] = parts as [
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  if (!PARTITIONS.includes(partition)) {
    throw bad(`partition "${partition}" is not an AWS partition (expected one of ${PARTITIONS.join(', ')})`);
  }
  if (service !== 'kms') throw bad(`service "${service}" is not "kms"`);
  if (!REGION_RE.test(region)) throw bad(`region "${region}" is not a region name such as us-east-1`);
  if (!ACCOUNT_RE.test(accountId)) throw bad(`account id "${accountId}" is not 12 digits`);
  const slash = resource.indexOf('/');
  const resourceType = slash < 0 ? resource : resource.slice(0, slash);
  if (resourceType === 'key') {
    const keyId = resource.slice(slash + 1);
    if (!KEY_ID_RE.test(keyId)) {
      throw bad(
        `key id "${keyId}" is neither a key UUID nor a multi-region key id (mrk- followed by 32 hex digits)`,
      );
    }
    return {
      partition,
      region,
      accountId,
      resourceType,
      resource: keyId,
      multiRegion: keyId.startsWith('mrk-'),
    };
  }
  if (resourceType === 'alias') {
    if (!ALIAS_RE.test(resource)) {
      throw bad(`alias name "${resource}" must be alias/ followed by 1 to 250 of a-z A-Z 0-9 / _ -`);
    }
    if (resource.startsWith('alias/aws/')) {
      throw bad(
        `alias name "${resource}" names an AWS managed key, which cannot be shared; use a customer managed key`,
      );
    }
    return { partition, region, accountId, resourceType, resource, multiRegion: false };
  }
  throw bad(`resource type "${resourceType}" is neither "key" nor "alias"`);
}

/** Validates an IAM role ARN (`arn:<partition>:iam::<account-id>:role/<name>`) of an auth option. */
export function validateRoleArn(roleArn: unknown, where: string): string {
  if (typeof roleArn !== 'string' || roleArn === '')
    throw new ByokConfigError(`awsKms: ${where}.roleArn is required`);
  const m = /^arn:([^:]*):iam::([^:]*):role\/((?:[\w+=,.@-]+\/)*[\w+=,.@-]{1,64})$/.exec(roleArn);
  if (!m) {
    throw new ByokConfigError(
      `awsKms: invalid ${where}.roleArn "${roleArn}": expected arn:aws:iam::<account-id>:role/<name>`,
    );
  }
  if (!PARTITIONS.includes(m[1]!))
    throw new ByokConfigError(`awsKms: invalid ${where}.roleArn "${roleArn}": unknown partition`);
  if (!ACCOUNT_RE.test(m[2]!)) {
    throw new ByokConfigError(
      `awsKms: invalid ${where}.roleArn "${roleArn}": account id "${m[2]}" is not 12 digits`,
    );
  }
  return roleArn;
}

/**
 * Whether `keyArn` is a key a KEK configured with `keyRef` (parsed as `own`) can name: the
 * configured key ARN itself, or for an alias ARN any key ARN of the alias's partition, account and
 * region.
 */
export function canNameAwsKey(own: AwsKmsKeyArnParts, keyRef: string, keyArn: string): boolean {
  let parts: AwsKmsKeyArnParts;
  try {
    parts = parseAwsKmsKeyArn(keyArn);
  } catch {
    return false;
  }
  if (parts.resourceType !== 'key') return false;
  if (own.resourceType === 'key') return keyArn === keyRef;
  return (
    parts.partition === own.partition && parts.region === own.region && parts.accountId === own.accountId
  );
}
