/**
 * Onboarding artifacts for a tenant's key administrator: `keyring.onboarding(tenantId, options)`
 * and `drizzle-byok keys onboard`. Generates (once) and stores a per-tenant external id, and returns
 * exactly what the tenant runs in its own cloud account:
 * - AWS: the key policy (the tenant account's administration statement, a `kms:DescribeKey`
 *   statement for the platform role with no condition, since DescribeKey carries no encryption
 *   context, and an `Encrypt`/`Decrypt` statement conditioned on `kms:EncryptionContext:byok:tenant`),
 *   the role trust policy naming the platform's principal and requiring the external id, the `aws`
 *   CLI commands and a Terraform snippet (multi-region key replicated to every region given);
 * - Cloud KMS: the IAM bindings for the platform's service account, the `gcloud` commands and a
 *   Terraform snippet;
 * - Azure Key Vault: the role assignment on the key, the `az` commands and a Terraform snippet
 *   (`./onboarding-azure.ts`);
 * - Vault Transit: the ACL policy (HCL), the auth role, the `vault` commands and a Terraform snippet
 *   (`./onboarding-vault.ts`).
 * `enableByok` / `rotateKek` (and `keys enable`) then refuse an assume-role KEK whose external id
 * is not the one issued to the tenant.
 */
import { randomBytes } from 'node:crypto';
import { eq } from 'drizzle-orm';
import { assertTenantId, scopeStorage } from '../scope.ts';
import { ByokConfigError } from '../errors.ts';
import type { Kek } from '../kms/kek.ts';
import { byokOnboarding } from '../store/schema-identity.ts';
import {
  type AzureOnboarding,
  type AzureOnboardingOptions,
  azureArtifacts,
  validateAzureOnboarding,
} from './onboarding-azure.ts';
import {
  type VaultOnboarding,
  type VaultOnboardingOptions,
  validateVaultOnboarding,
  vaultArtifacts,
} from './onboarding-vault.ts';
import { asPgDb } from '../store/db.ts';
import type { KeyringContext } from './context.ts';
import { byokTenants } from '../store/schema-key-store.ts';

export interface AwsOnboardingOptions {
  readonly provider: 'aws';
  /**
   * The platform's identity that calls `sts:AssumeRole` into the tenant's role (the app's IAM role
   * or user ARN), written into the role trust policy.
   */
  readonly platformPrincipal: string;
  /** The tenant's AWS account id (12 digits): where the key and the role live. */
  readonly tenantAccountId: string;
  /** Regions of the key; the first holds the (multi-region, when several) primary key. */
  readonly regions: readonly string[];
  /** Name of the role the platform assumes. Default `drizzle-byok`. */
  readonly roleName?: string;
  /** Alias of the key, `alias/...`. Default `alias/drizzle-byok`. */
  readonly keyAlias?: string;
  /** AWS partition. Default `aws`. */
  readonly partition?: string;
  /** Issue a new external id even if one was issued before. Default false. */
  readonly rotateExternalId?: boolean;
}

export interface GcpOnboardingOptions {
  readonly provider: 'gcp';
  /** The platform's service account email, granted on the tenant's key. */
  readonly serviceAccount: string;
  /** The tenant's project id. */
  readonly project: string;
  /** Locations of the key (a Cloud KMS key lives in one; give several for one key per location). */
  readonly regions: readonly string[];
  /** Key ring id. Default `drizzle-byok`. */
  readonly keyRing?: string;
  /** CryptoKey id. Default `drizzle-byok`. */
  readonly key?: string;
}

export type { AzureOnboarding, AzureOnboardingOptions } from './onboarding-azure.ts';
export type { VaultOnboarding, VaultOnboardingOptions } from './onboarding-vault.ts';

export type OnboardingOptions =
  | AwsOnboardingOptions
  | GcpOnboardingOptions
  | AzureOnboardingOptions
  | VaultOnboardingOptions;

/** An IAM policy statement as AWS writes them. */
export interface AwsPolicyStatement {
  readonly Sid: string;
  readonly Effect: 'Allow';
  readonly Principal: { readonly AWS: string };
  readonly Action: string | readonly string[];
  readonly Resource?: string;
  readonly Condition?: Readonly<Record<string, Readonly<Record<string, string>>>>;
}

export interface AwsPolicyDocument {
  readonly Version: '2012-10-17';
  readonly Statement: readonly AwsPolicyStatement[];
}

export interface AwsOnboarding {
  readonly provider: 'aws';
  readonly tenantId: string;
  /** The external id the role trust policy requires; `keys enable` / `enableByok` check it. */
  readonly externalId: string;
  readonly roleArn: string;
  /** Alias ARN per region: what to give `awsKms({ keyArn })` / `keys enable --aws-key-arn`. */
  readonly keyArns: readonly string[];
  /** The platform's statements only (DescribeKey unconditioned; Encrypt/Decrypt pinned to the tenant). */
  readonly keyPolicyStatements: readonly AwsPolicyStatement[];
  /** A complete key policy: the tenant account's administration statement plus the platform's. */
  readonly keyPolicy: AwsPolicyDocument;
  readonly roleTrustPolicy: AwsPolicyDocument;
  /** `aws` CLI commands (bash) that create the role, the key, its alias and replicas. */
  readonly shell: string;
  /** Terraform (AWS provider) creating the same. */
  readonly terraform: string;
  /** The platform-side command once the tenant has run the above. */
  readonly enableCommand: string;
}

export interface GcpOnboarding {
  readonly provider: 'gcp';
  readonly tenantId: string;
  readonly externalId: null;
  /** CryptoKey name per location: what to give `gcpKms({ keyName })`. */
  readonly keyNames: readonly string[];
  readonly iamBindings: readonly { readonly role: string; readonly member: string }[];
  readonly shell: string;
  readonly terraform: string;
  readonly enableCommand: string;
}

export type Onboarding = AwsOnboarding | GcpOnboarding | AzureOnboarding | VaultOnboarding;

const REGION_RE = /^[a-z]{2,4}(-[a-z]+)+-\d{1,2}$/;
const GCP_LOCATION_RE = /^(global|[a-z]+(-[a-z]+)*\d*)$/;
const PRINCIPAL_RE =
  /^arn:(aws|aws-cn|aws-us-gov):(iam::\d{12}:(role|user)\/[\w+=,.@/-]+|iam::\d{12}:root|sts::\d{12}:assumed-role\/[\w+=,.@-]+\/[\w+=,.@-]+)$/;

function bad(message: string): ByokConfigError {
  return new ByokConfigError(`onboarding: ${message}`);
}

function regionsOf(v: unknown, re: RegExp, what: string): string[] {
  if (!Array.isArray(v) || v.length === 0) throw bad(`regions must list at least one ${what}`);
  for (const r of v) {
    if (typeof r !== 'string' || !re.test(r))
      throw bad(`regions: ${JSON.stringify(r)} is not a ${what} name`);
  }
  if (new Set(v).size !== v.length) throw bad('regions lists a region twice');
  return [...v] as string[];
}

/** An external id: 32 random hex digits behind a fixed prefix (AWS allows 2-1224 of [\w+=,.@:/-]). */
function newExternalId(): string {
  return `byok-${randomBytes(16).toString('hex')}`;
}

const json = (v: unknown) => JSON.stringify(v, null, 2);
/** A Terraform interpolation of the role's ARN (so the key policy follows the role resource). */
const TF_ROLE_ARN = ['$', '{aws_iam_role.drizzle_byok.arn}'].join('');
const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
const tfString = (s: string) => JSON.stringify(s);

/** The AWS artifacts for a tenant, from validated options and the issued external id. */
export function awsArtifacts(tenantId: string, o: AwsOnboardingOptions, externalId: string): AwsOnboarding {
  const partition = o.partition ?? 'aws';
  const roleName = o.roleName ?? 'drizzle-byok';
  const alias = o.keyAlias ?? 'alias/drizzle-byok';
  const account = o.tenantAccountId;
  const roleArn = `arn:${partition}:iam::${account}:role/${roleName}`;
  const regions = [...o.regions];
  const multi = regions.length > 1;
  const platform: AwsPolicyStatement[] = [
    {
      Sid: 'AllowPlatformToDescribeKey',
      Effect: 'Allow',
      Principal: { AWS: roleArn },
      Action: 'kms:DescribeKey',
      Resource: '*',
    },
    {
      Sid: 'AllowPlatformToWrapDataKeysOfThisTenant',
      Effect: 'Allow',
      Principal: { AWS: roleArn },
      Action: ['kms:Encrypt', 'kms:Decrypt'],
      Resource: '*',
      Condition: { StringEquals: { 'kms:EncryptionContext:byok:tenant': tenantId } },
    },
  ];
  const keyPolicy: AwsPolicyDocument = {
    Version: '2012-10-17',
    Statement: [
      {
        Sid: 'EnableTenantAccountAdministration',
        Effect: 'Allow',
        Principal: { AWS: `arn:${partition}:iam::${account}:root` },
        Action: 'kms:*',
        Resource: '*',
      },
      ...platform,
    ],
  };
  const roleTrustPolicy: AwsPolicyDocument = {
    Version: '2012-10-17',
    Statement: [
      {
        Sid: 'AllowPlatformToAssumeRole',
        Effect: 'Allow',
        Principal: { AWS: o.platformPrincipal },
        Action: 'sts:AssumeRole',
        Condition: { StringEquals: { 'sts:ExternalId': externalId } },
      },
    ],
  };
  const keyArns = regions.map((r) => `arn:${partition}:kms:${r}:${account}:${alias}`);
  const enableCommand = [
    `drizzle-byok keys enable ${shq(tenantId)}`,
    ...keyArns.map((a) => `--aws-key-arn ${a}`),
    `--aws-role-arn ${roleArn}`,
  ].join(' ');
  const [primary, ...replicas] = regions as [string, ...string[]];
  const shell = [
    '#!/usr/bin/env bash',
    `# drizzle-byok: bring your own key for tenant ${tenantId}. Run with credentials of AWS account ${account}.`,
    'set -euo pipefail',
    "cat > drizzle-byok-trust.json <<'JSON'",
    json(roleTrustPolicy),
    'JSON',
    "cat > drizzle-byok-key-policy.json <<'JSON'",
    json(keyPolicy),
    'JSON',
    `aws iam create-role --role-name ${shq(roleName)} --assume-role-policy-document file://drizzle-byok-trust.json`,
    `KEY_ARN=$(aws kms create-key --region ${primary} --description ${shq(`drizzle-byok data keys of tenant ${tenantId}`)} \\`,
    `  --key-spec SYMMETRIC_DEFAULT --key-usage ENCRYPT_DECRYPT${multi ? ' --multi-region' : ''} \\`,
    '  --policy file://drizzle-byok-key-policy.json --query KeyMetadata.Arn --output text)',
    `aws kms enable-key-rotation --region ${primary} --key-id "$KEY_ARN"`,
    `aws kms create-alias --region ${primary} --alias-name ${shq(alias)} --target-key-id "$KEY_ARN"`,
    ...replicas.flatMap((r) => [
      `REPLICA_ARN=$(aws kms replicate-key --region ${primary} --key-id "$KEY_ARN" --replica-region ${r} \\`,
      '  --policy file://drizzle-byok-key-policy.json --query ReplicaKeyMetadata.Arn --output text)',
      `aws kms create-alias --region ${r} --alias-name ${shq(alias)} --target-key-id "$REPLICA_ARN"`,
    ]),
    'echo "Give your provider these to finish:"',
    `echo "  role ARN: ${roleArn}"`,
    ...keyArns.map((a) => `echo "  key ARN:  ${a}"`),
    '',
  ].join('\n');
  const res = (s: string) => s.replace(/[^A-Za-z0-9_]/g, '_');
  const terraform = [
    `# drizzle-byok: bring your own key for tenant ${tenantId}, in AWS account ${account}.`,
    ...regions.map(
      (r, i) =>
        `provider "aws" {\n  ${i === 0 ? '' : `alias  = ${tfString(res(r))}\n  `}region = ${tfString(r)}\n}`,
    ),
    '',
    'resource "aws_iam_role" "drizzle_byok" {',
    `  name               = ${tfString(roleName)}`,
    `  assume_role_policy = jsonencode(${json(roleTrustPolicy).split('\n').join('\n  ')})`,
    '}',
    '',
    'locals {',
    `  drizzle_byok_key_policy = jsonencode(${json({
      ...keyPolicy,
      Statement: keyPolicy.Statement.map((s) =>
        s.Principal.AWS === roleArn ? { ...s, Principal: { AWS: TF_ROLE_ARN } } : s,
      ),
    })
      .split('\n')
      .join('\n  ')})`,
    '}',
    '',
    'resource "aws_kms_key" "drizzle_byok" {',
    `  description              = ${tfString(`drizzle-byok data keys of tenant ${tenantId}`)}`,
    '  key_usage                = "ENCRYPT_DECRYPT"',
    '  customer_master_key_spec = "SYMMETRIC_DEFAULT"',
    `  multi_region             = ${multi}`,
    '  enable_key_rotation      = true',
    '  policy                   = local.drizzle_byok_key_policy',
    '}',
    '',
    'resource "aws_kms_alias" "drizzle_byok" {',
    `  name          = ${tfString(alias)}`,
    '  target_key_id = aws_kms_key.drizzle_byok.key_id',
    '}',
    ...replicas.flatMap((r) => [
      '',
      `resource "aws_kms_replica_key" "drizzle_byok_${res(r)}" {`,
      `  provider        = aws.${res(r)}`,
      '  primary_key_arn = aws_kms_key.drizzle_byok.arn',
      '  policy          = local.drizzle_byok_key_policy',
      '}',
      '',
      `resource "aws_kms_alias" "drizzle_byok_${res(r)}" {`,
      `  provider      = aws.${res(r)}`,
      `  name          = ${tfString(alias)}`,
      `  target_key_id = aws_kms_replica_key.drizzle_byok_${res(r)}.key_id`,
      '}',
    ]),
    '',
    'output "drizzle_byok_role_arn" {',
    '  value = aws_iam_role.drizzle_byok.arn',
    '}',
    '',
    'output "drizzle_byok_key_arns" {',
    `  value = ${tfString(keyArns.join(','))}`,
    '}',
    '',
  ].join('\n');
  return {
    provider: 'aws',
    tenantId,
    externalId,
    roleArn,
    keyArns,
    keyPolicyStatements: platform,
    keyPolicy,
    roleTrustPolicy,
    shell,
    terraform,
    enableCommand,
  };
}

/** The Cloud KMS artifacts for a tenant. */
export function gcpArtifacts(tenantId: string, o: GcpOnboardingOptions): GcpOnboarding {
  const ring = o.keyRing ?? 'drizzle-byok';
  const key = o.key ?? 'drizzle-byok';
  const member = `serviceAccount:${o.serviceAccount}`;
  const iamBindings = [
    { role: 'roles/cloudkms.cryptoKeyEncrypterDecrypter', member },
    { role: 'roles/cloudkms.viewer', member },
  ];
  const keyNames = o.regions.map(
    (l) => `projects/${o.project}/locations/${l}/keyRings/${ring}/cryptoKeys/${key}`,
  );
  const shell = [
    '#!/usr/bin/env bash',
    `# drizzle-byok: bring your own key for tenant ${tenantId}, in project ${o.project}.`,
    'set -euo pipefail',
    ...o.regions.flatMap((l) => [
      `gcloud kms keyrings create ${ring} --project ${o.project} --location ${l}`,
      `gcloud kms keys create ${key} --project ${o.project} --location ${l} --keyring ${ring} \\`,
      '  --purpose encryption --rotation-period 90d --next-rotation-time "$(date -u -d +90days +%Y-%m-%dT%H:%M:%SZ)"',
      ...iamBindings.map(
        (b) =>
          `gcloud kms keys add-iam-policy-binding ${key} --project ${o.project} --location ${l} --keyring ${ring} \\\n  --member ${b.member} --role ${b.role}`,
      ),
    ]),
    'echo "Give your provider these key names to finish:"',
    ...keyNames.map((n) => `echo "  ${n}"`),
    '',
  ].join('\n');
  const res = (s: string) => s.replace(/[^A-Za-z0-9_]/g, '_');
  const terraform = [
    `# drizzle-byok: bring your own key for tenant ${tenantId}, in project ${o.project}.`,
    ...o.regions.flatMap((l) => [
      '',
      `resource "google_kms_key_ring" "drizzle_byok_${res(l)}" {`,
      `  project  = ${tfString(o.project)}`,
      `  name     = ${tfString(ring)}`,
      `  location = ${tfString(l)}`,
      '}',
      '',
      `resource "google_kms_crypto_key" "drizzle_byok_${res(l)}" {`,
      `  name            = ${tfString(key)}`,
      `  key_ring        = google_kms_key_ring.drizzle_byok_${res(l)}.id`,
      '  purpose         = "ENCRYPT_DECRYPT"',
      '  rotation_period = "7776000s"',
      '}',
      ...iamBindings.flatMap((b, i) => [
        '',
        `resource "google_kms_crypto_key_iam_member" "drizzle_byok_${res(l)}_${i}" {`,
        `  crypto_key_id = google_kms_crypto_key.drizzle_byok_${res(l)}.id`,
        `  role          = ${tfString(b.role)}`,
        `  member        = ${tfString(b.member)}`,
        '}',
      ]),
    ]),
    '',
  ].join('\n');
  const enableCommand = [
    `drizzle-byok keys enable ${shq(tenantId)}`,
    ...keyNames.map((n) => `--gcp-key-name ${n}`),
  ].join(' ');
  return {
    provider: 'gcp',
    tenantId,
    externalId: null,
    keyNames,
    iamBindings,
    shell,
    terraform,
    enableCommand,
  };
}

function validate(o: OnboardingOptions): OnboardingOptions {
  if (o === null || typeof o !== 'object')
    throw bad('options are required: { provider: "aws" | "gcp" | "azure" | "vault", ... }');
  if (o.provider === 'aws') {
    if (typeof o.platformPrincipal !== 'string' || !PRINCIPAL_RE.test(o.platformPrincipal)) {
      throw bad(
        'platformPrincipal must be the ARN of the platform identity that calls sts:AssumeRole ' +
          '(arn:aws:iam::<account-id>:role/<name> or :user/<name>)',
      );
    }
    if (typeof o.tenantAccountId !== 'string' || !/^\d{12}$/.test(o.tenantAccountId)) {
      throw bad("tenantAccountId must be the tenant's 12-digit AWS account id");
    }
    regionsOf(o.regions, REGION_RE, 'AWS region (such as eu-west-1)');
    if (o.roleName !== undefined && !/^[\w+=,.@-]{1,64}$/.test(o.roleName)) {
      throw bad('roleName must be 1 to 64 of a-z A-Z 0-9 _ + = , . @ -');
    }
    if (
      o.keyAlias !== undefined &&
      (!/^alias\/[a-zA-Z0-9/_-]{1,250}$/.test(o.keyAlias) || o.keyAlias.startsWith('alias/aws/'))
    ) {
      throw bad('keyAlias must be alias/ followed by 1 to 250 of a-z A-Z 0-9 / _ - (and not alias/aws/...)');
    }
    if (o.partition !== undefined && !['aws', 'aws-cn', 'aws-us-gov'].includes(o.partition)) {
      throw bad('partition must be aws, aws-cn or aws-us-gov');
    }
    return o;
  }
  if (o.provider === 'gcp') {
    if (
      typeof o.serviceAccount !== 'string' ||
      !/^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.-]+\.iam\.gserviceaccount\.com$/.test(o.serviceAccount)
    ) {
      throw bad(
        "serviceAccount must be the platform's service account email (name@project.iam.gserviceaccount.com)",
      );
    }
    if (typeof o.project !== 'string' || !/^[a-z][a-z0-9-]{4,28}[a-z0-9]$/.test(o.project)) {
      throw bad(
        "project must be the tenant's Google Cloud project id (6-30 of a-z 0-9 -, starting with a letter)",
      );
    }
    regionsOf(o.regions, GCP_LOCATION_RE, 'Cloud KMS location (such as europe-west1 or global)');
    for (const [name, v] of [
      ['keyRing', o.keyRing],
      ['key', o.key],
    ] as const) {
      if (v !== undefined && !/^[a-zA-Z0-9_-]{1,63}$/.test(v))
        throw bad(`${name} must be 1 to 63 of a-z A-Z 0-9 _ -`);
    }
    return o;
  }
  if (o.provider === 'vault') return validateVaultOnboarding(o);
  if (o.provider === 'azure') return validateAzureOnboarding(o);
  throw bad(
    `provider must be "aws", "gcp", "azure" or "vault" (got ${JSON.stringify((o as { provider?: unknown }).provider)})`,
  );
}

/** Generates (or re-reads) the tenant's external id, stores the onboarding record, returns the artifacts. */
export async function onboarding(
  keyring: KeyringContext,
  tenantId: string,
  options: OnboardingOptions,
): Promise<Onboarding> {
  assertTenantId(tenantId);
  const o = validate(options);
  return scopeStorage.exit(async () => {
    const db = asPgDb(keyring.db);
    return asPgDb(db).transaction(async (tx) => {
      await tx.insert(byokTenants).values({ tenantId }).onConflictDoNothing();
      const [existing] = await tx
        .select()
        .from(byokOnboarding)
        .where(eq(byokOnboarding.tenantId, tenantId))
        .for('update');
      const keep =
        o.provider === 'aws' &&
        existing?.provider === 'aws' &&
        existing.externalId !== null &&
        (o as AwsOnboardingOptions).rotateExternalId !== true;
      const externalId = o.provider === 'aws' ? (keep ? existing!.externalId! : newExternalId()) : null;
      const { rotateExternalId: _, ...params } = o as AwsOnboardingOptions;
      const row = { tenantId, provider: o.provider, externalId, params, updatedAt: new Date() };
      await tx
        .insert(byokOnboarding)
        .values(row)
        .onConflictDoUpdate({ target: byokOnboarding.tenantId, set: row });
      if (o.provider === 'vault') return vaultArtifacts(tenantId, o);
      if (o.provider === 'azure') return azureArtifacts(tenantId, o);
      return o.provider === 'aws' ? awsArtifacts(tenantId, o, externalId!) : gcpArtifacts(tenantId, o);
    });
  });
}

/** The external id issued to a tenant by `onboarding`, if any. */
export async function issuedExternalId(keyring: KeyringContext, tenantId: string): Promise<string | null> {
  const [row] = await scopeStorage.exit(() =>
    keyring.db
      .select({ externalId: byokOnboarding.externalId })
      .from(byokOnboarding)
      .where(eq(byokOnboarding.tenantId, tenantId)),
  );
  return row?.externalId ?? null;
}

/** Every external id an AWS KEK's auth chain passes to AssumeRole. */
function externalIdsOf(auth: unknown): string[] {
  const a = auth as { type?: unknown; externalId?: unknown; source?: unknown } | undefined;
  if (a === undefined || a === null || typeof a !== 'object') return [];
  const own = a.type === 'assume-role' && typeof a.externalId === 'string' ? [a.externalId] : [];
  return [...own, ...externalIdsOf(a.source)];
}

/**
 * Before `enableByok` / `rotateKek`: when the tenant was issued an external id, every AWS KEK that
 * assumes a role must pass exactly that one as the outermost (tenant-side) role's external id.
 */
export async function checkIssuedExternalId(
  keyring: KeyringContext,
  tenantId: string,
  keks: readonly Kek[],
): Promise<void> {
  const issued = await issuedExternalId(keyring, tenantId);
  if (issued === null) return;
  for (const kek of keks) {
    if (kek.kind !== 'aws-kms') continue;
    const ids = externalIdsOf(kek.toConfig().params.auth);
    if (ids.length === 0) continue;
    if (ids[0] !== issued) {
      throw new ByokConfigError(
        `${kek.keyRef}: the role's external id is not the one issued to tenant ${tenantId} by onboarding ` +
          `(${issued}); use that one, or run onboarding with rotateExternalId and update the role's trust policy`,
        { tenantId },
      );
    }
  }
}
