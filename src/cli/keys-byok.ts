/**
 * `drizzle-byok keys onboard`, `keys rewrap-platform` and `keys rewrap-moved`: onboarding artifacts
 * for a tenant's key administrator, platform key replacement, and following a moved alias.
 */
import type { Onboarding, OnboardingOptions } from '../keys/onboarding.ts';
import { type Context, EXIT, intFlag, UsageError } from './context.ts';
import { fmtInt, Progress } from './output.ts';

const FORMATS = ['text', 'json', 'shell', 'terraform'] as const;

export async function onboardCommand(ctx: Context): Promise<number> {
  if (ctx.args.length !== 1)
    throw new UsageError(`keys onboard needs exactly one tenant id (got ${ctx.args.length})`);
  const tenant = ctx.args[0]!;
  const f = ctx.flags;
  const chosen = (['aws', 'gcp', 'azure', 'vault'] as const).filter((p) => f[p] === true);
  if (chosen.length !== 1) throw new UsageError('keys onboard needs one of --aws, --gcp, --azure or --vault');
  const provider = chosen[0]!;
  const format = (f.format as string | undefined) ?? (ctx.json ? 'json' : 'text');
  if (!(FORMATS as readonly string[]).includes(format)) {
    throw new UsageError(`--format must be one of ${FORMATS.join(', ')} (got ${JSON.stringify(format)})`);
  }
  const regions = (f.region as string[] | undefined) ?? [];
  if (regions.length === 0 && (provider === 'aws' || provider === 'gcp')) {
    throw new UsageError('keys onboard needs --region (once per region of the key)');
  }
  const need = (name: string): string => {
    const v = f[name];
    if (typeof v !== 'string' || v === '') throw new UsageError(`keys onboard --${provider} needs --${name}`);
    return v;
  };
  const only: Record<typeof provider, readonly string[]> = {
    aws: ['platform-principal', 'tenant-account', 'role-name', 'key-alias', 'rotate-external-id'],
    gcp: ['service-account', 'project', 'key-ring', 'key-id'],
    azure: [
      'azure-principal',
      'azure-subscription',
      'azure-resource-group',
      'azure-vault',
      'azure-location',
      'azure-key',
    ],
    vault: [
      'vault-address',
      'vault-namespace',
      'vault-mount',
      'vault-key',
      'vault-auth',
      'vault-role',
      'k8s-service-account',
      'k8s-namespace',
      'jwt-subject',
      'jwt-audience',
    ],
  };
  for (const other of ['aws', 'gcp', 'azure', 'vault'] as const) {
    if (other === provider) continue;
    for (const name of only[other]) {
      if (f[name] !== undefined && !only[provider].includes(name)) {
        throw new UsageError(`--${name} goes with --${other}`);
      }
    }
  }
  if ((provider === 'vault' || provider === 'azure') && regions.length > 0) {
    throw new UsageError('--region goes with --aws or --gcp');
  }
  const opt = (flag: string, key: string) => (f[flag] === undefined ? {} : { [key]: f[flag] as string });
  const options: OnboardingOptions =
    provider === 'aws'
      ? {
          provider: 'aws',
          platformPrincipal: need('platform-principal'),
          tenantAccountId: need('tenant-account'),
          regions,
          ...opt('role-name', 'roleName'),
          ...opt('key-alias', 'keyAlias'),
          ...(f['rotate-external-id'] ? { rotateExternalId: true } : {}),
        }
      : provider === 'azure'
        ? {
            provider: 'azure',
            principalObjectId: need('azure-principal'),
            subscriptionId: need('azure-subscription'),
            resourceGroup: need('azure-resource-group'),
            vaultName: need('azure-vault'),
            location: need('azure-location'),
            ...opt('azure-key', 'keyName'),
          }
        : provider === 'gcp'
          ? {
              provider: 'gcp',
              serviceAccount: need('service-account'),
              project: need('project'),
              regions,
              ...opt('key-ring', 'keyRing'),
              ...opt('key-id', 'key'),
            }
          : {
              provider: 'vault',
              address: need('vault-address'),
              ...opt('vault-namespace', 'namespace'),
              ...opt('vault-mount', 'mount'),
              ...opt('vault-key', 'keyName'),
              ...(f['vault-auth'] === undefined
                ? {}
                : { auth: f['vault-auth'] as 'approle' | 'kubernetes' | 'jwt' }),
              ...opt('vault-role', 'roleName'),
              ...opt('k8s-service-account', 'serviceAccount'),
              ...opt('k8s-namespace', 'serviceAccountNamespace'),
              ...opt('jwt-subject', 'boundSubject'),
              ...opt('jwt-audience', 'boundAudience'),
            };
  const loaded = await ctx.config();
  const a = await loaded.keyring.onboarding(tenant, options);
  if (format === 'json') ctx.io.stdout.write(`${JSON.stringify(a, null, 2)}\n`);
  else if (format === 'shell') ctx.io.stdout.write(a.shell);
  else if (format === 'terraform') ctx.io.stdout.write(a.terraform);
  else ctx.io.stdout.write(`${onboardingText(a)}\n`);
  return EXIT.ok;
}

function onboardingText(a: Onboarding): string {
  const j = (v: unknown) => JSON.stringify(v, null, 2);
  if (a.provider === 'aws') {
    return [
      `Tenant ${a.tenantId}: bring your own AWS KMS key.`,
      '',
      `External id (issued to this tenant, stored; the role trust policy requires it): ${a.externalId}`,
      `Role the platform assumes: ${a.roleArn}`,
      `Key (alias) ARN${a.keyArns.length > 1 ? 's' : ''}: ${a.keyArns.join(', ')}`,
      '',
      'Key policy (DescribeKey has its own statement: it carries no encryption context):',
      j(a.keyPolicy),
      '',
      'Role trust policy:',
      j(a.roleTrustPolicy),
      '',
      'The tenant runs `--format shell` (aws CLI) or `--format terraform`; then the platform runs:',
      `  ${a.enableCommand}`,
    ].join('\n');
  }
  if (a.provider === 'azure') {
    return [
      `Tenant ${a.tenantId}: bring your own Azure Key Vault key.`,
      '',
      `Key id: ${a.keyId}`,
      `Role assignment: ${a.role} on ${a.scope}`,
      '',
      'The tenant runs `--format shell` (az CLI) or `--format terraform`; then the platform runs:',
      `  ${a.enableCommand}`,
    ].join('\n');
  }
  if (a.provider === 'vault') {
    return [
      `Tenant ${a.tenantId}: bring your own HashiCorp Vault Transit key.`,
      '',
      `Key: ${a.mount}/keys/${a.keyName} in ${a.address}${a.namespace === null ? '' : ` (namespace ${a.namespace})`}`,
      `Policy ${a.policyName} for the platform's login:`,
      a.policy.trimEnd(),
      '',
      'The tenant runs `--format shell` (vault CLI) or `--format terraform`; then the platform runs:',
      `  ${a.enableCommand}`,
    ].join('\n');
  }
  return [
    `Tenant ${a.tenantId}: bring your own Cloud KMS key.`,
    '',
    `Key name${a.keyNames.length > 1 ? 's' : ''}: ${a.keyNames.join(', ')}`,
    'IAM bindings on the key:',
    ...a.iamBindings.map((b) => `  ${b.role}  ${b.member}`),
    '',
    'The tenant runs `--format shell` (gcloud) or `--format terraform`; then the platform runs:',
    `  ${a.enableCommand}`,
  ].join('\n');
}

export async function rewrapPlatformCommand(ctx: Context): Promise<number> {
  if (ctx.args.length > 0) throw new UsageError('keys rewrap-platform takes no arguments');
  const loaded = await ctx.config();
  const kr = loaded.keyring;
  const previous = kr.previousPlatformKeyRefs;
  if (previous.length === 0) {
    throw new UsageError(
      'keys rewrap-platform moves data keys from previous platform keys to the current one, but the ' +
        'config names none: set the new key as platformKek and the old one in previousPlatformKeks',
    );
  }
  const every = ctx.flags['progress-every'] === undefined ? 5 : intFlag(ctx.flags, 'progress-every')!;
  const bar = new Progress(ctx.io, {
    json: ctx.json,
    everyMs: every * 1000,
    enabled: ctx.flags['no-progress'] !== true,
  });
  const batchSize = intFlag(ctx.flags, 'batch-size');
  ctx.say(`re-wrapping data keys under ${previous.join(', ')} with ${kr.platformKeyRef}`);
  let r: Awaited<ReturnType<typeof kr.rewrapPlatform>>;
  try {
    r = await kr.rewrapPlatform({
      ...(batchSize === undefined ? {} : { batchSize }),
      onProgress: (p) =>
        bar.update({
          label: 'rewrap-platform',
          done: p.dataKeys,
          total: p.total,
          rate: p.dataKeysPerSecond,
          eta: p.etaSeconds,
        }),
    });
  } finally {
    bar.end();
  }
  ctx.out({ ok: r.remaining === 0, platformKey: kr.platformKeyRef, ...r }, () =>
    [
      `${fmtInt(r.dataKeys)} data key(s) re-wrapped and ${fmtInt(r.secrets)} KEK secret(s) re-sealed under ${kr.platformKeyRef}.`,
      r.remaining === 0
        ? 'Nothing is left under an older platform key: remove it from previousPlatformKeks.'
        : `${fmtInt(r.remaining)} still under a platform key this config does not know: add it to previousPlatformKeks and run again.`,
    ].join('\n'),
  );
  return r.remaining === 0 ? EXIT.ok : EXIT.problems;
}

export async function rewrapMovedCommand(ctx: Context): Promise<number> {
  if (ctx.args.length !== 1)
    throw new UsageError(`keys rewrap-moved needs exactly one tenant id (got ${ctx.args.length})`);
  const loaded = await ctx.config();
  const r = await loaded.keyring.rewrapMovedKeys(ctx.args[0]!);
  ctx.out(
    r,
    () =>
      `tenant ${r.tenantId}: ${fmtInt(r.rewrapped)} data key wrap(s) moved to the key${r.status.keks.length > 1 ? 's' : ''} ` +
      `the KEK reference${r.status.keks.length > 1 ? 's' : ''} name now (${r.status.keks.map((k) => k.currentKeyId ?? k.keyRef).join(', ')})`,
  );
  return EXIT.ok;
}
